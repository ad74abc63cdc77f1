// Private: the fused operations of the fast path, each with a CUDA kernel (kernels/<op>.cu) and an
// ATen reference used on the CPU, when kernels are off, and by the tests to check the kernels.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

#include <cstdint>
#include <vector>

// Float8 tensor types exist from torch 2.1 (the CI's Debian libtorch 1.13 has none: the FP8 path is
// compiled out there and reports itself unavailable).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define VLA_HAVE_FP8 1
#endif

namespace vla::gpu::ops {

// Whether `t` can go through the CUDA kernels (CUDA build, CUDA tensor, f32/bf16).
bool use_kernels(const at::Tensor& t, bool fused);

// rmsnorm(x) * w, computed in float32, result in x's dtype. x: [rows, dim] (row stride free).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, bool fused);
// residual += x (rounded to its dtype); returns rmsnorm(residual) * w.
at::Tensor add_rms_norm(const at::Tensor& x, at::Tensor& residual, const at::Tensor& w, double eps,
                        bool fused);
// In place on the first nheads heads of each row of x [rows, >= nheads*head_dim] (last dim
// contiguous): x = x*cos + rotate_half(x)*sin with float cos/sin [rows, head_dim].
void rotary_(at::Tensor& x, int nheads, int head_dim, const at::Tensor& cos, const at::Tensor& sin,
             bool fused);
// The decode step's rotary + KV-cache append. qkv [rows, (nq + 2 nkv) * head_dim] (last dim
// contiguous): rotary_ on its nq + nkv query and key heads, then its rows' (rotated) keys and
// values written to rows row0 .. row0 + rows - 1 of k_cache / v_cache [capacity, nkv, head_dim]
// (contiguous, qkv's dtype). row0: int64 [1] on qkv's device (CUDA graphs advance it in place).
// One kernel on CUDA (kernels/rotary.cu); else rotary_ and index_copy_.
void rotary_append_kv_(at::Tensor& qkv, int nq, int nkv, int head_dim, const at::Tensor& cos,
                       const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache,
                       const at::Tensor& row0, bool fused);
// silu(x[:, :inter]) * x[:, inter:2*inter].
at::Tensor silu_mul(const at::Tensor& x, int64_t inter, bool fused);
// The width the engine stores an MLP intermediate at: a multiple of 64 (16-byte aligned rows for
// the vectorised kernels; the vision tower's 3420 runs its GEMMs ~3x faster at 3456).
inline int64_t mlp_width(int64_t intermediate) { return (intermediate + 63) / 64 * 64; }
// x @ w^T (+ b). On CUDA, with bf16 operands that kernels::gemm_lt takes (contiguous, K and N
// multiples of 16): the fastest of aten::mm / addmm and cuBLASLt's candidate algorithms for the
// problem, timed once per problem shape and kept for the process (ops.cpp lt_choice).
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});
// One line per GEMM problem timed so far in this process ("M x K -> N, operand type: the way
// chosen, its time, the heuristic's first and ATen's"), for reports and benchmarks.
std::string gemm_choices();

// residual += x @ w^T (+ b): a block's output projection with the residual add in the GEMM's
// epilogue (kernels.h gemm_lt, one cuBLASLt matmul, rounded to bf16 once) when fused, on
// CUDA, bf16 and K, N multiples of 16; otherwise residual.add_(linear(x, w, b)) (the product
// rounded to residual's dtype first). residual [rows, N] contiguous, x [rows, K], w [N, K].
void linear_accumulate_(at::Tensor& residual, const at::Tensor& x, const at::Tensor& w,
                        const at::Tensor& b, bool fused);
// Whether linear_accumulate_ runs as one GEMM for these operands (else it adds the product after:
// callers that can fuse the add elsewhere, e.g. into add + RMSNorm, should do that instead).
bool linear_accumulate_fused(const at::Tensor& residual, const at::Tensor& x, const at::Tensor& w,
                             const at::Tensor& b, bool fused);

// ---- FP8 (e4m3fn): activations per token or with one static (calibrated) scale, weights per
// output channel or per tensor.
// Rows quantised to e4m3: q [rows, K] float8_e4m3fn (contiguous), scale float [rows, 1] with
// scale = max(amax(row), 1e-12) / 448 and q = saturate(row * 448 / max(amax, 1e-12)); or, with a
// static scale s (float [1] on the device), scale = s and q = saturate(row / s).
struct Fp8Rows {
  at::Tensor q, scale;
  // Weights quantised per tensor (quantize_fp8_tensor): scale is [rows, 1] with one value repeated.
  bool tensorwise = false;
  bool defined() const { return q.defined(); }
};
// Whether this build has float8 types (torch >= 2.1).
bool fp8_compiled();
// Whether linear_fp8 can run on `device`: CPU (emulated by dequantising) or a CUDA device with
// compute capability >= 8.9 and aten::_scaled_mm.
bool fp8_supported(const at::Device& device);
// x [rows, K] (row stride free) -> per-row e4m3, or with one static scale fixed_scale.
Fp8Rows quantize_fp8(const at::Tensor& x, bool fused, const at::Tensor& fixed_scale = {});
// w [N, K] -> e4m3 with one scale for the whole tensor (amax / 448), tensorwise = true.
Fp8Rows quantize_fp8_tensor(const at::Tensor& w);
// The producers of quantised activations below quantise per row, or with fixed_scale (one float32
// on x's device, e.g. a calibrated static scale; throws vla::Error otherwise) when it is defined.
// rmsnorm(x) * w (computed in float), quantised.
Fp8Rows rms_norm_fp8(const at::Tensor& x, const at::Tensor& w, double eps, bool fused,
                     const at::Tensor& fixed_scale = {});
// residual += x (rounded to its dtype); returns rmsnorm(residual) * w quantised.
Fp8Rows add_rms_norm_fp8(const at::Tensor& x, at::Tensor& residual, const at::Tensor& w, double eps,
                         bool fused, const at::Tensor& fixed_scale = {});
// silu(x[:, :inter]) * x[:, inter:2*inter] (computed in float), quantised.
Fp8Rows silu_mul_fp8(const at::Tensor& x, int64_t inter, bool fused,
                     const at::Tensor& fixed_scale = {});
// Float32 values of quantised rows (q * scale).
at::Tensor dequantize_fp8(const Fp8Rows& x);
// (x.q * x.scale) @ (w.q * w.scale)^T (+ b), fp32 accumulation, result in out_dtype. On CUDA
// through aten::_scaled_mm (needs K and N multiples of 16, out bf16): tensor-wise scales when x
// has one static scale and w is per tensor (then, with fast_accum, the fastest of _scaled_mm and
// cuBLASLt's candidate algorithms, as for linear), else row-wise; otherwise (CPU, other shapes) by
// dequantising to float32.
at::Tensor linear_fp8(const Fp8Rows& x, const Fp8Rows& w, const at::Tensor& b,
                      at::ScalarType out_dtype, bool fast_accum);

// linear_accumulate_ for quantised operands: residual += dequant(x) @ dequant(w)^T (+ b). The
// cuBLASLt path needs x with one static scale and w per tensor (calibrated FP8) and fast_accum;
// otherwise residual.add_(linear_fp8(x, w, b, residual's dtype, fast_accum)).
void linear_fp8_accumulate_(at::Tensor& residual, const Fp8Rows& x, const Fp8Rows& w,
                            const at::Tensor& b, bool fused, bool fast_accum);
bool linear_fp8_accumulate_fused(const at::Tensor& residual, const Fp8Rows& x, const Fp8Rows& w,
                                 const at::Tensor& b, bool fused, bool fast_accum);
// The MLP's gate|up projection and SwiGLU as one GEMM whose epilogue applies SwiGLU (kernels.h
// gemm_swiglu: a Triton kernel, present when the build had Triton), so the [rows, 2 * inter]
// product never goes to memory. Source: transformers' Qwen2MLP / Qwen2_5_VLMLP,
// act_fn(gate_proj(x)) * up_proj(x). Both take the fused gate|up weights w [2 * inter, K] (gate
// rows, then up rows) and a bias b [2 * inter] or undefined; variant 0 .. linear_swiglu_variants
// (x, fp8) - 1 runs that compiled tile configuration (CUDA), -1 the float32 reference (any
// device). Throw vla::Error on mismatched shapes, missing scales or a variant the device lacks.
// Compiled variants usable for x's device: 0 off CUDA, without Triton at build time or FP8 types.
int linear_swiglu_variants(const at::Tensor& x, bool fp8);
// bf16: silu_mul(linear(x, w, b), inter) for x [rows, K] bf16 -> [rows, inter] bf16.
at::Tensor linear_swiglu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                         int64_t inter, int variant);
// FP8 with static output quantisation: silu_mul_fp8(linear_fp8(x, w, b, float), inter, ..,
// out_scale). x: quantised with one static scale (x.scale one float); w quantised per tensor
// (quantize_fp8_tensor); out_scale: one float32 on x's device. Returns q [rows, inter] e4m3,
// scale = out_scale.
Fp8Rows linear_swiglu_fp8(const Fp8Rows& x, const Fp8Rows& w, const at::Tensor& b, int64_t inter,
                          const at::Tensor& out_scale, int variant);

// The decode step's product of ONE row (batch-1 decoding reads every weight once per token, so it
// is a weight stream, not a GEMM): x [1, K] (contiguous) @ w^T (+ b) -> [1, N] in x's dtype, fp32
// accumulation. w [N, K] is in x's dtype, or, when w8 is defined, w8 holds the weights as e4m3
// rows with per-row scales (weight-only FP8: half the bytes; x is not quantised) and w is unused.
// silu_gate: the weights are a fused gate|up matrix [2 * inter, K] and the result is
// silu(x . gate_i) * (x . up_i) -> [1, inter] (b unused). The CUDA kernel (kernels/gemv.cu) runs
// when fused, K % 16 == 0 and x and the weights are 16-byte aligned; otherwise the float32 ATen
// reference.
at::Tensor gemv(const at::Tensor& x, const at::Tensor& w, const Fp8Rows& w8, const at::Tensor& b,
                bool silu_gate, bool fused);

// Packed variable-length sequences: rows [cu[i], cu[i+1]) form sequence i.
struct Varlen {
  std::vector<int64_t> cu;  // host copy
  at::Tensor cu_dev;        // int32 on the device
  int64_t max_len = 0;
  static Varlen make(const std::vector<int64_t>& cu, const at::Device& device);
  int64_t total() const { return cu.empty() ? 0 : cu.back(); }
};

// kCausalKernel: causal_attention's CUDA kernel; kCausalTriton: its Triton kernel (causal only).
enum class AttnBackend { kFlashVarlen, kMath, kSdpa, kCudnn, kCausalKernel, kCausalTriton };
const char* backend_name(AttnBackend b);

// Attention over B equal-length sequences of S rows each (T = B*S) through
// aten::scaled_dot_product_attention (kSdpa) or aten::_scaled_dot_product_cudnn_attention (kCudnn);
// kv heads are expanded when H != Hk. Same contract as attention().
at::Tensor attention_dense(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t B,
                           bool causal, double scale, AttnBackend backend);

// Whether aten::_flash_attention_forward is usable for this dtype/device/head_dim.
bool flash_available(const at::Tensor& q);
// Attention over packed sequences. q [Tq, H, D], k/v [Tk, Hk, D] (H % Hk == 0, last dim
// contiguous, other strides free). Returns [Tq, H, D] contiguous. `use_flash` selects flash
// attention (one launch for all sequences) over the per-sequence math reference. When
// k_max_override > 0 the flash call uses it as max_k (for a fixed-capacity KV cache whose real
// lengths live in kv.cu_dev on the device; the host kv.cu is then only used by the reference).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const Varlen& qv, const Varlen& kv, bool causal, double scale, bool use_flash,
                     int64_t k_max_override = 0);

// Causal attention over packed sequences (the decoder's prefill): attention(q, k, v, seqs, seqs,
// causal = true, scale) with q [T, H, D], k / v [T, Hk, D] (heads contiguous within a row, rows
// strided), returns [T, H, D] contiguous. triton_variant -1: when fused and
// causal_attention_available(q) (CUDA build, bf16, D = 16, 32, 64 or 128, 16-byte aligned rows)
// the kernel kernels/causal_attention.cu (FlashAttention-2 with 64-query tiles, launched longest
// first), otherwise the math reference. triton_variant 0 .. causal_attention_triton_variants(q) -
// 1: that compiled tile configuration of the Triton kernel kernels/causal_attention.py (WGMMA on
// sm_90; D = 128, row strides multiples of 16 elements), or vla::Error when it cannot run.
bool causal_attention_available(const at::Tensor& q);
int causal_attention_triton_variants(const at::Tensor& q);
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const Varlen& seqs, double scale, bool fused, int triton_variant = -1);

// The vision tower's window blocks: rotary_ on the q and k heads of qkv [T, 3 * heads * head_dim]
// (q heads, k heads, v heads; last dim contiguous), then attention within each window (non-causal).
// cos / sin: float [T, head_dim] with equal halves (as vision_rotary builds them: the kernel reads
// the first half); windows: packed sequences covering all T rows. Returns
// [T, heads * head_dim] contiguous. The CUDA kernel (kernels/window_attention.cu: rotary applied
// while loading, qkv left as it is) runs when fused, bf16, 16-byte aligned rows and
// kernels::window_attention_fits(head_dim, windows.max_len) (every window <= 64 rows); otherwise
// qkv is rotated in place and attention() runs (flash when use_flash). Source: transformers'
// Qwen2_5_VLVisionAttention (apply_rotary_pos_emb_vision, then attention per cu_window_seqlens).
at::Tensor window_attention(at::Tensor& qkv, int heads, int head_dim, const at::Tensor& cos,
                            const at::Tensor& sin, const Varlen& windows, double scale, bool fused,
                            bool use_flash);

// causal_attention / window_attention with the output quantised to e4m3 with one static scale
// (fixed_scale: one float32 on the inputs' device; Fp8Rows::scale is it): q is [T, heads *
// head_dim] e4m3 = saturate(attention / scale), the input of an FP8 output projection
// (Engine::calibrate_fp8, EngineOptions::fp8_output_projections). The kernels quantise in their
// store; where they do not run, the bf16 result is quantised after. Throws vla::Error without
// float8 support or without a static scale.
Fp8Rows causal_attention_fp8(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const Varlen& seqs, double scale, bool fused,
                             const at::Tensor& fixed_scale, int triton_variant = -1);
Fp8Rows window_attention_fp8(at::Tensor& qkv, int heads, int head_dim, const at::Tensor& cos,
                             const at::Tensor& sin, const Varlen& windows, double scale, bool fused,
                             bool use_flash, const at::Tensor& fixed_scale);

}  // namespace vla::gpu::ops
