// Shared by the standalone CUDA probes in bench/ (each compiled by hand with nvcc, not part of the
// build): a check macro that stops the probe at the first CUDA / cuBLAS error, and device fills of
// bf16 / e4m3 buffers with reproducible pseudo-random values (random operands: the GEMMs run at
// the GPU's power limit, where constant data would flatter them), and the timing loop they share.
// Each probe is one translation unit, so the kernels are defined here.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>

#define CK(x)                                                     \
  do {                                                            \
    auto e_ = (x);                                                \
    if (e_ != 0) {                                                \
      printf("error %d at %s:%d\n", (int)e_, __FILE__, __LINE__); \
      exit(1);                                                    \
    }                                                             \
  } while (0)

// A value in [-1, 1) from index i (splitmix64's finaliser).
__device__ inline float hrand(uint64_t i) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return ((x >> 40) * (1.0f / 16777216.0f)) * 2.f - 1.f;
}
// p[i] = hrand(i + seed) * s for i < n (grid-stride).
__global__ void fill_bf16(__nv_bfloat16* p, size_t n, float s, uint64_t seed) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    p[i] = __float2bfloat16(hrand(i + seed) * s);
}
__global__ void fill_e4m3(__nv_fp8_e4m3* p, size_t n, float s, uint64_t seed) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    p[i] = __nv_fp8_e4m3(hrand(i + seed) * s);
}

// The fastest of `rounds` runs of `reps` back-to-back calls of f on the current stream, timed
// between two CUDA events, in microseconds per call (the caller warms up first).
inline double best_us_per_call(const std::function<void()>& f, int reps, int rounds) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  double best = 1e30;
  for (int r = 0; r < rounds; ++r) {
    cudaEventRecord(e0);
    for (int i = 0; i < reps; ++i) f();
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    best = std::min(best, ms * 1e3 / reps);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return best;
}
