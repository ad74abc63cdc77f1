// Closed-loop experiments on the real simulator: the scripted demonstrator through the runtime in
// sim time (deterministic) and a sensor fault injected into the real simulator in wall time.
#include "closed_loop/closed_loop.h"

#include <gtest/gtest.h>

#include "runtime/fault_plant.h"

using namespace vla::runtime;
using namespace vla::runtime::testing;
using vla::closed_loop::demonstrator_fns;
using vla::closed_loop::SimPlant;

namespace {

TEST(SimPlantClosedLoop, ScriptedDemonstratorDeterministicInSimTime) {
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
    return run_sim_time(plant, demonstrator_fns(plant), cfg);
  };
  EpisodeResult a = run(), b = run();
  ASSERT_EQ(a.chunks.size(), b.chunks.size());
  for (size_t i = 0; i < a.chunks.size(); ++i) ASSERT_EQ(a.chunks[i], b.chunks[i]) << i;
  EXPECT_EQ(a.outcome.reason, b.outcome.reason);
  EXPECT_TRUE(a.outcome.success) << a.outcome.reason;
  // A healthy simulator's force stream has no stale samples (the finished env is not stepped on).
  EXPECT_EQ(a.sensor_rejected, 0);
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

// A recording written by the dataset writer and read back: every field the trainer uses survives.
TEST(ToEpisodeData, RecordingRoundTripsThroughTheDataset) {
  vla::sim::EnvConfig cfg;
  cfg.width = 48;
  cfg.height = 32;
  cfg.num_views = 2;
  vla::sim::NeedleEnv env(cfg);
  vla::sim::Recording rec;
  auto p = vla::sim::demonstrator_policy(std::make_shared<vla::sim::ScriptedDemonstrator>());
  ASSERT_TRUE(vla::sim::run_episode(env, p, 21, -1, &rec).outcome.success);
  const vla::sim::Recording copy = rec;
  const vla::dataset::EpisodeData ep = vla::closed_loop::to_episode_data(std::move(rec));
  EXPECT_EQ(ep.extra["policy"], "scripted");
  EXPECT_EQ(ep.extra["labels"], "executed");
  char tmpl[] = "/tmp/vla_closed_loop_test_XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  {
    vla::dataset::DatasetWriter w(dir + "/ds");
    w.write(ep);
  }
  auto ds = vla::dataset::Dataset::open(dir + "/ds");
  ASSERT_EQ(ds.size(), 1u);
  auto back = ds.load(0);
  EXPECT_EQ(back.instruction, copy.instruction);
  EXPECT_TRUE(back.success);
  EXPECT_EQ(back.seed, 21u);
  ASSERT_EQ(back.force.size(0), static_cast<int64_t>(copy.force.size()));
  EXPECT_EQ(back.force[5][0].item<float>(), static_cast<float>(copy.force[5].t));
  EXPECT_EQ(back.force[5][3].item<float>(), copy.force[5].f[2]);
  ASSERT_EQ(back.actions.size(0), static_cast<int64_t>(copy.actions.size()));
  EXPECT_EQ(back.actions[7][1].item<float>(), copy.actions[7][1]);
  EXPECT_EQ(back.proprio[7][2].item<float>(), copy.proprio[7][2]);
  ASSERT_EQ(back.frames.size(), copy.frames.size());
  EXPECT_EQ(back.frames[1][1].pixels, copy.frames[1][1].pixels);  // PNG is lossless
  EXPECT_EQ(back.ports[back.target].color, copy.scene.ports[copy.scene.target].color);
  for (size_t k = 0; k < back.ports.size(); ++k)
    for (int v = 0; v < 2; ++v) {
      EXPECT_DOUBLE_EQ(back.ports[k].pixels[v][0], copy.port_pixels[k][v][0]);
      EXPECT_DOUBLE_EQ(back.ports[k].pixels[v][1], copy.port_pixels[k][v][1]);
    }
  vla::remove_tree(dir);
}

}  // namespace
