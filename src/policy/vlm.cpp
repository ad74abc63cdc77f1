// The policy's slow path: a Qwen2.5-VL engine behind the VlmEncoder interface.
#include <cstdio>
#include <filesystem>

#include "policy/policy.h"
#include "policy/vlm_common.h"
#include "weights/weights.h"

namespace vla::policy {

static Error no_training(const char* what) {
  return Error(str_cat("VLM encoder: ", what, " is not supported by this encoder"));
}
void VlmEncoder::prepare(int, int, int, const std::string&) const {}
std::vector<torch::Tensor> VlmEncoder::trainable_parameters() { throw no_training("training"); }
void VlmEncoder::set_training(bool) {}
torch::Tensor VlmEncoder::encode_train(const std::vector<Image>&, const std::string&) {
  throw no_training("encode_train");
}
torch::Tensor VlmEncoder::encode_train_batch(const std::vector<const std::vector<Image>*>& views,
                                             const std::vector<std::string>& instructions) {
  VLA_CHECK(views.size() == instructions.size(), "encode_train_batch: ", views.size(),
            " samples but ", instructions.size(), " instructions");
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < views.size(); ++i) out.push_back(encode_train(*views[i], instructions[i]));
  return torch::stack(out);
}
VlmBatch VlmEncoder::prepare_batch(const std::vector<const std::vector<Image>*>& views,
                                   const std::vector<std::string>& instructions) const {
  VLA_CHECK(views.size() == instructions.size() && !views.empty(), "prepare_batch: ", views.size(),
            " samples but ", instructions.size(), " instructions");
  VlmBatch b;
  b.views = views;
  b.prompts = instructions;
  return b;
}
torch::Tensor VlmEncoder::encode_prepared(const VlmBatch& batch) {
  return encode_train_batch(batch.views, batch.prompts);
}
torch::Tensor VlmEncoder::encode_batch(const std::vector<const std::vector<Image>*>& views,
                                       const std::vector<std::string>& instructions) const {
  VLA_CHECK(views.size() == instructions.size() && !views.empty(), "encode_batch: ", views.size(),
            " samples but ", instructions.size(), " instructions");
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < views.size(); ++i) out.push_back(encode(*views[i], instructions[i]));
  return torch::stack(out);
}
torch::Tensor VlmEncoder::caption_loss(const std::vector<Image>&, const std::string&,
                                       const std::string&) {
  throw no_training("caption_loss");
}
torch::Tensor VlmEncoder::caption_loss_batch(const std::vector<const std::vector<Image>*>& views,
                                             const std::vector<std::string>& prompts,
                                             const std::vector<std::string>& captions,
                                             const torch::Tensor& first_token_target) {
  VLA_CHECK(!first_token_target.defined(),
            "caption_loss_batch: soft first-token targets need an engine-backed VLM");
  VLA_CHECK(views.size() == prompts.size() && views.size() == captions.size() && !views.empty(),
            "caption_loss_batch: ", views.size(), " samples, ", prompts.size(), " prompts, ",
            captions.size(), " captions");
  std::vector<torch::Tensor> ls;
  for (size_t i = 0; i < views.size(); ++i)
    ls.push_back(caption_loss(*views[i], prompts[i], captions[i]));
  return torch::stack(ls).mean();
}
std::string VlmEncoder::caption(const std::vector<Image>&, const std::string&, int) const {
  throw no_training("caption");
}
void VlmEncoder::enable_lora(int, double, const std::vector<std::string>&) {
  throw no_training("LoRA");
}
void VlmEncoder::merge_lora() { throw no_training("LoRA"); }
void VlmEncoder::refresh_fingerprint() {}
void VlmEncoder::to(const torch::Device& device) {
  VLA_CHECK(device.is_cpu(), "this VLM encoder runs on the CPU only (asked for ", device.str(),
            ")");
}
std::vector<int64_t> VlmEncoder::token_ids(const std::string&) const {
  throw no_training("token_ids");
}
int64_t VlmEncoder::vocab_size() const { throw no_training("vocab_size"); }

// ---------------------------------------------------------------- shared by the encoders

std::vector<Image> pick_views(const std::vector<Image>& views, const PolicyConfig& cfg) {
  if (cfg.use_views.empty()) return views;
  std::vector<Image> out;
  for (int v : cfg.use_views) {
    VLA_CHECK(v < static_cast<int>(views.size()), "VLM: view ", v, " requested but only ",
              views.size(), " given");
    out.push_back(views[v]);
  }
  return out;
}

torch::Tensor pool_features(const torch::Tensor& h, const torch::Tensor& ids,
                            const torch::Tensor& mask, const PolicyConfig& cfg,
                            int64_t image_token_id) {
  const int64_t B = h.size(0), L = h.size(1);
  auto last = h.narrow(1, L - 1, 1);
  if (cfg.pooling == "last") return last;
  if (cfg.pooling == "mean") {
    auto m = mask.to(h.device(), h.scalar_type()).unsqueeze(-1);
    return ((h * m).sum(1) / m.sum(1)).unsqueeze(1);
  }
  // "tokens": every sample has the same image-token count (same views and resolution).
  auto is_img = ids.eq(image_token_id);
  const int64_t total = is_img.sum().item<int64_t>(), n = total / B;
  VLA_CHECK(n > 0 && n * B == total,
            "VLM: pooling 'tokens' needs the same number of image tokens in every sample");
  auto img = h.index({is_img.to(h.device())}).view({B, n, h.size(2)});
  return torch::cat({img, last}, 1);
}

std::string vlm_fingerprint(const std::vector<std::string>& sorted_names,
                            const std::function<torch::Tensor(const std::string&)>& tensor,
                            const PolicyConfig& cfg) {
  std::string acc = "qwen25vl";
  for (const auto& name : sorted_names) {
    auto c = tensor(name).detach().to(torch::kCPU, torch::kFloat32).contiguous();
    acc += name + ":" + fnv1a_hex(c.data_ptr(), c.numel() * c.element_size()) + ";";
  }
  // What the features depend on besides the weights: pooling, the views used, the prompt order
  // and the decoder layers run (absent when all: fingerprints of earlier policies stay valid).
  acc += "|pooling=" + cfg.pooling + "|views=";
  for (int v : cfg.use_views) acc += std::to_string(v) + ",";
  if (cfg.text_first()) acc += "|text_first";
  if (cfg.vlm_layers > 0) acc += "|layers=" + std::to_string(cfg.vlm_layers);
  return "qwen25vl-" + fnv1a_hex(acc.data(), acc.size());
}

std::string vlm_folder_with_tokenizer(const std::string& arch_dir, const std::string& tokenizer_dir,
                                      const std::string& work_dir) {
  namespace fs = std::filesystem;
  if (fs::exists(arch_dir + "/tokenizer.json")) return arch_dir;
  VLA_CHECK(fs::exists(tokenizer_dir + "/tokenizer.json"), "VLM: neither '", arch_dir, "' nor '",
            tokenizer_dir, "' has a tokenizer.json");
  VLA_CHECK(!fs::exists(arch_dir + "/model.safetensors") &&
                !fs::exists(arch_dir + "/model.safetensors.index.json"),
            "VLM: checkpoint '", arch_dir,
            "' has weights but no tokenizer.json; its own tokenizer is needed");
  Qwen25VLConfig arch = Qwen25VLConfig::load(arch_dir);
  const Qwen25VLConfig tok = Qwen25VLConfig::load(tokenizer_dir);
  arch.image_token_id = tok.image_token_id;
  arch.video_token_id = tok.video_token_id;
  arch.vision_start_token_id = tok.vision_start_token_id;
  arch.vision_end_token_id = tok.vision_end_token_id;
  arch.bos_token_id = tok.bos_token_id;
  arch.pad_token_id = tok.pad_token_id;
  arch.eos_token_ids = tok.eos_token_ids;
  arch.validate(arch_dir + "/config.json with " + tokenizer_dir + "'s token ids");
  remove_tree(work_dir);  // no file of an earlier architecture may linger
  make_dirs(work_dir);
  arch.save(work_dir);
  auto copy = [&](const std::string& from_dir, const char* name) {
    if (fs::exists(from_dir + "/" + name))
      fs::copy_file(from_dir + "/" + name, work_dir + "/" + name,
                    fs::copy_options::overwrite_existing);
  };
  for (const char* f : {"preprocessor_config.json", "processor_config.json"}) copy(arch_dir, f);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                        "chat_template.json", "special_tokens_map.json"})
    copy(tokenizer_dir, f);
  log_info("VLM: ", work_dir, " = architecture of ", arch_dir, " + tokenizer of ", tokenizer_dir);
  return work_dir;
}

void check_vlm_layers(const PolicyConfig& cfg, const Qwen25VLConfig& vlm, const std::string& dir) {
  VLA_CHECK(cfg.vlm_layers <= vlm.text.num_hidden_layers, "VLM '", dir, "' has ",
            vlm.text.num_hidden_layers,
            " decoder layers but the policy asks for features of layer ", cfg.vlm_layers,
            " (vlm_layers / --vlm-layers; 0 = all)");
}

std::string canonical_weight_name(const std::string& n) {
  const std::string lm = "model.language_model.", vis = "model.visual.";
  if (n.rfind(lm, 0) == 0) return "model." + n.substr(lm.size());
  if (n.rfind(vis, 0) == 0) return n.substr(6);
  return n;
}

}  // namespace vla::policy
