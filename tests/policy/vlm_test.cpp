// The Qwen2.5-VL-backed VlmEncoder: inference/training feature parity, LoRA merge equivalence,
// caption loss, save/load fingerprint, policy refusal of a mismatched VLM.
#include <gtest/gtest.h>

#include <filesystem>

#include "policy/policy.h"

using namespace vla;
using namespace vla::policy;

namespace {

const std::string kInit = std::string(VLA_SOURCE_DIR) + "/assets/policy/vlm_init";

std::vector<Image> views(uint8_t base) {
  std::vector<Image> v;
  for (int k = 0; k < 5; ++k) {
    Image im = make_image(112, 112, 3, static_cast<uint8_t>(base + 20 * k));
    for (int y = 40; y < 50; ++y)
      for (int x = 30 + 5 * k; x < 40 + 5 * k; ++x) im.row(y)[3 * x] = 250;
    v.push_back(im);
  }
  return v;
}

std::shared_ptr<VlmEncoder> make(PolicyConfig& c) {
  c.use_views = {0, 4};
  c.pooling = "last";
  seed_everything(7);
  try {
    return load_vlm(kInit, c);
  } catch (const Error& e) {
    return nullptr;
  }
}

TEST(QwenVlm, EncodeMatchesTrainingPathAndLoraMergeIsExact) {
  PolicyConfig c;
  auto vlm = make(c);
  if (!vlm) GTEST_SKIP() << "engine built without tokenizer";
  auto v = views(60);
  auto f = vlm->encode(v, "insert the needle into the red port");
  ASSERT_EQ(f.sizes(), (std::vector<int64_t>{1, vlm->feature_dim()}));
  auto g = vlm->encode_train(v, "insert the needle into the red port");
  EXPECT_TRUE(torch::allclose(f, g.detach(), 1e-5, 1e-6));
  // The instruction and the used views change the features; unused views do not.
  EXPECT_FALSE(torch::allclose(f, vlm->encode(v, "insert the needle into the blue port")));
  auto v2 = v;
  v2[2].pixels.assign(v2[2].pixels.size(), 0);
  EXPECT_TRUE(torch::equal(f, vlm->encode(v2, "insert the needle into the red port")));
  v2[4].pixels.assign(v2[4].pixels.size(), 0);
  EXPECT_FALSE(torch::allclose(f, vlm->encode(v2, "insert the needle into the red port")));
  // LoRA: train the factors a little, then merged forward == unmerged forward.
  vlm->enable_lora(4, 8.0, {"q_proj", "v_proj", "up_proj"});
  auto params = vlm->trainable_parameters();
  ASSERT_FALSE(params.empty());
  {
    torch::NoGradGuard ng;
    for (auto& p : params) p.add_(torch::randn_like(p) * 0.05);
  }
  auto before = vlm->encode(v, "insert the needle into the red port");
  EXPECT_FALSE(torch::allclose(before, f, 1e-4, 1e-5));  // LoRA is active
  const std::string fp0 = vlm->fingerprint();
  vlm->merge_lora();
  vlm->refresh_fingerprint();
  auto after = vlm->encode(v, "insert the needle into the red port");
  EXPECT_TRUE(torch::allclose(before, after, 1e-4, 1e-5)) << (before - after).abs().max();
  EXPECT_NE(fp0, vlm->fingerprint());
}

// The batched training path (one left-padded, masked forward) equals per-sample encoding, for
// instructions of different lengths and both poolings.
TEST(QwenVlm, BatchedTrainingEncodeMatchesPerSample) {
  for (std::string pooling : {"last", "mean", "tokens"}) {
    PolicyConfig c;
    auto vlm = make(c);
    if (!vlm) GTEST_SKIP() << "engine built without tokenizer";
    if (pooling != "last") {
      c.pooling = pooling;
      seed_everything(7);
      vlm = load_vlm(kInit, c);
    }
    auto a = views(30), b = views(140), e = views(200);
    std::vector<std::string> ins = {"insert the needle into the red port", "needle -> blue",
                                    "초록색 포트에 바늘을 꽂으세요"};
    auto batch = vlm->encode_train_batch({&a, &b, &e}, ins);
    ASSERT_EQ(batch.size(0), 3);
    // 112x112 views -> 4x4 merged tokens each; "tokens" = 2 views x 16 image tokens + last.
    EXPECT_EQ(batch.size(1), pooling == "tokens" ? 33 : 1);
    const std::vector<std::vector<Image>*> vs = {&a, &b, &e};
    for (int i = 0; i < 3; ++i) {
      auto one = vlm->encode(*vs[i], ins[i]);
      EXPECT_TRUE(torch::allclose(batch[i].detach(), one, 1e-4, 1e-5))
          << pooling << " sample " << i << ": max diff " << (batch[i].detach() - one).abs().max();
    }
    if (pooling == "last") {
      // Batched caption loss == mean of per-sample caption losses (prompts/captions of different
      // lengths, so padding is exercised).
      std::vector<std::string> prompts = {"Describe the ports.", "포트를 설명하세요.", "Where?"};
      std::vector<std::string> caps = {"the red port is at the left.", "바늘은 위에 있습니다.",
                                       "the needle is above the blue port at the back right."};
      auto lb = vlm->caption_loss_batch({&a, &b, &e}, prompts, caps);
      double mean = 0;
      for (int i = 0; i < 3; ++i)
        mean += vlm->caption_loss(*vs[i], prompts[i], caps[i]).item<double>();
      EXPECT_NEAR(lb.item<double>(), mean / 3, 1e-4);
      // A one-hot soft target for the first caption token is the hard label: same loss.
      auto first = torch::zeros({3, vlm->vocab_size()});
      for (int i = 0; i < 3; ++i) first[i][vlm->token_ids(caps[i]).at(0)] = 1.0f;
      auto ls = vlm->caption_loss_batch({&a, &b, &e}, prompts, caps, first);
      EXPECT_NEAR(ls.item<double>(), lb.item<double>(), 1e-4);
      EXPECT_THROW(vlm->caption_loss_batch({&a, &b, &e}, prompts, caps, first.narrow(1, 0, 5)),
                   Error);
      // The location tokens of vlm_init_grounded are single added tokens with consecutive ids.
      PolicyConfig gc;
      gc.use_views = {0};
      auto g = load_vlm(std::string(VLA_SOURCE_DIR) + "/assets/policy/vlm_init_grounded", gc);
      auto l0 = g->token_ids("<loc_0000>"), l1 = g->token_ids("<loc_0001> the");
      ASSERT_EQ(l0.size(), 1u);
      EXPECT_EQ(l1.at(0), l0[0] + 1);
      EXPECT_LT(l0[0] + 71 * 51 - 1, g->vocab_size());
      EXPECT_GT(vlm->token_ids("<loc_0000>").size(), 1u) << "plain vlm_init has no such token";
    }
    // Gradients flow to the VLM through the batched path.
    batch.sum().backward();
    int with_grad = 0;
    for (auto& p : vlm->trainable_parameters()) with_grad += p.grad().defined();
    EXPECT_GT(with_grad, 0);
  }
}

TEST(QwenVlm, TextFirstPromptLetsImageTokensSeeTheInstruction) {
  // With the views first (causal attention) the image tokens cannot depend on the instruction;
  // with --prompt-order text_first they do, and the batched path still equals the per-sample one.
  PolicyConfig c;
  if (!make(c)) GTEST_SKIP() << "engine built without tokenizer";
  c.pooling = "tokens";
  auto a = views(30);
  const std::vector<std::string> ins = {"insert the needle into the red port",
                                        "초록색 포트에 바늘을 꽂으세요"};
  std::vector<std::string> fingerprints;
  for (std::string order : {"images_first", "text_first"}) {
    c.prompt_order = order;
    seed_everything(7);
    auto vlm = load_vlm(kInit, c);
    fingerprints.push_back(vlm->fingerprint());
    auto f0 = vlm->encode(a, ins[0]), f1 = vlm->encode(a, ins[1]);
    ASSERT_EQ(f0.size(0), 33);
    auto img0 = f0.narrow(0, 0, 32), img1 = f1.narrow(0, 0, 32);
    if (order == "images_first")
      EXPECT_TRUE(torch::allclose(img0, img1, 1e-5, 1e-6))
          << "image tokens precede the text: " << (img0 - img1).abs().max();
    else
      EXPECT_GT((img0 - img1).abs().max().item<double>(), 1e-3) << "image tokens follow the text";
    auto batch = vlm->encode_batch({&a, &a}, ins);
    EXPECT_TRUE(torch::allclose(batch[1], f1, 1e-4, 1e-5)) << order;
  }
  EXPECT_NE(fingerprints[0], fingerprints[1]) << "a feature cache must not mix prompt orders";
  c.prompt_order = "sideways";
  EXPECT_THROW(c.validate(), Error);
}

TEST(QwenVlm, CaptionLossSaveLoadAndPolicyRefusesOtherVlm) {
  PolicyConfig c;
  auto vlm = make(c);
  if (!vlm) GTEST_SKIP() << "engine built without tokenizer";
  auto v = views(90);
  auto l =
      vlm->caption_loss(v, "Describe the ports and the needle.", "the red port is at the left.");
  EXPECT_TRUE(std::isfinite(l.item<double>()));
  EXPECT_GT(l.item<double>(), 1.0);  // random init: about log(vocab)
  l.backward();
  int with_grad = 0;
  for (auto& p : vlm->trainable_parameters()) with_grad += p.grad().defined();
  EXPECT_GT(with_grad, 0);
  // Policy with this VLM: save, load, same features and fingerprint.
  auto dir = (std::filesystem::temp_directory_path() / ("vla_vlm_test_" + std::to_string(getpid())))
                 .string();
  vla::remove_tree(dir);
  c.vl_dim = vlm->feature_dim();
  c.d_model = 32;
  c.sensor_dim = 16;
  c.ff_dim = 64;
  c.heads = 2;
  Policy p(c, Expert(c), NormStats::identity(c), vlm);
  p.save(dir);
  auto q = Policy::load(dir);
  EXPECT_EQ(q->vlm()->fingerprint(), vlm->fingerprint());
  EXPECT_EQ(q->config().use_views, c.use_views);  // the views the VLM sees survive save/load
  EXPECT_TRUE(torch::allclose(q->encode(v, "go"), p.encode(v, "go"), 1e-6, 1e-7));
  // Swap in a different VLM: refused with a clear error.
  auto other = load_vlm(kInit, c);  // another random init
  vla::remove_tree(dir + "/vlm");
  other->save(dir + "/vlm");
  try {
    Policy::load(dir);
    FAIL() << "mismatched VLM accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not match"), std::string::npos) << e.what();
  }
  vla::remove_tree(dir);
}

}  // namespace

namespace {

// The shipped policies load with this code (config, norm stats, expert weights, VLM fingerprint
// and the views it was trained on) and produce a finite 8-action chunk from camera views.
TEST(ShippedPolicies, LoadEncodeAndAct) {
  for (const std::string name : {"default", "no_reuse"}) {
    const std::string dir = std::string(VLA_SOURCE_DIR) + "/assets/policy/" + name;
    auto p = Policy::load(dir);
    ASSERT_TRUE(p->vlm()) << name;
    EXPECT_FALSE(p->config().use_views.empty()) << name << ": trained on a subset of the views";
    std::vector<Image> v;
    for (int k = 0; k < p->num_views(); ++k)
      v.push_back(make_image(p->image_width(), p->image_height(), 3, static_cast<uint8_t>(40 * k)));
    auto f = p->encode(v, "insert the needle into the red port");
    EXPECT_EQ(f.size(0), p->config().encoder_tokens()) << name;
    auto chunk = p->act(p->expert_features(f, f), torch::zeros({p->sensor_window(), 6}),
                        torch::tensor({0.f, 0.f, 0.1f}));
    ASSERT_EQ(chunk.sizes(), (std::vector<int64_t>{8, 3})) << name;
    EXPECT_TRUE(torch::isfinite(chunk).all().item<bool>()) << name;
  }
}

}  // namespace

namespace {

// The fast backend (src/gpu's fixed-shape executor, float32 on the CPU here) gives the reference
// encoder's features, fingerprint and captions for the shipped policy's VLM, re-plans when the
// instruction changes, and refuses what it cannot do with a clear error.
TEST(FastVlm, MatchesTheReferenceEncoderOnTheShippedVlm) {
  const std::string dir = std::string(VLA_SOURCE_DIR) + "/assets/policy/default";
  auto ref = Policy::load(dir);
  VlmOptions fast;
  fast.backend = "fast";
  auto fp = Policy::load(dir, fast);  // the fingerprint check inside load must pass
  EXPECT_EQ(ref->vlm()->fingerprint(), fp->vlm()->fingerprint());
  std::vector<Image> v;
  for (int k = 0; k < ref->num_views(); ++k) {
    Image im = make_image(ref->image_width(), ref->image_height(), 3, static_cast<uint8_t>(30 * k));
    for (int y = 60; y < 90; ++y)
      for (int x = 100; x < 140; ++x) im.row(y)[3 * x] = 240;
    v.push_back(im);
  }
  for (const std::string instr :
       {"insert the needle into the red port", "insert the needle into the blue port"}) {
    auto a = ref->encode(v, instr), b = fp->encode(v, instr);
    ASSERT_EQ(a.sizes(), b.sizes()) << instr;
    const double rel = (a - b).norm().item<double>() / a.norm().item<double>();
    EXPECT_LT(rel, 1e-5) << instr;
  }
  EXPECT_EQ(ref->vlm()->caption(v, "Describe the scene.", 6),
            fp->vlm()->caption(v, "Describe the scene.", 6));
  EXPECT_THROW(fp->vlm()->save("/tmp/vla_fast_vlm_save"), Error);
  EXPECT_THROW(fp->vlm()->to(torch::Device("cuda:0")), Error);
  VlmOptions bad;
  bad.backend = "tensorrt";
  EXPECT_THROW(Policy::load(dir, bad), Error);
  bad.backend = "reference";
  bad.fp8 = true;
  EXPECT_THROW(Policy::load(dir, bad), Error);
  VlmOptions no_fp8;  // static scales without fp8
  no_fp8.backend = "fast";
  no_fp8.fp8_static = true;
  EXPECT_THROW(no_fp8.validate(), Error);
  VlmOptions no_static;  // FP8 output projections are an option of static scales
  no_static.backend = "fast";
  no_static.fp8 = true;
  EXPECT_NO_THROW(no_static.validate());  // the default choice applies once static, if ever
  for (const char* which : {"all", "decoder"}) {
    no_static.fp8_output_projections = which;
    EXPECT_THROW(no_static.validate(), Error) << which;
  }
  no_static.fp8_static = true;
  for (const char* which : {"vision", "decoder", "none", "all"}) {
    no_static.fp8_output_projections = which;
    EXPECT_NO_THROW(no_static.validate()) << which;
  }
  no_static.fp8_output_projections = "both";  // not a choice: the error names the choices
  try {
    no_static.validate();
    ADD_FAILURE() << "'both' was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("none | vision | decoder | all"), std::string::npos)
        << e.what();
  }
}

// PolicyConfig::vlm_layers: features of the first K decoder layers, identical on both backends,
// part of the fingerprint (a cache or policy of another layer is refused), saved in policy.json.
TEST(FastVlm, MiddleLayerFeaturesAgreeAcrossBackendsAndChangeTheFingerprint) {
  const std::string dir = std::string(VLA_SOURCE_DIR) + "/assets/policy/default/vlm";
  PolicyConfig c;
  c.num_views = 1;
  c.image_width = c.image_height = 112;
  c.pooling = "tokens";
  c.prompt_order = "text_first";
  auto all = load_vlm(dir, c);
  c.vlm_layers = 1;
  auto ref = load_vlm(dir, c);
  VlmOptions fast;
  fast.backend = "fast";
  auto fp = load_vlm(dir, c, fast);
  EXPECT_EQ(ref->fingerprint(), fp->fingerprint());
  EXPECT_NE(ref->fingerprint(), all->fingerprint());
  const std::vector<Image> v = {views(40)[0]};
  const std::string instr = "insert the needle into the red port";
  auto a = ref->encode(v, instr), b = fp->encode(v, instr), full = all->encode(v, instr);
  ASSERT_EQ(a.sizes(), b.sizes());
  EXPECT_LT((a - b).norm().item<double>() / a.norm().item<double>(), 1e-5);
  EXPECT_GT((a - full).norm().item<double>() / full.norm().item<double>(), 1e-2);
  EXPECT_EQ(PolicyConfig::from_json(c.to_json()).vlm_layers, 1);
  c.vlm_layers = 3;  // the shipped VLM has 2
  try {
    load_vlm(dir, c, fast);
    FAIL() << "no error for vlm_layers past the model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("decoder layers"), std::string::npos) << e.what();
  }
  c.vlm_layers = -1;
  EXPECT_THROW(c.validate(), Error);
}

}  // namespace
