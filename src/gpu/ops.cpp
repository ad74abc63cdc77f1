#include "gpu/ops.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>

#include "core/core.h"
#include "gpu/device.h"
#include "gpu/kernels.h"

namespace vla::gpu::ops {
namespace {

void* current_stream(const at::Tensor& t) { return device::current_stream(t.device()); }
kernels::DType kdtype(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 ? kernels::kBF16 : kernels::kF32;
}
void check_launch(const char* err, const char* what) {
  VLA_CHECK(err == nullptr, "gpu kernel ", what, " failed: ", err);
}
// Whether t's data starts on a 16-byte boundary (the kernels' vector loads need it).
bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// Rows of a 2-D tensor whose last dim is contiguous (rows may be strided).
void check_rows(const at::Tensor& t, const char* what) {
  VLA_CHECK(t.dim() == 2, what, ": expected a 2-D tensor, got ", t.dim(), " dims");
  VLA_CHECK(t.stride(1) == 1 || t.size(1) == 1, what, ": last dim must be contiguous");
}

}  // namespace

bool use_kernels(const at::Tensor& t, bool fused) {
  return fused && device::compiled() && t.is_cuda() &&
         (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kFloat);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, bool fused) {
  check_rows(x, "rms_norm");
  if (use_kernels(x, fused) && x.size(1) * 4 <= 48 * 1024) {
    auto out = at::empty(x.sizes(), x.options());
    auto wc = w.contiguous();
    check_launch(kernels::rmsnorm(x.data_ptr(), x.stride(0), nullptr, 0, wc.data_ptr(),
                                  out.data_ptr(), out.stride(0), x.size(0), x.size(1),
                                  static_cast<float>(eps), kdtype(x), current_stream(x)),
                 "rmsnorm");
    return out;
  }
  (void)fused;
  auto xf = x.to(at::kFloat);
  auto var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return (xf * at::rsqrt(var + eps) * w.to(at::kFloat)).to(x.scalar_type());
}

at::Tensor add_rms_norm(const at::Tensor& x, at::Tensor& residual, const at::Tensor& w, double eps,
                        bool fused) {
  check_rows(x, "add_rms_norm");
  check_rows(residual, "add_rms_norm residual");
  if (use_kernels(x, fused) && x.size(1) * 4 <= 48 * 1024) {
    auto out = at::empty(x.sizes(), x.options());
    auto wc = w.contiguous();
    check_launch(
        kernels::rmsnorm(x.data_ptr(), x.stride(0), residual.data_ptr(), residual.stride(0),
                         wc.data_ptr(), out.data_ptr(), out.stride(0), x.size(0), x.size(1),
                         static_cast<float>(eps), kdtype(x), current_stream(x)),
        "add_rmsnorm");
    return out;
  }
  (void)fused;
  residual.add_(x);
  return rms_norm(residual, w, eps, false);
}

void rotary_(at::Tensor& x, int nheads, int head_dim, const at::Tensor& cos, const at::Tensor& sin,
             bool fused) {
  check_rows(x, "rotary");
  VLA_CHECK(x.size(1) >= static_cast<int64_t>(nheads) * head_dim, "rotary: row too short");
  VLA_CHECK(cos.size(0) == x.size(0) && cos.size(1) == head_dim,
            "rotary: cos table has wrong shape");
  if (use_kernels(x, fused)) {
    auto c = cos.to(at::kFloat).contiguous();
    auto s = sin.to(at::kFloat).contiguous();
    check_launch(
        kernels::rotary(x.data_ptr(), x.stride(0), c.data_ptr<float>(), s.data_ptr<float>(),
                        x.size(0), nheads, head_dim, kdtype(x), current_stream(x)),
        "rotary");
    return;
  }
  (void)fused;
  const int64_t rows = x.size(0);
  const int half = head_dim / 2;
  auto part =
      x.narrow(1, 0, static_cast<int64_t>(nheads) * head_dim).view({rows, nheads, head_dim});
  auto xf = part.to(at::kFloat);
  auto c = cos.to(at::kFloat).unsqueeze(1);
  auto s = sin.to(at::kFloat).unsqueeze(1);
  auto x1 = xf.narrow(2, 0, half);
  auto x2 = xf.narrow(2, half, head_dim - half);
  auto rot = at::cat({-x2, x1}, 2);
  part.copy_(xf * c + rot * s);
}

void rotary_append_kv_(at::Tensor& qkv, int nq, int nkv, int head_dim, const at::Tensor& cos,
                       const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache,
                       const at::Tensor& row0, bool fused) {
  check_rows(qkv, "rotary_append_kv");
  const int64_t rows = qkv.size(0), kv = static_cast<int64_t>(nkv) * head_dim;
  VLA_CHECK(qkv.size(1) == static_cast<int64_t>(nq) * head_dim + 2 * kv,
            "rotary_append_kv: qkv rows are ", qkv.size(1), " wide, expected (", nq, " + 2 * ", nkv,
            ") * ", head_dim);
  for (const at::Tensor* c : {&k_cache, &v_cache})
    VLA_CHECK(c->dim() == 3 && c->size(1) == nkv && c->size(2) == head_dim && c->is_contiguous() &&
                  c->scalar_type() == qkv.scalar_type() && c->device() == qkv.device(),
              "rotary_append_kv: caches must be contiguous [capacity, ", nkv, ", ", head_dim,
              "] of qkv's dtype and device, got ", c->sizes());
  VLA_CHECK(row0.numel() == 1 && row0.scalar_type() == at::kLong && row0.device() == qkv.device(),
            "rotary_append_kv: row0 must be one int64 on qkv's device");
  VLA_CHECK(cos.size(0) == rows && cos.size(1) == head_dim,
            "rotary_append_kv: cos table has wrong shape");
  if (use_kernels(qkv, fused)) {
    auto c = cos.to(at::kFloat).contiguous();
    auto s = sin.to(at::kFloat).contiguous();
    check_launch(kernels::rotary_append_kv(
                     qkv.data_ptr(), qkv.stride(0), c.data_ptr<float>(), s.data_ptr<float>(), rows,
                     nq, nkv, head_dim, k_cache.data_ptr(), v_cache.data_ptr(),
                     row0.data_ptr<int64_t>(), kdtype(qkv), current_stream(qkv)),
                 "rotary_append_kv");
    return;
  }
  rotary_(qkv, nq + nkv, head_dim, cos, sin, fused);
  const at::Tensor idx = row0.view({1}) + at::arange(rows, row0.options());
  const int64_t q = static_cast<int64_t>(nq) * head_dim;
  k_cache.index_copy_(0, idx, qkv.narrow(1, q, kv).reshape({rows, nkv, head_dim}));
  v_cache.index_copy_(0, idx, qkv.narrow(1, q + kv, kv).reshape({rows, nkv, head_dim}));
}

at::Tensor silu_mul(const at::Tensor& x, int64_t inter, bool fused) {
  check_rows(x, "silu_mul");
  VLA_CHECK(x.size(1) >= 2 * inter, "silu_mul: row too short");
  if (use_kernels(x, fused) && x.size(0) <= 65535) {
    auto out = at::empty({x.size(0), inter}, x.options());
    check_launch(kernels::silu_mul(x.data_ptr(), x.stride(0), out.data_ptr(), x.size(0), inter,
                                   kdtype(x), current_stream(x)),
                 "silu_mul");
    return out;
  }
  (void)fused;
  return at::silu(x.narrow(1, 0, inter)) * x.narrow(1, inter, inter);
}

namespace {
// cuBLASLt's workspace for gemm_lt (cuBLAS' size on Hopper), from torch's caching allocator on the
// current stream: reused between calls, and inside a CUDA graph capture taken from the graph's
// pool.
constexpr int64_t kLtWorkspace = 32 << 20;
at::Tensor lt_workspace(const at::Tensor& like) {
  return at::empty({kLtWorkspace}, at::TensorOptions().dtype(at::kByte).device(like.device()));
}
// Whether kernels::gemm_lt can compute x @ w^T (+ b) (x [M, K], w [N, K]) into a bf16 [M, N]
// row-major output: CUDA, contiguous 16-byte aligned operands, K and N multiples of 16, a bf16 [N]
// bias or none. The operand type is the caller's to check.
bool lt_fits(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (!device::compiled() || !x.is_cuda() || x.dim() != 2 || w.dim() != 2) return false;
  const int64_t K = x.size(1), N = w.size(0);
  return w.size(1) == K && K % 16 == 0 && N % 16 == 0 && x.is_contiguous() && w.is_contiguous() &&
         aligned16(x) && aligned16(w) &&
         (!b.defined() || (b.scalar_type() == at::kBFloat16 && b.is_contiguous() && b.dim() == 1 &&
                           b.size(0) == N && aligned16(b)));
}
// out (+)= x @ w^T (+ b) with gemm_lt's candidate `algo` (lt_fits holds): bf16 operands, or e4m3
// ones with their scales.
void launch_lt(at::Tensor& out, const at::Tensor& x, const at::Tensor& w, const float* x_scale,
               const float* w_scale, const at::Tensor& b, bool accumulate, int algo) {
  const at::Tensor ws = lt_workspace(out);
  check_launch(kernels::gemm_lt(x.data_ptr(), w.data_ptr(), x_scale != nullptr, x_scale, w_scale,
                                b.defined() ? b.data_ptr() : nullptr, out.data_ptr(), accumulate,
                                x.size(0), w.size(0), x.size(1), algo, ws.data_ptr(),
                                static_cast<size_t>(ws.numel()), current_stream(out)),
               "gemm_lt");
}

// One GEMM problem as the choice below keys it.
struct LtProblem {
  int device;
  int64_t M, N, K;
  bool fp8, bias, accumulate;
  bool operator<(const LtProblem& o) const {
    return std::tie(device, M, N, K, fp8, bias, accumulate) <
           std::tie(o.device, o.M, o.N, o.K, o.fp8, o.bias, o.accumulate);
  }
};
LtProblem lt_problem(const at::Tensor& x, const at::Tensor& w, bool fp8, const at::Tensor& b,
                     bool accumulate) {
  return {x.device().index(), x.size(0), w.size(0), x.size(1), fp8, b.defined(), accumulate};
}
constexpr int kAten = -1;  // the product as ATen computes it (aten::mm / addmm / _scaled_mm)

// The way chosen for a problem, and the report line of the times behind it.
struct LtChoice {
  int way;
  std::string line;
};
// The choices so far, per problem.
struct LtChoices {
  std::mutex mu;
  std::map<LtProblem, LtChoice> chosen;
};
LtChoices& lt_choices() {
  static LtChoices c;
  return c;
}

// The fastest way to run problem `p` on `dev`: one of gemm_lt's candidates (cuBLASLt's heuristic
// list), or with `aten_too` ATen's own call (kAten). Each is timed once per problem and device, on
// scratch output (device::gpu_time_ms: captured in a CUDA graph and replayed), the first time the
// problem comes up outside a graph capture, and the choice is kept for the process (the
// heuristic's first alone was 18 % slower than the best for the 3B decoder's FP8 gate|up on an
// H200: docs/gpu.md). A problem first met inside a capture runs untimed: ATen's call where
// offered, else the heuristic's first. run(way, out) runs one way into out (kAten: ATen's
// product, its own output discarded).
int lt_choice(const LtProblem& p, const at::Device& dev, bool aten_too,
              const std::function<void(int, at::Tensor&)>& run) {
  LtChoices& c = lt_choices();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.chosen.find(p);
  if (it != c.chosen.end()) return it->second.way;
  if (device::capturing(dev)) return aten_too ? kAten : 0;
  const char* err = nullptr;
  const int n =
      kernels::gemm_lt_candidates(p.fp8, p.bias, p.accumulate, p.M, p.N, p.K, kLtWorkspace, &err);
  VLA_CHECK(n > 0 || aten_too, "gpu: cuBLASLt offers no algorithm for a ", p.M, " x ", p.K, " -> ",
            p.N, " product: ", err ? err : "?");
  at::Tensor scratch = at::zeros({p.M, p.N}, at::TensorOptions().dtype(at::kBFloat16).device(dev));
  int best = n > 0 ? 0 : kAten;
  double best_ms = std::numeric_limits<double>::infinity(), first_ms = 0, aten_ms = 0;
  for (int way = aten_too ? kAten : 0; way < n; ++way) {
    try {
      const double ms = device::gpu_time_ms([&]() { run(way, scratch); }, dev, 3, 3);
      if (way == kAten) aten_ms = ms;
      if (way == 0) first_ms = ms;
      if (ms < best_ms) {
        best_ms = ms;
        best = way;
      }
    } catch (const std::exception&) {
      device::clear_error();  // a candidate that does not run is not chosen
    }
  }
  c.chosen.emplace(
      p,
      LtChoice{best,
               str_cat(p.M, "x", p.K, "->", p.N, p.fp8 ? " e4m3" : " bf16", p.bias ? " +bias" : "",
                       p.accumulate ? " +=" : "", ": ",
                       best == kAten ? std::string("ATen") : str_cat("cuBLASLt #", best, "/", n),
                       " ", fmt_double(best_ms * 1e3, 1), " us (heuristic's first ",
                       fmt_double(first_ms * 1e3, 1),
                       aten_too ? str_cat(", ATen ", fmt_double(aten_ms * 1e3, 1)) : std::string(),
                       " us)")});
  return best;
}

// residual += x @ w^T (+ b) through gemm_lt's fastest candidate (the callers checked that it
// fits): bf16 operands, or e4m3 ones with their scales.
void launch_accumulate(at::Tensor& residual, const at::Tensor& x, const at::Tensor& w,
                       const float* x_scale, const float* w_scale, const at::Tensor& b) {
  const int algo = lt_choice(
      lt_problem(x, w, x_scale != nullptr, b, true), x.device(), false,
      [&](int way, at::Tensor& out) { launch_lt(out, x, w, x_scale, w_scale, b, true, way); });
  launch_lt(residual, x, w, x_scale, w_scale, b, true, algo);
}
// x @ w^T (+ b) into a new bf16 [M, N] tensor by the fastest of `aten` and gemm_lt's candidates
// (lt_fits holds): bf16 operands, or e4m3 ones with their scales.
at::Tensor lt_product(const at::Tensor& x, const at::Tensor& w, const float* x_scale,
                      const float* w_scale, const at::Tensor& b,
                      const std::function<at::Tensor()>& aten) {
  const int way = lt_choice(lt_problem(x, w, x_scale != nullptr, b, false), x.device(), true,
                            [&](int v, at::Tensor& out) {
                              if (v == kAten)
                                (void)aten();
                              else
                                launch_lt(out, x, w, x_scale, w_scale, b, false, v);
                            });
  if (way == kAten) return aten();
  at::Tensor out = at::empty({x.size(0), w.size(0)}, x.options().dtype(at::kBFloat16));
  launch_lt(out, x, w, x_scale, w_scale, b, false, way);
  return out;
}
// Whether gemm_lt can add x @ w^T (+ b) into residual (both operand kinds).
bool accumulate_fits(const at::Tensor& residual, const at::Tensor& x, const at::Tensor& w,
                     const at::Tensor& b, bool fused) {
  return fused && lt_fits(x, w, b) && residual.scalar_type() == at::kBFloat16 &&
         residual.is_contiguous() && aligned16(residual) && residual.device() == x.device() &&
         residual.size(0) == x.size(0) && residual.size(1) == w.size(0);
}
}  // namespace

std::string gemm_choices() {
  LtChoices& c = lt_choices();
  std::lock_guard<std::mutex> lock(c.mu);
  std::string out;
  for (const auto& [p, choice] : c.chosen) out += choice.line + "\n";
  return out;
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  auto aten = [&]() { return b.defined() ? at::addmm(b, x, w.t()) : at::mm(x, w.t()); };
  if (!(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16 && lt_fits(x, w, b)))
    return aten();
  return lt_product(x, w, nullptr, nullptr, b, aten);
}

bool linear_accumulate_fused(const at::Tensor& residual, const at::Tensor& x, const at::Tensor& w,
                             const at::Tensor& b, bool fused) {
  return x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16 &&
         accumulate_fits(residual, x, w, b, fused);
}

void linear_accumulate_(at::Tensor& residual, const at::Tensor& x, const at::Tensor& w,
                        const at::Tensor& b, bool fused) {
  VLA_CHECK(x.dim() == 2 && w.dim() == 2 && w.size(1) == x.size(1), "linear_accumulate_: x ",
            x.sizes(), " and w ", w.sizes(), " do not multiply");
  if (linear_accumulate_fused(residual, x, w, b, fused)) {
    launch_accumulate(residual, x, w, nullptr, nullptr, b);
    return;
  }
  residual.add_(linear(x, w, b));
}

Varlen Varlen::make(const std::vector<int64_t>& cu, const at::Device& device) {
  Varlen v;
  v.cu = cu;
  for (size_t i = 1; i < cu.size(); ++i) v.max_len = std::max(v.max_len, cu[i] - cu[i - 1]);
  std::vector<int32_t> c32(cu.begin(), cu.end());
  v.cu_dev = at::tensor(c32, at::kInt).to(device);
  return v;
}

namespace {

// aten::_flash_attention_forward through the dispatcher: its C++ signature changes between torch
// releases, the schema's argument names do not; arguments we do not set take their defaults.
const c10::OperatorHandle* flash_op() {
  static const c10::OperatorHandle* op = []() -> const c10::OperatorHandle* {
    auto h = c10::Dispatcher::singleton().findSchema({"aten::_flash_attention_forward", ""});
    if (!h.has_value()) return nullptr;
    return new c10::OperatorHandle(*h);
  }();
  return op;
}

// Calls an ATen operator by name through the dispatcher, filling arguments by schema name;
// unnamed ones take their defaults (or None). Returns the first output tensor.
// The first positional.size() arguments are taken in order, whatever their names.
at::Tensor call_by_name(const c10::OperatorHandle* op, const char* what,
                        const std::vector<std::pair<std::string, c10::IValue>>& named,
                        const std::vector<c10::IValue>& positional = {}) {
  VLA_CHECK(op != nullptr, what, " is not available in this torch build");
  const auto& args = op->schema().arguments();
  VLA_CHECK(positional.size() <= args.size(), what, ": too many arguments");
  std::vector<c10::IValue> stack;
  stack.reserve(args.size());
  for (const auto& a : args) {
    if (stack.size() < positional.size()) {
      stack.push_back(positional[stack.size()]);
      continue;
    }
    auto it = std::find_if(named.begin(), named.end(),
                           [&](const auto& p) { return p.first == a.name(); });
    if (it != named.end()) {
      stack.push_back(it->second);
    } else if (a.default_value().has_value()) {
      stack.push_back(*a.default_value());
    } else if (a.type()->kind() == c10::TypeKind::OptionalType) {
      stack.emplace_back();
    } else {
      VLA_CHECK(false, what, ": unexpected required argument '", a.name(), "'");
    }
  }
  op->callBoxed(&stack);
  VLA_CHECK(!stack.empty() && stack[0].isTensor(), what, " returned no tensor");
  return stack[0].toTensor();
}

const c10::OperatorHandle* find_op(const char* name) {
  auto h = c10::Dispatcher::singleton().findSchema({name, ""});
  if (!h.has_value()) return nullptr;
  return new c10::OperatorHandle(*h);  // lives for the process
}

at::Tensor flash_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& cu_q, const at::Tensor& cu_k, int64_t max_q,
                        int64_t max_k, bool causal, double scale) {
  return call_by_name(flash_op(), "flash attention",
                      {{"query", q},
                       {"key", k},
                       {"value", v},
                       {"cum_seq_q", cu_q},
                       {"cum_seq_k", cu_k},
                       {"max_q", max_q},
                       {"max_k", max_k},
                       {"dropout_p", 0.0},
                       {"is_causal", causal},
                       {"return_debug_mask", false},
                       {"scale", scale}});
}

at::Tensor attention_math(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const Varlen& qv, const Varlen& kv, bool causal, double scale) {
  const int64_t H = q.size(1), Hk = k.size(1), D = q.size(2);
  auto out = at::empty({q.size(0), H, D}, q.options());
  for (size_t i = 0; i + 1 < qv.cu.size(); ++i) {
    const int64_t qs = qv.cu[i], ql = qv.cu[i + 1] - qv.cu[i];
    const int64_t ks = kv.cu[i], kl = kv.cu[i + 1] - kv.cu[i];
    if (ql == 0) continue;
    auto qi = q.narrow(0, qs, ql).transpose(0, 1).to(at::kFloat);  // [H, ql, D]
    auto ki = k.narrow(0, ks, kl).transpose(0, 1).to(at::kFloat);  // [Hk, kl, D]
    auto vi = v.narrow(0, ks, kl).transpose(0, 1).to(at::kFloat);
    if (Hk != H) {
      ki = ki.repeat_interleave(H / Hk, 0);
      vi = vi.repeat_interleave(H / Hk, 0);
    }
    auto s = at::matmul(qi, ki.transpose(1, 2)) * scale;  // [H, ql, kl]
    if (causal) {
      // query j (aligned to the end of the keys) sees keys <= kl - ql + j
      auto mask = at::ones({ql, kl}, at::TensorOptions().dtype(at::kBool)).triu(kl - ql + 1);
      s = s.masked_fill(mask.to(s.device()), -std::numeric_limits<float>::infinity());
    }
    auto p = at::softmax(s, -1);
    out.narrow(0, qs, ql).copy_(at::matmul(p, vi).transpose(0, 1));
  }
  return out;
}

}  // namespace

const char* backend_name(AttnBackend b) {
  switch (b) {
    case AttnBackend::kFlashVarlen:
      return "flash-varlen";
    case AttnBackend::kMath:
      return "math";
    case AttnBackend::kSdpa:
      return "sdpa";
    case AttnBackend::kCudnn:
      return "cudnn";
    case AttnBackend::kCausalKernel:
      return "causal-kernel";
    case AttnBackend::kCausalTriton:
      return "causal-triton";
  }
  return "?";
}

at::Tensor attention_dense(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t B,
                           bool causal, double scale, AttnBackend backend) {
  const int64_t T = q.size(0), H = q.size(1), Hk = k.size(1), D = q.size(2);
  VLA_CHECK(B > 0 && T % B == 0, "attention_dense: ", T, " rows not divisible into ", B,
            " sequences");
  const int64_t S = T / B;
  auto qb = q.view({B, S, H, D}).transpose(1, 2);
  auto kb = k.view({B, S, Hk, D}).transpose(1, 2);
  auto vb = v.view({B, S, Hk, D}).transpose(1, 2);
  if (Hk != H) {
    kb = kb.repeat_interleave(H / Hk, 1);
    vb = vb.repeat_interleave(H / Hk, 1);
  }
  at::Tensor out;
  if (backend == AttnBackend::kSdpa) {
    static const c10::OperatorHandle* op = find_op("aten::scaled_dot_product_attention");
    out = call_by_name(op, "sdpa",
                       {{"query", qb},
                        {"key", kb},
                        {"value", vb},
                        {"dropout_p", 0.0},
                        {"is_causal", causal},
                        {"scale", scale}});
  } else if (backend == AttnBackend::kCudnn) {
    static const c10::OperatorHandle* op = find_op("aten::_scaled_dot_product_cudnn_attention");
    out = call_by_name(op, "cudnn attention",
                       {{"query", qb},
                        {"key", kb},
                        {"value", vb},
                        {"compute_log_sumexp", false},
                        {"dropout_p", 0.0},
                        {"is_causal", causal},
                        {"return_debug_mask", false},
                        {"scale", scale}});
  } else {
    VLA_CHECK(false, "attention_dense: unsupported backend ", backend_name(backend));
  }
  return out.transpose(1, 2).contiguous().view({T, H, D});
}

bool flash_available(const at::Tensor& q) {
  if (!q.is_cuda() || flash_op() == nullptr) return false;
  if (q.scalar_type() != at::kBFloat16 && q.scalar_type() != at::kHalf) return false;
  return q.size(-1) % 8 == 0 && q.size(-1) <= 256;
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const Varlen& qv, const Varlen& kv, bool causal, double scale, bool use_flash,
                     int64_t k_max_override) {
  VLA_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "attention: q/k/v must be [T, H, D]");
  VLA_CHECK(q.size(1) % k.size(1) == 0, "attention: heads ", q.size(1),
            " not a multiple of kv heads ", k.size(1));
  if (use_flash) {
    return flash_varlen(q, k, v, qv.cu_dev, kv.cu_dev, qv.max_len,
                        k_max_override > 0 ? k_max_override : kv.max_len, causal, scale);
  }
  return attention_math(q, k, v, qv, kv, causal, scale);
}

namespace {
bool heads_rows(const at::Tensor& t) {
  return t.dim() == 3 && t.stride(2) == 1 && t.stride(1) == t.size(2) && t.stride(0) % 8 == 0 &&
         aligned16(t);
}
}  // namespace

bool causal_attention_available(const at::Tensor& q) {
  return use_kernels(q, true) && q.scalar_type() == at::kBFloat16 && q.dim() == 3 &&
         kernels::causal_attention_fits(static_cast<int>(q.size(2)));
}

namespace {
void check_causal_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const Varlen& seqs) {
  VLA_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3,
            "causal_attention: q/k/v must be [T, H, D]");
  const int64_t T = q.size(0), H = q.size(1), Hk = k.size(1), D = q.size(2);
  VLA_CHECK(Hk > 0 && H % Hk == 0 && v.size(1) == Hk && k.size(2) == D && v.size(2) == D &&
                k.size(0) == T && v.size(0) == T && seqs.total() == T,
            "causal_attention: shapes q ", q.sizes(), " k ", k.sizes(), " v ", v.sizes(),
            " do not fit sequences covering ", seqs.total(), " rows");
}
// Whether kernels/causal_attention.cu (triton_variant -1) or the Triton kernel's variant takes
// these operands.
bool causal_kernel_runs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool fused,
                        int triton_variant) {
  if (triton_variant >= 0) {
    VLA_CHECK(triton_variant < causal_attention_triton_variants(q) && heads_rows(k) &&
                  heads_rows(v) && heads_rows(q) && k.scalar_type() == at::kBFloat16 &&
                  v.scalar_type() == at::kBFloat16,
              "causal_attention: Triton variant ", triton_variant,
              " cannot run here (compiled variants for these operands: ",
              causal_attention_triton_variants(q), "; needs bf16, head_dim 128, aligned rows)");
    return true;
  }
  return fused && causal_attention_available(q) && k.scalar_type() == at::kBFloat16 &&
         v.scalar_type() == at::kBFloat16 && heads_rows(q) && heads_rows(k) && heads_rows(v);
}
// Runs it into out ([T, H * D] rows: bf16, or e4m3 with out_scale).
void causal_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const Varlen& seqs, double scale, const at::Tensor& out, const float* out_scale,
                   int triton_variant) {
  const int64_t H = q.size(1), Hk = k.size(1), D = q.size(2);
  const int64_t rows = triton_variant >= 0
                           ? kernels::causal_attention_triton_tile_rows(triton_variant)
                           : 64;  // causal_attention.cu's query tile
  int64_t tiles = 0;
  for (size_t i = 1; i < seqs.cu.size(); ++i)
    tiles += (seqs.cu[i] - seqs.cu[i - 1] + rows - 1) / rows;
  const int n = static_cast<int>(seqs.cu.size()) - 1;
  const int32_t* cu = seqs.cu_dev.data_ptr<int32_t>();
  const float s = static_cast<float>(scale);
  const char* e =
      triton_variant >= 0
          ? kernels::causal_attention_triton(
                triton_variant, q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0), v.data_ptr(),
                v.stride(0), cu, n, tiles, static_cast<int>(H), static_cast<int>(Hk),
                static_cast<int>(D), s, out.data_ptr(), H * D, out_scale, current_stream(q))
          : kernels::causal_attention(q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0),
                                      v.data_ptr(), v.stride(0), cu, n, tiles, static_cast<int>(H),
                                      static_cast<int>(Hk), static_cast<int>(D), s, out.data_ptr(),
                                      H * D, out_scale, current_stream(q));
  check_launch(e, "causal_attention");
}
// Whether kernels/window_attention.cu takes these operands.
bool window_kernel_runs(const at::Tensor& qkv, int head_dim, const Varlen& windows, bool fused) {
  return use_kernels(qkv, fused) && qkv.scalar_type() == at::kBFloat16 &&
         kernels::window_attention_fits(head_dim, windows.max_len) && qkv.stride(0) % 8 == 0 &&
         aligned16(qkv);
}
// Runs it into out ([T, heads * head_dim] rows: bf16, or e4m3 with out_scale).
void window_kernel(const at::Tensor& qkv, int heads, int head_dim, const at::Tensor& cos,
                   const at::Tensor& sin, const Varlen& windows, double scale,
                   const at::Tensor& out, const float* out_scale) {
  auto c = cos.to(at::kFloat).contiguous();
  auto s = sin.to(at::kFloat).contiguous();
  check_launch(kernels::window_attention(
                   qkv.data_ptr(), qkv.stride(0), c.data_ptr<float>(), s.data_ptr<float>(),
                   windows.cu_dev.data_ptr<int32_t>(), static_cast<int64_t>(windows.cu.size()) - 1,
                   windows.max_len, heads, head_dim, static_cast<float>(scale), out.data_ptr(),
                   out.stride(0), out_scale, current_stream(qkv)),
               "window_attention");
}
void check_window_shapes(const at::Tensor& qkv, int heads, int head_dim, const at::Tensor& cos,
                         const at::Tensor& sin, const Varlen& windows) {
  check_rows(qkv, "window_attention");
  const int64_t T = qkv.size(0), width = static_cast<int64_t>(heads) * head_dim;
  VLA_CHECK(qkv.size(1) == 3 * width, "window_attention: qkv rows are ", qkv.size(1),
            " wide, expected 3 * ", heads, " * ", head_dim);
  VLA_CHECK(windows.total() == T, "window_attention: windows cover ", windows.total(),
            " rows, qkv has ", T);
  VLA_CHECK(cos.size(0) == T && cos.size(1) == head_dim && sin.sizes() == cos.sizes(),
            "window_attention: cos / sin tables must be [", T, ", ", head_dim, "]");
}
}  // namespace

int causal_attention_triton_variants(const at::Tensor& q) {
  return use_kernels(q, true) && q.scalar_type() == at::kBFloat16 && q.dim() == 3 &&
                 q.size(2) == 128
             ? kernels::causal_attention_triton_variants()
             : 0;
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const Varlen& seqs, double scale, bool fused, int triton_variant) {
  check_causal_shapes(q, k, v, seqs);
  if (causal_kernel_runs(q, k, v, fused, triton_variant)) {
    auto out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
    causal_kernel(q, k, v, seqs, scale, out, nullptr, triton_variant);
    return out;
  }
  return attention(q, k, v, seqs, seqs, /*causal=*/true, scale, /*use_flash=*/false);
}

at::Tensor window_attention(at::Tensor& qkv, int heads, int head_dim, const at::Tensor& cos,
                            const at::Tensor& sin, const Varlen& windows, double scale, bool fused,
                            bool use_flash) {
  check_window_shapes(qkv, heads, head_dim, cos, sin, windows);
  const int64_t T = qkv.size(0), width = static_cast<int64_t>(heads) * head_dim;
  if (window_kernel_runs(qkv, head_dim, windows, fused)) {
    auto out = at::empty({T, width}, qkv.options());
    window_kernel(qkv, heads, head_dim, cos, sin, windows, scale, out, nullptr);
    return out;
  }
  rotary_(qkv, 2 * heads, head_dim, cos, sin, fused);
  auto q = qkv.narrow(1, 0, width).view({T, heads, head_dim});
  auto k = qkv.narrow(1, width, width).view({T, heads, head_dim});
  auto v = qkv.narrow(1, 2 * width, width).view({T, heads, head_dim});
  return attention(q, k, v, windows, windows, /*causal=*/false, scale, use_flash).view({T, width});
}

// ------------------------------------------------------------------ FP8
bool fp8_compiled() {
#ifdef VLA_HAVE_FP8
  return true;
#else
  return false;
#endif
}

namespace {

const c10::OperatorHandle* scaled_mm_op() {
  static const c10::OperatorHandle* op = find_op("aten::_scaled_mm");
  return op;
}

#ifdef VLA_HAVE_FP8
// Reference quantisation of float rows (same arithmetic as kernels/common.cuh's quantize_row):
// per row, or with one static scale `fixed` (float [1]).
Fp8Rows quantize_ref(const at::Tensor& xf, const at::Tensor& fixed = {}) {
  if (fixed.defined()) {
    Fp8Rows r;
    r.q = (xf / fixed.to(xf.device()))
              .clamp_min(-448.0)
              .clamp_max(448.0)
              .to(at::kFloat8_e4m3fn)
              .contiguous();
    r.scale = fixed;
    return r;
  }
  auto amax = xf.abs().amax({1}, /*keepdim=*/true).clamp_min(1e-12);
  Fp8Rows r;
  r.q =
      (xf * (448.0 / amax)).clamp_min(-448.0).clamp_max(448.0).to(at::kFloat8_e4m3fn).contiguous();
  r.scale = (amax / 448.0).contiguous();
  return r;
}

Fp8Rows alloc_fp8(int64_t rows, int64_t dim, const at::Device& dev, const at::Tensor& fixed) {
  Fp8Rows r;
  r.q = at::empty({rows, dim}, at::TensorOptions().dtype(at::kFloat8_e4m3fn).device(dev));
  r.scale = fixed.defined()
                ? fixed
                : at::empty({rows, 1}, at::TensorOptions().dtype(at::kFloat).device(dev));
  return r;
}
// The kernels' fixed_scale argument: nullptr, or the static scale (checked: one float on x's
// device).
const float* fixed_ptr(const at::Tensor& fixed, const at::Tensor& x) {
  if (!fixed.defined()) return nullptr;
  VLA_CHECK(fixed.numel() == 1 && fixed.scalar_type() == at::kFloat && fixed.device() == x.device(),
            "fp8: a static scale must be one float32 on ", x.device().str());
  return fixed.data_ptr<float>();
}
bool kernel_row_fits(const at::Tensor& x, int64_t dim, bool fused) {
  return use_kernels(x, fused) && dim * 4 <= 48 * 1024;
}
#else
[[noreturn]] void no_fp8() {
  throw Error("fp8: this build's torch has no float8 types (needs torch >= 2.1)");
}
#endif

}  // namespace

bool fp8_supported(const at::Device& device) {
#ifdef VLA_HAVE_FP8
  if (!device.is_cuda()) return true;
  if (scaled_mm_op() == nullptr) return false;
  return device::compute_capability(device) >= 89;
#endif
  (void)device;
  return false;
}

Fp8Rows quantize_fp8(const at::Tensor& x, bool fused, const at::Tensor& fixed_scale) {
  check_rows(x, "quantize_fp8");
#ifdef VLA_HAVE_FP8
  const float* fixed = fixed_ptr(fixed_scale, x);  // checks it
  if (kernel_row_fits(x, x.size(1), fused)) {
    Fp8Rows r = alloc_fp8(x.size(0), x.size(1), x.device(), fixed_scale);
    check_launch(kernels::quantize_fp8(x.data_ptr(), x.stride(0), r.q.data_ptr(),
                                       fixed ? nullptr : r.scale.data_ptr<float>(), fixed,
                                       x.size(0), x.size(1), kdtype(x), current_stream(x)),
                 "quantize_fp8");
    return r;
  }
  (void)fused;
  return quantize_ref(x.to(at::kFloat), fixed_scale);
#else
  (void)fused;
  (void)fixed_scale;
  no_fp8();
#endif
}

Fp8Rows rms_norm_fp8(const at::Tensor& x, const at::Tensor& w, double eps, bool fused,
                     const at::Tensor& fixed_scale) {
  check_rows(x, "rms_norm_fp8");
#ifdef VLA_HAVE_FP8
  if (kernel_row_fits(x, x.size(1), fused)) {
    Fp8Rows r = alloc_fp8(x.size(0), x.size(1), x.device(), fixed_scale);
    auto wc = w.contiguous();
    check_launch(
        kernels::rmsnorm_fp8(x.data_ptr(), x.stride(0), nullptr, 0, wc.data_ptr(), r.q.data_ptr(),
                             r.scale.data_ptr<float>(), fixed_ptr(fixed_scale, x), x.size(0),
                             x.size(1), static_cast<float>(eps), kdtype(x), current_stream(x)),
        "rmsnorm_fp8");
    return r;
  }
  (void)fused;
  auto xf = x.to(at::kFloat);
  auto var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return quantize_ref(xf * at::rsqrt(var + eps) * w.to(at::kFloat), fixed_scale);
#else
  (void)w;
  (void)eps;
  (void)fused;
  (void)fixed_scale;
  no_fp8();
#endif
}

Fp8Rows add_rms_norm_fp8(const at::Tensor& x, at::Tensor& residual, const at::Tensor& w, double eps,
                         bool fused, const at::Tensor& fixed_scale) {
  check_rows(x, "add_rms_norm_fp8");
  check_rows(residual, "add_rms_norm_fp8 residual");
#ifdef VLA_HAVE_FP8
  if (kernel_row_fits(x, x.size(1), fused)) {
    Fp8Rows r = alloc_fp8(x.size(0), x.size(1), x.device(), fixed_scale);
    auto wc = w.contiguous();
    check_launch(
        kernels::rmsnorm_fp8(x.data_ptr(), x.stride(0), residual.data_ptr(), residual.stride(0),
                             wc.data_ptr(), r.q.data_ptr(), r.scale.data_ptr<float>(),
                             fixed_ptr(fixed_scale, x), x.size(0), x.size(1),
                             static_cast<float>(eps), kdtype(x), current_stream(x)),
        "add_rmsnorm_fp8");
    return r;
  }
#endif
  (void)fused;
  residual.add_(x);
  return rms_norm_fp8(residual, w, eps, false, fixed_scale);
}

Fp8Rows silu_mul_fp8(const at::Tensor& x, int64_t inter, bool fused,
                     const at::Tensor& fixed_scale) {
  check_rows(x, "silu_mul_fp8");
  VLA_CHECK(x.size(1) >= 2 * inter, "silu_mul_fp8: row too short");
#ifdef VLA_HAVE_FP8
  if (kernel_row_fits(x, inter, fused)) {
    Fp8Rows r = alloc_fp8(x.size(0), inter, x.device(), fixed_scale);
    check_launch(kernels::silu_mul_fp8(x.data_ptr(), x.stride(0), r.q.data_ptr(),
                                       r.scale.data_ptr<float>(), fixed_ptr(fixed_scale, x),
                                       x.size(0), inter, kdtype(x), current_stream(x)),
                 "silu_mul_fp8");
    return r;
  }
  (void)fused;
  return quantize_ref(
      at::silu(x.narrow(1, 0, inter).to(at::kFloat)) * x.narrow(1, inter, inter).to(at::kFloat),
      fixed_scale);
#else
  (void)fused;
  (void)fixed_scale;
  no_fp8();
#endif
}

Fp8Rows quantize_fp8_tensor(const at::Tensor& w) {
  check_rows(w, "quantize_fp8_tensor");
#ifdef VLA_HAVE_FP8
  const at::Tensor wf = w.to(at::kFloat);
  const at::Tensor scale = (wf.abs().amax().clamp_min(1e-12) / 448.0).reshape({1});
  Fp8Rows r = quantize_ref(wf, scale);
  r.scale = scale.reshape({1, 1}).expand({w.size(0), 1}).contiguous();
  r.tensorwise = true;
  return r;
#else
  no_fp8();
#endif
}

Fp8Rows causal_attention_fp8(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const Varlen& seqs, double scale, bool fused,
                             const at::Tensor& fixed_scale, int triton_variant) {
  check_causal_shapes(q, k, v, seqs);
#ifdef VLA_HAVE_FP8
  VLA_CHECK(fixed_scale.defined(), "causal_attention_fp8: needs a static scale");
  const float* fixed = fixed_ptr(fixed_scale, q);
  if (causal_kernel_runs(q, k, v, fused, triton_variant)) {
    Fp8Rows r = alloc_fp8(q.size(0), q.size(1) * q.size(2), q.device(), fixed_scale);
    causal_kernel(q, k, v, seqs, scale, r.q, fixed, triton_variant);
    return r;
  }
  const at::Tensor out = causal_attention(q, k, v, seqs, scale, fused);
  return quantize_fp8(out.view({q.size(0), -1}), fused, fixed_scale);
#else
  (void)scale;
  (void)fused;
  (void)fixed_scale;
  (void)triton_variant;
  no_fp8();
#endif
}

Fp8Rows window_attention_fp8(at::Tensor& qkv, int heads, int head_dim, const at::Tensor& cos,
                             const at::Tensor& sin, const Varlen& windows, double scale, bool fused,
                             bool use_flash, const at::Tensor& fixed_scale) {
  check_window_shapes(qkv, heads, head_dim, cos, sin, windows);
#ifdef VLA_HAVE_FP8
  VLA_CHECK(fixed_scale.defined(), "window_attention_fp8: needs a static scale");
  const float* fixed = fixed_ptr(fixed_scale, qkv);
  if (window_kernel_runs(qkv, head_dim, windows, fused)) {
    Fp8Rows r =
        alloc_fp8(qkv.size(0), static_cast<int64_t>(heads) * head_dim, qkv.device(), fixed_scale);
    window_kernel(qkv, heads, head_dim, cos, sin, windows, scale, r.q, fixed);
    return r;
  }
  return quantize_fp8(
      window_attention(qkv, heads, head_dim, cos, sin, windows, scale, fused, use_flash), fused,
      fixed_scale);
#else
  (void)scale;
  (void)fused;
  (void)use_flash;
  (void)fixed_scale;
  no_fp8();
#endif
}

at::Tensor dequantize_fp8(const Fp8Rows& x) {
  VLA_CHECK(x.defined(), "dequantize_fp8: empty");
  return x.q.to(at::kFloat) * x.scale;
}

at::Tensor linear_fp8(const Fp8Rows& x, const Fp8Rows& w, const at::Tensor& b,
                      at::ScalarType out_dtype, bool fast_accum) {
  VLA_CHECK(x.defined() && w.defined(), "linear_fp8: empty operand");
  const int64_t K = x.q.size(1), N = w.q.size(0);
  VLA_CHECK(w.q.size(1) == K, "linear_fp8: K mismatch (", K, " vs ", w.q.size(1), ")");
  (void)N;
  if (x.q.is_cuda() && out_dtype == at::kBFloat16 && K % 16 == 0 && N % 16 == 0 &&
      scaled_mm_op() != nullptr) {
    // cuBLASLt may refuse a bias epilogue with row-wise scales: then the bias is added after; and
    // should it refuse tensor-wise scales, row-wise ones (the same values repeated) are used.
    static bool bias_in_gemm = true, tensorwise_ok = true;
    const bool tensorwise = x.scale.numel() == 1 && (w.tensorwise || w.scale.numel() == 1);
    auto call = [&](bool with_bias, bool by_tensor) {
      std::vector<std::pair<std::string, c10::IValue>> named = {
          {"bias", with_bias ? c10::IValue(b) : c10::IValue()},
          {"scale_result", c10::IValue()},
          {"out_dtype", c10::IValue(out_dtype)},
          {"use_fast_accum", c10::IValue(fast_accum)}};
      if (by_tensor)
        return call_by_name(scaled_mm_op(), "aten::_scaled_mm", named,
                            {x.q, w.q.t(), x.scale.reshape({}), w.scale.flatten()[0]});
      const at::Tensor xs = x.scale.numel() == 1 && x.q.size(0) != 1
                                ? x.scale.reshape({1, 1}).expand({x.q.size(0), 1}).contiguous()
                                : x.scale;
      const at::Tensor ws = w.scale.numel() == 1
                                ? w.scale.reshape({1, 1}).expand({1, N}).contiguous()
                                : w.scale.view({1, N});
      return call_by_name(scaled_mm_op(), "aten::_scaled_mm", named, {x.q, w.q.t(), xs, ws});
    };
    auto product = [&](bool with_bias) {
      if (tensorwise && tensorwise_ok) {
        try {
          return call(with_bias, true);
        } catch (const std::exception& e) {
          if (with_bias) throw;  // first retried without the bias epilogue
          tensorwise_ok = false;
          device::clear_error();
          log_warn("gpu: _scaled_mm with tensor-wise scales failed (", e.what(),
                   "); using row-wise scales");
        }
      }
      return call(with_bias, false);
    };
    const bool has_bias = b.defined();
    auto aten = [&]() {
      if (has_bias && bias_in_gemm) {
        try {
          return product(true);
        } catch (const std::exception& e) {
          bias_in_gemm = false;
          device::clear_error();
          log_warn("gpu: _scaled_mm with bias failed (", e.what(), "); adding the bias separately");
        }
      }
      at::Tensor out = product(false);
      if (has_bias) out.add_(b);
      return out;
    };
    // Tensor-wise scales with fast accumulation: _scaled_mm or the fastest of cuBLASLt's other
    // candidates (lt_choice), the same cuBLASLt arithmetic.
    if (!(tensorwise && fast_accum && lt_fits(x.q, w.q, b))) return aten();
    return lt_product(x.q, w.q, x.scale.data_ptr<float>(), w.scale.data_ptr<float>(), b, aten);
  }
  (void)fast_accum;
  at::Tensor out = at::matmul(dequantize_fp8(x), dequantize_fp8(w).t());
  if (b.defined()) out.add_(b.to(at::kFloat));
  return out.to(out_dtype);
}

bool linear_fp8_accumulate_fused(const at::Tensor& residual, const Fp8Rows& x, const Fp8Rows& w,
                                 const at::Tensor& b, bool fused, bool fast_accum) {
  return fast_accum && x.defined() && w.defined() && x.scale.numel() == 1 && w.tensorwise &&
         accumulate_fits(residual, x.q, w.q, b, fused);
}

void linear_fp8_accumulate_(at::Tensor& residual, const Fp8Rows& x, const Fp8Rows& w,
                            const at::Tensor& b, bool fused, bool fast_accum) {
  VLA_CHECK(x.defined() && w.defined(), "linear_fp8_accumulate_: empty operand");
  VLA_CHECK(w.q.size(1) == x.q.size(1), "linear_fp8_accumulate_: K mismatch (", x.q.size(1), " vs ",
            w.q.size(1), ")");
  if (linear_fp8_accumulate_fused(residual, x, w, b, fused, fast_accum)) {
    launch_accumulate(residual, x.q, w.q, x.scale.data_ptr<float>(), w.scale.data_ptr<float>(), b);
    return;
  }
  residual.add_(linear_fp8(x, w, b, residual.scalar_type(), fast_accum));
}

int linear_swiglu_variants(const at::Tensor& x, bool fp8) {
#ifndef VLA_HAVE_FP8
  if (fp8) return 0;
#endif
  return x.is_cuda() ? kernels::gemm_swiglu_variants(fp8) : 0;
}

namespace {
// Launches kernels::gemm_swiglu (the callers checked shapes and types) with its scratch memory
// from torch's allocator on the current stream (inside a CUDA graph capture: the graph's pool).
void launch_swiglu(bool fp8, int variant, const at::Tensor& x, const at::Tensor& w,
                   const at::Tensor& b, at::Tensor& out, const float* x_scale, const float* w_scale,
                   const float* out_scale) {
  VLA_CHECK(variant < linear_swiglu_variants(x, fp8), "linear_swiglu: variant ", variant,
            " is not compiled for ", x.device().str());
  VLA_CHECK(x.is_contiguous() && w.is_contiguous(), "linear_swiglu: x and w must be contiguous");
  const int64_t rows = x.size(0), inter = out.size(1), K = x.size(1);
  const at::Tensor bias = b.defined() ? b.to(at::kBFloat16).contiguous() : at::Tensor();
  const size_t bytes = kernels::gemm_swiglu_scratch_bytes(fp8, variant, rows, inter);
  const at::Tensor scratch = at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))},
                                       at::TensorOptions().dtype(at::kByte).device(x.device()));
  check_launch(
      kernels::gemm_swiglu(fp8, variant, x.data_ptr(), w.data_ptr(),
                           bias.defined() ? bias.data_ptr() : nullptr, out.data_ptr(), rows, inter,
                           K, x_scale, w_scale, out_scale, scratch.data_ptr(), current_stream(x)),
      "gemm_swiglu");
}
}  // namespace

at::Tensor linear_swiglu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                         int64_t inter, int variant) {
  VLA_CHECK(x.dim() == 2 && w.dim() == 2 && w.size(0) == 2 * inter && w.size(1) == x.size(1),
            "linear_swiglu: weights ", w.sizes(), " are not [2 * ", inter, ", ", x.size(1), "]");
  VLA_CHECK(!b.defined() || b.numel() == 2 * inter, "linear_swiglu: bias of ", b.numel(),
            " values for 2 * ", inter, " outputs");
  if (variant < 0) {
    const at::Tensor y =
        linear(x.to(at::kFloat), w.to(at::kFloat), b.defined() ? b.to(at::kFloat) : at::Tensor());
    return (at::silu(y.narrow(1, 0, inter)) * y.narrow(1, inter, inter)).to(x.scalar_type());
  }
  VLA_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16,
            "linear_swiglu: the fused kernel takes bf16 operands");
  at::Tensor out = at::empty({x.size(0), inter}, x.options());
  launch_swiglu(false, variant, x, w, b, out, nullptr, nullptr, nullptr);
  return out;
}

Fp8Rows linear_swiglu_fp8(const Fp8Rows& x, const Fp8Rows& w, const at::Tensor& b, int64_t inter,
                          const at::Tensor& out_scale, int variant) {
  VLA_CHECK(x.defined() && w.defined(), "linear_swiglu_fp8: empty operand");
  const int64_t K = x.q.size(1);
  VLA_CHECK(w.q.dim() == 2 && w.q.size(0) == 2 * inter && w.q.size(1) == K,
            "linear_swiglu_fp8: weights ", w.q.sizes(), " are not [2 * ", inter, ", ", K, "]");
  VLA_CHECK(x.scale.numel() == 1, "linear_swiglu_fp8: x needs one static scale");
  VLA_CHECK(w.tensorwise, "linear_swiglu_fp8: weights need one scale (quantize_fp8_tensor)");
  VLA_CHECK(!b.defined() || b.numel() == 2 * inter, "linear_swiglu_fp8: bias of ", b.numel(),
            " values for 2 * ", inter, " outputs");
  if (variant < 0) {
    const at::Tensor y = linear_fp8(x, w, b, at::kFloat, /*fast_accum=*/false);
    return quantize_fp8(at::silu(y.narrow(1, 0, inter)) * y.narrow(1, inter, inter),
                        /*fused=*/false, out_scale);
  }
#ifdef VLA_HAVE_FP8
  Fp8Rows r = alloc_fp8(x.q.size(0), inter, x.q.device(), out_scale);
  launch_swiglu(true, variant, x.q, w.q, b, r.q, fixed_ptr(x.scale, x.q), w.scale.data_ptr<float>(),
                fixed_ptr(out_scale, x.q));
  return r;
#else
  no_fp8();
#endif
}

at::Tensor gemv(const at::Tensor& x, const at::Tensor& w, const Fp8Rows& w8, const at::Tensor& b,
                bool silu_gate, bool fused) {
  const at::Tensor& wt = w8.defined() ? w8.q : w;
  VLA_CHECK(x.dim() == 2 && x.size(0) == 1, "gemv: x must be [1, K], got ", x.sizes());
  VLA_CHECK(wt.dim() == 2 && wt.size(1) == x.size(1), "gemv: weights ", wt.sizes(),
            " do not match x ", x.sizes());
  VLA_CHECK(!silu_gate || wt.size(0) % 2 == 0, "gemv: gate|up weights need an even row count");
  const int64_t K = x.size(1), N = silu_gate ? wt.size(0) / 2 : wt.size(0);
  if (use_kernels(x, fused) && K % 16 == 0 && wt.is_contiguous() && aligned16(wt) &&
      x.is_contiguous() && aligned16(x) && (!b.defined() || b.scalar_type() == x.scalar_type())) {
    auto out = at::empty({1, N}, x.options());
    const at::Tensor bc = b.defined() ? b.contiguous() : at::Tensor();
    const at::Tensor sc = w8.defined() ? w8.scale.to(at::kFloat).contiguous() : at::Tensor();
    check_launch(kernels::gemv(x.data_ptr(), wt.data_ptr(), w8.defined(),
                               w8.defined() ? sc.data_ptr<float>() : nullptr,
                               bc.defined() ? bc.data_ptr() : nullptr, out.data_ptr(), N, K,
                               silu_gate, kdtype(x), current_stream(x)),
                 "gemv");
    return out;
  }
  (void)fused;
  const at::Tensor wf = w8.defined() ? dequantize_fp8(w8) : w.to(at::kFloat);
  at::Tensor y = at::matmul(x.to(at::kFloat), wf.t());
  if (silu_gate)
    y = at::silu(y.narrow(1, 0, N)) * y.narrow(1, N, N);
  else if (b.defined())
    y = y + b.to(at::kFloat);
  return y.to(x.scalar_type());
}

}  // namespace vla::gpu::ops
