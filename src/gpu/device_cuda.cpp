// CUDA implementation of gpu/device.h (compiled only when torch has CUDA).
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

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

}  // namespace vla::gpu::device
