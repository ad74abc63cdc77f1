// Closed-loop experiments on the real simulator: the scripted expert through the runtime in sim
// time (deterministic) and a sensor fault injected into the real simulator in wall time.
#include "closed_loop/closed_loop.h"

#include <gtest/gtest.h>

#include "runtime/fault_plant.h"

using namespace vla::runtime;
using namespace vla::runtime::testing;
using vla::closed_loop::expert_policy;
using vla::closed_loop::SimPlant;

namespace {

TEST(SimPlantClosedLoop, ScriptedExpertDeterministicInSimTime) {
  vla::sim::EnvConfig ec;
  ec.width = ec.height = 32;
  ec.num_views = 1;
  auto run = [&] {
    vla::sim::NeedleEnv env(ec);
    env.reset(3);
    SimPlant plant(env);
    RuntimeConfig cfg;
    cfg.vlm_latency_s = 0.3;
    cfg.record_chunks = true;
    return run_sim_time(plant, expert_policy(plant), cfg);
  };
  EpisodeResult a = run(), b = run();
  ASSERT_EQ(a.chunks.size(), b.chunks.size());
  for (size_t i = 0; i < a.chunks.size(); ++i) ASSERT_EQ(a.chunks[i], b.chunks[i]) << i;
  EXPECT_EQ(a.outcome.reason, b.outcome.reason);
  EXPECT_TRUE(a.outcome.success) << a.outcome.reason;
}

TEST(SimPlantClosedLoop, WallTimeNaNForceHoldsOnRealSim) {
  vla::sim::EnvConfig ec;
  ec.width = ec.height = 32;
  ec.num_views = 1;
  vla::sim::NeedleEnv env(ec);
  env.reset(4);
  SimPlant sim(env);
  FaultyPlant plant(sim, Fault::kNaN, 0.3, 0.5);
  PolicyFns p;
  p.encode = [](const std::vector<vla::Image>& v, const std::string&) {
    return torch::full({4}, static_cast<float>(v.size()));
  };
  p.act = [](const torch::Tensor&, const torch::Tensor& w, const torch::Tensor&) {
    return torch::zeros({8, 3}) + w.mean() * 0;
  };
  RuntimeConfig cfg;
  cfg.action_hz = 20;
  cfg.max_duration_s = 0.9;
  EpisodeResult ep = run_wall_time(plant, p, cfg);
  EXPECT_GE(count_status(ep, TickStatus::kHoldSensor), 2);
  EXPECT_GT(count_status(ep, TickStatus::kAct), 2);
}

}  // namespace
