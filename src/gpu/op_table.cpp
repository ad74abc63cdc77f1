// The backend-parity table: cases, the float64 definitions of the ops, runners.
#include "gpu/op_table.h"

#include <cmath>

#include "core/core.h"
#include "gpu/ops.h"
#include "vision/vision.h"

namespace vla::gpu::ops {

namespace {

const char* dtype_name(at::ScalarType t) { return t == at::kBFloat16 ? "bf16" : "f32"; }

// Seeded random inputs of a case (generated on the CPU so every device sees the same numbers).
struct Inputs {
  at::Tensor x, w, residual, cos, sin, q, k, v, b;
  at::Tensor row0;   // rotary_append_kv: the first cache row written
  Fp8Rows w8;        // the gemv_*_fp8 ops: w quantised per row (as the engine stores weights);
                     // linear_swiglu / linear_accumulate _static_fp8: per tensor
  Fp8Rows x8;        // linear_swiglu / linear_accumulate _static_fp8: x with one static scale
  at::Tensor fixed;  // the *_static_fp8 ops: the static scale (float [1], 1.25 x the row maximum)
  Varlen seq;
  double scale = 1.0;
};

constexpr double kEps = 1e-6;

void need(const OpCase& c, size_t n) {
  VLA_CHECK(c.dims.size() == n, "op table: ", c.op, " takes ", n, " dims, got ", c.dims.size());
  for (int64_t d : c.dims) VLA_CHECK(d >= 0, "op table: negative dim in ", c.label());
}

// Rotary tables of random angles: cos / sin float [rows, hd] on dev (both halves alike, as
// Qwen2.5-VL's tables are).
void random_rotary_tables(Inputs& in, int64_t rows, int64_t hd, const at::Device& dev) {
  const at::Tensor ang = at::randn({rows, hd / 2}, at::TensorOptions().dtype(at::kFloat)) * 3;
  const at::Tensor emb = at::cat({ang, ang}, 1);
  in.cos = emb.cos().to(dev).contiguous();
  in.sin = emb.sin().to(dev).contiguous();
}

Inputs make_inputs(const OpCase& c, const at::Device& dev, uint64_t seed) {
  at::manual_seed(seed);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto to_dev = [&](const at::Tensor& t, at::ScalarType dt) { return t.to(dev, dt).contiguous(); };
  Inputs in;
  const std::string& op = c.op;
  if (op == "rms_norm" || op == "add_rms_norm" || op == "rms_norm_fp8" ||
      op == "add_rms_norm_fp8" || op == "add_rms_norm_static_fp8" || op == "quantize_fp8") {
    need(c, 2);
    const int64_t rows = c.dims[0], dim = c.dims[1];
    in.x = to_dev(at::randn({rows, dim}, f32) * 3, c.dtype);
    in.w = to_dev(1 + 0.1 * at::randn({dim}, f32), c.dtype);
    in.residual = to_dev(at::randn({rows, dim}, f32), c.dtype);
    if (op == "add_rms_norm_static_fp8") {
      at::Tensor r = in.residual.clone();
      in.fixed = (add_rms_norm_fp8(in.x, r, in.w, kEps, false).scale.amax() * 1.25).reshape({1});
    }
  } else if (op == "rotary") {
    need(c, 3);
    const int64_t rows = c.dims[0], heads = c.dims[1], hd = c.dims[2];
    VLA_CHECK(hd % 2 == 0, "op table: rotary head_dim must be even, got ", hd);
    in.x = to_dev(at::randn({rows, (heads + 2) * hd}, f32), c.dtype);
    random_rotary_tables(in, rows, hd, dev);
  } else if (op == "rotary_append_kv") {
    need(c, 4);  // rows, q heads, kv heads, head_dim; caches of rows + 3 rows, written from row 2
    const int64_t rows = c.dims[0], nq = c.dims[1], nkv = c.dims[2], hd = c.dims[3];
    VLA_CHECK(hd % 2 == 0, "op table: rotary head_dim must be even, got ", hd);
    in.x = to_dev(at::randn({rows, (nq + 2 * nkv) * hd}, f32), c.dtype);
    random_rotary_tables(in, rows, hd, dev);
    in.k = to_dev(at::zeros({rows + 3, nkv, hd}, f32), c.dtype);
    in.v = to_dev(at::zeros({rows + 3, nkv, hd}, f32), c.dtype);
    in.row0 = at::full({1}, 2, at::kLong).to(dev);
  } else if (op == "window_attention" || op == "window_attention_static_fp8") {
    need(c, 4);  // tokens, heads, head_dim, window (the last window takes what is left)
    const int64_t T = c.dims[0], H = c.dims[1], hd = c.dims[2], win = c.dims[3];
    VLA_CHECK(hd % 2 == 0 && win > 0,
              "op table: window_attention needs an even head_dim and a "
              "window > 0 (",
              c.label(), ")");
    in.x = to_dev(at::randn({T, 3 * H * hd}, f32), c.dtype);
    random_rotary_tables(in, T, hd, dev);
    std::vector<int64_t> cu{0};
    while (cu.back() < T) cu.push_back(std::min(cu.back() + win, T));
    in.seq = Varlen::make(cu, dev);
    in.scale = 1.0 / std::sqrt(static_cast<double>(hd));
    // Outputs are convex combinations of v rows: |out| <= max |v|.
    if (op == "window_attention_static_fp8")
      in.fixed =
          (in.x.narrow(1, 2 * H * hd, H * hd).abs().amax().to(at::kFloat) / 448.0).reshape({1});
  } else if (op == "silu_mul" || op == "silu_mul_fp8" || op == "silu_mul_static_fp8") {
    need(c, 2);
    in.x = to_dev(at::randn({c.dims[0], 2 * c.dims[1]}, f32) * 2, c.dtype);
    if (op == "silu_mul_static_fp8")
      in.fixed = (silu_mul_fp8(in.x, c.dims[1], false).scale.amax() * 1.25).reshape({1});
  } else if (op == "gemv" || op == "gemv_fp8" || op == "gemv_silu_mul" ||
             op == "gemv_silu_mul_fp8") {
    need(c, 2);
    const bool gate = op.compare(0, 13, "gemv_silu_mul") == 0;
    const int64_t rows = gate ? 2 * c.dims[0] : c.dims[0], K = c.dims[1];
    in.x = to_dev(at::randn({1, K}, f32), c.dtype);
    in.w = to_dev(at::randn({rows, K}, f32) / std::sqrt(static_cast<double>(K)) * 2, c.dtype);
    if (!gate) in.b = to_dev(at::randn({rows}, f32) * 0.1, c.dtype);
    if (c.fp8()) in.w8 = quantize_fp8(in.w, false);
  } else if (op == "linear_accumulate" || op == "linear_accumulate_static_fp8") {
    need(c, 4);  // rows, N, K, bias (0 / 1)
    const int64_t rows = c.dims[0], N = c.dims[1], K = c.dims[2];
    in.x = to_dev(at::randn({rows, K}, f32), c.dtype);
    in.w = to_dev(at::randn({N, K}, f32) / std::sqrt(static_cast<double>(K)), c.dtype);
    in.residual = to_dev(at::randn({rows, N}, f32) * 2, c.dtype);
    if (c.dims[3] != 0) in.b = to_dev(at::randn({N}, f32) * 0.5, c.dtype);
    if (c.fp8()) {
      in.x8 = quantize_fp8(in.x, false,
                           (in.x.abs().amax().to(at::kFloat) / 448.0).reshape({1}).contiguous());
      in.w8 = quantize_fp8_tensor(in.w);
    }
  } else if (op == "linear_swiglu") {
    need(c, 4);  // rows, inter, K, bias (0 / 1)
    const int64_t rows = c.dims[0], inter = c.dims[1], K = c.dims[2];
    in.x = to_dev(at::randn({rows, K}, f32), c.dtype);
    in.w = to_dev(at::randn({2 * inter, K}, f32) / std::sqrt(static_cast<double>(K)) * 2, c.dtype);
    if (c.dims[3] != 0) in.b = to_dev(at::randn({2 * inter}, f32) * 0.5, c.dtype);
  } else if (op == "linear_swiglu_static_fp8") {
    need(c, 4);  // rows, inter, K, bias (0 / 1)
    const int64_t rows = c.dims[0], inter = c.dims[1], K = c.dims[2];
    const at::Tensor x = at::randn({rows, K}, f32).to(dev);
    in.x8 = quantize_fp8(x, false, (x.abs().amax() / 448.0).reshape({1}));
    in.x = in.x8.q;
    in.w8 = quantize_fp8_tensor(
        to_dev(at::randn({2 * inter, K}, f32) / std::sqrt(static_cast<double>(K)) * 2, c.dtype));
    if (c.dims[3] != 0) in.b = to_dev(at::randn({2 * inter}, f32) * 0.5, c.dtype);
    const Fp8Rows ref = linear_swiglu_fp8(in.x8, in.w8, in.b, inter, at::ones({1}, f32.device(dev)),
                                          /*variant=*/-1);
    in.fixed = (dequantize_fp8(ref).abs().amax() * 1.25 / 448.0).reshape({1});
  } else if (op == "attention" || op == "causal_attention" || op == "causal_attention_static_fp8") {
    const bool causal_op = op != "attention";
    need(c, causal_op ? 5 : 6);
    const int64_t T = c.dims[0], H = c.dims[1], Hk = c.dims[2], D = c.dims[3],
                  S = c.dims[causal_op ? 4 : 5];
    VLA_CHECK(S > 0 && T % S == 0 && Hk > 0 && H % Hk == 0,
              "op table: attention needs tokens % sequences == 0 and heads % kv_heads == 0 (",
              c.label(), ")");
    in.q = to_dev(at::randn({T, H, D}, f32), c.dtype);
    in.k = to_dev(at::randn({T, Hk, D}, f32), c.dtype);
    in.v = to_dev(at::randn({T, Hk, D}, f32), c.dtype);
    std::vector<int64_t> cu;
    for (int64_t s = 0; s <= S; ++s) cu.push_back(s * (T / S));
    in.seq = Varlen::make(cu, dev);
    in.scale = 1.0 / std::sqrt(static_cast<double>(D));
    if (op == "causal_attention_static_fp8")
      in.fixed = (in.v.abs().amax().to(at::kFloat) / 448.0).reshape({1});
  } else {
    throw Error(str_cat("op table: unknown op '", op, "'"));
  }
  return in;
}

// One run of the op. For parity (timing = false) the in-place ops work on copies and FP8 results
// come back dequantised; for timing the op alone runs, in place on the case's own buffers.
at::Tensor run(const OpCase& c, Inputs& in, bool fused, bool timing = false) {
  const std::string& op = c.op;
  auto fp8 = [&](const Fp8Rows& r) { return timing ? r.q : dequantize_fp8(r); };
  at::Tensor residual = timing || !in.residual.defined() ? in.residual : in.residual.clone();
  if (op == "rms_norm") return rms_norm(in.x, in.w, kEps, fused);
  if (op == "add_rms_norm") return add_rms_norm(in.x, residual, in.w, kEps, fused);
  if (op == "rms_norm_fp8") return fp8(rms_norm_fp8(in.x, in.w, kEps, fused));
  if (op == "add_rms_norm_fp8") return fp8(add_rms_norm_fp8(in.x, residual, in.w, kEps, fused));
  if (op == "add_rms_norm_static_fp8")
    return fp8(add_rms_norm_fp8(in.x, residual, in.w, kEps, fused, in.fixed));
  if (op == "quantize_fp8") return fp8(quantize_fp8(in.x, fused));
  if (op == "rotary") {
    at::Tensor x = timing ? in.x : in.x.clone();
    rotary_(x, static_cast<int>(c.dims[1]), static_cast<int>(c.dims[2]), in.cos, in.sin, fused);
    return x;
  }
  if (op == "rotary_append_kv") {
    at::Tensor x = timing ? in.x : in.x.clone(), k = timing ? in.k : in.k.clone(),
               v = timing ? in.v : in.v.clone();
    rotary_append_kv_(x, static_cast<int>(c.dims[1]), static_cast<int>(c.dims[2]),
                      static_cast<int>(c.dims[3]), in.cos, in.sin, k, v, in.row0, fused);
    return at::cat({x.flatten(), k.flatten(), v.flatten()});
  }
  if (op == "silu_mul") return silu_mul(in.x, c.dims[1], fused);
  if (op == "silu_mul_fp8") return fp8(silu_mul_fp8(in.x, c.dims[1], fused));
  if (op == "silu_mul_static_fp8") return fp8(silu_mul_fp8(in.x, c.dims[1], fused, in.fixed));
  if (op == "gemv" || op == "gemv_fp8") return gemv(in.x, in.w, in.w8, in.b, false, fused);
  if (op == "linear_accumulate") {
    linear_accumulate_(residual, in.x, in.w, in.b, fused);
    return residual;
  }
  if (op == "linear_accumulate_static_fp8") {
    linear_fp8_accumulate_(residual, in.x8, in.w8, in.b, fused, /*fast_accum=*/true);
    return residual;
  }
  if (op == "linear_swiglu_static_fp8") {
    // fused: the first compiled variant (ops::linear_swiglu_fp8); tests/gpu runs every variant.
    const int variant = fused && linear_swiglu_variants(in.x, true) > 0 ? 0 : -1;
    return fp8(linear_swiglu_fp8(in.x8, in.w8, in.b, c.dims[1], in.fixed, variant));
  }
  if (op == "linear_swiglu") {
    // fused (bf16): the first compiled variant (ops::linear_swiglu); reference: float32.
    const bool kernel =
        fused && in.x.scalar_type() == at::kBFloat16 && linear_swiglu_variants(in.x, false) > 0;
    return linear_swiglu(in.x, in.w, in.b, c.dims[1], kernel ? 0 : -1);
  }
  if (op == "gemv_silu_mul" || op == "gemv_silu_mul_fp8")
    return gemv(in.x, in.w, in.w8, {}, true, fused);
  if (op == "window_attention" || op == "window_attention_static_fp8") {
    at::Tensor x = timing ? in.x : in.x.clone();
    const int H = static_cast<int>(c.dims[1]), hd = static_cast<int>(c.dims[2]);
    const bool flash = fused && flash_available(x.view({x.size(0), 3 * H, hd}));
    if (op == "window_attention")
      return window_attention(x, H, hd, in.cos, in.sin, in.seq, in.scale, fused, flash);
    return fp8(
        window_attention_fp8(x, H, hd, in.cos, in.sin, in.seq, in.scale, fused, flash, in.fixed));
  }
  if (op == "attention") {
    const bool flash = fused && flash_available(in.q);
    return attention(in.q, in.k, in.v, in.seq, in.seq, c.dims[4] != 0, in.scale, flash);
  }
  if (op == "causal_attention") return causal_attention(in.q, in.k, in.v, in.seq, in.scale, fused);
  if (op == "causal_attention_static_fp8")
    return fp8(causal_attention_fp8(in.q, in.k, in.v, in.seq, in.scale, fused, in.fixed))
        .view({in.q.size(0), in.q.size(1), in.q.size(2)});
  throw Error(str_cat("op table: unknown op '", op, "'"));
}

// The op's definition in float64 (inputs as stored: bf16 inputs are exact in float64).
at::Tensor definition(const OpCase& c, const Inputs& in) {
  auto d = [](const at::Tensor& t) { return t.to(at::kCPU, at::kDouble); };
  auto rms = [&](const at::Tensor& x) {
    return x * at::rsqrt(x.pow(2).mean(-1, true) + kEps) * d(in.w);
  };
  const std::string& op = c.op;
  if (op == "rms_norm" || op == "rms_norm_fp8") return rms(d(in.x));
  if (op == "add_rms_norm" || op == "add_rms_norm_fp8" ||
      op == "add_rms_norm_static_fp8")  // the new residual is stored rounded
    return rms(d((in.x.to(at::kFloat) + in.residual.to(at::kFloat)).to(c.dtype)));
  if (op == "quantize_fp8") return d(in.x);
  // x*cos + rotate_half(x)*sin on the first `heads` heads of each row; the rest as stored.
  auto rotate = [&](int64_t heads, int64_t hd) {
    at::Tensor x = d(in.x);
    at::Tensor h = x.narrow(1, 0, heads * hd).view({x.size(0), heads, hd});
    at::Tensor x1 = h.narrow(2, 0, hd / 2), x2 = h.narrow(2, hd / 2, hd / 2);
    const at::Tensor rot = at::cat({-x2, x1}, 2);
    const at::Tensor out = h * d(in.cos).unsqueeze(1) + rot * d(in.sin).unsqueeze(1);
    const int64_t rest = x.size(1) - heads * hd;
    return at::cat({out.reshape({x.size(0), heads * hd}), x.narrow(1, heads * hd, rest)}, 1);
  };
  if (op == "rotary") return rotate(c.dims[1], c.dims[2]);
  if (op == "rotary_append_kv") {
    const int64_t rows = c.dims[0], nq = c.dims[1], nkv = c.dims[2], hd = c.dims[3];
    const at::Tensor x = rotate(nq + nkv, hd);
    at::Tensor k = d(in.k), v = d(in.v);  // zeros, rows 2 .. 2 + rows - 1 written
    k.narrow(0, 2, rows).copy_(x.narrow(1, nq * hd, nkv * hd).reshape({rows, nkv, hd}));
    v.narrow(0, 2, rows).copy_(x.narrow(1, (nq + nkv) * hd, nkv * hd).reshape({rows, nkv, hd}));
    return at::cat({x.flatten(), k.flatten(), v.flatten()});
  }
  // silu(gate) * up of rows [gate (inter) | up (inter)].
  auto swiglu = [](const at::Tensor& x, int64_t inter) {
    const at::Tensor g = x.narrow(1, 0, inter), u = x.narrow(1, inter, inter);
    return g * at::sigmoid(g) * u;
  };
  if (op == "silu_mul" || op == "silu_mul_fp8" || op == "silu_mul_static_fp8")
    return swiglu(d(in.x), c.dims[1]);
  if (op.compare(0, 4, "gemv") == 0) {
    // The weights as stored: e4m3 for the _fp8 variants (quantised once at load, not by the op).
    const at::Tensor w = in.w8.defined() ? d(dequantize_fp8(in.w8)) : d(in.w);
    at::Tensor y = at::matmul(d(in.x), w.t());
    if (in.b.defined()) y = y + d(in.b);
    return op.compare(0, 13, "gemv_silu_mul") == 0 ? swiglu(y, c.dims[0]) : y;
  }
  if (op == "linear_accumulate" || op == "linear_accumulate_static_fp8") {
    const at::Tensor x = c.fp8() ? d(dequantize_fp8(in.x8)) : d(in.x);
    const at::Tensor w = c.fp8() ? d(dequantize_fp8(in.w8)) : d(in.w);
    at::Tensor y = d(in.residual) + at::matmul(x, w.t());
    return in.b.defined() ? y + d(in.b) : y;
  }
  if (op == "linear_swiglu") {
    at::Tensor y = at::matmul(d(in.x), d(in.w).t());
    if (in.b.defined()) y = y + d(in.b);
    return swiglu(y, c.dims[1]);
  }
  if (op == "linear_swiglu_static_fp8") {
    at::Tensor y = at::matmul(d(dequantize_fp8(in.x8)), d(dequantize_fp8(in.w8)).t());
    if (in.b.defined()) y = y + d(in.b);
    return swiglu(y, c.dims[1]);
  }
  // softmax(q k^T * scale) v within each sequence of in.seq; q [T, H, D], k / v [T, H, D].
  auto attend = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
    std::vector<at::Tensor> outs;
    for (size_t s = 0; s + 1 < in.seq.cu.size(); ++s) {
      const int64_t r0 = in.seq.cu[s], L = in.seq.cu[s + 1] - r0;
      auto qs = q.narrow(0, r0, L).transpose(0, 1), ks = k.narrow(0, r0, L).transpose(0, 1),
           vs = v.narrow(0, r0, L).transpose(0, 1);  // [H, L, D]
      at::Tensor logits = at::matmul(qs, ks.transpose(1, 2)) * in.scale;
      if (causal)
        logits = logits.masked_fill(at::ones({L, L}, at::kBool).triu(1),
                                    -std::numeric_limits<double>::infinity());
      outs.push_back(at::matmul(at::softmax(logits, -1), vs).transpose(0, 1));
    }
    return at::cat(outs, 0);
  };
  if (op == "attention" || op == "causal_attention" || op == "causal_attention_static_fp8") {
    const int64_t H = c.dims[1], Hk = c.dims[2];
    return attend(d(in.q), d(in.k).repeat_interleave(H / Hk, 1),
                  d(in.v).repeat_interleave(H / Hk, 1), op != "attention" || c.dims[4] != 0);
  }
  // q and k stored rotated (as the rotary kernel rounds them)
  if (op == "window_attention" || op == "window_attention_static_fp8") {
    const int64_t T = c.dims[0], H = c.dims[1], hd = c.dims[2];
    const at::Tensor x = rotate(2 * H, hd).to(c.dtype).to(at::kDouble);
    auto head = [&](int64_t i) { return x.narrow(1, i * H * hd, H * hd).view({T, H, hd}); };
    return attend(head(0), head(1), head(2), false).reshape({T, H * hd});
  }
  throw Error(str_cat("op table: unknown op '", op, "'"));
}

}  // namespace

double rel_err(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kDouble).cpu(), y = b.to(at::kDouble).cpu();
  return (x - y).norm().item<double>() / std::max(y.norm().item<double>(), 1e-30);
}

std::string OpCase::label() const {
  std::string s = str_cat(op, " ", dtype_name(dtype), " [");
  for (size_t i = 0; i < dims.size(); ++i) s += str_cat(i ? ", " : "", dims[i]);
  return s + "]";
}

bool OpCase::fp8() const { return op.size() > 4 && op.compare(op.size() - 4, 4, "_fp8") == 0; }

std::vector<OpCase> unit_cases() {
  std::vector<OpCase> cases;
  for (auto dt : {at::kFloat, at::kBFloat16}) {
    for (int64_t dim : {32, 100, 1280, 2048})
      for (const char* op : {"rms_norm", "add_rms_norm", "rms_norm_fp8", "add_rms_norm_fp8",
                             "add_rms_norm_static_fp8", "quantize_fp8"})
        cases.push_back({op, {37, dim}, dt});
    for (int64_t hd : {16, 80, 128}) cases.push_back({"rotary", {23, 5, hd}, dt});
    cases.push_back({"rotary_append_kv", {1, 16, 2, 128}, dt});
    cases.push_back({"rotary_append_kv", {3, 6, 3, 80}, dt});
    for (int64_t inter : {7, 64, 3420, 11008}) {
      cases.push_back({"silu_mul", {19, inter}, dt});
      cases.push_back({"silu_mul_fp8", {19, inter}, dt});
      cases.push_back({"silu_mul_static_fp8", {19, inter}, dt});
    }
    // K = 100: not a multiple of 16 (the reference path); the rest run the kernel.
    for (const std::vector<int64_t>& nk :
         std::vector<std::vector<int64_t>>{{37, 64}, {300, 2048}, {5, 100}, {130, 11008}})
      for (const char* op : {"gemv", "gemv_fp8", "gemv_silu_mul", "gemv_silu_mul_fp8"})
        cases.push_back({op, nk, dt});
    // FP8 gate|up GEMM + SwiGLU (tiles of 64 / 128: widths and depths their multiples), with
    // and without bias, rows not a multiple of any tile.
    cases.push_back({"linear_swiglu_static_fp8", {37, 128, 256, 0}, dt});
    cases.push_back({"linear_swiglu", {37, 128, 256, 0}, dt});
    cases.push_back({"linear_swiglu", {130, 256, 384, 1}, dt});
    // Output projection + residual add in the GEMM's epilogue, with and without bias; widths that
    // are not multiples of 16 take the reference path.
    for (const char* op : {"linear_accumulate", "linear_accumulate_static_fp8"}) {
      cases.push_back({op, {37, 64, 128, 1}, dt});
      cases.push_back({op, {130, 256, 96, 0}, dt});
      cases.push_back({op, {19, 40, 24, 1}, dt});
    }
    cases.push_back({"linear_swiglu_static_fp8", {130, 256, 384, 1}, dt});
    cases.push_back({"attention", {100, 4, 4, 80, 0, 4}, dt});
    cases.push_back({"attention", {60, 8, 2, 128, 1, 2}, dt});
    // Tiles of 64 queries: one short sequence, several tiles with a short last one, several
    // sequences; head dims 16 .. 128 (80: the fallback).
    cases.push_back({"causal_attention", {37, 4, 2, 64, 1}, dt});
    cases.push_back({"causal_attention", {50, 3, 1, 16, 2}, dt});
    cases.push_back({"causal_attention", {70, 2, 2, 32, 1}, dt});
    cases.push_back({"causal_attention", {150, 8, 2, 128, 1}, dt});
    cases.push_back({"causal_attention", {195, 4, 1, 128, 3}, dt});
    cases.push_back({"causal_attention", {96, 2, 2, 80, 2}, dt});
    // Windows of 64 with a short last one; head_dims of each kernel instance; a 100-row window
    // (over the kernel's 64: the rotary + attention fallback).
    cases.push_back({"window_attention", {150, 4, 80, 64}, dt});
    cases.push_back({"window_attention", {37, 2, 16, 16}, dt});
    cases.push_back({"window_attention", {70, 3, 128, 50}, dt});
    cases.push_back({"window_attention", {9, 2, 64, 64}, dt});
    cases.push_back({"window_attention", {130, 2, 32, 100}, dt});
    // Outputs quantised to e4m3 in the kernels' store (FP8 output projections), and a fallback
    // each (window over 64 rows; head dim 80 for the causal kernel).
    cases.push_back({"window_attention_static_fp8", {150, 4, 80, 64}, dt});
    cases.push_back({"window_attention_static_fp8", {130, 2, 32, 100}, dt});
    cases.push_back({"causal_attention_static_fp8", {195, 4, 1, 128, 3}, dt});
    cases.push_back({"causal_attention_static_fp8", {96, 2, 2, 80, 2}, dt});
  }
  return cases;
}

std::vector<OpCase> model_cases(const Qwen25VLConfig& cfg, int views, int height, int width) {
  const auto& v = cfg.vision;
  const auto& t = cfg.text;
  const int factor = static_cast<int>(v.patch_size * v.spatial_merge_size);
  const auto hw = smart_resize(height, width, factor);
  const int64_t patches = int64_t{views} * (hw.first / v.patch_size) * (hw.second / v.patch_size);
  const int64_t merge = v.spatial_merge_size * v.spatial_merge_size;
  const int64_t tokens = patches / merge + 24;  // image tokens + a short prompt
  const int64_t window = (v.window_size / v.patch_size) * (v.window_size / v.patch_size);
  const auto bf = at::kBFloat16;
  std::vector<OpCase> c;
  // Vision block (5 views at 640x360: 5980 patches x 1280).
  c.push_back({"add_rms_norm", {patches, v.hidden_size}, bf});
  c.push_back({"add_rms_norm_fp8", {patches, v.hidden_size}, bf});
  c.push_back({"add_rms_norm_static_fp8", {patches, v.hidden_size}, bf});
  c.push_back({"rotary", {patches, 2 * v.num_heads, v.head_dim()}, bf});
  c.push_back({"silu_mul", {patches, mlp_width(v.intermediate_size)}, bf});
  c.push_back({"silu_mul_fp8", {patches, mlp_width(v.intermediate_size)}, bf});
  c.push_back({"silu_mul_static_fp8", {patches, mlp_width(v.intermediate_size)}, bf});
  c.push_back({"quantize_fp8", {patches, v.hidden_size}, bf});
  c.push_back({"linear_swiglu_static_fp8",
               {patches, mlp_width(v.intermediate_size), v.hidden_size, 1},
               bf});
  c.push_back({"linear_swiglu", {patches, mlp_width(v.intermediate_size), v.hidden_size, 1}, bf});
  c.push_back({"linear_accumulate", {patches, v.hidden_size, v.hidden_size, 1}, bf});
  c.push_back(
      {"linear_accumulate", {patches, v.hidden_size, mlp_width(v.intermediate_size), 1}, bf});
  c.push_back({"linear_accumulate_static_fp8",
               {patches, v.hidden_size, mlp_width(v.intermediate_size), 1},
               bf});
  c.push_back(
      {"attention",
       {patches / window * window, v.num_heads, v.num_heads, v.head_dim(), 0, patches / window},
       bf});
  c.push_back({"window_attention", {patches, v.num_heads, v.head_dim(), window}, bf});
  c.push_back({"window_attention_static_fp8", {patches, v.num_heads, v.head_dim(), window}, bf});
  c.push_back({"attention", {patches, v.num_heads, v.num_heads, v.head_dim(), 0, views}, bf});
  // Decoder layer over the prefill.
  c.push_back({"add_rms_norm", {tokens, t.hidden_size}, bf});
  c.push_back({"add_rms_norm_fp8", {tokens, t.hidden_size}, bf});
  c.push_back(
      {"rotary", {tokens, t.num_attention_heads + t.num_key_value_heads, t.head_dim()}, bf});
  c.push_back({"silu_mul", {tokens, mlp_width(t.intermediate_size)}, bf});
  c.push_back({"silu_mul_fp8", {tokens, mlp_width(t.intermediate_size)}, bf});
  c.push_back({"silu_mul_static_fp8", {tokens, mlp_width(t.intermediate_size)}, bf});
  c.push_back(
      {"linear_swiglu_static_fp8", {tokens, mlp_width(t.intermediate_size), t.hidden_size, 0}, bf});
  c.push_back({"linear_swiglu", {tokens, mlp_width(t.intermediate_size), t.hidden_size, 0}, bf});
  c.push_back({"linear_accumulate", {tokens, t.hidden_size, t.hidden_size, 0}, bf});
  c.push_back({"linear_accumulate_static_fp8",
               {tokens, t.hidden_size, mlp_width(t.intermediate_size), 0},
               bf});
  c.push_back({"attention",
               {tokens, t.num_attention_heads, t.num_key_value_heads, t.head_dim(), 1, 1},
               bf});
  c.push_back({"causal_attention",
               {tokens, t.num_attention_heads, t.num_key_value_heads, t.head_dim(), 1},
               bf});
  c.push_back({"causal_attention_static_fp8",
               {tokens, t.num_attention_heads, t.num_key_value_heads, t.head_dim(), 1},
               bf});
  // One greedy decode step: rotary + KV append, and the products (one row through each matrix).
  c.push_back(
      {"rotary_append_kv", {1, t.num_attention_heads, t.num_key_value_heads, t.head_dim()}, bf});
  const int64_t th = t.hidden_size, qkv = (t.num_attention_heads + 2 * t.num_key_value_heads) *
                                          static_cast<int64_t>(t.head_dim());
  for (const char* op : {"gemv", "gemv_fp8"}) {
    c.push_back({op, {qkv, th}, bf});
    c.push_back({op, {th, mlp_width(t.intermediate_size)}, bf});
  }
  c.push_back({"gemv", {th, int64_t{t.num_attention_heads} * t.head_dim()}, bf});
  c.push_back({"gemv_silu_mul", {mlp_width(t.intermediate_size), th}, bf});
  c.push_back({"gemv_silu_mul_fp8", {mlp_width(t.intermediate_size), th}, bf});
  c.push_back({"gemv", {t.vocab_size, th}, bf});
  return c;
}

double tolerance_vs_reference(const OpCase& c) {
  if (c.op == "attention" || c.op == "window_attention" || c.op == "causal_attention")
    return c.dtype == at::kFloat ? 1e-4 : 1e-2;
  // Attention quantised in the kernel's store vs the reference's bf16 attention quantised after:
  // the two attentions differ by ~2e-3, which moves some values across an e4m3 rounding boundary
  // (one step of 6-12 %).
  if (c.fp8() && c.op.find("attention") != std::string::npos) return 3e-2;
  if (c.fp8()) return 1e-2;  // the same e4m3 value may round either way at a tie
  return c.dtype == at::kFloat ? 1e-5 : 1e-2;
}

double tolerance_vs_f64(const OpCase& c) {
  if (c.fp8() || c.op == "quantize_fp8") return 5e-2;  // e4m3: 3 mantissa bits
  if (c.op == "attention" || c.op == "window_attention" || c.op == "causal_attention")
    return c.dtype == at::kFloat ? 1e-4 : 2e-2;
  return c.dtype == at::kFloat ? 1e-5 : 1e-2;
}

OpParity check_op(const OpCase& c, const at::Device& device, uint64_t seed) {
  VLA_CHECK(!c.fp8() || fp8_supported(device), "op table: ", c.label(), " needs FP8 on ",
            device.str());
  Inputs in = make_inputs(c, device, seed);
  const at::Tensor ref = run(c, in, false), fused = run(c, in, true);
  const at::Tensor def = definition(c, in);
  OpParity p;
  p.fused_ran = c.op == "attention"                            ? flash_available(in.q)
                : c.op.compare(0, 16, "causal_attention") == 0 ? causal_attention_available(in.q)
                : c.op == "linear_swiglu_static_fp8" ? linear_swiglu_variants(in.x, true) > 0
                : c.op == "linear_swiglu"
                    ? in.x.scalar_type() == at::kBFloat16 && linear_swiglu_variants(in.x, false) > 0
                : c.op == "linear_accumulate"
                    ? linear_accumulate_fused(in.residual, in.x, in.w, in.b, true)
                : c.op == "linear_accumulate_static_fp8"
                    ? linear_fp8_accumulate_fused(in.residual, in.x8, in.w8, in.b, true, true)
                    : use_kernels(in.x, true);
  p.fused_vs_reference = rel_err(fused, ref);
  p.reference_vs_f64 = rel_err(ref, def);
  p.fused_vs_f64 = rel_err(fused, def);
  return p;
}

std::function<void()> op_runner(const OpCase& c, const at::Device& device, bool fused,
                                uint64_t seed) {
  auto in = std::make_shared<Inputs>(make_inputs(c, device, seed));
  return [c, in, fused] { (void)run(c, *in, fused, /*timing=*/true); };
}

}  // namespace vla::gpu::ops
