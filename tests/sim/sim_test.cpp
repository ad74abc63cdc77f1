#include "sim/sim.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <thread>

namespace vla::sim {
namespace {

EnvConfig headless() {
  EnvConfig c;
  c.render = false;
  return c;
}

Chunk constant_chunk(float dx, float dy, float dz) { return Chunk(kChunkSize, Action{dx, dy, dz}); }

// Drives the stage to (x, y) above the tissue, then descends at `speed` m/s.
ChunkPolicy go_to_and_descend(double x, double y, double speed) {
  return [=](const NeedleEnv& env) {
    auto c = env.target();
    double cx = c[0], cy = c[1];
    Chunk chunk(kChunkSize, Action{0, 0, 0});
    for (auto& a : chunk) {
      double dx = x - cx, dy = y - cy, d = std::hypot(dx, dy);
      if (d > 1e-5) {
        double s = std::min(1.0, 0.0015 / d);
        a = {float(dx * s), float(dy * s), 0.0f};
        cx += a[0];
        cy += a[1];
      } else {
        a = {0.0f, 0.0f, float(-speed / kActionHz)};
      }
    }
    return chunk;
  };
}

TEST(NeedleEnv, SameSeedGivesIdenticalForceLogAndProprio) {
  NeedleEnv a(headless()), b(headless());
  ChunkPolicy pa = demonstrator_policy(std::make_shared<ScriptedDemonstrator>());
  ChunkPolicy pb = demonstrator_policy(std::make_shared<ScriptedDemonstrator>());
  run_episode(a, pa, 7);
  run_episode(b, pb, 7);
  ASSERT_EQ(a.force_log().size(), b.force_log().size());
  ASSERT_GT(a.force_log().size(), 100u);
  for (size_t i = 0; i < a.force_log().size(); ++i) {
    ASSERT_EQ(a.force_log()[i].t, b.force_log()[i].t);
    for (int k = 0; k < kForceDim; ++k)
      ASSERT_EQ(a.force_log()[i].f[k], b.force_log()[i].f[k]) << i;
  }
  EXPECT_EQ(a.proprio(), b.proprio());
  EXPECT_EQ(a.instruction(), b.instruction());
  ASSERT_EQ(a.action_log().size(), b.action_log().size());
  // A different seed gives a different episode.
  run_episode(b, pb, 8);
  EXPECT_NE(a.proprio(), b.proprio());
}

TEST(NeedleEnv, SensorSamplesAt650Hz) {
  NeedleEnv env(headless());
  env.reset(3);
  env.step_chunk(constant_chunk(0.001f, 0, 0));
  env.step_chunk({});
  for (int i = 0; i < 10; ++i) env.step_physics();
  const auto& log = env.force_log();
  ASSERT_EQ(log.size(), static_cast<size_t>(2 * kStepsPerChunk + 10));
  EXPECT_EQ(env.steps(), static_cast<int64_t>(log.size()));
  for (size_t i = 0; i < log.size(); ++i) {
    EXPECT_NEAR(log[i].t, (i + 1) / 650.0, 1e-12);
    if (i) {
      EXPECT_NEAR(log[i].t - log[i - 1].t, 1.0 / 650.0, 1e-12);
    }
  }
  EXPECT_NEAR(env.time(), log.back().t, 1e-12);
  // 130 samples per 200 ms: exactly 650 per second.
  EXPECT_NEAR((log.size() - 10) / 0.2, kPhysicsHz, 1e-9);
}

TEST(NeedleEnv, ChunkIsInterpolatedAndHeld) {
  NeedleEnv env(headless());
  env.reset(5);
  const auto start = env.target();
  env.set_chunk(constant_chunk(0.002f, -0.001f, 0.0f));
  for (int i = 0; i < 33; ++i) env.step_physics();
  // Halfway through the 100 ms chunk the target moved about half of the total.
  auto mid = env.target();
  EXPECT_NEAR(mid[0] - start[0], 33 / 650.0 * 80 * 0.002, 1e-6);
  for (int i = 0; i < kStepsPerChunk - 33; ++i) env.step_physics();
  auto end = env.target();
  EXPECT_NEAR(end[0] - start[0], 8 * 0.002, 1e-6);
  EXPECT_NEAR(end[1] - start[1], -8 * 0.001, 1e-6);
  EXPECT_EQ(env.action_log().size(), 8u);
  // Chunk exhausted: the target holds and the stage converges to it.
  for (int i = 0; i < 2 * kStepsPerChunk; ++i) env.step_physics();
  EXPECT_EQ(env.target(), end);
  EXPECT_NEAR(env.proprio()[0], end[0], 5e-4);
  EXPECT_EQ(env.action_log().size(), 8u);
  // Actions are clipped to kMaxActionDelta.
  env.step_chunk(constant_chunk(1.0f, 0, 0));
  EXPECT_NEAR(env.target()[0] - end[0], std::min(8 * kMaxActionDelta, 0.1 - end[0]), 1e-6);
  EXPECT_THROW(env.set_chunk(Chunk(9, Action{0, 0, 0})), Error);
}

TEST(NeedleEnv, InstructionsNameTheTargetInEnglishAndKorean) {
  ASSERT_GE(num_english_phrasings(), 3);
  ASSERT_GE(num_phrasings() - num_english_phrasings(), 2);
  PortInfo p;
  p.color = "red";
  p.color_ko = "빨간색";
  for (int i = 0; i < num_phrasings(); ++i) {
    std::string s = make_instruction(p, i);
    if (i < num_english_phrasings()) {
      EXPECT_NE(s.find("red"), std::string::npos) << s;
      EXPECT_NE(s.find("needle"), std::string::npos) << s;
    } else {
      EXPECT_NE(s.find("빨간색"), std::string::npos) << s;
      EXPECT_NE(s.find("바늘"), std::string::npos) << s;
    }
  }
  NeedleEnv env(headless());
  int korean = 0;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    env.reset(seed);
    const SceneInfo sc = env.scene();
    const PortInfo& t = sc.ports[sc.target];
    const std::string& ins = env.instruction();
    bool en = ins.find(t.color) != std::string::npos;
    bool ko = ins.find(t.color_ko) != std::string::npos;
    EXPECT_TRUE(en || ko) << ins;
    korean += ko;
    for (size_t i = 0; i < sc.ports.size(); ++i) {
      if (static_cast<int>(i) == sc.target) continue;
      EXPECT_EQ(ins.find(sc.ports[i].color), std::string::npos) << ins;
    }
  }
  EXPECT_GT(korean, 0);
  EXPECT_LT(korean, 40);
  // Forced target: the instruction names that port.
  env.reset(11, 2);
  EXPECT_EQ(env.scene().target, 2);
  const PortInfo& t2 = env.scene().ports[2];
  EXPECT_TRUE(env.instruction().find(t2.color) != std::string::npos ||
              env.instruction().find(t2.color_ko) != std::string::npos);
}

TEST(NeedleEnv, PortsAreRandomisedPerSeed) {
  NeedleEnv env(headless());
  env.reset(1);
  auto a = env.scene();
  env.reset(2);
  auto b = env.scene();
  EXPECT_NE(a.ports[0].pos, b.ports[0].pos);
  env.reset(1);
  EXPECT_EQ(env.scene().ports[0].pos, a.ports[0].pos);
  for (const auto& p : a.ports) EXPECT_NEAR(p.pos[2], a.surface_z, 1e-12);
}

// The named port's colour appears where the camera projection of its position says.
TEST(NeedleEnv, RenderedPortColourMatchesProjection) {
  EnvConfig cfg;
  cfg.width = 160;
  cfg.height = 120;
  NeedleEnv env(cfg);
  int checked = 0, occluded = 0;
  for (uint64_t seed : {1, 2, 3}) {
    env.reset(seed);
    const auto views = env.render();
    ASSERT_EQ(views.size(), static_cast<size_t>(kNumViews));
    for (const auto& im : views) {
      ASSERT_EQ(im.width, 160);
      ASSERT_EQ(im.height, 120);
    }
    const SceneInfo sc = env.scene();
    for (int view : {0, 1, 2, 3}) {
      for (const auto& port : sc.ports) {
        // A point on the coloured ring (the centre is the dark hole).
        std::array<double, 3> w = {port.pos[0] + 0.0042, port.pos[1], port.pos[2] + 0.0008};
        double u, v;
        ASSERT_TRUE(env.project(view, w, &u, &v));
        // Skip ports hidden behind the needle/stage in this view (segment carriage -> tip).
        double ua, va, ub, vb;
        auto st = env.proprio();
        ASSERT_TRUE(env.project(view, {st[0], st[1], st[2] + 0.03}, &ua, &va));
        ASSERT_TRUE(env.project(view, sc.needle_tip, &ub, &vb));
        double sx = ub - ua, sy = vb - va;
        double tt =
            std::clamp(((u - ua) * sx + (v - va) * sy) / (sx * sx + sy * sy + 1e-12), 0.0, 1.0);
        if (std::hypot(ua + tt * sx - u, va + tt * sy - v) < 12.0) {
          ++occluded;
          continue;
        }
        int x = static_cast<int>(std::floor(u)), y = static_cast<int>(std::floor(v));
        ASSERT_TRUE(x >= 0 && x < 160 && y >= 0 && y < 120) << view << " " << u << " " << v;
        const uint8_t* px = views[view].row(y) + 3 * x;
        // The pixel's colour is closest (in chromaticity) to this port's colour among all ports.
        auto chroma_dist = [&](const std::array<uint8_t, 3>& c) {
          double s1 = px[0] + px[1] + px[2] + 1e-9, s2 = c[0] + c[1] + c[2] + 1e-9;
          double d = 0;
          for (int k = 0; k < 3; ++k) d += std::pow(px[k] / s1 - c[k] / s2, 2);
          return d;
        };
        double mine = chroma_dist(port.rgb);
        for (const auto& other : sc.ports) {
          if (other.color == port.color) continue;
          EXPECT_LT(mine, chroma_dist(other.rgb))
              << "view " << view_names()[view] << " port " << port.color << " pixel " << int(px[0])
              << "," << int(px[1]) << "," << int(px[2]);
        }
        EXPECT_LT(mine, chroma_dist({204, 194, 179})) << "looks like tissue";
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked + occluded, 3 * 4 * 3);
  EXPECT_GE(checked, 24);
}

// The runtime renders from its VLM thread, not the thread that created the env.
TEST(NeedleEnv, RendersFromAnotherThread) {
  EnvConfig cfg;
  cfg.width = 32;
  cfg.height = 32;
  cfg.num_views = 2;
  NeedleEnv env(cfg);
  env.reset(4);
  std::vector<Image> here = env.render(), there;
  std::thread t([&] { there = env.render(); });
  t.join();
  ASSERT_EQ(there.size(), 2u);
  EXPECT_EQ(here[0].pixels, there[0].pixels);
  EXPECT_EQ(here[1].pixels, there[1].pixels);
  env.step_chunk(Chunk(kChunkSize, Action{0.003f, 0, 0}));
  EXPECT_NE(env.render()[0].pixels, here[0].pixels);  // the needle moved
}

TEST(NeedleEnv, RenderThrowsWithoutRenderer) {
  NeedleEnv env(headless());
  EXPECT_THROW(env.render(), Error);
  EnvConfig bad;
  bad.num_views = 6;
  EXPECT_THROW(NeedleEnv{bad}, Error);
}

TEST(ScriptedDemonstrator, SucceedsOnSeveralSeeds) {
  NeedleEnv env(headless());
  auto expert = std::make_shared<ScriptedDemonstrator>();
  ChunkPolicy p = demonstrator_policy(expert);
  for (uint64_t seed = 100; seed < 106; ++seed) {
    RolloutResult r = run_episode(env, p, seed);
    EXPECT_TRUE(r.outcome.success) << "seed " << seed << ": " << r.outcome.reason;
    EXPECT_EQ(r.outcome.reason, "success");
    EXPECT_LT(r.outcome.peak_force, env.config().force_limit);
    EXPECT_EQ(env.scene().inserted_port, env.scene().target);
    EXPECT_GE(env.scene().insertion_depth, env.config().success_depth);
  }
}

// DART: the executed actions carry noise, the recorded labels are exactly the clean chunks the
// expert produced at each tick's state.
TEST(Recorder, DartLabelsAreTheCleanExpertActions) {
  auto expert = std::make_shared<ScriptedDemonstrator>();
  ChunkPolicy base = demonstrator_policy(expert);
  auto seen = std::make_shared<std::vector<Chunk>>();
  RolloutOptions ro;
  ro.labeler = [base, seen](const NeedleEnv& e) {
    Chunk c = base(e);
    seen->push_back(c);
    return c;
  };
  ro.action_noise_std = 0.0003;
  ro.noise_seed = 9;
  ro.max_ticks = 12;
  Recording ep;
  EnvConfig cfg = headless();
  cfg.render = true;
  cfg.num_views = 1;
  cfg.width = cfg.height = 32;
  NeedleEnv renv(cfg);
  run_episode(renv, ChunkPolicy(), 42, -1, &ep, ro);
  ASSERT_EQ(seen->size(), 12u);
  ASSERT_EQ(ep.actions.size(), renv.action_log().size());
  ASSERT_EQ(ep.frames.size(), 12u);
  EXPECT_EQ(ep.outcome.reason, "truncated");
  double max_noise = 0;
  for (size_t i = 0; i < ep.actions.size(); ++i) {
    const Action& label = (*seen)[i / kChunkSize][i % kChunkSize];
    for (int k = 0; k < kActionDim; ++k) {
      EXPECT_EQ(ep.actions[i][k], label[k]) << "action " << i;
      max_noise = std::max(max_noise, std::fabs(double(renv.action_log()[i].action[k]) - label[k]));
    }
  }
  EXPECT_GT(max_noise, 1e-4);  // the executed actions really were perturbed
  EXPECT_EQ(ep.driver, "dart");
  EXPECT_TRUE(ep.labelled);
}

// DAgger-style rollout: another policy drives (here: hold still), the expert labels; the labels
// are what the expert commands from the visited states (moving towards the port), not holds.
TEST(Recorder, LabelerActionsAreRecordedWhileAnotherPolicyDrives) {
  EnvConfig cfg = headless();
  cfg.render = true;
  cfg.num_views = 1;
  cfg.width = cfg.height = 32;
  NeedleEnv env(cfg);
  ChunkPolicy hold = [](const NeedleEnv&) { return Chunk(kChunkSize, Action{0, 0, 0}); };
  RolloutOptions ro;
  ro.labeler = demonstrator_policy(std::make_shared<ScriptedDemonstrator>());
  ro.max_ticks = 5;
  Recording ep;
  run_episode(env, hold, 7, -1, &ep, ro);
  ASSERT_EQ(ep.actions.size(), 40u);
  double label_norm = 0, executed_norm = 0;
  for (size_t i = 0; i < ep.actions.size(); ++i)
    for (int k = 0; k < kActionDim; ++k) {
      label_norm += std::fabs(ep.actions[i][k]);
      executed_norm += std::fabs(env.action_log()[i].action[k]);
    }
  EXPECT_GT(label_norm, 1e-3);
  EXPECT_EQ(executed_norm, 0.0);
  EXPECT_EQ(ep.driver, "dagger");
}

// Off the port axis (as after a noisy or learned approach), the expert backs up and re-centres
// before going deeper, and still inserts.
TEST(ScriptedDemonstrator, RealignsWhenPushedOffTheAxis) {
  NeedleEnv env(headless());
  auto expert = std::make_shared<ScriptedDemonstrator>();
  ChunkPolicy p = demonstrator_policy(expert);
  int ticks = 0;
  bool pushed = false;
  ChunkPolicy disturbed = [&](const NeedleEnv& e) {
    Chunk c = p(e);
    // Once the expert is searching, shove the target 5 mm sideways for one tick.
    if (!pushed && expert->phase() == "search") {
      pushed = true;
      for (auto& a : c) a[0] += 0.005f / kChunkSize;
    }
    ++ticks;
    return c;
  };
  RolloutResult r = run_episode(env, disturbed, 103);
  EXPECT_TRUE(pushed);
  EXPECT_TRUE(r.outcome.success) << r.outcome.reason;
}

// The expert finds the surface by force: insertion depth is controlled relative to the sensed
// contact although the tissue height varies by 10 mm between episodes.
TEST(ScriptedDemonstrator, DepthFollowsSensedContact) {
  NeedleEnv env(headless());
  auto expert = std::make_shared<ScriptedDemonstrator>();
  ChunkPolicy p = demonstrator_policy(expert);
  double zmin = 1, zmax = 0;
  for (uint64_t seed = 200; seed < 206; ++seed) {
    ASSERT_TRUE(run_episode(env, p, seed).outcome.success);
    const SceneInfo sc = env.scene();
    zmin = std::min(zmin, sc.surface_z);
    zmax = std::max(zmax, sc.surface_z);
    EXPECT_GE(sc.insertion_depth, env.config().success_depth);
    EXPECT_LT(sc.insertion_depth, 0.014);
  }
  EXPECT_GT(zmax - zmin, 0.003);
}

TEST(ScriptedDemonstrator, BacksOffOnExcessForce) {
  for (double limit : {100.0, 0.0}) {
    NeedleEnv env(headless());
    ExpertConfig cfg;
    cfg.backoff_force = limit;
    ScriptedDemonstrator expert(cfg);
    env.reset(3);
    int ticks = 0;
    while (expert.phase() != "insert" && ticks++ < 60) env.step_chunk(expert.act(env));
    ASSERT_EQ(expert.phase(), "insert");
    Chunk next = expert.act(env);
    double dz = 0;
    for (const auto& a : next) dz += a[2];
    if (limit > 10) {
      EXPECT_LT(dz, 0.0);  // keeps inserting
    } else {
      EXPECT_GT(dz, 0.0);  // any force counts as excess: retract
    }
  }
}

TEST(NeedleEnv, FailureReasons) {
  NeedleEnv env(headless());
  // Doing nothing times out.
  ChunkPolicy hold = [](const NeedleEnv&) { return Chunk(kChunkSize, Action{0, 0, 0}); };
  EnvConfig short_cfg = headless();
  short_cfg.time_limit_s = 1.0;
  NeedleEnv short_env(short_cfg);
  RolloutResult r = run_episode(short_env, hold, 4);
  EXPECT_EQ(r.outcome.reason, "timeout");
  EXPECT_NEAR(r.outcome.time_s, 1.0, 2e-3);

  // Descending into another port: wrong_port.
  env.reset(4, 0);
  auto other = env.scene().ports[1];
  r = run_episode(env, go_to_and_descend(other.pos[0], other.pos[1], 0.01), 4, 0);
  EXPECT_EQ(r.outcome.reason, "wrong_port");

  // Pushing into the tissue away from every port: the force rises (fz > 0) until excess_force.
  env.reset(4, 0);
  auto sc = env.scene();
  double x = 0.08, y = 0.055;  // a corner of the tissue block, away from ports
  for (const auto& p : sc.ports) ASSERT_GT(std::hypot(p.pos[0] - x, p.pos[1] - y), 0.01);
  r = run_episode(env, go_to_and_descend(x, y, 0.02), 4, 0);
  EXPECT_EQ(r.outcome.reason, "excess_force");
  float max_fz = 0;
  for (const auto& s : env.force_log()) max_fz = std::max(max_fz, s.f[2]);
  EXPECT_GT(max_fz, env.config().force_limit * 0.8);
}

TEST(NeedleEnv, ForceIsNearZeroWhenFree) {
  EnvConfig cfg = headless();
  cfg.force_noise_std = 0.0;
  NeedleEnv env(cfg);
  env.reset(9);
  for (int i = 0; i < 3; ++i) env.step_chunk({});
  for (const auto& s : env.force_log()) {
    for (int k = 0; k < 3; ++k) EXPECT_NEAR(s.f[k], 0.0f, 0.02f);
  }
}

TEST(Recorder, RecordsFramesForcesActionsAndPortPixels) {
  EnvConfig cfg;
  cfg.width = 48;
  cfg.height = 32;
  cfg.num_views = 2;
  NeedleEnv env(cfg);
  Recording rec;
  ChunkPolicy p = demonstrator_policy(std::make_shared<ScriptedDemonstrator>());
  RolloutResult r = run_episode(env, p, 21, -1, &rec);
  ASSERT_TRUE(r.outcome.success) << r.outcome.reason;
  EXPECT_TRUE(rec.outcome.success);
  EXPECT_EQ(rec.instruction, env.instruction());
  EXPECT_EQ(rec.seed, 21u);
  EXPECT_EQ(rec.driver, "scripted");
  EXPECT_FALSE(rec.labelled);
  ASSERT_EQ(rec.force.size(), env.force_log().size());
  EXPECT_EQ(rec.force[5].f[2], env.force_log()[5].f[2]);
  ASSERT_EQ(rec.actions.size(), env.action_log().size());
  ASSERT_EQ(rec.proprio.size(), rec.actions.size());
  EXPECT_EQ(rec.frames.size(),
            static_cast<size_t>((env.steps() + kStepsPerChunk - 1) / kStepsPerChunk));
  ASSERT_EQ(rec.frames[0].size(), 2u);
  EXPECT_EQ(rec.frames[0][1].width, 48);
  EXPECT_EQ(rec.scene.target, env.scene().target);
  // Pixel labels: where each port is in each view's first frame (fixed views: top, front).
  env.reset(21);
  ASSERT_EQ(rec.port_pixels.size(), env.scene().ports.size());
  for (size_t k = 0; k < rec.port_pixels.size(); ++k) {
    ASSERT_EQ(rec.port_pixels[k].size(), 2u);
    for (int v = 0; v < 2; ++v) {
      double u = 0, w = 0;
      ASSERT_TRUE(env.project(v, env.scene().ports[k].pos, &u, &w));
      EXPECT_DOUBLE_EQ(rec.port_pixels[k][v][0], u);
      EXPECT_DOUBLE_EQ(rec.port_pixels[k][v][1], w);
      EXPECT_GT(u, 0);
      EXPECT_LT(u, cfg.width);
    }
  }
}

}  // namespace
}  // namespace vla::sim
