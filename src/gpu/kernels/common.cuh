// Shared device helpers of the GPU fast path's kernels (each op in its own .cu file): type
// conversion, block reductions, FP8 (e4m3) row quantisation, launch helpers. Private to
// src/gpu/kernels/; the launchers' contracts are in gpu/kernels.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "gpu/kernels.h"

namespace vla::gpu::kernels {
namespace {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <class Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reduction over the block; every thread gets the result. `identity` pads the unused lanes.
template <class Op>
__device__ float block_reduce(float v, Op op, float identity) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = (blockDim.x + 31) >> 5;
    float s = lane < nwarps ? partial[lane] : identity;
    s = warp_reduce(s, op);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

__device__ float block_sum(float v) { return block_reduce(v, SumOp(), 0.f); }
// Max over the block of non-negative values.
__device__ float block_max(float v) { return block_reduce(v, MaxOp(), 0.f); }

inline const char* last_error() {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// ------------------------------------------------------------------ FP8 (e4m3) row quantisation
__device__ __forceinline__ uint32_t e4m3(float v) {
  return static_cast<uint32_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}
__device__ __forceinline__ uint32_t pack_e4m3(float4 v, float s) {
  return e4m3(v.x * s) | (e4m3(v.y * s) << 8) | (e4m3(v.z * s) << 16) | (e4m3(v.w * s) << 24);
}

// The e4m3 multiplier of row r, called by every thread of the block with its part's amax. With a
// static scale (fixed != nullptr, calibrated per tensor) it is 1 / *fixed and nothing is written
// (scales may be nullptr); else scales[r] = max(amax of the row, 1e-12) / 448 is written and
// 1 / scales[r] returned.
__device__ float row_multiplier(float local_amax, const float* fixed, float* scales, int64_t r) {
  if (fixed) return 1.f / __ldg(fixed);
  const float m = fmaxf(block_max(local_amax), 1e-12f);
  if (threadIdx.x == 0) scales[r] = m / 448.f;
  return 448.f / m;
}

// Quantises the float row row[0, dim) (shared memory, 16-byte aligned, written by any thread of
// the block before the call) to e4m3: q = sat(row * row_multiplier(...)). q is this row's output
// (dim bytes), scales[r] its float scale (not written with a static scale `fixed`).
__device__ void quantize_row(const float* row, int dim, uint8_t* __restrict__ q,
                             float* __restrict__ scales, int64_t r, const float* fixed) {
  __syncthreads();
  float m = 0.f;
  if (!fixed)
    for (int i = threadIdx.x; i < dim; i += blockDim.x) m = fmaxf(m, fabsf(row[i]));
  const float qs = row_multiplier(m, fixed, scales, r);
  if (dim % 8 == 0 && reinterpret_cast<uintptr_t>(q) % 8 == 0) {
    const float4* r4 = reinterpret_cast<const float4*>(row);
    uint2* q8 = reinterpret_cast<uint2*>(q);
    for (int i = threadIdx.x; i < dim / 8; i += blockDim.x) {
      uint2 pk;
      pk.x = pack_e4m3(r4[2 * i], qs);
      pk.y = pack_e4m3(r4[2 * i + 1], qs);
      q8[i] = pk;
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      q[i] = static_cast<uint8_t>(e4m3(row[i] * qs));
    }
  }
}

// Loads a row into shared memory as float: generic, and 8 bf16 per 16-byte load.
template <typename T>
__device__ void load_row(const T* __restrict__ x, int dim, float* row) {
  for (int i = threadIdx.x; i < dim; i += blockDim.x) row[i] = to_f(x[i]);
}
__device__ void load_row_bf16_vec8(const __nv_bfloat16* __restrict__ x, int dim, float* row) {
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  for (int i = threadIdx.x; i < dim / 8; i += blockDim.x) {
    uint4 v = xv[i];
    const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&v);
#pragma unroll
    for (int j = 0; j < 8; ++j) row[i * 8 + j] = __bfloat162float(e[j]);
  }
}

inline int grid_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  if (b > 65535 * 8) b = 65535 * 8;
  if (b < 1) b = 1;
  return static_cast<int>(b);
}

inline bool aligned16(const void* p, int64_t stride) {
  return (reinterpret_cast<uintptr_t>(p) % 16 == 0) && (stride % 8 == 0);
}

}  // namespace
}  // namespace vla::gpu::kernels
