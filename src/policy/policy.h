// vla policy: a whole vision-language-action policy = VLM (Qwen2.5-VL architecture) + sensor
// encoder over the 650 Hz force/torque window + action expert that emits a chunk of H Cartesian
// target deltas, plus the normalisation statistics of the data it was trained on.
//
// Two paths, used from different threads by the runtime:
//   slow: encode(views, instruction) -> VL features            (the VLM; ~Hz)
//   fast: act(vl_features, force_window, proprio) -> [H, 3]    (sensor encoder + expert; 10-100 Hz)
//
// A policy checkpoint is a folder:
//   policy.json          config, normalisation stats, expected VLM fingerprint, provenance
//   policy.safetensors   sensor encoder + action expert weights (names "expert.*")
//   vlm/                 the VLM as a Hugging Face style Qwen2.5-VL folder (optional for tests)
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "core/core.h"
#include "gpu/gpu.h"

namespace vla::policy {

// ---------------------------------------------------------------- configuration
struct PolicyConfig {
  // Sensor stream.
  int sensor_window = kForceWindow;  // samples per window (100 ms at 650 Hz)
  int sensor_channels = 6;           // Fx Fy Fz Tx Ty Tz
  int proprio_dim = 3;               // stage position (m)
  // Actions.
  int horizon = kChunkSize;  // actions per chunk (80 Hz -> 100 ms)
  int action_dim = 3;        // Cartesian target deltas (m)
  // VL features: [tokens, vl_dim] (tokens = 1 for pooled features).
  int vl_dim = 64;
  int vl_tokens = 1;
  // Expert.
  std::string head = "flow";  // "flow" (flow matching transformer) | "mlp" (direct regression)
  int d_model = 128;
  int sensor_dim = 64;  // sensor encoder channels
  int layers = 2;       // transformer layers (flow head) / hidden layers (mlp head)
  int heads = 4;
  int ff_dim = 256;
  int flow_steps = 6;       // Euler integration steps at inference
  float dropout = 0.0f;     // training dropout in the expert
  float vl_dropout = 0.0f;  // probability of zeroing VL features during training (robustness)
  // What encode() expects (set from the VLM / dataset).
  int num_views = 5;
  int image_width = 112;
  int image_height = 112;
  // VLM feature pooling: "last" (last token), "mean" (masked mean), "tokens" (the image tokens of
  // every used view in order, then the last token: fixed slots, so the expert can read where
  // things are; the Qwen2.5-VL tokens carry no absolute position of their own).
  std::string pooling = "last";
  // Order of the VLM prompt's user turn: "images_first" (the views, then the instruction; what
  // transformers' examples do) or "text_first" (the instruction, then the views: the image tokens
  // attend to the instruction, so with `tokens` pooling each slot can say whether the *named*
  // port is there).
  std::string prompt_order = "images_first";
  bool text_first() const { return prompt_order == "text_first"; }
  std::vector<int> use_views;  // indices of the views given to the VLM (empty = all)
  // Decoder layers of the VLM's LLM that produce the features: 0 = all (the last hidden state);
  // K = the first K layers, final norm applied (ForwardOptions::num_layers: GR00T N1's middle-layer
  // features). The prefill stops after layer K, so a smaller K is also faster.
  int vlm_layers = 0;
  // Scene memory: "none" (the expert sees the newest VL features) or "first" (it sees the
  // episode's first VL features, then the newest: [2 * encoder tokens, vl_dim]; vl_tokens counts
  // both). The first frame shows the scene before the arm moved over it: on the needle task the
  // stage hides the named port from the top camera during the final approach, and fresh features
  // alone then no longer say where the port is (docs/training.md). Callers build the input with
  // Policy::expert_features(); the runtime, serve and the evaluators keep the first features of
  // each episode.
  std::string vl_memory = "none";
  bool has_memory() const { return vl_memory == "first"; }
  // Tokens one encode() returns (vl_tokens without the memory half).
  int encoder_tokens() const { return has_memory() ? vl_tokens / 2 : vl_tokens; }

  nlohmann::json to_json() const;
  static PolicyConfig from_json(const nlohmann::json& j);  // missing fields keep defaults
  void validate() const;                                   // throws vla::Error on bad values
};

// Per-channel affine normalisation: (x - mean) / std. Stats are [C] tensors (float32).
struct Normalizer {
  torch::Tensor mean;  // [C]
  torch::Tensor std;   // [C]
  bool defined() const { return mean.defined() && std.defined(); }
  // Identity stats for C channels.
  static Normalizer identity(int channels);
  // Stats over all rows of x [N, C]; std floored at min_std.
  static Normalizer fit(const torch::Tensor& x, double min_std = 1e-6);
  torch::Tensor normalize(const torch::Tensor& x) const;    // broadcast over the last dim
  torch::Tensor denormalize(const torch::Tensor& x) const;  // inverse
  nlohmann::json to_json() const;
  static Normalizer from_json(const nlohmann::json& j, int channels, const std::string& what);
};

struct NormStats {
  Normalizer force;    // [sensor_channels]
  Normalizer proprio;  // [proprio_dim]
  Normalizer action;   // [action_dim]
  nlohmann::json to_json() const;
  static NormStats from_json(const nlohmann::json& j, const PolicyConfig& c);
  static NormStats identity(const PolicyConfig& c);
};

// ---------------------------------------------------------------- modules
// 1-D conv stack over the (normalised) force window: [B, W, C] -> tokens [B, S, sensor_dim].
struct SensorEncoderImpl : torch::nn::Module {
  explicit SensorEncoderImpl(const PolicyConfig& c);
  torch::Tensor forward(const torch::Tensor& window);  // [B, W, C]
  int num_tokens() const { return tokens_; }
  torch::nn::Conv1d c1{nullptr}, c2{nullptr}, c3{nullptr};
  torch::nn::Linear last{nullptr};  // embeds the newest sample as an extra token
  int tokens_ = 0;
};
TORCH_MODULE(SensorEncoder);

// Sensor encoder + action expert with one of two heads. All inputs normalised.
struct ExpertImpl : torch::nn::Module {
  explicit ExpertImpl(const PolicyConfig& c);
  // Conditioning tokens [B, T, d_model] from VL features [B, Tv, vl_dim], force [B, W, C],
  // proprio [B, P].
  torch::Tensor condition(const torch::Tensor& vl, const torch::Tensor& force,
                          const torch::Tensor& proprio);
  // Training loss on normalised action chunks [B, H, A] (MSE for "mlp"; flow-matching velocity
  // MSE for "flow", with t ~ U(0,1) and Gaussian x0 drawn from the torch RNG).
  torch::Tensor loss(const torch::Tensor& vl, const torch::Tensor& force,
                     const torch::Tensor& proprio, const torch::Tensor& actions);
  // Prediction of normalised action chunks [B, H, A] (flow: Euler from x0 = 0, deterministic).
  torch::Tensor predict(const torch::Tensor& vl, const torch::Tensor& force,
                        const torch::Tensor& proprio);
  // Parameter groups for per-group learning rates.
  std::vector<torch::Tensor> sensor_parameters();
  std::vector<torch::Tensor> action_parameters();

  PolicyConfig cfg;
  SensorEncoder sensor{nullptr};
  torch::nn::Linear vl_proj{nullptr}, sensor_proj{nullptr}, proprio_proj{nullptr};
  torch::Tensor cond_pos;  // [T_cond, d_model] learned position embeddings of the condition
  // flow head
  torch::nn::Linear act_in{nullptr}, time_in{nullptr}, act_out{nullptr};
  torch::Tensor act_pos;  // [H, d_model]
  torch::nn::TransformerEncoder trunk{nullptr};
  torch::nn::LayerNorm out_norm{nullptr};
  // mlp head
  torch::nn::Sequential mlp{nullptr};

 private:
  torch::Tensor flow_velocity(const torch::Tensor& cond, const torch::Tensor& x,
                              const torch::Tensor& t);
};
TORCH_MODULE(Expert);

// Named tensors of a module (parameters + buffers) and loading them back with shape checks.
std::vector<std::pair<std::string, torch::Tensor>> named_state(torch::nn::Module& m,
                                                               const std::string& prefix);
void load_state(torch::nn::Module& m, const std::string& prefix,
                const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                const std::string& source);

// Tensor file I/O for policy checkpoints, trainer state and feature caches: src/weights'
// safetensors writer (crash-safe) and validating reader, with JSON metadata values stored as
// strings. load_tensors returns the tensors in name order. Errors name the file and the tensor.
void save_tensors(const std::string& path,
                  const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                  const nlohmann::json& metadata = nlohmann::json::object());
std::vector<std::pair<std::string, torch::Tensor>> load_tensors(const std::string& path);

// ---------------------------------------------------------------- VLM
// The inputs of one padded VLM training batch, built on the CPU by VlmEncoder::prepare_batch
// (safe to call from a background thread while the previous batch trains). Engine-backed
// encoders fill the tensors: input_ids / attention_mask int64 [B, L] (left padded, CPU),
// pixel_values float32 [patches, C*tp*p*p] already on the VLM's device, image_grid_thw int64
// [images, 3] (CPU); other encoders keep only the samples.
struct VlmBatch {
  std::vector<const std::vector<Image>*> views;
  std::vector<std::string> prompts;
  torch::Tensor input_ids, attention_mask, pixel_values, image_grid_thw;
};

// The slow path's encoder. The policy owns one; the default implementation wraps the
// Qwen2.5-VL engine (src/models). Tests may plug in their own.
class VlmEncoder {
 public:
  virtual ~VlmEncoder() = default;
  // views (num_views images) + instruction -> features [tokens, dim] (float32, CPU).
  virtual torch::Tensor encode(const std::vector<Image>& views,
                               const std::string& instruction) const = 0;
  // encode() of several samples -> [B, tokens, dim] (float32, CPU). Engine-backed encoders run
  // one padded forward (same features up to fp rounding); the default calls encode() per sample.
  virtual torch::Tensor encode_batch(const std::vector<const std::vector<Image>*>& views,
                                     const std::vector<std::string>& instructions) const;
  // Readies encode() for this view count and size and this instruction, so that the first call
  // does not age the features it returns (the fast backend builds its fixed-shape plan here:
  // ~0.4 s with CUDA graphs). The runtime's VLM thread calls it before capturing frames. Default:
  // nothing to do.
  virtual void prepare(int views, int height, int width, const std::string& instruction) const;
  virtual int feature_dim() const = 0;
  // Stable identity of the VLM (config + weights hash); recorded by the policy.
  virtual std::string fingerprint() const = 0;
  // Writes the VLM as a folder (HF layout) so that load_vlm() restores it.
  virtual void save(const std::string& dir) const = 0;

  // ---- training hooks (engine-backed encoders implement them; the defaults throw) ----
  // Parameters to adapt in stage 2 / caption pre-training (LoRA factors only once LoRA is on).
  virtual std::vector<torch::Tensor> trainable_parameters();
  virtual void set_training(bool on);
  // encode() with autograd: features [tokens, dim].
  virtual torch::Tensor encode_train(const std::vector<Image>& views,
                                     const std::string& instruction);
  // encode_train() of a batch of samples -> [B, tokens, dim]. The engine runs one left-padded,
  // masked forward (B separate forwards of a tiny VLM are dominated by per-op overhead); the
  // default stacks encode_train() calls. Same features as encode_train() up to fp rounding.
  virtual torch::Tensor encode_train_batch(const std::vector<const std::vector<Image>*>& views,
                                           const std::vector<std::string>& instructions);
  // encode_train_batch() in two halves so that a trainer can overlap them: prepare_batch (CPU:
  // image preprocessing, tokenisation, padding, the copy of pixel_values to the device; const and
  // thread-safe; `views` must outlive the batch) and encode_prepared (the forward with autograd,
  // [B, tokens, dim]). encode_prepared(prepare_batch(v, i)) == encode_train_batch(v, i).
  virtual VlmBatch prepare_batch(const std::vector<const std::vector<Image>*>& views,
                                 const std::vector<std::string>& instructions) const;
  virtual torch::Tensor encode_prepared(const VlmBatch& batch);
  // Mean next-token cross-entropy of `caption` after the views + prompt (teacher forcing).
  virtual torch::Tensor caption_loss(const std::vector<Image>& views, const std::string& prompt,
                                     const std::string& caption);
  // Mean of caption_loss() over a batch, in one padded forward for engine-backed encoders.
  // first_token_target [B, vocab] (optional): a target distribution for the FIRST caption token
  // (soft cross-entropy -sum(p * log q) at that position, averaged with the other tokens' hard
  // cross-entropy; a one-hot target gives exactly the hard loss).
  // Grounding uses it to spread a location token's target over neighbouring grid cells.
  virtual torch::Tensor caption_loss_batch(const std::vector<const std::vector<Image>*>& views,
                                           const std::vector<std::string>& prompts,
                                           const std::vector<std::string>& captions,
                                           const torch::Tensor& first_token_target = {});
  // Token ids of plain text (no chat template; added tokens such as <loc_0042> matched first)
  // and the vocabulary size; the defaults throw.
  virtual std::vector<int64_t> token_ids(const std::string& text) const;
  virtual int64_t vocab_size() const;
  // Greedy caption.
  virtual std::string caption(const std::vector<Image>& views, const std::string& prompt,
                              int max_new_tokens) const;
  // LoRA on the LLM's linear layers whose names end with one of targets; merge folds it in.
  virtual void enable_lora(int rank, double alpha, const std::vector<std::string>& targets);
  virtual void merge_lora();
  // Recomputes fingerprint() after the weights changed.
  virtual void refresh_fingerprint();
  // Moves the VLM's weights to `device` (training on a GPU); encode() outputs stay on CPU as
  // float32, training outputs live on that device. The default only accepts the CPU.
  virtual void to(const torch::Device& device);
};
// Where and how the policy's VLM runs.
struct VlmOptions {
  // "cpu" | "cuda" | "cuda:N" (vla::parse_device).
  std::string device = "cpu";
  // "reference": the trainable LibTorch model (src/models), float32, any image sizes.
  // "fast": the fixed-shape executor (src/gpu: fused weights, CUDA graphs, bf16 on CUDA and
  // float32 on the CPU), inference only; one plan per (views, frame size, prompt), re-planned
  // when they change (a new instruction costs one plan: milliseconds for small VLMs, ~1 s at 3B).
  std::string backend = "reference";
  // fast backend: FP8 (e4m3) GEMMs (gpu::EngineOptions::fp8; compute capability >= 8.9).
  bool fp8 = false;
  // with fp8: static activation scales calibrated on the first frames encoded (one extra eager
  // pass then; gpu::Engine::calibrate_fp8), so every FP8 GEMM runs tensor-wise. Needs fp8.
  bool fp8_static = false;
  // with fp8_static: which attention output projections run in FP8 too, one of
  // gpu::fp8_output_projection_names(): none | vision (the vision tower's proj) | decoder (the
  // decoder's o_proj) | all (faster; with the decoder's the shipped policy succeeds less often:
  // docs/gpu.md). The default is gpu::EngineOptions'. A choice other than the default or none
  // needs fp8_static.
  std::string fp8_output_projections = gpu::to_string(gpu::EngineOptions{}.fp8_output_projections);
  void validate() const;  // throws vla::Error naming the bad field
};
// The backends --vlm-backend accepts.
const std::vector<std::string>& vlm_backends();

// Loads `dir` (a Qwen2.5-VL checkpoint folder; a folder with only config.json gives random
// weights, seeded by the caller) as `options` say. Only the views listed in cfg.use_views are
// given to the VLM (all when empty). Throws vla::Error for a missing config, a bad device or
// backend, or a fast-backend request the checkpoint cannot meet.
std::shared_ptr<VlmEncoder> load_vlm(const std::string& dir, const PolicyConfig& cfg,
                                     const VlmOptions& options = {});

// A VLM folder for `arch_dir` (a checkpoint or a config-only architecture folder such as
// assets/configs/qwen2.5-vl-3b-instruct) that can tokenise prompts: arch_dir itself when it has
// tokenizer.json; otherwise `work_dir` is (re)written with arch_dir's config.json (its special
// token ids replaced by those of tokenizer_dir's config.json, the ids that tokenizer emits),
// arch_dir's processor config and tokenizer_dir's tokenizer files. Returns the folder to load.
std::string vlm_folder_with_tokenizer(const std::string& arch_dir, const std::string& tokenizer_dir,
                                      const std::string& work_dir);

// ---------------------------------------------------------------- the policy
class Policy {
 public:
  // Loads a policy folder. "default" = assets/policy/default, resolved (in order) against
  // $VLA_ASSETS_DIR, the directory of the running executable and its parents, the source tree
  // this binary was built from, and the working directory. Same for "no_reuse".
  // `vlm` says where and how the policy's VLM runs.
  static std::shared_ptr<Policy> load(const std::string& dir_or_default,
                                      const VlmOptions& vlm = {});
  // Resolves "default"/"no_reuse"/a path to an existing policy folder (throws if none).
  static std::string resolve(const std::string& dir_or_default);
  // A fresh (random-init) policy around an expert and stats; vlm may be null (act-only policy).
  Policy(PolicyConfig cfg, Expert expert, NormStats stats, std::shared_ptr<VlmEncoder> vlm,
         nlohmann::json provenance = nlohmann::json::object());
  // A policy around the VLM in `vlm_dir` (all views, `last` pooling, no scene memory) whose
  // action expert is freshly initialised (seeded by the caller, so
  // UNTRAINED) for that VLM's features with `last` pooling and no scene memory; sensor, horizon
  // and norm settings come from `like`. For timing the runtime with a VLM no expert was trained
  // on (e.g. the 3B architecture); its actions are meaningless.
  static std::shared_ptr<Policy> untrained_for(const Policy& like, const std::string& vlm_dir,
                                               const VlmOptions& vlm_options, int num_views,
                                               int image_width, int image_height);
  // Writes the folder crash-safe (files via temp + rename; vlm/ when a VLM is attached).
  void save(const std::string& dir) const;

  // Slow path (VLM): camera views + instruction -> VL features [tokens, vl_dim].
  // Thread-safe w.r.t. act() (they share no mutable state).
  torch::Tensor encode(const std::vector<Image>& views, const std::string& instruction) const;
  // VlmEncoder::prepare for this policy's views and the instruction (no-op without a VLM).
  void prepare_vlm(const std::string& instruction) const;
  // The expert's VL input: with vl_memory "first", the episode's first features then the newest
  // (each [encoder_tokens, vl_dim]) -> [vl_tokens, vl_dim]; otherwise `newest` unchanged.
  torch::Tensor expert_features(const torch::Tensor& first, const torch::Tensor& newest) const;
  // Fast path: VL features [tokens, vl_dim] (or [vl_dim]) + raw force window [window, 6]
  // (newest last, 650 Hz) + proprio [3] -> chunk [horizon, 3] of target deltas (m).
  // Runs under InferenceMode; safe to call concurrently with encode().
  torch::Tensor act(const torch::Tensor& vl_features, const torch::Tensor& force_window,
                    const torch::Tensor& proprio) const;

  int sensor_window() const { return cfg_.sensor_window; }
  int horizon() const { return cfg_.horizon; }
  int num_views() const { return cfg_.num_views; }
  int image_width() const { return cfg_.image_width; }
  int image_height() const { return cfg_.image_height; }
  // {"config", "norm", "vlm_fingerprint", "provenance", "dir"}.
  const nlohmann::json& info() const { return info_; }

  const PolicyConfig& config() const { return cfg_; }
  const NormStats& stats() const { return stats_; }
  Expert expert() const { return expert_; }
  std::shared_ptr<VlmEncoder> vlm() const { return vlm_; }

 private:
  void refresh_info();
  PolicyConfig cfg_;
  Expert expert_;
  NormStats stats_;
  std::shared_ptr<VlmEncoder> vlm_;
  nlohmann::json provenance_;
  nlohmann::json info_;
};

}  // namespace vla::policy
