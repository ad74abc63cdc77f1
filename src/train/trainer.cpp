// The trainer: stage 1 (cached VL features), stage 2 (VLM adapted), caption pre-training.
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
  std::vector<torch::Tensor> feats;                    // stage 1: [ticks, tokens, dim]
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

}  // namespace

TrainReport train(const TrainOptions& opt) {
  VLA_CHECK(
      opt.stage == "1" || opt.stage == "2" || opt.stage == "caption" || opt.stage == "grounding",
      "train: --stage must be 1, 2, caption or grounding, got '", opt.stage, "'");
  VLA_CHECK(!opt.dataset.empty() && !opt.out.empty(), "train: --dataset and --out are required");
  VLA_CHECK(opt.steps > 0 && opt.batch > 0, "train: steps and batch must be > 0");
  if (opt.threads > 0) configure_torch_threads(opt.threads);
  seed_everything(opt.seed);
  std::mt19937_64 rng(opt.seed);
  // Caption and grounding pre-training both train the VLM's language-model loss only.
  const bool grounding = opt.stage == "grounding";
  const bool caption = opt.stage == "caption" || grounding;
  auto ds = dataset::Dataset::open(opt.dataset);

  // ---- model pieces
  PolicyConfig cfg = opt.policy;
  NormStats stats;
  Expert expert{nullptr};
  std::shared_ptr<policy::VlmEncoder> vlm = opt.vlm_override;
  nlohmann::json provenance = {{"stage", opt.stage},
                               {"dataset", fs::absolute(opt.dataset).string()},
                               {"steps", opt.steps},
                               {"batch", opt.batch},
                               {"vlm_reuse_count", opt.reuse_count},
                               {"random_staleness", opt.random_staleness},
                               {"seed", opt.seed},
                               {"lr", {opt.lr_sensor, opt.lr_action, opt.lr_vl}}};
  bool have_init = false;
  if (opt.stage == "2") {
    VLA_CHECK(!opt.init_policy.empty(), "train --stage 2 needs --init POLICY (a stage-1 policy)");
    auto init = policy::Policy::load(opt.init_policy);
    cfg = init->config();
    stats = init->stats();
    expert = init->expert();
    if (!vlm) vlm = init->vlm();
    VLA_CHECK(vlm, "train --stage 2: the init policy has no VLM (vlm/)");
    VLA_CHECK(!cfg.has_memory(),
              "train --stage 2: policies with vl_memory 'first' train in stage 1 only (the VLM "
              "would run twice per sample); train the VLM first, then stage 1");
    provenance["init_policy"] = init->info();
    have_init = true;
  } else if (!vlm && !opt.vlm.empty()) {
    vlm = policy::load_vlm(opt.vlm, cfg);
  }
  if (caption) VLA_CHECK(vlm, "train --stage ", opt.stage, " needs --vlm DIR");
  std::optional<LocationGrid> grid;
  if (grounding) {
    grid = LocationGrid::find(*vlm);
    VLA_CHECK(grid,
              "train --stage grounding: the VLM's tokenizer has no location tokens "
              "(<loc_0000>...); make the folder with scripts/make_vlm_init.py");
  }

  // ---- data
  Data d;
  std::vector<size_t> tr, ho;
  std::vector<size_t> use;
  for (size_t i = 0; i < ds.size(); ++i) {
    if (opt.success_only && !caption && !ds.meta(i).value("success", false)) continue;
    use.push_back(i);
    if (opt.max_episodes > 0 && static_cast<int>(use.size()) >= opt.max_episodes) break;
  }
  VLA_CHECK(!use.empty(), "train: dataset ", opt.dataset, " has no usable episodes");
  split_episodes(use.size(), opt.holdout, &tr, &ho);
  std::unique_ptr<FeatureCache> cache;
  if (opt.stage == "1") {
    VLA_CHECK(!opt.cache.empty(), "train --stage 1 needs --cache DIR (make it with `vla cache`)");
    cache = std::make_unique<FeatureCache>(FeatureCache::open(opt.cache));
    const std::string want = vlm ? vlm->fingerprint() : cache->vlm_fingerprint();
    cache->validate(ds, want, /*check_images=*/false);
    provenance["cache"] = fs::absolute(opt.cache).string();
  }
  const bool need_frames = opt.stage != "1";
  {
    ProgressBar bar("load", static_cast<int64_t>(use.size()));
    for (size_t k = 0; k < use.size(); ++k) {
      auto ep = ds.load(use[k], need_frames);
      d.ticks.push_back(cut_ticks(ep, cfg.sensor_window, cfg.horizon));
      if (need_frames) {
        std::vector<std::vector<Image>> v;
        for (auto& fr : ep.frames) v.push_back(select_views(fr, cfg.use_views));
        d.views.push_back(std::move(v));
        ep.frames.clear();
      }
      if (cache) {
        auto f = cache->features(ep.name);
        VLA_CHECK(f.dim() == 3 && f.size(0) >= d.ticks.back().num_ticks, "feature cache: episode ",
                  ep.name, " has features ", f.sizes(), " for ", d.ticks.back().num_ticks,
                  " ticks");
        d.feats.push_back(f);
      }
      d.held.push_back(k >= tr.size());
      d.pairs.push_back(reuse_pairs(d.ticks.back().num_ticks, std::max(1, opt.reuse_count)));
      d.episodes.push_back(std::move(ep));
      if (opt.progress) bar.tick();
    }
    bar.finish();
  }
  if (!d.episodes.empty()) {
    cfg.num_views = static_cast<int>(d.episodes[0].view_names.size());
    cfg.image_width = d.episodes[0].width;
    cfg.image_height = d.episodes[0].height;
  }
  if (opt.stage == "1") {
    cfg.vl_tokens = static_cast<int>(d.feats[0].size(1)) * (cfg.has_memory() ? 2 : 1);
    cfg.vl_dim = static_cast<int>(d.feats[0].size(2));
    cfg.validate();
    stats = fit_stats(d, cfg);
    expert = Expert(cfg);
  }

  // ---- samples
  auto draw = [&](std::mt19937_64& g, bool held) {
    const auto& pool = held ? ho : tr;
    TrainingDraw s;
    s.ep = static_cast<int>(pool[std::uniform_int_distribution<size_t>(0, pool.size() - 1)(g)]);
    const int n = d.ticks[s.ep].num_ticks;
    s.target_tick = std::uniform_int_distribution<int>(0, n - 1)(g);
    s.feature_tick = s.target_tick;
    if (caption) {
      s.lang = std::uniform_int_distribution<int>(0, 1)(g) ? "ko" : "en";
    } else if (!held && opt.reuse_count > 1) {
      if (opt.random_staleness) {
        s.feature_tick = random_staleness_pair(s.target_tick, opt.reuse_count, g).feature_tick;
      } else {
        // Fixed reuse: a pair drawn uniformly from reuse_pairs(ticks, N) of the episode.
        const auto& pairs = d.pairs[s.ep];
        const auto& pr = pairs[std::uniform_int_distribution<size_t>(0, pairs.size() - 1)(g)];
        s.feature_tick = pr.feature_tick;
        s.target_tick = pr.target_tick;
      }
    }
    return s;
  };

  // ---- device: modules move before their parameters are collected (to() keeps the tensors)
  const torch::Device device = parse_device(opt.device);
  if (expert) expert->to(device);
  if (vlm && opt.stage != "1") vlm->to(device);
  provenance["device"] = opt.device;

  // ---- parameters and optimizer
  std::vector<torch::Tensor> vl_params;
  if (vlm && opt.stage != "1") {
    if (opt.stage == "2" && opt.finetune == "lora")
      vlm->enable_lora(opt.lora_rank, opt.lora_alpha, opt.lora_targets);
    vl_params = vlm->trainable_parameters();
    vlm->set_training(true);
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  std::vector<double> base_lr;
  std::vector<torch::Tensor> all_params;
  if (!caption) {
    auto sp = expert->sensor_parameters(), ap = expert->action_parameters();
    groups.emplace_back(
        sp, std::make_unique<torch::optim::AdamWOptions>(
                torch::optim::AdamWOptions(opt.lr_sensor).weight_decay(opt.weight_decay)));
    groups.emplace_back(
        ap, std::make_unique<torch::optim::AdamWOptions>(
                torch::optim::AdamWOptions(opt.lr_action).weight_decay(opt.weight_decay)));
    base_lr = {opt.lr_sensor, opt.lr_action};
    all_params.insert(all_params.end(), sp.begin(), sp.end());
    all_params.insert(all_params.end(), ap.begin(), ap.end());
    expert->train();
  }
  if (!vl_params.empty()) {
    groups.emplace_back(vl_params,
                        std::make_unique<torch::optim::AdamWOptions>(
                            torch::optim::AdamWOptions(opt.lr_vl).weight_decay(opt.weight_decay)));
    base_lr.push_back(opt.lr_vl);
    all_params.insert(all_params.end(), vl_params.begin(), vl_params.end());
  }
  // A grounding head (dropped after training): starts at zero ("no port anywhere"), trained at
  // the VLM's learning rate without weight decay.
  auto add_head = [&](int64_t in, int64_t out) {
    torch::nn::Linear head(in, out);
    {
      torch::NoGradGuard ng;
      head->weight.zero_();
      head->bias.zero_();
    }
    head->to(device);
    auto hp = head->parameters();
    groups.emplace_back(hp, std::make_unique<torch::optim::AdamWOptions>(
                                torch::optim::AdamWOptions(opt.lr_vl).weight_decay(0.0)));
    base_lr.push_back(opt.lr_vl);
    all_params.insert(all_params.end(), hp.begin(), hp.end());
    return head;
  };
  // One forward of the first training sample sizes the grounding heads: the features the expert
  // will receive, and the image grid the VLM's own preprocessing makes of its views.
  VlmBatch first_in;
  torch::Tensor first_f;
  if (grounding && (opt.locate_weight > 0 || opt.dense_weight > 0)) {
    torch::NoGradGuard ng;
    const int e = static_cast<int>(tr.empty() ? 0 : tr[0]);
    first_in = vlm->prepare_batch({&d.views[e][0]}, {d.ticks[e].instruction});
    first_f = vlm->encode_prepared(first_in);
  }
  // Grounding's localisation head: [tokens * dim] -> named port x/y / kLocateScale.
  constexpr double kLocateScale = 0.05;
  torch::nn::Linear locate_head{nullptr};
  if (grounding && opt.locate_weight > 0)
    locate_head = add_head(first_f.size(1) * first_f.size(2), 2);
  // Grounding's dense head: every image token of the first used view -> [instructed port, one
  // channel per port colour] (dense_grounding_target).
  torch::nn::Linear dense_head{nullptr};
  std::vector<std::string> colours;
  int grid_h = 0, grid_w = 0;
  if (grounding && opt.dense_weight > 0) {
    VLA_CHECK(cfg.pooling == "tokens", "train: --dense-weight needs --pooling tokens, got '",
              cfg.pooling, "'");
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
    grid_h = static_cast<int>(th / merge), grid_w = static_cast<int>(tw / merge);
    for (const auto& ep : d.episodes)
      for (const auto& p : ep.ports)
        if (std::find(colours.begin(), colours.end(), p.color) == colours.end())
          colours.push_back(p.color);
    std::sort(colours.begin(), colours.end());
    dense_head = add_head(vlm->feature_dim(), 1 + static_cast<int64_t>(colours.size()));
    log_info("dense grounding: ", grid_h, "x", grid_w, " tokens of view ",
             cfg.use_views.empty() ? 0 : cfg.use_views[0], ", ", colours.size(), " colours");
  }
  VLA_CHECK(!groups.empty(), "train: nothing to train");
  torch::optim::AdamW optimizer(groups, torch::optim::AdamWOptions(opt.lr_action));

  // ---- losses
  // Stage 2: VL features of a batch in one padded forward of the VLM ([B, tokens, dim]).
  // The VLM inputs of a batch whose loss runs the VLM's forward (stage 2: the feature tick;
  // grounding: the target tick); prepare_batch is the CPU half, run one batch ahead in training.
  const bool vlm_forward =
      opt.stage == "2" || (grounding && (opt.locate_weight > 0 || opt.dense_weight > 0));
  auto prepare_vlm = [&](const std::vector<TrainingDraw>& b) {
    std::vector<const std::vector<Image>*> v;
    std::vector<std::string> ins;
    for (auto& s : b) {
      v.push_back(&d.views[s.ep][opt.stage == "2" ? s.feature_tick : s.target_tick]);
      ins.push_back(d.ticks[s.ep].instruction);
    }
    return vlm->prepare_batch(v, ins);
  };
  auto stage2_features = [&](const std::vector<TrainingDraw>& b, bool grad, const VlmBatch* pre) {
    torch::AutoGradMode mode(grad);
    return vlm->encode_prepared(pre ? *pre : prepare_vlm(b)).to(torch::kFloat32);
  };
  // Expert inputs of a batch: VL features (cache or VLM), normalised force windows, proprio and
  // action targets.
  struct ExpertBatch {
    torch::Tensor vl, force, proprio, actions;
  };
  auto expert_batch = [&](const std::vector<TrainingDraw>& b, bool grad,
                          const VlmBatch* pre = nullptr) {
    std::vector<torch::Tensor> vl, f, p, a;
    for (auto& s : b) {
      const auto& tk = d.ticks[s.ep];
      if (opt.stage == "1")  // scene memory: the episode's first features, then the (stale) newest
        vl.push_back(cfg.has_memory()
                         ? torch::cat({d.feats[s.ep][0], d.feats[s.ep][s.feature_tick]}, 0)
                         : d.feats[s.ep][s.feature_tick]);
      f.push_back(tk.force[s.target_tick]);
      p.push_back(tk.proprio[s.target_tick]);
      a.push_back(tk.actions[s.target_tick]);
    }
    // Batches are assembled and normalised on the CPU, then moved in one copy each.
    return ExpertBatch{
        opt.stage == "1" ? torch::stack(vl).to(device) : stage2_features(b, grad, pre),
        stats.force.normalize(torch::stack(f)).to(device),
        stats.proprio.normalize(torch::stack(p)).to(device),
        stats.action.normalize(torch::stack(a)).to(device)};
  };
  int64_t current_step = 0;
  auto location_sigma = [&] {
    const double half = std::max<int64_t>(1, opt.steps / 2);
    const double f = std::min(1.0, static_cast<double>(current_step) / half);
    const double start = std::max(opt.location_sigma_start, opt.location_sigma);
    return start + (opt.location_sigma - start) * f;
  };
  // Named port x/y of each sample's episode / kLocateScale -> [B, 2] on the device.
  auto locate_target = [&](const std::vector<TrainingDraw>& b) {
    std::vector<float> xy;
    for (auto& s : b) {
      const auto& ep = d.episodes[s.ep];
      for (int k = 0; k < 2; ++k)
        xy.push_back(static_cast<float>(ep.ports[ep.target].pos[k] / kLocateScale));
    }
    return torch::tensor(xy).view({-1, 2}).to(device);
  };
  // Dense targets of a batch -> [B, tokens, 1 + colours] on the device.
  const int dense_view = cfg.use_views.empty() ? 0 : cfg.use_views[0];
  auto dense_target = [&](const std::vector<TrainingDraw>& b) {
    std::vector<torch::Tensor> t;
    for (auto& s : b)
      t.push_back(dense_grounding_target(d.episodes[s.ep], dense_view, grid_h, grid_w, colours));
    return torch::stack(t).to(device);
  };
  auto batch_loss = [&](const std::vector<TrainingDraw>& b,
                        const VlmBatch* pre = nullptr) -> torch::Tensor {
    if (caption) {
      std::vector<const std::vector<Image>*> v;
      std::vector<std::string> prompts, caps;
      std::vector<torch::Tensor> soft;
      for (auto& s : b) {
        const auto& ep = d.episodes[s.ep];
        v.push_back(&d.views[s.ep][s.target_tick]);
        if (grounding) {
          // The policy's own prompt (the instruction): its last token is the VL feature.
          prompts.push_back(ep.instruction);
          caps.push_back(grounding_caption(ep, s.target_tick, *grid));
          const auto& p = ep.ports[ep.target].pos;
          soft.push_back(grid->soft_target(p[0], p[1], vlm->vocab_size(), location_sigma()));
        } else {
          prompts.push_back(caption_prompt(s.lang));
          caps.push_back(scene_caption(ep, s.target_tick, s.lang));
        }
      }
      torch::Tensor loss = torch::zeros({}, torch::TensorOptions().device(device));
      if (opt.caption_weight > 0)
        loss = opt.caption_weight *
               vlm->caption_loss_batch(v, prompts, caps,
                                       soft.empty() ? torch::Tensor() : torch::stack(soft));
      if (locate_head || dense_head) {
        auto f = vlm->encode_prepared(pre ? *pre : prepare_vlm(b));
        if (locate_head)
          loss = loss + opt.locate_weight *
                            torch::mse_loss(locate_head->forward(f.flatten(1)), locate_target(b));
        if (dense_head) {
          const int64_t n = static_cast<int64_t>(grid_h) * grid_w;
          VLA_CHECK(f.size(1) > n, "train: dense grounding expects ", n,
                    " image tokens first in the features, got ", f.size(1), " tokens");
          auto pred = dense_head->forward(f.narrow(1, 0, n));
          loss = loss + opt.dense_weight * (pred - dense_target(b)).pow(2).sum(1).mean();
        }
      }
      return loss;
    }
    auto x = expert_batch(b, true, pre);
    if (cfg.vl_dropout > 0 && expert->is_training()) {
      auto keep = (torch::rand({x.vl.size(0), 1, 1}) >= cfg.vl_dropout).to(device, torch::kFloat32);
      x.vl = x.vl * keep;
    }
    return expert->loss(x.vl, x.force, x.proprio, x.actions);
  };

  // Held-out metric: stage 1/2: MSE of the deterministic prediction (normalised actions, fresh
  // features); caption: mean caption loss. Uses its own RNG so training is unaffected.
  auto holdout_loss = [&]() -> double {
    if (ho.empty()) return -1.0;
    std::mt19937_64 g(opt.seed + 7);
    auto saved = torch_rng_state();
    torch::NoGradGuard ng;
    if (expert) expert->eval();
    if (vlm && opt.stage != "1") vlm->set_training(false);
    double sum = 0;
    int n = 0;
    for (int k = 0; k < 4; ++k) {
      std::vector<TrainingDraw> b;
      for (int i = 0; i < std::min(opt.batch, 64); ++i) b.push_back(draw(g, true));
      if (caption) {
        sum += batch_loss(b).item<double>();
      } else {
        auto x = expert_batch(b, false);
        sum += torch::mse_loss(expert->predict(x.vl, x.force, x.proprio), x.actions).item<double>();
      }
      ++n;
    }
    if (expert) expert->train();
    if (vlm && opt.stage != "1") vlm->set_training(true);
    set_torch_rng_state(saved);
    return sum / n;
  };

  // ---- loop
  make_dirs(opt.out);
  Checkpoint ckpt{opt.out + "/checkpoint"};
  TrainReport rep;
  int64_t step = 0;
  if (opt.resume && file_exists(ckpt.dir + "/state.json")) {
    step = ckpt.load(all_params, optimizer, rng, rep.loss_steps, rep.losses);
    log_info("resumed from ", ckpt.dir, " at step ", step);
  }
  ProgressBar bar(str_cat("train stage ", opt.stage), opt.steps);
  if (step > 0 && opt.progress) bar.tick(step);
  Stopwatch sw;
  int64_t samples = 0;
  double ema = -1;
  bool interrupted = false;
  // Batches are drawn one step ahead so that the next batch's VLM inputs are prepared on a
  // background thread (decoding, preprocessing, tokenisation, the host-to-device copy) while this
  // one trains. `rng_at` is the sampler state before the batch of `step` was drawn: checkpoints
  // save it, so the sample sequence (and a resumed run) is the same as drawing in the loop.
  auto draw_batch = [&] {
    std::vector<TrainingDraw> b;
    for (int i = 0; i < opt.batch; ++i) b.push_back(draw(rng, false));
    return b;
  };
  std::mt19937_64 rng_at = rng;
  std::vector<TrainingDraw> b = draw_batch();
  std::atomic<int64_t> prepare_ns{0};  // background preparation time, summed
  auto prepare_async = [&](const std::vector<TrainingDraw>& batch) {
    return vlm_forward ? std::async(std::launch::async,
                                    [&, batch] {
                                      Stopwatch w;
                                      auto out = prepare_vlm(batch);
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
      ckpt.save(step, all_params, optimizer, rng_at, rep.loss_steps, rep.losses);
      log_info("stop requested: checkpoint at step ", step, " in ", ckpt.dir,
               "; saving the model trained so far");
      interrupted = true;
      break;
    }
    current_step = step;
    set_group_lrs(optimizer, base_lr, lr_factor(step, opt.warmup, opt.steps, opt.lr_min_factor));
    Stopwatch phase;
    std::optional<VlmBatch> pre;
    if (pending.valid()) pre = pending.get();
    const std::vector<TrainingDraw> cur = std::move(b);
    rng_at = rng;
    b = draw_batch();
    if (step + 1 < opt.steps) pending = prepare_async(b);
    t_wait += phase.elapsed_ms();
    phase.reset();
    auto loss = batch_loss(cur, pre ? &*pre : nullptr);
    t_forward += phase.elapsed_ms();
    phase.reset();
    optimizer.zero_grad();
    loss.backward();
    t_backward += phase.elapsed_ms();
    phase.reset();
    if (opt.grad_clip > 0) torch::nn::utils::clip_grad_norm_(all_params, opt.grad_clip);
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
      log_info("step ", step + 1, ": held-out loss ", fmt_double(holdout_loss(), 5));
    if (opt.checkpoint_every > 0 && (step + 1) % opt.checkpoint_every == 0 && step + 1 < opt.steps)
      ckpt.save(step + 1, all_params, optimizer, rng_at, rep.loss_steps, rep.losses);
    if (opt.stop_after > 0 && step + 1 == opt.stop_after && step + 1 < opt.steps) {
      if (pending.valid()) pending.wait();
      ckpt.save(step + 1, all_params, optimizer, rng_at, rep.loss_steps, rep.losses);
      rep.steps = step + 1;
      rep.extra["interrupted"] = true;
      return rep;
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
  rep.holdout_loss = holdout_loss();
  write_png(opt.out + "/loss.png", plot_loss_curve(rep.loss_steps, rep.losses));

  // ---- outputs (saved from the CPU, where inference runs)
  if (expert) expert->to(torch::kCPU);
  if (vlm && opt.stage != "1") vlm->to(torch::kCPU);
  if (vlm && opt.stage != "1") {
    vlm->set_training(false);
    if (opt.stage == "2" && opt.finetune == "lora") vlm->merge_lora();
    vlm->refresh_fingerprint();
  }
  if (grounding) {
    // Greedy location token on held-out episodes: error of its cell centre (mm).
    std::vector<size_t> eval_eps = ho.empty() ? tr : ho;
    if (static_cast<int>(eval_eps.size()) > 4 * opt.caption_eval_episodes)
      eval_eps.resize(4 * opt.caption_eval_episodes);
    std::vector<double> errs;
    int unparsed = 0;
    nlohmann::json examples = nlohmann::json::array();
    for (size_t e : eval_eps) {
      const auto& ep = d.episodes[e];
      auto h = vlm->caption(d.views[e][0], ep.instruction, 1);
      auto at = LocationGrid::parse(h);
      if (!at) {
        ++unparsed;
        continue;
      }
      const auto& p = ep.ports[ep.target].pos;
      errs.push_back(1000.0 * std::hypot((*at)[0] - p[0], (*at)[1] - p[1]));
      if (examples.size() < 3)
        examples.push_back(
            {{"instruction", ep.instruction}, {"answer", h}, {"truth", grid->token(p[0], p[1])}});
    }
    rep.extra["grounding"] = {{"episodes", eval_eps.size()},
                              {"location_error_mm", errs.empty() ? -1.0 : mean(errs)},
                              {"no_location_token", unparsed},
                              {"examples", examples}};
    if (locate_head || dense_head) {
      // The grounding heads on the same held-out episodes, each frame encoded once: the
      // localisation head's mean x/y distance (mm); the dense head's instructed-port channel read
      // as the weighted mean of the token centres around its peak (3x3 tokens), mean distance in
      // pixels of the recorded view.
      if (locate_head) locate_head->to(torch::kCPU);
      if (dense_head) dense_head->to(torch::kCPU);
      torch::NoGradGuard ng;
      std::vector<double> head_errs, px_errs;
      const int64_t n = static_cast<int64_t>(grid_h) * grid_w;
      auto cx = (torch::arange(n) % std::max(1, grid_w)).to(torch::kFloat32) + 0.5;
      auto cy =
          torch::div(torch::arange(n), std::max(1, grid_w), "floor").to(torch::kFloat32) + 0.5;
      for (size_t e : eval_eps) {
        const auto& ep = d.episodes[e];
        auto f = vlm->encode_batch({&d.views[e][0]}, {ep.instruction});
        if (locate_head) {
          auto xy = locate_head->forward(f.flatten(1))[0] * kLocateScale;
          const auto& p = ep.ports[ep.target].pos;
          head_errs.push_back(1000.0 *
                              std::hypot(xy[0].item<double>() - p[0], xy[1].item<double>() - p[1]));
        }
        if (!dense_head) continue;
        auto g = dense_head->forward(f[0].narrow(0, 0, n)).select(1, 0).clamp_min(0);
        const int64_t peak = g.argmax().item<int64_t>();
        g = g *
            (((cx - cx[peak]).abs() <= 1.0) & ((cy - cy[peak]).abs() <= 1.0)).to(g.scalar_type());
        const double sum = g.sum().item<double>();
        if (sum <= 0) continue;
        const double u = (g * cx).sum().item<double>() / sum * ep.width / grid_w;
        const double v = (g * cy).sum().item<double>() / sum * ep.height / grid_h;
        const auto& px = ep.ports[ep.target].pixels[dense_view];
        px_errs.push_back(std::hypot(u - px[0], v - px[1]));
      }
      if (locate_head) rep.extra["grounding"]["locate_head_error_mm"] = mean(head_errs);
      if (dense_head) {
        rep.extra["grounding"]["dense_error_px"] = px_errs.empty() ? -1.0 : mean(px_errs);
        rep.extra["grounding"]["dense_grid"] = {grid_h, grid_w};
      }
    }
    vlm->save(opt.out);
  } else if (caption) {
    // Caption metrics on held-out episodes (greedy), English and Korean.
    nlohmann::json m;
    std::vector<size_t> eval_eps = ho.empty() ? tr : ho;
    if (static_cast<int>(eval_eps.size()) > opt.caption_eval_episodes)
      eval_eps.resize(opt.caption_eval_episodes);
    for (std::string lang : {"en", "ko"}) {
      std::vector<eval::Tokens> hyps;
      std::vector<std::vector<eval::Tokens>> refs;
      nlohmann::json examples = nlohmann::json::array();
      for (size_t e : eval_eps) {
        for (int t : {0, d.ticks[e].num_ticks / 2}) {
          auto h = vlm->caption(d.views[e][t], caption_prompt(lang), 96);
          auto r = scene_caption(d.episodes[e], t, lang);
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
    vlm->save(opt.out);
  } else {
    policy::Policy pol(cfg, expert, stats, vlm, provenance);
    pol.save(opt.out);
  }
  nlohmann::json rj = rep.to_json();
  rj["provenance"] = provenance;
  write_json_atomic(opt.out + "/train_report.json", rj);
  if (!interrupted) vla::remove_tree(ckpt.dir);  // an interrupted run keeps it for --resume
  (void)have_init;
  return rep;
}

}  // namespace vla::train
