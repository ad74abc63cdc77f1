// Decode GEMV: one activation row times a weight matrix [N, K] (bf16 / f32, or e4m3 rows with a
// per-row scale: weight-only FP8), optionally with the SwiGLU of a fused gate|up matrix in the
// epilogue (kernels.h). At batch 1 the product is bound by reading the weights once, so the kernel
// is a weight stream: one warp per output row (two rows, gate and up, for SwiGLU), 16-byte
// read-only loads, four in flight per lane, x broadcast from shared memory as float.
#include <cuda_fp16.h>

#include <algorithm>

#include "gpu/kernels/common.cuh"

namespace vla::gpu::kernels {
namespace {

constexpr int kGemvThreads = 256;  // 8 warps = 8 rows in flight per block
constexpr int kUnroll = 4;         // 16-byte loads in flight per lane

// Dot of one 16-byte weight vector with the matching floats of x.
__device__ __forceinline__ float dot_vec(uint4 w, const float* x, float) {
  const float4* x4 = reinterpret_cast<const float4*>(x);
  const float4 a = x4[0];
  return __uint_as_float(w.x) * a.x + __uint_as_float(w.y) * a.y + __uint_as_float(w.z) * a.z +
         __uint_as_float(w.w) * a.w;
}
__device__ __forceinline__ float dot_vec(uint4 w, const float* x, __nv_bfloat16) {
  const __nv_bfloat162* e = reinterpret_cast<const __nv_bfloat162*>(&w);
  const float4* x4 = reinterpret_cast<const float4*>(x);
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const float4 a = x4[j];
    const float2 w0 = __bfloat1622float2(e[2 * j]), w1 = __bfloat1622float2(e[2 * j + 1]);
    s += w0.x * a.x + w0.y * a.y + w1.x * a.z + w1.y * a.w;
  }
  return s;
}
__device__ __forceinline__ float dot_vec(uint4 w, const float* x, __nv_fp8_e4m3) {
  const __nv_fp8x2_storage_t* e = reinterpret_cast<const __nv_fp8x2_storage_t*>(&w);
  const float4* x4 = reinterpret_cast<const float4*>(x);
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float4 a = x4[j];
    const float2 w0 = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(e[2 * j], __NV_E4M3)));
    const float2 w1 = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(e[2 * j + 1], __NV_E4M3)));
    s += w0.x * a.x + w0.y * a.y + w1.x * a.z + w1.y * a.w;
  }
  return s;
}

// Partial dot of weight row `w` (nvec 16-byte vectors of `per` elements) with x, this lane's share.
template <typename W>
__device__ __forceinline__ float row_dot(const uint4* __restrict__ w, int nvec, const float* x,
                                         int lane) {
  constexpr int per = 16 / sizeof(W);
  float acc = 0.f;
  int i = lane;
  for (; i + 32 * (kUnroll - 1) < nvec; i += 32 * kUnroll) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = __ldg(w + i + 32 * u);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc += dot_vec(v[u], x + (i + 32 * u) * per, W());
  }
  for (; i < nvec; i += 32) acc += dot_vec(__ldg(w + i), x + i * per, W());
  return warp_reduce(acc, SumOp());
}

// T: activation / output type; W: weight type (T, or __nv_fp8_e4m3 with per-row scales).
template <typename T, typename W, bool kGate>
__global__ void __launch_bounds__(kGemvThreads)
    gemv_kernel(const T* __restrict__ x, const W* __restrict__ w, const float* __restrict__ wscale,
                const T* __restrict__ bias, T* __restrict__ out, int n, int k) {
  extern __shared__ __align__(16) float xs[];
  for (int i = threadIdx.x; i < k; i += blockDim.x) xs[i] = to_f(x[i]);
  __syncthreads();
  constexpr int per = 16 / sizeof(W);
  const int nvec = k / per;
  const int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
  for (int row = blockIdx.x * warps + (threadIdx.x >> 5); row < n; row += gridDim.x * warps) {
    const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(row) * k);
    float v = row_dot<W>(wr, nvec, xs, lane);
    if (wscale) v *= wscale[row];
    if (kGate) {
      const uint4* ur = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(n + row) * k);
      float up = row_dot<W>(ur, nvec, xs, lane);
      if (wscale) up *= wscale[n + row];
      v = silu(v) * up;
    } else if (bias) {
      v += to_f(bias[row]);
    }
    if (lane == 0) out[row] = from_f<T>(v);
  }
}

int sm_count() {
  static int n = [] {
    int dev = 0, c = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, dev);
    return c > 0 ? c : 1;
  }();
  return n;
}

template <typename T, typename W>
const char* launch_gemv(const void* x, const void* w, const float* wscale, const void* bias,
                        void* out, int64_t n, int64_t k, bool silu_gate, cudaStream_t s) {
  const int warps = kGemvThreads / 32;
  const int64_t want = (n + warps - 1) / warps;
  const int grid = static_cast<int>(std::min<int64_t>(want, int64_t{sm_count()} * 8));
  const size_t smem = static_cast<size_t>(k) * sizeof(float);
  const T* xt = static_cast<const T*>(x);
  const W* wt = static_cast<const W*>(w);
  const T* bt = static_cast<const T*>(bias);
  T* ot = static_cast<T*>(out);
  if (silu_gate)
    gemv_kernel<T, W, true><<<grid, kGemvThreads, smem, s>>>(
        xt, wt, wscale, bt, ot, static_cast<int>(n), static_cast<int>(k));
  else
    gemv_kernel<T, W, false><<<grid, kGemvThreads, smem, s>>>(
        xt, wt, wscale, bt, ot, static_cast<int>(n), static_cast<int>(k));
  return last_error();
}

}  // namespace

const char* gemv(const void* x, const void* w, bool w_fp8, const float* wscale, const void* bias,
                 void* out, int64_t n, int64_t k, bool silu_gate, DType dt, void* stream) {
  if (k % 16 != 0 || k * static_cast<int64_t>(sizeof(float)) > 48 * 1024 || n < 1)
    return "gemv: K must be a multiple of 16 and at most 12288, N >= 1";
  if (reinterpret_cast<uintptr_t>(w) % 16 != 0) return "gemv: weights must be 16-byte aligned";
  auto s = static_cast<cudaStream_t>(stream);
  if (w_fp8) {
    if (!wscale) return "gemv: e4m3 weights need their scales";
    return dt == kBF16
               ? launch_gemv<__nv_bfloat16, __nv_fp8_e4m3>(x, w, wscale, bias, out, n, k, silu_gate,
                                                           s)
               : launch_gemv<float, __nv_fp8_e4m3>(x, w, wscale, bias, out, n, k, silu_gate, s);
  }
  return dt == kBF16 ? launch_gemv<__nv_bfloat16, __nv_bfloat16>(x, w, nullptr, bias, out, n, k,
                                                                 silu_gate, s)
                     : launch_gemv<float, float>(x, w, nullptr, bias, out, n, k, silu_gate, s);
}

}  // namespace vla::gpu::kernels
