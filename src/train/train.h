// vla train: training data from recorded episodes, the VL feature cache, the feature-reuse
// schedule, the trainer (AdamW, warmup + cosine LR, grad clipping, per-group LRs, exact resume),
// stage 1 (VLM frozen, cached features) / stage 2 (VLM adapted: LoRA or full fine-tune) and
// caption pre-training of a small VLM on simulator ground truth.
#pragma once

#include <torch/torch.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
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
// Random staleness: the feature tick of target tick t drawn uniformly from max(0, t-N+1) .. t
// (what the trainer draws per sample), and one such pair per target tick of an episode.
TickPair random_staleness_pair(int target_tick, int reuse_count, std::mt19937_64& rng);
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

// ---------------------------------------------------------------- grounding
// Location tokens: <loc_NNNN> names a cell of a 2 mm grid over the port area of the table
// (world x -70..70 mm, y -50..50 mm; NNNN = iy * 71 + ix), the PaliGemma / Kosmos-2 way of putting
// places into a language model's vocabulary. The tokens are added to the VLM's tokenizer by
// scripts/make_vlm_init.py. Positions are absolute (table frame), not relative to the needle, so
// a VL feature stays right however old it is (the ports do not move; proprio says where the
// needle is now).
struct LocationGrid {
  static constexpr int kNx = 71, kNy = 51, kCells = kNx * kNy;
  static constexpr double kX0 = -0.070, kY0 = -0.050, kCell = 0.002;  // m
  int64_t first_id = 0;                                               // token id of <loc_0000>
  // The grid of this VLM's tokenizer, or nullopt when it has no location tokens.
  static std::optional<LocationGrid> find(const policy::VlmEncoder& vlm);
  static std::string cell_token(int cell);
  static int cell(double x, double y);            // nearest cell (clamped to the grid), metres
  static std::array<double, 2> centre(int cell);  // metres
  std::string token(double x, double y) const;
  // Target distribution over the vocabulary: a Gaussian (sigma metres) over the grid cells.
  torch::Tensor soft_target(double x, double y, int64_t vocab, double sigma) const;
  // The first <loc_NNNN> in text -> its cell centre (metres).
  static std::optional<std::array<double, 2>> parse(const std::string& text);
};
// True when text holds non-ASCII bytes (the Korean phrasings).
bool is_korean(const std::string& text);
// Grounding answer to the episode's instruction: the location token of the instructed port, then
// scene_caption() in the instruction's language.
std::string grounding_caption(const dataset::Episode& ep, int tick, const LocationGrid& grid);

// Dense grounding target (CenterNet-style keypoints, Zhou et al. 2019 "Objects as Points", with
// bilinear instead of Gaussian splats): each port's pixel in view `view` (PortMeta::pixels) is
// spread over the 4 nearest centres of the grid_h x grid_w merged-token grid with bilinear
// weights, so sum_i g_i * centre_i recovers the pixel exactly and a linear map of per-token
// features can read it. Returns float32 [grid_h * grid_w, 1 + colours.size()] in the LLM's
// raster token order: channel 0 = the instructed port, channel 1 + c = the port of colour
// colours[c] (all zero when the layout has none). Throws when the episode has no pixel labels
// (recorded before they existed: re-run `vla datagen`).
torch::Tensor dense_grounding_target(const dataset::Episode& ep, int view, int grid_h, int grid_w,
                                     const std::vector<std::string>& colours);

// Localisation probe: VL features of the first frame of each episode (the features the expert
// receives, i.e. with the policy's pooling and views) -> ridge regression to the instructed
// port's x/y, fitted on the training episodes, evaluated on the held-out ones (the last
// ceil(holdout * n)). Errors are mean Euclidean distances in mm. ridge > 0 fixes the penalty on
// the standardised features; ridge <= 0 picks it from {1e-2 ... 1e5} on the last fifth of the
// training episodes (the held-out episodes never choose anything).
struct ProbeReport {
  int train_layouts = 0, heldout_layouts = 0, feature_dim = 0;
  double ridge = 0;  // the penalty used
  double train_error_mm = 0, heldout_error_mm = 0, heldout_x_mm = 0, heldout_y_mm = 0;
  double baseline_mm = 0;  // predicting the training mean
  nlohmann::json to_json() const;
};
ProbeReport localisation_probe(policy::VlmEncoder& vlm, const dataset::Dataset& ds,
                               int max_episodes = 0, double holdout = 0.2, double ridge = 0.0,
                               bool progress = true);

// ---------------------------------------------------------------- loss curve
// Chart of the loss per optimizer step (src/plot; log scale when it spans > 1 decade).
Image plot_loss_curve(const std::vector<double>& steps, const std::vector<double>& losses,
                      int width = 640, int height = 360);

// ---------------------------------------------------------------- trainer
struct TrainOptions {
  std::string dataset;      // dataset folder (vla datagen)
  std::string out;          // output policy folder
  std::string stage = "1";  // "1" | "2" | "caption" | "grounding"
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
  std::string device = "cpu";     // "cpu" | "cuda" | "cuda:N": where the trained modules run
  double location_sigma = 0.002;  // grounding: std (m) of the location token's soft target
  // ... starting this wide and narrowing linearly to location_sigma over the first half of the
  // steps: a sharp 2-D target over 3621 cells gives almost no gradient at a uniform prediction.
  double location_sigma_start = 0.02;
  // grounding: weight of the localisation head's loss (0 = off). A linear layer from the pooled
  // features the expert receives ([tokens * dim]) to the named port's x/y is trained with the VLM
  // (MSE on x/y in units of 5 cm) and dropped afterwards: it shapes the features so that the port
  // can be read from them linearly, which the location tokens alone did not do (docs/training.md).
  double locate_weight = 0.0;
  // grounding: weight of the dense per-token target (dense_grounding_target; needs `tokens`
  // pooling): a linear map of every image token of the first used view is trained to say how much
  // of the instructed port and of each colour's port lies at its centre, a local target for each
  // token instead of one x/y for the whole image. The head is dropped after training.
  double dense_weight = 0.0;
  double caption_weight = 1.0;  // grounding: weight of the location-token + caption loss
  int stop_after = 0;  // >0: checkpoint and stop at this step, as if interrupted (tests, jobs)
  // When it becomes true (the CLI sets it on SIGINT / SIGTERM, e.g. from `timeout`): checkpoint,
  // then finish as after the last step -- evaluation and the model saved as trained so far, the
  // report marked "interrupted" -- so a killed job keeps its work and `--resume` continues it.
  const std::atomic<bool>* stop_requested = nullptr;
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
