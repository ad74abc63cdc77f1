// FP8 (e4m3) quantisation of bf16 / float rows, per row or with one static scale (kernels.h).
#include "gpu/kernels/common.cuh"

namespace vla::gpu::kernels {
namespace {

template <typename T>
__global__ void quantize_fp8_kernel(const T* __restrict__ x, int64_t x_stride,
                                    uint8_t* __restrict__ q, float* __restrict__ qscale,
                                    const float* fixed, int dim) {
  extern __shared__ float row_buf[];
  const int64_t r = blockIdx.x;
  load_row(x + r * x_stride, dim, row_buf);
  quantize_row(row_buf, dim, q + r * dim, qscale, r, fixed);
}

__global__ void quantize_fp8_bf16_vec8(const __nv_bfloat16* __restrict__ x, int64_t x_stride,
                                       uint8_t* __restrict__ q, float* __restrict__ qscale,
                                       const float* fixed, int dim) {
  extern __shared__ float row_buf[];
  const int64_t r = blockIdx.x;
  load_row_bf16_vec8(x + r * x_stride, dim, row_buf);
  quantize_row(row_buf, dim, q + r * dim, qscale, r, fixed);
}

}  // namespace

const char* quantize_fp8(const void* x, int64_t x_stride, void* q, float* scale,
                         const float* fixed_scale, int64_t rows, int64_t dim, DType dt,
                         void* stream) {
  if (rows == 0) return nullptr;
  const size_t smem = static_cast<size_t>(dim) * sizeof(float);
  if (smem > 48 * 1024) return "quantize_fp8: row too wide for shared memory";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int threads = static_cast<int>((dim / 8 + 31) / 32 * 32);
  threads = threads < 128 ? 128 : (threads > 512 ? 512 : threads);
  uint8_t* qb = static_cast<uint8_t*>(q);
  if (dt == kBF16 && dim % 8 == 0 && aligned16(x, x_stride)) {
    quantize_fp8_bf16_vec8<<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, qb, scale, fixed_scale,
        static_cast<int>(dim));
  } else if (dt == kBF16) {
    quantize_fp8_kernel<__nv_bfloat16><<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const __nv_bfloat16*>(x), x_stride, qb, scale, fixed_scale,
        static_cast<int>(dim));
  } else {
    quantize_fp8_kernel<float><<<static_cast<unsigned>(rows), threads, smem, s>>>(
        static_cast<const float*>(x), x_stride, qb, scale, fixed_scale, static_cast<int>(dim));
  }
  return last_error();
}

}  // namespace vla::gpu::kernels
