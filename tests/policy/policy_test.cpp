#include "policy/policy.h"

#include <gtest/gtest.h>

#include <filesystem>

using namespace vla;
using namespace vla::policy;

namespace {

std::string tmp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() /
           ("vla_policy_test_" + name + "_" + std::to_string(::getpid()));
  vla::remove_tree(p);
  return p.string();
}

PolicyConfig small_config(const std::string& head) {
  PolicyConfig c;
  c.head = head;
  c.vl_dim = 16;
  c.d_model = 32;
  c.sensor_dim = 16;
  c.ff_dim = 64;
  c.heads = 2;
  c.flow_steps = 4;
  return c;
}

class PolicyHeads : public ::testing::TestWithParam<std::string> {};

TEST_P(PolicyHeads, ActShapeFiniteAndDeterministic) {
  torch::manual_seed(0);
  auto cfg = small_config(GetParam());
  Policy p(cfg, Expert(cfg), NormStats::identity(cfg), nullptr);
  auto vl = torch::randn({cfg.vl_dim});
  auto force = torch::randn({80, 6});  // longer than the window: newest 65 are used
  auto prop = torch::randn({3});
  auto a = p.act(vl, force, prop);
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{8, 3}));
  EXPECT_TRUE(torch::isfinite(a).all().item<bool>());
  auto b = p.act(vl, force, prop);
  EXPECT_TRUE(torch::equal(a, b));
  // Only the newest 65 samples matter.
  auto force2 = force.clone();
  force2.narrow(0, 0, 15).fill_(100.0);
  EXPECT_TRUE(torch::allclose(p.act(vl, force2, prop), a));
  // The newest sample does matter.
  force2[79][2] = 50.0;
  EXPECT_FALSE(torch::allclose(p.act(vl, force2, prop), a));
}

TEST_P(PolicyHeads, SaveLoadRoundTrip) {
  torch::manual_seed(1);
  auto cfg = small_config(GetParam());
  NormStats st = NormStats::identity(cfg);
  st.force = Normalizer::fit(torch::randn({100, 6}) * 3 + 1);
  st.action = Normalizer::fit(torch::randn({100, 3}) * 0.001);
  Policy p(cfg, Expert(cfg), st, nullptr, {{"note", "test"}});
  auto dir = tmp_dir("rt_" + GetParam());
  p.save(dir);
  ASSERT_TRUE(file_exists(dir + "/policy.json"));
  ASSERT_TRUE(file_exists(dir + "/policy.safetensors"));
  auto q = Policy::load(dir);
  EXPECT_EQ(q->config().head, cfg.head);
  EXPECT_EQ(q->info()["provenance"]["note"], "test");
  auto vl = torch::randn({cfg.vl_dim});
  auto force = torch::randn({65, 6});
  auto prop = torch::randn({3});
  EXPECT_TRUE(torch::equal(p.act(vl, force, prop), q->act(vl, force, prop)));
  EXPECT_TRUE(torch::allclose(q->stats().force.std, st.force.std));
  vla::remove_tree(dir);
}

INSTANTIATE_TEST_SUITE_P(Heads, PolicyHeads, ::testing::Values("flow", "mlp"));

TEST(Normalizer, FitNormalizeDenormalize) {
  auto x = torch::tensor({{1.0, 10.0}, {3.0, 10.0}, {5.0, 10.0}});
  auto n = Normalizer::fit(x);
  EXPECT_NEAR(n.mean[0].item<float>(), 3.0, 1e-6);
  EXPECT_NEAR(n.std[0].item<float>(), std::sqrt(8.0 / 3.0), 1e-5);
  EXPECT_NEAR(n.std[1].item<float>(), 1e-6, 1e-9);  // floored, not zero
  auto z = n.normalize(x);
  EXPECT_NEAR(z.select(1, 0).mean().item<float>(), 0.0, 1e-6);
  EXPECT_TRUE(torch::allclose(n.denormalize(z), x.to(torch::kFloat32), 1e-5, 1e-5));
  auto j = n.to_json();
  auto m = Normalizer::from_json(j, 2, "x");
  EXPECT_TRUE(torch::allclose(m.mean, n.mean));
  EXPECT_THROW(Normalizer::from_json(j, 3, "x"), Error);
  j["std"][0] = -1.0;
  EXPECT_THROW(Normalizer::from_json(j, 2, "x"), Error);
}

TEST(Policy, ActUsesActionStats) {
  torch::manual_seed(2);
  auto cfg = small_config("mlp");
  NormStats st = NormStats::identity(cfg);
  Policy p(cfg, Expert(cfg), st, nullptr);
  auto vl = torch::randn({cfg.vl_dim});
  auto f = torch::randn({65, 6});
  auto pr = torch::randn({3});
  auto a = p.act(vl, f, pr);
  st.action.mean = torch::tensor({1.0f, 2.0f, 3.0f});
  st.action.std = torch::tensor({2.0f, 2.0f, 2.0f});
  Policy q(cfg, p.expert(), st, nullptr);
  auto b = q.act(vl, f, pr);
  EXPECT_TRUE(torch::allclose(b, a * 2 + torch::tensor({1.0f, 2.0f, 3.0f}), 1e-5, 1e-5));
}

TEST(Policy, SceneMemoryPutsTheFirstFeaturesBeforeTheNewest) {
  auto cfg = small_config("mlp");
  cfg.vl_tokens = 4;
  cfg.vl_memory = "first";
  cfg.validate();
  EXPECT_EQ(cfg.encoder_tokens(), 2);
  Policy p(cfg, Expert(cfg), NormStats::identity(cfg), nullptr);
  auto first = torch::randn({2, cfg.vl_dim}), newest = torch::randn({2, cfg.vl_dim});
  auto both = p.expert_features(first, newest);
  ASSERT_EQ(both.sizes(), (std::vector<int64_t>{4, cfg.vl_dim}));
  EXPECT_TRUE(torch::equal(both.narrow(0, 0, 2), first));
  EXPECT_TRUE(torch::equal(both.narrow(0, 2, 2), newest));
  EXPECT_EQ(p.act(both, torch::randn({65, 6}), torch::randn({3})).size(0), cfg.horizon);
  EXPECT_THROW(p.act(newest, torch::randn({65, 6}), torch::randn({3})), Error);  // memory missing
  EXPECT_THROW(p.expert_features(torch::randn({3, cfg.vl_dim}), newest), Error);
  EXPECT_EQ(PolicyConfig::from_json(cfg.to_json()).vl_memory, "first");
  // Without memory the newest features pass through unchanged; unknown modes are refused.
  auto plain = small_config("mlp");
  Policy q(plain, Expert(plain), NormStats::identity(plain), nullptr);
  EXPECT_TRUE(torch::equal(q.expert_features(torch::Tensor(), newest), newest));
  PolicyConfig odd = cfg;
  odd.vl_memory = "last_n";
  EXPECT_THROW(odd.validate(), Error);
}

TEST(Policy, BadInputsGiveClearErrors) {
  auto cfg = small_config("mlp");
  Policy p(cfg, Expert(cfg), NormStats::identity(cfg), nullptr);
  EXPECT_THROW(p.act(torch::randn({cfg.vl_dim + 1}), torch::randn({65, 6}), torch::randn({3})),
               Error);
  EXPECT_THROW(p.act(torch::randn({cfg.vl_dim}), torch::randn({10, 6}), torch::randn({3})), Error);
  EXPECT_THROW(p.act(torch::randn({cfg.vl_dim}), torch::randn({65, 6}), torch::randn({4})), Error);
  EXPECT_THROW(p.encode({}, "x"), Error);  // no VLM
  EXPECT_THROW(Policy::load("/nonexistent/policy"), Error);
  PolicyConfig bad = cfg;
  bad.head = "lstm2";
  EXPECT_THROW(bad.validate(), Error);
  // Corrupt weights file.
  auto dir = tmp_dir("corrupt");
  p.save(dir);
  write_file_atomic(dir + "/policy.safetensors", std::string("\x10\0\0\0\0\0\0\0{bad", 12));
  EXPECT_THROW(Policy::load(dir), Error);
  vla::remove_tree(dir);
}

TEST(Policy, TrainingReducesLoss) {
  torch::manual_seed(3);
  for (std::string head : {"mlp", "flow"}) {
    auto cfg = small_config(head);
    Expert e(cfg);
    auto vl = torch::randn({16, 1, cfg.vl_dim});
    auto f = torch::randn({16, 65, 6});
    auto pr = torch::randn({16, 3});
    auto target = vl.narrow(2, 0, 3).expand({16, 8, 3}).contiguous();  // depends on VL
    torch::optim::AdamW opt(e->parameters(), torch::optim::AdamWOptions(3e-3));
    double first = 0, last = 0;
    for (int i = 0; i < 150; ++i) {
      auto l = e->loss(vl, f, pr, target);
      opt.zero_grad();
      l.backward();
      opt.step();
      if (i == 0) first = l.item<double>();
      last = l.item<double>();
    }
    EXPECT_LT(last, first * 0.5) << head;
    torch::NoGradGuard ng;
    e->eval();
    auto pred = e->predict(vl, f, pr);
    EXPECT_LT(torch::mse_loss(pred, target).item<double>(), 0.5) << head;
  }
}

}  // namespace
