// Private: the CUDA runtime pieces the fast path needs (streams, events, graphs, device queries),
// behind one interface so that the model code (engine.cpp, ops.cpp) has no #ifdef. CUDA builds
// compile device_cuda.cpp; CPU builds compile device_none.cpp, whose queries answer "no CUDA" and
// whose objects throw vla::Error when constructed.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace vla::gpu::device {

// Whether this build has the CUDA kernels and runtime (torch with CUDA).
bool compiled();
// compiled() and a CUDA device is visible.
bool available();
// "NVIDIA H200" for a CUDA device, else device.str().
std::string name(const at::Device& device);
// The current CUDA stream of `device` as a cudaStream_t (nullptr on the CPU).
void* current_stream(const at::Device& device);
// Seeds every CUDA generator (no-op without CUDA).
void manual_seed_all(uint64_t seed);
// Clears a sticky CUDA launch error after a failed attempt (no-op without CUDA).
void clear_error();
// Compute capability major * 10 + minor of a CUDA device (0 without CUDA).
int compute_capability(const at::Device& device);
// Whether the device's current stream is capturing a CUDA graph (false without CUDA): work that
// must run eagerly (timing, synchronising) cannot happen now.
bool capturing(const at::Device& device);

// A stream from torch's pool on one CUDA device.
class Stream {
 public:
  explicit Stream(const at::Device& device);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void synchronize();
  void* raw() const;  // cudaStream_t
  struct Impl;
  std::unique_ptr<Impl> impl;
};

// Makes a stream (and its device) current for the scope.
class StreamScope {
 public:
  explicit StreamScope(Stream& stream);
  ~StreamScope();
  StreamScope(const StreamScope&) = delete;
  StreamScope& operator=(const StreamScope&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A timing event.
class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(const at::Device& device);  // on the device's current stream
  void record(Stream& stream);
  void synchronize();
  double elapsed_ms(const Event& later) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A captured CUDA graph (captures the work issued on the current stream between begin and end).
class Graph {
 public:
  Graph();
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  void capture_begin();
  void capture_end();
  void replay();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// GPU milliseconds per call of `fn` (work issued on the current stream): after one warm-up call,
// `calls` calls captured in one CUDA graph and replayed `replays` times, the fastest replay / calls
// -- so host-side dispatch does not count, as in the engine's captured plans. Where fn cannot be
// captured (it syncs with the host) the calls run eagerly between two events instead. Runs on a
// stream of its own; `device` must be a CUDA device.
double gpu_time_ms(const std::function<void()>& fn, const at::Device& device, int calls = 10,
                   int replays = 3);

}  // namespace vla::gpu::device
