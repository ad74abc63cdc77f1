// The fast-path engine: weights, layouts (window order, M-RoPE), stages, plans and CUDA graphs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>

#include "core/core.h"
#include "gpu/device.h"
#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/ops.h"
#include "models/models.h"

namespace vla::gpu {

bool kernels_compiled() { return device::compiled(); }
bool fp8_available(const at::Device& device) { return ops::fp8_supported(device); }
bool cuda_available() { return device::available(); }
std::string device_name(const at::Device& device) { return device::name(device); }

const std::vector<std::string>& fp8_output_projection_names() {
  static const std::vector<std::string> names = {"none", "vision", "decoder", "all"};
  return names;
}
std::string to_string(EngineOptions::Fp8OutputProjections which) {
  return fp8_output_projection_names().at(static_cast<size_t>(which));
}
EngineOptions::Fp8OutputProjections parse_fp8_output_projections(const std::string& name) {
  const auto& names = fp8_output_projection_names();
  const auto it = std::find(names.begin(), names.end(), name);
  std::string choices;
  for (const std::string& n : names) choices += (choices.empty() ? "" : " | ") + n;
  VLA_CHECK(it != names.end(), "unknown FP8 output projections '", name, "' (expected ", choices,
            ")");
  return static_cast<EngineOptions::Fp8OutputProjections>(it - names.begin());
}

EngineOptions EngineOptions::best_available() {
  EngineOptions o;
  if (cuda_available()) {
    o.device = at::Device(at::kCUDA, 0);
    o.dtype = at::kBFloat16;
  }
  return o;
}

// ------------------------------------------------------------------ engine internals
struct VLayer {
  at::Tensor n1, n2, qkv_w, qkv_b, proj_w, proj_b, gu_w, gu_b, down_w, down_b;
  ops::Fp8Rows qkv_q, gu_q, down_q;  // EngineOptions::fp8: per-output-channel e4m3
  ops::Fp8Rows proj_q;               // after calibrate_fp8 only (per tensor)
  bool full = false;
};
struct TLayer {
  at::Tensor in_n, post_n, qkv_w, qkv_b, o_w, gu_w, down_w;
  ops::Fp8Rows qkv_q, gu_q, down_q;
  ops::Fp8Rows o_q;  // after calibrate_fp8 only (per tensor)
};

// The vision tokens of a list of images (all with t = 1) in window order: the index math is the
// model definition's (vla::vision_layout / vision_rotary); this adds the executor's gathers.
struct VisionGather {
  int64_t patches = 0;
  std::vector<int32_t> patch_src;  // window order -> (image * gh + gy) * gw + gx (uniform grids)
  std::vector<int64_t> patch_hf;   // window order -> HF patch row
  std::vector<int64_t> unit_hf;    // window-order merged unit -> HF merged row
  std::vector<int64_t> cu_window, cu_full;
  at::Tensor cos, sin;  // [patches, head_dim] float, window order (host)
};

std::vector<int64_t> to_vector(const at::Tensor& t) {
  auto c = t.to(at::kCPU).to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

at::Tensor grid_tensor(const std::vector<std::array<int64_t, 3>>& grids) {
  auto g = at::empty({static_cast<int64_t>(grids.size()), 3}, at::kLong);
  for (size_t i = 0; i < grids.size(); ++i)
    for (int k = 0; k < 3; ++k) g[static_cast<int64_t>(i)][k] = grids[i][k];
  return g;
}

VisionGather build_vision_layout(const std::vector<std::array<int64_t, 3>>& grids,
                                 const Qwen25VLVisionConfig& vc) {
  for (const auto& g : grids)
    VLA_CHECK(g[0] == 1, "vision: video grids (t = ", g[0], ") are not supported");
  const vla::VisionLayout ref = vla::vision_layout(grid_tensor(grids), vc);
  VisionGather L;
  const int64_t m = vc.spatial_merge_size, mm = m * m;
  L.unit_hf = to_vector(ref.window_index);
  L.cu_window = to_vector(ref.cu_window_seqlens);
  L.cu_full = to_vector(ref.cu_seqlens);
  L.patches = L.cu_full.back();
  // Merged unit u of image i (HF order: units in raster order of the image's lh x lw grid) holds
  // the m x m patches (r*m + k/m, c*m + k%m); the GPU kernel gathers them from the raw frames.
  std::vector<int64_t> unit_base = {0};
  for (const auto& g : grids) unit_base.push_back(unit_base.back() + g[1] * g[2] / mm);
  for (int64_t u : L.unit_hf) {
    size_t img = 0;
    while (u >= unit_base[img + 1]) ++img;
    const int64_t gh = grids[img][1], gw = grids[img][2], lw = gw / m;
    const int64_t local = u - unit_base[img], r = local / lw, c = local % lw;
    for (int64_t k = 0; k < mm; ++k) {
      L.patch_hf.push_back(u * mm + k);
      const int64_t gy = r * m + k / m, gx = c * m + k % m;
      L.patch_src.push_back(static_cast<int32_t>((static_cast<int64_t>(img) * gh + gy) * gw + gx));
    }
  }
  std::tie(L.cos, L.sin) = vla::vision_rotary(ref, vc);
  return L;
}

// cos/sin [S, head_dim] float32 of the text M-RoPE for positions [3, S].
std::pair<at::Tensor, at::Tensor> text_rope_tables(const at::Tensor& pos3,
                                                   const Qwen25VLTextConfig& tc) {
  auto [c, s] = vla::mrope_rotary(pos3.unsqueeze(1), tc, at::kFloat);
  return {c.squeeze(0).contiguous(), s.squeeze(0).contiguous()};
}

struct TokenLayout {
  std::vector<int64_t> ids;       // all sequences, packed
  std::vector<int64_t> cu;        // sequence boundaries
  std::vector<int64_t> img_rows;  // rows of image tokens in order (HF merged order of all images)
  at::Tensor pos3;                // [3, T]
  std::vector<int64_t> next_pos;  // per sequence: max position + 1
};

TokenLayout build_tokens(const std::vector<std::vector<int64_t>>& seqs,
                         const std::vector<std::vector<std::array<int64_t, 3>>>& seq_grids,
                         const Qwen25VLConfig& cfg) {
  TokenLayout T;
  T.cu.push_back(0);
  std::vector<at::Tensor> pos;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const auto& ids = seqs[s];
    const int64_t S = static_cast<int64_t>(ids.size());
    at::Tensor grid = seq_grids[s].empty() ? at::Tensor() : grid_tensor(seq_grids[s]);
    auto [p, delta] = vla::get_rope_index(cfg, at::tensor(ids, at::kLong).view({1, S}), grid, {});
    pos.push_back(p.select(1, 0));
    T.next_pos.push_back(delta.item<int64_t>() + S);
    const int64_t base = T.cu.back();
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] == cfg.image_token_id) T.img_rows.push_back(base + static_cast<int64_t>(i));
    }
    T.ids.insert(T.ids.end(), ids.begin(), ids.end());
    T.cu.push_back(base + static_cast<int64_t>(ids.size()));
  }
  T.pos3 = at::cat(pos, 1);
  return T;
}

// Expands each single image placeholder into grid tokens (HF: <|image_pad|> x n).
std::vector<int64_t> expand_prompt(const std::vector<int64_t>& prompt, int64_t image_token,
                                   const std::vector<int64_t>& counts) {
  std::vector<int64_t> out;
  size_t img = 0;
  for (int64_t id : prompt) {
    if (id == image_token) {
      VLA_CHECK(img < counts.size(), "prompt has more image placeholders than images (",
                counts.size(), ")");
      out.insert(out.end(), static_cast<size_t>(counts[img++]), image_token);
    } else {
      out.push_back(id);
    }
  }
  VLA_CHECK(img == counts.size(), "prompt has ", img, " image placeholders for ", counts.size(),
            " images");
  return out;
}

struct StaticKvCache {
  std::vector<at::Tensor> k, v;  // per layer [capacity, kv_heads, head_dim]
  int64_t capacity = 0;
  int64_t length = 0;
};

// A resize filter (the model definition's, vla::resize_filter) in the layout the kernels read.
struct DeviceFilter {
  ResizeFilter filter;
  at::Tensor weights, bounds;  // int32 [out, ksize] and [out, 2] = (first input, taps)
};
DeviceFilter device_filter(int64_t in_size, int64_t out_size, ResizeBackend backend,
                           const at::Device& dev) {
  DeviceFilter d;
  d.filter = resize_filter(in_size, out_size, backend);
  std::vector<int32_t> bounds;
  for (size_t i = 0; i < d.filter.xmin.size(); ++i) {
    bounds.push_back(static_cast<int32_t>(d.filter.xmin[i]));
    bounds.push_back(static_cast<int32_t>(d.filter.xsize[i]));
  }
  d.weights = at::tensor(d.filter.k, at::kInt).to(dev);
  d.bounds = at::tensor(bounds, at::kInt).to(dev);
  return d;
}

int64_t patch_dim(const Qwen25VLVisionConfig& v) {
  return v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size;
}

struct Plan {
  PlanSpec spec;
  int rh = 0, rw = 0, gh = 0, gw = 0;
  VisionGather vis;
  TokenLayout tok;
  std::vector<int64_t> seq_ids;  // one sequence's expanded ids
  ops::Varlen cu_window, cu_full, seq;
  at::Tensor vcos, vsin, tcos, tsin;  // device tables
  at::Tensor host_frames, dev_frames, tmp;
  DeviceFilter fx, fy;             // resize filters along x (width) and y (height)
  at::Tensor patch_src, patch_hf;  // window-order patch -> raw frame patch / HF pixel_values row
  at::Tensor ids_dev, scatter_rows;
  at::Tensor patches, vis_out, features;
  double flops = 0, vision_flops = 0;
  std::vector<PlanGemm> gemms;
  bool graphs = false;
  std::unique_ptr<device::Graph> g_pre, g_vis, g_llm;
  std::unique_ptr<device::Stream> stream;  // CUDA plans only
  std::vector<std::unique_ptr<device::Event>> events;
};

// Per-op device time accounting for one eager pass (CUDA events between ops).
struct Profiler {
  at::Device dev;
  std::vector<std::string> names;
  std::vector<std::unique_ptr<device::Event>> events;
  void mark(const char* name) {
    names.emplace_back(name);
    events.push_back(std::make_unique<device::Event>());
    events.back()->record(dev);
  }
  std::vector<std::pair<std::string, double>> totals() {
    std::vector<std::pair<std::string, double>> out;
    if (events.empty()) return out;
    events.back()->synchronize();
    for (size_t i = 0; i + 1 < events.size(); ++i) {
      const double ms = events[i]->elapsed_ms(*events[i + 1]);
      auto it =
          std::find_if(out.begin(), out.end(), [&](const auto& p) { return p.first == names[i]; });
      if (it == out.end())
        out.emplace_back(names[i], ms);
      else
        it->second += ms;
    }
    return out;
  }
};

// An attention backend and, for kCausalTriton, the compiled variant of the Triton kernel.
struct AttnChoice {
  ops::AttnBackend backend = ops::AttnBackend::kFlashVarlen;
  int variant = -1;
  // "causal-triton (BM64 BN64 D128 w4 s2)", "cudnn", ...
  std::string name() const {
    std::string n = ops::backend_name(backend);
    if (variant >= 0)
      n += str_cat(" (", kernels::causal_attention_triton_variant_name(variant), ")");
    return n;
  }
};

struct EngineImpl {
  Qwen25VLConfig d;
  ImagePreprocessConfig pc;
  Profiler* prof = nullptr;
  int64_t vi_pad = 0, ti_pad = 0;  // MLP widths padded to multiples of 64 (16-byte aligned rows)
  void mark(const char* n) const {
    if (prof) prof->mark(n);
  }
  EngineOptions o;
  at::Tensor patch_w;
  std::vector<VLayer> vl;
  at::Tensor m_ln, m0_w, m0_b, m2_w, m2_b;
  at::Tensor embed, final_norm, lm_head;
  std::vector<TLayer> tl;
  bool flash = false;
  // Chosen per plan by timing (CUDA): attention of the decoder and of the vision full-attention
  // blocks when all their sequences have the same length.
  AttnChoice llm;
  ops::AttnBackend vfull_backend = ops::AttnBackend::kFlashVarlen;
  // Chosen per plan by timing (CUDA; bf16 or static FP8 scales): the compiled tile configuration
  // of the fused gate|up + SwiGLU GEMM (ops::linear_swiglu / linear_swiglu_fp8) for the vision
  // tower and the decoder, or -1: the product + the SwiGLU kernel.
  int vswiglu = -1, tswiglu = -1;
  std::string tune_report;
  std::unique_ptr<Plan> plan;

  static int64_t uniform_count(const ops::Varlen& v) {
    if (v.cu.size() < 2) return 0;
    const int64_t l = v.cu[1] - v.cu[0];
    for (size_t i = 1; i + 1 < v.cu.size(); ++i) {
      if (v.cu[i + 1] - v.cu[i] != l) return 0;
    }
    return static_cast<int64_t>(v.cu.size()) - 1;
  }
  at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const ops::Varlen& cu, bool causal, double scale,
                    ops::AttnBackend backend) const {
    if (backend == ops::AttnBackend::kCausalKernel && causal)
      return ops::causal_attention(q, k, v, cu, scale, fused());
    if (backend == ops::AttnBackend::kCausalTriton && causal)
      return ops::causal_attention(q, k, v, cu, scale, fused(), llm.variant);
    if (flash && backend != ops::AttnBackend::kFlashVarlen) {
      const int64_t b = uniform_count(cu);
      if (b > 0) return ops::attention_dense(q, k, v, b, causal, scale, backend);
    }
    return ops::attention(q, k, v, cu, cu, causal, scale, flash);
  }

  at::TensorOptions wopt() const { return at::TensorOptions().dtype(o.dtype).device(o.device); }
  bool fused() const { return o.fused_kernels; }
  // Whether EngineOptions::fp8_output_projections names the vision tower's (else the decoder's).
  bool fp8_out_proj(bool vision) const {
    using W = EngineOptions::Fp8OutputProjections;
    const W w = o.fp8_output_projections;
    return w == W::kAll || w == (vision ? W::kVision : W::kDecoder);
  }

  // ---------------------------------------------------------------- decode
  // How the decode step runs each one-row product (EngineOptions::decode_gemv): cuBLAS on the
  // bf16 weights, the GEMV kernel on them, or (FP8 engines, qkv / gate|up / down) the GEMV kernel
  // on the e4m3 weights the prefill uses (half the bytes to stream).
  enum class Product { kCublas, kGemv, kGemvFp8 };
  struct DecodeProducts {
    Product qkv = Product::kCublas, o_proj = Product::kCublas, gate_up = Product::kCublas,
            down = Product::kCublas, lm_head = Product::kCublas;
  };
  std::optional<DecodeProducts> decode_products_;
  std::string decode_report;
  // One product of the decode step: x [1, K] through w (bf16) or w8 (e4m3 rows) as `how` says;
  // gate: w is the fused gate|up matrix and the result its SwiGLU [1, ti_pad].
  at::Tensor decode_product(Product how, const at::Tensor& x, const at::Tensor& w,
                            const ops::Fp8Rows& w8, const at::Tensor& b, bool gate = false) const {
    if (how == Product::kCublas) {
      at::Tensor y = ops::linear(x, w, b);
      return gate ? ops::silu_mul(y, ti_pad, fused()) : y;
    }
    return ops::gemv(x, w, how == Product::kGemvFp8 ? w8 : ops::Fp8Rows{}, b, gate, true);
  }
  // kMeasure on CUDA: each way of each product timed as 20 calls in a CUDA graph cycling through
  // the layers' weights (so they stream from memory as in decoding, not from L2), best of 5
  // replays, once per engine; the fastest wins.
  const DecodeProducts& decode_products() {
    if (decode_products_) return *decode_products_;
    DecodeProducts c;
    using Mode = EngineOptions::DecodeGemv;
    const bool q8 = !tl.empty() && tl[0].qkv_q.defined();
    const Product kernel = q8 ? Product::kGemvFp8 : Product::kGemv;
    if (!o.device.is_cuda() || !fused() || o.decode_gemv == Mode::kOff) {
      decode_report = "cuBLAS for every product";
    } else if (o.decode_gemv == Mode::kOn) {
      c = {kernel, Product::kGemv, kernel, kernel, Product::kGemv};
      decode_report = q8 ? "GEMV kernel for every product, e4m3 weights for qkv, gate|up, down"
                         : "GEMV kernel for every product";
    } else {
      at::NoGradGuard ng;
      const Qwen25VLTextConfig& t = d.text;
      const at::Tensor x = at::randn({1, t.hidden_size}, wopt()),
                       xa = at::randn({1, int64_t{t.num_attention_heads} * t.head_dim()}, wopt()),
                       xi = at::randn({1, ti_pad}, wopt()), none;
      device::Stream stream(o.device);
      device::StreamScope scope(stream);
      constexpr int kCalls = 20;
      // ms per call of f(layer) over layers 0, 1, ... (cyclic).
      auto time_ms = [&](const std::function<void(const TLayer&)>& f) {
        f(tl[0]);  // warm-up, outside the capture
        device::Graph g;
        g.capture_begin();
        for (int i = 0; i < kCalls; ++i) f(tl[static_cast<size_t>(i) % tl.size()]);
        g.capture_end();
        double best = std::numeric_limits<double>::infinity();
        for (int r = 0; r < 6; ++r) {
          stream.synchronize();
          Stopwatch sw;
          g.replay();
          stream.synchronize();
          if (r > 0) best = std::min(best, sw.elapsed_ms() / kCalls);
        }
        return best;
      };
      const char* names[] = {"cuBLAS", "gemv", "gemv e4m3"};
      auto choose = [&](const char* what, Product* pick, bool has_fp8,
                        const std::function<void(Product, const TLayer&)>& f) {
        std::string line;
        double best = std::numeric_limits<double>::infinity();
        for (Product p : {Product::kCublas, Product::kGemv, Product::kGemvFp8}) {
          if (p == Product::kGemvFp8 && !has_fp8) continue;
          const double ms = time_ms([&](const TLayer& L) { f(p, L); });
          line += str_cat(line.empty() ? "" : ", ", names[static_cast<int>(p)], " ",
                          fmt_double(ms * 1e3, 1), " us");
          if (ms < best) best = ms, *pick = p;
        }
        decode_report += str_cat(decode_report.empty() ? "" : "; ", what, ": ",
                                 names[static_cast<int>(*pick)], " (", line, ")");
      };
      choose("qkv", &c.qkv, q8, [&](Product p, const TLayer& L) {
        (void)decode_product(p, x, L.qkv_w, L.qkv_q, L.qkv_b);
      });
      choose("o_proj", &c.o_proj, false,
             [&](Product p, const TLayer& L) { (void)decode_product(p, xa, L.o_w, {}, none); });
      choose("gate_up+silu", &c.gate_up, q8, [&](Product p, const TLayer& L) {
        (void)decode_product(p, x, L.gu_w, L.gu_q, none, true);
      });
      choose("down", &c.down, q8, [&](Product p, const TLayer& L) {
        (void)decode_product(p, xi, L.down_w, L.down_q, none);
      });
      choose("lm_head", &c.lm_head, false,
             [&](Product p, const TLayer&) { (void)decode_product(p, x, lm_head, {}, none); });
    }
    decode_products_ = c;
    return *decode_products_;
  }
  // What the captured decode step reads and advances in place; kept across generate_greedy calls
  // (re-made only when a call needs more cache rows), so later calls replay without a capture.
  struct DecodeState {
    bool graphed = false;
    StaticKvCache cache;       // cache.capacity: the rows kept
    at::Tensor cos, sin;       // rotary rows of text positions 0 .. capacity - 1, i.e. (p, p, p)
    at::Tensor tok, row, pos;  // [1] int64 on the device: next input token, its cache row, position
    ops::Varlen qv, kv;  // one query row; keys [0, row + 1) (kv.cu_dev[1] moves on the device)
    std::unique_ptr<device::Stream> stream;  // CUDA graphs: the stream they run on
    std::unique_ptr<device::Graph> graph;    // one decode step, captured at its first use
  };
  std::unique_ptr<DecodeState> decode;
  DecodeState& decode_state(int64_t rows, bool graphed) {
    if (decode && decode->cache.capacity >= rows && decode->graphed == graphed) return *decode;
    decode.reset();  // frees the old cache and graph first
    auto st = std::make_unique<DecodeState>();
    const Qwen25VLTextConfig& t = d.text;
    const int64_t cap = std::max<int64_t>(1024, (rows + 255) / 256 * 256);
    st->graphed = graphed;
    st->cache.capacity = cap;
    for (int i = 0; i < t.num_hidden_layers; ++i) {
      st->cache.k.push_back(at::zeros({cap, t.num_key_value_heads, t.head_dim()}, wopt()));
      st->cache.v.push_back(at::zeros({cap, t.num_key_value_heads, t.head_dim()}, wopt()));
    }
    auto pos = at::arange(cap, at::kLong);
    auto [c, s] = text_rope_tables(pos.unsqueeze(0).expand({3, -1}).contiguous(), t);
    st->cos = c.to(o.device);
    st->sin = s.to(o.device);
    const auto lopt = at::TensorOptions().dtype(at::kLong).device(o.device);
    st->tok = at::zeros({1}, lopt);
    st->row = at::zeros({1}, lopt);
    st->pos = at::zeros({1}, lopt);
    st->qv = ops::Varlen::make({0, 1}, o.device);
    st->kv = ops::Varlen::make({0, 1}, o.device);
    if (graphed) st->stream = std::make_unique<device::Stream>(o.device);
    decode = std::move(st);
    return *decode;
  }

  // ---------------------------------------------------------------- fp8
  // Quantises the qkv, gate|up and down weights (one e4m3 scale per output channel); bf16 copies
  // are kept for the decode loop of generate_greedy and stages under fp8_min_rows.
  // per_tensor (after calibrate_fp8): one scale per matrix, so that the GEMMs with static
  // activation scales run tensor-wise, and the attention output projections too: with a static
  // scale their input is quantised in the attention kernels' store (per token it would need a
  // pass of its own, which costs what the FP8 GEMM saves).
  void quantize_weights(bool per_tensor = false) {
    if (!o.fp8) return;
    at::NoGradGuard ng;
    decode.reset();  // its captured decode graph reads the old weights
    auto q = [&](const at::Tensor& w) {
      return per_tensor ? ops::quantize_fp8_tensor(w) : ops::quantize_fp8(w, fused());
    };
    for (VLayer& L : vl) {
      L.qkv_q = q(L.qkv_w);
      L.gu_q = q(L.gu_w);
      L.down_q = q(L.down_w);
      L.proj_q = per_tensor && fp8_out_proj(true) ? q(L.proj_w) : ops::Fp8Rows{};
    }
    for (TLayer& L : tl) {
      L.qkv_q = q(L.qkv_w);
      L.gu_q = q(L.gu_w);
      L.down_q = q(L.down_w);
      L.o_q = per_tensor && fp8_out_proj(false) ? q(L.o_w) : ops::Fp8Rows{};
    }
  }
  at::Tensor lin8(const ops::Fp8Rows& x, const ops::Fp8Rows& w, const at::Tensor& b = {}) const {
    return ops::linear_fp8(x, w, b, o.dtype, o.fp8_fast_accum);
  }
  // ---- static activation scales (Engine::calibrate_fp8). Each quantised activation is a site:
  // the inputs of qkv (0), gate|up (1), down (2) and the attention output projection (3) of vision
  // block i (4 i + k) and decoder layer i (4 (vision depth + i) + k).
  at::Tensor site_amax;  // float [sites] on the device: running max while calibrating
  // float [sites, 4]: amax / 448 once calibrated (else undefined), repeated so that each site's
  // scale starts 16 bytes after the last (cuBLASLt refuses tensor-wise scales at odd addresses).
  at::Tensor site_scale;
  std::vector<char> site_static;  // per site: calibrated (seen with amax > 0)
  bool calibrating = false;
  int64_t sites() const { return 4 * static_cast<int64_t>(vl.size() + tl.size()); }
  static int vsite(size_t layer, int k) { return static_cast<int>(4 * layer) + k; }
  int tsite(size_t layer, int k) const { return static_cast<int>(4 * (vl.size() + layer)) + k; }
  // The static scale of a site (float [1]), or undefined: quantise per token.
  at::Tensor fixed_scale(int site) const {
    if (!site_scale.defined() || !site_static[static_cast<size_t>(site)]) return {};
    return site_scale[site].narrow(0, 0, 1);
  }
  // While calibrating: the site's running amax takes in this activation's (row scales * 448).
  void record(int site, const ops::Fp8Rows& q) const {
    if (!calibrating) return;
    at::Tensor slot = site_amax.narrow(0, site, 1);
    slot.copy_(at::maximum(slot, q.scale.amax().mul(448.0).reshape({1})));
  }
  // Normalised activations of a block: bf16 (x) or e4m3 (q), per EngineOptions::fp8; quantised
  // with the site's static scale once calibrated, else per token.
  struct Act {
    at::Tensor x;
    ops::Fp8Rows q;
  };
  // Attention output [rows, heads * head_dim] for the output projection: bf16, or e4m3 with the
  // site's static scale (made by `quantised`, which quantises in the attention kernel's store);
  // while calibrating, the bf16 output's amax is recorded.
  Act attention_out(int site, bool quant, const std::function<at::Tensor()>& bf16,
                    const std::function<ops::Fp8Rows(const at::Tensor&)>& quantised) const {
    Act a;
    quant = quant && fp8_out_proj(site < 4 * static_cast<int>(vl.size()));
    const at::Tensor s = quant ? fixed_scale(site) : at::Tensor();
    if (s.defined()) {
      a.q = quantised(s);
      return a;
    }
    a.x = bf16();
    if (quant && calibrating) record(site, ops::quantize_fp8(a.x, fused()));
    return a;
  }
  Act norm(at::Tensor& h, const at::Tensor& w, double eps, bool quant, int site) const {
    Act a;
    if (quant) {
      a.q = ops::rms_norm_fp8(h, w, eps, fused(), fixed_scale(site));
      record(site, a.q);
    } else {
      a.x = ops::rms_norm(h, w, eps, fused());
    }
    return a;
  }
  Act add_norm(const at::Tensor& x, at::Tensor& h, const at::Tensor& w, double eps, bool quant,
               int site) const {
    Act a;
    if (quant) {
      a.q = ops::add_rms_norm_fp8(x, h, w, eps, fused(), fixed_scale(site));
      record(site, a.q);
    } else {
      a.x = ops::add_rms_norm(x, h, w, eps, fused());
    }
    return a;
  }
  // Projection of normalised activations: fp8 when they are quantised.
  at::Tensor proj(const Act& a, const at::Tensor& w, const ops::Fp8Rows& wq,
                  const at::Tensor& b = {}) const {
    return a.q.defined() ? lin8(a.q, wq, b) : ops::linear(a.x, w, b);
  }
  // A block's output projection (attention proj / o_proj, MLP down) and the residual add, then
  // the next norm: h += a @ w^T (+ b) in the GEMM's epilogue and the norm of h
  // (EngineOptions::residual_in_gemm, where that GEMM runs: bf16 or static FP8 on CUDA), else the
  // product and the fused add + norm.
  Act project_add_norm(const Act& a, const at::Tensor& w, const ops::Fp8Rows& wq,
                       const at::Tensor& b, at::Tensor& h, const at::Tensor& norm_w, double eps,
                       bool quant, int site, const char* norm_mark) const {
    const bool in_gemm =
        o.residual_in_gemm &&
        (a.q.defined() ? ops::linear_fp8_accumulate_fused(h, a.q, wq, b, fused(), o.fp8_fast_accum)
                       : ops::linear_accumulate_fused(h, a.x, w, b, fused()));
    if (in_gemm) {
      if (a.q.defined())
        ops::linear_fp8_accumulate_(h, a.q, wq, b, fused(), o.fp8_fast_accum);
      else
        ops::linear_accumulate_(h, a.x, w, b, fused());
      mark(norm_mark);
      return norm(h, norm_w, eps, quant, site);
    }
    const at::Tensor y = proj(a, w, wq, b);
    mark(norm_mark);
    return add_norm(y, h, norm_w, eps, quant, site);
  }
  // The MLP after its norm n (gate|up, SwiGLU, down into the residual stream h), then the next
  // norm (norm_w, quantised when next_quant, at next_site). With a chosen compiled variant (>= 0:
  // vswiglu / tswiglu, for the stage's precision: bf16 or static FP8) gate|up and SwiGLU run as
  // one kernel.
  struct MlpStage {
    const at::Tensor &gu_w, &gu_b, &down_w, &down_b;
    const ops::Fp8Rows &gu_q, &down_q;
    int64_t inter;
    int variant;
    const char *gate_up, *silu_mul, *down, *norm;  // profiler marks
  };
  Act mlp(const Act& n, const MlpStage& m, bool quant, int site, at::Tensor& h,
          const at::Tensor& norm_w, double eps, bool next_quant, int next_site) const {
    const at::Tensor out_scale = quant ? fixed_scale(site) : at::Tensor();
    Act act;
    mark(m.gate_up);
    if (m.variant >= 0 && out_scale.defined() && n.q.defined() && n.q.scale.numel() == 1 &&
        m.gu_q.tensorwise) {
      act.q = ops::linear_swiglu_fp8(n.q, m.gu_q, m.gu_b, m.inter, out_scale, m.variant);
    } else if (m.variant >= 0 && !quant && !n.q.defined() && n.x.scalar_type() == at::kBFloat16) {
      act.x = ops::linear_swiglu(n.x, m.gu_w, m.gu_b, m.inter, m.variant);
    } else {
      const at::Tensor gu = proj(n, m.gu_w, m.gu_q, m.gu_b);
      mark(m.silu_mul);
      if (quant) {
        act.q = ops::silu_mul_fp8(gu, m.inter, fused(), out_scale);
        record(site, act.q);
      } else {
        act.x = ops::silu_mul(gu, m.inter, fused());
      }
    }
    mark(m.down);
    return project_add_norm(act, m.down_w, m.down_q, m.down_b, h, norm_w, eps, next_quant,
                            next_site, m.norm);
  }

  // ---------------------------------------------------------------- vision
  // patches [N, patch_dim] in window order -> merged [N/4, out_hidden] in window order.
  at::Tensor vision_core(const at::Tensor& patches, const ops::Varlen& cu_window,
                         const ops::Varlen& cu_full, const at::Tensor& cos,
                         const at::Tensor& sin) const {
    const Qwen25VLVisionConfig& v = d.vision;
    const int H = v.num_heads, D = v.head_dim();
    const int64_t N = patches.size(0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    mark("v.patch_embed");
    at::Tensor h = ops::linear(patches, patch_w);  // residual stream
    mark("v.norm");
    const bool q8 = o.fp8 && N >= o.fp8_min_rows;
    Act n = norm(h, vl[0].n1, kVisionRmsNormEps, q8, vsite(0, 0));
    for (size_t i = 0; i < vl.size(); ++i) {
      const VLayer& L = vl[i];
      mark("v.qkv");
      at::Tensor qkv = proj(n, L.qkv_w, L.qkv_q, L.qkv_b);  // [N, 3*hidden]
      Act a;
      if (L.full) {
        mark("v.rotary");
        ops::rotary_(qkv, 2 * H, D, cos, sin, fused());
        auto q = qkv.narrow(1, 0, v.hidden_size).view({N, H, D});
        auto k = qkv.narrow(1, v.hidden_size, v.hidden_size).view({N, H, D});
        auto val = qkv.narrow(1, 2 * v.hidden_size, v.hidden_size).view({N, H, D});
        mark("v.attn_full");
        auto out = [&]() {
          return attend(q, k, val, cu_full, /*causal=*/false, scale, vfull_backend)
              .view({N, v.hidden_size});
        };
        a = attention_out(vsite(i, 3), q8, out, [&](const at::Tensor& s) {
          return ops::quantize_fp8(out(), fused(), s);
        });
      } else {
        mark("v.rotary_attn_window");  // rotary inside the window kernel (ops::window_attention)
        a = attention_out(
            vsite(i, 3), q8,
            [&]() {
              return ops::window_attention(qkv, H, D, cos, sin, cu_window, scale, fused(), flash);
            },
            [&](const at::Tensor& s) {
              return ops::window_attention_fp8(qkv, H, D, cos, sin, cu_window, scale, fused(),
                                               flash, s);
            });
      }
      mark("v.proj");
      n = project_add_norm(a, L.proj_w, L.proj_q, L.proj_b, h, L.n2, kVisionRmsNormEps, q8,
                           vsite(i, 1), "v.add_norm");
      const bool last = i + 1 == vl.size();
      const MlpStage m{L.gu_w, L.gu_b,  L.down_w,    L.down_b,     L.gu_q,   L.down_q,
                       vi_pad, vswiglu, "v.gate_up", "v.silu_mul", "v.down", "v.add_norm"};
      n = mlp(n, m, q8, vsite(i, 2), h, last ? m_ln : vl[i + 1].n1, kVisionRmsNormEps, q8 && !last,
              vsite(i + 1, 0));
    }
    mark("v.merger");
    const int mu = v.spatial_merge_size * v.spatial_merge_size;
    at::Tensor x = n.x.view({N / mu, v.hidden_size * mu});
    x = at::gelu(ops::linear(x, m0_w, m0_b));
    at::Tensor out = ops::linear(x, m2_w, m2_b);
    mark("end");
    return out;
  }

  // ---------------------------------------------------------------- text
  // h: [T, hidden] embeddings (consumed as the residual stream) -> final-normed hidden [T, hidden].
  // Throws vla::Error unless 0 (all) <= layers <= the model's decoder layers.
  void check_text_layers(int layers, const char* what) const {
    VLA_CHECK(layers >= 0 && layers <= d.text.num_hidden_layers, what, ": text_layers ", layers,
              " is outside 0 (all) .. ", d.text.num_hidden_layers, " (the model's decoder layers)");
  }
  // The first `layers` decoder layers (0 = all), then the final norm.
  at::Tensor text_core(at::Tensor h, const at::Tensor& cos, const at::Tensor& sin,
                       const ops::Varlen& seq, StaticKvCache* cache, int layers = 0) const {
    const size_t run = layers > 0 ? static_cast<size_t>(layers) : tl.size();
    const Qwen25VLTextConfig& t = d.text;
    const int H = t.num_attention_heads, Hk = t.num_key_value_heads, D = t.head_dim();
    const int64_t T = h.size(0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    mark("t.norm");
    const bool q8 = o.fp8 && T >= o.fp8_min_rows;
    Act n = norm(h, tl[0].in_n, t.rms_norm_eps, q8, tsite(0, 0));
    for (size_t i = 0; i < run; ++i) {
      const TLayer& L = tl[i];
      mark("t.qkv");
      at::Tensor qkv = proj(n, L.qkv_w, L.qkv_q, L.qkv_b);  // [T, (H + 2Hk) D]
      mark("t.rotary");
      ops::rotary_(qkv, H + Hk, D, cos, sin, fused());
      auto q = qkv.narrow(1, 0, H * D).view({T, H, D});
      auto k = qkv.narrow(1, H * D, Hk * D).view({T, Hk, D});
      auto val = qkv.narrow(1, (H + Hk) * D, Hk * D).view({T, Hk, D});
      if (cache) {
        cache->k[i].narrow(0, 0, T).copy_(k);
        cache->v[i].narrow(0, 0, T).copy_(val);
      }
      mark("t.attn");
      auto out = [&]() {
        return attend(q, k, val, seq, /*causal=*/true, scale, llm.backend).view({T, H * D});
      };
      const Act a = attention_out(tsite(i, 3), q8, out, [&](const at::Tensor& s) {
        if (llm.backend == ops::AttnBackend::kCausalTriton ||
            llm.backend == ops::AttnBackend::kCausalKernel)
          return ops::causal_attention_fp8(q, k, val, seq, scale, fused(), s, llm.variant);
        return ops::quantize_fp8(out(), fused(), s);
      });
      mark("t.o_proj");
      n = project_add_norm(a, L.o_w, L.o_q, {}, h, L.post_n, t.rms_norm_eps, q8, tsite(i, 1),
                           "t.add_norm");
      const bool last = i + 1 == run;
      const at::Tensor none;
      const MlpStage m{L.gu_w, none,    L.down_w,    none,         L.gu_q,   L.down_q,
                       ti_pad, tswiglu, "t.gate_up", "t.silu_mul", "t.down", "t.add_norm"};
      n = mlp(n, m, q8, tsite(i, 2), h, last ? final_norm : tl[i + 1].in_n, t.rms_norm_eps,
              q8 && !last, tsite(i + 1, 0));
    }
    mark("end");
    if (cache) cache->length = T;
    return n.x;
  }

  // One eager pass of a plan (on the current stream), marking the profiler's op kinds.
  void eager_pass(const Plan& p) const {
    mark("upload");
    p.dev_frames.copy_(p.host_frames, /*non_blocking=*/true);
    mark("preprocess");
    const at::Tensor patches = preprocess_plan(p);
    const at::Tensor vis = vision_core(patches, p.cu_window, p.cu_full, p.vcos, p.vsin);
    mark("t.embed");
    llm_plan(p, vis);
  }

  at::Tensor preprocess_plan(const Plan& p) const {
    return preprocess_device(p.dev_frames, p.rh, p.rw, p.tmp, p.fx, p.fy, p.patch_src, p.patch_hf,
                             o.dtype);
  }
  // The plan's decoder stage: embeddings, vision tokens scattered in, decoder -> features.
  at::Tensor llm_plan(const Plan& p, const at::Tensor& vis_out) const {
    at::Tensor h = embed.index_select(0, p.ids_dev);
    h.index_copy_(0, p.scatter_rows, vis_out);
    at::Tensor f = text_core(h, p.tcos, p.tsin, p.seq, nullptr, p.spec.text_layers);
    if (p.spec.layout == ViewLayout::kBatch)
      f = f.view({p.spec.views, static_cast<int64_t>(p.seq_ids.size()), d.text.hidden_size});
    return f;
  }

  // ---------------------------------------------------------------- preprocessing
  // uint8 frames [V, h, w, 3] on the device -> patch rows in window order [P, patch_dim]: the
  // processor's resize (the model definition's filter weights, vla::resize_filter), rescale and
  // normalise (vla::normalize_constants) and patch layout. CUDA: two kernels that gather the
  // patches straight into window order (patch_src); CPU: the reference pipeline
  // (vla::resize_bicubic, vla::pixel_values_from_uint8) then the window-order gather (patch_hf).
  at::Tensor preprocess_device(const at::Tensor& frames, int rh, int rw, const at::Tensor& tmp,
                               const DeviceFilter& fx, const DeviceFilter& fy,
                               const at::Tensor& patch_src, const at::Tensor& patch_hf,
                               at::ScalarType out_dtype) const {
    const Qwen25VLVisionConfig& v = d.vision;
    const int V = static_cast<int>(frames.size(0)), fh = static_cast<int>(frames.size(1)),
              fw = static_cast<int>(frames.size(2));
    if (frames.is_cuda()) {
      const NormalizeConstants nc = normalize_constants(pc);
      void* stream = device::current_stream(frames.device());
      const char* err =
          kernels::resize_h_u8(frames.data_ptr<uint8_t>(), tmp.data_ptr<uint8_t>(), V, fh, fw, rw,
                               fx.weights.data_ptr<int32_t>(), fx.bounds.data_ptr<int32_t>(),
                               fx.filter.ksize, fx.filter.precision, stream);
      VLA_CHECK(err == nullptr, "gpu preprocess (horizontal resize) failed: ", err);
      const int64_t P = patch_src.size(0);
      auto out = at::empty({P, patch_dim(v)}, frames.options().dtype(out_dtype));
      err = kernels::resize_v_patchify(
          tmp.data_ptr<uint8_t>(), out.data_ptr(), P, patch_src.data_ptr<int32_t>(), fh, rw,
          static_cast<int>(rh / v.patch_size), static_cast<int>(rw / v.patch_size),
          fy.weights.data_ptr<int32_t>(), fy.bounds.data_ptr<int32_t>(), fy.filter.ksize,
          fy.filter.precision, static_cast<int>(v.patch_size),
          static_cast<int>(v.temporal_patch_size), nc.shift.data(), nc.divisor.data(),
          out_dtype == at::kBFloat16 ? kernels::kBF16 : kernels::kF32, stream);
      VLA_CHECK(err == nullptr, "gpu preprocess (vertical resize + patchify) failed: ", err);
      return out;
    }
    auto fr = frames.contiguous();
    auto img = at::empty({V, rh, rw, 3}, at::kByte);
    for (int i = 0; i < V; ++i) {
      Image src = make_image(fw, fh, 3);
      std::memcpy(src.pixels.data(), fr[i].data_ptr<uint8_t>(), src.pixels.size());
      const Image r = resize_bicubic(src, rh, rw, pc.backend);
      std::memcpy(img[i].data_ptr<uint8_t>(), r.pixels.data(), r.pixels.size());
    }
    return pixel_values_from_uint8(img, pc).index_select(0, patch_hf).to(out_dtype);
  }
};

// ------------------------------------------------------------------ construction
Engine::Engine(const Qwen25VLConfig& config, const ImagePreprocessConfig& image_config,
               EngineOptions options)
    : impl_(std::make_unique<EngineImpl>()) {
  config.validate("gpu engine: config");
  image_config.validate();
  VLA_CHECK(image_config.do_resize && image_config.do_normalize,
            "gpu engine: the fast path fuses resize + normalise; this processor config turns one "
            "off (use --vlm-backend reference)");
  VLA_CHECK(image_config.patch_size == config.vision.patch_size &&
                image_config.merge_size == config.vision.spatial_merge_size &&
                image_config.temporal_patch_size == config.vision.temporal_patch_size,
            "gpu engine: processor patch/merge/temporal sizes (", image_config.patch_size, "/",
            image_config.merge_size, "/", image_config.temporal_patch_size,
            ") differ from the vision config's (", config.vision.patch_size, "/",
            config.vision.spatial_merge_size, "/", config.vision.temporal_patch_size, ")");
  impl_->d = config;
  impl_->pc = image_config;
  impl_->o = options;
  VLA_CHECK(!options.device.is_cuda() || cuda_available(),
            "gpu engine: CUDA device requested but this build/machine has no CUDA");
  VLA_CHECK(!options.fp8 || fp8_available(options.device),
            "gpu engine: fp8 requested but not available on ", options.device.str(),
            " (needs torch >= 2.1 and, on CUDA, compute capability >= 8.9)");
}

Engine::~Engine() = default;

WeightFn checkpoint_weights(const WeightStore& store) {
  return [store](const std::string& name, const std::vector<int64_t>&) {
    return store.has(name) ? store.get(name) : at::Tensor();
  };
}

namespace {
// Zero-pads dimension `dim` of t to `size` (zero rows/columns leave the MLP's result unchanged:
// silu(0) * 0 = 0 and zero down-projection columns).
at::Tensor pad_dim(const at::Tensor& t, int64_t dim, int64_t size) {
  if (t.size(dim) == size) return t;
  auto shape = t.sizes().vec();
  shape[dim] = size;
  auto out = at::zeros(shape, t.options());
  out.narrow(dim, 0, t.size(dim)).copy_(t);
  return out;
}

at::Tensor fetch(const WeightFn& fn, const std::string& name, const std::vector<int64_t>& shape) {
  const std::vector<std::string> tried = checkpoint_name_candidates(name);
  at::Tensor t;
  for (size_t i = 0; i < tried.size() && !t.defined(); ++i) t = fn(tried[i], shape);
  if (!t.defined()) {
    std::string all;
    for (const auto& s : tried) all += (all.empty() ? "" : ", ") + s;
    VLA_CHECK(false, "gpu engine: missing tensor ", name, " (tried ", all, ")");
  }
  VLA_CHECK(t.sizes().vec() == shape, "gpu engine: tensor ", name, ": checkpoint has ", t.sizes(),
            ", model expects ", at::IntArrayRef(shape));
  return t;
}
}  // namespace

Engine::Engine(const Qwen25VLConfig& config, const ImagePreprocessConfig& image_config,
               const WeightFn& wf, EngineOptions options)
    : Engine(config, image_config, options) {
  EngineImpl& E = *impl_;
  const Qwen25VLVisionConfig& v = config.vision;
  const Qwen25VLTextConfig& t = config.text;
  auto W = [&](const std::string& name, std::vector<int64_t> shape) {
    return fetch(wf, name, shape).to(E.wopt()).contiguous();
  };
  auto cat0 = [&](std::vector<at::Tensor> parts) { return at::cat(parts, 0).contiguous(); };
  E.vi_pad = ops::mlp_width(v.intermediate_size);
  E.ti_pad = ops::mlp_width(t.intermediate_size);
  const int64_t vh = v.hidden_size, vi = v.intermediate_size, vip = E.vi_pad, tip = E.ti_pad;
  E.patch_w = W("visual.patch_embed.proj.weight",
                {vh, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size})
                  .view({vh, patch_dim(v)});
  for (int i = 0; i < v.depth; ++i) {
    const std::string p = "visual.blocks." + std::to_string(i) + ".";
    VLayer L;
    L.n1 = W(p + "norm1.weight", {vh});
    L.n2 = W(p + "norm2.weight", {vh});
    L.qkv_w = W(p + "attn.qkv.weight", {3 * vh, vh});
    L.qkv_b = W(p + "attn.qkv.bias", {3 * vh});
    L.proj_w = W(p + "attn.proj.weight", {vh, vh});
    L.proj_b = W(p + "attn.proj.bias", {vh});
    L.gu_w = cat0({pad_dim(W(p + "mlp.gate_proj.weight", {vi, vh}), 0, vip),
                   pad_dim(W(p + "mlp.up_proj.weight", {vi, vh}), 0, vip)});
    L.gu_b = cat0({pad_dim(W(p + "mlp.gate_proj.bias", {vi}), 0, vip),
                   pad_dim(W(p + "mlp.up_proj.bias", {vi}), 0, vip)});
    L.down_w = pad_dim(W(p + "mlp.down_proj.weight", {vh, vi}), 1, vip);
    L.down_b = W(p + "mlp.down_proj.bias", {vh});
    L.full = std::find(v.fullatt_block_indexes.begin(), v.fullatt_block_indexes.end(), i) !=
             v.fullatt_block_indexes.end();
    E.vl.push_back(std::move(L));
  }
  const int64_t mh = vh * v.spatial_merge_size * v.spatial_merge_size;
  E.m_ln = W("visual.merger.ln_q.weight", {vh});
  E.m0_w = W("visual.merger.mlp.0.weight", {mh, mh});
  E.m0_b = W("visual.merger.mlp.0.bias", {mh});
  E.m2_w = W("visual.merger.mlp.2.weight", {v.out_hidden_size, mh});
  E.m2_b = W("visual.merger.mlp.2.bias", {v.out_hidden_size});
  const int64_t th = t.hidden_size, D = t.head_dim(), qd = t.num_attention_heads * D,
                kd = t.num_key_value_heads * D;
  VLA_CHECK(v.out_hidden_size == th, "gpu engine: vision out_hidden_size ", v.out_hidden_size,
            " != text hidden_size ", th);
  E.embed = W("model.embed_tokens.weight", {t.vocab_size, th});
  E.final_norm = W("model.norm.weight", {th});
  for (int i = 0; i < t.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    TLayer L;
    L.in_n = W(p + "input_layernorm.weight", {th});
    L.post_n = W(p + "post_attention_layernorm.weight", {th});
    L.qkv_w = cat0({W(p + "self_attn.q_proj.weight", {qd, th}),
                    W(p + "self_attn.k_proj.weight", {kd, th}),
                    W(p + "self_attn.v_proj.weight", {kd, th})});
    L.qkv_b = cat0({W(p + "self_attn.q_proj.bias", {qd}), W(p + "self_attn.k_proj.bias", {kd}),
                    W(p + "self_attn.v_proj.bias", {kd})});
    L.o_w = W(p + "self_attn.o_proj.weight", {th, qd});
    L.gu_w = cat0({pad_dim(W(p + "mlp.gate_proj.weight", {t.intermediate_size, th}), 0, tip),
                   pad_dim(W(p + "mlp.up_proj.weight", {t.intermediate_size, th}), 0, tip)});
    L.down_w = pad_dim(W(p + "mlp.down_proj.weight", {th, t.intermediate_size}), 1, tip);
    E.tl.push_back(std::move(L));
  }
  E.lm_head = t.tie_word_embeddings ? E.embed : W("lm_head.weight", {t.vocab_size, th});
  E.flash = ops::flash_available(E.patch_w.new_empty({1, 1, v.head_dim()})) &&
            ops::flash_available(E.patch_w.new_empty({1, 1, t.head_dim()}));
  E.quantize_weights();
}

std::unique_ptr<Engine> Engine::from_pretrained(const std::string& dir, EngineOptions options) {
  const WeightStore store = WeightStore::open(dir);
  return std::make_unique<Engine>(Qwen25VLConfig::load(dir),
                                  ImagePreprocessConfig::from_folder(dir),
                                  checkpoint_weights(store), options);
}

std::unique_ptr<Engine> Engine::random(const Qwen25VLConfig& config,
                                       const ImagePreprocessConfig& image_config,
                                       EngineOptions options, uint64_t seed) {
  at::manual_seed(seed);
  device::manual_seed_all(seed);
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(options.device);
  // Values are rounded to bf16 whatever the dtype, so that engines of different dtypes (or with
  // fp8) built from the same seed hold the same model. Norm weights are 1 + N(0, 0.05).
  WeightFn random_weights = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const bool norm = shape.size() == 1 && (name.find("norm") != std::string::npos ||
                                            name.find("ln_q") != std::string::npos);
    at::Tensor r = at::randn(shape, opts) * (norm ? 0.05 : 0.02);
    if (norm) r += 1.0;
    return r.to(at::kBFloat16).to(at::kFloat);
  };
  return std::make_unique<Engine>(config, image_config, random_weights, options);
}

const Qwen25VLConfig& Engine::config() const { return impl_->d; }
const ImagePreprocessConfig& Engine::image_config() const { return impl_->pc; }
const EngineOptions& Engine::options() const { return impl_->o; }
void Engine::set_cuda_graphs(bool on) { impl_->o.cuda_graphs = on; }
void Engine::set_residual_in_gemm(bool on) { impl_->o.residual_in_gemm = on; }
void Engine::set_swiglu_in_gemm(bool on) { impl_->o.swiglu_in_gemm = on; }
void Engine::set_fp8_fast_accum(bool on) { impl_->o.fp8_fast_accum = on; }
void Engine::set_fp8_output_projections(EngineOptions::Fp8OutputProjections which) {
  impl_->o.fp8_output_projections = which;
}
void Engine::set_fp8_min_rows(int64_t rows) { impl_->o.fp8_min_rows = rows; }
std::string Engine::attention_backend() const {
  std::string s = impl_->flash ? "flash-varlen" : "math";
  if (!impl_->tune_report.empty()) s += " | " + impl_->tune_report;
  return s;
}

// ------------------------------------------------------------------ reference-shaped API
std::pair<at::Tensor, at::Tensor> Engine::preprocess(const std::vector<const uint8_t*>& frames,
                                                     int height, int width) {
  EngineImpl& E = *impl_;
  const Qwen25VLVisionConfig& v = E.d.vision;
  VLA_CHECK(!frames.empty(), "preprocess: no frames");
  const int factor = static_cast<int>(E.pc.factor());
  auto [rh, rw] = smart_resize(height, width, factor, E.pc.min_pixels, E.pc.max_pixels);
  const int V = static_cast<int>(frames.size());
  auto host = at::empty({V, height, width, 3}, at::kByte);
  for (int i = 0; i < V; ++i) {
    VLA_CHECK(frames[i] != nullptr, "preprocess: frame ", i, " is null");
    std::memcpy(host[i].data_ptr<uint8_t>(), frames[i], static_cast<size_t>(height) * width * 3);
  }
  const int64_t gh = rh / v.patch_size, gw = rw / v.patch_size, m = v.spatial_merge_size;
  // HF patch order: units (m x m blocks) in raster order, patches inside a unit in raster order.
  std::vector<int32_t> src;
  for (int64_t img = 0; img < V; ++img)
    for (int64_t bh = 0; bh < gh / m; ++bh)
      for (int64_t bw = 0; bw < gw / m; ++bw)
        for (int64_t k = 0; k < m * m; ++k)
          src.push_back(static_cast<int32_t>((img * gh + bh * m + k / m) * gw + bw * m + k % m));
  const auto dev = E.o.device;
  auto frames_dev = host.to(dev);
  auto tmp = at::empty({V, height, rw, 3}, frames_dev.options());
  auto identity = at::arange(static_cast<int64_t>(src.size()), at::kLong);
  auto pv =
      E.preprocess_device(frames_dev, rh, rw, tmp, device_filter(width, rw, E.pc.backend, dev),
                          device_filter(height, rh, E.pc.backend, dev),
                          at::tensor(src, at::kInt).to(dev), identity, at::kFloat);
  auto grid = at::tensor(std::vector<int64_t>{1, gh, gw}, at::kLong).view({1, 3}).repeat({V, 1});
  return {pv, grid};
}

namespace {
std::vector<std::array<int64_t, 3>> grids_of(const at::Tensor& grid_thw) {
  std::vector<std::array<int64_t, 3>> g;
  if (!grid_thw.defined()) return g;
  VLA_CHECK(grid_thw.dim() == 2 && grid_thw.size(1) == 3, "grid_thw must be [n, 3], got ",
            grid_thw.sizes());
  auto c = grid_thw.to(at::kLong).cpu().contiguous();
  for (int64_t i = 0; i < c.size(0); ++i) {
    g.push_back({c[i][0].item<int64_t>(), c[i][1].item<int64_t>(), c[i][2].item<int64_t>()});
  }
  return g;
}
}  // namespace

at::Tensor Engine::vision_forward(const at::Tensor& pixel_values, const at::Tensor& grid_thw) {
  EngineImpl& E = *impl_;
  at::NoGradGuard ng;
  const auto grids = grids_of(grid_thw);
  VisionGather L = build_vision_layout(grids, E.d.vision);
  VLA_CHECK(pixel_values.dim() == 2 && pixel_values.size(0) == L.patches &&
                pixel_values.size(1) == patch_dim(E.d.vision),
            "vision_forward: pixel_values ", pixel_values.sizes(), " do not match grid_thw (",
            L.patches, " patches of ", patch_dim(E.d.vision), ")");
  auto dev = E.o.device;
  auto perm = at::tensor(L.patch_hf, at::kLong).to(dev);
  auto x = pixel_values.to(E.wopt()).index_select(0, perm);
  auto cw = ops::Varlen::make(L.cu_window, dev);
  auto cf = ops::Varlen::make(L.cu_full, dev);
  auto out = E.vision_core(x, cw, cf, L.cos.to(dev), L.sin.to(dev));
  // back to HF merged order
  auto res = at::empty_like(out);
  res.index_copy_(0, at::tensor(L.unit_hf, at::kLong).to(dev), out);
  return res;
}

at::Tensor Engine::forward(const std::vector<int64_t>& input_ids, const at::Tensor& pixel_values,
                           const at::Tensor& grid_thw, int text_layers) {
  EngineImpl& E = *impl_;
  at::NoGradGuard ng;
  E.check_text_layers(text_layers, "forward");
  const auto grids = grids_of(grid_thw);
  TokenLayout T = build_tokens({input_ids}, {grids}, E.d);
  auto dev = E.o.device;
  auto ids = at::tensor(T.ids, at::kLong).to(dev);
  VLA_CHECK(at::all(ids.ge(0)).item<bool>() && at::all(ids.lt(E.d.text.vocab_size)).item<bool>(),
            "forward: token id out of range [0, ", E.d.text.vocab_size, ")");
  at::Tensor h = E.embed.index_select(0, ids);
  if (!grids.empty()) {
    at::Tensor img = vision_forward(pixel_values, grid_thw);
    VLA_CHECK(img.size(0) == static_cast<int64_t>(T.img_rows.size()),
              "forward: ", T.img_rows.size(), " image tokens in the prompt but the images give ",
              img.size(0));
    h.index_copy_(0, at::tensor(T.img_rows, at::kLong).to(dev), img.to(h.scalar_type()));
  }
  auto [c, s] = text_rope_tables(T.pos3, E.d.text);
  auto seq = ops::Varlen::make(T.cu, dev);
  return E.text_core(h, c.to(dev), s.to(dev), seq, nullptr, text_layers);
}

at::Tensor Engine::logits(const at::Tensor& hidden) {
  at::NoGradGuard ng;
  return ops::linear(hidden.to(impl_->o.dtype), impl_->lm_head).to(at::kFloat);
}

std::vector<int64_t> Engine::generate_greedy(const std::vector<int64_t>& input_ids,
                                             const at::Tensor& pixel_values,
                                             const at::Tensor& grid_thw, int max_new_tokens,
                                             const std::vector<int64_t>& stop_ids,
                                             double* decode_ms) {
  EngineImpl& E = *impl_;
  at::NoGradGuard ng;
  const Qwen25VLTextConfig& t = E.d.text;
  const auto grids = grids_of(grid_thw);
  TokenLayout T = build_tokens({input_ids}, {grids}, E.d);
  auto dev = E.o.device;
  const int64_t S = static_cast<int64_t>(T.ids.size());
  // CUDA with flash attention: the decode step runs as one graph (the math attention path sizes
  // its work on the host, so it stays eager), captured once and replayed by later calls too.
  const bool graph = dev.is_cuda() && E.flash && E.o.cuda_graphs;
  EngineImpl::DecodeState& st = E.decode_state(S + max_new_tokens + 1, graph);
  const EngineImpl::DecodeProducts& use = E.decode_products();
  std::unique_ptr<device::StreamScope> scope;  // everything runs on the graph's stream
  if (st.stream) scope = std::make_unique<device::StreamScope>(*st.stream);
  StaticKvCache& cache = st.cache;
  auto ids = at::tensor(T.ids, at::kLong).to(dev);
  at::Tensor h = E.embed.index_select(0, ids);
  if (!grids.empty()) {
    at::Tensor img = vision_forward(pixel_values, grid_thw);
    h.index_copy_(0, at::tensor(T.img_rows, at::kLong).to(dev), img.to(h.scalar_type()));
  }
  auto [c, s] = text_rope_tables(T.pos3, t);
  auto seq = ops::Varlen::make(T.cu, dev);
  at::Tensor hid = E.text_core(h, c.to(dev), s.to(dev), seq, &cache);
  // The step's inputs live on the device and each step advances them in place (next token, cache
  // row, key length, position), so one captured graph replays every step; the host reads the
  // token back for the stop check only. Text positions after the prompt are (p, p, p): the state's
  // rotary rows are tabulated by position.
  st.tok.copy_(at::argmax(ops::linear(hid.narrow(0, S - 1, 1), E.lm_head), -1).view({1}));
  st.row.fill_(S);
  st.pos.fill_(T.next_pos[0]);
  st.kv.cu_dev.narrow(0, 1, 1).fill_(S + 1);
  const int H = t.num_attention_heads, Hk = t.num_key_value_heads, D = t.head_dim();
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  int64_t L = S;  // host copy of the cache length (the math attention path reads it)
  // Each product runs the way that measured fastest for its matrix on this GPU
  // (EngineImpl::decode_products).
  auto decode_step = [&]() {
    at::Tensor x = E.embed.index_select(0, st.tok);
    at::Tensor cc = st.cos.index_select(0, st.pos), ss = st.sin.index_select(0, st.pos);
    at::Tensor n = ops::rms_norm(x, E.tl[0].in_n, t.rms_norm_eps, E.fused());
    for (size_t i = 0; i < E.tl.size(); ++i) {
      const TLayer& Ly = E.tl[i];
      at::Tensor qkv = E.decode_product(use.qkv, n, Ly.qkv_w, Ly.qkv_q, Ly.qkv_b);
      // Rotary on q and k, and the new key / value row into the cache, in one kernel.
      ops::rotary_append_kv_(qkv, H, Hk, D, cc, ss, cache.k[i], cache.v[i], st.row, E.fused());
      auto q = qkv.narrow(1, 0, H * D).view({1, H, D});
      at::Tensor a =
          E.flash
              ? ops::attention(q, cache.k[i], cache.v[i], st.qv, st.kv, /*causal=*/false, scale,
                               true, cache.capacity)
              : ops::attention(q, cache.k[i].narrow(0, 0, L + 1), cache.v[i].narrow(0, 0, L + 1),
                               st.qv, ops::Varlen::make({0, L + 1}, dev), false, scale, false);
      at::Tensor o_ = E.decode_product(use.o_proj, a.view({1, H * D}), Ly.o_w, {}, {});
      n = ops::add_rms_norm(o_, x, Ly.post_n, t.rms_norm_eps, E.fused());
      at::Tensor act = E.decode_product(use.gate_up, n, Ly.gu_w, Ly.gu_q, {}, /*gate=*/true);
      at::Tensor dn = E.decode_product(use.down, act, Ly.down_w, Ly.down_q, {});
      const at::Tensor& nw = (i + 1 < E.tl.size()) ? E.tl[i + 1].in_n : E.final_norm;
      n = ops::add_rms_norm(dn, x, nw, t.rms_norm_eps, E.fused());
    }
    st.tok.copy_(at::argmax(E.decode_product(use.lm_head, n, E.lm_head, {}, {}), -1).view({1}));
    st.row.add_(1);
    st.pos.add_(1);
    st.kv.cu_dev.narrow(0, 1, 1).add_(1);
  };
  std::vector<int64_t> out;
  Stopwatch sw;
  for (int step = 0; step < max_new_tokens; ++step) {
    const int64_t next = st.tok.item<int64_t>();
    out.push_back(next);
    if (std::find(stop_ids.begin(), stop_ids.end(), next) != stop_ids.end()) break;
    if (step + 1 == max_new_tokens) break;
    if (step == 0) sw.reset();
    if (st.graph) {
      st.graph->replay();
    } else {
      decode_step();  // eager (the first CUDA step also warms up kernels before the capture)
      if (graph) {
        st.graph = std::make_unique<device::Graph>();
        st.graph->capture_begin();
        decode_step();  // recorded, not run
        st.graph->capture_end();
      }
    }
    ++L;
  }
  if (decode_ms) *decode_ms = sw.elapsed_ms();
  if (st.stream) st.stream->synchronize();
  return out;
}

std::string Engine::decode_report() {
  impl_->decode_products();
  return impl_->decode_report;
}

// ------------------------------------------------------------------ plans
namespace {
double matmul_flops(int64_t m, int64_t k, int64_t n) { return 2.0 * m * k * n; }
}  // namespace

namespace {
// |a - b| / |b| in float32 on the tensors' device (|b| floored at 1e-30): the tuners' check that
// a candidate computes what the reference does.
double rel_err_f32(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kFloat), y = b.to(at::kFloat);
  return (x - y).norm().item<double>() / std::max(y.norm().item<double>(), 1e-30);
}

// Times the attention backends on the plan's real shapes (in a CUDA graph, as the plan runs) and
// returns the fastest one whose output matches flash-varlen (rel. err <= 2e-2); reports every
// candidate. Causal: the CUDA kernel and every compiled variant of the Triton kernel compete too.
AttnChoice tune(const ops::Varlen& cu, int64_t H, int64_t Hk, int64_t D, bool causal,
                const at::TensorOptions& opt, const char* what, std::string& report) {
  const int64_t T = cu.total();
  auto buf = at::randn({T, (H + 2 * Hk) * D}, opt);
  auto q = buf.narrow(1, 0, H * D).view({T, H, D});
  auto k = buf.narrow(1, H * D, Hk * D).view({T, Hk, D});
  auto v = buf.narrow(1, (H + Hk) * D, Hk * D).view({T, Hk, D});
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t b = EngineImpl::uniform_count(cu);
  auto ref = ops::attention(q, k, v, cu, cu, causal, scale, true);
  std::vector<AttnChoice> cands = {{ops::AttnBackend::kFlashVarlen}};
  if (b > 0) cands.insert(cands.end(), {{ops::AttnBackend::kSdpa}, {ops::AttnBackend::kCudnn}});
  if (causal && ops::causal_attention_available(q))
    cands.push_back({ops::AttnBackend::kCausalKernel});
  for (int i = 0; causal && i < ops::causal_attention_triton_variants(q); ++i)
    cands.push_back({ops::AttnBackend::kCausalTriton, i});
  AttnChoice best;
  double best_ms = 1e30;
  report += std::string(what) + ":";
  for (const AttnChoice& cand : cands) {
    const std::string name = cand.name();
    try {
      auto run = [&]() {
        switch (cand.backend) {
          case ops::AttnBackend::kFlashVarlen:
            return ops::attention(q, k, v, cu, cu, causal, scale, true);
          case ops::AttnBackend::kCausalKernel:
          case ops::AttnBackend::kCausalTriton:
            return ops::causal_attention(q, k, v, cu, scale, true, cand.variant);
          default:
            return ops::attention_dense(q, k, v, b, causal, scale, cand.backend);
        }
      };
      const double err = rel_err_f32(run(), ref);
      // GPU time as the plan's graph will run it (host dispatch excluded), best of 5 replays.
      const double ms = device::gpu_time_ms([&]() { run(); }, q.device(), 10, 5);
      report += str_cat(" ", name, " ", fmt_double(ms, 3), " ms (err ", fmt_double(err, 4), ")");
      if (err <= 2e-2 && ms < best_ms) {
        best_ms = ms;
        best = cand;
      }
    } catch (const std::exception& e) {
      report += str_cat(" ", name, " unavailable");
      device::clear_error();
    }
  }
  report += str_cat(" -> ", best.name(), "; ");
  return best;
}

// Times the ways to run an MLP's gate|up GEMM + SwiGLU at a plan's row count (random activations,
// the stage's first gate|up weights and bias, in a CUDA graph as the plan runs): the product + the
// SwiGLU kernel (-1) and every compiled variant of the fused kernel (ops::linear_swiglu, or with
// gu_q defined ops::linear_swiglu_fp8 on static scales) whose output matches it (rel. err <=
// 2e-2). Returns the fastest and reports every candidate.
int tune_swiglu(int64_t rows, const at::Tensor& gu_w, const ops::Fp8Rows& gu_q,
                const at::Tensor& gu_b, int64_t inter, at::ScalarType dtype, bool fast_accum,
                bool fused, const char* what, std::string& report) {
  const bool fp8 = gu_q.defined();
  const int64_t K = gu_w.size(1);
  const at::Device dev = gu_w.device();
  const at::Tensor x = at::randn({rows, K}, at::TensorOptions().dtype(at::kFloat).device(dev));
  const at::Tensor xb = fp8 ? at::Tensor() : x.to(dtype);  // the bf16 way's input
  ops::Fp8Rows x8;
  at::Tensor out_scale;
  if (fp8) {
    x8 = ops::quantize_fp8(x, fused, (x.abs().amax() / 448.0).reshape({1}));
    const at::Tensor y = ops::linear_fp8(x8, gu_q, gu_b, at::kFloat, fast_accum);
    out_scale = ((at::silu(y.narrow(1, 0, inter)) * y.narrow(1, inter, inter)).abs().amax() / 448.0)
                    .clamp_min(1e-12)
                    .reshape({1});
  }
  // Each way as the plan runs it (timed), and its output as float (compared).
  auto unfused = [&]() {
    return fp8 ? ops::silu_mul_fp8(ops::linear_fp8(x8, gu_q, gu_b, dtype, fast_accum), inter, fused,
                                   out_scale)
                     .q
               : ops::silu_mul(ops::linear(xb, gu_w, gu_b), inter, fused);
  };
  auto fused_run = [&](int v) {
    return fp8 ? ops::linear_swiglu_fp8(x8, gu_q, gu_b, inter, out_scale, v).q
               : ops::linear_swiglu(xb, gu_w, gu_b, inter, v);
  };
  auto as_float = [&](const at::Tensor& y) {
    return fp8 ? ops::dequantize_fp8(ops::Fp8Rows{y, out_scale}) : y;
  };
  const at::Tensor ref = as_float(unfused());
  int best = -1;
  double best_ms = device::gpu_time_ms([&]() { unfused(); }, dev, 10, 5);
  report += str_cat(what, ": cuBLAS + SwiGLU kernel ", fmt_double(best_ms, 4), " ms");
  for (int v = 0; v < ops::linear_swiglu_variants(gu_w, fp8); ++v) {
    if (!kernels::gemm_swiglu_fits(fp8, v, inter, K)) continue;  // its tiles do not divide it
    const char* name = kernels::gemm_swiglu_variant_name(fp8, v);
    try {
      const double err = rel_err_f32(as_float(fused_run(v)), ref);
      const double ms = device::gpu_time_ms([&]() { fused_run(v); }, dev, 10, 5);
      report += str_cat(", ", name, " ", fmt_double(ms, 4), " ms (err ", fmt_double(err, 4), ")");
      if (err <= 2e-2 && ms < best_ms) {
        best_ms = ms;
        best = v;
      }
    } catch (const std::exception& e) {
      report += str_cat(", ", name, " failed (", e.what(), ")");
      device::clear_error();
    }
  }
  report += str_cat(" -> ",
                    best < 0 ? std::string("cuBLAS + SwiGLU kernel")
                             : std::string("fused ") + kernels::gemm_swiglu_variant_name(fp8, best),
                    "; ");
  return best;
}
}  // namespace

void Engine::prepare(const PlanSpec& spec) {
  EngineImpl& E = *impl_;
  at::NoGradGuard ng;
  const Qwen25VLVisionConfig& v = E.d.vision;
  const Qwen25VLTextConfig& t = E.d.text;
  VLA_CHECK(spec.views >= 1, "prepare: views must be >= 1");
  VLA_CHECK(spec.height > 0 && spec.width > 0, "prepare: bad frame size ", spec.width, "x",
            spec.height);
  E.check_text_layers(spec.text_layers, "prepare");
  auto P = std::make_unique<Plan>();
  P->spec = spec;
  const int factor = v.patch_size * v.spatial_merge_size;
  std::tie(P->rh, P->rw) =
      smart_resize(spec.height, spec.width, factor, E.pc.min_pixels, E.pc.max_pixels);
  P->gh = P->rh / v.patch_size;
  P->gw = P->rw / v.patch_size;
  const int V = spec.views;
  std::vector<std::array<int64_t, 3>> grids(V, {1, P->gh, P->gw});
  P->vis = build_vision_layout(grids, v);
  const int64_t per_view_tokens =
      static_cast<int64_t>(P->gh / v.spatial_merge_size) * (P->gw / v.spatial_merge_size);
  auto dev = E.o.device;
  // tokens
  if (spec.layout == ViewLayout::kOneSequence) {
    P->seq_ids = expand_prompt(spec.prompt_ids, E.d.image_token_id,
                               std::vector<int64_t>(V, per_view_tokens));
    P->tok = build_tokens({P->seq_ids}, {grids}, E.d);
  } else {
    P->seq_ids = expand_prompt(spec.prompt_ids, E.d.image_token_id, {per_view_tokens});
    std::vector<std::vector<int64_t>> seqs(V, P->seq_ids);
    std::vector<std::vector<std::array<int64_t, 3>>> sg(V, {{1, P->gh, P->gw}});
    P->tok = build_tokens(seqs, sg, E.d);
  }
  // rows of the window-ordered merged vision outputs in the packed token sequence
  std::vector<int64_t> rows(P->vis.unit_hf.size());
  for (size_t j = 0; j < rows.size(); ++j) rows[j] = P->tok.img_rows[P->vis.unit_hf[j]];
  P->scatter_rows = at::tensor(rows, at::kLong).to(dev);
  P->ids_dev = at::tensor(P->tok.ids, at::kLong).to(dev);
  P->cu_window = ops::Varlen::make(P->vis.cu_window, dev);
  P->cu_full = ops::Varlen::make(P->vis.cu_full, dev);
  P->seq = ops::Varlen::make(P->tok.cu, dev);
  // The window kernel reads the first half of each vision rotary row (kernels::window_attention).
  const int64_t half = P->vis.cos.size(1) / 2;
  for (const at::Tensor& tab : {P->vis.cos, P->vis.sin})
    VLA_CHECK(at::equal(tab.narrow(1, 0, half), tab.narrow(1, half, half)),
              "prepare: the vision rotary table's halves differ");
  P->vcos = P->vis.cos.to(dev);
  P->vsin = P->vis.sin.to(dev);
  auto [tc, ts] = text_rope_tables(P->tok.pos3, t);
  P->tcos = tc.to(dev);
  P->tsin = ts.to(dev);
  // preprocessing buffers
  auto u8 = at::TensorOptions().dtype(at::kByte);
  P->host_frames = at::empty({V, spec.height, spec.width, 3}, u8.pinned_memory(dev.is_cuda()));
  std::memset(P->host_frames.data_ptr(), 0, static_cast<size_t>(P->host_frames.numel()));
  P->dev_frames = at::zeros({V, spec.height, spec.width, 3}, u8.device(dev));
  P->tmp = at::empty({V, spec.height, P->rw, 3}, u8.device(dev));
  P->fx = device_filter(spec.width, P->rw, E.pc.backend, dev);
  P->fy = device_filter(spec.height, P->rh, E.pc.backend, dev);
  P->patch_src = at::tensor(P->vis.patch_src, at::kInt).to(dev);
  P->patch_hf = at::tensor(P->vis.patch_hf, at::kLong).to(dev);
  // The plan's GEMMs (as the engine runs them: padded MLP widths, FP8 where EngineOptions says) and
  // FLOPs (2 x MACs): matrix products + attention (QK^T and PV), causal attention counted half.
  {
    const int64_t N = P->vis.patches, vh = v.hidden_size,
                  merge = v.spatial_merge_size * v.spatial_merge_size;
    const int64_t mh = vh * merge, T = static_cast<int64_t>(P->tok.ids.size());
    const int64_t th = t.hidden_size, D = t.head_dim();
    const int run = spec.text_layers > 0 ? spec.text_layers : t.num_hidden_layers;
    const bool v8 = E.o.fp8 && N >= E.o.fp8_min_rows, t8 = E.o.fp8 && T >= E.o.fp8_min_rows;
    auto& G = P->gemms;
    G.push_back({N, patch_dim(v), vh, 1, false, "vision patch embed"});
    G.push_back({N, vh, 3 * vh, v.depth, v8, "vision qkv"});
    // The attention output projections run in FP8 only with the option on and static scales
    // calibrated with it on (attention_out: a site-3 scale exists), as the forward decides.
    auto out_proj_fp8 = [&E](bool vision, int site) {
      return E.fp8_out_proj(vision) && E.fixed_scale(site).defined();
    };
    const bool vst = !E.vl.empty() && out_proj_fp8(true, EngineImpl::vsite(0, 3));
    const bool tst = !E.tl.empty() && out_proj_fp8(false, E.tsite(0, 3));
    G.push_back({N, vh, vh, v.depth, v8 && vst, "vision proj"});
    G.push_back({N, vh, 2 * E.vi_pad, v.depth, v8, "vision gate|up"});
    G.push_back({N, E.vi_pad, vh, v.depth, v8, "vision down"});
    G.push_back({N / merge, mh, mh, 1, false, "merger fc1"});
    G.push_back({N / merge, mh, v.out_hidden_size, 1, false, "merger fc2"});
    const size_t vision_gemms = G.size();
    G.push_back(
        {T, th, (t.num_attention_heads + 2 * t.num_key_value_heads) * D, run, t8, "decoder qkv"});
    G.push_back({T, t.num_attention_heads * D, th, run, t8 && tst, "decoder o_proj"});
    G.push_back({T, th, 2 * E.ti_pad, run, t8, "decoder gate|up"});
    G.push_back({T, E.ti_pad, th, run, t8, "decoder down"});
    for (PlanGemm& pg : G) pg.tensorwise = pg.fp8 && E.site_scale.defined();
    double f = 0, g = 0;
    for (size_t i = 0; i < G.size(); ++i)
      (i < vision_gemms ? f : g) += matmul_flops(G[i].m, G[i].k, G[i].n) * G[i].count;
    for (int i = 0; i < v.depth; ++i) {
      const auto& cu = E.vl[i].full ? P->vis.cu_full : P->vis.cu_window;
      for (size_t s = 1; s < cu.size(); ++s) {
        const double l = static_cast<double>(cu[s] - cu[s - 1]);
        f += 4.0 * l * l * vh;
      }
    }
    P->vision_flops = f;
    for (size_t s = 1; s < P->tok.cu.size(); ++s) {
      const double l = static_cast<double>(P->tok.cu[s] - P->tok.cu[s - 1]);
      g += run * 4.0 * l * l * t.num_attention_heads * D / 2.0;
    }
    P->flops = f + g;
  }
  E.plan = std::move(P);
  Plan& p = *E.plan;

  // Attention backends: the decoder's as EngineOptions::decoder_attention forces it (every
  // device), else both timed below on CUDA.
  E.llm = AttnChoice{};
  E.vfull_backend = ops::AttnBackend::kFlashVarlen;
  E.vswiglu = E.tswiglu = -1;
  E.tune_report.clear();
  switch (E.o.decoder_attention) {
    case EngineOptions::DecoderAttention::kTuned:
    case EngineOptions::DecoderAttention::kFlashVarlen:
      break;
    case EngineOptions::DecoderAttention::kSdpa:
      E.llm.backend = ops::AttnBackend::kSdpa;
      break;
    case EngineOptions::DecoderAttention::kCudnn:
      E.llm.backend = ops::AttnBackend::kCudnn;
      break;
    case EngineOptions::DecoderAttention::kCausalKernel:
      E.llm.backend = ops::AttnBackend::kCausalKernel;
      break;
  }
  if (E.o.decoder_attention != EngineOptions::DecoderAttention::kTuned)
    E.tune_report =
        str_cat("decoder attention: ", E.llm.name(), " (EngineOptions::decoder_attention); ");

  if (!dev.is_cuda()) return;
  auto stage_pre = [&E, &p]() { p.patches = E.preprocess_plan(p); };
  auto stage_vis = [&E, &p]() {
    p.vis_out = E.vision_core(p.patches, p.cu_window, p.cu_full, p.vcos, p.vsin);
  };
  auto stage_llm = [&E, &p]() { p.features = E.llm_plan(p, p.vis_out); };
  p.stream = std::make_unique<device::Stream>(dev);
  device::StreamScope scope(*p.stream);
  for (int i = 0; i < 5; ++i) p.events.push_back(std::make_unique<device::Event>());
  using DecoderAttention = EngineOptions::DecoderAttention;
  if (E.flash) {
    E.vfull_backend = tune(p.cu_full, v.num_heads, v.num_heads, v.head_dim(), false, E.wopt(),
                           "vision full attention", E.tune_report)
                          .backend;
    if (E.o.decoder_attention == DecoderAttention::kTuned) {
      E.llm = tune(p.seq, t.num_attention_heads, t.num_key_value_heads, t.head_dim(), true,
                   E.wopt(), "decoder attention", E.tune_report);
    }
  }
  // The fused gate|up + SwiGLU kernel where it beats the product + the SwiGLU kernel at this plan's
  // rows, in the precision the stage runs: bf16, or FP8 with the static scales of
  // Engine::calibrate_fp8 (a stage in per-token FP8 keeps the two kernels).
  auto choose_swiglu = [&](int64_t rows, const at::Tensor& gu_w, const ops::Fp8Rows& gu_q,
                           const at::Tensor& gu_b, int64_t inter, const char* what) {
    const bool q8 = E.o.fp8 && rows >= E.o.fp8_min_rows;
    if (q8 ? !(E.site_scale.defined() && gu_q.tensorwise) : E.o.dtype != at::kBFloat16) return -1;
    if (ops::linear_swiglu_variants(gu_w, q8) == 0) return -1;
    return tune_swiglu(rows, gu_w, q8 ? gu_q : ops::Fp8Rows{}, gu_b, inter, E.o.dtype,
                       E.o.fp8_fast_accum, E.fused(), what, E.tune_report);
  };
  if (E.fused() && E.o.swiglu_in_gemm) {
    E.vswiglu = choose_swiglu(p.vis.patches, E.vl[0].gu_w, E.vl[0].gu_q, E.vl[0].gu_b, E.vi_pad,
                              "vision gate|up+SwiGLU");
    E.tswiglu = choose_swiglu(static_cast<int64_t>(p.tok.ids.size()), E.tl[0].gu_w, E.tl[0].gu_q,
                              {}, E.ti_pad, "decoder gate|up+SwiGLU");
  }
  // eager warm-up (cuBLAS handles, workspaces, kernel selection)
  for (int i = 0; i < 2; ++i) {
    stage_pre();
    stage_vis();
    stage_llm();
  }
  p.stream->synchronize();
  if (E.o.cuda_graphs) {
    auto capture = [&](std::unique_ptr<device::Graph>& g, const std::function<void()>& stage) {
      g = std::make_unique<device::Graph>();
      g->capture_begin();
      stage();
      g->capture_end();
    };
    for (int attempt = 0; attempt < 2 && !p.graphs; ++attempt) {
      try {
        capture(p.g_pre, stage_pre);
        capture(p.g_vis, stage_vis);
        capture(p.g_llm, stage_llm);
        p.graphs = true;
      } catch (const std::exception& e) {
        log_warn("gpu: CUDA graph capture failed (", e.what(), ")");
        p.g_pre.reset();
        p.g_vis.reset();
        p.g_llm.reset();
        device::clear_error();
        // a tuned attention backend may not be capturable: retry with flash varlen only
        E.llm = AttnChoice{};
        E.vfull_backend = ops::AttnBackend::kFlashVarlen;
        E.tune_report += "(capture retry with flash-varlen) ";
        stage_pre();
        stage_vis();
        stage_llm();
        p.stream->synchronize();
      }
    }
  }
  p.stream->synchronize();
}

bool Engine::prepared() const { return impl_->plan != nullptr; }
const PlanSpec& Engine::plan() const {
  VLA_CHECK(impl_->plan, "engine: no plan prepared");
  return impl_->plan->spec;
}
uint8_t* Engine::frame_buffer(int view) {
  VLA_CHECK(impl_->plan, "engine: no plan prepared");
  Plan& p = *impl_->plan;
  VLA_CHECK(view >= 0 && view < p.spec.views, "frame_buffer: view ", view, " out of range");
  return p.host_frames[view].data_ptr<uint8_t>();
}
const std::vector<int64_t>& Engine::plan_token_ids() const {
  VLA_CHECK(impl_->plan, "engine: no plan prepared");
  return impl_->plan->seq_ids;
}
int64_t Engine::plan_vision_patches() const {
  VLA_CHECK(impl_->plan, "engine: no plan prepared");
  return impl_->plan->vis.patches;
}
const std::vector<PlanGemm>& Engine::plan_gemms() const {
  VLA_CHECK(impl_->plan, "plan_gemms: no plan prepared");
  return impl_->plan->gemms;
}

double Engine::plan_flops() const {
  VLA_CHECK(impl_->plan, "engine: no plan prepared");
  return impl_->plan->flops;
}
double Engine::plan_vision_flops() const {
  VLA_CHECK(impl_->plan, "engine: no plan prepared");
  return impl_->plan->vision_flops;
}
bool Engine::plan_uses_graphs() const { return impl_->plan && impl_->plan->graphs; }

// Copies one frame per view of the plan into its pinned buffers (what encode and calibrate_fp8
// run on).
void Engine::load_frames(const std::vector<const uint8_t*>& frames, const char* what) {
  VLA_CHECK(impl_->plan, what, ": no plan prepared");
  Plan& p = *impl_->plan;
  VLA_CHECK(static_cast<int>(frames.size()) == p.spec.views, what, ": ", frames.size(),
            " frames for a plan of ", p.spec.views, " views");
  const size_t bytes = static_cast<size_t>(p.spec.height) * p.spec.width * 3;
  for (int i = 0; i < p.spec.views; ++i) {
    VLA_CHECK(frames[i] != nullptr, what, ": frame ", i, " is null");
    std::memcpy(frame_buffer(i), frames[i], bytes);
  }
}

at::Tensor Engine::encode(const std::vector<const uint8_t*>& frames) {
  load_frames(frames, "encode");
  return run();
}

at::Tensor Engine::run() {
  EngineImpl& E = *impl_;
  VLA_CHECK(E.plan, "engine: no plan prepared");
  Plan& p = *E.plan;
  at::NoGradGuard ng;
  if (!p.stream) {  // CPU plan: eager
    p.dev_frames.copy_(p.host_frames);
    p.patches = E.preprocess_plan(p);
    p.vis_out = E.vision_core(p.patches, p.cu_window, p.cu_full, p.vcos, p.vsin);
    p.features = E.llm_plan(p, p.vis_out);
    return p.features;
  }
  device::StreamScope scope(*p.stream);
  p.events[0]->record(*p.stream);
  const char* err = kernels::copy_h2d(p.dev_frames.data_ptr(), p.host_frames.data_ptr(),
                                      p.host_frames.numel(), p.stream->raw());
  VLA_CHECK(err == nullptr, "gpu: frame upload failed: ", err);
  p.events[1]->record(*p.stream);
  if (p.graphs) {
    p.g_pre->replay();
    p.events[2]->record(*p.stream);
    p.g_vis->replay();
    p.events[3]->record(*p.stream);
    p.g_llm->replay();
  } else {
    p.patches = E.preprocess_plan(p);
    p.events[2]->record(*p.stream);
    p.vis_out = E.vision_core(p.patches, p.cu_window, p.cu_full, p.vcos, p.vsin);
    p.events[3]->record(*p.stream);
    p.features = E.llm_plan(p, p.vis_out);
  }
  p.events[4]->record(*p.stream);
  p.stream->synchronize();
  return p.features;
}

std::vector<std::pair<std::string, double>> Engine::profile_run() {
  EngineImpl& E = *impl_;
  VLA_CHECK(E.plan, "engine: no plan prepared");
  Plan& p = *E.plan;
  VLA_CHECK(p.stream != nullptr, "profile_run needs a CUDA plan");
  at::NoGradGuard ng;
  device::StreamScope scope(*p.stream);
  Profiler prof{E.o.device, {}, {}};
  E.prof = &prof;
  try {
    E.eager_pass(p);
  } catch (...) {
    E.prof = nullptr;
    throw;
  }
  E.prof = nullptr;
  return prof.totals();
}

void Engine::calibrate_fp8(const std::vector<const uint8_t*>& frames) {
  EngineImpl& E = *impl_;
  VLA_CHECK(E.o.fp8, "calibrate_fp8: this engine does not use fp8 (EngineOptions::fp8)");
  load_frames(frames, "calibrate_fp8");
  at::NoGradGuard ng;
  Plan& p = *E.plan;
  if (!E.site_amax.defined())
    E.site_amax = at::zeros({E.sites()}, at::TensorOptions().dtype(at::kFloat).device(E.o.device));
  E.site_scale = at::Tensor();  // measure with per-token scales (a later call widens the maxima)
  E.calibrating = true;
  try {
    if (p.stream) {
      device::StreamScope scope(*p.stream);
      E.eager_pass(p);
      p.stream->synchronize();
    } else {
      E.eager_pass(p);
    }
  } catch (...) {
    E.calibrating = false;
    throw;
  }
  E.calibrating = false;
  const at::Tensor amax = E.site_amax.cpu();
  E.site_static.assign(static_cast<size_t>(E.sites()), 0);
  int64_t seen = 0;
  for (int64_t i = 0; i < E.sites(); ++i) {
    const float a = amax[i].item<float>();
    VLA_CHECK(std::isfinite(a), "calibrate_fp8: activation ", i, " has a non-finite amax");
    if (a > 0) E.site_static[static_cast<size_t>(i)] = 1, ++seen;
  }
  VLA_CHECK(seen > 0, "calibrate_fp8: the plan quantised no activation (fp8_min_rows ",
            E.o.fp8_min_rows, " above its row counts?)");
  E.site_scale =
      (E.site_amax / 448.0).clamp_min(1e-12).reshape({-1, 1}).expand({-1, 4}).contiguous();
  E.quantize_weights(/*per_tensor=*/true);
  prepare(PlanSpec(p.spec));  // recapture with the static scales
}

void Engine::clear_fp8_calibration() {
  EngineImpl& E = *impl_;
  if (!E.site_scale.defined()) return;
  E.site_amax = at::Tensor();
  E.site_scale = at::Tensor();
  E.site_static.clear();
  E.quantize_weights(/*per_tensor=*/false);
  if (E.plan) prepare(PlanSpec(E.plan->spec));
}

bool Engine::fp8_calibrated() const { return impl_->site_scale.defined(); }

void Engine::run_vision_only() {
  EngineImpl& E = *impl_;
  VLA_CHECK(E.plan, "engine: no plan prepared");
  Plan& p = *E.plan;
  at::NoGradGuard ng;
  if (!p.stream) {
    p.vis_out = E.vision_core(p.patches, p.cu_window, p.cu_full, p.vcos, p.vsin);
    return;
  }
  device::StreamScope scope(*p.stream);
  if (p.graphs)
    p.g_vis->replay();
  else
    p.vis_out = E.vision_core(p.patches, p.cu_window, p.cu_full, p.vcos, p.vsin);
  p.stream->synchronize();
}

ChatInputs chat_inputs(Engine& engine, const PromptCodec& codec, const std::vector<Image>& images,
                       const std::string& text, bool text_first) {
  ChatInputs in;
  std::vector<at::Tensor> pvs, grids;
  std::vector<int64_t> tokens;
  const int64_t mm =
      engine.config().vision.spatial_merge_size * engine.config().vision.spatial_merge_size;
  for (const Image& image : images) {
    const Image rgb = to_rgb(image);
    auto [pv, grid] = engine.preprocess({rgb.pixels.data()}, rgb.height, rgb.width);
    tokens.push_back(grid[0][0].item<int64_t>() * grid[0][1].item<int64_t>() *
                     grid[0][2].item<int64_t>() / mm);
    pvs.push_back(pv);
    grids.push_back(grid);
  }
  if (!images.empty()) {
    in.pixel_values = at::cat(pvs, 0);
    in.grid_thw = at::cat(grids, 0);
  }
  in.input_ids = codec.encode_chat(text, tokens, text_first);
  return in;
}

StageTimes Engine::last_times() {
  VLA_CHECK(impl_->plan, "engine: no plan prepared");
  Plan& p = *impl_->plan;
  StageTimes st;
  if (!p.stream) return st;
  p.events[4]->synchronize();
  st.upload_ms = p.events[0]->elapsed_ms(*p.events[1]);
  st.preprocess_ms = p.events[1]->elapsed_ms(*p.events[2]);
  st.vision_ms = p.events[2]->elapsed_ms(*p.events[3]);
  st.llm_ms = p.events[3]->elapsed_ms(*p.events[4]);
  st.total_ms = p.events[0]->elapsed_ms(*p.events[4]);
  return st;
}

}  // namespace vla::gpu
