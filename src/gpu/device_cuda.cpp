// CUDA implementation of gpu/device.h (compiled only when torch has CUDA).
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <limits>

#include "core/core.h"
#include "gpu/device.h"

namespace vla::gpu::device {

bool compiled() { return true; }
bool available() { return torch::cuda::is_available(); }

std::string name(const at::Device& device) {
  if (device.is_cuda()) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device.has_index() ? device.index() : 0) == cudaSuccess)
      return prop.name;
  }
  return device.str();
}

int compute_capability(const at::Device& device) {
  if (!device.is_cuda() || !available()) return 0;
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device.has_index() ? device.index() : 0) != cudaSuccess)
    return 0;
  return prop.major * 10 + prop.minor;
}

bool capturing(const at::Device& device) {
  if (!device.is_cuda()) return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaStream_t s = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  return cudaStreamIsCapturing(s, &status) != cudaSuccess || status != cudaStreamCaptureStatusNone;
}

void* current_stream(const at::Device& device) {
  if (!device.is_cuda()) return nullptr;
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(device.index()).stream());
}

void manual_seed_all(uint64_t seed) {
  if (available()) torch::cuda::manual_seed_all(seed);
}

void clear_error() { (void)cudaGetLastError(); }

struct Stream::Impl {
  c10::cuda::CUDAStream stream;
  at::DeviceIndex index;
};

Stream::Stream(const at::Device& device) {
  VLA_CHECK(device.is_cuda(), "device stream: ", device.str(), " is not a CUDA device");
  const at::DeviceIndex index = device.has_index() ? device.index() : 0;
  impl = std::make_unique<Impl>(Impl{c10::cuda::getStreamFromPool(false, index), index});
}
Stream::~Stream() = default;
void Stream::synchronize() { impl->stream.synchronize(); }
void* Stream::raw() const { return static_cast<void*>(impl->stream.stream()); }

struct StreamScope::Impl {
  explicit Impl(Stream& s) : device(s.impl->index), stream(s.impl->stream) {}
  c10::cuda::CUDAGuard device;
  c10::cuda::CUDAStreamGuard stream;
};
StreamScope::StreamScope(Stream& s) : impl_(std::make_unique<Impl>(s)) {}
StreamScope::~StreamScope() = default;

struct Event::Impl {
  at::cuda::CUDAEvent event{cudaEventDefault};
};
Event::Event() : impl_(std::make_unique<Impl>()) {}
Event::~Event() = default;
void Event::record(const at::Device& device) {
  impl_->event.record(c10::cuda::getCurrentCUDAStream(device.index()));
}
void Event::record(Stream& s) { impl_->event.record(s.impl->stream); }
void Event::synchronize() { impl_->event.synchronize(); }
double Event::elapsed_ms(const Event& later) const {
  return impl_->event.elapsed_time(later.impl_->event);
}

struct Graph::Impl {
  at::cuda::CUDAGraph graph;
};
Graph::Graph() : impl_(std::make_unique<Impl>()) {}
Graph::~Graph() = default;
void Graph::capture_begin() { impl_->graph.capture_begin(); }
void Graph::capture_end() { impl_->graph.capture_end(); }
void Graph::replay() { impl_->graph.replay(); }

double gpu_time_ms(const std::function<void()>& fn, const at::Device& device, int calls,
                   int replays) {
  VLA_CHECK(calls > 0 && replays > 0, "gpu_time_ms: calls and replays must be positive");
  torch::cuda::synchronize(device.has_index() ? device.index() : 0);  // inputs made elsewhere
  Stream stream(device);
  StreamScope scope(stream);
  fn();  // warm-up outside the capture (lazy handles, allocations, per-shape tuning)
  stream.synchronize();
  double best = std::numeric_limits<double>::infinity();
  try {
    Graph graph;
    graph.capture_begin();
    try {
      for (int i = 0; i < calls; ++i) fn();
    } catch (...) {
      try {
        graph.capture_end();  // leaves the stream out of capture mode
      } catch (...) {
      }
      throw;
    }
    graph.capture_end();
    graph.replay();  // the first replay uploads the graph
    for (int r = 0; r < replays; ++r) {
      Event a, b;
      a.record(stream);
      graph.replay();
      b.record(stream);
      b.synchronize();
      best = std::min(best, a.elapsed_ms(b));
    }
    return best / calls;
  } catch (const std::exception&) {
    clear_error();
  }
  for (int r = 0; r < replays; ++r) {  // not capturable: eager calls between two events
    Event a, b;
    a.record(stream);
    for (int i = 0; i < calls; ++i) fn();
    b.record(stream);
    b.synchronize();
    best = std::min(best, a.elapsed_ms(b));
  }
  return best / calls;
}

}  // namespace vla::gpu::device
