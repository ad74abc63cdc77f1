// Qwen2.5-VL vision tower: patch embed (Conv3d as a matmul), 2D rotary, window attention with
// the window-index permutation and full-attention blocks, RMSNorm, SwiGLU, 2x2 patch merger.
#include <cmath>
#include <map>

#include "models/models.h"

namespace vla {

namespace {

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half);
  auto x2 = x.narrow(-1, half, half);
  return torch::cat({-x2, x1}, -1);
}

std::vector<int64_t> to_vec(const torch::Tensor& t) {
  auto c = t.to(torch::kCPU).to(torch::kInt64).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

VisionLayout vision_layout(const torch::Tensor& grid_thw, const Qwen25VLVisionConfig& cfg) {
  VLA_CHECK(grid_thw.dim() == 2 && grid_thw.size(1) == 3, "grid_thw must be (num_images, 3), got ",
            grid_thw.sizes());
  const auto g = to_vec(grid_thw);
  const int64_t m = cfg.spatial_merge_size;
  const int64_t unit = m * m;
  const int64_t vws = cfg.window_size / m / cfg.patch_size;
  VLA_CHECK(vws > 0, "vision window_size ", cfg.window_size, " smaller than patch * merge");
  std::vector<int64_t> window_index, cu_win{0}, cu_full{0}, rot;
  int64_t offset = 0;
  for (size_t i = 0; i + 2 < g.size(); i += 3) {
    const int64_t t = g[i], h = g[i + 1], w = g[i + 2];
    VLA_CHECK(t > 0 && h > 0 && w > 0 && h % m == 0 && w % m == 0, "grid_thw row ", i / 3, " (", t,
              ", ", h, ", ", w, ") must be positive with h, w multiples of ", m);
    const int64_t lh = h / m, lw = w / m;
    const int64_t pad_h = vws - lh % vws, pad_w = vws - lw % vws;
    const int64_t nwh = (lh + pad_h) / vws, nww = (lw + pad_w) / vws;
    for (int64_t tt = 0; tt < t; ++tt) {
      for (int64_t wy = 0; wy < nwh; ++wy) {
        for (int64_t wx = 0; wx < nww; ++wx) {
          int64_t count = 0;
          for (int64_t y = wy * vws; y < (wy + 1) * vws; ++y) {
            for (int64_t x = wx * vws; x < (wx + 1) * vws; ++x) {
              if (y < lh && x < lw) {
                window_index.push_back(offset + tt * lh * lw + y * lw + x);
                ++count;
              }
            }
          }
          const int64_t next = cu_win.back() + count * unit;
          if (next != cu_win.back()) cu_win.push_back(next);  // unique_consecutive
        }
      }
      cu_full.push_back(cu_full.back() + h * w);
    }
    offset += t * lh * lw;
    // rotary positions: (row, col) per patch, grouped by merge blocks, repeated per frame
    for (int64_t tt = 0; tt < t; ++tt)
      for (int64_t by = 0; by < lh; ++by)
        for (int64_t bx = 0; bx < lw; ++bx)
          for (int64_t my = 0; my < m; ++my)
            for (int64_t mx = 0; mx < m; ++mx) {
              rot.push_back(by * m + my);
              rot.push_back(bx * m + mx);
            }
  }
  VisionLayout L;
  auto opt = torch::TensorOptions().dtype(torch::kInt64);
  L.window_index = torch::tensor(window_index, opt);
  L.cu_window_seqlens = torch::tensor(cu_win, opt);
  L.cu_seqlens = torch::tensor(cu_full, opt);
  L.rotary_pos = torch::tensor(rot, opt).reshape({-1, 2});
  return L;
}

std::pair<torch::Tensor, torch::Tensor> vision_rotary(const VisionLayout& layout,
                                                      const Qwen25VLVisionConfig& cfg) {
  const int64_t hd = cfg.head_dim(), spatial = hd / 2;
  const int64_t n = layout.rotary_pos.size(0);
  const int64_t unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
  VLA_CHECK(hd % 4 == 0, "vision head_dim must be a multiple of 4");
  auto inv_freq = 1.0 / torch::pow(cfg.rope_theta,
                                   torch::arange(0, spatial, 2, torch::kInt64).to(torch::kFloat32) /
                                       static_cast<double>(spatial));
  auto pos = layout.rotary_pos.to(torch::kFloat32);                    // (N, 2)
  auto freqs = pos.unsqueeze(-1) * inv_freq;                           // (N, 2, hd/4)
  auto hw = torch::cat({freqs.select(1, 0), freqs.select(1, 1)}, -1);  // (N, hd/2)
  auto emb = torch::cat({hw, hw}, -1);
  auto widx = layout.window_index.to(torch::kInt64);
  auto permute = [&](const torch::Tensor& t) {
    return t.reshape({n / unit, unit, -1}).index_select(0, widx).reshape({n, -1});
  };
  return {permute(emb.cos()), permute(emb.sin())};
}

VisionAttentionImpl::VisionAttentionImpl(int64_t dim, int64_t heads_)
    : heads(heads_), head_dim(dim / heads_) {
  qkv = register_module("qkv", Linear(dim, 3 * dim, true));
  proj = register_module("proj", Linear(dim, dim, true));
}

torch::Tensor VisionAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                           const torch::Tensor& sin,
                                           const std::vector<int64_t>& cu) {
  const int64_t n = x.size(0);
  auto qkv_ = qkv(x).reshape({n, 3, heads, head_dim}).permute({1, 0, 2, 3});
  auto q = qkv_[0], k = qkv_[1], v = qkv_[2];  // (N, heads, hd)
  {
    const auto dt = q.scalar_type();
    auto c = cos.unsqueeze(-2).to(torch::kFloat32), s = sin.unsqueeze(-2).to(torch::kFloat32);
    auto qf = q.to(torch::kFloat32), kf = k.to(torch::kFloat32);
    q = (qf * c + rotate_half(qf) * s).to(dt);
    k = (kf * c + rotate_half(kf) * s).to(dt);
  }
  q = q.transpose(0, 1);  // (heads, N, hd)
  k = k.transpose(0, 1);
  v = v.transpose(0, 1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  auto attend = [&](const torch::Tensor& qq, const torch::Tensor& kk, const torch::Tensor& vv) {
    auto w = torch::matmul(qq, kk.transpose(-1, -2)) * scale;
    w = torch::softmax(w, -1, torch::kFloat32).to(qq.scalar_type());
    return torch::matmul(w, vv);
  };
  // Equal-length segments (the common case: images that tile into full windows) run batched.
  std::vector<int64_t> lens;
  for (size_t i = 1; i < cu.size(); ++i) lens.push_back(cu[i] - cu[i - 1]);
  VLA_CHECK(!lens.empty() && cu.back() == n, "vision attention: cu_seqlens end ", cu.back(),
            " != sequence length ", n);
  bool equal = true;
  for (auto l : lens) equal = equal && l == lens[0];
  torch::Tensor out;
  if (equal) {
    const int64_t S = static_cast<int64_t>(lens.size()), len = lens[0];
    auto rs = [&](const torch::Tensor& t) {
      return t.reshape({heads, S, len, head_dim}).transpose(0, 1);  // (S, heads, len, hd)
    };
    out = attend(rs(q), rs(k), rs(v)).transpose(0, 1).reshape({heads, n, head_dim});
  } else {
    // Unequal segments (windows that do not tile the grid, or images of several sizes): one
    // batched attention per distinct length. A loop over segments cost a batch of 256 168x168
    // views 1,024 tiny attention calls per block, forward and backward.
    std::map<int64_t, std::vector<int64_t>> by_len;
    for (size_t i = 0; i < lens.size(); ++i) by_len[lens[i]].push_back(static_cast<int64_t>(i));
    out = torch::zeros_like(q);
    for (const auto& [len, segs] : by_len) {
      const int64_t S = static_cast<int64_t>(segs.size());
      std::vector<int64_t> rows;
      rows.reserve(static_cast<size_t>(S * len));
      for (int64_t i : segs)
        for (int64_t t = 0; t < len; ++t) rows.push_back(cu[static_cast<size_t>(i)] + t);
      auto idx = torch::tensor(rows, torch::kInt64).to(q.device());
      auto gather = [&](const torch::Tensor& t) {
        return t.index_select(1, idx).reshape({heads, S, len, head_dim}).transpose(0, 1);
      };
      auto o =
          attend(gather(q), gather(k), gather(v)).transpose(0, 1).reshape({heads, -1, head_dim});
      out = out.index_copy(1, idx, o);
    }
  }
  out = out.transpose(0, 1).reshape({n, heads * head_dim});
  return proj(out);
}

VisionBlockImpl::VisionBlockImpl(const Qwen25VLVisionConfig& c) {
  norm1 = register_module("norm1", RMSNorm(c.hidden_size, kVisionRmsNormEps));
  norm2 = register_module("norm2", RMSNorm(c.hidden_size, kVisionRmsNormEps));
  attn = register_module("attn", VisionAttention(c.hidden_size, c.num_heads));
  mlp = register_module("mlp", Mlp(c.hidden_size, c.intermediate_size, true));
}

torch::Tensor VisionBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                       const torch::Tensor& sin, const std::vector<int64_t>& cu) {
  auto h = x + attn(norm1(x), cos, sin, cu);
  return h + mlp(norm2(h));
}

VisionTransformerImpl::VisionTransformerImpl(const Qwen25VLVisionConfig& c) : cfg(c) {
  VLA_CHECK(c.hidden_size % c.num_heads == 0, "vision hidden_size ", c.hidden_size,
            " not divisible by num_heads ", c.num_heads);
  VLA_CHECK((c.hidden_size / c.num_heads) % 4 == 0, "vision head_dim must be a multiple of 4");
  auto pe = std::make_shared<torch::nn::Module>();
  auto proj = std::make_shared<torch::nn::Module>();
  patch_weight = proj->register_parameter(
      "weight", torch::empty({c.hidden_size, c.in_channels, c.temporal_patch_size, c.patch_size,
                              c.patch_size}));
  {
    torch::NoGradGuard g;
    patch_weight.normal_(0.0, 0.02);
  }
  pe->register_module("proj", proj);
  register_module("patch_embed", pe);
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.depth; ++i) blocks->push_back(VisionBlock(c));
  auto merger = std::make_shared<torch::nn::Module>();
  auto mlp = std::make_shared<torch::nn::Module>();
  const int64_t ctx = c.hidden_size * c.spatial_merge_size * c.spatial_merge_size;
  merger_ln_q = merger->register_module("ln_q", RMSNorm(c.hidden_size, kVisionRmsNormEps));
  merger_fc1 = mlp->register_module("0", Linear(ctx, ctx, true));
  merger_fc2 = mlp->register_module("2", Linear(ctx, c.out_hidden_size, true));
  merger->register_module("mlp", mlp);
  register_module("merger", merger);
}

torch::Tensor VisionTransformerImpl::forward(const torch::Tensor& pixel_values,
                                             const torch::Tensor& grid_thw) {
  const int64_t patch_dim =
      cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size;
  VLA_CHECK(pixel_values.dim() == 2 && pixel_values.size(1) == patch_dim,
            "pixel_values must be (N, ", patch_dim, "), got ", pixel_values.sizes());
  const auto layout = vision_layout(grid_thw, cfg);
  const int64_t n = pixel_values.size(0);
  VLA_CHECK(layout.rotary_pos.size(0) == n, "pixel_values has ", n,
            " patches but grid_thw describes ", layout.rotary_pos.size(0));
  const auto dev = patch_weight.device();
  const auto dt = patch_weight.scalar_type();
  auto x = torch::matmul(pixel_values.to(dev, dt), patch_weight.reshape({cfg.hidden_size, -1}).t());
  const int64_t unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
  auto widx = layout.window_index.to(dev);
  auto permute = [&](const torch::Tensor& t) {
    return t.reshape({n / unit, unit, -1}).index_select(0, widx).reshape({n, -1});
  };
  x = permute(x);
  auto [cos, sin] = vision_rotary(layout, cfg);
  cos = cos.to(dev);
  sin = sin.to(dev);
  const auto cu_full =
      std::vector<int64_t>(layout.cu_seqlens.data_ptr<int64_t>(),
                           layout.cu_seqlens.data_ptr<int64_t>() + layout.cu_seqlens.numel());
  const auto cu_win = std::vector<int64_t>(
      layout.cu_window_seqlens.data_ptr<int64_t>(),
      layout.cu_window_seqlens.data_ptr<int64_t>() + layout.cu_window_seqlens.numel());
  std::vector<bool> full(cfg.depth, false);
  for (auto b : cfg.fullatt_block_indexes)
    if (b >= 0 && b < cfg.depth) full[b] = true;
  for (size_t i = 0; i < blocks->size(); ++i)
    x = blocks[i]->as<VisionBlockImpl>()->forward(x, cos, sin, full[i] ? cu_full : cu_win);
  const int64_t ctx = cfg.hidden_size * unit;
  auto merged = merger_fc2(torch::gelu(merger_fc1(merger_ln_q(x).reshape({-1, ctx}))));
  auto reverse = torch::argsort(widx);
  return merged.index_select(0, reverse);
}

}  // namespace vla
