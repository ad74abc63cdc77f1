// vla train: training data from recorded episodes, the VL feature cache, the feature-reuse
// schedule, the trainer (AdamW, warmup + cosine LR, grad clipping, per-group LRs, exact resume),
// stage 1 (VLM frozen, cached features) / stage 2 (VLM adapted: LoRA or full fine-tune) and
// caption pre-training of a small VLM on simulator ground truth.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/core.h"
#include "dataset/dataset.h"
#include "policy/policy.h"

namespace vla::train {

// ---------------------------------------------------------------- feature reuse
// A training pair: the VL feature computed at feature_tick is used with the sensor window, proprio
// and action targets of target_tick (target_tick - feature_tick = staleness in 100 ms ticks).
struct TickPair {
  int feature_tick = 0;
  int target_tick = 0;
  bool operator==(const TickPair& o) const {
    return feature_tick == o.feature_tick && target_tick == o.target_tick;
  }
};
// Fixed reuse (`--vlm-reuse-count N`): the feature of every tick t is paired with ticks
// t .. t+N-1 (clipped to the episode), so N = 1 is "fresh features only".
std::vector<TickPair> reuse_pairs(int num_ticks, int reuse_count);
// Random staleness: one pair per target tick t, with the feature tick drawn uniformly from
// max(0, t-N+1) .. t.
std::vector<TickPair> random_staleness_pairs(int num_ticks, int reuse_count, std::mt19937_64& rng);

// ---------------------------------------------------------------- learning rate
// Linear warmup over `warmup` steps to 1, then cosine decay to min_factor at `total`.
double lr_factor(int64_t step, int64_t warmup, int64_t total, double min_factor = 0.05);

// ---------------------------------------------------------------- per-tick data
// Everything the expert needs from one episode, cut at 10 Hz ticks.
struct EpisodeTicks {
  std::string name, instruction;
  int num_ticks = 0;
  torch::Tensor force;    // [ticks, window, 6] newest last (zero padded before t = 0)
  torch::Tensor proprio;  // [ticks, 3] stage position when the tick's first action began
  torch::Tensor actions;  // [ticks, horizon, 3] (zero padded past the end: hold)
};
EpisodeTicks cut_ticks(const dataset::Episode& ep, int window, int horizon);

// ---------------------------------------------------------------- VL feature cache
// Cache folder: index.json (vlm fingerprint, feature shape, per-episode keys) and one
// features_<episode>.safetensors per episode ([ticks, tokens, dim] float32).
// key(episode, tick) = hash(vlm fingerprint | hashes of the tick's views | prompt).
std::string hash_bytes(const void* data, size_t size);  // 64-bit FNV-1a, 16 hex chars
std::string image_hash(const Image& img);
std::string feature_key(const std::string& vlm_fingerprint, const std::vector<Image>& views,
                        const std::string& prompt);

class FeatureCache {
 public:
  // Encodes every tick of every episode of `ds` with `vlm` and writes the cache to out_dir
  // (crash-safe; episodes already cached with the same keys are kept).
  static void build(const dataset::Dataset& ds, policy::VlmEncoder& vlm, const std::string& out_dir,
                    bool progress = true);
  static FeatureCache open(const std::string& dir);
  // Refuses (vla::Error naming the episode and tick) a cache made by another VLM, or whose keys
  // do not match the dataset's images/prompt (stale). check_images=false only checks the VLM and
  // the instruction (fast).
  void validate(const dataset::Dataset& ds, const std::string& vlm_fingerprint,
                bool check_images = true) const;
  // Features of an episode: [ticks, tokens, dim].
  torch::Tensor features(const std::string& episode) const;
  const std::string& vlm_fingerprint() const { return fingerprint_; }
  const nlohmann::json& index() const { return index_; }

 private:
  std::string dir_, fingerprint_;
  nlohmann::json index_;
};

// ---------------------------------------------------------------- captions
// Ground-truth scene caption of episode `ep` at `tick`: where each coloured port is (coarse grid
// words), which port is the target and where the needle is. lang: "en" or "ko".
std::string scene_caption(const dataset::Episode& ep, int tick, const std::string& lang);
const std::string& caption_prompt(const std::string& lang);

// ---------------------------------------------------------------- loss curve
// Line plot of the loss (log scale when it spans > 1 decade) with axes and tick marks.
Image plot_loss_curve(const std::vector<double>& steps, const std::vector<double>& losses,
                      int width = 640, int height = 360);

// ---------------------------------------------------------------- trainer
struct TrainOptions {
  std::string dataset;      // dataset folder (vla datagen)
  std::string out;          // output policy folder
  std::string stage = "1";  // "1" (cached features, VLM frozen) | "2" (VLM adapted) | "caption"
  std::string cache;        // feature cache (stage 1)
  std::string vlm;          // VLM folder (stage 1: the one the cache was made with; caption: init)
  std::string init_policy;  // stage 2: start from this policy folder (its expert + VLM)
  policy::PolicyConfig policy;  // expert config (stage 1)
  int steps = 2000;
  int batch = 64;
  int warmup = 100;
  double lr_sensor = 5e-4, lr_action = 1e-4, lr_vl = 1e-5, lr_min_factor = 0.05;
  double weight_decay = 0.01, grad_clip = 1.0;
  int reuse_count = 1;  // --vlm-reuse-count
  bool random_staleness = false;
  double holdout = 0.1;           // fraction of episodes held out (the last ones)
  bool success_only = true;       // train on successful demonstrations only
  std::string finetune = "lora";  // stage 2: "lora" | "full"
  int lora_rank = 8;
  double lora_alpha = 16;
  std::vector<std::string> lora_targets = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                           "gate_proj", "up_proj", "down_proj"};
  int checkpoint_every = 500;  // steps between resumable checkpoints (out/checkpoint)
  bool resume = false;
  uint64_t seed = 0;
  int threads = 0;
  int eval_every = 0;  // steps between held-out evaluations (0 = end only)
  bool progress = true;
  int max_episodes = 0;  // 0 = all
  int caption_eval_episodes = 8;
  int stop_after = 0;  // >0: checkpoint and stop at this step, as if interrupted (tests, jobs)  //
                       // caption stage: held-out episodes captioned for METEOR/BLEU
  // Tests/tools: use this encoder instead of loading opt.vlm / the init policy's VLM.
  std::shared_ptr<policy::VlmEncoder> vlm_override;
};

struct TrainReport {
  int64_t steps = 0;
  double final_loss = 0, samples_per_s = 0, seconds = 0;
  double holdout_loss = -1;  // mean loss on held-out episodes (-1: none)
  std::vector<double> loss_steps, losses;
  nlohmann::json extra = nlohmann::json::object();  // stage-specific (e.g. caption METEOR/BLEU)
  nlohmann::json to_json() const;
};

// Runs stage 1 / 2 / caption pre-training as described by opt; writes opt.out.
TrainReport train(const TrainOptions& opt);

// Splits episode indices into train / held-out (the last ceil(holdout * n) episodes).
void split_episodes(size_t n, double holdout, std::vector<size_t>* train,
                    std::vector<size_t>* held);

// Exact-resume helpers (exposed for tests): RNG state of torch's default CPU generator.
torch::Tensor torch_rng_state();
void set_torch_rng_state(const torch::Tensor& state);

}  // namespace vla::train
