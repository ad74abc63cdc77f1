// Private: raw CUDA kernels of the GPU fast path (kernels/, one op per .cu file). Plain pointers
// and a void* stream so that this header needs neither CUDA nor torch; ops.cpp wraps them for
// at::Tensor. Every launcher returns nullptr on success or a static error string
// (cudaGetErrorString).
#pragma once

#include <cstddef>
#include <cstdint>

namespace vla::gpu::kernels {

enum DType : int { kF32 = 0, kBF16 = 1 };

// out[r] = rmsnorm(x[r] (+ residual[r])) * w. With residual != nullptr the sum is rounded to the
// storage type, written back into residual (the new residual stream) and normalised.
const char* rmsnorm(const void* x, int64_t x_stride, void* residual, int64_t res_stride,
                    const void* w, void* out, int64_t out_stride, int64_t rows, int64_t dim,
                    float eps, DType dt, void* stream);

// FP8 (e4m3fn) outputs: q is [rows, dim] bytes (row stride dim), scale float [rows] with
// scale = max(amax(row), 1e-12) / 448 and q = saturate(v * (448 / max(amax, 1e-12))), computed from
// the float values (no rounding to the storage type first). With fixed_scale != nullptr (one
// float on the device: a calibrated per-tensor scale) q = saturate(v / *fixed_scale) instead and
// scale is not written (may be nullptr).
// rmsnorm (+ residual add, as rmsnorm above) with the normalised row quantised instead of stored.
const char* rmsnorm_fp8(const void* x, int64_t x_stride, void* residual, int64_t res_stride,
                        const void* w, void* q, float* scale, const float* fixed_scale,
                        int64_t rows, int64_t dim, float eps, DType dt, void* stream);
// silu(x[r, i]) * x[r, inter + i] quantised per row (or with fixed_scale).
const char* silu_mul_fp8(const void* x, int64_t x_stride, void* q, float* scale,
                         const float* fixed_scale, int64_t rows, int64_t inter, DType dt,
                         void* stream);
// Rows of x quantised per row (or with fixed_scale).
const char* quantize_fp8(const void* x, int64_t x_stride, void* q, float* scale,
                         const float* fixed_scale, int64_t rows, int64_t dim, DType dt,
                         void* stream);

// In-place rotary embedding on the first `nheads` heads (each `head_dim` wide, contiguous) of every
// row of x (row stride `x_stride` elements): x = x*cos + rotate_half(x)*sin, cos/sin float [rows,
// head_dim] (row stride head_dim).
const char* rotary(void* x, int64_t x_stride, const float* cos, const float* sin, int64_t rows,
                   int nheads, int head_dim, DType dt, void* stream);

// The decode step's rotary + KV-cache append: on each row r of a QKV buffer x (row stride
// x_stride; nq query heads, then nkv key heads, then nkv value heads, each head_dim wide) rotary on
// the query and key heads in place (as `rotary`), and the rotated key heads and the value heads
// copied to row (*row0 + r) of k_cache / v_cache [capacity, nkv, head_dim] (contiguous). row0 is
// an int64 on the device, so a captured graph can advance it.
const char* rotary_append_kv(void* x, int64_t x_stride, const float* cos, const float* sin,
                             int64_t rows, int nq, int nkv, int head_dim, void* k_cache,
                             void* v_cache, const int64_t* row0, DType dt, void* stream);

// Rotary + attention within windows (the vision tower's window blocks): for each window w (rows
// cu[w] .. cu[w + 1] - 1 of qkv, cu int32 [windows + 1] on the device) and head h, q and k heads h
// of those rows rotated as `rotary` does (cos / sin float [rows, head_dim] whose two halves are
// equal, as transformers' emb = cat(freqs, freqs) makes every Qwen2.5-VL table: the kernel reads
// the first half; rounded to bf16), then
// out[rows, h * head_dim ..] = softmax(q k^T * scale) v. qkv rows (row stride qkv_stride, 16-byte
// aligned): heads query heads, then heads key heads, then heads value heads; qkv is not written.
// bf16 only; needs window_attention_fits(head_dim, max_window) (every window <= 64 rows).
// out: bf16 rows, or with out_scale != nullptr (one float on the device, a static scale as for
// the _fp8 ops above) e4m3 rows q = saturate(out / *out_scale) (row stride out_stride bytes).
bool window_attention_fits(int head_dim, int64_t max_window);
const char* window_attention(const void* qkv, int64_t qkv_stride, const float* cos,
                             const float* sin, const int32_t* cu, int64_t windows,
                             int64_t max_window, int heads, int head_dim, float scale, void* out,
                             int64_t out_stride, const float* out_scale, void* stream);

// Causal attention over packed sequences (the decoder's prefill; kernels/causal_attention.cu):
// sequence i is rows cu[i] .. cu[i + 1] - 1 (cu int32 [seqs + 1] on the device); for each row r
// and head h, out[r, h] = softmax(q[r, h] k[j, h / (heads / kv_heads)]^T * scale) v[j, ...] over
// the rows j <= r of r's sequence. q, k, v, out: bf16 rows (16-byte aligned, the given strides),
// heads of head_dim contiguous in a row. tiles = the sum over sequences of ceil(len / 64) (the
// host knows the lengths). Needs causal_attention_fits(head_dim) (16, 32, 64 or 128). out_scale:
// as for window_attention (e4m3 output when set).
bool causal_attention_fits(int head_dim);
const char* causal_attention(const void* q, int64_t q_stride, const void* k, int64_t k_stride,
                             const void* v, int64_t v_stride, const int32_t* cu, int seqs,
                             int64_t tiles, int heads, int kv_heads, int head_dim, float scale,
                             void* out, int64_t out_stride, const float* out_scale, void* stream);

// The same causal attention by the Triton kernel kernels/causal_attention.py (compiled ahead of
// time like gemm_swiglu below; on sm_90 its products run as warpgroup MMA, which the CUDA
// kernel above does not use): `variant` 0 .. causal_attention_triton_variants() - 1 picks a
// compiled tile configuration, and tiles = the sum over sequences of ceil(len /
// causal_attention_triton_tile_rows(variant)). Needs head_dim 128 (every Qwen2 / Qwen2.5-VL
// decoder), row strides that are multiples of 16 elements and 16-byte aligned pointers; returns an
// error otherwise. Variants: 0 when the build had no Triton or the device is not sm_90.
int causal_attention_triton_variants();
// "BM64 BN64 D128 w4 s2": query rows per program, keys per step, head dim, warps, stages.
const char* causal_attention_triton_variant_name(int variant);
int causal_attention_triton_tile_rows(int variant);  // BM; 0 for no such variant
const char* causal_attention_triton(int variant, const void* q, int64_t q_stride, const void* k,
                                    int64_t k_stride, const void* v, int64_t v_stride,
                                    const int32_t* cu, int seqs, int64_t tiles, int heads,
                                    int kv_heads, int head_dim, float scale, void* out,
                                    int64_t out_stride, const float* out_scale, void* stream);

// out[r, i] = silu(x[r, i]) * x[r, inter + i] for x [rows, 2*inter] (row stride x_stride).
const char* silu_mul(const void* x, int64_t x_stride, void* out, int64_t rows, int64_t inter,
                     DType dt, void* stream);

// gate|up GEMM with SwiGLU in its epilogue (kernels/gemm_swiglu.py, a Triton kernel compiled ahead
// of time into cubins by kernels/triton_aot.py when the build machine had Triton; launched through
// the CUDA driver API by kernels/triton_kernels.cpp), with bf16 operands or (fp8) e4m3 ones:
//   out[m, n] = silu(g) * u (bf16), or saturate(silu(g) * u / *out_scale, +-448) (e4m3), with
//   g, u = (a w^T)[m, n], [m, N + n] (fp8: * *a_scale * *w_scale) (+ bias[n], bias[N + n])
// for a [M, K] (row stride K), w [2N, K] (gate rows, then up rows), out [M, N] (row stride N),
// bias bf16 [2N] or nullptr; the fp8 scales are one float each on the device (bf16: unused, may
// be null). `scratch`: device memory of gemm_swiglu_scratch_bytes(...) bytes, 256-byte aligned,
// kept until the work on `stream` is done (the kernel builds its TMA descriptors there). `variant`
// picks one of the compiled tile configurations: 0 .. gemm_swiglu_variants(fp8) - 1. Needs N and K
// multiples of the variant's tiles (128 / 64 or 128; the engine's padded MLP widths and hidden
// sizes are) and 16-byte aligned pointers; otherwise returns an error.
// Variants usable on the current device: 0 when the build had no Triton or the device is not the
// architecture the cubins were compiled for (sm_90).
int gemm_swiglu_variants(bool fp8);
// "BM128 BN128 BK128 w8 s3": the variant's tile (rows x half the product's columns x depth),
// warps and stages.
const char* gemm_swiglu_variant_name(bool fp8, int variant);
// Whether the variant's tiles divide N and K (else gemm_swiglu refuses the shape).
bool gemm_swiglu_fits(bool fp8, int variant, int64_t N, int64_t K);
// Bytes of global scratch gemm_swiglu needs for this shape on the current device (0 if none).
size_t gemm_swiglu_scratch_bytes(bool fp8, int variant, int64_t M, int64_t N);
const char* gemm_swiglu(bool fp8, int variant, const void* a, const void* w, const void* bias,
                        void* out, int64_t M, int64_t N, int64_t K, const float* a_scale,
                        const float* w_scale, const float* out_scale, void* scratch, void* stream);

// out[M, N] (bf16, row stride N) = a[M, K] w[N, K]^T (* *a_scale * *w_scale) (+ bias[N]), or with
// `accumulate` out += that (the residual add of a block's output projection in the GEMM's
// epilogue: C = D = out, beta = 1, rounded to bf16 once), in one cuBLASLt matmul
// (kernels/gemm_lt.cpp). a / w: bf16, or e4m3 (fp8 = true) with one float scale each on the device
// (tensor-wise; fast accumulation); bias: bf16 [N] or nullptr; workspace: device memory for
// cuBLASLt (the caller's, kept until the work on `stream` is done). `algo` picks one of the
// problem's candidates on the current device (0 = the heuristic's first; gemm_lt_candidates says
// how many: the caller times them). Needs K and N multiples of 16 and 16-byte aligned pointers.
constexpr int kGemmLtMaxCandidates = 16;
const char* gemm_lt(const void* a, const void* w, bool fp8, const float* a_scale,
                    const float* w_scale, const void* bias, void* out, bool accumulate, int64_t M,
                    int64_t N, int64_t K, int algo, void* workspace, size_t workspace_bytes,
                    void* stream);
// How many algorithms (at most kGemmLtMaxCandidates) cuBLASLt's heuristic offers for gemm_lt's
// problem (bias: with a bias epilogue); 0 and *error (if given) when it offers none.
int gemm_lt_candidates(bool fp8, bool bias, bool accumulate, int64_t M, int64_t N, int64_t K,
                       size_t workspace_bytes, const char** error);

// Decode GEMV (one activation row): out[r] = (sum_k x[k] * w[r, k]) * wscale[r] (+ bias[r]) for
// r < n, fp32 accumulation, x / bias / out in `dt`. w is [n, k] in `dt`, or e4m3 rows (w_fp8) with
// float scales wscale [n] (weight-only FP8; x is not quantised; wscale = nullptr for dt weights).
// silu_gate: w holds 2n rows (gate rows, then up rows) and out[r] = silu(g_r) * u_r with g_r, u_r
// the sums of rows r and n + r (bias unused). Needs k % 16 == 0 and 16-byte aligned x and w.
const char* gemv(const void* x, const void* w, bool w_fp8, const float* wscale, const void* bias,
                 void* out, int64_t n, int64_t k, bool silu_gate, DType dt, void* stream);

// Separable uint8 resize (torchvision / Pillow-SIMD antialiased bicubic), pass 1 (horizontal):
// uint8 HWC3 frames -> uint8 [views, h, out_w, 3]. Integer weights int32 [out_w, ksize] with
// `precision` fractional bits, bounds int32 [out_w, 2] = (first input column, taps); result =
// clamp((2^(precision-1) + sum px*w) >> precision, 0, 255), as ATen's uint8 AVX kernel.
const char* resize_h_u8(const uint8_t* in, uint8_t* out, int views, int h, int w, int out_w,
                        const int32_t* coeffs, const int32_t* bounds, int ksize, int precision,
                        void* stream);

// Pass 2 (vertical, same integer rounding) fused with rescale+normalise ((u8 - mean255[c]) /
// std255[c], host arrays) and patchify into Qwen2-VL patch
// rows: out [num_patches, 3 * temporal * patch * patch] (layout C, T, ph, pw). Patch row p reads
// the patch at (view, gy, gx) = decode(patch_src[p]) with patch_src = (view * gh + gy) * gw + gx.
// `in` is uint8 [views, in_h, out_w, 3]; coefficients as for resize_h_u8 but over rows.
const char* resize_v_patchify(const uint8_t* in, void* out, int64_t num_patches,
                              const int32_t* patch_src, int in_h, int out_w, int gh, int gw,
                              const int32_t* coeffs, const int32_t* bounds, int ksize,
                              int precision, int patch, int temporal, const float* mean255,
                              const float* std255, DType dt, void* stream);

// Asynchronous host->device copy on the given stream (pinned source for real overlap).
const char* copy_h2d(void* dst, const void* src, int64_t bytes, void* stream);

}  // namespace vla::gpu::kernels
