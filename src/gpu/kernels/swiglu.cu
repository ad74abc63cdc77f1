// SwiGLU, silu(gate) * up, bf16 / float output or per-row FP8 (kernels.h).
#include "gpu/kernels/common.cuh"

namespace vla::gpu::kernels {
namespace {

// ------------------------------------------------------------------ SwiGLU
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

constexpr int kSiluThreads = 128;

// silu(gate) * up for 8 bf16 lanes of each (one 16-byte load each), in float.
__device__ __forceinline__ void silu_mul8(uint4 gv, uint4 uv, float* out) {
  const __nv_bfloat16* ge = reinterpret_cast<const __nv_bfloat16*>(&gv);
  const __nv_bfloat16* ue = reinterpret_cast<const __nv_bfloat16*>(&uv);
#pragma unroll
  for (int j = 0; j < 8; ++j) out[j] = silu(__bfloat162float(ge[j])) * __bfloat162float(ue[j]);
}

// bf16, inter % 8 == 0, 16-byte aligned rows: one 16-byte vector of gate and one of up per thread,
// threads numbered over all rows (no idle tail per row, a warp's loads and stores 512 contiguous
// bytes), so the kernel streams at the memory bandwidth: 30.5 us at [5980, 3456] on an H200 where
// two vectors per thread took 37.7. Blocks run in reverse order: the first to start take the last
// rows, which the GEMM before it wrote last (still in L2), and the rows written last are the
// first ones, which the GEMM after it reads first (1.5-2 us less per MLP in a GEMM -> SwiGLU ->
// GEMM chain). Out: bf16 rows [rows, inter], or with `fixed` (a static scale) e4m3 rows.
template <bool kFp8>
__global__ void __launch_bounds__(kSiluThreads)
    silu_mul_bf16_flat(const __nv_bfloat16* __restrict__ x, int64_t x_stride,
                       void* __restrict__ out, const float* __restrict__ fixed, int nvec,
                       int total) {
  const int idx = (gridDim.x - 1 - blockIdx.x) * kSiluThreads + threadIdx.x;
  if (idx >= total) return;
  const int r = idx / nvec, i = idx - r * nvec;
  const uint4* g = reinterpret_cast<const uint4*>(x + r * x_stride) + i;
  float v[8];
  silu_mul8(__ldg(g), __ldg(g + nvec), v);
  if constexpr (kFp8) {
    const float qs = 1.f / __ldg(fixed);
    uint2 pk;
    pk.x = pack_e4m3(make_float4(v[0], v[1], v[2], v[3]), qs);
    pk.y = pack_e4m3(make_float4(v[4], v[5], v[6], v[7]), qs);
    reinterpret_cast<uint2*>(out)[idx] = pk;
  } else {
    uint4 o;
    uint32_t* oe = reinterpret_cast<uint32_t*>(&o);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      __nv_bfloat162 p = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
      oe[j] = *reinterpret_cast<uint32_t*>(&p);
    }
    reinterpret_cast<uint4*>(out)[idx] = o;
  }
}

// Launches silu_mul_bf16_flat over rows x nvec vectors.
template <bool kFp8>
void launch_flat(const void* x, int64_t x_stride, void* out, const float* fixed, int nvec,
                 int total, cudaStream_t s) {
  const unsigned blocks = static_cast<unsigned>((total + kSiluThreads - 1) / kSiluThreads);
  silu_mul_bf16_flat<kFp8><<<blocks, kSiluThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(x),
                                                           x_stride, out, fixed, nvec, total);
}

// SwiGLU quantised to e4m3: one block per row, silu(gate) * up kept in shared memory as float.
template <typename T>
__global__ void silu_mul_fp8_kernel(const T* __restrict__ x, int64_t x_stride,
                                    uint8_t* __restrict__ q, float* __restrict__ qscale,
                                    const float* fixed, int inter) {
  extern __shared__ float row_buf[];
  const int64_t r = blockIdx.x;
  const T* g = x + r * x_stride;
  const T* u = g + inter;
  for (int i = threadIdx.x; i < inter; i += blockDim.x) row_buf[i] = silu(to_f(g[i])) * to_f(u[i]);
  quantize_row(row_buf, inter, q + r * inter, qscale, r, fixed);
}

// bf16, inter % 8 == 0, 16-byte aligned rows.
__global__ void silu_mul_fp8_bf16_vec8(const __nv_bfloat16* __restrict__ x, int64_t x_stride,
                                       uint8_t* __restrict__ q, float* __restrict__ qscale,
                                       const float* fixed, int inter) {
  extern __shared__ float row_buf[];
  const int64_t r = blockIdx.x;
  const uint4* g = reinterpret_cast<const uint4*>(x + r * x_stride);
  const uint4* u = reinterpret_cast<const uint4*>(x + r * x_stride + inter);
  for (int i = threadIdx.x; i < inter / 8; i += blockDim.x) {
    silu_mul8(g[i], u[i], row_buf + i * 8);
  }
  quantize_row(row_buf, inter, q + r * inter, qscale, r, fixed);
}

// bf16, inter % 8 == 0, 16-byte aligned rows, inter / 8 <= C * blockDim.x: values in registers.
template <int C>
__global__ void silu_mul_fp8_bf16_reg(const __nv_bfloat16* __restrict__ x, int64_t x_stride,
                                      uint8_t* __restrict__ q, float* __restrict__ qscale,
                                      const float* fixed, int inter) {
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
      silu_mul8(g[i], u[i], v[c]);
#pragma unroll
      for (int j = 0; j < 8; ++j) m = fmaxf(m, fabsf(v[c][j]));
    }
  }
  const float qs = row_multiplier(m, fixed, qscale, r);
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

}  // namespace

const char* silu_mul_fp8(const void* x, int64_t x_stride, void* q, float* scale,
                         const float* fixed_scale, int64_t rows, int64_t inter, DType dt,
                         void* stream) {
  if (rows == 0) return nullptr;
  const size_t smem = static_cast<size_t>(inter) * sizeof(float);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int threads = 256;
  uint8_t* qb = static_cast<uint8_t*>(q);
  const bool vec8 = dt == kBF16 && inter % 8 == 0 && aligned16(x, x_stride);
  const int64_t nvec = inter / 8;
  if (vec8 && fixed_scale && rows * nvec < (int64_t{1} << 31) &&
      reinterpret_cast<uintptr_t>(q) % 8 == 0) {
    launch_flat<true>(x, x_stride, q, fixed_scale, static_cast<int>(nvec),
                      static_cast<int>(rows * nvec), s);
  } else if (vec8 && nvec <= 2 * 1024) {
    const int t = static_cast<int>(((nvec + 1) / 2 + 31) / 32 * 32);
    silu_mul_fp8_bf16_reg<2>
        <<<static_cast<unsigned>(rows), t, 0, s>>>(static_cast<const __nv_bfloat16*>(x), x_stride,
                                                   qb, scale, fixed_scale, static_cast<int>(inter));
  } else if (vec8 && smem <= 48 * 1024) {
    silu_mul_fp8_bf16_vec8<<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, qb, scale, fixed_scale,
        static_cast<int>(inter));
  } else if (smem > 48 * 1024) {
    return "silu_mul_fp8: row too wide for shared memory";
  } else if (dt == kBF16) {
    silu_mul_fp8_kernel<__nv_bfloat16><<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, qb, scale, fixed_scale,
        static_cast<int>(inter));
  } else {
    silu_mul_fp8_kernel<float><<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const float*>(x), x_stride, qb, scale, fixed_scale, static_cast<int>(inter));
  }
  return last_error();
}

const char* silu_mul(const void* x, int64_t x_stride, void* out, int64_t rows, int64_t inter,
                     DType dt, void* stream) {
  if (rows == 0) return nullptr;
  if (rows > 65535) return "silu_mul: too many rows for one launch";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int threads = 256;
  if (dt == kBF16 && inter % 8 == 0 && aligned16(x, x_stride) &&
      reinterpret_cast<uintptr_t>(out) % 16 == 0 && rows * (inter / 8) < (int64_t{1} << 31)) {
    launch_flat<false>(x, x_stride, out, nullptr, static_cast<int>(inter / 8),
                       static_cast<int>(rows * (inter / 8)), s);
  } else if (dt == kBF16 && inter % 4 == 0 && x_stride % 4 == 0 &&
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

}  // namespace vla::gpu::kernels
