// Rotary + attention inside windows of at most 64 rows: the Qwen2.5-VL vision tower's window
// blocks (transformers' Qwen2_5_VLVisionAttention with cu_window_seqlens). Written for this op: no
// library here offers windowed attention with the rotary embedding applied on load, and at 64 keys
// a general flash kernel (128-row tiles, a separate rotary pass over q and k) spends most of its
// time moving data. The pattern is FlashAttention-2 (Dao, 2023, arXiv:2307.08691) with one key
// tile, so no online rescaling: one CTA per (window, head) copies q, k, v and the first half of
// the window's rotary table rows into shared memory at once (cp.async), rotates q and k there (in
// float, rounded to bf16 as the standalone rotary kernel rounds), then each warp computes S = q k^T
// for 16 query rows and O = softmax(S) v on tensor cores (mma.sync m16n8k16, bf16 in, fp32
// accumulation; v's fragments through ldmatrix.trans), with P rounded to bf16 for the second
// product as flash attention does. The output is bf16, or e4m3 with a static scale (the input of
// the FP8 output projection, quantised in the store). The kernel is bound by instruction issue
// (Nsight Compute: ~1,500 instructions per warp, few HMMA), so its copy and rotary loops step
// through rows with compile-time strides instead of dividing a flat index.
#include "gpu/kernels/common.cuh"
#include "gpu/kernels/mma.cuh"

namespace vla::gpu::kernels {
namespace {

constexpr int kWin = 64;           // rows per window, at most
constexpr int kWarps = kWin / 16;  // one warp per 16 query rows
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;

// q, k, v tiles [kWin][D + 8] bf16, then the tables' first halves [kWin][D / 2] float (cos, sin).
template <int D>
constexpr int smem_bytes() {
  return 3 * kWin * (D + 8) * 2 + 2 * kWin * (D / 2) * 4;
}

// grid (heads, windows), kThreads threads: the CTAs of one window's heads run side by side, so
// together they read whole qkv rows (and share the window's cos / sin rows in L2) instead of one
// head's 2 D bytes of every row at a time. qkv rows: [q heads | k heads | v heads], each head D
// wide. Rows r0 .. r0 + len - 1 of window w = blockIdx.y (r0 = cu[w], len = cu[w + 1] - r0 <= 64).
// cos / sin: float [rows, D] with equal halves (only the first is read). Out: __nv_bfloat16, or
// uint8_t (e4m3, divided by *out_scale).
template <int D, typename Out>
__global__ void __launch_bounds__(kThreads, 4)
    window_attention_kernel(const __nv_bfloat16* __restrict__ qkv, int64_t stride,
                            const float* __restrict__ cos, const float* __restrict__ sin,
                            const int32_t* __restrict__ cu, int heads, float scale_log2,
                            Out* __restrict__ out, int64_t out_stride,
                            const float* __restrict__ out_scale, bool whole_chunks) {
  constexpr int kQ = D + 8;       // padded rows: the fragment loads below hit distinct banks
  constexpr int kChunks = D / 8;  // 16-byte chunks per head row (bf16) and per half table row
  constexpr int kHalf = D / 2;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [kWin][kQ]
  __nv_bfloat16* ks = qs + kWin * kQ;                              // [kWin][kQ]
  __nv_bfloat16* vs = ks + kWin * kQ;                              // [kWin][kQ]
  float* cos_half = reinterpret_cast<float*>(vs + kWin * kQ);      // [kWin][kHalf]
  float* sin_half = cos_half + kWin * kHalf;                       // [kWin][kHalf]
  const int h = blockIdx.x;
  const int64_t r0 = cu[blockIdx.y];
  const int len = cu[blockIdx.y + 1] - static_cast<int>(r0);
  const int tid = threadIdx.x;

  // Every 16-byte chunk of the window's q, k, v head rows and half table rows in flight at once:
  // thread t copies chunk t % kChunks of rows t / kChunks, + kRowStep, ...; q, k, v rows past the
  // window are zero.
  constexpr int kRowStep = kThreads / kChunks;
  if (tid < kRowStep * kChunks) {
    const int c = tid % kChunks;
    int row = tid / kChunks;
    const int64_t width = static_cast<int64_t>(heads) * D;
    const __nv_bfloat16* src = qkv + (r0 + row) * stride + static_cast<int64_t>(h) * D + c * 8;
    const float* ct = cos + (r0 + row) * D + c * 4;
    const float* st = sin + (r0 + row) * D + c * 4;
#pragma unroll 2
    for (; row < kWin; row += kRowStep) {
      const bool valid = row < len;
      const int at = row * kQ + c * 8;
      cp_async16(qs + at, valid ? src : qkv, valid);
      cp_async16(ks + at, valid ? src + width : qkv, valid);
      cp_async16(vs + at, valid ? src + 2 * width : qkv, valid);
      if (valid) {
        cp_async16(cos_half + row * kHalf + c * 4, ct, true);
        cp_async16(sin_half + row * kHalf + c * 4, st, true);
      }
      src += kRowStep * stride;
      ct += kRowStep * D;
      st += kRowStep * D;
    }
  }
  asm volatile("cp.async.wait_all;\n" ::);
  __syncthreads();
  rotate_tiles<D, kThreads>(qs, ks, kQ, len, cos_half, sin_half);
  __syncthreads();

  const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int m0 = warp * 16;
  if (m0 >= len) return;

  // S = q k^T for rows m0 + g and m0 + g + 8; n-tile j holds keys j*8 + 2*t4 + {0, 1}.
  float s[kWin / 8][4];
#pragma unroll
  for (int j = 0; j < kWin / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
  qk_tile<D, kWin / 8>(s, qs, ks, kQ, m0, lane, len);
  // Softmax over the window's keys (a row's 64 values are spread over the 4 threads of a quad).
  float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
  for (int j = 0; j < kWin / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (j * 8 + t4 * 2 + e >= len) s[j][e] = s[j][2 + e] = -INFINITY;
      mx0 = fmaxf(mx0, s[j][e]);
      mx1 = fmaxf(mx1, s[j][2 + e]);
    }
  }
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1) {
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o));
  }
  const float b0 = mx0 * scale_log2, b1 = mx1 * scale_log2;
  float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
  for (int j = 0; j < kWin / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      s[j][e] = exp2f(s[j][e] * scale_log2 - b0);
      s[j][2 + e] = exp2f(s[j][2 + e] * scale_log2 - b1);
      sum0 += s[j][e];
      sum1 += s[j][2 + e];
    }
  }
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1) {
    sum0 += __shfl_xor_sync(0xffffffffu, sum0, o);
    sum1 += __shfl_xor_sync(0xffffffffu, sum1, o);
  }
  // O = P v: the S accumulators of n-tiles 2kk and 2kk + 1 are the A fragment of key step kk.
  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kWin / 16; ++kk)
    if (kk * 16 < len) pv_step<D>(acc, s, kk, vs, kQ, lane);  // warp-uniform: later keys' P is 0
  const float to_out = out_scale ? 1.f / __ldg(out_scale) : 1.f;
  const float inv0 = to_out / sum0, inv1 = to_out / sum1;
  if (whole_chunks) {
    // The warp's 16 output rows are staged in its own q rows (no other warp reads them) and
    // written as whole 16-byte chunks; the fragment layout alone stores 4 bytes per thread.
    constexpr int kPitch = kQ * 2 / static_cast<int>(sizeof(Out));  // staged row, Out elements
    constexpr int kChunksOut = D * static_cast<int>(sizeof(Out)) / 16;
    Out* stage = reinterpret_cast<Out*>(qs + m0 * kQ);
    __syncwarp();
    store_fragment<D>(acc, inv0, inv1, stage + g * kPitch + t4 * 2,
                      stage + (g + 8) * kPitch + t4 * 2);
    __syncwarp();
    for (int i = lane; i < 16 * kChunksOut; i += 32) {
      const int r = i / kChunksOut, c = i - r * kChunksOut;
      if (m0 + r >= len) continue;
      Out* dst = out + (r0 + m0 + r) * out_stride + static_cast<int64_t>(h) * D;
      reinterpret_cast<uint4*>(dst)[c] = reinterpret_cast<const uint4*>(stage + r * kPitch)[c];
    }
    return;
  }
  const int ra = m0 + g, rb = m0 + g + 8;
  auto row_out = [&](int r) {
    return r < len ? out + (r0 + r) * out_stride + static_cast<int64_t>(h) * D + t4 * 2 : nullptr;
  };
  store_fragment<D>(acc, inv0, inv1, row_out(ra), row_out(rb));
}

template <int D, typename Out>
const char* launch(const void* qkv, int64_t stride, const float* cos, const float* sin,
                   const int32_t* cu, int64_t windows, int heads, float scale, void* out,
                   int64_t out_stride, const float* out_scale, cudaStream_t s) {
  constexpr int bytes = smem_bytes<D>();
  if (bytes > 48 * 1024) {
    static const cudaError_t set = cudaFuncSetAttribute(
        window_attention_kernel<D, Out>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (set != cudaSuccess) return cudaGetErrorString(set);
  }
  const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>(windows));
  // Output rows of whole 16-byte chunks (every head's D * sizeof(Out) is a multiple of 16).
  const bool whole_chunks = reinterpret_cast<uintptr_t>(out) % 16 == 0 &&
                            (out_stride * static_cast<int64_t>(sizeof(Out))) % 16 == 0;
  window_attention_kernel<D, Out><<<grid, kThreads, bytes, s>>>(
      static_cast<const __nv_bfloat16*>(qkv), stride, cos, sin, cu, heads, scale * kLog2e,
      static_cast<Out*>(out), out_stride, out_scale, whole_chunks);
  return last_error();
}
template <int D>
const char* launch(const void* qkv, int64_t stride, const float* cos, const float* sin,
                   const int32_t* cu, int64_t windows, int heads, float scale, void* out,
                   int64_t out_stride, const float* out_scale, cudaStream_t s) {
  return out_scale ? launch<D, uint8_t>(qkv, stride, cos, sin, cu, windows, heads, scale, out,
                                        out_stride, out_scale, s)
                   : launch<D, __nv_bfloat16>(qkv, stride, cos, sin, cu, windows, heads, scale, out,
                                              out_stride, nullptr, s);
}

}  // namespace

bool window_attention_fits(int head_dim, int64_t max_window) {
  if (max_window < 1 || max_window > kWin) return false;
  switch (head_dim) {
    case 16:
    case 32:
    case 64:
    case 80:
    case 128:
      return true;
    default:
      return false;
  }
}

const char* window_attention(const void* qkv, int64_t qkv_stride, const float* cos,
                             const float* sin, const int32_t* cu, int64_t windows,
                             int64_t max_window, int heads, int head_dim, float scale, void* out,
                             int64_t out_stride, const float* out_scale, void* stream) {
  if (windows == 0) return nullptr;
  if (windows > 65535) return "window_attention: more than 65535 windows in one launch";
  if (!window_attention_fits(head_dim, max_window))
    return "window_attention: head_dim or window length not supported (window_attention_fits)";
  if (qkv_stride % 8 != 0 || reinterpret_cast<uintptr_t>(qkv) % 16 != 0 || out_stride % 2 != 0 ||
      reinterpret_cast<uintptr_t>(out) % 4 != 0)
    return "window_attention: qkv needs 16-byte aligned rows, out 4-byte aligned rows";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  auto run = [&](auto d) {
    return launch<decltype(d)::value>(qkv, qkv_stride, cos, sin, cu, windows, heads, scale, out,
                                      out_stride, out_scale, s);
  };
  return dispatch_head_dim<16, 32, 64, 80, 128>(head_dim, run);
}

}  // namespace vla::gpu::kernels
