// Tests for the async runtime: feature slot, sensor ring, blending, sim-time determinism and
// latency model, wall-time threads with fault injection (stalled / throwing VLM, NaN sensor).
#include "runtime/runtime.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <thread>

#include "plot/plot.h"
#include "runtime/fault_plant.h"

using namespace vla::runtime;
using namespace vla::runtime::testing;

namespace {}  // namespace

TEST(FeatureSlot, EmptyThenLatest) {
  FeatureSlot slot;
  EXPECT_FALSE(slot.read().valid());
  for (int v = 0; v < 5; ++v) {
    Features f;
    f.version = v;
    f.data = torch::full({2}, static_cast<float>(v));
    slot.publish(f);
  }
  const Features& r = slot.read();
  EXPECT_EQ(r.version, 4);
  EXPECT_FLOAT_EQ(r.data[0].item<float>(), 4.0f);
  EXPECT_EQ(slot.published(), 5);
  EXPECT_EQ(slot.read().version, 4);  // reading again keeps the newest
}

TEST(FeatureSlot, ConcurrentReaderSeesConsistentMonotonicVersions) {
  FeatureSlot slot;
  std::atomic<bool> done{false};
  const int n = 20000;
  std::thread writer([&] {
    for (int v = 0; v < n; ++v) {
      Features f;
      f.version = v;
      f.capture_t = v * 0.5;
      f.data = torch::full({4}, static_cast<float>(v));
      slot.publish(std::move(f));
    }
    done = true;
  });
  int64_t last = -1;
  int64_t reads = 0;
  bool ok = true;
  while (!done || last < n - 1) {
    const Features& f = slot.read();
    if (f.valid()) {
      ok = ok && f.version >= last;
      ok = ok && f.capture_t == f.version * 0.5;
      ok = ok && f.data[3].item<float>() == static_cast<float>(f.version);
      last = f.version;
    }
    ++reads;
  }
  writer.join();
  EXPECT_TRUE(ok);
  EXPECT_EQ(last, n - 1);
  EXPECT_GT(reads, 0);
}

TEST(SensorRing, WindowCutByTimeAndPaddedAtStart) {
  SensorRing ring(256);
  std::vector<float> w(65 * 6);
  EXPECT_EQ(ring.window(0.0, 65, w.data()), WindowStatus::kShort);
  for (int i = 1; i <= 10; ++i) ring.push({i / 650.0, {float(i), 0, 0, 0, 0, 0}});
  EXPECT_EQ(ring.window(10 / 650.0, 65, w.data()), WindowStatus::kShort);
  EXPECT_FLOAT_EQ(w[0], 1.0f);        // padded with the oldest sample
  EXPECT_FLOAT_EQ(w[64 * 6], 10.0f);  // newest last
  for (int i = 11; i <= 200; ++i) ring.push({i / 650.0, {float(i), 0, 0, 0, 0, 0}});
  // A window ending at sample 150 excludes later samples.
  EXPECT_EQ(ring.window(150 / 650.0, 65, w.data()), WindowStatus::kOk);
  EXPECT_FLOAT_EQ(w[64 * 6], 150.0f);
  EXPECT_FLOAT_EQ(w[0], 86.0f);
  // Newest sample far older than t_end: dropout.
  EXPECT_EQ(ring.window(200 / 650.0 + 0.2, 65, w.data()), WindowStatus::kDropout);
}

TEST(SensorRing, DetectsGapsAndNaN) {
  SensorRing ring(256);
  std::vector<float> w(65 * 6);
  for (int i = 1; i <= 100; ++i) {
    if (i == 80) continue;  // a missing sample
    ring.push({i / 650.0, {0, 0, 1, 0, 0, 0}});
  }
  EXPECT_EQ(ring.window(100 / 650.0, 65, w.data()), WindowStatus::kGap);
  EXPECT_EQ(ring.window(70 / 650.0, 65, w.data()), WindowStatus::kOk);
  ring.push({101 / 650.0, {0, 0, std::numeric_limits<float>::quiet_NaN(), 0, 0, 0}});
  EXPECT_EQ(ring.window(101 / 650.0, 65, w.data()), WindowStatus::kNaN);
  EXPECT_THROW(ring.window(1.0, 1000, w.data()), vla::Error);
}

TEST(SensorRing, RejectsRepeatedBackwardsAndNonFiniteStamps) {
  SensorRing ring(256);
  std::vector<float> w(65 * 6);
  for (int i = 1; i <= 100; ++i) EXPECT_TRUE(ring.push({i / 650.0, {1, 0, 0, 0, 0, 0}}));
  EXPECT_FALSE(ring.push({100 / 650.0, {9, 0, 0, 0, 0, 0}}));  // repeated stamp
  EXPECT_FALSE(ring.push({50 / 650.0, {9, 0, 0, 0, 0, 0}}));   // backwards
  EXPECT_FALSE(ring.push({std::numeric_limits<double>::quiet_NaN(), {9, 0, 0, 0, 0, 0}}));
  EXPECT_EQ(ring.rejected(), 3);
  EXPECT_EQ(ring.total_pushed(), 100);
  EXPECT_EQ(ring.window(100 / 650.0, 65, w.data()), WindowStatus::kOk);
  for (int i = 0; i < 65 * 6; i += 6) EXPECT_EQ(w[i], 1.0f);  // no rejected value got in
  // A stream that only repeats its last stamp is a stream that stopped: dropout after timeout.
  for (int k = 0; k < 100; ++k) ring.push({100 / 650.0, {1, 0, 0, 0, 0, 0}});
  EXPECT_EQ(ring.window(100 / 650.0 + 0.2, 65, w.data(), 0.05), WindowStatus::kDropout);
}

TEST(ChunkBlender, ReplaceEnsembleRtc) {
  std::vector<float> a(8 * 3), b(8 * 3);
  for (int i = 0; i < 8; ++i)
    for (int k = 0; k < 3; ++k) a[i * 3 + k] = 1.0f, b[i * 3 + k] = 3.0f;
  std::vector<Action> out;
  // Ticks 0.05 s apart (20 Hz): chunk b's first 4 actions overlap a's last 4.
  ChunkBlender rep(BlendMode::kReplace, 8);
  rep.blend(0.0, a.data(), out);
  rep.blend(0.05, b.data(), out);
  for (auto& x : out) EXPECT_FLOAT_EQ(x[0], 3.0f);

  ChunkBlender ens(BlendMode::kEnsemble, 8, /*m=*/0.0);
  ens.blend(0.0, a.data(), out);
  ens.blend(0.05, b.data(), out);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(out[i][0], 2.0f, 1e-5) << i;  // equal-weight average
  for (int i = 4; i < 8; ++i) EXPECT_NEAR(out[i][1], 3.0f, 1e-5) << i;  // only b covers these
  ChunkBlender ens2(BlendMode::kEnsemble, 8, /*m=*/1.0);
  ens2.blend(0.0, a.data(), out);
  ens2.blend(0.05, b.data(), out);
  const float w = std::exp(-1.0f);
  EXPECT_NEAR(out[0][0], (1.0f + 3.0f * w) / (1.0f + w), 1e-5);  // older chunk weighs more

  ChunkBlender rtc(BlendMode::kRtc, 8, 0.01, /*prefix=*/2);
  rtc.blend(0.0, a.data(), out);
  rtc.blend(0.05, b.data(), out);
  EXPECT_FLOAT_EQ(out[0][0], 1.0f);  // committed prefix kept
  EXPECT_FLOAT_EQ(out[1][0], 1.0f);
  EXPECT_GT(out[2][0], 1.0f);  // blending towards the new chunk
  EXPECT_LT(out[2][0], 3.0f);
  EXPECT_FLOAT_EQ(out[7][0], 3.0f);  // beyond the old plan: the new chunk
  // At 10 Hz chunks do not overlap: every mode equals replace.
  ChunkBlender rtc10(BlendMode::kRtc, 8);
  rtc10.blend(0.0, a.data(), out);
  rtc10.blend(0.1, b.data(), out);
  for (auto& x : out) EXPECT_FLOAT_EQ(x[2], 3.0f);
  EXPECT_THROW(parse_blend("mix"), vla::Error);
}

TEST(SimTime, DeterministicForASeedAndModelsLatency) {
  RuntimeConfig cfg;
  cfg.vlm_latency_s = 0.3;
  cfg.record_chunks = true;
  auto run = [&](uint64_t seed) {
    ToyPlant plant(seed);
    return run_sim_time(plant, toy_policy(plant), cfg);
  };
  EpisodeResult a = run(7), b = run(7);
  ASSERT_EQ(a.ticks.size(), b.ticks.size());
  ASSERT_EQ(a.chunks.size(), b.chunks.size());
  for (size_t i = 0; i < a.chunks.size(); ++i) EXPECT_EQ(a.chunks[i], b.chunks[i]) << i;
  for (size_t i = 0; i < a.ticks.size(); ++i) EXPECT_EQ(a.ticks[i].version, b.ticks[i].version);
  EXPECT_TRUE(a.outcome.success) << a.outcome.reason;
  // Start-up: the first features arrive at 0.3 s; ticks at 0, 0.1, 0.2 hold.
  EXPECT_EQ(a.ticks[0].status, TickStatus::kHoldStartup);
  EXPECT_EQ(a.ticks[2].status, TickStatus::kHoldStartup);
  EXPECT_EQ(a.ticks[3].status, TickStatus::kAct);
  EXPECT_NEAR(a.first_features_t, 0.3, 1e-9);
  for (const auto& v : a.vlm) EXPECT_NEAR(v.end - v.start, 0.3, 1e-9);
  for (const auto& t : a.ticks)
    if (t.status == TickStatus::kAct) {
      EXPECT_GE(t.feature_age, 0.3 - 1e-9);
      EXPECT_LT(t.feature_age, 0.6 + 1e-9);
    }
  Summary s = summarize({a});
  EXPECT_NEAR(s.reuse_mean, 3.0, 1.0);  // each feature serves ~3 ticks
  EXPECT_NEAR(s.action_hz, 10.0, 1e-6);
  // A different seed gives a different episode.
  EpisodeResult c = run(8);
  EXPECT_NE(a.chunks.front() == c.chunks.front() && a.ticks.size() == c.ticks.size() &&
                a.chunks.back() == c.chunks.back(),
            true);
}

TEST(SimTime, SyncModeUsesFreshFeaturesEveryTick) {
  ToyPlant plant(3);
  RuntimeConfig cfg;  // latency 0
  EpisodeResult ep = run_sim_time(plant, toy_policy(plant), cfg);
  EXPECT_TRUE(ep.outcome.success);
  for (const auto& t : ep.ticks) {
    EXPECT_EQ(t.status, TickStatus::kAct);
    EXPECT_NEAR(t.feature_age, 0.0, 1e-9);
  }
  EXPECT_EQ(ep.vlm.size(), ep.ticks.size());
}

// Scene memory: every tick's expert input is the episode's first features, then the newest.
TEST(SimTime, SceneMemoryKeepsTheEpisodesFirstFeatures) {
  ToyPlant plant(3);
  PolicyFns p = toy_policy(plant);
  auto calls = std::make_shared<int>(0);
  auto base = p.encode;
  p.encode = [base, calls](const std::vector<vla::Image>& v, const std::string& i) {
    return base(v, i) + 0.0 * (*calls)++;  // the toy's goal; counts calls
  };
  auto seen = std::make_shared<std::vector<torch::Tensor>>();
  auto act = p.act;
  p.expert_features = [](const torch::Tensor& first, const torch::Tensor& newest) {
    return torch::stack({first, newest});
  };
  p.act = [act, seen](const torch::Tensor& vl, const torch::Tensor& w, const torch::Tensor& pr) {
    seen->push_back(vl.clone());
    return act(vl[1], w, pr);
  };
  RuntimeConfig cfg;
  cfg.vlm_latency_s = 0.2;
  EpisodeResult ep = run_sim_time(plant, p, cfg);
  EXPECT_TRUE(ep.outcome.success);
  ASSERT_GT(seen->size(), 3u);
  ASSERT_GT(*calls, 3);
  for (const auto& vl : *seen) {
    ASSERT_EQ(vl.size(0), 2);
    EXPECT_TRUE(torch::equal(vl[0], (*seen)[0][0]));  // the first features never change
  }
  EXPECT_TRUE(torch::equal((*seen)[0][0], (*seen)[0][1]));  // at first, first == newest
}

TEST(SimTime, StaleFeaturesCommandSafeStop) {
  ToyPlant plant(4, 20.0);
  PolicyFns p = toy_policy(plant);
  RuntimeConfig cfg;
  cfg.vlm_latency_s = 2.0;
  cfg.max_staleness_s = 1.0;  // features can never be fresher than 2 s
  EpisodeResult ep = run_sim_time(plant, p, cfg);
  EXPECT_TRUE(ep.safe_stopped);
  EXPECT_EQ(ep.outcome.reason, "safe_stop");
  EXPECT_EQ(ep.ticks.back().status, TickStatus::kSafeStop);
}

TEST(SimTime, NaNSensorHoldsAndRecovers) {
  ToyPlant toy(5, 10.0);
  FaultyPlant plant(toy, Fault::kNaN, 0.25, 0.45);
  RuntimeConfig cfg;
  cfg.record_chunks = true;
  EpisodeResult ep = run_sim_time(plant, toy_policy(toy), cfg);
  int holds = 0;
  for (size_t i = 0; i < ep.ticks.size(); ++i) {
    if (ep.ticks[i].status == TickStatus::kHoldSensor) {
      ++holds;
      EXPECT_EQ(ep.ticks[i].sensor, WindowStatus::kNaN);
      for (const auto& a : ep.chunks[i]) EXPECT_EQ(a, (Action{0, 0, 0}));  // hold = no motion
    }
  }
  EXPECT_GE(holds, 2);
  EXPECT_TRUE(ep.outcome.success);  // the loop resumes once the stream is clean again
}

TEST(SimTime, ExpertExceptionAndBadOutputAreReportedNotFatal) {
  ToyPlant plant(6);
  PolicyFns p = toy_policy(plant);
  auto inner = p.act;
  int calls = 0;
  p.act = [&](const torch::Tensor& v, const torch::Tensor& w, const torch::Tensor& pr) {
    ++calls;
    if (calls == 2) throw vla::Error("boom");
    if (calls == 3) return torch::full({8, 3}, std::numeric_limits<float>::quiet_NaN());
    return inner(v, w, pr);
  };
  EpisodeResult ep = run_sim_time(plant, p, RuntimeConfig{});
  EXPECT_EQ(count_status(ep, TickStatus::kExpertError), 2);
  ASSERT_GE(ep.errors.size(), 2u);
  EXPECT_NE(ep.errors[0].find("boom"), std::string::npos);
  EXPECT_TRUE(ep.outcome.success);
}

TEST(SimTime, VlmNaNFeaturesAreAFailedCallNotFedToTheExpert) {
  ToyPlant plant(6, 20.0);
  PolicyFns p = toy_policy(plant);
  auto inner_encode = p.encode;
  auto inner_act = p.act;
  int calls = 0;
  p.encode = [&](const std::vector<vla::Image>& v, const std::string& s) {
    auto f = inner_encode(v, s);
    return ++calls >= 3 ? f * std::numeric_limits<float>::quiet_NaN() : f;  // VLM goes bad
  };
  bool expert_saw_nan = false;
  p.act = [&](const torch::Tensor& v, const torch::Tensor& w, const torch::Tensor& pr) {
    expert_saw_nan |= !torch::isfinite(v).all().item<bool>();
    return inner_act(v, w, pr);
  };
  RuntimeConfig cfg;
  cfg.vlm_latency_s = 0.1;
  cfg.max_staleness_s = 0.5;
  EpisodeResult ep = run_sim_time(plant, p, cfg);
  EXPECT_FALSE(expert_saw_nan);
  Summary s = summarize({ep});
  EXPECT_EQ(s.vlm_calls, 2);
  EXPECT_GT(s.vlm_errors, 3);
  EXPECT_NE(ep.errors[0].find("non-finite features"), std::string::npos);
  // Acted on the last good features until they were too old, then stopped safely.
  EXPECT_GT(count_status(ep, TickStatus::kAct), 2);
  EXPECT_TRUE(ep.safe_stopped);
  EXPECT_NE(ep.safe_stop_reason.find("max staleness"), std::string::npos);
}

TEST(SimTime, PlantErrorEndsTheEpisodeAsASafeStop) {
  ToyPlant toy(7, 20.0);
  FaultyPlant plant(toy, Fault::kThrow, 0.5, 1.0);
  EpisodeResult ep = run_sim_time(plant, toy_policy(toy), RuntimeConfig{});
  EXPECT_TRUE(ep.safe_stopped);
  EXPECT_EQ(ep.outcome.reason, "plant_error");
  EXPECT_NE(ep.safe_stop_reason.find("bus error"), std::string::npos);
  EXPECT_NEAR(ep.duration, 0.5, 0.1);
}

TEST(SimTime, SensorThatStopsForGoodHoldsUntilThePlantTimesOut) {
  // Regression: the outcome check counted accepted samples, so a stream that stopped advancing
  // (every sample rejected) stopped the checks and the episode never ended.
  ToyPlant toy(8, 2.0);
  FaultyPlant plant(toy, Fault::kStuck, 0.5, 1e9);
  EpisodeResult ep = run_sim_time(plant, toy_policy(toy), RuntimeConfig{});
  EXPECT_EQ(ep.outcome.reason, "timeout");
  EXPECT_NEAR(ep.duration, 2.0, 0.05);
  EXPECT_GT(count_status(ep, TickStatus::kHoldSensor), 10);
  EXPECT_GT(ep.sensor_rejected, 900);
}

TEST(SimTime, RejectsBadConfig) {
  ToyPlant plant(1);
  RuntimeConfig cfg;
  cfg.action_hz = 0;
  EXPECT_THROW(run_sim_time(plant, toy_policy(plant), cfg), vla::Error);
  PolicyFns p;
  EXPECT_THROW(run_sim_time(plant, p, RuntimeConfig{}), vla::Error);
}

// ---------------------------------------------------------------- wall time (real threads)
TEST(WallTime, StalledVlmSafeStopsWithLoopRateIntact) {
  ToyPlant plant(9, 100.0, false);
  PolicyFns p = toy_policy(plant);
  auto inner = p.encode;
  std::atomic<int> calls{0};
  p.encode = [&, inner](const std::vector<vla::Image>& v, const std::string& s) {
    if (calls++ >= 1) std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // stall
    return inner(v, s);
  };
  RuntimeConfig cfg;
  cfg.action_hz = 20;
  cfg.max_staleness_s = 0.3;
  cfg.stop_on_safe_stop = false;  // keep ticking (holding) to check the rate
  cfg.max_duration_s = 1.0;
  EpisodeResult ep = run_wall_time(plant, p, cfg);
  EXPECT_TRUE(ep.safe_stopped);
  EXPECT_GT(count_status(ep, TickStatus::kAct), 0);
  EXPECT_GT(count_status(ep, TickStatus::kSafeStop), 5);
  // Loose: the loop kept ticking at its rate while the VLM was stuck.
  EXPECT_GE(ep.ticks.size(), 16u);
  EXPECT_LE(ep.ticks.size(), 21u);
  Summary s = summarize({ep});
  EXPECT_NEAR(s.action_hz, 20.0, 2.0);
  // The first safe stop came after the staleness limit, not before.
  for (const auto& t : ep.ticks)
    if (t.status == TickStatus::kSafeStop) {
      EXPECT_GT(t.feature_age, 0.3);
      break;
    }
}

// PolicyFns::prepare (a fast encoder building its plan) runs before the first capture, so its
// time does not age the first features; the loop holds meanwhile.
TEST(WallTime, PrepareRunsBeforeTheFirstCapture) {
  ToyPlant plant(11, 100.0, false);
  PolicyFns p = toy_policy(plant);
  std::atomic<int> prepared{0};
  std::string seen;
  p.prepare = [&](const std::string& instruction) {
    seen = instruction;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ++prepared;
  };
  RuntimeConfig cfg;
  cfg.action_hz = 20;
  cfg.max_duration_s = 0.8;
  EpisodeResult ep = run_wall_time(plant, p, cfg);
  EXPECT_EQ(prepared.load(), 1);
  EXPECT_FALSE(seen.empty());
  ASSERT_FALSE(ep.vlm.empty());
  EXPECT_GE(ep.vlm.front().start, 0.29);  // captured after prepare returned
  EXPECT_GT(count_status(ep, TickStatus::kHoldStartup), 3);
  double first_age = -1;
  for (const auto& t : ep.ticks)
    if (t.status == TickStatus::kAct) {
      first_age = t.feature_age;
      break;
    }
  ASSERT_GE(first_age, 0.0);
  EXPECT_LT(first_age, 0.2);  // not the 0.3 s of plan building
}

TEST(WallTime, VlmExceptionReportedLoopContinues) {
  ToyPlant plant(10, 100.0, false);
  PolicyFns p = toy_policy(plant);
  auto inner = p.encode;
  std::atomic<int> calls{0};
  p.encode = [&, inner](const std::vector<vla::Image>& v, const std::string& s) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (calls++ % 2 == 1) throw std::runtime_error("vlm exploded");
    return inner(v, s);
  };
  RuntimeConfig cfg;
  cfg.action_hz = 20;
  cfg.max_duration_s = 0.8;
  EpisodeResult ep = run_wall_time(plant, p, cfg);
  EXPECT_FALSE(ep.safe_stopped);
  Summary s = summarize({ep});
  EXPECT_GT(s.vlm_errors, 0);
  EXPECT_GT(s.vlm_calls, 0);
  bool reported = false;
  for (auto& e : ep.errors) reported |= e.find("vlm exploded") != std::string::npos;
  EXPECT_TRUE(reported);
  EXPECT_GT(count_status(ep, TickStatus::kAct), 8);
}

TEST(WallTime, NaNSensorHolds) {
  ToyPlant toy(11, 100.0, false);
  FaultyPlant plant(toy, Fault::kNaN, 0.3, 0.6);
  RuntimeConfig cfg;
  cfg.action_hz = 20;
  cfg.max_duration_s = 1.0;
  EpisodeResult ep = run_wall_time(plant, toy_policy(toy), cfg);
  EXPECT_GE(count_status(ep, TickStatus::kHoldSensor), 3);
  EXPECT_GT(count_status(ep, TickStatus::kAct), 3);
  EXPECT_FALSE(ep.safe_stopped);
}

TEST(WallTime, SensorStuckOrLateHoldsAtFullRateAndRecovers) {
  for (Fault fault : {Fault::kStuck, Fault::kLate}) {
    ToyPlant toy(13, 100.0, false);
    FaultyPlant plant(toy, fault, 0.3, 0.6, /*lag=*/0.2);
    RuntimeConfig cfg;
    cfg.action_hz = 20;
    cfg.max_duration_s = 1.2;
    EpisodeResult ep = run_wall_time(plant, toy_policy(toy), cfg);
    const char* name = fault == Fault::kStuck ? "stuck" : "late";
    int dropouts = 0;
    for (const auto& t : ep.ticks) dropouts += t.sensor == WindowStatus::kDropout;
    EXPECT_GE(dropouts, 2) << name;  // no fresh samples: the window is stale
    EXPECT_GE(count_status(ep, TickStatus::kHoldSensor), 2) << name;
    EXPECT_GT(ep.sensor_rejected, 50) << name;  // repeated / backwards stamps refused
    // Acting again after the fault cleared, and the loop kept its rate throughout.
    bool acted_after = false;
    for (const auto& t : ep.ticks) acted_after |= t.start > 0.9 && t.status == TickStatus::kAct;
    EXPECT_TRUE(acted_after) << name;
    EXPECT_NEAR(summarize({ep}).action_hz, 20.0, 2.0) << name;
    EXPECT_FALSE(ep.safe_stopped) << name;
  }
}

TEST(WallTime, PlantErrorSafeStopsPromptly) {
  ToyPlant toy(14, 100.0, false);
  FaultyPlant plant(toy, Fault::kThrow, 0.4, 100.0);
  RuntimeConfig cfg;
  cfg.action_hz = 20;
  cfg.max_duration_s = 5.0;
  vla::Stopwatch sw;
  EpisodeResult ep = run_wall_time(plant, toy_policy(toy), cfg);
  EXPECT_LT(sw.elapsed_s(), 2.0);
  EXPECT_TRUE(ep.safe_stopped);
  EXPECT_EQ(ep.outcome.reason, "plant_error");
  EXPECT_NE(ep.safe_stop_reason.find("bus error"), std::string::npos);
}

TEST(WallTime, StopFlagEndsRunCleanly) {
  ToyPlant plant(12, 100.0, false);
  std::atomic<bool> stop{false};
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    stop = true;
  });
  RuntimeConfig cfg;
  cfg.max_duration_s = 10.0;
  vla::Stopwatch sw;
  EpisodeResult ep = run_wall_time(plant, toy_policy(plant), cfg, &stop);
  t.join();
  EXPECT_TRUE(ep.interrupted);
  EXPECT_EQ(ep.outcome.reason, "interrupted");
  EXPECT_LT(sw.elapsed_s(), 3.0);
  EXPECT_GE(ep.ticks.size(), 2u);
}

TEST(TickGate, HoldsAndStopsInTheDocumentedOrder) {
  TickLimits lim;
  lim.max_staleness_s = 1.0;
  lim.startup_timeout_s = 5.0;
  lim.sensor_stale_s = 0.5;
  lim.sensor_stop_s = 2.0;
  TickInputs in;
  EXPECT_EQ(gate_tick(in, lim).status, TickStatus::kHoldStartup);
  in.since_start_s = 5.0;
  EXPECT_EQ(gate_tick(in, lim).status, TickStatus::kSafeStop);
  in.have_features = true;
  in.feature_age_s = 0.2;
  EXPECT_EQ(gate_tick(in, lim).status, TickStatus::kAct);
  in.sensor = WindowStatus::kNaN;
  EXPECT_EQ(gate_tick(in, lim).status, TickStatus::kHoldSensor);
  in.sensor = WindowStatus::kOk;
  in.sensor_idle_s = 0.6;
  EXPECT_EQ(gate_tick(in, lim).status, TickStatus::kHoldSensor);
  in.sensor_idle_s = 2.5;  // the stream is gone: past the stop limit
  EXPECT_EQ(gate_tick(in, lim).status, TickStatus::kSafeStop);
  in.sensor_idle_s = std::numeric_limits<double>::infinity();  // never started: a hold
  EXPECT_EQ(gate_tick(in, lim).status, TickStatus::kHoldSensor);
  in.sensor_idle_s = 0;
  in.feature_age_s = 1.5;  // staleness wins over a good sensor window
  const TickGate g = gate_tick(in, lim);
  EXPECT_EQ(g.status, TickStatus::kSafeStop);
  EXPECT_NE(g.reason.find("1.50 s old"), std::string::npos) << g.reason;
  // The loops' defaults: no sensor idle limits, so a stale-free window acts.
  EXPECT_EQ(gate_tick({true, 0.1, 100.0, WindowStatus::kShort, 0}, TickLimits{}).status,
            TickStatus::kAct);
}

TEST(Metrics, JsonAndPlots) {
  ToyPlant plant(2);
  RuntimeConfig cfg;
  cfg.vlm_latency_s = 0.2;
  EpisodeResult ep = run_sim_time(plant, toy_policy(plant), cfg);
  Summary s = summarize({ep, ep});
  EXPECT_EQ(s.episodes, 2);
  auto j = to_json(s);
  for (const char* k : {"success_rate", "action_hz", "vlm_hz", "loop_jitter_p99_ms",
                        "feature_age_p50_ms", "feature_age_p99_ms", "episodes"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_NEAR(j["feature_age_p50_ms"].get<double>(), 300.0, 101.0);
  // In sim time every VLM call takes exactly the modelled latency.
  EXPECT_NEAR(j["vlm_call_p50_ms"].get<double>(), 200.0, 1e-6);
  EXPECT_NEAR(j["vlm_call_p99_ms"].get<double>(), 200.0, 1e-6);
  vla::Image tl = plot_timeline(ep, 3.0, 600);
  EXPECT_EQ(tl.width, 600);
  // The VLM-call segments (palette 0) and the acting ticks' ages (palette 1) were drawn.
  auto near = [&](const vla::Image& im, std::array<uint8_t, 3> c) {
    int n = 0;
    for (size_t i = 0; i + 2 < im.pixels.size(); i += 3)
      n += std::abs(im.pixels[i] - c[0]) < 20 && std::abs(im.pixels[i + 1] - c[1]) < 20 &&
           std::abs(im.pixels[i + 2] - c[2]) < 20;
    return n;
  };
  EXPECT_GT(near(tl, vla::plot::palette(0)), 50);
  EXPECT_GT(near(tl, vla::plot::palette(1)), 50);
  vla::Image h = plot_age_histogram({ep});
  EXPECT_GT(near(h, vla::plot::palette(0)), 200);
  EXPECT_EQ(h.height, 300);
}
