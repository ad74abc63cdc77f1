// bench_sim: costs of the simulator pieces on this machine.
#include <benchmark/benchmark.h>

#include <filesystem>

#include "closed_loop/closed_loop.h"
#include "sim/sim.h"

namespace {
using namespace vla::sim;

void BM_PhysicsStep(benchmark::State& state) {
  EnvConfig cfg;
  cfg.render = false;
  cfg.time_limit_s = 1e9;
  NeedleEnv env(cfg);
  env.reset(1);
  for (auto _ : state) env.step_physics();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PhysicsStep);

void BM_RenderView(benchmark::State& state) {
  EnvConfig cfg;
  cfg.width = static_cast<int>(state.range(0));
  cfg.height = static_cast<int>(state.range(1));
  cfg.num_views = 1;
  NeedleEnv env(cfg);
  env.reset(1);
  for (auto _ : state) benchmark::DoNotOptimize(env.render());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RenderView)
    ->Args({128, 128})
    ->Args({224, 224})
    ->Args({640, 360})
    ->Unit(benchmark::kMillisecond);

void BM_Render5Views(benchmark::State& state) {
  EnvConfig cfg;
  NeedleEnv env(cfg);
  env.reset(1);
  for (auto _ : state) benchmark::DoNotOptimize(env.render());
}
BENCHMARK(BM_Render5Views)->Unit(benchmark::kMillisecond);

void BM_ExpertAct(benchmark::State& state) {
  EnvConfig cfg;
  cfg.render = false;
  NeedleEnv env(cfg);
  env.reset(1);
  ScriptedDemonstrator expert;
  for (int i = 0; i < 5; ++i) env.step_chunk(expert.act(env));
  for (auto _ : state) benchmark::DoNotOptimize(expert.act(env));
}
BENCHMARK(BM_ExpertAct)->Unit(benchmark::kMicrosecond);

void BM_ExpertEpisodeHeadless(benchmark::State& state) {
  EnvConfig cfg;
  cfg.render = false;
  NeedleEnv env(cfg);
  ChunkPolicy p = demonstrator_policy(std::make_shared<ScriptedDemonstrator>());
  uint64_t seed = 0;
  for (auto _ : state) run_episode(env, p, seed++);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ExpertEpisodeHeadless)->Unit(benchmark::kMillisecond);

void BM_RecordAndWriteEpisode(benchmark::State& state) {
  EnvConfig cfg;
  NeedleEnv env(cfg);
  ChunkPolicy p = demonstrator_policy(std::make_shared<ScriptedDemonstrator>());
  const std::string dir = "/tmp/vla_bench_sim_ds";
  vla::remove_tree(dir);
  vla::dataset::DatasetWriter w(dir);
  uint64_t seed = 0;
  for (auto _ : state) {
    Recording rec;
    run_episode(env, p, seed++, -1, &rec);
    w.write(vla::closed_loop::to_episode_data(std::move(rec)));
  }
  state.SetItemsProcessed(state.iterations());
  vla::remove_tree(dir);
}
BENCHMARK(BM_RecordAndWriteEpisode)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
