// CUDA kernels of the GPU fast path: fused (add +) RMSNorm, in-place rotary, SwiGLU, and the
// image preprocessing (PIL bicubic resize, rescale, normalise, patchify). Built only when torch has
// CUDA; see kernels.h for the contracts.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

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

const char* last_error() {
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

// Quantises the float row row[0, dim) (shared memory, 16-byte aligned, written by any thread of
// the block before the call) to e4m3: scale = max(amax, 1e-12) / 448, q = sat(row * (448 / amax')).
// q is this row's output (dim bytes), scale its float scale.
__device__ void quantize_row(const float* row, int dim, uint8_t* __restrict__ q,
                             float* __restrict__ scale) {
  __syncthreads();
  float m = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) m = fmaxf(m, fabsf(row[i]));
  m = fmaxf(block_max(m), 1e-12f);
  const float qs = 448.f / m;
  if (threadIdx.x == 0) *scale = m / 448.f;
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

// ------------------------------------------------------------------ RMSNorm
// One block per row; the (residual-added) row is kept in shared memory as float. With kFp8 the
// normalised row is quantised to e4m3 (q [rows, dim], per-row scale) instead of written as T.
template <typename T, bool kFp8>
__global__ void rmsnorm_kernel(const T* __restrict__ x, int64_t x_stride, T* residual,
                               int64_t res_stride, const T* __restrict__ w, T* __restrict__ out,
                               int64_t out_stride, int dim, float eps, uint8_t* __restrict__ q,
                               float* __restrict__ qscale) {
  extern __shared__ float row_buf[];
  const int64_t r = blockIdx.x;
  const T* xr = x + r * x_stride;
  T* rr = residual ? residual + r * res_stride : nullptr;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = to_f(xr[i]);
    if (rr) {
      const T h = from_f<T>(v + to_f(rr[i]));
      rr[i] = h;
      v = to_f(h);
    }
    row_buf[i] = v;
    ss += v * v;
  }
  ss = block_sum(ss);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  if constexpr (kFp8) {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) row_buf[i] = row_buf[i] * inv * to_f(w[i]);
    quantize_row(row_buf, dim, q + r * dim, qscale + r);
  } else {
    T* orow = out + r * out_stride;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      orow[i] = from_f<T>(row_buf[i] * inv * to_f(w[i]));
    }
  }
}

// bf16 rows with dim % 8 == 0 and 16-byte aligned rows: 8 elements per thread per step.
template <bool kFp8>
__global__ void rmsnorm_bf16_vec8(const __nv_bfloat16* __restrict__ x, int64_t x_stride,
                                  __nv_bfloat16* residual, int64_t res_stride,
                                  const __nv_bfloat16* __restrict__ w,
                                  __nv_bfloat16* __restrict__ out, int64_t out_stride, int dim,
                                  float eps, uint8_t* __restrict__ q, float* __restrict__ qscale) {
  extern __shared__ float row_buf[];
  const int64_t r = blockIdx.x;
  const int nvec = dim / 8;
  const uint4* xr = reinterpret_cast<const uint4*>(x + r * x_stride);
  uint4* rr = residual ? reinterpret_cast<uint4*>(residual + r * res_stride) : nullptr;
  const uint4* wv = reinterpret_cast<const uint4*>(w);
  float ss = 0.f;
  for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
    uint4 xv = xr[i];
    const __nv_bfloat16* xe = reinterpret_cast<const __nv_bfloat16*>(&xv);
    float v[8];
    if (rr) {
      uint4 rv = rr[i];
      __nv_bfloat16* re = reinterpret_cast<__nv_bfloat16*>(&rv);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        re[j] = __float2bfloat16(__bfloat162float(xe[j]) + __bfloat162float(re[j]));
        v[j] = __bfloat162float(re[j]);
      }
      rr[i] = rv;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = __bfloat162float(xe[j]);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      row_buf[i * 8 + j] = v[j];
      ss += v[j] * v[j];
    }
  }
  ss = block_sum(ss);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  if constexpr (kFp8) {
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      uint4 wq = wv[i];
      const __nv_bfloat16* we = reinterpret_cast<const __nv_bfloat16*>(&wq);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        row_buf[i * 8 + j] = row_buf[i * 8 + j] * inv * __bfloat162float(we[j]);
      }
    }
    quantize_row(row_buf, dim, q + r * dim, qscale + r);
  } else {
    uint4* orow = reinterpret_cast<uint4*>(out + r * out_stride);
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      uint4 wq = wv[i];
      const __nv_bfloat16* we = reinterpret_cast<const __nv_bfloat16*>(&wq);
      uint4 ov;
      __nv_bfloat16* oe = reinterpret_cast<__nv_bfloat16*>(&ov);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        oe[j] = __float2bfloat16(row_buf[i * 8 + j] * inv * __bfloat162float(we[j]));
      }
      orow[i] = ov;
    }
  }
}

// FP8 output, bf16 rows with dim % 8 == 0 and dim / 8 <= blockDim.x: each thread keeps its 8
// values in registers (no shared-memory row), one reduction for the sum of squares, one for amax.
__global__ void rmsnorm_fp8_bf16_reg(const __nv_bfloat16* __restrict__ x, int64_t x_stride,
                                     __nv_bfloat16* residual, int64_t res_stride,
                                     const __nv_bfloat16* __restrict__ w, uint8_t* __restrict__ q,
                                     float* __restrict__ qscale, int dim, float eps) {
  const int64_t r = blockIdx.x;
  const int i = threadIdx.x;
  const bool active = i < dim / 8;
  float v[8];
  float ss = 0.f;
  if (active) {
    uint4 xv = reinterpret_cast<const uint4*>(x + r * x_stride)[i];
    const __nv_bfloat16* xe = reinterpret_cast<const __nv_bfloat16*>(&xv);
    if (residual) {
      uint4* rp = reinterpret_cast<uint4*>(residual + r * res_stride) + i;
      uint4 rv = *rp;
      __nv_bfloat16* re = reinterpret_cast<__nv_bfloat16*>(&rv);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        re[j] = __float2bfloat16(__bfloat162float(xe[j]) + __bfloat162float(re[j]));
        v[j] = __bfloat162float(re[j]);
      }
      *rp = rv;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = __bfloat162float(xe[j]);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) ss += v[j] * v[j];
  }
  ss = block_sum(ss);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  float m = 0.f;
  if (active) {
    uint4 wq = reinterpret_cast<const uint4*>(w)[i];
    const __nv_bfloat16* we = reinterpret_cast<const __nv_bfloat16*>(&wq);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      v[j] = v[j] * inv * __bfloat162float(we[j]);
      m = fmaxf(m, fabsf(v[j]));
    }
  }
  m = fmaxf(block_max(m), 1e-12f);
  const float qs = 448.f / m;
  if (threadIdx.x == 0) qscale[r] = m / 448.f;
  if (active) {
    uint2 pk;
    pk.x = pack_e4m3(make_float4(v[0], v[1], v[2], v[3]), qs);
    pk.y = pack_e4m3(make_float4(v[4], v[5], v[6], v[7]), qs);
    reinterpret_cast<uint2*>(q + r * dim)[i] = pk;
  }
}

// ------------------------------------------------------------------ rotary
template <typename T>
__global__ void rotary_kernel(T* x, int64_t x_stride, const float* __restrict__ cos,
                              const float* __restrict__ sin, int nheads, int head_dim) {
  const int64_t r = blockIdx.x;
  const int half = head_dim / 2;
  T* xr = x + r * x_stride;
  const float* c = cos + r * head_dim;
  const float* s = sin + r * head_dim;
  const int pairs = nheads * half;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int h = p / half;
    const int i = p - h * half;
    T* xh = xr + static_cast<int64_t>(h) * head_dim;
    const float x1 = to_f(xh[i]);
    const float x2 = to_f(xh[i + half]);
    xh[i] = from_f<T>(x1 * c[i] - x2 * s[i]);
    xh[i + half] = from_f<T>(x2 * c[i + half] + x1 * s[i + half]);
  }
}

// bf16, half % 8 == 0, 16-byte aligned rows: one thread per 8 (x1, x2) pairs.
__global__ void rotary_bf16_vec8(__nv_bfloat16* x, int64_t x_stride, const float* __restrict__ cos,
                                 const float* __restrict__ sin, int nheads, int head_dim) {
  const int64_t r = blockIdx.x;
  const int half = head_dim / 2;
  const int chunks = half / 8;
  const int h = threadIdx.x / chunks;
  if (h >= nheads) return;
  const int i0 = (threadIdx.x - h * chunks) * 8;
  __nv_bfloat16* xh = x + r * x_stride + static_cast<int64_t>(h) * head_dim;
  uint4* p1 = reinterpret_cast<uint4*>(xh + i0);
  uint4* p2 = reinterpret_cast<uint4*>(xh + half + i0);
  uint4 a = *p1, b = *p2;
  __nv_bfloat16* ae = reinterpret_cast<__nv_bfloat16*>(&a);
  __nv_bfloat16* be = reinterpret_cast<__nv_bfloat16*>(&b);
  const float* c = cos + r * head_dim;
  const float* s = sin + r * head_dim;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float x1 = __bfloat162float(ae[j]);
    const float x2 = __bfloat162float(be[j]);
    ae[j] = __float2bfloat16(x1 * c[i0 + j] - x2 * s[i0 + j]);
    be[j] = __float2bfloat16(x2 * c[half + i0 + j] + x1 * s[half + i0 + j]);
  }
  *p1 = a;
  *p2 = b;
}

// ------------------------------------------------------------------ SwiGLU
__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

template <typename T>
__global__ void silu_mul_kernel(const T* __restrict__ x, int64_t x_stride, T* __restrict__ out,
                                int64_t inter) {
  const int64_t r = blockIdx.y;
  const T* g = x + r * x_stride;
  const T* u = g + inter;
  T* o = out + r * inter;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < inter;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    o[i] = from_f<T>(silu(to_f(g[i])) * to_f(u[i]));
  }
}

// bf16, inter % 4 == 0, 8-byte aligned rows: 4 elements per thread.
__global__ void silu_mul_bf16_vec4(const __nv_bfloat16* __restrict__ x, int64_t x_stride,
                                   __nv_bfloat16* __restrict__ out, int64_t inter) {
  const int64_t r = blockIdx.y;
  const uint2* g = reinterpret_cast<const uint2*>(x + r * x_stride);
  const uint2* u = reinterpret_cast<const uint2*>(x + r * x_stride + inter);
  uint2* o = reinterpret_cast<uint2*>(out + r * inter);
  const int64_t nvec = inter / 4;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint2 gv = g[i];
    uint2 uv = u[i];
    const __nv_bfloat16* ge = reinterpret_cast<const __nv_bfloat16*>(&gv);
    const __nv_bfloat16* ue = reinterpret_cast<const __nv_bfloat16*>(&uv);
    uint2 ov;
    __nv_bfloat16* oe = reinterpret_cast<__nv_bfloat16*>(&ov);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      oe[j] = __float2bfloat16(silu(__bfloat162float(ge[j])) * __bfloat162float(ue[j]));
    }
    o[i] = ov;
  }
}

// SwiGLU quantised to e4m3: one block per row, silu(gate) * up kept in shared memory as float.
template <typename T>
__global__ void silu_mul_fp8_kernel(const T* __restrict__ x, int64_t x_stride,
                                    uint8_t* __restrict__ q, float* __restrict__ qscale,
                                    int inter) {
  extern __shared__ float row_buf[];
  const int64_t r = blockIdx.x;
  const T* g = x + r * x_stride;
  const T* u = g + inter;
  for (int i = threadIdx.x; i < inter; i += blockDim.x) row_buf[i] = silu(to_f(g[i])) * to_f(u[i]);
  quantize_row(row_buf, inter, q + r * inter, qscale + r);
}

// bf16, inter % 8 == 0, 16-byte aligned rows.
__global__ void silu_mul_fp8_bf16_vec8(const __nv_bfloat16* __restrict__ x, int64_t x_stride,
                                       uint8_t* __restrict__ q, float* __restrict__ qscale,
                                       int inter) {
  extern __shared__ float row_buf[];
  const int64_t r = blockIdx.x;
  const uint4* g = reinterpret_cast<const uint4*>(x + r * x_stride);
  const uint4* u = reinterpret_cast<const uint4*>(x + r * x_stride + inter);
  for (int i = threadIdx.x; i < inter / 8; i += blockDim.x) {
    uint4 gv = g[i];
    uint4 uv = u[i];
    const __nv_bfloat16* ge = reinterpret_cast<const __nv_bfloat16*>(&gv);
    const __nv_bfloat16* ue = reinterpret_cast<const __nv_bfloat16*>(&uv);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      row_buf[i * 8 + j] = silu(__bfloat162float(ge[j])) * __bfloat162float(ue[j]);
    }
  }
  quantize_row(row_buf, inter, q + r * inter, qscale + r);
}

// bf16, inter % 8 == 0, 16-byte aligned rows, inter / 8 <= C * blockDim.x: values in registers.
template <int C>
__global__ void silu_mul_fp8_bf16_reg(const __nv_bfloat16* __restrict__ x, int64_t x_stride,
                                      uint8_t* __restrict__ q, float* __restrict__ qscale,
                                      int inter) {
  const int64_t r = blockIdx.x;
  const int nvec = inter / 8;
  const uint4* g = reinterpret_cast<const uint4*>(x + r * x_stride);
  const uint4* u = reinterpret_cast<const uint4*>(x + r * x_stride + inter);
  float v[C][8];
  float m = 0.f;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int i = threadIdx.x + c * blockDim.x;
    if (i < nvec) {
      uint4 gv = g[i];
      uint4 uv = u[i];
      const __nv_bfloat16* ge = reinterpret_cast<const __nv_bfloat16*>(&gv);
      const __nv_bfloat16* ue = reinterpret_cast<const __nv_bfloat16*>(&uv);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        v[c][j] = silu(__bfloat162float(ge[j])) * __bfloat162float(ue[j]);
        m = fmaxf(m, fabsf(v[c][j]));
      }
    }
  }
  m = fmaxf(block_max(m), 1e-12f);
  const float qs = 448.f / m;
  if (threadIdx.x == 0) qscale[r] = m / 448.f;
  uint2* q8 = reinterpret_cast<uint2*>(q + r * inter);
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int i = threadIdx.x + c * blockDim.x;
    if (i < nvec) {
      uint2 pk;
      pk.x = pack_e4m3(make_float4(v[c][0], v[c][1], v[c][2], v[c][3]), qs);
      pk.y = pack_e4m3(make_float4(v[c][4], v[c][5], v[c][6], v[c][7]), qs);
      q8[i] = pk;
    }
  }
}

// Plain row quantisation (attention outputs, weights at load).
template <typename T>
__global__ void quantize_fp8_kernel(const T* __restrict__ x, int64_t x_stride,
                                    uint8_t* __restrict__ q, float* __restrict__ qscale, int dim) {
  extern __shared__ float row_buf[];
  const int64_t r = blockIdx.x;
  load_row(x + r * x_stride, dim, row_buf);
  quantize_row(row_buf, dim, q + r * dim, qscale + r);
}

__global__ void quantize_fp8_bf16_vec8(const __nv_bfloat16* __restrict__ x, int64_t x_stride,
                                       uint8_t* __restrict__ q, float* __restrict__ qscale,
                                       int dim) {
  extern __shared__ float row_buf[];
  const int64_t r = blockIdx.x;
  load_row_bf16_vec8(x + r * x_stride, dim, row_buf);
  quantize_row(row_buf, dim, q + r * dim, qscale + r);
}

// ------------------------------------------------------------------ preprocessing
__device__ __forceinline__ uint8_t clip8(int32_t ss, int precision) {
  const int32_t v = ss >> precision;  // arithmetic shift: floor, as the SIMD code
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

__global__ void resize_h_kernel(const uint8_t* __restrict__ in, uint8_t* __restrict__ out,
                                int64_t rows, int w, int out_w, const int32_t* __restrict__ coeffs,
                                const int32_t* __restrict__ bounds, int ksize, int precision) {
  const int64_t n = rows * out_w * 3;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(idx % 3);
    const int64_t t = idx / 3;
    const int xo = static_cast<int>(t % out_w);
    const int64_t row = t / out_w;
    const int xmin = bounds[2 * xo];
    const int taps = bounds[2 * xo + 1];
    const int32_t* k = coeffs + static_cast<int64_t>(xo) * ksize;
    const uint8_t* src = in + (row * w + xmin) * 3 + c;
    int32_t ss = 1 << (precision - 1);
    for (int j = 0; j < taps; ++j) ss += static_cast<int32_t>(src[j * 3]) * k[j];
    out[idx] = clip8(ss, precision);
  }
}

template <typename T>
__global__ void resize_v_patchify_kernel(const uint8_t* __restrict__ in, T* __restrict__ out,
                                         int64_t num_patches, const int32_t* __restrict__ patch_src,
                                         int in_h, int out_w, int gh, int gw,
                                         const int32_t* __restrict__ coeffs,
                                         const int32_t* __restrict__ bounds, int ksize,
                                         int precision, int patch, int temporal, float3 mean,
                                         float3 std) {
  const int pp = patch * patch;
  const int row_len = 3 * temporal * pp;
  const int64_t n = num_patches * 3 * pp;  // each thread writes all temporal copies
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = idx / (3 * pp);
    const int e = static_cast<int>(idx - p * 3 * pp);
    const int c = e / pp;
    const int py = (e - c * pp) / patch;
    const int px = e - c * pp - py * patch;
    const int src = patch_src[p];
    const int gx = src % gw;
    const int gy = (src / gw) % gh;
    const int view = src / (gw * gh);
    const int y = gy * patch + py;
    const int x = gx * patch + px;
    const int ymin = bounds[2 * y];
    const int taps = bounds[2 * y + 1];
    const int32_t* k = coeffs + static_cast<int64_t>(y) * ksize;
    const uint8_t* col = in + ((static_cast<int64_t>(view) * in_h + ymin) * out_w + x) * 3 + c;
    int32_t ss = 1 << (precision - 1);
    const int64_t step = static_cast<int64_t>(out_w) * 3;
    for (int j = 0; j < taps; ++j) ss += static_cast<int32_t>(col[j * step]) * k[j];
    const float m = c == 0 ? mean.x : (c == 1 ? mean.y : mean.z);
    const float sd = c == 0 ? std.x : (c == 1 ? std.y : std.z);
    // (u8 - mean*255) / (std*255) in float32 with IEEE division: the fused rescale+normalise of
    // the transformers image processor, bit for bit.
    const float v = __fdiv_rn(static_cast<float>(clip8(ss, precision)) - m, sd);
    const T tv = from_f<T>(v);
    T* o = out + p * row_len + static_cast<int64_t>(c) * temporal * pp + py * patch + px;
    for (int t = 0; t < temporal; ++t) o[t * pp] = tv;
  }
}

int grid_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  if (b > 65535 * 8) b = 65535 * 8;
  if (b < 1) b = 1;
  return static_cast<int>(b);
}

}  // namespace

namespace {
bool aligned16(const void* p, int64_t stride) {
  return (reinterpret_cast<uintptr_t>(p) % 16 == 0) && (stride % 8 == 0);
}

template <bool kFp8>
const char* rmsnorm_impl(const void* x, int64_t x_stride, void* residual, int64_t res_stride,
                         const void* w, void* out, int64_t out_stride, int64_t rows, int64_t dim,
                         float eps, DType dt, void* stream, uint8_t* q, float* qscale) {
  if (rows == 0) return nullptr;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t smem = static_cast<size_t>(dim) * sizeof(float);
  if (smem > 48 * 1024) return "rmsnorm: row too wide for shared memory";
  const bool vec8 = dt == kBF16 && dim % 8 == 0 && aligned16(x, x_stride) &&
                    (kFp8 || aligned16(out, out_stride)) && aligned16(w, 0) &&
                    (!residual || aligned16(residual, res_stride));
  if (kFp8 && vec8 && dim / 8 <= 1024) {
    const int threads = static_cast<int>((dim / 8 + 31) / 32 * 32);
    rmsnorm_fp8_bf16_reg<<<static_cast<unsigned>(rows), threads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, static_cast<__nv_bfloat16*>(residual),
        res_stride, static_cast<const __nv_bfloat16*>(w), q, qscale, static_cast<int>(dim), eps);
  } else if (vec8) {
    int threads = static_cast<int>(dim / 8);
    threads = ((threads + 31) / 32) * 32;
    if (threads > 1024) threads = 1024;
    rmsnorm_bf16_vec8<kFp8><<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, static_cast<__nv_bfloat16*>(residual),
        res_stride, static_cast<const __nv_bfloat16*>(w), static_cast<__nv_bfloat16*>(out),
        out_stride, static_cast<int>(dim), eps, q, qscale);
  } else if (dt == kBF16) {
    rmsnorm_kernel<__nv_bfloat16, kFp8><<<static_cast<unsigned>(rows), 256, smem, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, static_cast<__nv_bfloat16*>(residual),
        res_stride, static_cast<const __nv_bfloat16*>(w), static_cast<__nv_bfloat16*>(out),
        out_stride, static_cast<int>(dim), eps, q, qscale);
  } else {
    rmsnorm_kernel<float, kFp8><<<static_cast<unsigned>(rows), 256, smem, s>>>(
        static_cast<const float*>(x), x_stride, static_cast<float*>(residual), res_stride,
        static_cast<const float*>(w), static_cast<float*>(out), out_stride, static_cast<int>(dim),
        eps, q, qscale);
  }
  return last_error();
}
}  // namespace

const char* rmsnorm(const void* x, int64_t x_stride, void* residual, int64_t res_stride,
                    const void* w, void* out, int64_t out_stride, int64_t rows, int64_t dim,
                    float eps, DType dt, void* stream) {
  return rmsnorm_impl<false>(x, x_stride, residual, res_stride, w, out, out_stride, rows, dim, eps,
                             dt, stream, nullptr, nullptr);
}

const char* rmsnorm_fp8(const void* x, int64_t x_stride, void* residual, int64_t res_stride,
                        const void* w, void* q, float* scale, int64_t rows, int64_t dim, float eps,
                        DType dt, void* stream) {
  return rmsnorm_impl<true>(x, x_stride, residual, res_stride, w, nullptr, 0, rows, dim, eps, dt,
                            stream, static_cast<uint8_t*>(q), scale);
}

const char* silu_mul_fp8(const void* x, int64_t x_stride, void* q, float* scale, int64_t rows,
                         int64_t inter, DType dt, void* stream) {
  if (rows == 0) return nullptr;
  const size_t smem = static_cast<size_t>(inter) * sizeof(float);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int threads = 256;
  uint8_t* qb = static_cast<uint8_t*>(q);
  const bool vec8 = dt == kBF16 && inter % 8 == 0 && aligned16(x, x_stride);
  const int64_t nvec = inter / 8;
  if (vec8 && nvec <= 2 * 1024) {
    const int t = static_cast<int>(((nvec + 1) / 2 + 31) / 32 * 32);
    silu_mul_fp8_bf16_reg<2><<<static_cast<unsigned>(rows), t, 0, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, qb, scale, static_cast<int>(inter));
  } else if (vec8 && smem <= 48 * 1024) {
    silu_mul_fp8_bf16_vec8<<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, qb, scale, static_cast<int>(inter));
  } else if (smem > 48 * 1024) {
    return "silu_mul_fp8: row too wide for shared memory";
  } else if (dt == kBF16) {
    silu_mul_fp8_kernel<__nv_bfloat16><<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, qb, scale, static_cast<int>(inter));
  } else {
    silu_mul_fp8_kernel<float><<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const float*>(x), x_stride, qb, scale, static_cast<int>(inter));
  }
  return last_error();
}

const char* quantize_fp8(const void* x, int64_t x_stride, void* q, float* scale, int64_t rows,
                         int64_t dim, DType dt, void* stream) {
  if (rows == 0) return nullptr;
  const size_t smem = static_cast<size_t>(dim) * sizeof(float);
  if (smem > 48 * 1024) return "quantize_fp8: row too wide for shared memory";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int threads = static_cast<int>((dim / 8 + 31) / 32 * 32);
  threads = threads < 128 ? 128 : (threads > 512 ? 512 : threads);
  uint8_t* qb = static_cast<uint8_t*>(q);
  if (dt == kBF16 && dim % 8 == 0 && aligned16(x, x_stride)) {
    quantize_fp8_bf16_vec8<<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, qb, scale, static_cast<int>(dim));
  } else if (dt == kBF16) {
    quantize_fp8_kernel<__nv_bfloat16><<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, qb, scale, static_cast<int>(dim));
  } else {
    quantize_fp8_kernel<float><<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const float*>(x), x_stride, qb, scale, static_cast<int>(dim));
  }
  return last_error();
}

const char* rotary(void* x, int64_t x_stride, const float* cos, const float* sin, int64_t rows,
                   int nheads, int head_dim, DType dt, void* stream) {
  if (rows == 0) return nullptr;
  if (head_dim % 2 != 0) return "rotary: head_dim must be even";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int half = head_dim / 2;
  if (dt == kBF16 && half % 8 == 0 && x_stride % 8 == 0 &&
      reinterpret_cast<uintptr_t>(x) % 16 == 0 && nheads * (half / 8) <= 1024) {
    int vt = nheads * (half / 8);
    vt = ((vt + 31) / 32) * 32;
    rotary_bf16_vec8<<<static_cast<unsigned>(rows), vt, 0, s>>>(
        static_cast<__nv_bfloat16*>(x), x_stride, cos, sin, nheads, head_dim);
    return last_error();
  }
  int threads = nheads * head_dim / 2;
  threads = ((threads + 31) / 32) * 32;
  if (threads > 512) threads = 512;
  if (dt == kBF16) {
    rotary_kernel<__nv_bfloat16><<<static_cast<unsigned>(rows), threads, 0, s>>>(
        static_cast<__nv_bfloat16*>(x), x_stride, cos, sin, nheads, head_dim);
  } else {
    rotary_kernel<float><<<static_cast<unsigned>(rows), threads, 0, s>>>(
        static_cast<float*>(x), x_stride, cos, sin, nheads, head_dim);
  }
  return last_error();
}

const char* silu_mul(const void* x, int64_t x_stride, void* out, int64_t rows, int64_t inter,
                     DType dt, void* stream) {
  if (rows == 0) return nullptr;
  if (rows > 65535) return "silu_mul: too many rows for one launch";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int threads = 256;
  if (dt == kBF16 && inter % 4 == 0 && x_stride % 4 == 0 &&
      reinterpret_cast<uintptr_t>(x) % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0) {
    const int64_t nvec = inter / 4;
    dim3 grid(static_cast<unsigned>((nvec + threads - 1) / threads), static_cast<unsigned>(rows));
    silu_mul_bf16_vec4<<<grid, threads, 0, s>>>(static_cast<const __nv_bfloat16*>(x), x_stride,
                                                static_cast<__nv_bfloat16*>(out), inter);
  } else {
    dim3 grid(static_cast<unsigned>((inter + threads - 1) / threads), static_cast<unsigned>(rows));
    if (dt == kBF16) {
      silu_mul_kernel<__nv_bfloat16><<<grid, threads, 0, s>>>(
          static_cast<const __nv_bfloat16*>(x), x_stride, static_cast<__nv_bfloat16*>(out), inter);
    } else {
      silu_mul_kernel<float><<<grid, threads, 0, s>>>(static_cast<const float*>(x), x_stride,
                                                      static_cast<float*>(out), inter);
    }
  }
  return last_error();
}

const char* resize_h_u8(const uint8_t* in, uint8_t* out, int views, int h, int w, int out_w,
                        const int32_t* coeffs, const int32_t* bounds, int ksize, int precision,
                        void* stream) {
  const int64_t rows = static_cast<int64_t>(views) * h;
  const int64_t n = rows * out_w * 3;
  if (n == 0) return nullptr;
  const int threads = 256;
  resize_h_kernel<<<grid_for(n, threads), threads, 0, static_cast<cudaStream_t>(stream)>>>(
      in, out, rows, w, out_w, coeffs, bounds, ksize, precision);
  return last_error();
}

const char* resize_v_patchify(const uint8_t* in, void* out, int64_t num_patches,
                              const int32_t* patch_src, int in_h, int out_w, int gh, int gw,
                              const int32_t* coeffs, const int32_t* bounds, int ksize,
                              int precision, int patch, int temporal, const float* mean255,
                              const float* std255, DType dt, void* stream) {
  const int64_t n = num_patches * 3 * patch * patch;
  if (n == 0) return nullptr;
  const int threads = 256;
  const float3 mean = make_float3(mean255[0], mean255[1], mean255[2]);
  const float3 sd = make_float3(std255[0], std255[1], std255[2]);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dt == kBF16) {
    resize_v_patchify_kernel<__nv_bfloat16><<<grid_for(n, threads), threads, 0, s>>>(
        in, static_cast<__nv_bfloat16*>(out), num_patches, patch_src, in_h, out_w, gh, gw, coeffs,
        bounds, ksize, precision, patch, temporal, mean, sd);
  } else {
    resize_v_patchify_kernel<float><<<grid_for(n, threads), threads, 0, s>>>(
        in, static_cast<float*>(out), num_patches, patch_src, in_h, out_w, gh, gw, coeffs, bounds,
        ksize, precision, patch, temporal, mean, sd);
  }
  return last_error();
}

const char* copy_h2d(void* dst, const void* src, int64_t bytes, void* stream) {
  cudaError_t e = cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice,
                                  static_cast<cudaStream_t>(stream));
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace vla::gpu::kernels
