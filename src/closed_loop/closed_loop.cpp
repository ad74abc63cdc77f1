// The needle simulator as a runtime Plant, the scripted expert as runtime policy, closed-loop
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

PolicyFns expert_policy(SimPlant& plant) {
  auto expert = std::make_shared<vla::sim::ScriptedExpert>();
  auto last_seen = std::make_shared<int64_t>(-1);
  PolicyFns p;
  p.name = "scripted-expert";
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

std::vector<EpisodeResult> run_closed_loop(const ClosedLoopOptions& opt,
                                           const std::atomic<bool>* stop) {
  VLA_CHECK(opt.episodes > 0, "--episodes must be > 0, got ", opt.episodes);
  vla::sim::EnvConfig ec;
  if (opt.time_limit_s > 0) ec.time_limit_s = opt.time_limit_s;
  const bool expert = opt.policy == "expert";
  std::shared_ptr<vla::policy::Policy> learned;
  if (!expert) {
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
  if (expert) {
    ec.num_views = 1;
    ec.width = ec.height = 64;
  }
  // Wall time: llvmpipe would spread each render over all cores and preempt the action loop.
  if (opt.wall_time) setenv("LP_NUM_THREADS", "1", /*overwrite=*/0);
  vla::sim::NeedleEnv env(ec);
  SimPlant plant(env);
  PolicyFns fns;
  if (expert) {
    fns = expert_policy(plant);
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

}  // namespace vla::closed_loop
