// Token generation (greedy / temperature / top-k / top-p with a KV cache) and the prompt codec
// over vla_text.
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <limits>

#include "models/models.h"
#include "text/text.h"

namespace vla {

int64_t sample_token(const torch::Tensor& logits_in, const GenerateOptions& o,
                     torch::Generator* gen) {
  auto logits = logits_in.detach().to(torch::kCPU).to(torch::kFloat32).reshape({-1});
  if (o.temperature <= 0.0) return logits.argmax().item<int64_t>();
  logits = logits / o.temperature;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (o.top_k > 0 && o.top_k < logits.size(0)) {
    auto kth = std::get<0>(logits.topk(o.top_k)).min();
    logits = logits.masked_fill(logits < kth, neg_inf);
  }
  if (o.top_p < 1.0) {
    // transformers' TopPLogitsWarper: drop the smallest tokens whose cumulative probability
    // stays <= 1 - top_p, always keeping the most likely one.
    auto sorted = logits.sort(/*dim=*/0, /*descending=*/false);
    auto vals = std::get<0>(sorted), idx = std::get<1>(sorted);
    auto cum = vals.softmax(0).cumsum(0);
    auto remove = cum <= (1.0 - o.top_p);
    remove[-1] = false;
    auto remove_orig = torch::zeros_like(remove).scatter(0, idx, remove);
    logits = logits.masked_fill(remove_orig, neg_inf);
  }
  auto probs = logits.softmax(0);
  auto pick = gen ? torch::multinomial(probs, 1, false, *gen) : torch::multinomial(probs, 1);
  return pick.item<int64_t>();
}

std::vector<int64_t> Qwen25VLImpl::generate_ids(const torch::Tensor& input_ids,
                                                const torch::Tensor& pixel_values,
                                                const torch::Tensor& grid_thw,
                                                const GenerateOptions& o, GenerateResult* stats) {
  torch::NoGradGuard g;
  VLA_CHECK(input_ids.dim() == 2 && input_ids.size(0) == 1 && input_ids.size(1) > 0,
            "generate: input_ids must be (1, L) with L > 0, got ", input_ids.sizes());
  VLA_CHECK(o.max_new_tokens >= 0, "max_new_tokens must be >= 0");
  VLA_CHECK(o.top_k >= 0, "top_k must be >= 0");
  VLA_CHECK(o.top_p > 0.0 && o.top_p <= 1.0, "top_p must be in (0, 1]");
  std::vector<int64_t> stops = o.stop_token_ids;
  if (stops.empty()) stops = cfg_.eos_token_ids;
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  KVCache cache;
  ForwardOptions fo;
  fo.cache = &cache;
  fo.logits_last_only = true;
  Stopwatch sw;
  auto out = forward(input_ids, {}, pixel_values, grid_thw, fo);
  const int64_t L = input_ids.size(1);
  int64_t next_pos = out.position_ids.select(2, L - 1).max().item<int64_t>() + 1;
  std::vector<int64_t> toks;
  std::string reason = "max_new_tokens";
  double prefill_ms = sw.elapsed_ms();
  sw.reset();
  for (int i = 0; i < o.max_new_tokens; ++i) {
    const int64_t tok = sample_token(out.logits[0][-1], o, &gen);
    toks.push_back(tok);
    if (o.use_stop_tokens && std::find(stops.begin(), stops.end(), tok) != stops.end()) {
      reason = "stop_token";
      break;
    }
    if (i + 1 == o.max_new_tokens) break;
    ForwardOptions step;
    step.cache = &cache;
    step.logits_last_only = true;
    step.position_ids = torch::full({3, 1, 1}, next_pos++, torch::kInt64);
    out = forward(torch::full({1, 1}, tok, torch::kInt64), {}, {}, {}, step);
  }
  if (stats) {
    stats->prompt_tokens = L;
    stats->stop_reason = reason;
    stats->prefill_ms = prefill_ms;
    stats->decode_ms = sw.elapsed_ms();
  }
  return toks;
}

GenerateResult Qwen25VLImpl::generate(const std::vector<Image>& images, const std::string& prompt,
                                      const GenerateOptions& o) {
  GenerateResult r;
  PreprocessedImages pre;
  std::vector<int64_t> tokens;
  if (!images.empty()) {
    pre = preprocess_images(images, image_cfg_, device());
    tokens = pre.tokens_per_image(image_cfg_.merge_size);
  }
  auto ids = prompt_ids(prompt, tokens, o.text_first);
  auto t = torch::tensor(ids, torch::kInt64).view({1, -1});
  r.token_ids = generate_ids(t, pre.pixel_values, pre.grid_thw, o, &r);
  std::vector<int64_t> text_ids = r.token_ids;
  if (r.stop_reason == "stop_token" && !text_ids.empty()) text_ids.pop_back();
  r.text = codec_ ? codec_->decode(text_ids) : "";
  return r;
}

namespace {
class TextPromptCodec : public PromptCodec {
 public:
  TextPromptCodec(Tokenizer tok, int64_t image_pad_id)
      : tok_(std::move(tok)), image_pad_id_(image_pad_id) {}
  std::vector<int64_t> encode_chat(const std::string& text,
                                   const std::vector<int64_t>& image_tokens,
                                   bool text_first) const override {
    std::vector<ChatContent> parts;
    if (text_first) parts.push_back(ChatContent::Text(text));
    for (size_t i = 0; i < image_tokens.size(); ++i) parts.push_back(ChatContent::Image());
    if (!text_first) parts.push_back(ChatContent::Text(text));
    const std::string s = tok_.apply_chat_template({ChatMessage::Parts("user", parts)});
    return expand_image_pads(tok_.encode(s), image_tokens, image_pad_id_);
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    return tok_.decode(ids, /*skip_special=*/true);
  }

 private:
  Tokenizer tok_;
  int64_t image_pad_id_;
};
}  // namespace

std::shared_ptr<PromptCodec> make_prompt_codec(const std::string& dir, const Qwen25VLConfig& cfg) {
  if (!file_exists(dir + "/tokenizer.json")) {
    log_warn(dir, ": no tokenizer.json; encode()/generate() need token ids from the caller");
    return nullptr;
  }
  try {
    auto tok = Tokenizer::from_folder(dir);
    if (!tok.has_chat_template()) {
      log_warn(dir, ": no chat template found; prompts cannot be built");
      return nullptr;
    }
    return std::make_shared<TextPromptCodec>(std::move(tok), cfg.image_token_id);
  } catch (const Error& e) {
    log_warn(dir, ": tokenizer / chat template unusable: ", e.what());
    return nullptr;
  }
}

}  // namespace vla
