// act() latency (fast path) and expert training throughput on CPU.
//   bench_policy [--benchmark_filter=...]   (VLA_POLICY=DIR also times a saved policy, e.g. the
//   shipped default, including its normalisation)
#include <benchmark/benchmark.h>

#include <cstdlib>

#include "policy/policy.h"

using namespace vla::policy;

namespace {

PolicyConfig config(const std::string& head) {
  PolicyConfig c;
  c.head = head;
  c.vl_dim = 128;
  return c;
}

void BM_Act(benchmark::State& st, const std::string& head) {
  at::set_num_threads(static_cast<int>(st.range(0)));
  torch::manual_seed(0);
  auto cfg = config(head);
  Policy p(cfg, Expert(cfg), NormStats::identity(cfg), nullptr);
  auto vl = torch::randn({cfg.vl_dim});
  auto f = torch::randn({65, 6});
  auto pr = torch::randn({3});
  for (auto _ : st) benchmark::DoNotOptimize(p.act(vl, f, pr));
}
BENCHMARK_CAPTURE(BM_Act, flow, std::string("flow"))->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Act, mlp, std::string("mlp"))->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);

void BM_ActSaved(benchmark::State& st) {
  const char* dir = std::getenv("VLA_POLICY");
  if (!dir) {
    st.SkipWithError("set VLA_POLICY=DIR (or 'default')");
    return;
  }
  at::set_num_threads(static_cast<int>(st.range(0)));
  auto p = Policy::load(dir);
  auto vl = torch::randn({p->config().vl_tokens, p->config().vl_dim});
  auto f = torch::randn({p->sensor_window(), 6});
  auto pr = torch::randn({3});
  for (auto _ : st) benchmark::DoNotOptimize(p->act(vl, f, pr));
}
BENCHMARK(BM_ActSaved)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);

void BM_TrainStep(benchmark::State& st, const std::string& head) {
  at::set_num_threads(2);
  torch::manual_seed(0);
  auto cfg = config(head);
  Expert e(cfg);
  const int b = static_cast<int>(st.range(0));
  auto vl = torch::randn({b, 1, cfg.vl_dim});
  auto f = torch::randn({b, 65, 6});
  auto pr = torch::randn({b, 3});
  auto a = torch::randn({b, 8, 3});
  torch::optim::AdamW opt(e->parameters(), torch::optim::AdamWOptions(1e-4));
  for (auto _ : st) {
    auto l = e->loss(vl, f, pr, a);
    opt.zero_grad();
    l.backward();
    opt.step();
  }
  st.SetItemsProcessed(st.iterations() * b);  // samples/s
}
BENCHMARK_CAPTURE(BM_TrainStep, flow, std::string("flow"))->Arg(64)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_TrainStep, mlp, std::string("mlp"))->Arg(64)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
