// vla closed_loop: experiments that close the loop between a policy and the needle simulator
// through the dual-rate runtime -- closed-loop episodes in sim time or wall time (`vla run`,
// `vla eval closed-loop`, `vla eval staleness`, `vla eval language`), the scripted demonstrator as
// a runtime policy, and a learned policy as a synchronous simulator policy (DAgger rollouts). It
// sits above src/runtime (which knows neither the simulator nor these experiments) and src/sim; it
// is built with the simulator.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dataset/dataset.h"
#include "policy/policy.h"
#include "runtime/runtime.h"
#include "sim/sim.h"

namespace vla::closed_loop {

using runtime::Action;
using runtime::EpisodeResult;
using runtime::Plant;
using runtime::PlantOutcome;
using runtime::PolicyFns;
using runtime::RuntimeConfig;

// The MuJoCo needle environment as a Plant (reset it before the episode).
class SimPlant : public Plant {
 public:
  explicit SimPlant(vla::sim::NeedleEnv& env) : env_(env) {}
  std::string instruction() override;
  std::vector<Image> render() override;
  void set_chunk(const std::vector<Action>& chunk) override;
  ForceSample step_physics() override;
  Action proprio() override;
  double time() override;
  PlantOutcome outcome() override;
  vla::sim::NeedleEnv& env() { return env_; }
  // Every call above holds this lock, so a privileged policy (the scripted demonstrator) can read
  // the env from the loop thread while the physics thread steps it.
  std::mutex& mutex() { return mu_; }

 private:
  vla::sim::NeedleEnv& env_;
  std::mutex mu_;
};
// The scripted demonstrator as a policy (privileged: reads the env under the plant's lock). In wall
// time its act() waits for renders in progress, so loop jitter with it is not representative.
PolicyFns demonstrator_fns(SimPlant& plant);

// Closed-loop episodes of a policy in the needle simulator (what `vla eval closed-loop`,
// `vla eval staleness` and `vla run` share).
struct ClosedLoopOptions {
  std::string policy = "default";  // "default" | "no_reuse" | policy folder | "scripted"
  vla::policy::VlmOptions vlm;     // where and how the policy's VLM runs (the expert: CPU)
  bool wall_time = false;          // false: sim time (deterministic), true: real threads
  int episodes = 50;
  uint64_t seed = 1000;            // episode i uses seed + i
  RuntimeConfig rt;                // vlm_latency_s = 0 in sim time means synchronous
  int record_frames_episodes = 0;  // record VLM frames for the first N episodes
  double time_limit_s = 0;         // 0: the env's default
  bool progress = true;
  // A VLM to run instead of the policy's (a checkpoint or an architecture folder such as
  // assets/configs/qwen2.5-vl-3b-instruct: random weights; the policy's tokenizer when it has
  // none, see policy::vlm_folder_with_tokenizer, written to vlm_work_dir). The action expert is
  // then re-initialised for its features (Policy::untrained_for: UNTRAINED, its success is
  // meaningless) -- for measuring the runtime with a full-size VLM.
  std::string vlm_override;
  std::string vlm_work_dir = "out/run/vlm";
  int num_views = 0, image_width = 0, image_height = 0;  // camera shape; 0: the policy's
  // Frames the VLM thread sees: 0 = rendered live by the simulator (OSMesa on the CPU: ~40 ms per
  // 640x360 view, and the physics thread waits while it renders); N > 0 = N frame sets rendered
  // at the start of each episode, then replayed in turn (measures the VLM, not the camera).
  int replay_frames = 0;
};
// Whether a --policy value names the scripted demonstrator: "scripted" ("expert", its name before
// the learned network took the field's term "action expert", still works).
bool is_scripted_policy(const std::string& name);
// Runs the episodes; stops early (marking the run interrupted) when *stop becomes true.
std::vector<EpisodeResult> run_closed_loop(const ClosedLoopOptions& opt,
                                           const std::atomic<bool>* stop = nullptr);
// A learned policy as a synchronous simulator policy (one tick = render, encode fresh VL
// features, act on the last sensor_window force samples (zero padded at the start) and the
// proprio): what `vla datagen --policy P` rolls out for DAgger while the scripted demonstrator
// labels.
vla::sim::ChunkPolicy sim_policy(std::shared_ptr<vla::policy::Policy> policy);

// A simulator recording in the dataset format (what `vla datagen` writes): frames, the 650 Hz
// force stream as [t, fx, fy, fz, tx, ty, tz], 80 Hz actions and proprio, ports with their colours,
// positions and first-frame pixels, and the episode's settings under `extra`.
vla::dataset::EpisodeData to_episode_data(vla::sim::Recording rec);  // frames are moved

}  // namespace vla::closed_loop
