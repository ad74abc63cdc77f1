// In-place rotary embedding on q and k inside the QKV buffer, and the decode step's variant that
// also appends the new key / value row to the KV cache (kernels.h).
#include "gpu/kernels/common.cuh"

namespace vla::gpu::kernels {
namespace {

// ------------------------------------------------------------------ rotary
// Rotary on the first nq + nk heads of row r (query heads, then key heads). With caches
// (kc != nullptr) the rotated key heads and the nk value heads after them are also written to row
// *row0 + r of kc / vc [capacity, nk, head_dim]: the decode step's append.
template <typename T>
__global__ void rotary_kernel(T* x, int64_t x_stride, const float* __restrict__ cos,
                              const float* __restrict__ sin, int nq, int nk, int head_dim,
                              T* __restrict__ kc, T* __restrict__ vc,
                              const int64_t* __restrict__ row0) {
  const int64_t r = blockIdx.x;
  const int half = head_dim / 2;
  T* xr = x + r * x_stride;
  const float* c = cos + r * head_dim;
  const float* s = sin + r * head_dim;
  const int64_t dst = kc ? (*row0 + r) * nk * head_dim : 0;
  const int pairs = (nq + nk) * half;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int h = p / half;
    const int i = p - h * half;
    T* xh = xr + static_cast<int64_t>(h) * head_dim;
    const float x1 = to_f(xh[i]);
    const float x2 = to_f(xh[i + half]);
    const T y1 = from_f<T>(x1 * c[i] - x2 * s[i]);
    const T y2 = from_f<T>(x2 * c[i + half] + x1 * s[i + half]);
    xh[i] = y1;
    xh[i + half] = y2;
    if (kc && h >= nq) {
      T* kh = kc + dst + static_cast<int64_t>(h - nq) * head_dim;
      kh[i] = y1;
      kh[i + half] = y2;
    }
  }
  if (!kc) return;
  const T* vr = xr + static_cast<int64_t>(nq + nk) * head_dim;
  for (int j = threadIdx.x; j < nk * head_dim; j += blockDim.x) vc[dst + j] = vr[j];
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

// rotary_kernel, one block per row (nk = 0 and no caches: plain rotary on nq heads).
const char* launch_rotary(void* x, int64_t x_stride, const float* cos, const float* sin,
                          int64_t rows, int nq, int nk, int head_dim, void* kc, void* vc,
                          const int64_t* row0, DType dt, cudaStream_t s) {
  int threads = (nq + nk) * head_dim / 2;
  threads = threads > 1024 ? 1024 : ((threads + 31) / 32) * 32;
  if (dt == kBF16) {
    rotary_kernel<__nv_bfloat16><<<static_cast<unsigned>(rows), threads, 0, s>>>(
        static_cast<__nv_bfloat16*>(x), x_stride, cos, sin, nq, nk, head_dim,
        static_cast<__nv_bfloat16*>(kc), static_cast<__nv_bfloat16*>(vc), row0);
  } else {
    rotary_kernel<float><<<static_cast<unsigned>(rows), threads, 0, s>>>(
        static_cast<float*>(x), x_stride, cos, sin, nq, nk, head_dim, static_cast<float*>(kc),
        static_cast<float*>(vc), row0);
  }
  return last_error();
}

}  // namespace

const char* rotary_append_kv(void* x, int64_t x_stride, const float* cos, const float* sin,
                             int64_t rows, int nq, int nkv, int head_dim, void* k_cache,
                             void* v_cache, const int64_t* row0, DType dt, void* stream) {
  if (rows == 0) return nullptr;
  if (head_dim % 2 != 0) return "rotary_append_kv: head_dim must be even";
  return launch_rotary(x, x_stride, cos, sin, rows, nq, nkv, head_dim, k_cache, v_cache, row0, dt,
                       static_cast<cudaStream_t>(stream));
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
  return launch_rotary(x, x_stride, cos, sin, rows, nheads, 0, head_dim, nullptr, nullptr, nullptr,
                       dt, s);
}

}  // namespace vla::gpu::kernels
