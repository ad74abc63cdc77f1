// Options of the closed-loop commands (`vla run`, `vla eval closed-loop`, `vla eval staleness`).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "closed_loop/closed_loop.h"
#include "command.h"

namespace vla::cli {

// How a run's VLM ran, for its JSON report.
inline nlohmann::json vlm_options_json(const vla::policy::VlmOptions& v) {
  return {{"device", v.device},
          {"backend", v.backend},
          {"fp8", v.fp8},
          {"fp8_static", v.fp8_static},
          {"fp8_output_projections", v.fp8_output_projections}};
}

// What `vla run`, `vla eval closed-loop` and `vla eval staleness` share; defaults from the
// runtime's and the closed-loop runner's own (one source).
struct LoopArgs {
  std::string policy = vla::closed_loop::ClosedLoopOptions{}.policy;
  int episodes = vla::closed_loop::ClosedLoopOptions{}.episodes;
  uint64_t seed = vla::closed_loop::ClosedLoopOptions{}.seed;
  double action_hz = vla::runtime::RuntimeConfig{}.action_hz;
  double vlm_hz = vla::runtime::RuntimeConfig{}.vlm_hz;
  std::string blend = vla::runtime::to_string(vla::runtime::RuntimeConfig{}.blend);
  double max_staleness = vla::runtime::RuntimeConfig{}.max_staleness_s;
  double time_limit = 0;
  vla::policy::VlmOptions vlm;
};

inline void add_loop_options(CLI::App* c, LoopArgs& a) {
  c->add_option(
       "--policy", a.policy,
       "Policy: default | no_reuse | a policy folder | scripted (the scripted demonstrator)")
      ->capture_default_str();
  c->add_option("--episodes", a.episodes, "Episodes (seeds seed..seed+N-1)")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  c->add_option("--seed", a.seed, "First episode seed (1000+ are unseen by training data)")
      ->capture_default_str();
  c->add_option("--action-hz", a.action_hz, "Action loop rate (Hz)")
      ->check(CLI::Range(0.1, 1000.0))
      ->capture_default_str();
  c->add_option(
       "--vlm-hz", a.vlm_hz,
       "VLM launch rate (Hz); 0 = as fast as possible, at most one launch per action period")
      ->check(CLI::Range(0.0, 1000.0))
      ->capture_default_str();
  c->add_option("--blend", a.blend, "Chunk blending: replace | ensemble | rtc")
      ->check(CLI::IsMember({"replace", "ensemble", "rtc"}))
      ->capture_default_str();
  c->add_option("--max-staleness", a.max_staleness,
                "Feature age (s) beyond which the loop commands a safe stop")
      ->check(CLI::Range(1e-3, 1e6))
      ->capture_default_str();
  c->add_option("--time-limit", a.time_limit, "Episode time limit (s); 0 = simulator default")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  vla::cli::add_vlm_options(c, &a.vlm);
}

inline vla::closed_loop::ClosedLoopOptions make_options(const LoopArgs& a, double latency) {
  vla::closed_loop::ClosedLoopOptions o;
  o.policy = a.policy;
  o.vlm = a.vlm;
  o.episodes = a.episodes;
  o.seed = a.seed;
  o.time_limit_s = a.time_limit;
  o.rt.action_hz = a.action_hz;
  o.rt.vlm_hz = a.vlm_hz;
  o.rt.blend = vla::runtime::parse_blend(a.blend);
  o.rt.max_staleness_s = a.max_staleness;
  o.rt.vlm_latency_s = latency;
  return o;
}

}  // namespace vla::cli
