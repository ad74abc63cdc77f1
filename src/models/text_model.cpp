// Qwen2.5 decoder: GQA attention with M-RoPE, RMSNorm, SwiGLU, KV cache.
#include <cmath>
#include <limits>

#include "models/models.h"

namespace vla {

namespace {

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

torch::Tensor repeat_kv(const torch::Tensor& x, int64_t n_rep) {
  if (n_rep == 1) return x;
  const int64_t b = x.size(0), h = x.size(1), t = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, h, n_rep, t, d}).reshape({b, h * n_rep, t, d});
}

}  // namespace

TextAttentionImpl::TextAttentionImpl(const Qwen25VLTextConfig& c)
    : heads(c.num_attention_heads),
      kv_heads(c.num_key_value_heads),
      head_dim(c.hidden_size / c.num_attention_heads) {
  q_proj = register_module("q_proj", Linear(c.hidden_size, heads * head_dim, true));
  k_proj = register_module("k_proj", Linear(c.hidden_size, kv_heads * head_dim, true));
  v_proj = register_module("v_proj", Linear(c.hidden_size, kv_heads * head_dim, true));
  o_proj = register_module("o_proj", Linear(heads * head_dim, c.hidden_size, false));
}

torch::Tensor TextAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                         const torch::Tensor& sin, const torch::Tensor& mask,
                                         KVCache* cache, size_t layer) {
  const int64_t b = x.size(0), l = x.size(1);
  auto q = q_proj(x).view({b, l, heads, head_dim}).transpose(1, 2);
  auto k = k_proj(x).view({b, l, kv_heads, head_dim}).transpose(1, 2);
  auto v = v_proj(x).view({b, l, kv_heads, head_dim}).transpose(1, 2);
  auto c = cos.unsqueeze(1), s = sin.unsqueeze(1);
  q = q * c + rotate_half(q) * s;
  k = k * c + rotate_half(k) * s;
  if (cache) {
    if (cache->keys.size() <= layer) {
      cache->keys.resize(layer + 1);
      cache->values.resize(layer + 1);
    }
    if (cache->keys[layer].defined()) {
      k = torch::cat({cache->keys[layer], k}, 2);
      v = torch::cat({cache->values[layer], v}, 2);
    }
    cache->keys[layer] = k;
    cache->values[layer] = v;
  }
  const int64_t rep = heads / kv_heads;
  auto kk = repeat_kv(k, rep), vv = repeat_kv(v, rep);
  auto w = torch::matmul(q, kk.transpose(2, 3)) * (1.0 / std::sqrt(static_cast<double>(head_dim)));
  if (mask.defined()) w = w + mask;
  w = torch::softmax(w, -1, torch::kFloat32).to(q.scalar_type());
  auto out = torch::matmul(w, vv).transpose(1, 2).reshape({b, l, heads * head_dim});
  return o_proj(out);
}

DecoderLayerImpl::DecoderLayerImpl(const Qwen25VLTextConfig& c) {
  self_attn = register_module("self_attn", TextAttention(c));
  mlp = register_module("mlp", Mlp(c.hidden_size, c.intermediate_size, false));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                        const torch::Tensor& sin, const torch::Tensor& mask,
                                        KVCache* cache, size_t layer) {
  auto h = x + self_attn(input_layernorm(x), cos, sin, mask, cache, layer);
  return h + mlp(post_attention_layernorm(h));
}

TextModelImpl::TextModelImpl(const Qwen25VLTextConfig& c) : cfg(c) {
  VLA_CHECK(c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads == 0,
            "text hidden_size ", c.hidden_size, " not divisible by num_attention_heads ",
            c.num_attention_heads);
  VLA_CHECK(c.num_key_value_heads > 0 && c.num_attention_heads % c.num_key_value_heads == 0,
            "num_attention_heads ", c.num_attention_heads, " not divisible by num_key_value_heads ",
            c.num_key_value_heads);
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(DecoderLayer(c));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  const int64_t hd = c.hidden_size / c.num_attention_heads;
  int64_t sum = 0;
  for (auto s : c.mrope_section) sum += s;
  VLA_CHECK(c.mrope_section.size() == 3 && sum * 2 == hd, "mrope_section must have 3 entries ",
            "summing to head_dim / 2 = ", hd / 2);
}

std::pair<torch::Tensor, torch::Tensor> mrope_rotary(const torch::Tensor& position_ids,
                                                     const Qwen25VLTextConfig& cfg,
                                                     torch::ScalarType dtype) {
  VLA_CHECK(position_ids.dim() == 3 && position_ids.size(0) == 3,
            "position_ids must be (3, B, L), got ", position_ids.sizes());
  const int64_t hd = cfg.head_dim();
  int64_t sum = 0;
  for (auto s : cfg.mrope_section) sum += s;
  VLA_CHECK(cfg.mrope_section.size() == 3 && sum * 2 == hd, "mrope_section must have 3 entries ",
            "summing to head_dim / 2 = ", hd / 2);
  // freqs (3, B, L, hd/2) = positions x inv_freq, in float32 as transformers does.
  auto pos = position_ids.to(torch::kFloat32);
  auto inv_freq =
      1.0 / torch::pow(cfg.rope_theta, torch::arange(0, hd, 2, torch::kInt64).to(torch::kFloat32) /
                                           static_cast<double>(hd));
  auto freqs = pos.unsqueeze(-1) * inv_freq.to(pos.device());
  auto pick = [&](const torch::Tensor& f) {
    std::vector<torch::Tensor> parts;
    int64_t off = 0;
    for (size_t i = 0; i < cfg.mrope_section.size(); ++i) {
      parts.push_back(f[static_cast<int64_t>(i % 3)].narrow(-1, off, cfg.mrope_section[i]));
      off += cfg.mrope_section[i];
    }
    auto half = torch::cat(parts, -1);
    return torch::cat({half, half}, -1).to(dtype);
  };
  return {pick(freqs.cos()), pick(freqs.sin())};
}

std::pair<torch::Tensor, torch::Tensor> TextModelImpl::rotary(const torch::Tensor& position_ids,
                                                              torch::ScalarType dtype) const {
  return mrope_rotary(position_ids, cfg, dtype);
}

torch::Tensor TextModelImpl::forward(const torch::Tensor& inputs_embeds,
                                     const torch::Tensor& position_ids,
                                     const torch::Tensor& attention_mask, KVCache* cache,
                                     int64_t num_layers) {
  const int64_t all = static_cast<int64_t>(layers->size());
  VLA_CHECK(num_layers >= 0 && num_layers <= all, "num_layers ", num_layers,
            " is outside 0 (all) .. ", all, " (the model's decoder layers)");
  const int64_t run = num_layers == 0 ? all : num_layers;
  VLA_CHECK(!cache || run == all,
            "a KV cache needs every decoder layer (num_layers = 0), got num_layers ", num_layers);
  const int64_t b = inputs_embeds.size(0), l = inputs_embeds.size(1);
  const int64_t past = cache ? cache->length() : 0;
  const int64_t total = past + l;
  VLA_CHECK(position_ids.dim() == 3 && position_ids.size(0) == 3 && position_ids.size(1) == b &&
                position_ids.size(2) == l,
            "position_ids must be (3, ", b, ", ", l, "), got ", position_ids.sizes());
  auto [cos, sin] = rotary(position_ids, inputs_embeds.scalar_type());
  // Additive mask (B, 1, L, T): causal (query i sits at past + i) and key padding. Masked
  // entries get the dtype's lowest value, as transformers does (no NaN on all-masked rows).
  torch::Tensor mask;
  const bool padded = attention_mask.defined() && (attention_mask == 0).any().item<bool>();
  if (l > 1 || padded) {
    auto dev = inputs_embeds.device();
    auto qpos = torch::arange(past, total, torch::TensorOptions().dtype(torch::kInt64).device(dev));
    auto kpos = torch::arange(0, total, torch::TensorOptions().dtype(torch::kInt64).device(dev));
    auto allowed = kpos.view({1, -1}) <= qpos.view({-1, 1});  // (L, T)
    allowed = allowed.view({1, 1, l, total}).expand({b, 1, l, total});
    if (attention_mask.defined()) {
      VLA_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == b &&
                    attention_mask.size(1) == total,
                "attention_mask must be (", b, ", ", total, "), got ", attention_mask.sizes());
      allowed = allowed & (attention_mask.to(dev) != 0).view({b, 1, 1, total});
    }
    const double lowest = inputs_embeds.scalar_type() == torch::kFloat32
                              ? std::numeric_limits<float>::lowest()
                              : -65504.0;
    mask = torch::zeros({b, 1, l, total}, inputs_embeds.options())
               .masked_fill(allowed.logical_not(), lowest);
    if (inputs_embeds.scalar_type() == torch::kBFloat16)
      mask = torch::zeros({b, 1, l, total}, inputs_embeds.options())
                 .masked_fill(allowed.logical_not(), -3.38e38);
  }
  auto h = inputs_embeds;
  for (int64_t i = 0; i < run; ++i)
    h = layers[i]->as<DecoderLayerImpl>()->forward(h, cos, sin, mask, cache, i);
  return norm(h);
}

}  // namespace vla
