// Running and recording scripted-demonstrator episodes.
#include <algorithm>
#include <cmath>
#include <random>

#include "sim/sim.h"

namespace vla::sim {

RolloutResult run_episode(NeedleEnv& env, const ChunkPolicy& policy, uint64_t seed, int target_port,
                          Recording* record, const RolloutOptions& opts) {
  VLA_CHECK(policy || opts.labeler, "run_episode: no policy and no labeler");
  VLA_CHECK(std::isfinite(opts.action_noise_std) && opts.action_noise_std >= 0.0,
            "run_episode: action noise must be >= 0, got ", opts.action_noise_std);
  std::mt19937_64 rng(opts.noise_seed * 0x9E3779B97F4A7C15ULL + seed);
  std::normal_distribution<double> gauss(0.0, 1.0);
  std::vector<Chunk> labels;
  env.reset(seed, target_port);
  Stopwatch sw;
  const bool render = record != nullptr;
  if (record) {
    *record = Recording{};
    record->instruction = env.instruction();
    record->seed = seed;
    record->width = env.config().width;
    record->height = env.config().height;
    for (int v = 0; v < env.config().num_views; ++v) record->view_names.push_back(view_names()[v]);
    // Where each port appears in each view's first frame (keypoint labels for dense grounding).
    for (const PortInfo& p : env.scene().ports) {
      std::vector<std::array<double, 2>> px;
      for (int v = 0; v < env.config().num_views; ++v) {
        double u = -1, w = -1;
        if (!env.project(v, p.pos, &u, &w)) u = w = -1;
        px.push_back({u, w});
      }
      record->port_pixels.push_back(std::move(px));
    }
  }
  int ticks = 0;
  while (!env.outcome().done && (opts.max_ticks <= 0 || ticks++ < opts.max_ticks)) {
    if (render) record->frames.push_back(env.render());
    Chunk label;
    if (opts.labeler) label = opts.labeler(env);  // the state this tick's chunk starts from
    Chunk chunk = policy ? policy(env) : label;
    if (opts.action_noise_std > 0.0) {
      for (auto& a : chunk)
        for (int k = 0; k < kActionDim; ++k) {
          const double s = opts.action_noise_std * (k == 2 ? 0.5 : 1.0);
          a[k] = static_cast<float>(
              std::clamp(a[k] + s * gauss(rng), -kMaxActionDelta, kMaxActionDelta));
        }
    }
    if (opts.labeler) {
      label.resize(kChunkSize, label.empty() ? Action{0, 0, 0} : label.back());
      labels.push_back(label);
    }
    env.step_chunk(chunk);
  }
  RolloutResult r;
  r.outcome = env.outcome();
  r.steps = env.steps();
  r.wall_s = sw.elapsed_s();
  if (record) {
    record->scene = env.scene();
    record->outcome = r.outcome;
    if (!r.outcome.done) record->outcome.reason = "truncated";
    record->force = env.force_log();
    const auto& log = env.action_log();
    for (size_t i = 0; i < log.size(); ++i) {
      // With a labeler, action i is the label of its tick (8 per tick; a short chunk was padded
      // with its last action above, as the env holds).
      const size_t tick = i / kChunkSize;
      record->actions.push_back(opts.labeler && tick < labels.size() ? labels[tick][i % kChunkSize]
                                                                     : log[i].action);
      record->proprio.push_back(log[i].proprio);
    }
    record->driver = opts.labeler ? (policy ? "dagger" : "dart") : "scripted";
    record->labelled = static_cast<bool>(opts.labeler);
    record->action_noise_std = opts.action_noise_std;
    record->force_noise_std = env.config().force_noise_std;
  }
  return r;
}

ChunkPolicy demonstrator_policy(std::shared_ptr<ScriptedDemonstrator> expert) {
  expert->reset();
  return [expert](const NeedleEnv& env) {
    if (env.steps() == 0) expert->reset();
    return expert->act(env);
  };
}

}  // namespace vla::sim
