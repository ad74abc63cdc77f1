// Building blocks shared by the vision tower and the language model: LoRA-capable Linear,
// RMSNorm, SwiGLU MLP.
#include <cmath>

#include "models/models.h"

namespace vla {

LinearImpl::LinearImpl(int64_t in, int64_t out, bool with_bias)
    : in_features(in), out_features(out) {
  weight = register_parameter("weight", torch::empty({out, in}));
  if (with_bias) bias = register_parameter("bias", torch::zeros({out}));
  torch::NoGradGuard g;
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight.uniform_(-bound, bound);
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  auto y = torch::nn::functional::linear(x, weight, bias);
  if (lora_A.defined()) {
    auto h = x;
    if (lora_dropout > 0.0 && is_training())
      h = torch::nn::functional::dropout(
          h, torch::nn::functional::DropoutFuncOptions().p(lora_dropout).training(true));
    y = y + torch::nn::functional::linear(torch::nn::functional::linear(h, lora_A), lora_B) *
                lora_scale;
  }
  return y;
}

void LinearImpl::enable_lora(int64_t rank, double alpha, double dropout) {
  VLA_CHECK(rank > 0, "LoRA rank must be positive, got ", rank);
  VLA_CHECK(!lora_A.defined(), "LoRA is already enabled on this layer");
  auto opts = weight.options().requires_grad(false);
  auto a = torch::empty({rank, in_features}, opts);
  {
    torch::NoGradGuard g;
    // kaiming_uniform_(a=sqrt(5)) as PEFT: bound = 1/sqrt(in).
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    a.uniform_(-bound, bound);
  }
  lora_A = register_parameter("lora_A", a);
  lora_B = register_parameter("lora_B", torch::zeros({out_features, rank}, opts));
  lora_scale = alpha / static_cast<double>(rank);
  lora_dropout = dropout;
}

torch::Tensor LinearImpl::merged_weight() const {
  if (!lora_A.defined()) return weight;
  torch::NoGradGuard g;
  auto delta = torch::matmul(lora_B.to(torch::kFloat32), lora_A.to(torch::kFloat32)) * lora_scale;
  return (weight.to(torch::kFloat32) + delta).to(weight.scalar_type());
}

void LinearImpl::merge_lora() {
  if (!lora_A.defined()) return;
  {
    torch::NoGradGuard g;
    weight.copy_(merged_weight());
  }
  // Drop the adapter parameters.
  parameters_.erase("lora_A");
  parameters_.erase("lora_B");
  lora_A = torch::Tensor();
  lora_B = torch::Tensor();
  lora_scale = 0.0;
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  const auto in_dtype = x.scalar_type();
  auto h = x.to(torch::kFloat32);
  auto var = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * torch::rsqrt(var + eps);
  return weight * h.to(in_dtype);
}

MlpImpl::MlpImpl(int64_t dim, int64_t hidden, bool bias) {
  gate_proj = register_module("gate_proj", Linear(dim, hidden, bias));
  up_proj = register_module("up_proj", Linear(dim, hidden, bias));
  down_proj = register_module("down_proj", Linear(hidden, dim, bias));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
}

}  // namespace vla
