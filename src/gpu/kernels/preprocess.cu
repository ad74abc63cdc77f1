// Image preprocessing on the device: antialiased bicubic uint8 resize (two passes, Pillow-SIMD
// integer rounding), rescale, normalise and patchify (kernels.h); the frame upload.
#include "gpu/kernels/common.cuh"

namespace vla::gpu::kernels {
namespace {

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

}  // namespace

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
