// Fused (residual add +) RMSNorm, bf16 / float output or per-row FP8 (kernels.h).
#include "gpu/kernels/common.cuh"

namespace vla::gpu::kernels {
namespace {

// ------------------------------------------------------------------ RMSNorm
// One block per row; the (residual-added) row is kept in shared memory as float. With kFp8 the
// normalised row is quantised to e4m3 (q [rows, dim], per-row scale) instead of written as T.
template <typename T, bool kFp8>
__global__ void rmsnorm_kernel(const T* __restrict__ x, int64_t x_stride, T* residual,
                               int64_t res_stride, const T* __restrict__ w, T* __restrict__ out,
                               int64_t out_stride, int dim, float eps, uint8_t* __restrict__ q,
                               float* __restrict__ qscale, const float* fixed) {
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
    quantize_row(row_buf, dim, q + r * dim, qscale, r, fixed);
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
                                  float eps, uint8_t* __restrict__ q, float* __restrict__ qscale,
                                  const float* fixed) {
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
    quantize_row(row_buf, dim, q + r * dim, qscale, r, fixed);
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
                                     float* __restrict__ qscale, const float* fixed, int dim,
                                     float eps) {
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
  const float qs = row_multiplier(m, fixed, qscale, r);
  if (active) {
    uint2 pk;
    pk.x = pack_e4m3(make_float4(v[0], v[1], v[2], v[3]), qs);
    pk.y = pack_e4m3(make_float4(v[4], v[5], v[6], v[7]), qs);
    reinterpret_cast<uint2*>(q + r * dim)[i] = pk;
  }
}

template <bool kFp8>
const char* rmsnorm_impl(const void* x, int64_t x_stride, void* residual, int64_t res_stride,
                         const void* w, void* out, int64_t out_stride, int64_t rows, int64_t dim,
                         float eps, DType dt, void* stream, uint8_t* q, float* qscale,
                         const float* fixed) {
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
        res_stride, static_cast<const __nv_bfloat16*>(w), q, qscale, fixed, static_cast<int>(dim),
        eps);
  } else if (vec8) {
    int threads = static_cast<int>(dim / 8);
    threads = ((threads + 31) / 32) * 32;
    if (threads > 1024) threads = 1024;
    rmsnorm_bf16_vec8<kFp8><<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, static_cast<__nv_bfloat16*>(residual),
        res_stride, static_cast<const __nv_bfloat16*>(w), static_cast<__nv_bfloat16*>(out),
        out_stride, static_cast<int>(dim), eps, q, qscale, fixed);
  } else if (dt == kBF16) {
    rmsnorm_kernel<__nv_bfloat16, kFp8><<<static_cast<unsigned>(rows), 256, smem, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, static_cast<__nv_bfloat16*>(residual),
        res_stride, static_cast<const __nv_bfloat16*>(w), static_cast<__nv_bfloat16*>(out),
        out_stride, static_cast<int>(dim), eps, q, qscale, fixed);
  } else {
    rmsnorm_kernel<float, kFp8><<<static_cast<unsigned>(rows), 256, smem, s>>>(
        static_cast<const float*>(x), x_stride, static_cast<float*>(residual), res_stride,
        static_cast<const float*>(w), static_cast<float*>(out), out_stride, static_cast<int>(dim),
        eps, q, qscale, fixed);
  }
  return last_error();
}

}  // namespace

const char* rmsnorm(const void* x, int64_t x_stride, void* residual, int64_t res_stride,
                    const void* w, void* out, int64_t out_stride, int64_t rows, int64_t dim,
                    float eps, DType dt, void* stream) {
  return rmsnorm_impl<false>(x, x_stride, residual, res_stride, w, out, out_stride, rows, dim, eps,
                             dt, stream, nullptr, nullptr, nullptr);
}

const char* rmsnorm_fp8(const void* x, int64_t x_stride, void* residual, int64_t res_stride,
                        const void* w, void* q, float* scale, const float* fixed_scale,
                        int64_t rows, int64_t dim, float eps, DType dt, void* stream) {
  return rmsnorm_impl<true>(x, x_stride, residual, res_stride, w, nullptr, 0, rows, dim, eps, dt,
                            stream, static_cast<uint8_t*>(q), scale, fixed_scale);
}

}  // namespace vla::gpu::kernels
