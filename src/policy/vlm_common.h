// Private to src/policy: what the two VLM encoders (vlm_qwen.cpp: the reference LibTorch model;
// vlm_fast.cpp: the fixed-shape executor of src/gpu) share, so that both give the same features
// and the same fingerprint for the same checkpoint.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "core/core.h"
#include "policy/policy.h"
#include "weights/weights.h"

namespace vla::policy {

// The views given to the VLM: cfg.use_views of `views` (all when empty). Throws vla::Error for an
// index past the views given.
std::vector<Image> pick_views(const std::vector<Image>& views, const PolicyConfig& cfg);

// Last hidden states h [B, L, H] (left padded; mask [B, L] 1 = token) -> features [B, tokens, H]
// as PolicyConfig::pooling says: "last" [B, 1, H], "mean" (masked) [B, 1, H], "tokens" (the
// image tokens, ids == image_token_id, in order, then the last token) [B, n + 1, H].
torch::Tensor pool_features(const torch::Tensor& h, const torch::Tensor& ids,
                            const torch::Tensor& mask, const PolicyConfig& cfg,
                            int64_t image_token_id);

// Stable identity of a VLM: FNV-1a over its parameters as float32 (names in sorted order, each
// fetched through `tensor`) and over what the features depend on besides the weights (pooling,
// views, prompt order, vlm_layers). "qwen25vl-<16 hex digits>".
std::string vlm_fingerprint(const std::vector<std::string>& sorted_names,
                            const std::function<torch::Tensor(const std::string&)>& tensor,
                            const PolicyConfig& cfg);

// Throws vla::Error when cfg.vlm_layers asks for more decoder layers than the VLM in `dir` has.
void check_vlm_layers(const PolicyConfig& cfg, const Qwen25VLConfig& vlm, const std::string& dir);

// The reference model's parameter name of a checkpoint tensor name (transformers 5.x in-memory
// names model.language_model.* / model.visual.* map to model.* / visual.*).
std::string canonical_weight_name(const std::string& checkpoint_name);

// The fast executor's encoder (vlm_fast.cpp): `dir` as load_vlm() takes it.
std::shared_ptr<VlmEncoder> load_fast_vlm(const std::string& dir, const PolicyConfig& cfg,
                                          const VlmOptions& options);

}  // namespace vla::policy
