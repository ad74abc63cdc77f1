// Private: the backend-parity table of the fast path's fused ops (after llama.cpp's
// test-backend-ops). Each case is one op at one shape and dtype; check_op() runs it through the
// fused kernel (CUDA) and through its ATen reference (ops.h, fused = false) and both against a
// float64 recomputation of the op's definition. tests/gpu runs every case on the CPU and on CUDA;
// bench_gpu times the same cases at the 3B model's shapes (fused vs reference).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "weights/weights.h"

namespace vla::gpu::ops {

// Ops in the table, and the meaning of OpCase::dims for each:
//   rms_norm, add_rms_norm, rms_norm_fp8, add_rms_norm_fp8, quantize_fp8: {rows, dim}
//   add_rms_norm_static_fp8, silu_mul_static_fp8: as without _static, quantised with one static
//     scale (1.25 x the largest row scale) instead of per row
//   rotary: {rows, heads, head_dim} (two more heads follow in each row and stay untouched)
//   silu_mul, silu_mul_fp8: {rows, inter}
//   attention: {tokens, heads, kv_heads, head_dim, causal (0/1), sequences (equal length)}
//   causal_attention: {tokens, heads, kv_heads, head_dim, sequences (equal length)}
//   window_attention: {tokens, heads, head_dim, window} (qkv rows; windows of `window` rows, the
//     last one shorter when tokens % window != 0)
//   causal_attention_static_fp8, window_attention_static_fp8: as without, the output quantised to
//     e4m3 with one static scale (max |v| / 448)
//   gemv, gemv_fp8: {N, K} (one row x [1, K] times w [N, K]^T + bias; _fp8: e4m3 weights)
//   gemv_silu_mul, gemv_silu_mul_fp8: {inter, K} (fused gate|up weights [2 * inter, K], SwiGLU)
//   linear_accumulate, linear_accumulate_static_fp8: {rows, N, K, bias (0/1)}: residual [rows, N]
//     += x [rows, K] w [N, K]^T (+ b); _static_fp8: x and w quantised (one static scale each)
//   linear_swiglu_static_fp8: {rows, inter, K, bias (0/1)}: x [rows, K] e4m3 (static scale) times
//     e4m3 gate|up weights [2 * inter, K] (per tensor), SwiGLU, quantised with a static scale
struct OpCase {
  std::string op;
  std::vector<int64_t> dims;
  at::ScalarType dtype = at::kFloat;  // activations: kFloat or kBFloat16
  std::string label() const;          // e.g. "rms_norm bf16 [37, 1280]"
  bool fp8() const;                   // needs float8 types (torch >= 2.1)
};

// Small and odd shapes (non-multiples of 8, tiny rows) in float32 and bf16: the unit tests.
std::vector<OpCase> unit_cases();
// The shapes a plan of `config` runs for `views` frames of height x width (vision blocks, decoder
// layers), bf16: what bench_gpu times.
std::vector<OpCase> model_cases(const Qwen25VLConfig& config, int views, int height, int width);

// Relative L2 error |a - b| / |b| in float64 (on the CPU; |b| floored at 1e-30): the measure
// check_op, test_gpu and bench_gpu report.
double rel_err(const at::Tensor& a, const at::Tensor& b);

struct OpParity {
  double fused_vs_reference = 0;  // relative L2 error, fused kernel vs ATen reference
  double reference_vs_f64 = 0;    // ATen reference vs the float64 definition
  double fused_vs_f64 = 0;        // fused kernel vs the float64 definition
  bool fused_ran = false;         // false: no kernel for this device (the reference ran twice)
};
// Random inputs (seeded) on `device`, both paths, the float64 definition. FP8 outputs are compared
// dequantised. Throws vla::Error for an unknown op or bad dims.
OpParity check_op(const OpCase& c, const at::Device& device, uint64_t seed = 0);
// Error bounds of a case: fused vs reference (kernel arithmetic; bf16 rounding) and either path vs
// the float64 definition (storage rounding; e4m3 rounding for the FP8 ops).
double tolerance_vs_reference(const OpCase& c);
double tolerance_vs_f64(const OpCase& c);
// A closure that runs the case once on prepared inputs (fused or reference), for timing.
std::function<void()> op_runner(const OpCase& c, const at::Device& device, bool fused,
                                uint64_t seed = 0);

}  // namespace vla::gpu::ops
