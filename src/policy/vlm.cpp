// The policy's slow path: a Qwen2.5-VL engine behind the VlmEncoder interface.
#include "policy/policy.h"

namespace vla::policy {

static Error no_training(const char* what) {
  return Error(str_cat("VLM encoder: ", what, " is not supported by this encoder"));
}
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

#ifndef VLA_POLICY_HAVE_MODELS
bool have_vlm_engine() { return false; }

std::shared_ptr<VlmEncoder> load_vlm(const std::string& dir, const PolicyConfig&) {
  throw Error(str_cat("policy: cannot load the VLM in '", dir,
                      "': this build has no Qwen2.5-VL engine (src/models)"));
}
#endif

}  // namespace vla::policy
