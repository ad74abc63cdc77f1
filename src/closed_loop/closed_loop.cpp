// The needle simulator as a runtime Plant, the scripted demonstrator as runtime policy, closed-loop
// episodes, and a learned policy as a synchronous simulator policy.
#include "closed_loop/closed_loop.h"

#include <cstdlib>

namespace vla::closed_loop {

std::string SimPlant::instruction() {
  std::lock_guard<std::mutex> lock(mu_);
  return env_.instruction();
}
std::vector<Image> SimPlant::render() {
  std::lock_guard<std::mutex> lock(mu_);
  return env_.render();
}

void SimPlant::set_chunk(const std::vector<Action>& chunk) {
  std::lock_guard<std::mutex> lock(mu_);
  // The env accepts at most kChunkSize actions; a longer plan is cut (it is replanned next tick).
  if (chunk.size() <= static_cast<size_t>(vla::sim::kChunkSize)) {
    env_.set_chunk(chunk);
  } else {
    env_.set_chunk(vla::sim::Chunk(chunk.begin(), chunk.begin() + vla::sim::kChunkSize));
  }
}

ForceSample SimPlant::step_physics() {
  std::lock_guard<std::mutex> lock(mu_);
  env_.step_physics();
  ForceSample s;
  const auto& log = env_.force_log();
  if (!log.empty()) {
    s.t = log.back().t;
    s.f = log.back().f;
  } else {
    s.t = env_.time();
  }
  return s;
}

Action SimPlant::proprio() {
  std::lock_guard<std::mutex> lock(mu_);
  return env_.proprio();
}
double SimPlant::time() {
  std::lock_guard<std::mutex> lock(mu_);
  return env_.time();
}

PlantOutcome SimPlant::outcome() {
  std::lock_guard<std::mutex> lock(mu_);
  const auto& o = env_.outcome();
  PlantOutcome p;
  p.done = o.done;
  p.success = o.success;
  p.reason = o.reason;
  return p;
}

PolicyFns demonstrator_fns(SimPlant& plant) {
  auto expert = std::make_shared<vla::sim::ScriptedDemonstrator>();
  auto last_seen = std::make_shared<int64_t>(-1);
  PolicyFns p;
  p.name = "scripted-demonstrator";
  p.sensor_window = kForceWindow;
  p.horizon = vla::sim::kChunkSize;
  p.encode = [](const std::vector<Image>& views, const std::string&) {
    VLA_CHECK(!views.empty(), "expert policy: no views rendered");
    return torch::zeros({1});
  };
  p.act = [&plant, expert, last_seen](const torch::Tensor&, const torch::Tensor&,
                                      const torch::Tensor&) {
    std::lock_guard<std::mutex> lock(plant.mutex());
    vla::sim::NeedleEnv& env = plant.env();
    // A new episode restarts at step 0: reset the expert's phase machine.
    if (env.steps() < *last_seen || *last_seen < 0) expert->reset();
    *last_seen = env.steps();
    vla::sim::Chunk c = expert->act(env);
    auto out = torch::zeros({static_cast<int64_t>(vla::sim::kChunkSize), 3});
    for (size_t i = 0; i < c.size() && i < static_cast<size_t>(vla::sim::kChunkSize); ++i)
      for (int k = 0; k < 3; ++k) out[static_cast<int64_t>(i)][k] = c[i][k];
    return out;
  };
  return p;
}

namespace {

// The simulator with its cameras replaced by a replay of frames rendered up front: every other
// call goes to the simulator.
class ReplayCameraPlant : public Plant {
 public:
  ReplayCameraPlant(SimPlant& sim, int frame_sets) : sim_(sim) {
    for (int i = 0; i < frame_sets; ++i) frames_.push_back(sim_.render());
  }
  std::string instruction() override { return sim_.instruction(); }
  std::vector<Image> render() override {
    std::lock_guard<std::mutex> lock(mu_);
    return frames_[next_++ % frames_.size()];
  }
  void set_chunk(const std::vector<Action>& chunk) override { sim_.set_chunk(chunk); }
  ForceSample step_physics() override { return sim_.step_physics(); }
  Action proprio() override { return sim_.proprio(); }
  double time() override { return sim_.time(); }
  PlantOutcome outcome() override { return sim_.outcome(); }

 private:
  SimPlant& sim_;
  std::vector<std::vector<Image>> frames_;
  std::mutex mu_;
  size_t next_ = 0;
};

}  // namespace

}  // namespace vla::closed_loop

namespace vla::closed_loop {

bool is_scripted_policy(const std::string& name) { return name == "scripted" || name == "expert"; }

std::vector<EpisodeResult> run_closed_loop(const ClosedLoopOptions& opt,
                                           const std::atomic<bool>* stop) {
  VLA_CHECK(opt.episodes > 0, "--episodes must be > 0, got ", opt.episodes);
  vla::sim::EnvConfig ec;
  if (opt.time_limit_s > 0) ec.time_limit_s = opt.time_limit_s;
  const bool scripted = is_scripted_policy(opt.policy);
  std::shared_ptr<vla::policy::Policy> learned;
  if (!scripted) {
    if (opt.vlm_override.empty()) {
      learned = vla::policy::Policy::load(opt.policy, opt.vlm);
    } else {
      const auto like = vla::policy::Policy::load(opt.policy);
      const std::string dir = vla::policy::vlm_folder_with_tokenizer(
          opt.vlm_override, like->info()["dir"].get<std::string>() + "/vlm", opt.vlm_work_dir);
      learned = vla::policy::Policy::untrained_for(
          *like, dir, opt.vlm, opt.num_views > 0 ? opt.num_views : like->num_views(),
          opt.image_width > 0 ? opt.image_width : like->image_width(),
          opt.image_height > 0 ? opt.image_height : like->image_height());
      log_warn("VLM ", opt.vlm_override, " with an UNTRAINED action expert: timing only");
    }
    ec.num_views = learned->num_views();
    ec.width = learned->image_width();
    ec.height = learned->image_height();
  }
  if (scripted) {
    ec.num_views = 1;
    ec.width = ec.height = 64;
  }
  // Wall time: llvmpipe would spread each render over all cores and preempt the action loop.
  if (opt.wall_time) setenv("LP_NUM_THREADS", "1", /*overwrite=*/0);
  vla::sim::NeedleEnv env(ec);
  SimPlant plant(env);
  PolicyFns fns;
  if (scripted) {
    fns = demonstrator_fns(plant);
  } else {
    fns = runtime::policy_fns(learned);
  }
  std::vector<EpisodeResult> out;
  std::unique_ptr<ProgressBar> bar;
  if (opt.progress) bar = std::make_unique<ProgressBar>("episodes", opt.episodes);
  int succ = 0;
  for (int i = 0; i < opt.episodes; ++i) {
    if (stop && stop->load()) break;
    env.reset(opt.seed + static_cast<uint64_t>(i));
    RuntimeConfig rt = opt.rt;
    rt.record_frames = i < opt.record_frames_episodes;
    std::unique_ptr<ReplayCameraPlant> replay;
    if (opt.replay_frames > 0)
      replay = std::make_unique<ReplayCameraPlant>(plant, opt.replay_frames);
    Plant& p = replay ? static_cast<Plant&>(*replay) : plant;
    EpisodeResult ep = opt.wall_time ? runtime::run_wall_time(p, fns, rt, stop)
                                     : runtime::run_sim_time(p, fns, rt);
    succ += ep.outcome.success;
    log_debug("episode ", i, " seed ", opt.seed + i, ": ", ep.outcome.reason);
    const bool interrupted = ep.interrupted;
    out.push_back(std::move(ep));
    if (bar) bar->tick(1, str_cat("success ", succ, "/", i + 1));
    if (interrupted) break;
  }
  if (bar) bar->finish();
  return out;
}

vla::sim::ChunkPolicy sim_policy(std::shared_ptr<vla::policy::Policy> policy) {
  VLA_CHECK(policy != nullptr, "runtime: null policy");
  // Scene memory: the first features of the episode, kept until the env is reset.
  struct Memory {
    torch::Tensor first;
    int64_t steps = -1;
  };
  auto memory = std::make_shared<Memory>();
  return [policy, memory](const vla::sim::NeedleEnv& env) {
    // render() is not const (it makes the GL context current); the env is only read otherwise.
    auto views = const_cast<vla::sim::NeedleEnv&>(env).render();
    auto vl = policy->encode(views, env.instruction());
    if (env.steps() <= memory->steps || !memory->first.defined())
      memory->first = vl;  // new episode
    memory->steps = env.steps();
    vl = policy->expert_features(memory->first, vl);
    const int64_t w = policy->sensor_window();
    auto window = torch::zeros({w, vla::sim::kForceDim});
    const auto& log = env.force_log();
    const int64_t n = std::min<int64_t>(w, static_cast<int64_t>(log.size()));
    for (int64_t i = 0; i < n; ++i) {
      const auto& f = log[log.size() - static_cast<size_t>(n) + static_cast<size_t>(i)].f;
      for (int k = 0; k < vla::sim::kForceDim; ++k) window[w - n + i][k] = f[k];
    }
    const auto p = env.proprio();
    auto chunk = policy->act(vl, window, torch::tensor({p[0], p[1], p[2]}));
    vla::sim::Chunk out(
        static_cast<size_t>(std::min<int64_t>(chunk.size(0), vla::sim::kChunkSize)));
    for (size_t i = 0; i < out.size(); ++i)
      for (int k = 0; k < vla::sim::kActionDim; ++k)
        out[i][k] = chunk[static_cast<int64_t>(i)][k].item<float>();
    return out;
  };
}

vla::dataset::EpisodeData to_episode_data(vla::sim::Recording rec) {
  vla::dataset::EpisodeData ep;
  ep.instruction = rec.instruction;
  ep.seed = rec.seed;
  ep.success = rec.outcome.success;
  ep.reason = rec.outcome.reason;
  ep.duration_s = rec.outcome.time_s;
  ep.peak_force = rec.outcome.peak_force;
  ep.target = rec.scene.target;
  ep.view_names = rec.view_names;
  ep.width = rec.width;
  ep.height = rec.height;
  for (size_t k = 0; k < rec.scene.ports.size(); ++k) {
    const vla::sim::PortInfo& p = rec.scene.ports[k];
    vla::dataset::PortMeta pm;
    pm.color = p.color;
    pm.color_ko = p.color_ko;
    pm.pos = p.pos;
    pm.rgb = {p.rgb[0], p.rgb[1], p.rgb[2]};
    pm.radius = p.radius;
    if (k < rec.port_pixels.size()) pm.pixels = rec.port_pixels[k];
    ep.ports.push_back(std::move(pm));
  }
  ep.frames = std::move(rec.frames);
  ep.force.reserve(rec.force.size());
  for (const vla::ForceSample& f : rec.force)
    ep.force.push_back({static_cast<float>(f.t), f.f[0], f.f[1], f.f[2], f.f[3], f.f[4], f.f[5]});
  ep.actions.assign(rec.actions.begin(), rec.actions.end());
  ep.proprio = rec.proprio;
  ep.extra["surface_z"] = rec.scene.surface_z;
  ep.extra["force_noise_std"] = rec.force_noise_std;
  ep.extra["policy"] = rec.driver;
  ep.extra["action_noise_std"] = rec.action_noise_std;
  ep.extra["labels"] = rec.labelled ? "labeler" : "executed";
  return ep;
}

}  // namespace vla::closed_loop
