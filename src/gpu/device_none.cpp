// gpu/device.h for builds without CUDA: queries answer "no CUDA"; objects refuse to exist.
#include "core/core.h"
#include "gpu/device.h"

namespace vla::gpu::device {

namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw Error(str_cat(what, ": this build has no CUDA (libtorch without CUDA)"));
}
}  // namespace

bool compiled() { return false; }
bool available() { return false; }
std::string name(const at::Device& device) { return device.str(); }
int compute_capability(const at::Device&) { return 0; }
void* current_stream(const at::Device&) { return nullptr; }
bool capturing(const at::Device&) { return false; }
void manual_seed_all(uint64_t) {}
void clear_error() {}

struct Stream::Impl {};
Stream::Stream(const at::Device&) { no_cuda("device stream"); }
Stream::~Stream() = default;
void Stream::synchronize() {}
void* Stream::raw() const { return nullptr; }

struct StreamScope::Impl {};
StreamScope::StreamScope(Stream&) { no_cuda("device stream"); }
StreamScope::~StreamScope() = default;

struct Event::Impl {};
Event::Event() { no_cuda("device event"); }
Event::~Event() = default;
void Event::record(const at::Device&) {}
void Event::record(Stream&) {}
void Event::synchronize() {}
double Event::elapsed_ms(const Event&) const { return 0.0; }

struct Graph::Impl {};
Graph::Graph() { no_cuda("CUDA graph"); }
Graph::~Graph() = default;
void Graph::capture_begin() {}
void Graph::capture_end() {}
void Graph::replay() {}

double gpu_time_ms(const std::function<void()>&, const at::Device&, int, int) {
  no_cuda("gpu_time_ms");
}

}  // namespace vla::gpu::device
