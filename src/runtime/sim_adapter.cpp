// Adapters between the runtime and the MuJoCo needle environment / scripted expert.
#include "runtime/runtime.h"

namespace vla::runtime {

std::string SimPlant::instruction() { return env_.instruction(); }
std::vector<Image> SimPlant::render() { return env_.render(); }

void SimPlant::set_chunk(const std::vector<Action>& chunk) {
  // The env accepts at most kChunkSize actions; a longer plan is cut (it is replanned next tick).
  if (chunk.size() <= static_cast<size_t>(vla::sim::kChunkSize)) {
    env_.set_chunk(chunk);
  } else {
    env_.set_chunk(vla::sim::Chunk(chunk.begin(), chunk.begin() + vla::sim::kChunkSize));
  }
}

Sample SimPlant::step_physics() {
  env_.step_physics();
  Sample s;
  const auto& log = env_.force_log();
  if (!log.empty()) {
    s.t = log.back().t;
    s.f = log.back().f;
  } else {
    s.t = env_.time();
  }
  return s;
}

Action SimPlant::proprio() { return env_.proprio(); }
double SimPlant::time() { return env_.time(); }

PlantOutcome SimPlant::outcome() {
  const auto& o = env_.outcome();
  PlantOutcome p;
  p.done = o.done;
  p.success = o.success;
  p.reason = o.reason;
  return p;
}

PolicyFns expert_policy(vla::sim::NeedleEnv& env) {
  auto expert = std::make_shared<vla::sim::ScriptedExpert>();
  auto last_seen = std::make_shared<int64_t>(-1);
  PolicyFns p;
  p.name = "scripted-expert";
  p.sensor_window = 65;
  p.horizon = vla::sim::kChunkSize;
  p.encode = [](const std::vector<Image>& views, const std::string&) {
    VLA_CHECK(!views.empty(), "expert policy: no views rendered");
    return torch::zeros({1});
  };
  p.act = [&env, expert, last_seen](const torch::Tensor&, const torch::Tensor&,
                                    const torch::Tensor&) {
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

}  // namespace vla::runtime
