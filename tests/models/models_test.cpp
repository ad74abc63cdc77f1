// Qwen2.5-VL parity with transformers 5.17 on two tiny random checkpoints (fixtures made by
// tests/fixtures/qwen25vl/make_fixtures.py), plus loading errors, LoRA, training and saving.
#include "models/models.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace fs = std::filesystem;

namespace {

const std::string kFix = std::string(VLA_SOURCE_DIR) + "/tests/fixtures/qwen25vl";

const std::map<std::string, std::vector<std::string>> kCaseImages = {
    {"one", {"img_a"}},
    {"multi", {"img_b", "img_c", "img_e"}},
    {"text", {}},
    {"batch", {"img_a", "img_d"}}};

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto bf = b.to(torch::kFloat64);
  return ((a.to(torch::kFloat64) - bf).abs().max() / bf.abs().max().clamp_min(1e-30))
      .item<double>();
}

struct Fixture {
  std::shared_ptr<vla::Qwen25VLImpl> model;
  std::shared_ptr<vla::SafetensorsFile> ref;
};

Fixture& fixture(const std::string& key) {
  static std::map<std::string, Fixture> cache;
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  Fixture f;
  f.model = vla::Qwen25VLImpl::from_pretrained(kFix + "/tiny_" + key);
  f.ref = vla::SafetensorsFile::open(kFix + "/ref_" + key + ".safetensors");
  return cache[key] = f;
}

torch::Tensor case_pixels(const std::string& c) {
  static auto pre = vla::SafetensorsFile::open(kFix + "/preprocess.safetensors");
  std::vector<torch::Tensor> pv;
  for (const auto& n : kCaseImages.at(c)) pv.push_back(pre->load(n + ".pixel_values"));
  return pv.empty() ? torch::Tensor() : torch::cat(pv, 0);
}

class Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Parity, VisionTowerMatches) {
  auto& f = fixture(GetParam());
  torch::NoGradGuard g;
  for (const std::string c : {"one", "multi", "batch"}) {
    SCOPED_TRACE(c);
    auto out = f.model->visual(case_pixels(c), f.ref->load(c + ".grid_thw"));
    auto want = f.ref->load(c + ".vision_out");
    ASSERT_EQ(out.sizes(), want.sizes());
    EXPECT_LE(rel_err(out, want), 1e-5);
  }
}

TEST_P(Parity, PositionIdsMatchGetRopeIndex) {
  auto& f = fixture(GetParam());
  for (const std::string c : {"one", "multi", "batch"}) {
    SCOPED_TRACE(c);
    auto [pos, deltas] =
        f.model->get_rope_index(f.ref->load(c + ".input_ids"), f.ref->load(c + ".grid_thw"),
                                f.ref->load(c + ".attention_mask"));
    EXPECT_TRUE(torch::equal(pos, f.ref->load(c + ".position_ids")));
    EXPECT_TRUE(torch::equal(deltas, f.ref->load(c + ".rope_deltas")));
  }
}

TEST_P(Parity, HiddenStatesAndLogitsMatch) {
  auto& f = fixture(GetParam());
  torch::NoGradGuard g;
  for (const std::string c : {"one", "multi", "text", "batch"}) {
    SCOPED_TRACE(c);
    auto ids = f.ref->load(c + ".input_ids");
    auto mask = f.ref->load(c + ".attention_mask");
    torch::Tensor grid;
    if (c != "text") grid = f.ref->load(c + ".grid_thw");
    auto out = f.model->forward(ids, c == "batch" ? mask : torch::Tensor(), case_pixels(c), grid);
    auto valid = mask.to(torch::kBool);
    auto h = out.last_hidden.index({valid}), hw = f.ref->load(c + ".last_hidden").index({valid});
    auto l = out.logits.index({valid}), lw = f.ref->load(c + ".logits").index({valid});
    EXPECT_LE(rel_err(h, hw), 1e-5);
    EXPECT_LE(rel_err(l, lw), 1e-5);
    if (c != "text") {
      auto emb = f.ref->load(c + ".inputs_embeds");
      auto mine = f.model->embed(ids, case_pixels(c), grid);
      EXPECT_LE(rel_err(mine.index({valid}), emb.index({valid})), 1e-5);
    }
  }
}

TEST_P(Parity, GreedyTokensMatch) {
  auto& f = fixture(GetParam());
  vla::GenerateOptions o;
  o.max_new_tokens = 16;
  o.use_stop_tokens = false;  // the fixture generated exactly 16 tokens (eos disabled)
  for (const std::string c : {"one", "multi", "text"}) {
    SCOPED_TRACE(c);
    torch::Tensor grid;
    if (c != "text") grid = f.ref->load(c + ".grid_thw");
    auto toks = f.model->generate_ids(f.ref->load(c + ".input_ids"), case_pixels(c), grid, o);
    auto want = f.ref->load(c + ".generated")[0];
    ASSERT_EQ(static_cast<int64_t>(toks.size()), want.size(0));
    for (size_t i = 0; i < toks.size(); ++i) EXPECT_EQ(toks[i], want[i].item<int64_t>()) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(TinyConfigs, Parity, ::testing::Values("a", "b"));

TEST(Loading, PublishedLayoutGivesSameModel) {
  auto v4 = vla::Qwen25VLImpl::from_pretrained(kFix + "/tiny_a_v4");
  auto& f = fixture("a");
  EXPECT_EQ(v4->config().layout, "transformers-4");
  EXPECT_EQ(f.model->config().layout, "transformers-5");
  torch::NoGradGuard g;
  auto ids = f.ref->load("one.input_ids");
  auto grid = f.ref->load("one.grid_thw");
  auto a = f.model->forward(ids, {}, case_pixels("one"), grid).logits;
  auto b = v4->forward(ids, {}, case_pixels("one"), grid).logits;
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_EQ(v4->image_config().max_pixels, f.model->image_config().max_pixels);
}

TEST(Loading, ParameterNamesAreCheckpointNames) {
  auto& f = fixture("b");
  auto store = vla::WeightStore::open(kFix + "/tiny_b");
  auto names = store.names();
  std::vector<std::string> mine;
  for (auto& kv : f.model->state_tensors()) mine.push_back(kv.first);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(mine, names);
}

fs::path temp_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("vla_models_test_" + name + "_" + std::to_string(getpid()));
  vla::remove_tree(d);
  fs::create_directories(d);
  return d;
}

TEST(Loading, BadCheckpointsNameTheTensor) {
  auto d = temp_dir("bad");
  for (auto& e : fs::directory_iterator(kFix + "/tiny_a"))
    fs::copy(e.path(), d / e.path().filename());
  auto store = vla::WeightStore::open(kFix + "/tiny_a");
  std::map<std::string, torch::Tensor> t;
  for (const auto& n : store.names()) t[n] = store.get(n);
  const std::string victim = "model.layers.1.self_attn.k_proj.weight";
  t[victim] = torch::zeros({3, 64});
  vla::save_safetensors((d / "model.safetensors").string(), t);
  try {
    vla::Qwen25VLImpl::from_pretrained(d.string());
    FAIL() << "expected a shape error";
  } catch (const vla::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(victim), std::string::npos) << msg;
    EXPECT_NE(msg.find("[3, 64]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[32, 64]"), std::string::npos) << msg;
  }
  t.erase(victim);
  vla::save_safetensors((d / "model.safetensors").string(), t);
  try {
    vla::Qwen25VLImpl::from_pretrained(d.string());
    FAIL() << "expected a missing-tensor error";
  } catch (const vla::Error& e) {
    EXPECT_NE(std::string(e.what()).find(victim), std::string::npos) << e.what();
  }
  vla::remove_tree(d);
  EXPECT_THROW(vla::Qwen25VLImpl::from_pretrained("/nonexistent/model"), vla::Error);
}

TEST(Forward, MismatchedImageTokensAreAnError) {
  auto& f = fixture("a");
  auto ids = f.ref->load("one.input_ids");
  // Two images' pixels for a one-image prompt.
  auto pv = case_pixels("multi");
  auto grid = f.ref->load("multi.grid_thw");
  EXPECT_THROW(f.model->forward(ids, {}, pv, grid), vla::Error);
}

// Features of a middle layer (ForwardOptions::num_layers = K) are those of the model truncated to
// its first K decoder layers, final norm applied: what GR00T N1 keeps of its LLM. Checked against a
// model built with K layers from the same checkpoint.
TEST(Forward, MiddleLayerIsTheTruncatedModel) {
  auto& f = fixture("b");
  const auto ids = f.ref->load("multi.input_ids");
  const auto pv = case_pixels("multi");
  const auto grid = f.ref->load("multi.grid_thw");
  const int64_t all = f.model->config().text.num_hidden_layers;
  ASSERT_GE(all, 3);
  const auto store = vla::WeightStore::open(kFix + "/tiny_b");
  for (int64_t k = 1; k < all; ++k) {
    vla::ForwardOptions fo;
    fo.compute_logits = false;
    fo.num_layers = k;
    auto mid = f.model->forward(ids, {}, pv, grid, fo).last_hidden;
    vla::Qwen25VLConfig cfg = f.model->config();
    cfg.text.num_hidden_layers = static_cast<int>(k);
    vla::Qwen25VLImpl truncated(cfg);
    truncated.load_weights(store, /*strict=*/true);
    truncated.eval();
    auto want = truncated.forward(ids, {}, pv, grid, {}).last_hidden;
    EXPECT_LE(rel_err(mid, want), 1e-6) << "layers " << k;
  }
  vla::ForwardOptions every;
  every.num_layers = all;
  EXPECT_LE(rel_err(f.model->forward(ids, {}, pv, grid, every).last_hidden,
                    f.ref->load("multi.last_hidden")),
            1e-5);
  vla::ForwardOptions past;
  past.num_layers = all + 1;
  EXPECT_THROW(f.model->forward(ids, {}, pv, grid, past), vla::Error);
  vla::KVCache cache;
  vla::ForwardOptions cached;
  cached.num_layers = 1;
  cached.cache = &cache;
  EXPECT_THROW(f.model->forward(ids, {}, pv, grid, cached), vla::Error);
}

// One rule for every media placeholder typed into a prompt: it needs its media, else a clear
// error naming the placeholder (not an ordinary-token embedding).
TEST(Forward, PlaceholdersWithoutTheirMediaAreAnError) {
  auto& f = fixture("a");
  const auto& c = f.model->config();
  auto expect_error = [&](const torch::Tensor& ids, const std::string& what) {
    try {
      f.model->forward(ids, {}, {}, {});
      FAIL() << "no error for " << what;
    } catch (const vla::Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error(torch::tensor({{int64_t{5}, c.video_token_id, int64_t{6}}}), "<|video_pad|>");
  expect_error(torch::tensor({{int64_t{5}, c.image_token_id}}), "<|image_pad|>");
  // vision_start typed as text is an ordinary token, as in transformers.
  EXPECT_NO_THROW(
      f.model->forward(torch::tensor({{c.vision_start_token_id, int64_t{7}}}), {}, {}, {}));
}

// The GPU window kernel reads only the first half of each vision rotary row (kernels.h
// window_attention): the tables must repeat their halves, as transformers' cat((emb, emb)) does.
TEST(Rotary, VisionTableHalvesAreEqual) {
  vla::Qwen25VLVisionConfig cfg;
  cfg.hidden_size = 1280;  // Qwen2.5-VL-3B: head_dim 80
  const auto grid = torch::tensor({int64_t{1}, int64_t{26}, int64_t{46}}).reshape({1, 3});
  const vla::VisionLayout layout = vla::vision_layout(grid, cfg);
  const auto [cos, sin] = vla::vision_rotary(layout, cfg);
  ASSERT_EQ(cos.size(0), 26 * 46);
  ASSERT_EQ(cos.size(1), 80);
  for (const torch::Tensor& t : {cos, sin}) {
    EXPECT_TRUE(torch::equal(t.narrow(1, 0, 40), t.narrow(1, 40, 40)));
    EXPECT_FALSE(torch::equal(t.narrow(1, 0, 20), t.narrow(1, 20, 20)));  // rows vs columns differ
  }
}

TEST(Lora, MergedEqualsUnmergedAndStartsAtBase) {
  vla::seed_everything(3);
  auto m = vla::Qwen25VLImpl::from_pretrained(kFix + "/tiny_b");
  auto& f = fixture("b");
  auto ids = f.ref->load("one.input_ids");
  auto grid = f.ref->load("one.grid_thw");
  auto pv = case_pixels("one");
  torch::NoGradGuard g;
  auto base = m->forward(ids, {}, pv, grid).logits;
  vla::LoraOptions lo;
  lo.rank = 4;
  lo.include_vision = true;
  const int n = m->apply_lora(lo);
  EXPECT_EQ(n, 3 * 7 + 3 * 5);  // 3 text layers x 7 projections + 3 vision blocks x 5
  EXPECT_EQ(m->lora_parameters().size(), static_cast<size_t>(2 * n));
  EXPECT_TRUE(torch::equal(m->forward(ids, {}, pv, grid).logits, base));  // B = 0
  for (auto& p : m->lora_parameters()) p.normal_(0.0, 0.05);
  auto unmerged = m->forward(ids, {}, pv, grid).logits;
  EXPECT_GT(rel_err(unmerged, base), 1e-3);
  m->merge_lora();
  EXPECT_TRUE(m->lora_parameters().empty());
  auto merged = m->forward(ids, {}, pv, grid).logits;
  EXPECT_LE(rel_err(merged, unmerged), 1e-5);
}

TEST(Training, GradientsReachEveryPartAndLoraTrainsAlone) {
  vla::seed_everything(4);
  auto m = vla::Qwen25VLImpl::from_pretrained(kFix + "/tiny_a");
  m->train();
  auto& f = fixture("a");
  auto ids = f.ref->load("one.input_ids");
  auto out = m->forward(ids, {}, case_pixels("one"), f.ref->load("one.grid_thw"));
  auto logits = out.logits.squeeze(0);
  auto loss = torch::nn::functional::cross_entropy(logits.narrow(0, 0, logits.size(0) - 1),
                                                   ids[0].narrow(0, 1, ids.size(1) - 1));
  loss.backward();
  auto params = m->named_parameters();
  for (const std::string n :
       {"visual.patch_embed.proj.weight", "visual.blocks.0.attn.qkv.weight",
        "visual.merger.mlp.2.weight", "model.layers.0.self_attn.q_proj.weight",
        "model.embed_tokens.weight", "model.norm.weight"}) {
    auto gr = params[n].grad();
    ASSERT_TRUE(gr.defined()) << n;
    EXPECT_GT(gr.abs().sum().item<double>(), 0.0) << n;
  }
  // LoRA-only training: base frozen, adapters get gradients, an optimizer step changes output.
  m->zero_grad();
  m->apply_lora({});
  m->freeze_base();
  auto lora = m->lora_parameters();
  torch::optim::AdamW opt(lora, torch::optim::AdamWOptions(1e-2));
  // The prompt holds image placeholders, so every forward gets its image.
  auto px = case_pixels("one");
  auto grid = f.ref->load("one.grid_thw");
  auto before = m->forward(ids, {}, px, grid).logits.detach();
  auto l2 = m->forward(ids, {}, px, grid).logits.pow(2).mean();
  l2.backward();
  for (auto& p : lora) EXPECT_TRUE(p.grad().defined());
  EXPECT_FALSE(params["model.layers.0.self_attn.q_proj.weight"].grad().defined() &&
               params["model.layers.0.self_attn.q_proj.weight"].grad().abs().sum().item<double>() >
                   0);
  opt.step();
  EXPECT_GT(rel_err(m->forward(ids, {}, px, grid).logits.detach(), before), 1e-6);
}

TEST(Saving, RandomInitSaveAndReloadRoundTrips) {
  vla::seed_everything(5);
  auto cfg = fixture("b").model->config();
  auto m = std::make_shared<vla::Qwen25VLImpl>(cfg);
  auto d = temp_dir("save");
  m->save_pretrained(d.string(), kFix + "/tiny_b");
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json",
                        "processor_config.json", "chat_template.jinja"})
    EXPECT_TRUE(fs::exists(d / f)) << f;
  auto r = vla::Qwen25VLImpl::from_pretrained(d.string());
  auto ids = torch::arange(5, 25, torch::kInt64).view({1, -1});
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::equal(m->forward(ids).logits, r->forward(ids).logits));
  // Same tensor names and shapes as transformers' own save of this config.
  auto hf = vla::WeightStore::open(kFix + "/tiny_b");
  auto ours = vla::WeightStore::open(d.string());
  ASSERT_EQ(ours.names(), hf.names());
  for (const auto& n : hf.names()) EXPECT_EQ(ours.info(n).shape, hf.info(n).shape) << n;
  vla::remove_tree(d);
}

TEST(Sampling, WarpersBehave) {
  auto logits = torch::tensor({0.1f, 2.0f, 0.5f, 1.9f});
  vla::GenerateOptions greedy;
  EXPECT_EQ(vla::sample_token(logits, greedy, nullptr), 1);
  vla::GenerateOptions k1;
  k1.temperature = 1.0;
  k1.top_k = 1;
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(vla::sample_token(logits, k1, &gen), 1);
  vla::GenerateOptions k2 = k1;
  k2.top_k = 2;
  std::set<int64_t> seen;
  for (int i = 0; i < 200; ++i) seen.insert(vla::sample_token(logits, k2, &gen));
  EXPECT_EQ(seen, (std::set<int64_t>{1, 3}));
  vla::GenerateOptions p = k1;
  p.top_k = 0;
  p.top_p = 0.3;  // the top token alone holds ~0.43 of the mass
  for (int i = 0; i < 20; ++i) EXPECT_EQ(vla::sample_token(logits, p, &gen), 1);
  // Seeded sampling is reproducible.
  vla::GenerateOptions t;
  t.temperature = 1.5;
  torch::Generator g1 = at::make_generator<at::CPUGeneratorImpl>(7);
  torch::Generator g2 = at::make_generator<at::CPUGeneratorImpl>(7);
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(vla::sample_token(logits, t, &g1), vla::sample_token(logits, t, &g2));
}

}  // namespace

namespace {

std::vector<vla::Image> case_images(const std::string& c) {
  std::vector<vla::Image> out;
  for (const auto& n : kCaseImages.at(c))
    out.push_back(vla::read_image(kFix + "/images/" + n + ".png"));
  return out;
}

const std::string kPrompt = "Insert the needle into the red port.";

TEST(EndToEnd, EncodeBuildsHfPromptsAndFeatures) {
  auto& f = fixture("b");
  ASSERT_NE(f.model->prompt_codec(), nullptr);
  // "text": no image at all (`vla features` without --image).
  for (const std::string c : {"one", "multi", "text"}) {
    SCOPED_TRACE(c);
    vla::EncodeOptions o;
    o.pooling = vla::Pooling::kAll;
    auto r = f.model->encode(case_images(c), kPrompt, o);
    EXPECT_TRUE(torch::equal(r.input_ids, f.ref->load(c + ".input_ids")));
    EXPECT_LE(rel_err(r.features, f.ref->load(c + ".last_hidden")), 1e-5);
    o.pooling = vla::Pooling::kMean;
    auto mean = f.model->encode(case_images(c), kPrompt, o).features;
    EXPECT_LE(rel_err(mean, f.ref->load(c + ".last_hidden").mean(1)), 1e-5);
  }
}

TEST(EndToEnd, ViewsAsBatchMatchesHfLeftPaddedBatch) {
  auto& f = fixture("a");
  vla::EncodeOptions o;
  o.pooling = vla::Pooling::kAll;
  o.views_as_batch = true;
  auto r = f.model->encode(case_images("batch"), kPrompt, o);
  EXPECT_TRUE(torch::equal(r.input_ids, f.ref->load("batch.input_ids")));
  EXPECT_TRUE(torch::equal(r.attention_mask, f.ref->load("batch.attention_mask")));
  auto valid = r.attention_mask.to(torch::kBool);
  EXPECT_LE(rel_err(r.features.index({valid}), f.ref->load("batch.last_hidden").index({valid})),
            1e-5);
  o.pooling = vla::Pooling::kLastToken;
  auto last = f.model->encode(case_images("batch"), kPrompt, o).features;
  EXPECT_EQ(last.sizes(), (std::vector<int64_t>{2, 64}));
  EXPECT_LE(rel_err(last, f.ref->load("batch.last_hidden").select(1, -1)), 1e-5);
}

TEST(EndToEnd, GenerateFromImagesAndPrompt) {
  auto& f = fixture("b");
  vla::GenerateOptions o;
  o.max_new_tokens = 16;
  o.use_stop_tokens = false;
  auto r = f.model->generate(case_images("multi"), kPrompt, o);
  auto want = f.ref->load("multi.generated")[0];
  ASSERT_EQ(r.token_ids.size(), 16u);
  for (size_t i = 0; i < 16; ++i) EXPECT_EQ(r.token_ids[i], want[i].item<int64_t>());
  EXPECT_FALSE(r.text.empty());
  EXPECT_EQ(r.stop_reason, "max_new_tokens");
}

}  // namespace
