// The trainer: one loop (train_loop) shared by the stages, each a TrainStage (make_stage): stage 1
// (cached VL features), stage 2 (VLM adapted), caption and grounding pre-training.
#include <atomic>
#include <filesystem>
#include <future>
#include <sstream>

#include "eval/eval.h"
#include "train/train.h"

namespace vla::train {

namespace fs = std::filesystem;
using policy::Expert;
using policy::Normalizer;
using policy::NormStats;
using policy::PolicyConfig;
using policy::VlmBatch;

nlohmann::json TrainReport::to_json() const {
  return {{"steps", steps},     {"final_loss", final_loss},     {"samples_per_s", samples_per_s},
          {"seconds", seconds}, {"holdout_loss", holdout_loss}, {"extra", extra}};
}

torch::Tensor torch_rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_torch_rng_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

namespace {

struct TrainingDraw {
  int ep = 0, feature_tick = 0, target_tick = 0;
  std::string lang;  // caption stage
};
using Batch = std::vector<TrainingDraw>;

// Keeps only the views the VLM uses (others become empty images, saving memory); the encoder
// picks cfg.use_views from the full-size vector.
std::vector<Image> select_views(const std::vector<Image>& all, const std::vector<int>& use) {
  if (use.empty()) return all;
  std::vector<Image> out(all.size());
  for (int v : use) {
    VLA_CHECK(v < static_cast<int>(all.size()), "view index ", v, " but only ", all.size(),
              " views recorded");
    out[v] = all[v];
  }
  return out;
}

// Everything one run trains on.
struct Data {
  std::vector<EpisodeTicks> ticks;
  std::vector<dataset::Episode> episodes;              // metadata (+ frames for stage 2 / caption)
  std::vector<std::vector<std::vector<Image>>> views;  // [ep][tick][view] (stage 2 / caption)
  std::vector<bool> held;                              // per episode
  std::vector<std::vector<TickPair>> pairs;            // reuse_pairs per episode
};

void set_group_lrs(torch::optim::AdamW& opt, const std::vector<double>& base, double factor) {
  for (size_t g = 0; g < opt.param_groups().size(); ++g)
    static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[g].options()).lr(base[g] * factor);
}

struct Checkpoint {
  std::string dir;
  void save(int64_t step, const std::vector<torch::Tensor>& params, torch::optim::AdamW& opt,
            const std::mt19937_64& rng, const std::vector<double>& ls,
            const std::vector<double>& lv) const {
    const std::string tmp = dir + ".tmp", old = dir + ".old";
    vla::remove_tree(tmp);
    make_dirs(tmp);
    std::vector<std::pair<std::string, torch::Tensor>> t;
    for (size_t i = 0; i < params.size(); ++i) t.emplace_back(str_cat("p", i), params[i]);
    t.emplace_back("torch_rng", torch_rng_state());
    policy::save_tensors(tmp + "/params.safetensors", t);
    torch::save(opt, tmp + "/optimizer.pt");
    std::ostringstream rs;
    rs << rng;
    write_json_atomic(tmp + "/state.json",
                      {{"step", step}, {"rng", rs.str()}, {"loss_steps", ls}, {"losses", lv}});
    vla::remove_tree(old);
    if (fs::exists(dir)) fs::rename(dir, old);
    fs::rename(tmp, dir);
    vla::remove_tree(old);
  }
  int64_t load(const std::vector<torch::Tensor>& params, torch::optim::AdamW& opt,
               std::mt19937_64& rng, std::vector<double>& ls, std::vector<double>& lv) const {
    VLA_CHECK(file_exists(dir + "/state.json"), "resume: no checkpoint in ", dir);
    auto st = read_json(dir + "/state.json");
    auto t = policy::load_tensors(dir + "/params.safetensors");
    std::map<std::string, torch::Tensor> by;
    for (auto& kv : t) by[kv.first] = kv.second;
    torch::NoGradGuard ng;
    for (size_t i = 0; i < params.size(); ++i) {
      auto it = by.find(str_cat("p", i));
      VLA_CHECK(it != by.end() && it->second.sizes() == params[i].sizes(), dir,
                ": checkpoint does not match the model (parameter ", i, ")");
      params[i].copy_(it->second);
    }
    VLA_CHECK(by.count("torch_rng"), dir, ": checkpoint has no RNG state");
    set_torch_rng_state(by["torch_rng"]);
    torch::load(opt, dir + "/optimizer.pt");
    std::istringstream rs(st.at("rng").get<std::string>());
    rs >> rng;
    ls = st.at("loss_steps").get<std::vector<double>>();
    lv = st.at("losses").get<std::vector<double>>();
    return st.at("step").get<int64_t>();
  }
};

NormStats fit_stats(const Data& d, const PolicyConfig& cfg) {
  std::vector<torch::Tensor> f, p, a;
  for (size_t e = 0; e < d.ticks.size(); ++e) {
    if (d.held[e]) continue;
    f.push_back(d.episodes[e].force.narrow(1, 1, 6));
    p.push_back(d.ticks[e].proprio);
    a.push_back(d.ticks[e].actions.reshape({-1, 3}));
  }
  VLA_CHECK(!f.empty(), "training: no training episodes");
  NormStats s = NormStats::identity(cfg);
  s.force = Normalizer::fit(torch::cat(f), 1e-3);
  s.proprio = Normalizer::fit(torch::cat(p), 1e-4);
  s.action = Normalizer::fit(torch::cat(a), 1e-5);
  return s;
}

// ---------------------------------------------------------------- the stages
// What a run's stage and the shared loop both use.
struct TrainRun {
  explicit TrainRun(const TrainOptions& o) : opt(o), cfg(o.policy), vlm(o.vlm_override) {}
  const TrainOptions& opt;
  dataset::Dataset ds;
  PolicyConfig cfg;
  std::shared_ptr<policy::VlmEncoder> vlm;
  nlohmann::json provenance;
  Data d;
  std::vector<size_t> tr, ho;  // training / held-out episodes (indices into d)
  torch::Device device = torch::kCPU;
};

// Optimizer parameter groups with their base learning rates, and all their tensors in group order
// (the order checkpoints store them in).
struct ParamGroups {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  std::vector<double> base_lr;
  std::vector<torch::Tensor> all;
  void add(const std::vector<torch::Tensor>& params, double lr, double weight_decay) {
    groups.emplace_back(params, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(lr).weight_decay(weight_decay)));
    base_lr.push_back(lr);
    all.insert(all.end(), params.begin(), params.end());
  }
};

// One stage of training: train() calls the setup hooks in the order declared, train_loop() the
// training hooks, then save(). The order is part of a seed's run: creating modules (the expert,
// LoRA factors, grounding heads) draws from torch's RNG.
class TrainStage {
 public:
  explicit TrainStage(TrainRun& r) : r_(r), opt_(r.opt) {}
  virtual ~TrainStage() = default;

  // ---- setup
  // Model pieces needed before the data: the VLM when one is given.
  virtual void load_models() {
    if (!r_.vlm && !opt_.vlm.empty()) r_.vlm = policy::load_vlm(opt_.vlm, r_.cfg);
  }
  virtual bool skips_failures() const { return opt_.success_only; }
  virtual bool needs_frames() const { return true; }
  // Stage 1's feature cache: opened once the episodes are chosen, read as each one loads.
  virtual void open_features() {}
  virtual void read_features(const dataset::Episode&, const EpisodeTicks&) {}
  // What the loaded data sizes (stage 1: the expert).
  virtual void build_model() {}
  // Modules move to r_.device before their parameters are collected (to() keeps the tensors).
  virtual void to_device() = 0;
  virtual void add_parameters(ParamGroups& p) = 0;

  // ---- training
  // Draws what a sample needs beyond its episode and tick (staleness, caption language).
  virtual void complete_draw(TrainingDraw& s, std::mt19937_64& g, bool held) const = 0;
  // Whether the loss runs the VLM's forward; prepare() is then its CPU half, which the loop runs
  // one batch ahead on a background thread.
  virtual bool prepares_vlm() const { return false; }
  virtual VlmBatch prepare(const Batch&) const { return {}; }
  // Loss of a training batch (pre: the batch's prepare(), when made ahead).
  virtual torch::Tensor loss(const Batch& b, const VlmBatch* pre, int64_t step) = 0;
  virtual void set_training(bool on) = 0;
  virtual double holdout_metric(const Batch& b, int64_t step) = 0;

  // ---- outputs (saved from the CPU, where inference runs); may add to rep.extra
  virtual void save(TrainReport& rep) = 0;

 protected:
  // VLM inputs of a batch: each sample's views at its feature tick (stage 2) or target tick
  // (grounding), with the episode's instruction.
  VlmBatch prepare_views(const Batch& b, bool at_feature_tick) const {
    std::vector<const std::vector<Image>*> v;
    std::vector<std::string> ins;
    for (auto& s : b) {
      v.push_back(&r_.d.views[s.ep][at_feature_tick ? s.feature_tick : s.target_tick]);
      ins.push_back(r_.d.ticks[s.ep].instruction);
    }
    return r_.vlm->prepare_batch(v, ins);
  }
  // A trained VLM made ready to save: on the CPU, in inference mode, its fingerprint renewed.
  void finish_vlm(bool merge_lora) {
    r_.vlm->to(torch::kCPU);
    r_.vlm->set_training(false);
    if (merge_lora) r_.vlm->merge_lora();
    r_.vlm->refresh_fingerprint();
  }

  TrainRun& r_;
  const TrainOptions& opt_;
};

// Stages 1 and 2: the action expert learns from VL features, force windows and proprio; the output
// is a policy folder.
class ExpertStage : public TrainStage {
 public:
  using TrainStage::TrainStage;

  void complete_draw(TrainingDraw& s, std::mt19937_64& g, bool held) const override {
    if (held || opt_.reuse_count <= 1) return;
    if (opt_.random_staleness) {
      s.feature_tick = random_staleness_pair(s.target_tick, opt_.reuse_count, g).feature_tick;
    } else {
      // Fixed reuse: a pair drawn uniformly from reuse_pairs(ticks, N) of the episode.
      const auto& pairs = r_.d.pairs[s.ep];
      const auto& pr = pairs[std::uniform_int_distribution<size_t>(0, pairs.size() - 1)(g)];
      s.feature_tick = pr.feature_tick;
      s.target_tick = pr.target_tick;
    }
  }
  torch::Tensor loss(const Batch& b, const VlmBatch* pre, int64_t) override {
    auto x = expert_batch(b, true, pre);
    if (r_.cfg.vl_dropout > 0 && expert_->is_training()) {
      auto keep =
          (torch::rand({x.vl.size(0), 1, 1}) >= r_.cfg.vl_dropout).to(r_.device, torch::kFloat32);
      x.vl = x.vl * keep;
    }
    return expert_->loss(x.vl, x.force, x.proprio, x.actions);
  }
  void set_training(bool on) override { expert_->train(on); }
  // MSE of the deterministic prediction (normalised actions, fresh features).
  double holdout_metric(const Batch& b, int64_t) override {
    auto x = expert_batch(b, false);
    return torch::mse_loss(expert_->predict(x.vl, x.force, x.proprio), x.actions).item<double>();
  }

 protected:
  // VL features of a batch ([B, tokens, dim] on the device).
  virtual torch::Tensor vl_features(const Batch& b, bool grad, const VlmBatch* pre) = 0;
  void add_expert_parameters(ParamGroups& p) {
    p.add(expert_->sensor_parameters(), opt_.lr_sensor, opt_.weight_decay);
    p.add(expert_->action_parameters(), opt_.lr_action, opt_.weight_decay);
    expert_->train();
  }
  void save_policy() const {
    policy::Policy pol(r_.cfg, expert_, stats_, r_.vlm, r_.provenance);
    pol.save(opt_.out);
  }

  Expert expert_{nullptr};
  NormStats stats_;

 private:
  struct ExpertBatch {
    torch::Tensor vl, force, proprio, actions;
  };
  // Expert inputs of a batch: VL features, normalised force windows, proprio and action targets.
  ExpertBatch expert_batch(const Batch& b, bool grad, const VlmBatch* pre = nullptr) {
    std::vector<torch::Tensor> f, p, a;
    for (auto& s : b) {
      const auto& tk = r_.d.ticks[s.ep];
      f.push_back(tk.force[s.target_tick]);
      p.push_back(tk.proprio[s.target_tick]);
      a.push_back(tk.actions[s.target_tick]);
    }
    // Batches are assembled and normalised on the CPU, then moved in one copy each.
    return ExpertBatch{vl_features(b, grad, pre),
                       stats_.force.normalize(torch::stack(f)).to(r_.device),
                       stats_.proprio.normalize(torch::stack(p)).to(r_.device),
                       stats_.action.normalize(torch::stack(a)).to(r_.device)};
  }
};

// Stage 1: the VLM frozen, its features read from the feature cache.
class CachedFeatureStage : public ExpertStage {
 public:
  using ExpertStage::ExpertStage;

  bool needs_frames() const override { return false; }
  void open_features() override {
    VLA_CHECK(!opt_.cache.empty(), "train --stage 1 needs --cache DIR (make it with `vla cache`)");
    cache_ = std::make_unique<FeatureCache>(FeatureCache::open(opt_.cache));
    const std::string want = r_.vlm ? r_.vlm->fingerprint() : cache_->vlm_fingerprint();
    cache_->validate(r_.ds, want, /*check_images=*/false);
    r_.provenance["cache"] = fs::absolute(opt_.cache).string();
  }
  void read_features(const dataset::Episode& ep, const EpisodeTicks& ticks) override {
    auto f = cache_->features(ep.name);
    VLA_CHECK(f.dim() == 3 && f.size(0) >= ticks.num_ticks, "feature cache: episode ", ep.name,
              " has features ", f.sizes(), " for ", ticks.num_ticks, " ticks");
    feats_.push_back(f);
  }
  void build_model() override {
    auto& cfg = r_.cfg;
    cfg.vl_tokens = static_cast<int>(feats_[0].size(1)) * (cfg.has_memory() ? 2 : 1);
    cfg.vl_dim = static_cast<int>(feats_[0].size(2));
    cfg.validate();
    stats_ = fit_stats(r_.d, cfg);
    expert_ = Expert(cfg);
  }
  void to_device() override { expert_->to(r_.device); }
  void add_parameters(ParamGroups& p) override { add_expert_parameters(p); }
  void save(TrainReport&) override {
    expert_->to(torch::kCPU);
    save_policy();
  }

 protected:
  torch::Tensor vl_features(const Batch& b, bool, const VlmBatch*) override {
    std::vector<torch::Tensor> vl;
    for (auto& s : b)  // scene memory: the episode's first features, then the (stale) newest
      vl.push_back(r_.cfg.has_memory()
                       ? torch::cat({feats_[s.ep][0], feats_[s.ep][s.feature_tick]}, 0)
                       : feats_[s.ep][s.feature_tick]);
    return torch::stack(vl).to(r_.device);
  }

 private:
  std::unique_ptr<FeatureCache> cache_;
  std::vector<torch::Tensor> feats_;  // per episode: [ticks, tokens, dim]
};

// Stage 2: the VLM adapted (LoRA or full fine-tune) with the expert of a stage-1 policy.
class AdaptedVlmStage : public ExpertStage {
 public:
  using ExpertStage::ExpertStage;

  void load_models() override {
    VLA_CHECK(!opt_.init_policy.empty(), "train --stage 2 needs --init POLICY (a stage-1 policy)");
    auto init = policy::Policy::load(opt_.init_policy);
    r_.cfg = init->config();
    stats_ = init->stats();
    expert_ = init->expert();
    if (!r_.vlm) r_.vlm = init->vlm();
    VLA_CHECK(r_.vlm, "train --stage 2: the init policy has no VLM (vlm/)");
    VLA_CHECK(!r_.cfg.has_memory(),
              "train --stage 2: policies with vl_memory 'first' train in stage 1 only (the VLM "
              "would run twice per sample); train the VLM first, then stage 1");
    r_.provenance["init_policy"] = init->info();
  }
  void to_device() override {
    expert_->to(r_.device);
    r_.vlm->to(r_.device);
  }
  void add_parameters(ParamGroups& p) override {
    if (lora()) r_.vlm->enable_lora(opt_.lora_rank, opt_.lora_alpha, opt_.lora_targets);
    const auto vl_params = r_.vlm->trainable_parameters();
    r_.vlm->set_training(true);
    add_expert_parameters(p);
    if (!vl_params.empty()) p.add(vl_params, opt_.lr_vl, opt_.weight_decay);
  }
  bool prepares_vlm() const override { return true; }
  VlmBatch prepare(const Batch& b) const override { return prepare_views(b, true); }
  void set_training(bool on) override {
    ExpertStage::set_training(on);
    r_.vlm->set_training(on);
  }
  void save(TrainReport&) override {
    expert_->to(torch::kCPU);
    finish_vlm(lora());
    save_policy();
  }

 protected:
  // The VLM's features of the batch in one padded forward.
  torch::Tensor vl_features(const Batch& b, bool grad, const VlmBatch* pre) override {
    torch::AutoGradMode mode(grad);
    return r_.vlm->encode_prepared(pre ? *pre : prepare(b)).to(torch::kFloat32);
  }

 private:
  bool lora() const { return opt_.finetune == "lora"; }
};

// Caption pre-training: the VLM's language-model loss on ground-truth scene captions (English and
// Korean); the output is the VLM folder.
class CaptionStage : public TrainStage {
 public:
  using TrainStage::TrainStage;

  void load_models() override {
    TrainStage::load_models();
    VLA_CHECK(r_.vlm, "train --stage ", opt_.stage, " needs --vlm DIR");
  }
  bool skips_failures() const override { return false; }
  void to_device() override { r_.vlm->to(r_.device); }
  void add_parameters(ParamGroups& p) override {
    const auto vl_params = r_.vlm->trainable_parameters();
    r_.vlm->set_training(true);
    if (!vl_params.empty()) p.add(vl_params, opt_.lr_vl, opt_.weight_decay);
  }
  void complete_draw(TrainingDraw& s, std::mt19937_64& g, bool) const override {
    s.lang = std::uniform_int_distribution<int>(0, 1)(g) ? "ko" : "en";
  }
  torch::Tensor loss(const Batch& b, const VlmBatch*, int64_t step) override {
    return caption_loss(b, step);
  }
  void set_training(bool on) override { r_.vlm->set_training(on); }
  // The held-out metric is the training loss.
  double holdout_metric(const Batch& b, int64_t step) override {
    return loss(b, nullptr, step).item<double>();
  }
  void save(TrainReport& rep) override {
    finish_vlm(false);
    evaluate(rep);
    r_.vlm->save(opt_.out);
  }

 protected:
  // Prompt and answer of a sample (grounding: and the soft target of its location token).
  virtual void add_target(const TrainingDraw& s, int64_t, std::vector<std::string>& prompts,
                          std::vector<std::string>& answers, std::vector<torch::Tensor>&) const {
    prompts.push_back(caption_prompt(s.lang));
    answers.push_back(scene_caption(r_.d.episodes[s.ep], s.target_tick, s.lang));
  }
  torch::Tensor caption_loss(const Batch& b, int64_t step) {
    std::vector<const std::vector<Image>*> v;
    std::vector<std::string> prompts, caps;
    std::vector<torch::Tensor> soft;
    for (auto& s : b) {
      v.push_back(&r_.d.views[s.ep][s.target_tick]);
      add_target(s, step, prompts, caps, soft);
    }
    torch::Tensor loss = torch::zeros({}, torch::TensorOptions().device(r_.device));
    if (opt_.caption_weight > 0)
      loss = opt_.caption_weight *
             r_.vlm->caption_loss_batch(v, prompts, caps,
                                        soft.empty() ? torch::Tensor() : torch::stack(soft));
    return loss;
  }
  // Greedy caption metrics on held-out episodes, English and Korean.
  virtual void evaluate(TrainReport& rep) {
    nlohmann::json m;
    const std::vector<size_t> eval_eps = eval_episodes(opt_.caption_eval_episodes);
    for (std::string lang : {"en", "ko"}) {
      std::vector<eval::Tokens> hyps;
      std::vector<std::vector<eval::Tokens>> refs;
      nlohmann::json examples = nlohmann::json::array();
      for (size_t e : eval_eps) {
        for (int t : {0, r_.d.ticks[e].num_ticks / 2}) {
          auto h = r_.vlm->caption(r_.d.views[e][t], caption_prompt(lang), 96);
          auto r = scene_caption(r_.d.episodes[e], t, lang);
          hyps.push_back(eval::tokenize(h));
          refs.push_back({eval::tokenize(r)});
          if (examples.size() < 3) examples.push_back({{"hyp", h}, {"ref", r}});
        }
      }
      m[lang] = {{"meteor", eval::corpus_meteor(hyps, refs)},
                 {"bleu4", eval::corpus_bleu(hyps, refs)},
                 {"captions", hyps.size()},
                 {"examples", examples}};
    }
    rep.extra["caption"] = m;
  }
  // The first `max` held-out episodes (the training ones when none are held out).
  std::vector<size_t> eval_episodes(int max) const {
    std::vector<size_t> eps = r_.ho.empty() ? r_.tr : r_.ho;
    if (static_cast<int>(eps.size()) > max) eps.resize(max);
    return eps;
  }
};

// Named port x/y in units of 5 cm: the localisation head's target.
constexpr double kLocateScale = 0.05;

// Grounding pre-training: the caption loss with the instructed port's location token first, and
// optionally two heads on the features the expert will receive (dropped after training).
class GroundingStage : public CaptionStage {
 public:
  using CaptionStage::CaptionStage;

  void load_models() override {
    CaptionStage::load_models();
    grid_ = LocationGrid::find(*r_.vlm);
    VLA_CHECK(grid_,
              "train --stage grounding: the VLM's tokenizer has no location tokens "
              "(<loc_0000>...); make the folder with scripts/make_vlm_init.py");
  }
  void add_parameters(ParamGroups& p) override {
    CaptionStage::add_parameters(p);
    // One forward of the first training sample sizes the heads: the features the expert will
    // receive, and the image grid the VLM's own preprocessing makes of its views.
    VlmBatch first_in;
    torch::Tensor first_f;
    if (has_heads()) {
      torch::NoGradGuard ng;
      const int e = static_cast<int>(r_.tr.empty() ? 0 : r_.tr[0]);
      first_in = r_.vlm->prepare_batch({&r_.d.views[e][0]}, {r_.d.ticks[e].instruction});
      first_f = r_.vlm->encode_prepared(first_in);
    }
    // Localisation head: [tokens * dim] -> named port x/y / kLocateScale.
    if (opt_.locate_weight > 0) locate_head_ = add_head(p, first_f.size(1) * first_f.size(2), 2);
    // Dense head: every image token of the first used view -> [instructed port, one channel per
    // port colour] (dense_grounding_target).
    if (opt_.dense_weight > 0) {
      VLA_CHECK(r_.cfg.pooling == "tokens", "train: --dense-weight needs --pooling tokens, got '",
                r_.cfg.pooling, "'");
      // `tokens` features = the image tokens of every used view, then the last token; each image
      // of t x h x w patches gives t*h*w / merge^2 tokens, so merge^2 follows from the counts.
      const auto& thw = first_in.image_grid_thw;
      VLA_CHECK(thw.defined() && thw.dim() == 2 && thw.size(1) == 3,
                "train: --dense-weight needs an engine-backed VLM (image_grid_thw)");
      const int64_t patches = thw.prod(1).sum().item<int64_t>(), tokens = first_f.size(1) - 1;
      const auto merge =
          static_cast<int64_t>(std::lround(std::sqrt(patches / std::max<int64_t>(1, tokens))));
      const int64_t th = thw[0][1].item<int64_t>(), tw = thw[0][2].item<int64_t>();
      VLA_CHECK(tokens > 0 && merge > 0 && merge * merge * tokens == patches && th % merge == 0 &&
                    tw % merge == 0 && thw[0][0].item<int64_t>() == 1,
                "train: dense grounding: ", tokens, " image tokens do not match the image grid ",
                thw.sizes());
      grid_h_ = static_cast<int>(th / merge), grid_w_ = static_cast<int>(tw / merge);
      for (const auto& ep : r_.d.episodes)
        for (const auto& port : ep.ports)
          if (std::find(colours_.begin(), colours_.end(), port.color) == colours_.end())
            colours_.push_back(port.color);
      std::sort(colours_.begin(), colours_.end());
      dense_head_ = add_head(p, r_.vlm->feature_dim(), 1 + static_cast<int64_t>(colours_.size()));
      log_info("dense grounding: ", grid_h_, "x", grid_w_, " tokens of view ", dense_view(), ", ",
               colours_.size(), " colours");
    }
  }
  bool prepares_vlm() const override { return has_heads(); }
  VlmBatch prepare(const Batch& b) const override { return prepare_views(b, false); }
  torch::Tensor loss(const Batch& b, const VlmBatch* pre, int64_t step) override {
    torch::Tensor loss = caption_loss(b, step);
    if (!locate_head_ && !dense_head_) return loss;
    auto f = r_.vlm->encode_prepared(pre ? *pre : prepare(b));
    if (locate_head_)
      loss = loss + opt_.locate_weight *
                        torch::mse_loss(locate_head_->forward(f.flatten(1)), locate_target(b));
    if (dense_head_) {
      const int64_t n = static_cast<int64_t>(grid_h_) * grid_w_;
      VLA_CHECK(f.size(1) > n, "train: dense grounding expects ", n,
                " image tokens first in the features, got ", f.size(1), " tokens");
      auto pred = dense_head_->forward(f.narrow(1, 0, n));
      loss = loss + opt_.dense_weight * (pred - dense_target(b)).pow(2).sum(1).mean();
    }
    return loss;
  }

 protected:
  // The policy's own prompt (the instruction): its last token is the VL feature.
  void add_target(const TrainingDraw& s, int64_t step, std::vector<std::string>& prompts,
                  std::vector<std::string>& answers,
                  std::vector<torch::Tensor>& soft) const override {
    const auto& ep = r_.d.episodes[s.ep];
    prompts.push_back(ep.instruction);
    answers.push_back(grounding_caption(ep, s.target_tick, *grid_));
    const auto& p = ep.ports[ep.target].pos;
    soft.push_back(grid_->soft_target(p[0], p[1], r_.vlm->vocab_size(), location_sigma(step)));
  }
  // Greedy location token on held-out episodes: error of its cell centre (mm); and the heads.
  void evaluate(TrainReport& rep) override {
    const std::vector<size_t> eval_eps = eval_episodes(4 * opt_.caption_eval_episodes);
    std::vector<double> errs;
    int unparsed = 0;
    nlohmann::json examples = nlohmann::json::array();
    for (size_t e : eval_eps) {
      const auto& ep = r_.d.episodes[e];
      auto h = r_.vlm->caption(r_.d.views[e][0], ep.instruction, 1);
      auto at = LocationGrid::parse(h);
      if (!at) {
        ++unparsed;
        continue;
      }
      const auto& p = ep.ports[ep.target].pos;
      errs.push_back(1000.0 * std::hypot((*at)[0] - p[0], (*at)[1] - p[1]));
      if (examples.size() < 3)
        examples.push_back(
            {{"instruction", ep.instruction}, {"answer", h}, {"truth", grid_->token(p[0], p[1])}});
    }
    rep.extra["grounding"] = {{"episodes", eval_eps.size()},
                              {"location_error_mm", errs.empty() ? -1.0 : mean(errs)},
                              {"no_location_token", unparsed},
                              {"examples", examples}};
    if (locate_head_ || dense_head_) evaluate_heads(eval_eps, rep.extra["grounding"]);
  }

 private:
  bool has_heads() const { return opt_.locate_weight > 0 || opt_.dense_weight > 0; }
  int dense_view() const { return r_.cfg.use_views.empty() ? 0 : r_.cfg.use_views[0]; }
  // The location token's target width: location_sigma_start narrowing linearly to location_sigma
  // over the first half of the steps.
  double location_sigma(int64_t step) const {
    const double half = std::max<int64_t>(1, opt_.steps / 2);
    const double f = std::min(1.0, static_cast<double>(step) / half);
    const double start = std::max(opt_.location_sigma_start, opt_.location_sigma);
    return start + (opt_.location_sigma - start) * f;
  }
  // A head starts at zero ("no port anywhere") and trains at the VLM's learning rate without
  // weight decay.
  torch::nn::Linear add_head(ParamGroups& p, int64_t in, int64_t out) const {
    torch::nn::Linear head(in, out);
    {
      torch::NoGradGuard ng;
      head->weight.zero_();
      head->bias.zero_();
    }
    head->to(r_.device);
    p.add(head->parameters(), opt_.lr_vl, 0.0);
    return head;
  }
  // Named port x/y of each sample's episode / kLocateScale -> [B, 2] on the device.
  torch::Tensor locate_target(const Batch& b) const {
    std::vector<float> xy;
    for (auto& s : b) {
      const auto& ep = r_.d.episodes[s.ep];
      for (int k = 0; k < 2; ++k)
        xy.push_back(static_cast<float>(ep.ports[ep.target].pos[k] / kLocateScale));
    }
    return torch::tensor(xy).view({-1, 2}).to(r_.device);
  }
  // Dense targets of a batch -> [B, tokens, 1 + colours] on the device.
  torch::Tensor dense_target(const Batch& b) const {
    std::vector<torch::Tensor> t;
    for (auto& s : b)
      t.push_back(
          dense_grounding_target(r_.d.episodes[s.ep], dense_view(), grid_h_, grid_w_, colours_));
    return torch::stack(t).to(r_.device);
  }
  // The heads on the evaluation episodes, each frame encoded once: the localisation head's mean
  // x/y distance (mm); the dense head's instructed-port channel read as the weighted mean of the
  // token centres around its peak (3x3 tokens), mean distance in pixels of the recorded view.
  void evaluate_heads(const std::vector<size_t>& eval_eps, nlohmann::json& out) {
    if (locate_head_) locate_head_->to(torch::kCPU);
    if (dense_head_) dense_head_->to(torch::kCPU);
    torch::NoGradGuard ng;
    std::vector<double> head_errs, px_errs;
    const int64_t n = static_cast<int64_t>(grid_h_) * grid_w_;
    auto cx = (torch::arange(n) % std::max(1, grid_w_)).to(torch::kFloat32) + 0.5;
    auto cy = torch::div(torch::arange(n), std::max(1, grid_w_), "floor").to(torch::kFloat32) + 0.5;
    for (size_t e : eval_eps) {
      const auto& ep = r_.d.episodes[e];
      auto f = r_.vlm->encode_batch({&r_.d.views[e][0]}, {ep.instruction});
      if (locate_head_) {
        auto xy = locate_head_->forward(f.flatten(1))[0] * kLocateScale;
        const auto& p = ep.ports[ep.target].pos;
        head_errs.push_back(1000.0 *
                            std::hypot(xy[0].item<double>() - p[0], xy[1].item<double>() - p[1]));
      }
      if (!dense_head_) continue;
      auto g = dense_head_->forward(f[0].narrow(0, 0, n)).select(1, 0).clamp_min(0);
      const int64_t peak = g.argmax().item<int64_t>();
      g = g * (((cx - cx[peak]).abs() <= 1.0) & ((cy - cy[peak]).abs() <= 1.0)).to(g.scalar_type());
      const double sum = g.sum().item<double>();
      if (sum <= 0) continue;
      const double u = (g * cx).sum().item<double>() / sum * ep.width / grid_w_;
      const double v = (g * cy).sum().item<double>() / sum * ep.height / grid_h_;
      const auto& px = ep.ports[ep.target].pixels[dense_view()];
      px_errs.push_back(std::hypot(u - px[0], v - px[1]));
    }
    if (locate_head_) out["locate_head_error_mm"] = mean(head_errs);
    if (dense_head_) {
      out["dense_error_px"] = px_errs.empty() ? -1.0 : mean(px_errs);
      out["dense_grid"] = {grid_h_, grid_w_};
    }
  }

  std::optional<LocationGrid> grid_;
  torch::nn::Linear locate_head_{nullptr}, dense_head_{nullptr};
  std::vector<std::string> colours_;  // sorted port colours of the dataset (dense channels)
  int grid_h_ = 0, grid_w_ = 0;       // merged-token grid of the dense head's view
};

// The one place the stage name is dispatched on.
std::unique_ptr<TrainStage> make_stage(TrainRun& r) {
  const std::string& stage = r.opt.stage;
  if (stage == "1") return std::make_unique<CachedFeatureStage>(r);
  if (stage == "2") return std::make_unique<AdaptedVlmStage>(r);
  if (stage == "caption") return std::make_unique<CaptionStage>(r);
  if (stage == "grounding") return std::make_unique<GroundingStage>(r);
  throw Error(str_cat("train: --stage must be 1, 2, caption or grounding, got '", stage, "'"));
}

// ---------------------------------------------------------------- the shared loop
// Chooses the episodes, splits them into training / held-out and loads them as the stage needs.
void load_data(TrainRun& r, TrainStage& stage) {
  const TrainOptions& opt = r.opt;
  Data& d = r.d;
  std::vector<size_t> use;
  for (size_t i = 0; i < r.ds.size(); ++i) {
    if (stage.skips_failures() && !r.ds.meta(i).value("success", false)) continue;
    use.push_back(i);
    if (opt.max_episodes > 0 && static_cast<int>(use.size()) >= opt.max_episodes) break;
  }
  VLA_CHECK(!use.empty(), "train: dataset ", opt.dataset, " has no usable episodes");
  split_episodes(use.size(), opt.holdout, &r.tr, &r.ho);
  stage.open_features();
  const bool need_frames = stage.needs_frames();
  ProgressBar bar("load", static_cast<int64_t>(use.size()));
  for (size_t k = 0; k < use.size(); ++k) {
    auto ep = r.ds.load(use[k], need_frames);
    d.ticks.push_back(cut_ticks(ep, r.cfg.sensor_window, r.cfg.horizon));
    if (need_frames) {
      std::vector<std::vector<Image>> v;
      for (auto& fr : ep.frames) v.push_back(select_views(fr, r.cfg.use_views));
      d.views.push_back(std::move(v));
      ep.frames.clear();
    }
    stage.read_features(ep, d.ticks.back());
    d.held.push_back(k >= r.tr.size());
    d.pairs.push_back(reuse_pairs(d.ticks.back().num_ticks, std::max(1, opt.reuse_count)));
    d.episodes.push_back(std::move(ep));
    if (opt.progress) bar.tick();
  }
  bar.finish();
  if (!d.episodes.empty()) {
    r.cfg.num_views = static_cast<int>(d.episodes[0].view_names.size());
    r.cfg.image_width = d.episodes[0].width;
    r.cfg.image_height = d.episodes[0].height;
  }
}

// A sample: an episode of the pool and a target tick drawn uniformly, then the stage's draws.
TrainingDraw draw_sample(const TrainRun& r, const TrainStage& stage, std::mt19937_64& g,
                         bool held) {
  const auto& pool = held ? r.ho : r.tr;
  TrainingDraw s;
  s.ep = static_cast<int>(pool[std::uniform_int_distribution<size_t>(0, pool.size() - 1)(g)]);
  const int n = r.d.ticks[s.ep].num_ticks;
  s.target_tick = std::uniform_int_distribution<int>(0, n - 1)(g);
  s.feature_tick = s.target_tick;
  stage.complete_draw(s, g, held);
  return s;
}

// The stage's held-out metric (-1: no held-out episodes) over 4 batches. Uses its own RNG and
// restores torch's, so training is unaffected.
double holdout_loss(const TrainRun& r, TrainStage& stage, int64_t step) {
  if (r.ho.empty()) return -1.0;
  std::mt19937_64 g(r.opt.seed + 7);
  auto saved = torch_rng_state();
  torch::NoGradGuard ng;
  stage.set_training(false);
  double sum = 0;
  int n = 0;
  for (int k = 0; k < 4; ++k) {
    Batch b;
    for (int i = 0; i < std::min(r.opt.batch, 64); ++i) b.push_back(draw_sample(r, stage, g, true));
    sum += stage.holdout_metric(b, step);
    ++n;
  }
  stage.set_training(true);
  set_torch_rng_state(saved);
  return sum / n;
}

enum class LoopEnd { kFinished, kInterrupted, kStoppedAfter };

// The loop all stages share: warmup + cosine LR, AdamW with grad clipping, progress, periodic
// held-out evaluation, checkpoints and resume, stop on request or at opt.stop_after. Fills rep's
// losses and timings; except after stop_after (which returns at once, as if killed) also the final
// and held-out loss and loss.png.
LoopEnd train_loop(const TrainRun& r, TrainStage& stage, const ParamGroups& params,
                   std::mt19937_64& rng, const Checkpoint& ckpt, TrainReport& rep) {
  const TrainOptions& opt = r.opt;
  VLA_CHECK(!params.groups.empty(), "train: nothing to train");
  torch::optim::AdamW optimizer(params.groups, torch::optim::AdamWOptions(opt.lr_action));
  make_dirs(opt.out);
  int64_t step = 0;
  if (opt.resume && file_exists(ckpt.dir + "/state.json")) {
    step = ckpt.load(params.all, optimizer, rng, rep.loss_steps, rep.losses);
    log_info("resumed from ", ckpt.dir, " at step ", step);
  }
  ProgressBar bar(str_cat("train stage ", opt.stage), opt.steps);
  if (step > 0 && opt.progress) bar.tick(step);
  Stopwatch sw;
  int64_t samples = 0;
  double ema = -1;
  bool interrupted = false;
  int64_t current_step = 0;  // the step of the last loss (grounding's location_sigma)
  // Batches are drawn one step ahead so that the next batch's VLM inputs are prepared on a
  // background thread (decoding, preprocessing, tokenisation, the host-to-device copy) while this
  // one trains. `rng_at` is the sampler state before the batch of `step` was drawn: checkpoints
  // save it, so the sample sequence (and a resumed run) is the same as drawing in the loop.
  auto draw_batch = [&] {
    Batch b;
    for (int i = 0; i < opt.batch; ++i) b.push_back(draw_sample(r, stage, rng, false));
    return b;
  };
  std::mt19937_64 rng_at = rng;
  Batch b = draw_batch();
  std::atomic<int64_t> prepare_ns{0};  // background preparation time, summed
  auto prepare_async = [&](const Batch& batch) {
    return stage.prepares_vlm()
               ? std::async(std::launch::async,
                            [&, batch] {
                              Stopwatch w;
                              auto out = stage.prepare(batch);
                              prepare_ns += static_cast<int64_t>(w.elapsed_ms() * 1e6);
                              return out;
                            })
               : std::future<VlmBatch>();
  };
  std::future<VlmBatch> pending = prepare_async(b);
  // Host wall time per phase (ms, summed over steps): where a GPU run's step time goes. On CUDA the
  // forward/backward/optimizer phases measure launch cost (kernels run asynchronously); `sync` is
  // the wait for the GPU at the loss read-back, `wait_batch` the wait for the prepared batch.
  double t_wait = 0, t_forward = 0, t_backward = 0, t_optim = 0, t_sync = 0;
  int64_t timed_steps = 0;
  for (; step < opt.steps; ++step) {
    if (opt.stop_requested && opt.stop_requested->load()) {
      if (pending.valid()) pending.wait();
      ckpt.save(step, params.all, optimizer, rng_at, rep.loss_steps, rep.losses);
      log_info("stop requested: checkpoint at step ", step, " in ", ckpt.dir,
               "; saving the model trained so far");
      interrupted = true;
      break;
    }
    current_step = step;
    set_group_lrs(optimizer, params.base_lr,
                  lr_factor(step, opt.warmup, opt.steps, opt.lr_min_factor));
    Stopwatch phase;
    std::optional<VlmBatch> pre;
    if (pending.valid()) pre = pending.get();
    const Batch cur = std::move(b);
    rng_at = rng;
    b = draw_batch();
    if (step + 1 < opt.steps) pending = prepare_async(b);
    t_wait += phase.elapsed_ms();
    phase.reset();
    auto loss = stage.loss(cur, pre ? &*pre : nullptr, current_step);
    t_forward += phase.elapsed_ms();
    phase.reset();
    optimizer.zero_grad();
    loss.backward();
    t_backward += phase.elapsed_ms();
    phase.reset();
    if (opt.grad_clip > 0) torch::nn::utils::clip_grad_norm_(params.all, opt.grad_clip);
    optimizer.step();
    t_optim += phase.elapsed_ms();
    phase.reset();
    double lv = loss.item<double>();
    t_sync += phase.elapsed_ms();
    ++timed_steps;
    VLA_CHECK(std::isfinite(lv), "train: loss became ", lv, " at step ", step);
    ema = ema < 0 ? lv : 0.98 * ema + 0.02 * lv;
    samples += opt.batch;
    rep.loss_steps.push_back(static_cast<double>(step));
    rep.losses.push_back(lv);
    if (opt.progress)
      bar.tick(1, str_cat("loss ", fmt_double(ema, 4), " | ",
                          fmt_double(samples / std::max(1e-9, sw.elapsed_s()), 1), " samples/s"));
    if (opt.eval_every > 0 && (step + 1) % opt.eval_every == 0)
      log_info("step ", step + 1, ": held-out loss ",
               fmt_double(holdout_loss(r, stage, current_step), 5));
    if (opt.checkpoint_every > 0 && (step + 1) % opt.checkpoint_every == 0 && step + 1 < opt.steps)
      ckpt.save(step + 1, params.all, optimizer, rng_at, rep.loss_steps, rep.losses);
    if (opt.stop_after > 0 && step + 1 == opt.stop_after && step + 1 < opt.steps) {
      if (pending.valid()) pending.wait();
      ckpt.save(step + 1, params.all, optimizer, rng_at, rep.loss_steps, rep.losses);
      rep.steps = step + 1;
      rep.extra["interrupted"] = true;
      return LoopEnd::kStoppedAfter;
    }
  }
  if (pending.valid()) pending.wait();
  bar.finish();
  rep.steps = step;
  if (interrupted) rep.extra["interrupted"] = true;
  rep.seconds = sw.elapsed_s();
  rep.samples_per_s = samples / std::max(1e-9, rep.seconds);
  if (timed_steps > 0) {
    const double n = static_cast<double>(timed_steps);
    rep.extra["step_ms"] = {
        {"wait_batch", t_wait / n},   {"forward", t_forward / n},
        {"backward", t_backward / n}, {"optimizer", t_optim / n},
        {"sync", t_sync / n},         {"prepare_background", prepare_ns * 1e-6 / n}};
    log_info("host ms per step: prepare (background) ", fmt_double(prepare_ns * 1e-6 / n, 1),
             ", wait for batch ", fmt_double(t_wait / n, 1), ", forward ",
             fmt_double(t_forward / n, 1), ", backward ", fmt_double(t_backward / n, 1),
             ", optimizer ", fmt_double(t_optim / n, 1), ", GPU sync ", fmt_double(t_sync / n, 1));
  }
  rep.final_loss = ema;
  rep.holdout_loss = holdout_loss(r, stage, current_step);
  write_png(opt.out + "/loss.png", plot_loss_curve(rep.loss_steps, rep.losses));
  return interrupted ? LoopEnd::kInterrupted : LoopEnd::kFinished;
}

}  // namespace

TrainReport train(const TrainOptions& opt) {
  TrainRun r(opt);
  const std::unique_ptr<TrainStage> stage = make_stage(r);
  VLA_CHECK(!opt.dataset.empty() && !opt.out.empty(), "train: --dataset and --out are required");
  VLA_CHECK(opt.steps > 0 && opt.batch > 0, "train: steps and batch must be > 0");
  if (opt.threads > 0) configure_torch_threads(opt.threads);
  seed_everything(opt.seed);
  std::mt19937_64 rng(opt.seed);
  r.ds = dataset::Dataset::open(opt.dataset);
  r.provenance = {{"stage", opt.stage},
                  {"dataset", fs::absolute(opt.dataset).string()},
                  {"steps", opt.steps},
                  {"batch", opt.batch},
                  {"vlm_reuse_count", opt.reuse_count},
                  {"random_staleness", opt.random_staleness},
                  {"seed", opt.seed},
                  {"lr", {opt.lr_sensor, opt.lr_action, opt.lr_vl}}};

  stage->load_models();
  load_data(r, *stage);
  stage->build_model();
  r.device = parse_device(opt.device);
  stage->to_device();
  r.provenance["device"] = opt.device;
  ParamGroups params;
  stage->add_parameters(params);

  TrainReport rep;
  const Checkpoint ckpt{opt.out + "/checkpoint"};
  const LoopEnd end = train_loop(r, *stage, params, rng, ckpt, rep);
  if (end == LoopEnd::kStoppedAfter) return rep;
  stage->save(rep);
  nlohmann::json rj = rep.to_json();
  rj["provenance"] = r.provenance;
  write_json_atomic(opt.out + "/train_report.json", rj);
  if (end == LoopEnd::kFinished) vla::remove_tree(ckpt.dir);  // an interrupted run keeps it
  return rep;
}

}  // namespace vla::train
