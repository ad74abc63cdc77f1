#include "train/train.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "plot/plot.h"

using namespace vla;
using namespace vla::train;

namespace {

std::string tmp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() /
           ("vla_train_test_" + name + "_" + std::to_string(::getpid()));
  vla::remove_tree(p);
  return p.string();
}

// A tiny synthetic dataset: the target port is encoded in the image colour; actions move toward
// a point that depends on it. Frames 16x16, 1 view, 6 ticks.
void make_dataset(const std::string& dir, int episodes, int ticks = 6) {
  dataset::DatasetWriter w(dir, "png");
  for (int e = 0; e < episodes; ++e) {
    dataset::EpisodeData ep;
    ep.instruction =
        e % 2 ? "insert the needle into the red port" : "insert the needle into the blue port";
    ep.seed = e;
    ep.success = true;
    ep.reason = "success";
    ep.duration_s = ticks * 0.1;
    ep.target = e % 3;
    for (int k = 0; k < 3; ++k) {
      dataset::PortMeta p;
      p.color = k == 0 ? "red" : k == 1 ? "green" : "blue";
      p.color_ko = k == 0 ? "빨간색" : k == 1 ? "초록색" : "파란색";
      p.pos = {-0.05 + 0.05 * k, 0.02 * (e % 3 - 1), 0.04};
      p.rgb = {200, 50, 50};
      p.radius = 0.006;
      ep.ports.push_back(p);
    }
    ep.view_names = {"top"};
    ep.width = ep.height = 16;
    for (int t = 0; t < ticks; ++t)
      ep.frames.push_back({make_image(16, 16, 3, static_cast<uint8_t>(20 * (e % 5) + t))});
    const int na = ticks * 8, nf = ticks * 65;
    for (int i = 0; i < nf; ++i) {
      float tt = (i + 1) / 650.0f;
      ep.force.push_back({tt, 0.1f * (e % 3), 0.01f * i / nf, std::sin(0.1f * i), 0, 0, 0});
    }
    for (int i = 0; i < na; ++i) {
      ep.actions.push_back({0.001f * (e % 3 - 1), -0.0005f, 0.0002f * (i % 8)});
      ep.proprio.push_back({0.001f * i, 0.0f, 0.1f - 0.0001f * i});
    }
    w.write(ep);
  }
}

// Fake VLM for tests: features = per-channel mean colour of each view + a prompt hash feature.
class FakeVlm : public policy::VlmEncoder {
 public:
  explicit FakeVlm(std::string fp = "fake-v1") : fp_(std::move(fp)) {}
  torch::Tensor encode(const std::vector<Image>& views,
                       const std::string& instruction) const override {
    auto f = torch::zeros({1, 4});
    for (auto& v : views) {
      double s = 0;
      for (auto p : v.pixels) s += p;
      f[0][0] += s / v.pixels.size() / 255.0;
    }
    f[0][1] = static_cast<double>(instruction.size() % 7);
    f[0][2] = instruction.find("red") != std::string::npos ? 1.0 : -1.0;
    return f;
  }
  int feature_dim() const override { return 4; }
  std::string fingerprint() const override { return fp_; }
  void save(const std::string&) const override {}

 private:
  std::string fp_;
};

TEST(Reuse, PairingIndices) {
  // N = 1: fresh features only.
  auto p1 = reuse_pairs(4, 1);
  ASSERT_EQ(p1.size(), 4u);
  for (int t = 0; t < 4; ++t) EXPECT_EQ(p1[t], (TickPair{t, t}));
  // N = 3 on 5 ticks: feature t -> targets t, t+1, t+2 (clipped).
  auto p3 = reuse_pairs(5, 3);
  std::vector<TickPair> want = {{0, 0}, {0, 1}, {0, 2}, {1, 1}, {1, 2}, {1, 3},
                                {2, 2}, {2, 3}, {2, 4}, {3, 3}, {3, 4}, {4, 4}};
  EXPECT_EQ(p3, want);
  for (auto& p : p3) {
    EXPECT_GE(p.target_tick - p.feature_tick, 0);
    EXPECT_LT(p.target_tick - p.feature_tick, 3);
  }
  EXPECT_THROW(reuse_pairs(5, 0), Error);
}

TEST(Reuse, RandomStalenessWithinBounds) {
  std::mt19937_64 rng(1);
  std::set<int> seen;
  for (int rep = 0; rep < 50; ++rep) {
    auto p = random_staleness_pairs(20, 4, rng);
    ASSERT_EQ(p.size(), 20u);
    for (int t = 0; t < 20; ++t) {
      EXPECT_EQ(p[t].target_tick, t);
      int s = t - p[t].feature_tick;
      EXPECT_GE(s, 0);
      EXPECT_LE(s, std::min(3, t));
      seen.insert(s);
    }
  }
  EXPECT_EQ(seen, (std::set<int>{0, 1, 2, 3}));  // every staleness occurs
}

TEST(LrSchedule, WarmupThenCosine) {
  EXPECT_NEAR(lr_factor(0, 10, 100), 0.1, 1e-12);
  EXPECT_NEAR(lr_factor(9, 10, 100), 1.0, 1e-12);
  EXPECT_NEAR(lr_factor(10, 10, 100), 1.0, 1e-12);
  EXPECT_NEAR(lr_factor(55, 10, 100, 0.0), 0.5, 1e-12);  // halfway through the cosine
  EXPECT_NEAR(lr_factor(100, 10, 100, 0.05), 0.05, 1e-12);
  EXPECT_GT(lr_factor(30, 10, 100), lr_factor(60, 10, 100));
}

TEST(Data, CutTicksWindowsAndTargets) {
  auto dir = tmp_dir("cut");
  make_dataset(dir, 1, 4);
  auto ds = dataset::Dataset::open(dir);
  auto ep = ds.load(0, false);
  auto tk = cut_ticks(ep, 65, 8);
  ASSERT_EQ(tk.num_ticks, 4);
  // Tick 0: nothing measured yet -> zeros.
  EXPECT_EQ(tk.force[0].abs().sum().item<float>(), 0.0f);
  // Tick 2: samples 65..129, newest last.
  EXPECT_TRUE(torch::equal(tk.force[2], ep.force.narrow(0, 65, 65).narrow(1, 1, 6)));
  EXPECT_TRUE(torch::equal(tk.actions[3], ep.actions.narrow(0, 24, 8)));
  EXPECT_TRUE(torch::equal(tk.proprio[1], ep.proprio[8]));
  // Longer window: zero padded at the front.
  auto tk2 = cut_ticks(ep, 100, 8);
  EXPECT_EQ(tk2.force[1].narrow(0, 0, 35).abs().sum().item<float>(), 0.0f);
  EXPECT_TRUE(
      torch::equal(tk2.force[1].narrow(0, 35, 65), ep.force.narrow(0, 0, 65).narrow(1, 1, 6)));
  vla::remove_tree(dir);
}

TEST(Cache, BuildValidateAndRefuseStale) {
  auto dir = tmp_dir("cache_ds"), cdir = tmp_dir("cache");
  make_dataset(dir, 3);
  auto ds = dataset::Dataset::open(dir);
  FakeVlm vlm("fake-A");
  FeatureCache::build(ds, vlm, cdir, false);
  auto c = FeatureCache::open(cdir);
  EXPECT_NO_THROW(c.validate(ds, "fake-A", true));
  auto f = c.features(ds.name(1));
  ASSERT_EQ(f.sizes(), (std::vector<int64_t>{6, 1, 4}));
  auto ep = ds.load(1, true);
  EXPECT_TRUE(torch::allclose(f[2], vlm.encode(ep.frames[2], ep.instruction)));
  // Another VLM -> refused.
  EXPECT_THROW(c.validate(ds, "fake-B", false), Error);
  // Keys depend on VLM, image content and prompt.
  auto views = ep.frames[0];
  auto k = feature_key("fake-A", views, "p");
  EXPECT_NE(k, feature_key("fake-B", views, "p"));
  EXPECT_NE(k, feature_key("fake-A", views, "q"));
  views[0].pixels[5] ^= 1;
  EXPECT_NE(k, feature_key("fake-A", views, "p"));
  // Change one frame of the dataset on disk -> stale key detected for that tick.
  auto frame = ds.load_frame(2, 3, 0);
  frame.pixels[0] ^= 0x40;
  std::string fpath;
  for (auto& e : std::filesystem::recursive_directory_iterator(dir + "/" + ds.name(2)))
    if (e.path().filename().string().rfind("v0_0003", 0) == 0) fpath = e.path().string();
  ASSERT_FALSE(fpath.empty());
  write_png(fpath, frame);
  auto ds2 = dataset::Dataset::open(dir);
  try {
    c.validate(ds2, "fake-A", true);
    FAIL() << "stale cache accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tick 3"), std::string::npos) << e.what();
  }
  vla::remove_tree(dir);
  vla::remove_tree(cdir);
}

TrainOptions stage1_options(const std::string& ds, const std::string& cache,
                            const std::string& out) {
  TrainOptions o;
  o.dataset = ds;
  o.cache = cache;
  o.out = out;
  o.stage = "1";
  o.steps = 12;
  o.batch = 8;
  o.warmup = 3;
  o.holdout = 0.25;
  o.reuse_count = 3;
  o.progress = false;
  o.checkpoint_every = 5;
  o.policy.d_model = 32;
  o.policy.sensor_dim = 16;
  o.policy.ff_dim = 64;
  o.policy.heads = 2;
  o.policy.flow_steps = 3;
  o.policy.dropout = 0.1f;  // exercises the RNG in the resume test
  return o;
}

TEST(Trainer, Stage1ResumeIsBitExact) {
  auto dir = tmp_dir("resume_ds"), cdir = tmp_dir("resume_cache");
  make_dataset(dir, 4);
  auto ds = dataset::Dataset::open(dir);
  FakeVlm vlm;
  FeatureCache::build(ds, vlm, cdir, false);
  // Uninterrupted run.
  auto outA = tmp_dir("resume_a");
  auto ra = vla::train::train(stage1_options(dir, cdir, outA));
  ASSERT_EQ(ra.losses.size(), 12u);
  // Interrupted at step 7 (after a checkpoint), then resumed in a fresh call.
  auto outB = tmp_dir("resume_b");
  auto ob = stage1_options(dir, cdir, outB);
  ob.stop_after = 7;
  auto partial = vla::train::train(ob);
  ASSERT_EQ(partial.losses.size(), 7u);
  ASSERT_TRUE(file_exists(outB + "/checkpoint/state.json"));
  torch::manual_seed(12345);  // resume must restore the RNG, whatever happened in between
  ob.stop_after = 0;
  ob.resume = true;
  auto rb = vla::train::train(ob);
  ASSERT_EQ(rb.losses.size(), 12u);
  for (size_t i = 0; i < 12; ++i) EXPECT_EQ(ra.losses[i], rb.losses[i]) << "step " << i;
  EXPECT_EQ(read_file(outA + "/policy.safetensors"), read_file(outB + "/policy.safetensors"));
  // Outputs: policy folder, loss curve, report.
  auto pol = policy::Policy::load(outA);
  EXPECT_EQ(pol->config().vl_dim, 4);
  EXPECT_EQ(pol->info()["provenance"]["vlm_reuse_count"], 3);
  auto png = read_image(outA + "/loss.png");
  EXPECT_EQ(png.width, 640);
  auto a = pol->act(torch::zeros({4}), torch::zeros({65, 6}), torch::zeros({3}));
  EXPECT_TRUE(torch::isfinite(a).all().item<bool>());
  for (auto& p : {outA, outB, dir, cdir}) vla::remove_tree(p);
}

TEST(Trainer, Stage1LearnsFromFeatures) {
  // The action's x component is determined by the episode (visible only through the VL
  // feature); training must bring the held-out error well below the action variance.
  auto dir = tmp_dir("learn_ds"), cdir = tmp_dir("learn_cache"), out = tmp_dir("learn_out");
  make_dataset(dir, 9);
  auto ds = dataset::Dataset::open(dir);
  FakeVlm vlm;
  FeatureCache::build(ds, vlm, cdir, false);
  auto o = stage1_options(dir, cdir, out);
  o.policy.head = "mlp";
  o.policy.dropout = 0;
  o.steps = 300;
  o.batch = 32;
  o.lr_action = 3e-3;
  o.lr_sensor = 3e-3;
  o.checkpoint_every = 0;
  o.holdout = 0.0;
  auto r = vla::train::train(o);
  EXPECT_LT(r.final_loss, 0.2);
  for (auto& p : {out, dir, cdir}) vla::remove_tree(p);
}

TEST(Trainer, CudaTrainingMatchesCpu) {
  // One trainer, two devices: the same stage-1 run (MLP head: no device RNG involved) on the CPU
  // and on CUDA gives the same loss curve and weights up to float rounding. AdamW divides each
  // gradient by its own magnitude, so a gradient at the rounding-noise level can move a weight by
  // up to one learning rate per step in either direction: weights are compared within
  // steps * max(lr), losses within 1e-3 relative.
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  // cuDNN convolutions (the sensor encoder) default to TF32 (10-bit mantissa); compare in FP32.
  const bool tf32 = at::globalContext().allowTF32CuDNN();
  at::globalContext().setAllowTF32CuDNN(false);
  auto dir = tmp_dir("cuda_ds"), cdir = tmp_dir("cuda_cache");
  make_dataset(dir, 6);
  auto ds = dataset::Dataset::open(dir);
  FakeVlm vlm;
  FeatureCache::build(ds, vlm, cdir, false);
  std::vector<TrainReport> runs;
  std::vector<std::vector<std::pair<std::string, torch::Tensor>>> weights;
  TrainOptions o;
  for (const std::string device : {"cpu", "cuda"}) {
    auto out = tmp_dir("cuda_out_" + device);
    o = stage1_options(dir, cdir, out);
    o.steps = 4;
    o.policy.head = "mlp";
    o.policy.dropout = 0;
    o.checkpoint_every = 0;
    o.device = device;
    runs.push_back(vla::train::train(o));
    weights.push_back(policy::load_tensors(out + "/policy.safetensors"));
    vla::remove_tree(out);
  }
  at::globalContext().setAllowTF32CuDNN(tf32);
  ASSERT_EQ(runs[0].losses.size(), runs[1].losses.size());
  for (size_t i = 0; i < runs[0].losses.size(); ++i)
    EXPECT_NEAR(runs[0].losses[i], runs[1].losses[i], 1e-3 * (1 + std::abs(runs[0].losses[i])))
        << "step " << i;
  const double atol = o.steps * std::max(o.lr_sensor, o.lr_action) + 1e-5;
  ASSERT_EQ(weights[0].size(), weights[1].size());
  for (size_t k = 0; k < weights[0].size(); ++k) {
    const double diff = (weights[0][k].second - weights[1][k].second).abs().max().item<double>();
    EXPECT_LE(diff, atol) << weights[0][k].first;
  }
  for (auto& p : {dir, cdir}) vla::remove_tree(p);
}

TEST(Captions, GroundTruthEnglishKorean) {
  auto dir = tmp_dir("cap");
  make_dataset(dir, 2);
  auto ds = dataset::Dataset::open(dir);
  auto ep = ds.load(1, false);
  auto en = scene_caption(ep, 0, "en");
  auto ko = scene_caption(ep, 0, "ko");
  // Ports sorted left to right: red (x = -0.05), green (0), blue (0.05); episode 1: y = 0.
  EXPECT_EQ(en.rfind("the red port is at the left. the green port is at the center. the blue port "
                     "is at the right.",
                     0),
            0u)
      << en;
  EXPECT_NE(ko.find("빨간색 포트는 왼쪽에 있습니다."), std::string::npos) << ko;
  EXPECT_THROW(scene_caption(ep, 0, "fr"), Error);
  vla::remove_tree(dir);
}

TEST(LossCurve, ChartHasTheLossLineAndALogAxisWhenItSpansDecades) {
  std::vector<double> s, l;
  for (int i = 0; i < 100; ++i) s.push_back(i), l.push_back(1.0 / (1 + i));
  auto im = plot_loss_curve(s, l, 320, 200);
  ASSERT_EQ(im.width, 320);
  ASSERT_EQ(im.height, 200);
  const auto blue = plot::palette(0);
  int line = 0, dark = 0;
  for (size_t i = 0; i < im.pixels.size(); i += 3) {
    line += std::abs(im.pixels[i] - blue[0]) < 20 && std::abs(im.pixels[i + 1] - blue[1]) < 20 &&
            std::abs(im.pixels[i + 2] - blue[2]) < 20;
    dark += im.pixels[i] < 60 && im.pixels[i + 1] < 60 && im.pixels[i + 2] < 60;
  }
  EXPECT_GT(line, 150);  // the loss line (and its legend swatch)
  EXPECT_GT(dark, 300);  // frame, ticks, labels
  EXPECT_THROW(plot_loss_curve({1, 2}, {1.0}), Error);
}

}  // namespace

// ---------------------------------------------------------------- grounding
TEST(Grounding, LocationCellsRoundTripAndParse) {
  // Cell centres map back to their own cell; positions snap to the nearest 2 mm centre.
  for (int c : {0, 1, 70, 71, 1800, LocationGrid::kCells - 1}) {
    auto xy = LocationGrid::centre(c);
    EXPECT_EQ(LocationGrid::cell(xy[0], xy[1]), c);
    auto parsed = LocationGrid::parse("x " + LocationGrid::cell_token(c) + " the red port");
    ASSERT_TRUE(parsed.has_value());
    EXPECT_DOUBLE_EQ((*parsed)[0], xy[0]);
    EXPECT_DOUBLE_EQ((*parsed)[1], xy[1]);
  }
  auto near = LocationGrid::centre(LocationGrid::cell(0.0231, -0.0119));
  EXPECT_NEAR(near[0], 0.024, 1e-12);
  EXPECT_NEAR(near[1], -0.012, 1e-12);
  EXPECT_EQ(LocationGrid::cell(1.0, 1.0), LocationGrid::kCells - 1);  // clamped
  EXPECT_FALSE(LocationGrid::parse("no token").has_value());
  EXPECT_FALSE(LocationGrid::parse("<loc_99999>").has_value());
  EXPECT_FALSE(LocationGrid::parse("<loc_12a4>").has_value());
  EXPECT_THROW(LocationGrid::centre(-1), Error);
}

TEST(Grounding, SoftTargetIsANormalisedBumpAtThePort) {
  LocationGrid g;
  g.first_id = 10;
  const int64_t vocab = 10 + LocationGrid::kCells + 3;
  auto t = g.soft_target(0.011, -0.02, vocab, 0.002);
  ASSERT_EQ(t.size(0), vocab);
  EXPECT_NEAR(t.sum().item<double>(), 1.0, 1e-5);
  EXPECT_EQ(t.narrow(0, 0, 10).abs().sum().item<double>(), 0.0);  // no mass outside the grid
  const int64_t best = t.argmax().item<int64_t>() - g.first_id;
  auto xy = LocationGrid::centre(static_cast<int>(best));
  EXPECT_LE(std::abs(xy[0] - 0.011), 0.001 + 1e-9);
  EXPECT_NEAR(xy[1], -0.02, 1e-9);
  EXPECT_THROW(g.soft_target(0, 0, 100, 0.002), Error);  // vocabulary too small
}

TEST(Grounding, CaptionStartsWithTheInstructedPortsToken) {
  const std::string dir = tmp_dir("grounding_caption");
  make_dataset(dir, 3);
  auto ds = dataset::Dataset::open(dir);
  LocationGrid g;
  for (size_t i = 0; i < ds.size(); ++i) {
    auto ep = ds.load(i, false);
    auto cap = grounding_caption(ep, 0, g);
    const auto& p = ep.ports[ep.target].pos;
    EXPECT_EQ(cap.rfind(g.token(p[0], p[1]) + " ", 0), 0u) << cap;
    EXPECT_NE(cap.find(" port is at the "), std::string::npos) << cap;  // English instruction
  }
  EXPECT_TRUE(is_korean("빨간색 포트에 바늘을 삽입하세요"));
  EXPECT_FALSE(is_korean("insert the needle into the red port"));
  vla::remove_tree(dir);
}

// 16 one-tick layouts whose frame's first pixel is the episode index; ports at seeded places.
void make_layouts(const std::string& dir, int n) {
  dataset::DatasetWriter w(dir, "png");
  std::mt19937_64 g(5);
  std::uniform_real_distribution<double> ux(-0.06, 0.06), uy(-0.04, 0.04);
  for (int e = 0; e < n; ++e) {
    dataset::EpisodeData ep;
    ep.instruction = "insert the needle into the red port";
    ep.seed = static_cast<uint64_t>(e);
    ep.reason = "truncated";
    ep.target = e % 3;
    for (int k = 0; k < 3; ++k) {
      dataset::PortMeta p;
      p.color = k == 0 ? "red" : k == 1 ? "green" : "blue";
      p.color_ko = k == 0 ? "빨간색" : k == 1 ? "초록색" : "파란색";
      p.pos = {ux(g), uy(g), 0.04};
      p.radius = 0.006;
      ep.ports.push_back(p);
    }
    ep.view_names = {"top"};
    ep.width = ep.height = 8;
    Image im = make_image(8, 8, 3, 0);
    im.pixels[0] = static_cast<uint8_t>(e);
    ep.frames.push_back({im});
    for (int i = 0; i < 65; ++i) ep.force.push_back({(i + 1) / 650.0f, 0, 0, 0, 0, 0, 0});
    for (int i = 0; i < 8; ++i) {
      ep.actions.push_back({0, 0, 0});
      ep.proprio.push_back({0, 0, 0.1f});
    }
    w.write(ep);
  }
}

TEST(Grounding, DenseTargetSplatsEachPortBilinearlyOntoTokenCentres) {
  dataset::Episode ep;
  ep.name = "episode_000000";
  ep.width = ep.height = 224;  // 8x8 tokens of 28 px
  ep.target = 1;
  const std::vector<std::array<double, 2>> px = {{40.0, 200.0}, {100.0, 61.0}, {14.0, 14.0}};
  const std::vector<std::string> names = {"red", "green", "blue"};
  for (int k = 0; k < 3; ++k) {
    dataset::PortMeta p;
    p.color = names[k];
    p.pixels = {px[k]};
    ep.ports.push_back(p);
  }
  const std::vector<std::string> colours = {"blue", "green", "purple", "red"};
  auto g = dense_grounding_target(ep, 0, 8, 8, colours);
  ASSERT_EQ(g.sizes(), (std::vector<int64_t>{64, 5}));
  auto cx = (torch::arange(64) % 8).to(torch::kFloat32),
       cy = torch::div(torch::arange(64), 8, "floor").to(torch::kFloat32);
  auto read = [&](int ch) {  // weighted token centre -> pixel
    auto w = g.select(1, ch);
    return std::array<double, 3>{w.sum().item<double>(), ((w * cx).sum().item<double>() + 0.5) * 28,
                                 ((w * cy).sum().item<double>() + 0.5) * 28};
  };
  auto named = read(0);
  EXPECT_NEAR(named[0], 1.0, 1e-6);    // one port's weights sum to one
  EXPECT_NEAR(named[1], 100.0, 1e-4);  // and read back its pixel exactly
  EXPECT_NEAR(named[2], 61.0, 1e-4);
  EXPECT_EQ((g.select(1, 0) > 0).sum().item<int64_t>(), 4);  // the 4 nearest centres
  auto red = read(4), blue = read(1);
  EXPECT_NEAR(red[1], 40.0, 1e-4);
  EXPECT_NEAR(red[2], 200.0, 1e-4);
  EXPECT_NEAR(blue[1], 14.0, 1e-4);  // on a token centre: all weight on it
  EXPECT_FLOAT_EQ(g[0][1].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(g.select(1, 3).abs().sum().item<float>(), 0.0f);  // no purple port
  EXPECT_NEAR(read(2)[1], 100.0, 1e-4);                             // green = the named port here
  ep.ports[2].pixels.clear();
  EXPECT_THROW(dense_grounding_target(ep, 0, 8, 8, colours), Error);
}

// Grounding with both heads on the real engine (the random-init grounding VLM): the dense head's
// token grid comes from the VLM's own preprocessing: the folder's processor caps images at
// 224*224 pixels, so 448x224 layouts become 308x140 -> 11x5 tokens (default caps: 16x8).
TEST(Trainer, GroundingDenseHeadUsesTheVlmsTokenGrid) {
  const std::string dir = tmp_dir("dense_layouts"), out = tmp_dir("dense_out");
  {
    dataset::DatasetWriter w(dir, "png");
    for (int e = 0; e < 6; ++e) {
      dataset::EpisodeData ep;
      ep.instruction = "insert the needle into the red port";
      ep.seed = static_cast<uint64_t>(e);
      ep.reason = "truncated";
      ep.target = 0;
      for (int k = 0; k < 3; ++k) {
        dataset::PortMeta p;
        p.color = k == 0 ? "red" : k == 1 ? "green" : "blue";
        p.pos = {0.01 * k, 0.0, 0.04};
        p.pixels = {{80.0 + 120 * k + e, 60.0 + 40 * k}};
        ep.ports.push_back(p);
      }
      ep.view_names = {"top"};
      ep.width = 448;
      ep.height = 224;
      ep.frames.push_back({make_image(448, 224, 3, static_cast<uint8_t>(30 * e))});
      for (int i = 0; i < 65; ++i) ep.force.push_back({(i + 1) / 650.0f, 0, 0, 0, 0, 0, 0});
      for (int i = 0; i < 8; ++i) {
        ep.actions.push_back({0, 0, 0});
        ep.proprio.push_back({0, 0, 0.1f});
      }
      w.write(ep);
    }
  }
  TrainOptions o;
  o.dataset = dir;
  o.out = out;
  o.stage = "grounding";
  o.vlm = std::string(VLA_SOURCE_DIR) + "/assets/policy/vlm_init_grounded";
  o.policy.use_views = {0};
  o.policy.pooling = "tokens";
  o.policy.prompt_order = "text_first";
  o.locate_weight = 1;
  o.dense_weight = 1;
  o.caption_weight = 0;
  o.steps = 2;
  o.batch = 3;
  o.holdout = 0.34;
  o.checkpoint_every = 0;
  o.progress = false;
  auto rep = vla::train::train(o);
  ASSERT_TRUE(rep.extra.contains("grounding"));
  const auto& g = rep.extra["grounding"];
  EXPECT_EQ(g["dense_grid"], nlohmann::json({5, 11}));  // rows, columns
  EXPECT_TRUE(std::isfinite(g["dense_error_px"].get<double>()));
  EXPECT_TRUE(std::isfinite(g["locate_head_error_mm"].get<double>()));
  EXPECT_TRUE(std::isfinite(rep.final_loss));
  vla::remove_tree(dir);
  vla::remove_tree(out);
}

// Encoder whose feature is the instructed port's position (plus a noise channel), or pure
// noise: the probe must read the first to well under a millimetre and fail on the second.
class PortVlm : public policy::VlmEncoder {
 public:
  PortVlm(const dataset::Dataset& ds, bool informative) : informative_(informative) {
    for (size_t i = 0; i < ds.size(); ++i) {
      auto ep = ds.load(i, false);
      pos_.push_back(ep.ports[ep.target].pos);
    }
  }
  torch::Tensor encode(const std::vector<Image>& views, const std::string&) const override {
    const size_t e = views.at(0).pixels.at(0);
    auto f = torch::randn({1, 3}, torch::kFloat64);
    if (informative_) {
      f[0][0] = pos_.at(e)[0] * 50 + 3;
      f[0][1] = pos_.at(e)[1] * 50 - 1;
    }
    return f.to(torch::kFloat32);
  }
  int feature_dim() const override { return 3; }
  std::string fingerprint() const override { return "port-vlm"; }
  void save(const std::string&) const override {}

 private:
  bool informative_;
  std::vector<std::array<double, 3>> pos_;
};

TEST(Grounding, LinearProbeReadsPositionsAndFailsOnNoise) {
  const std::string dir = tmp_dir("probe");
  make_layouts(dir, 16);
  auto ds = dataset::Dataset::open(dir);
  torch::manual_seed(3);
  PortVlm good(ds, true), bad(ds, false);
  auto r = localisation_probe(good, ds, 0, 0.25, 1e-6, false);
  EXPECT_EQ(r.train_layouts, 12);
  EXPECT_EQ(r.heldout_layouts, 4);
  EXPECT_LT(r.heldout_error_mm, 0.5);
  auto n = localisation_probe(bad, ds, 0, 0.25, 1e-6, false);
  EXPECT_GT(n.heldout_error_mm, 5.0);
  EXPECT_GT(n.baseline_mm, 5.0);
  // Penalty chosen on the training layouts (the held-out ones never choose): still reads them.
  auto a = localisation_probe(good, ds, 0, 0.25, 0.0, false);
  EXPECT_GE(a.ridge, 1e-2);
  EXPECT_LE(a.ridge, 1e5);
  EXPECT_LT(a.heldout_error_mm, 2.0);
  EXPECT_THROW(localisation_probe(good, ds, 4, 0.25, 1e-6, false), Error);  // too few layouts
  vla::remove_tree(dir);
}
