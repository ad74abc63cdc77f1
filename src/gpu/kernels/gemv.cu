// Decode GEMV: one activation row times a weight matrix [N, K] (bf16 / f32, or e4m3 rows with a
// per-row scale: weight-only FP8), optionally with the SwiGLU of a fused gate|up matrix in the
// epilogue (kernels.h). At batch 1 the product is bound by reading the weights once, so the kernel
// is a weight stream. Each block of 256 threads owns R output rows (R pairs of gate and up rows
// for SwiGLU) and splits K over all its threads, so every row, however tall its K, is read by 256
// threads with several 16-byte loads in flight each; x is read straight from global memory (it is
// small and stays in L1 / L2), so no thread waits for a staging copy. R is chosen per launch so the
// grid fills the GPU: more rows per block for wide matrices (the LM head), fewer for tall-K ones
// (down_proj: K = 11008, N = 2048).
#include <cuda_fp16.h>

#include "gpu/kernels/common.cuh"

namespace vla::gpu::kernels {
namespace {

constexpr int kGemvThreads = 256;
constexpr int kLoadsInFlight = 8;  // 16-byte weight loads per thread per step (R * rows * unroll)

// The 16-byte weight vector as floats: 4 floats, 8 bf16 or 16 e4m3.
template <typename W>
struct WeightVec {
  static constexpr int kPer = 16 / sizeof(W);
};
__device__ __forceinline__ void widen(uint4 w, float* f, float) {
  f[0] = __uint_as_float(w.x);
  f[1] = __uint_as_float(w.y);
  f[2] = __uint_as_float(w.z);
  f[3] = __uint_as_float(w.w);
}
__device__ __forceinline__ void widen(uint4 w, float* f, __nv_bfloat16) {
  const __nv_bfloat162* e = reinterpret_cast<const __nv_bfloat162*>(&w);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 p = __bfloat1622float2(e[j]);
    f[2 * j] = p.x;
    f[2 * j + 1] = p.y;
  }
}
__device__ __forceinline__ void widen(uint4 w, float* f, __nv_fp8_e4m3) {
  const __nv_fp8x2_storage_t* e = reinterpret_cast<const __nv_fp8x2_storage_t*>(&w);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 p = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(e[j], __NV_E4M3)));
    f[2 * j] = p.x;
    f[2 * j + 1] = p.y;
  }
}

// The kPer elements of x that meet weight vector v, as floats (16-byte loads of x's type).
template <typename T, int kPer>
__device__ __forceinline__ void load_x(const T* __restrict__ x, int v, float* f) {
  constexpr int kLoads = kPer * static_cast<int>(sizeof(T)) / 16;
  const uint4* xv = reinterpret_cast<const uint4*>(x) + static_cast<int64_t>(v) * kLoads;
#pragma unroll
  for (int l = 0; l < kLoads; ++l) widen(__ldg(xv + l), f + l * (16 / sizeof(T)), T());
}

template <typename W, int kPer>
__device__ __forceinline__ float dot(uint4 w, const float* xf) {
  float wf[kPer];
  widen(w, wf, W());
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) s += wf[j] * xf[j];
  return s;
}

// T: activation / output type; W: weight type (T, or __nv_fp8_e4m3 with per-row scales);
// R rows per block; G = 2 for SwiGLU (gate row r and up row n + r), else 1.
template <typename T, typename W, int R, int G>
__global__ void __launch_bounds__(kGemvThreads)
    gemv_kernel(const T* __restrict__ x, const W* __restrict__ w, const float* __restrict__ wscale,
                const T* __restrict__ bias, T* __restrict__ out, int n, int k) {
  constexpr int kPer = WeightVec<W>::kPer;
  constexpr int kUnroll = kLoadsInFlight / (R * G) > 1 ? kLoadsInFlight / (R * G) : 1;
  const int nvec = k / kPer;
  const int row0 = blockIdx.x * R;
  const uint4* rows[R][G];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int row =
          (row0 + r < n ? row0 + r : n - 1) + g * n;  // a past-the-end row re-reads the last
      rows[r][g] = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(row) * k);
    }
  float acc[R][G] = {};
  for (int v0 = threadIdx.x; v0 < nvec; v0 += kGemvThreads * kUnroll) {
    uint4 wv[kUnroll][R][G];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = v0 + u * kGemvThreads;
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int g = 0; g < G; ++g) wv[u][r][g] = v < nvec ? __ldg(rows[r][g] + v) : uint4{};
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = v0 + u * kGemvThreads;
      if (v >= nvec) break;
      float xf[kPer];
      load_x<T, kPer>(x, v, xf);
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int g = 0; g < G; ++g) acc[r][g] += dot<W, kPer>(wv[u][r][g], xf);
    }
  }
  // Block sum of each row: warps first, then one thread per row over the warps' partials.
  constexpr int kWarps = kGemvThreads / 32;
  __shared__ float part[R * G][kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float s = warp_reduce(acc[r][g], SumOp());
      if (lane == 0) part[r * G + g][warp] = s;
    }
  __syncthreads();
  if (threadIdx.x < R && row0 + static_cast<int>(threadIdx.x) < n) {
    const int r = threadIdx.x, row = row0 + r;
    float y[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float s = 0.f;
#pragma unroll
      for (int i = 0; i < kWarps; ++i) s += part[r * G + g][i];
      y[g] = wscale ? s * wscale[row + g * n] : s;
    }
    float v = y[0];
    if constexpr (G == 2)
      v = silu(y[0]) * y[1];
    else if (bias)
      v += to_f(bias[row]);
    out[row] = from_f<T>(v);
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

template <typename T, typename W, int R, int G>
void launch_rows(const void* x, const void* w, const float* wscale, const void* bias, void* out,
                 int n, int k, cudaStream_t s) {
  const unsigned grid = static_cast<unsigned>((n + R - 1) / R);
  gemv_kernel<T, W, R, G>
      <<<grid, kGemvThreads, 0, s>>>(static_cast<const T*>(x), static_cast<const W*>(w), wscale,
                                     static_cast<const T*>(bias), static_cast<T*>(out), n, k);
}

// Rows per block: the most (8 weight rows: 8 rows, or 4 gate|up pairs) that still leaves >= 4
// blocks per SM, so wide matrices read several rows per thread at once and narrow ones still
// spread over every SM.
template <typename T, typename W, int G>
const char* launch_gemv_rows(const void* x, const void* w, const float* wscale, const void* bias,
                             void* out, int64_t n, int64_t k, cudaStream_t s) {
  const int64_t want = int64_t{sm_count()} * 4;
  const int nn = static_cast<int>(n), kk = static_cast<int>(k);
  int rows = 1;
  while (rows * G < 8 && n / (rows * 2) >= want) rows *= 2;
  switch (rows) {
    case 8:
      if constexpr (G == 1) launch_rows<T, W, 8, G>(x, w, wscale, bias, out, nn, kk, s);
      break;
    case 4:
      launch_rows<T, W, 4, G>(x, w, wscale, bias, out, nn, kk, s);
      break;
    case 2:
      launch_rows<T, W, 2, G>(x, w, wscale, bias, out, nn, kk, s);
      break;
    default:
      launch_rows<T, W, 1, G>(x, w, wscale, bias, out, nn, kk, s);
  }
  return last_error();
}

template <typename T, typename W>
const char* launch_gemv(const void* x, const void* w, const float* wscale, const void* bias,
                        void* out, int64_t n, int64_t k, bool silu_gate, cudaStream_t s) {
  return silu_gate ? launch_gemv_rows<T, W, 2>(x, w, wscale, bias, out, n, k, s)
                   : launch_gemv_rows<T, W, 1>(x, w, wscale, bias, out, n, k, s);
}

}  // namespace

const char* gemv(const void* x, const void* w, bool w_fp8, const float* wscale, const void* bias,
                 void* out, int64_t n, int64_t k, bool silu_gate, DType dt, void* stream) {
  if (k % 16 != 0 || k > (int64_t{1} << 30) || n < 1 || n > (int64_t{1} << 30))
    return "gemv: K must be a multiple of 16, N >= 1";
  if (reinterpret_cast<uintptr_t>(w) % 16 != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0)
    return "gemv: x and the weights must be 16-byte aligned";
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
