// Qwen2.5-VL: the full model (vision tower + decoder), checkpoint I/O, M-RoPE position ids,
// encode() with one-sequence or views-as-batch layouts, LoRA management.
#include <algorithm>
#include <filesystem>
#include <set>

#include "models/models.h"

namespace vla {

namespace fs = std::filesystem;

namespace {

bool is_lora_name(const std::string& n) {
  return n.size() >= 6 &&
         (n.compare(n.size() - 6, 6, "lora_A") == 0 || n.compare(n.size() - 6, 6, "lora_B") == 0);
}

std::string shape_of(const torch::Tensor& t) { return shape_str(t.sizes()); }

}  // namespace

std::vector<std::string> checkpoint_name_candidates(const std::string& n) {
  std::vector<std::string> c{n};
  if (n.rfind("model.", 0) == 0) c.push_back("model.language_model." + n.substr(6));
  if (n.rfind("visual.", 0) == 0) c.push_back("model." + n);
  return c;
}

Pooling parse_pooling(const std::string& name) {
  if (name == "mean") return Pooling::kMean;
  if (name == "last" || name == "last_token") return Pooling::kLastToken;
  if (name == "all") return Pooling::kAll;
  throw Error(str_cat("unknown pooling '", name, "' (expected mean | last | all)"));
}

torch::Tensor pool_hidden(const torch::Tensor& h, const torch::Tensor& mask, Pooling pooling) {
  VLA_CHECK(
      h.dim() == 3 && mask.dim() == 2 && mask.size(0) == h.size(0) && mask.size(1) == h.size(1),
      "pool_hidden: hidden ", h.sizes(), " and mask ", mask.sizes(), " do not match");
  switch (pooling) {
    case Pooling::kMean: {
      auto m = mask.to(h.device()).to(h.scalar_type()).unsqueeze(-1);
      return (h * m).sum(1) / m.sum(1);
    }
    case Pooling::kLastToken:
      return h.select(1, h.size(1) - 1);
    case Pooling::kAll:
      break;
  }
  return h;
}

Qwen25VLImpl::Qwen25VLImpl(const Qwen25VLConfig& cfg, double initializer_range) : cfg_(cfg) {
  VLA_CHECK(cfg.vision.out_hidden_size == cfg.text.hidden_size, "vision out_hidden_size ",
            cfg.vision.out_hidden_size, " != text hidden_size ", cfg.text.hidden_size);
  visual = register_module("visual", VisionTransformer(cfg.vision));
  model = register_module("model", TextModel(cfg.text));
  if (!cfg.text.tie_word_embeddings)
    lm_head = register_module("lm_head", Linear(cfg.text.hidden_size, cfg.text.vocab_size, false));
  if (initializer_range > 0) {
    torch::NoGradGuard g;
    for (auto& kv : named_parameters(true)) {
      const auto& n = kv.key();
      auto& p = kv.value();
      const bool is_bias = n.size() >= 5 && n.compare(n.size() - 5, 5, ".bias") == 0;
      const bool is_norm =
          n.find("norm") != std::string::npos || n.find("ln_q") != std::string::npos;
      if (is_bias) {
        p.zero_();
      } else if (is_norm) {
        p.fill_(1.0);
      } else {
        p.normal_(0.0, initializer_range);
      }
    }
    if (cfg.pad_token_id >= 0 && cfg.pad_token_id < cfg.text.vocab_size)
      model->embed_tokens->weight[cfg.pad_token_id].zero_();
  }
}

torch::ScalarType Qwen25VLImpl::dtype() const { return model->norm->weight.scalar_type(); }
torch::Device Qwen25VLImpl::device() const { return model->norm->weight.device(); }

std::map<std::string, torch::Tensor> Qwen25VLImpl::state_tensors() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& kv : named_parameters(true))
    if (!is_lora_name(kv.key())) out[kv.key()] = kv.value();
  return out;
}

void Qwen25VLImpl::load_weights(const WeightStore& store, bool strict) {
  torch::NoGradGuard g;
  std::set<std::string> used;
  std::vector<std::string> missing;
  for (auto& [name, param] : state_tensors()) {
    std::string found;
    for (const auto& c : checkpoint_name_candidates(name))
      if (store.has(c)) {
        found = c;
        break;
      }
    if (found.empty()) {
      missing.push_back(name);
      continue;
    }
    const auto& info = store.info(found);
    VLA_CHECK(info.shape == param.sizes().vec(), store.path(), ": tensor ", found,
              ": checkpoint has ", shape_str(info.shape), ", model expects ", shape_of(param));
    param.copy_(store.get(found, param.sizes().vec(), param.scalar_type()));
    used.insert(found);
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 8; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 8) list += str_cat(", ... (", missing.size(), " in all)");
    const std::string msg = str_cat(store.path(), ": missing tensors: ", list);
    if (strict) throw Error(msg);
    log_warn(msg);
  }
  std::vector<std::string> unexpected;
  for (const auto& n : store.names()) {
    if (used.count(n)) continue;
    if (cfg_.text.tie_word_embeddings && n == "lm_head.weight") continue;  // tied copy
    unexpected.push_back(n);
  }
  if (!unexpected.empty()) {
    std::string list;
    for (size_t i = 0; i < unexpected.size() && i < 8; ++i) list += (i ? ", " : "") + unexpected[i];
    log_warn(store.path(), ": ", unexpected.size(),
             " checkpoint tensors not used by the model: ", list);
  }
}

std::shared_ptr<Qwen25VLImpl> Qwen25VLImpl::from_pretrained(const std::string& dir,
                                                            torch::ScalarType dtype,
                                                            torch::Device device) {
  VLA_CHECK(fs::is_directory(dir), "model folder not found: ", dir);
  auto cfg = Qwen25VLConfig::load(dir);
  auto m = std::make_shared<Qwen25VLImpl>(cfg, /*initializer_range=*/-1.0);
  m->to(dtype);
  m->load_weights(WeightStore::open(dir), /*strict=*/true);
  m->to(device);
  m->image_cfg_ = ImagePreprocessConfig::from_folder(dir);
  m->codec_ = make_prompt_codec(dir, cfg);
  m->source_dir_ = dir;
  m->eval();
  return m;
}

void Qwen25VLImpl::save_pretrained(const std::string& dir, const std::string& assets_dir) const {
  make_dirs(dir);
  cfg_.save(dir);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& m : named_modules()) {
    if (auto* lin = m.value()->as<LinearImpl>()) {
      const std::string prefix = m.key().empty() ? "" : m.key() + ".";
      tensors[prefix + "weight"] = lin->merged_weight().detach().to(torch::kCPU);
    }
  }
  for (auto& [name, p] : state_tensors())
    if (!tensors.count(name)) tensors[name] = p.detach().to(torch::kCPU);
  save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  const std::string src = assets_dir.empty() ? source_dir_ : assets_dir;
  if (!src.empty()) {
    for (const char* f :
         {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
          "processor_config.json", "preprocessor_config.json", "special_tokens_map.json",
          "vocab.json", "merges.txt", "added_tokens.json"}) {
      const fs::path from = fs::path(src) / f;
      if (fs::exists(from) && fs::absolute(from) != fs::absolute(fs::path(dir) / f))
        fs::copy_file(from, fs::path(dir) / f, fs::copy_options::overwrite_existing);
    }
  }
}

// ---------------------------------------------------------------- positions

std::pair<torch::Tensor, torch::Tensor> Qwen25VLImpl::get_rope_index(
    const torch::Tensor& input_ids, const torch::Tensor& grid_thw,
    const torch::Tensor& attention_mask) const {
  return vla::get_rope_index(cfg_, input_ids, grid_thw, attention_mask);
}

std::pair<torch::Tensor, torch::Tensor> get_rope_index(const Qwen25VLConfig& cfg,
                                                       const torch::Tensor& input_ids,
                                                       const torch::Tensor& grid_thw,
                                                       const torch::Tensor& attention_mask) {
  VLA_CHECK(input_ids.dim() == 2, "input_ids must be (B, L), got ", input_ids.sizes());
  const int64_t B = input_ids.size(0), L = input_ids.size(1);
  auto ids = input_ids.to(torch::kCPU).to(torch::kInt64).contiguous();
  torch::Tensor mask;
  if (attention_mask.defined()) {
    VLA_CHECK(attention_mask.sizes() == input_ids.sizes(), "attention_mask ",
              attention_mask.sizes(), " does not match input_ids ", input_ids.sizes());
    mask = attention_mask.to(torch::kCPU).to(torch::kInt64).contiguous();
  }
  std::vector<int64_t> grids;
  if (grid_thw.defined()) {
    auto g = grid_thw.to(torch::kCPU).to(torch::kInt64).contiguous();
    grids.assign(g.data_ptr<int64_t>(), g.data_ptr<int64_t>() + g.numel());
  }
  const int64_t m = cfg.vision.spatial_merge_size;
  const int64_t image_id = cfg.image_token_id;
  auto pos = torch::zeros({3, B, L}, torch::kInt64);
  auto deltas = torch::zeros({B}, torch::kInt64);
  auto P = pos.accessor<int64_t, 3>();
  size_t next_grid = 0;
  const int64_t* mask_rows = mask.defined() ? mask.data_ptr<int64_t>() : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> cols;  // valid columns
    for (int64_t j = 0; j < L; ++j)
      if (!mask_rows || mask_rows[b * L + j] != 0) cols.push_back(j);
    const int64_t* row = ids.data_ptr<int64_t>() + b * L;
    int64_t cur = 0, maxpos = -1;
    size_t i = 0;
    while (i < cols.size()) {
      const bool img = row[cols[i]] == image_id;
      size_t j = i;
      while (j < cols.size() && (row[cols[j]] == image_id) == img) ++j;
      const int64_t n = static_cast<int64_t>(j - i);
      if (!img) {
        for (int64_t k = 0; k < n; ++k) {
          for (int d = 0; d < 3; ++d) P[d][b][cols[i + k]] = cur + k;
        }
        maxpos = std::max(maxpos, cur + n - 1);
        cur += n;
      } else {
        VLA_CHECK(next_grid * 3 + 3 <= grids.size(),
                  "input_ids hold more image token runs than grid_thw has images (",
                  grids.size() / 3, ")");
        const int64_t t = grids[next_grid * 3], h = grids[next_grid * 3 + 1] / m,
                      w = grids[next_grid * 3 + 2] / m;
        ++next_grid;
        VLA_CHECK(t * h * w == n, "image ", next_grid - 1, ": ", n,
                  " <|image_pad|> tokens in the prompt but its grid (", t, ", ", h * m, ", ", w * m,
                  ") gives ", t * h * w);
        int64_t k = 0;
        for (int64_t tt = 0; tt < t; ++tt)
          for (int64_t y = 0; y < h; ++y)
            for (int64_t x = 0; x < w; ++x, ++k) {
              const int64_t c = cols[i + k];
              P[0][b][c] = tt + cur;
              P[1][b][c] = y + cur;
              P[2][b][c] = x + cur;
              maxpos = std::max({maxpos, tt + cur, y + cur, x + cur});
            }
        cur += std::max(h, w);
      }
      i = j;
    }
    deltas[b] = maxpos + 1 - static_cast<int64_t>(cols.size());
  }
  return {pos, deltas};
}

// ---------------------------------------------------------------- forward

torch::Tensor Qwen25VLImpl::embed(const torch::Tensor& input_ids, const torch::Tensor& pixel_values,
                                  const torch::Tensor& grid_thw, torch::Tensor* image_embeds) {
  const auto dev = device();
  auto ids = input_ids.to(dev).to(torch::kInt64);
  VLA_CHECK(ids.numel() == 0 || (ids.min().item<int64_t>() >= 0 &&
                                 ids.max().item<int64_t>() < cfg_.text.vocab_size),
            "input_ids out of range [0, ", cfg_.text.vocab_size, ")");
  auto emb = model->embed_tokens(ids);
  if (pixel_values.defined() && pixel_values.numel() > 0) {
    VLA_CHECK(grid_thw.defined(), "pixel_values given without grid_thw");
    auto img = visual(pixel_values, grid_thw).to(emb.scalar_type());
    if (image_embeds) *image_embeds = img;
    auto mask = (ids == cfg_.image_token_id);
    const int64_t n = mask.sum().item<int64_t>();
    VLA_CHECK(n == img.size(0), "the prompt has ", n, " <|image_pad|> tokens but the images give ",
              img.size(0),
              " features (an <|image_pad|> typed into the prompt text needs an image "
              "of its own)");
    emb = emb.masked_scatter(mask.unsqueeze(-1).expand_as(emb), img);
  }
  return emb;
}

torch::Tensor Qwen25VLImpl::logits_from_hidden(const torch::Tensor& hidden) {
  if (lm_head) return lm_head(hidden);
  return torch::matmul(hidden, model->embed_tokens->weight.t());
}

ForwardOutput Qwen25VLImpl::forward(const torch::Tensor& input_ids,
                                    const torch::Tensor& attention_mask,
                                    const torch::Tensor& pixel_values,
                                    const torch::Tensor& grid_thw, const ForwardOptions& o) {
  VLA_CHECK(input_ids.dim() == 2, "input_ids must be (B, L), got ", input_ids.sizes());
  ForwardOutput out;
  const bool has_images = pixel_values.defined() && pixel_values.numel() > 0;
  const int64_t past = o.cache ? o.cache->length() : 0;
  if (past == 0) {
    // One rule for media placeholders in a prompt: each needs its media. Typed into the text
    // without it they would be embedded as ordinary tokens (silently wrong features; transformers
    // dies inside its rope index). A typed <|image_pad|> next to real images is caught by the
    // count check in embed().
    auto ids = input_ids.to(torch::kCPU);
    const int64_t nvid =
        cfg_.video_token_id >= 0 ? ids.eq(cfg_.video_token_id).sum().item<int64_t>() : 0;
    VLA_CHECK(nvid == 0, "the prompt has ", nvid,
              " <|video_pad|> placeholder token(s) but no video was given (this engine takes "
              "images); remove the placeholder from the prompt text");
    const int64_t nimg = ids.eq(cfg_.image_token_id).sum().item<int64_t>();
    VLA_CHECK(has_images || nimg == 0, "the prompt has ", nimg,
              " <|image_pad|> placeholder token(s) but no image was given; remove the placeholder "
              "from the prompt text or pass the image");
  }
  auto emb = embed(input_ids, pixel_values, grid_thw, has_images ? &out.image_embeds : nullptr);
  const int64_t B = input_ids.size(0), L = input_ids.size(1);
  torch::Tensor pos;
  if (o.position_ids.defined()) {
    pos = o.position_ids;
    out.rope_deltas = torch::zeros({B}, torch::kInt64);
  } else if (has_images) {
    VLA_CHECK(past == 0, "images can only be given with an empty KV cache");
    std::tie(pos, out.rope_deltas) = get_rope_index(input_ids, grid_thw, attention_mask);
  } else {
    // transformers' forward: plain positions for text-only input
    pos = torch::arange(past, past + L, torch::kInt64).view({1, 1, L}).expand({3, B, L});
    out.rope_deltas = torch::zeros({B}, torch::kInt64);
  }
  out.position_ids = pos;
  torch::Tensor mask = attention_mask;
  if (mask.defined() && past > 0 && mask.size(1) == L)
    mask = torch::cat({torch::ones({B, past}, mask.options()), mask}, 1);
  out.last_hidden = model(emb, pos.to(emb.device()), mask, o.cache, o.num_layers);
  if (o.compute_logits) {
    auto h = o.logits_last_only ? out.last_hidden.narrow(1, L - 1, 1) : out.last_hidden;
    out.logits = logits_from_hidden(h);
  }
  return out;
}

// ---------------------------------------------------------------- encode

std::vector<int64_t> Qwen25VLImpl::prompt_ids(const std::string& text,
                                              const std::vector<int64_t>& image_tokens,
                                              bool text_first) const {
  VLA_CHECK(codec_, "no tokenizer / chat template available for this model",
            source_dir_.empty() ? "" : str_cat(" (", source_dir_, ")"),
            ": the folder needs tokenizer.json and a Qwen2-VL chat template");
  return codec_->encode_chat(text, image_tokens, text_first);
}

EncodeResult Qwen25VLImpl::encode(const std::vector<Image>& images, const std::string& instruction,
                                  const EncodeOptions& opt) {
  torch::NoGradGuard g;
  EncodeResult r;
  Stopwatch sw;
  PreprocessedImages pre;
  std::vector<int64_t> tokens;
  if (!images.empty()) {
    pre = preprocess_images(images, image_cfg_, device());
    tokens = pre.tokens_per_image(image_cfg_.merge_size);
  }
  r.preprocess_ms = sw.elapsed_ms();
  sw.reset();
  std::vector<std::vector<int64_t>> seqs;
  if (opt.views_as_batch && images.size() > 1) {
    for (auto t : tokens) seqs.push_back(prompt_ids(instruction, {t}));
  } else {
    seqs.push_back(prompt_ids(instruction, tokens));
  }
  size_t maxlen = 0;
  for (const auto& s : seqs) maxlen = std::max(maxlen, s.size());
  const int64_t B = static_cast<int64_t>(seqs.size()), L = static_cast<int64_t>(maxlen);
  const int64_t pad = cfg_.pad_token_id >= 0 ? cfg_.pad_token_id : 0;
  auto ids = torch::full({B, L}, pad, torch::kInt64);
  auto mask = torch::zeros({B, L}, torch::kInt64);
  for (int64_t b = 0; b < B; ++b) {
    const auto& s = seqs[b];
    const int64_t off = L - static_cast<int64_t>(s.size());  // left padding
    for (size_t j = 0; j < s.size(); ++j) ids[b][off + static_cast<int64_t>(j)] = s[j];
    mask[b].narrow(0, off, static_cast<int64_t>(s.size())).fill_(1);
  }
  ForwardOptions fo;
  fo.compute_logits = false;
  fo.num_layers = opt.num_layers;
  auto out = forward(ids, B > 1 ? mask : torch::Tensor(), pre.pixel_values, pre.grid_thw, fo);
  r.features = pool_hidden(out.last_hidden, mask, opt.pooling);
  r.attention_mask = mask;
  r.input_ids = ids;
  r.model_ms = sw.elapsed_ms();
  return r;
}

// ---------------------------------------------------------------- LoRA

int Qwen25VLImpl::apply_lora(const LoraOptions& o) {
  std::set<std::string> targets(o.targets.begin(), o.targets.end());
  const bool attn = targets.count("q_proj") || targets.count("k_proj") || targets.count("v_proj") ||
                    targets.count("o_proj");
  int n = 0;
  for (const auto& m : named_modules()) {
    auto* lin = m.value()->as<LinearImpl>();
    if (!lin) continue;
    const std::string& name = m.key();
    const bool vision = name.rfind("visual.", 0) == 0;
    if (vision && !o.include_vision) continue;
    if (name.rfind("lm_head", 0) == 0 && !targets.count("lm_head")) continue;
    const std::string leaf = name.substr(name.rfind('.') + 1);
    bool match = targets.count(leaf) > 0;
    if (vision && (leaf == "qkv" || leaf == "proj")) match = attn;
    if (vision && name.find("merger") != std::string::npos) match = false;
    if (!match || lin->has_lora()) continue;
    lin->enable_lora(o.rank, o.alpha, o.dropout);
    ++n;
  }
  return n;
}

std::vector<torch::Tensor> Qwen25VLImpl::lora_parameters() {
  std::vector<torch::Tensor> out;
  for (const auto& kv : named_parameters(true))
    if (is_lora_name(kv.key())) out.push_back(kv.value());
  return out;
}

void Qwen25VLImpl::merge_lora() {
  for (const auto& m : modules())
    if (auto* lin = m->as<LinearImpl>()) lin->merge_lora();
}

void Qwen25VLImpl::freeze_base() {
  for (const auto& kv : named_parameters(true))
    if (!is_lora_name(kv.key())) kv.value().set_requires_grad(false);
}

}  // namespace vla
