// bench_runtime: (1) action-expert step latency on one torch thread (the shipped default policy
// when it loads, else a random policy of the default configuration, same size); (2) the wall-time
// action loop's period jitter at 10 and 100 Hz while the VLM thread is busy (a real policy encode
// when available, else a CPU-bound stand-in of ~150 ms per call), physics thread at 650 Hz, with
// and without competing CPU load (one spinning thread per core, on the same cores) and with the
// loop's real-time settings: rt 0 = none, 1 = SCHED_FIFO 80 + pinned to the last CPU, 2 = the
// same + mlockall (each falls back with a note where not permitted: the `fifo` counter is 1 only
// when SCHED_FIFO applied). Args: rate (Hz), load (0/1), rt (0/1/2).
#include <benchmark/benchmark.h>

#include <atomic>
#include <thread>

#include "runtime/runtime.h"

using namespace vla::runtime;

namespace {

struct Bundle {
  PolicyFns fns;
  std::string what;
  int views = 1, width = 32, height = 32;  // what the policy's encode expects
  int vl_tokens = 1, vl_dim = 64;          // what its act expects
};

Bundle make_policy() {
  Bundle b;
  try {
    auto p = vla::policy::Policy::load("default");
    b.fns = policy_fns(p);
    b.what = "default policy";
    b.views = p->num_views();
    b.width = p->image_width();
    b.height = p->image_height();
    b.vl_tokens = p->config().vl_tokens;
    b.vl_dim = p->config().vl_dim;
    return b;
  } catch (const std::exception& e) {
    vla::log_info("bench_runtime: default policy not loadable (", e.what(),
                  "); using a random policy of the default configuration");
  }
  vla::policy::PolicyConfig cfg;
  cfg.num_views = 1;
  auto p = std::make_shared<vla::policy::Policy>(cfg, vla::policy::Expert(cfg),
                                                 vla::policy::NormStats::identity(cfg), nullptr);
  b.fns = policy_fns(p);
  b.fns.encode = nullptr;
  b.what = "random default-config policy";
  return b;
}

// A CPU-bound VLM stand-in: ~150 ms of single-thread matmuls per call.
torch::Tensor busy_encode(const std::vector<vla::Image>&, const std::string&) {
  auto a = torch::randn({256, 256});
  vla::Stopwatch sw;
  torch::Tensor acc = torch::zeros({256, 256});
  while (sw.elapsed_ms() < 150) acc = acc + a.matmul(a);
  return torch::zeros({1, 64}) + acc.mean() * 0;
}

void BM_ExpertStep(benchmark::State& state) {
  at::set_num_threads(1);
  set_blas_threads(1);
  c10::InferenceMode guard;
  Bundle b = make_policy();
  auto vl = torch::randn({b.vl_tokens, b.vl_dim});
  auto win = torch::randn({65, 6}) * 0.1;
  auto pr = torch::zeros({3});
  for (int i = 0; i < 5; ++i) b.fns.act(vl, win, pr);  // warm-up
  std::vector<double> ms;
  for (auto _ : state) {
    vla::Stopwatch sw;
    auto c = b.fns.act(vl, win, pr);
    benchmark::DoNotOptimize(c.data_ptr());
    ms.push_back(sw.elapsed_ms());
  }
  state.counters["p50_ms"] = vla::percentile(ms, 50);
  state.counters["p99_ms"] = vla::percentile(ms, 99);
  state.SetLabel(b.what + ", 1 torch thread");
}
BENCHMARK(BM_ExpertStep)->Unit(benchmark::kMillisecond)->MinTime(3.0);

// One busy thread per core until destroyed (plain integer work: no torch, no allocation).
class CpuLoad {
 public:
  explicit CpuLoad(bool on) {
    if (!on) return;
    const unsigned n = std::max(1u, std::thread::hardware_concurrency());
    for (unsigned i = 0; i < n; ++i)
      threads_.emplace_back([this] {
        volatile uint64_t x = 1;
        while (!stop_.load(std::memory_order_relaxed)) x = x * 6364136223846793005ull + 1;
      });
  }
  ~CpuLoad() {
    stop_ = true;
    for (auto& t : threads_) t.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

void BM_LoopJitter(benchmark::State& state) {
  const double hz = static_cast<double>(state.range(0));
  const bool load = state.range(1) != 0;
  const int rt = static_cast<int>(state.range(2));
  Bundle b = make_policy();
  std::string vlm_what = "busy stand-in VLM (150 ms/call)";
  PolicyFns fns = b.fns;
  if (!fns.encode) {
    fns.encode = busy_encode;
  } else {
    // The toy plant renders one small view: give the policy views of the size it expects.
    std::vector<vla::Image> views(static_cast<size_t>(b.views),
                                  vla::make_image(b.width, b.height, 3, 90));
    auto enc = fns.encode;
    fns.encode = [enc, views](const std::vector<vla::Image>&, const std::string& instr) {
      return enc(views, instr);
    };
    vlm_what = "policy VLM";
  }
  for (auto _ : state) {
    ToyPlant plant(1, 1e9, /*can_finish=*/false);
    RuntimeConfig cfg;
    cfg.action_hz = hz;
    cfg.max_duration_s = 10.0;
    cfg.max_staleness_s = 1e9;
    if (rt >= 1) {
      cfg.loop_priority = 80;
      cfg.loop_cpu = static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) - 1;
    }
    cfg.lock_memory = rt >= 2;
    CpuLoad burn(load);
    EpisodeResult ep = run_wall_time(plant, fns, cfg);
    state.counters["fifo"] = ep.realtime.fifo ? 1 : 0;
    Summary s = summarize({ep});
    state.counters["action_hz"] = s.action_hz;
    state.counters["jitter_p50_ms"] = s.jitter_ms_p50;
    state.counters["jitter_p99_ms"] = s.jitter_ms_p99;
    state.counters["jitter_max_ms"] = s.jitter_ms_max;
    state.counters["missed"] = static_cast<double>(s.overruns);
    state.counters["expert_p99_ms"] = s.expert_ms_p99;
    state.counters["vlm_hz"] = s.vlm_hz;
  }
  state.SetLabel(b.what + " + " + vlm_what + (load ? " + CPU load" : "") +
                 (rt == 1   ? " + FIFO, pinned"
                  : rt == 2 ? " + FIFO, pinned, mlockall"
                            : "") +
                 ", 10 s wall time");
}
BENCHMARK(BM_LoopJitter)
    ->ArgNames({"hz", "load", "rt"})
    ->ArgsProduct({{10, 100}, {0, 1}, {0, 1, 2}})
    ->Iterations(1)
    ->Unit(benchmark::kSecond);

}  // namespace

BENCHMARK_MAIN();
