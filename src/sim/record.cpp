// Running and recording scripted-expert episodes.
#include "sim/sim.h"

namespace vla::sim {

EpisodeResult run_episode(NeedleEnv& env, const Policy& policy, uint64_t seed, int target_port,
                          dataset::EpisodeData* record) {
  env.reset(seed, target_port);
  Stopwatch sw;
  const bool render = record != nullptr;
  if (record) {
    *record = dataset::EpisodeData{};
    record->instruction = env.instruction();
    record->seed = seed;
    record->width = env.config().width;
    record->height = env.config().height;
    for (int v = 0; v < env.config().num_views; ++v) record->view_names.push_back(view_names()[v]);
  }
  while (!env.outcome().done) {
    if (render) record->frames.push_back(env.render());
    env.step_chunk(policy(env));
  }
  EpisodeResult r;
  r.outcome = env.outcome();
  r.steps = env.steps();
  r.wall_s = sw.elapsed_s();
  if (record) {
    const SceneInfo scene = env.scene();
    record->success = r.outcome.success;
    record->reason = r.outcome.reason;
    record->duration_s = r.outcome.time_s;
    record->peak_force = r.outcome.peak_force;
    record->target = scene.target;
    for (const PortInfo& p : scene.ports) {
      dataset::PortMeta pm;
      pm.color = p.color;
      pm.color_ko = p.color_ko;
      pm.pos = p.pos;
      pm.rgb = {p.rgb[0], p.rgb[1], p.rgb[2]};
      pm.radius = p.radius;
      record->ports.push_back(pm);
    }
    for (const ForceSample& f : env.force_log()) {
      record->force.push_back(
          {static_cast<float>(f.t), f.f[0], f.f[1], f.f[2], f.f[3], f.f[4], f.f[5]});
    }
    for (const ActionRecord& a : env.action_log()) {
      record->actions.push_back(a.action);
      record->proprio.push_back(a.proprio);
    }
    record->extra["surface_z"] = scene.surface_z;
    record->extra["force_noise_std"] = env.config().force_noise_std;
    record->extra["policy"] = "expert";
  }
  return r;
}

Policy expert_policy(std::shared_ptr<ScriptedExpert> expert) {
  expert->reset();
  return [expert](const NeedleEnv& env) {
    if (env.steps() == 0) expert->reset();
    return expert->act(env);
  };
}

}  // namespace vla::sim
