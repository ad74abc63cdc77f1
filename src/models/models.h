// vla models: Qwen2.5-VL on LibTorch, numerically matching transformers (fp32) and trainable.
//
// Module and parameter names mirror the Hugging Face checkpoint exactly (visual.blocks.N.attn.qkv,
// model.layers.N.self_attn.q_proj, model.embed_tokens, model.norm, lm_head, ...), so
// named_parameters() of a Qwen25VL are the checkpoint's tensor names. transformers 5.x in-memory
// names (model.language_model.*, model.visual.*) are accepted when loading too.
//
// Everything in forward() is differentiable (no inference shortcuts): small VLMs are trained
// with these modules (full fine-tune or LoRA). encode()/generate() are the inference APIs.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/core.h"
#include "vision/vision.h"
#include "weights/weights.h"

namespace vla {

// ---------------------------------------------------------------- building blocks

// nn.Linear with HF names (weight (out, in), bias (out)) plus optional LoRA:
// y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T, with lora_A (rank, in) ~ kaiming-uniform
// and lora_B (out, rank) = 0, so enabling LoRA does not change the output.
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias);
  torch::Tensor forward(const torch::Tensor& x);
  void enable_lora(int64_t rank, double alpha, double dropout = 0.0);
  // Folds scale * B A into weight and removes the LoRA parameters (exact up to fp rounding).
  void merge_lora();
  bool has_lora() const { return lora_A.defined(); }
  // weight + scale * B A (without modifying the module); == weight without LoRA.
  torch::Tensor merged_weight() const;
  int64_t in_features, out_features;
  torch::Tensor weight, bias, lora_A, lora_B;
  double lora_scale = 0.0, lora_dropout = 0.0;
};
TORCH_MODULE(Linear);

// Qwen2 RMSNorm: computed in float32, cast back, times weight.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// SwiGLU MLP: down(silu(gate(x)) * up(x)).
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t dim, int64_t hidden, bool bias);
  torch::Tensor forward(const torch::Tensor& x);
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

// ---------------------------------------------------------------- vision tower

// Index bookkeeping of one vision forward, exposed for tests and the GPU path.
struct VisionLayout {
  torch::Tensor window_index;       // int64 (N / merge^2): merged-patch permutation into windows
  torch::Tensor cu_window_seqlens;  // int64, cumulative patch counts of the windows (deduplicated)
  torch::Tensor cu_seqlens;         // int64, cumulative patch counts of the images (full attention)
  torch::Tensor rotary_pos;         // int64 (N, 2): (row, col) of each patch, merge-grouped order
};
// transformers' Qwen2_5_VisionTransformerPretrainedModel.get_window_index + rot_pos_emb's
// position ids (modeling_qwen2_5_vl.py) for grid_thw (num_images, 3). Throws vla::Error for grids
// that are not positive multiples of the merge size.
VisionLayout vision_layout(const torch::Tensor& grid_thw, const Qwen25VLVisionConfig& cfg);
// The vision tower's 2D rotary tables (Qwen2_5_VisionRotaryEmbedding, theta = cfg.rope_theta):
// cos, sin float32 (N, head_dim), rows in window order (layout.window_index applied to the merge
// groups), angles laid out [row, col, row, col] as transformers' rot_pos_emb + cat((emb, emb)).
std::pair<torch::Tensor, torch::Tensor> vision_rotary(const VisionLayout& layout,
                                                      const Qwen25VLVisionConfig& cfg);
// RMSNorm epsilon of the vision blocks and the merger (transformers hard-codes 1e-6 there).
constexpr double kVisionRmsNormEps = 1e-6;

class VisionAttentionImpl : public torch::nn::Module {
 public:
  VisionAttentionImpl(int64_t dim, int64_t heads);
  // x (N, dim); cos/sin (N, head_dim); attention within the segments of cu_seqlens.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const std::vector<int64_t>& cu_seqlens);
  Linear qkv{nullptr}, proj{nullptr};
  int64_t heads, head_dim;
};
TORCH_MODULE(VisionAttention);

class VisionBlockImpl : public torch::nn::Module {
 public:
  explicit VisionBlockImpl(const Qwen25VLVisionConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const std::vector<int64_t>& cu_seqlens);
  RMSNorm norm1{nullptr}, norm2{nullptr};
  VisionAttention attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(VisionBlock);

class VisionTransformerImpl : public torch::nn::Module {
 public:
  explicit VisionTransformerImpl(const Qwen25VLVisionConfig& cfg);
  // pixel_values (N, C*tp*p*p) from vla::preprocess_images, grid_thw (num_images, 3) ->
  // merged image features (N / merge^2, out_hidden_size), images in order (HF's pooler_output).
  torch::Tensor forward(const torch::Tensor& pixel_values, const torch::Tensor& grid_thw);
  Qwen25VLVisionConfig cfg;
  torch::Tensor patch_weight;  // (hidden, C, tp, p, p), registered as patch_embed.proj.weight
  torch::nn::ModuleList blocks{nullptr};
  RMSNorm merger_ln_q{nullptr};
  Linear merger_fc1{nullptr}, merger_fc2{nullptr};  // merger.mlp.0 / merger.mlp.2
};
TORCH_MODULE(VisionTransformer);

// ---------------------------------------------------------------- language model

// Per-layer key/value cache, (B, kv_heads, T, head_dim) each.
struct KVCache {
  std::vector<torch::Tensor> keys, values;
  int64_t length() const { return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2); }
  void clear() {
    keys.clear();
    values.clear();
  }
};

class TextAttentionImpl : public torch::nn::Module {
 public:
  explicit TextAttentionImpl(const Qwen25VLTextConfig& cfg);
  // x (B, L, H); cos/sin (B, L, head_dim); mask additive (B, 1, L, T) or undefined (= no mask).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, KVCache* cache, size_t layer);
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t heads, kv_heads, head_dim;
};
TORCH_MODULE(TextAttention);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  explicit DecoderLayerImpl(const Qwen25VLTextConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, KVCache* cache, size_t layer);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  TextAttention self_attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

class TextModelImpl : public torch::nn::Module {
 public:
  explicit TextModelImpl(const Qwen25VLTextConfig& cfg);
  // inputs_embeds (B, L, H); position_ids int64 (3, B, L); attention_mask int64 (B, T = cache +
  // L) of 1 (token) / 0 (padding), or undefined (all tokens). num_layers: run only the first K
  // decoder layers (0 = all; see ForwardOptions::num_layers). Returns normed hidden (B, L, H).
  // Throws vla::Error for K past the model's layers or K < all with a KV cache.
  torch::Tensor forward(const torch::Tensor& inputs_embeds, const torch::Tensor& position_ids,
                        const torch::Tensor& attention_mask, KVCache* cache,
                        int64_t num_layers = 0);
  // M-RoPE cos/sin (B, L, head_dim) in `dtype` for position_ids (3, B, L).
  std::pair<torch::Tensor, torch::Tensor> rotary(const torch::Tensor& position_ids,
                                                 torch::ScalarType dtype) const;
  Qwen25VLTextConfig cfg;
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(TextModel);

// M-RoPE tables (transformers' Qwen2_5_VLRotaryEmbedding in float32, then the mrope_section
// selection of apply_multimodal_rotary_pos_emb): position_ids int64 (3, B, L) (t, h, w) ->
// cos, sin (B, L, head_dim) in `dtype`. Throws vla::Error for a malformed mrope_section.
std::pair<torch::Tensor, torch::Tensor> mrope_rotary(const torch::Tensor& position_ids,
                                                     const Qwen25VLTextConfig& cfg,
                                                     torch::ScalarType dtype);

// transformers' Qwen2_5_VLModel.get_rope_index (5.x; images only): input_ids (B, L) with each
// image's <|image_pad|> run expanded to t*h*w / merge^2 tokens, grid_thw (num_images, 3) of the
// batch's images in order (undefined = text only), attention_mask (B, L) 1/0 (undefined = all 1).
// Returns position ids int64 (3, B, L) (padding gets 0) and rope deltas (B) = max position + 1 -
// valid length. Throws vla::Error when the runs and grids disagree.
std::pair<torch::Tensor, torch::Tensor> get_rope_index(const Qwen25VLConfig& cfg,
                                                       const torch::Tensor& input_ids,
                                                       const torch::Tensor& grid_thw,
                                                       const torch::Tensor& attention_mask);

// ---------------------------------------------------------------- prompt codec

// What the model needs from a tokenizer + chat template. from_pretrained() installs one built
// on vla_text (tokenizer.json + the checkpoint's chat template) when that library is present;
// set_prompt_codec() replaces it.
class PromptCodec {
 public:
  virtual ~PromptCodec() = default;
  // Ids of the chat prompt: one user turn holding the images (each <|image_pad|> expanded to
  // image_tokens[i] tokens) followed by `text` (or `text` first when text_first, the order of a
  // content list [{"type": "text"}, {"type": "image"}]), then the assistant generation prompt.
  virtual std::vector<int64_t> encode_chat(const std::string& text,
                                           const std::vector<int64_t>& image_tokens,
                                           bool text_first = false) const = 0;
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
};

// ---------------------------------------------------------------- full model

struct ForwardOptions {
  bool compute_logits = true;
  bool logits_last_only = false;  // only the last position's logits (generation)
  KVCache* cache = nullptr;       // append to / attend over this cache
  torch::Tensor position_ids;     // (3, B, L) override; default: get_rope_index / arange
  // Decoder layers to run (0 = all). K < all gives the features of the model truncated to its
  // first K layers, the final norm applied: what GR00T N1 feeds its action expert (a middle
  // layer of the LLM; gr00t/model/backbone/eagle_backbone.py keeps layers[:select_layer] and reads
  // the last hidden state). Logits then come from that truncated model.
  int64_t num_layers = 0;
};

struct ForwardOutput {
  torch::Tensor last_hidden;   // (B, L, H) after the final norm (of layer num_layers' output)
  torch::Tensor logits;        // (B, L or 1, V) when requested
  torch::Tensor position_ids;  // (3, B, L) used
  torch::Tensor rope_deltas;   // (B) max position + 1 - valid length (0 for text only)
  torch::Tensor image_embeds;  // (num_image_tokens, H) when pixel_values were given
};

// Checkpoint names tried for a parameter of this model: its published (transformers 4.x) name
// first, then transformers 5.x's in-memory name (model.language_model.* / model.visual.*).
std::vector<std::string> checkpoint_name_candidates(const std::string& name);

enum class Pooling { kMean, kLastToken, kAll };
Pooling parse_pooling(const std::string& name);  // "mean" | "last" | "all"
// Last hidden states (B, L, H) of left-padded sequences, mask (B, L) 1 = token -> kMean: masked
// mean (B, H); kLastToken: position L - 1 (B, H); kAll: (B, L, H) unchanged.
torch::Tensor pool_hidden(const torch::Tensor& hidden, const torch::Tensor& mask, Pooling pooling);

struct EncodeOptions {
  Pooling pooling = Pooling::kMean;
  // false: all images in one prompt (one sequence); true: one sequence per image (view), the
  // instruction repeated, left-padded into a batch.
  bool views_as_batch = false;
  int64_t num_layers = 0;  // decoder layers run (0 = all; ForwardOptions::num_layers)
};

struct EncodeResult {
  // kMean / kLastToken: (B, H); kAll: (B, L, H). B = 1 (one sequence) or number of views.
  torch::Tensor features;
  torch::Tensor attention_mask;  // (B, L) int64, 1 = real token (left padding for batches)
  torch::Tensor input_ids;       // (B, L)
  double preprocess_ms = 0, model_ms = 0;
};

struct GenerateOptions {
  int max_new_tokens = 32;
  double temperature = 0.0;             // <= 0: greedy
  int top_k = 0;                        // 0: off
  double top_p = 1.0;                   // 1: off
  std::vector<int64_t> stop_token_ids;  // empty: the config's eos ids
  bool use_stop_tokens = true;          // false: always generate max_new_tokens
  uint64_t seed = 0;
  bool text_first = false;  // prompt text before the images (PromptCodec::encode_chat)
};

struct GenerateResult {
  std::vector<int64_t> token_ids;  // new tokens (stop token included when hit)
  std::string text;                // decoded new tokens (stop token excluded)
  int64_t prompt_tokens = 0;
  std::string stop_reason;  // "stop_token" | "max_new_tokens"
  double prefill_ms = 0, decode_ms = 0;
};

struct LoraOptions {
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  std::vector<std::string> targets = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                      "gate_proj", "up_proj", "down_proj"};
  // Also adapt the vision tower (qkv / proj when any attention target is listed, and the MLPs).
  bool include_vision = false;
};

class Qwen25VLImpl : public torch::nn::Module {
 public:
  // Random initialisation (normal(0, initializer_range) for linears/embeddings, zero biases,
  // unit norms), float32 on CPU; seed with vla::seed_everything first for reproducibility.
  explicit Qwen25VLImpl(const Qwen25VLConfig& cfg, double initializer_range = 0.02);

  // A Hugging Face checkpoint folder (config.json of either layout, model.safetensors or a
  // sharded index, tokenizer / processor files). Weights are loaded strictly: a missing or
  // mis-shaped tensor is an error naming it (and both shapes); unexpected tensors are warned.
  static std::shared_ptr<Qwen25VLImpl> from_pretrained(const std::string& dir,
                                                       torch::ScalarType dtype = torch::kFloat32,
                                                       torch::Device device = torch::kCPU);
  void load_weights(const WeightStore& store, bool strict = true);
  // Writes an HF-loadable folder: config.json + generation_config.json, model.safetensors
  // (LoRA merged on the fly, base weights untouched), and the tokenizer / processor / chat
  // template files copied from `assets_dir` (default: the folder this model was loaded from).
  void save_pretrained(const std::string& dir, const std::string& assets_dir = "") const;

  // ---- lower level (trainable)
  // Image features scattered into the <|image_pad|> positions of embed_tokens(input_ids).
  torch::Tensor embed(const torch::Tensor& input_ids, const torch::Tensor& pixel_values,
                      const torch::Tensor& grid_thw, torch::Tensor* image_embeds = nullptr);
  // input_ids (B, L) int64; attention_mask (B, L) (undefined = all ones); pixel_values /
  // grid_thw of all images of the batch in order (undefined = text only).
  ForwardOutput forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                        const torch::Tensor& pixel_values = {}, const torch::Tensor& grid_thw = {},
                        const ForwardOptions& options = {});
  // vla::get_rope_index with this model's config.
  std::pair<torch::Tensor, torch::Tensor> get_rope_index(const torch::Tensor& input_ids,
                                                         const torch::Tensor& grid_thw,
                                                         const torch::Tensor& attention_mask) const;
  torch::Tensor logits_from_hidden(const torch::Tensor& hidden);
  // Greedy / sampled continuation of one prompt (input_ids (1, L)); the token loop with KV cache.
  std::vector<int64_t> generate_ids(const torch::Tensor& input_ids,
                                    const torch::Tensor& pixel_values,
                                    const torch::Tensor& grid_thw, const GenerateOptions& options,
                                    GenerateResult* stats = nullptr);

  // ---- high level (inference; no autograd)
  EncodeResult encode(const std::vector<Image>& images, const std::string& instruction,
                      const EncodeOptions& options = {});
  GenerateResult generate(const std::vector<Image>& images, const std::string& prompt,
                          const GenerateOptions& options = {});
  // Prompt ids for the images / views, as encode() builds them (text_first: see PromptCodec).
  std::vector<int64_t> prompt_ids(const std::string& text, const std::vector<int64_t>& image_tokens,
                                  bool text_first = false) const;

  // ---- LoRA
  // Enables LoRA on matching Linear layers; returns how many layers were adapted.
  int apply_lora(const LoraOptions& options = {});
  std::vector<torch::Tensor> lora_parameters();
  void merge_lora();
  // requires_grad = false on every non-LoRA parameter.
  void freeze_base();

  const Qwen25VLConfig& config() const { return cfg_; }
  const ImagePreprocessConfig& image_config() const { return image_cfg_; }
  void set_image_config(const ImagePreprocessConfig& c) { image_cfg_ = c; }
  void set_prompt_codec(std::shared_ptr<PromptCodec> codec) { codec_ = std::move(codec); }
  const PromptCodec* prompt_codec() const { return codec_.get(); }
  const std::string& source_dir() const { return source_dir_; }
  torch::ScalarType dtype() const;
  torch::Device device() const;
  // Parameters by checkpoint name (LoRA parameters excluded).
  std::map<std::string, torch::Tensor> state_tensors() const;

  VisionTransformer visual{nullptr};
  TextModel model{nullptr};
  Linear lm_head{nullptr};  // null when embeddings are tied

 private:
  Qwen25VLConfig cfg_;
  ImagePreprocessConfig image_cfg_;
  std::shared_ptr<PromptCodec> codec_;
  std::string source_dir_;
};
TORCH_MODULE(Qwen25VL);

// Samples / argmaxes one token from logits (V) with HF's warper order: temperature, top-k, top-p.
int64_t sample_token(const torch::Tensor& logits, const GenerateOptions& options,
                     torch::Generator* gen);

// Builds a PromptCodec from a checkpoint folder through vla_text (tokenizer.json + chat
// template); nullptr when vla_text is not part of the build.
std::shared_ptr<PromptCodec> make_prompt_codec(const std::string& dir, const Qwen25VLConfig& cfg);

}  // namespace vla
