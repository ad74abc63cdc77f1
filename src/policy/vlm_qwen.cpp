// VlmEncoder backed by the Qwen2.5-VL engine (src/models). Compiled only when vla_models exists.
#include <algorithm>
#include <filesystem>
#include <functional>
#include <mutex>
#include <unordered_map>

#include "models/models.h"
#include "policy/policy.h"
#include "policy/vlm_common.h"
#include "vision/vision.h"

namespace vla::policy {

namespace fs = std::filesystem;

namespace {

class QwenVlm : public VlmEncoder {
 public:
  QwenVlm(Qwen25VL model, std::string assets_dir, PolicyConfig cfg)
      : model_(std::move(model)), assets_(std::move(assets_dir)), cfg_(std::move(cfg)) {
    VLA_CHECK(model_->prompt_codec() != nullptr,
              "VLM: no tokenizer / chat template (this build lacks src/text or the folder lacks "
              "tokenizer.json)");
    model_->eval();
    refresh_fingerprint();
  }

  std::vector<Image> pick(const std::vector<Image>& views) const { return pick_views(views, cfg_); }

  // The one feature path: encode / encode_batch (inference) and encode_train /
  // encode_train_batch (autograd) all run this padded forward + pooling -> [B, tokens, H].
  torch::Tensor batch_features(const std::vector<const std::vector<Image>*>& views,
                               const std::vector<std::string>& instructions) const {
    return pooled(prepare(views, instructions, {}));
  }
  torch::Tensor pooled(const VlmBatch& b) const {
    return pool(forward(b, false).last_hidden, b.input_ids, b.attention_mask);
  }
  torch::Tensor features(const std::vector<Image>& views, const std::string& instruction) const {
    return batch_features({&views}, {instruction}).squeeze(0);
  }

  // [B, L, H] hidden states -> [B, tokens, H] features (see PolicyConfig::pooling).
  torch::Tensor pool(const torch::Tensor& h, const torch::Tensor& ids,
                     const torch::Tensor& mask) const {
    return pool_features(h, ids, mask, cfg_, model_->config().image_token_id);
  }

  torch::Tensor encode(const std::vector<Image>& views,
                       const std::string& instruction) const override {
    c10::InferenceMode g;
    return features(views, instruction).to(torch::kCPU, torch::kFloat32);
  }
  torch::Tensor encode_batch(const std::vector<const std::vector<Image>*>& views,
                             const std::vector<std::string>& instructions) const override {
    c10::InferenceMode g;
    return batch_features(views, instructions).to(torch::kCPU, torch::kFloat32);
  }
  int feature_dim() const override { return static_cast<int>(model_->config().text.hidden_size); }
  std::string fingerprint() const override { return fingerprint_; }
  void save(const std::string& dir) const override { model_->save_pretrained(dir, assets_); }

  std::vector<torch::Tensor> trainable_parameters() override {
    if (lora_) return model_->lora_parameters();
    return model_->parameters();
  }
  void set_training(bool on) override { model_->train(on); }
  torch::Tensor encode_train(const std::vector<Image>& views,
                             const std::string& instruction) override {
    return features(views, instruction);
  }

  // One forward over a batch of samples (views + prompt, then `suffix[b]` token ids), left
  // padded so that every sequence ends at L - 1. Returns the output and the mask [B, L].
  std::tuple<ForwardOutput, torch::Tensor, torch::Tensor> padded_forward(
      const std::vector<const std::vector<Image>*>& views, const std::vector<std::string>& prompts,
      const std::vector<std::vector<int64_t>>& suffix, bool logits) const {
    auto b = prepare(views, prompts, suffix);
    return {forward(b, logits), b.attention_mask, b.input_ids};
  }
  // The CPU half of padded_forward: preprocessing, prompt ids, padding; pixel_values are moved to
  // the model's device here so that a background thread can overlap the copy too.
  VlmBatch prepare(const std::vector<const std::vector<Image>*>& views,
                   const std::vector<std::string>& prompts,
                   const std::vector<std::vector<int64_t>>& suffix) const {
    VLA_CHECK(views.size() == prompts.size() && !views.empty(), "VLM batch: ", views.size(),
              " samples but ", prompts.size(), " prompts");
    std::vector<Image> imgs;
    for (const auto* v : views) {
      auto p = pick(*v);
      imgs.insert(imgs.end(), p.begin(), p.end());
    }
    auto pp = preprocess_images(imgs, model_->image_config(), model_->device());
    const auto tokens = pp.tokens_per_image(model_->image_config().merge_size);
    const size_t per = tokens.size() / views.size();
    std::vector<std::vector<int64_t>> seqs;
    size_t maxlen = 0;
    for (size_t b = 0; b < views.size(); ++b) {
      std::vector<int64_t> t(tokens.begin() + b * per, tokens.begin() + (b + 1) * per);
      seqs.push_back(prompt_ids(prompts[b], t));
      if (!suffix.empty())
        seqs.back().insert(seqs.back().end(), suffix[b].begin(), suffix[b].end());
      maxlen = std::max(maxlen, seqs.back().size());
    }
    const int64_t B = static_cast<int64_t>(seqs.size()), L = static_cast<int64_t>(maxlen);
    const int64_t pad = std::max<int64_t>(0, model_->config().pad_token_id);
    VlmBatch out;
    out.views = views;
    out.prompts = prompts;
    out.input_ids = torch::full({B, L}, pad, torch::kInt64);
    out.attention_mask = torch::zeros({B, L}, torch::kInt64);
    auto* ids = out.input_ids.data_ptr<int64_t>();
    auto* mask = out.attention_mask.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      const auto& s = seqs[b];
      const int64_t n = static_cast<int64_t>(s.size());
      std::copy(s.begin(), s.end(), ids + b * L + (L - n));
      std::fill(mask + b * L + (L - n), mask + (b + 1) * L, 1);
    }
    out.pixel_values = pp.pixel_values;  // already on the model's device
    out.image_grid_thw = pp.grid_thw;
    return out;
  }
  ForwardOutput forward(const VlmBatch& b, bool logits) const {
    ForwardOptions fo;
    fo.compute_logits = logits;
    // Features come from the policy's layer; caption / grounding logits from the whole model.
    if (!logits) fo.num_layers = cfg_.vlm_layers;
    return model_.ptr()->forward(b.input_ids,
                                 b.input_ids.size(0) > 1 ? b.attention_mask : torch::Tensor(),
                                 b.pixel_values, b.image_grid_thw, fo);
  }
  VlmBatch prepare_batch(const std::vector<const std::vector<Image>*>& views,
                         const std::vector<std::string>& instructions) const override {
    return prepare(views, instructions, {});
  }
  torch::Tensor encode_prepared(const VlmBatch& b) override { return pooled(b); }

  torch::Tensor encode_train_batch(const std::vector<const std::vector<Image>*>& views,
                                   const std::vector<std::string>& instructions) override {
    return batch_features(views, instructions);
  }

  // Tokenising (a chat-template render + BPE) costs ~1 ms a string on the CPU, more than the tiny
  // VLM's forward per sample on a GPU; training sees the same prompts and captions every epoch,
  // so ids are memoised (bounded; thread-safe).
  std::vector<int64_t> memo(const std::string& key,
                            const std::function<std::vector<int64_t>()>& make) const {
    {
      std::lock_guard<std::mutex> lock(memo_mu_);
      auto it = memo_.find(key);
      if (it != memo_.end()) return it->second;
    }
    auto ids = make();
    std::lock_guard<std::mutex> lock(memo_mu_);
    if (memo_.size() > 500000) memo_.clear();
    memo_.emplace(key, ids);
    return ids;
  }
  std::vector<int64_t> prompt_ids(const std::string& prompt,
                                  const std::vector<int64_t>& image_tokens) const {
    std::string key = "p|";
    for (auto t : image_tokens) key += std::to_string(t) + ",";
    key += "|" + cfg_.prompt_order + "|" + prompt;
    return memo(key, [&] { return model_->prompt_ids(prompt, image_tokens, cfg_.text_first()); });
  }

  std::vector<int64_t> text_ids(const std::string& text) const {
    return memo("t|" + text, [&] { return text_ids_uncached(text); });
  }
  std::vector<int64_t> text_ids_uncached(const std::string& text) const {
    // The codec only renders chat prompts: the raw ids of `text` are the part of the rendered
    // prompt between the fixed prefix and suffix (special tokens split before BPE).
    auto* codec = model_->prompt_codec();
    const auto empty = memo("e|", [&] { return codec->encode_chat("", {}); });
    auto full = codec->encode_chat(text, {});
    size_t pre = 0;
    while (pre < empty.size() && pre < full.size() && empty[pre] == full[pre]) ++pre;
    size_t suf = 0;
    while (suf < empty.size() - pre && suf < full.size() - pre &&
           empty[empty.size() - 1 - suf] == full[full.size() - 1 - suf])
      ++suf;
    return std::vector<int64_t>(full.begin() + pre, full.end() - suf);
  }

  std::vector<int64_t> token_ids(const std::string& text) const override { return text_ids(text); }
  int64_t vocab_size() const override { return model_->config().text.vocab_size; }

  int64_t eos() const {
    const auto& e = model_->config().eos_token_ids;
    VLA_CHECK(!e.empty(), "VLM: config has no eos token id");
    return e[0];
  }

  torch::Tensor caption_loss(const std::vector<Image>& views, const std::string& prompt,
                             const std::string& caption) override {
    auto imgs = pick(views);
    auto pp = preprocess_images(imgs, model_->image_config(), model_->device());
    auto ids = prompt_ids(prompt, pp.tokens_per_image(model_->image_config().merge_size));
    const int64_t np = static_cast<int64_t>(ids.size());
    auto cap = text_ids(caption);
    cap.push_back(eos());
    ids.insert(ids.end(), cap.begin(), cap.end());
    auto input = torch::tensor(ids, torch::kInt64).unsqueeze(0);
    auto out = model_->forward(input, {}, pp.pixel_values, pp.grid_thw, {});
    auto logits = out.logits[0].narrow(0, np - 1, static_cast<int64_t>(cap.size()));
    auto target = torch::tensor(cap, torch::kInt64).to(logits.device());
    return torch::nn::functional::cross_entropy(logits.to(torch::kFloat32), target);
  }

  torch::Tensor caption_loss_batch(const std::vector<const std::vector<Image>*>& views,
                                   const std::vector<std::string>& prompts,
                                   const std::vector<std::string>& captions,
                                   const torch::Tensor& first_token_target) override {
    VLA_CHECK(captions.size() == views.size(), "caption_loss_batch: ", views.size(),
              " samples but ", captions.size(), " captions");
    const bool soft = first_token_target.defined();
    if (soft)
      VLA_CHECK(first_token_target.dim() == 2 &&
                    first_token_target.size(0) == static_cast<int64_t>(views.size()) &&
                    first_token_target.size(1) == vocab_size(),
                "caption_loss_batch: first_token_target must be [", views.size(), ", ",
                vocab_size(), "], got ", first_token_target.sizes());
    std::vector<std::vector<int64_t>> caps;
    for (const auto& c : captions) {
      caps.push_back(text_ids(c));
      caps.back().push_back(eos());
    }
    auto [out, mask, ids] = padded_forward(views, prompts, caps, false);
    (void)mask;
    (void)ids;
    // Logits only where a caption token is predicted (the vocabulary can be large: location
    // tokens), i.e. the last max_n + 1 positions of the left-padded batch.
    size_t max_n = 0;
    for (const auto& c : caps) max_n = std::max(max_n, c.size());
    const int64_t span = static_cast<int64_t>(max_n) + 1;
    const int64_t Lh = out.last_hidden.size(1);
    out.logits = model_.ptr()->logits_from_hidden(out.last_hidden.narrow(1, Lh - span, span));
    const int64_t L = out.logits.size(1);
    std::vector<torch::Tensor> ls;
    for (size_t b = 0; b < caps.size(); ++b) {
      // The caption occupies the last n positions; position j predicts token j + 1.
      const int64_t n = static_cast<int64_t>(caps[b].size());
      auto logits = out.logits[static_cast<int64_t>(b)].narrow(0, L - n - 1, n).to(torch::kFloat32);
      auto target = torch::tensor(caps[b], torch::kInt64).to(logits.device());
      if (!soft) {
        ls.push_back(torch::nn::functional::cross_entropy(logits, target));
        continue;
      }
      // Soft target at the first position, hard labels after it; the mean over the n tokens
      // (a one-hot target gives exactly the hard loss).
      auto first = -(first_token_target[static_cast<int64_t>(b)].to(logits.device()) *
                     torch::log_softmax(logits[0], -1))
                        .sum();
      auto rest = n > 1
                      ? torch::nn::functional::cross_entropy(
                            logits.narrow(0, 1, n - 1), target.narrow(0, 1, n - 1),
                            torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                      : torch::zeros({}, logits.options());
      ls.push_back((first + rest) / static_cast<double>(n));
    }
    return torch::stack(ls).mean();
  }

  std::string caption(const std::vector<Image>& views, const std::string& prompt,
                      int max_new_tokens) const override {
    c10::InferenceMode g;
    GenerateOptions o;
    o.max_new_tokens = max_new_tokens;
    o.text_first = cfg_.text_first();
    return model_.ptr()->generate(pick(views), prompt, o).text;
  }

  void enable_lora(int rank, double alpha, const std::vector<std::string>& targets) override {
    LoraOptions o;
    o.rank = rank;
    o.alpha = alpha;
    o.targets = targets;
    int n = model_->apply_lora(o);
    VLA_CHECK(n > 0, "VLM: no layer matches the LoRA targets");
    model_->freeze_base();
    lora_ = true;
  }
  void merge_lora() override {
    model_->merge_lora();
    for (auto& p : model_->parameters()) p.set_requires_grad(true);
    lora_ = false;
  }
  void to(const torch::Device& device) override { model_->to(device); }
  void refresh_fingerprint() override {
    const auto state = model_->state_tensors();
    std::vector<std::string> names;
    for (const auto& kv : state) names.push_back(kv.first);
    fingerprint_ = vlm_fingerprint(
        names, [&](const std::string& n) { return state.at(n); }, cfg_);
  }

 private:
  Qwen25VL model_;
  std::string assets_;
  PolicyConfig cfg_;
  std::string fingerprint_;
  bool lora_ = false;
  mutable std::mutex memo_mu_;
  mutable std::unordered_map<std::string, std::vector<int64_t>> memo_;
};

}  // namespace

const std::vector<std::string>& vlm_backends() {
  static const std::vector<std::string> names = {"reference", "fast"};
  return names;
}

void VlmOptions::validate() const {
  (void)parse_device(device);
  const auto& b = vlm_backends();
  VLA_CHECK(std::find(b.begin(), b.end(), backend) != b.end(), "unknown VLM backend '", backend,
            "' (expected reference | fast)");
  VLA_CHECK(!fp8 || backend == "fast", "fp8 needs the fast VLM backend (--vlm-backend fast)");
  VLA_CHECK(!fp8_static || fp8, "fp8 static scales need fp8 (--fp8 --fp8-static)");
  (void)gpu::parse_fp8_output_projections(fp8_output_projections);
  VLA_CHECK(fp8_static || fp8_output_projections == "none" ||
                fp8_output_projections == VlmOptions{}.fp8_output_projections,
            "FP8 output projections need fp8 static scales (--fp8 --fp8-static --fp8-out-proj ",
            fp8_output_projections, ")");
}

std::shared_ptr<VlmEncoder> load_vlm(const std::string& dir, const PolicyConfig& cfg,
                                     const VlmOptions& options) {
  VLA_CHECK(fs::exists(dir + "/config.json"), "VLM folder '", dir, "' has no config.json");
  cfg.validate();  // the encoder relies on pooling and use_views being valid
  options.validate();
  if (options.backend == "fast") return load_fast_vlm(dir, cfg, options);
  const bool has_weights =
      fs::exists(dir + "/model.safetensors") || fs::exists(dir + "/model.safetensors.index.json");
  Qwen25VL model{nullptr};
  if (has_weights) {
    model = Qwen25VL(Qwen25VLImpl::from_pretrained(dir));
  } else {
    // A config-only folder: random initialisation (seeded by the caller), for pre-training.
    auto c = Qwen25VLConfig::load(dir);
    model = Qwen25VL(c, 0.02);
    model->set_image_config(ImagePreprocessConfig::from_folder(dir));
    model->set_prompt_codec(make_prompt_codec(dir, c));
    log_info("VLM: ", dir, " has no weights; random initialisation from its config.json");
  }
  check_vlm_layers(cfg, model->config(), dir);
  auto enc = std::make_shared<QwenVlm>(model, dir, cfg);
  const auto device = parse_device(options.device);
  if (!device.is_cpu()) enc->to(device);
  return enc;
}

}  // namespace vla::policy
