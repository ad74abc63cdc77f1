#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "core/core.h"
#include "weights/weights.h"

namespace vla {
namespace {

using json = nlohmann::json;

std::string temp_dir() {
  char tmpl[] = "/tmp/vla_config_test_XXXXXX";
  char* d = mkdtemp(tmpl);
  return d ? std::string(d) : std::string("/tmp");
}

std::string src(const std::string& rel) { return std::string(VLA_SOURCE_DIR) + "/" + rel; }

// The published Qwen2.5-VL-3B-Instruct config.json (transformers 4.x layout): flat text fields,
// rope_scaling mrope, and only a few vision fields (the rest are transformers' defaults).
json published_3b() {
  return json::parse(R"({
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
    "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 128000,
    "max_window_layers": 70, "model_type": "qwen2_5_vl", "num_attention_heads": 16,
    "num_hidden_layers": 36, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
    "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": true,
    "use_sliding_window": false,
    "vision_config": {"hidden_size": 1280, "in_chans": 3, "model_type": "qwen2_5_vl",
                      "out_hidden_size": 2048, "spatial_patch_size": 14,
                      "tokens_per_second": 2, "torch_dtype": "bfloat16"},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936})");
}

void expect_error(const json& j, const std::string& fragment) {
  try {
    Qwen25VLConfig::from_json(j, "ckpt/config.json");
    FAIL() << "no error, expected: " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("ckpt/config.json"), std::string::npos) << e.what();
  }
}

TEST(Config, PublishedThreeBillionLayoutWithVisionDefaults) {
  auto c = Qwen25VLConfig::from_json(published_3b());
  EXPECT_EQ(c.layout, "transformers-4");
  EXPECT_EQ(c.text.vocab_size, 151936);
  EXPECT_EQ(c.text.hidden_size, 2048);
  EXPECT_EQ(c.text.num_hidden_layers, 36);
  EXPECT_EQ(c.text.num_key_value_heads, 2);
  EXPECT_EQ(c.text.head_dim(), 128);
  EXPECT_DOUBLE_EQ(c.text.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.text.mrope_section, (std::vector<int64_t>{16, 24, 24}));
  EXPECT_TRUE(c.text.tie_word_embeddings);
  EXPECT_EQ(c.text.max_position_embeddings, 128000);
  // File values win...
  EXPECT_EQ(c.vision.hidden_size, 1280);
  EXPECT_EQ(c.vision.out_hidden_size, 2048);
  EXPECT_DOUBLE_EQ(c.vision.tokens_per_second, 2);
  // ...the rest are transformers' Qwen2.5-VL vision defaults.
  EXPECT_EQ(c.vision.depth, 32);
  EXPECT_EQ(c.vision.num_heads, 16);
  EXPECT_EQ(c.vision.intermediate_size, 3420);
  EXPECT_EQ(c.vision.patch_size, 14);
  EXPECT_EQ(c.vision.temporal_patch_size, 2);
  EXPECT_EQ(c.vision.spatial_merge_size, 2);
  EXPECT_EQ(c.vision.window_size, 112);
  EXPECT_EQ(c.vision.fullatt_block_indexes, (std::vector<int64_t>{7, 15, 23, 31}));
  EXPECT_EQ(c.image_token_id, 151655);
  EXPECT_EQ(c.video_token_id, 151656);
  EXPECT_EQ(c.vision_start_token_id, 151652);
  EXPECT_EQ(c.vision_end_token_id, 151653);
  EXPECT_EQ(c.bos_token_id, 151643);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{151645}));
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(Config, TransformersFiveFileAsSaved) {
  // Saved by transformers 5.17 save_pretrained (tests/fixtures/tokenizer/make_tokenizer_fixture.py)
  auto c = Qwen25VLConfig::load(src("tests/fixtures/tokenizer/hf_configs/v5_small"));
  EXPECT_EQ(c.layout, "transformers-5");
  EXPECT_EQ(c.text.vocab_size, 3016);
  EXPECT_EQ(c.text.hidden_size, 64);
  EXPECT_EQ(c.text.num_attention_heads, 4);
  EXPECT_EQ(c.text.num_key_value_heads, 2);
  EXPECT_EQ(c.text.mrope_section, (std::vector<int64_t>{2, 3, 3}));
  EXPECT_DOUBLE_EQ(c.text.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c.text.rms_norm_eps, 1e-5);
  EXPECT_FALSE(c.text.tie_word_embeddings);
  EXPECT_EQ(c.vision.depth, 2);
  EXPECT_EQ(c.vision.window_size, 56);
  EXPECT_EQ(c.vision.fullatt_block_indexes, (std::vector<int64_t>{1}));
  EXPECT_DOUBLE_EQ(c.vision.tokens_per_second, 4);
  EXPECT_EQ(c.image_token_id, 3012);
  EXPECT_EQ(c.vision_start_token_id, 3009);
  // transformers' bare default config has no mrope_section: refused with a clear error
  // rather than guessing a split; with one added it parses (72B-sized defaults).
  auto dj = read_json(src("tests/fixtures/tokenizer/hf_configs/v5_default/config.json"));
  try {
    Qwen25VLConfig::from_json(dj, "v5_default");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mrope_section"), std::string::npos);
  }
  dj["text_config"]["rope_parameters"]["mrope_section"] = {16, 24, 24};
  dj["vision_config"]["out_hidden_size"] = 8192;  // the bare defaults disagree (3584 vs 8192)
  auto d = Qwen25VLConfig::from_json(dj, "v5_default");
  EXPECT_EQ(d.text.num_hidden_layers, 80);
  EXPECT_EQ(d.vision.hidden_size, 3584);
  EXPECT_EQ(d.image_token_id, 151655);
}

TEST(Config, BothLayoutsOfTheSameModelAgree) {
  const std::string v5 = src("tests/fixtures/qwen25vl/tiny_a");
  const std::string v4 = src("tests/fixtures/qwen25vl/tiny_a_v4");
  if (!file_exists(v5 + "/config.json") || !file_exists(v4 + "/config.json"))
    GTEST_SKIP() << "qwen25vl fixtures missing";
  auto a = Qwen25VLConfig::load(v5);
  auto b = Qwen25VLConfig::load(v4);
  EXPECT_EQ(a.layout, "transformers-5");
  EXPECT_EQ(b.layout, "transformers-4");
  a.layout = b.layout = "";
  a.torch_dtype = b.torch_dtype = "";
  EXPECT_EQ(a.pad_token_id, 386);  // from tiny_a/generation_config.json
  a.pad_token_id = b.pad_token_id;
  EXPECT_EQ(a.to_json().dump(), b.to_json().dump());
}

TEST(Config, GenerationConfigOverridesSpecialIds) {
  const std::string dir = temp_dir();
  write_json_atomic(dir + "/config.json", published_3b());
  write_json_atomic(
      dir + "/generation_config.json",
      json{{"bos_token_id", 151643}, {"pad_token_id", 151643}, {"eos_token_id", {151645, 151643}}});
  auto c = Qwen25VLConfig::load(dir);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{151645, 151643}));
  EXPECT_EQ(c.pad_token_id, 151643);
}

TEST(Config, ToJsonIsTransformersFiveLayoutAndRoundTrips) {
  auto c = Qwen25VLConfig::from_json(published_3b());
  json j = c.to_json();
  EXPECT_TRUE(j.contains("text_config"));
  EXPECT_EQ(j["text_config"]["rope_parameters"]["mrope_section"], json({16, 24, 24}));
  EXPECT_EQ(j["vision_config"]["depth"], 32);
  EXPECT_EQ(j["model_type"], "qwen2_5_vl");
  EXPECT_FALSE(j.contains("hidden_size"));  // not flat
  const std::string dir = temp_dir();
  c.save(dir);
  auto back = Qwen25VLConfig::load(dir);
  EXPECT_EQ(back.layout, "transformers-5");
  back.layout = c.layout;
  EXPECT_EQ(back.to_json().dump(), j.dump());
  EXPECT_EQ(back.text.hidden_size, 2048);
  EXPECT_TRUE(back.text.tie_word_embeddings);
}

TEST(Config, InconsistentValuesGiveClearErrors) {
  auto j = published_3b();
  j["hidden_size"] = 2050;
  expect_error(j, "hidden_size 2050 is not divisible by num_attention_heads 16");
  j = published_3b();
  j["num_key_value_heads"] = 3;
  expect_error(j, "num_attention_heads 16 is not a multiple of num_key_value_heads 3");
  j = published_3b();
  j["rope_scaling"]["mrope_section"] = {16, 24, 16};
  expect_error(j, "sum(mrope_section) * 2 = 112");
  j = published_3b();
  j.erase("rope_scaling");
  expect_error(j, "mrope_section");
  j = published_3b();
  j.erase("vocab_size");
  expect_error(j, "missing required field 'vocab_size'");
  j = published_3b();
  j["num_hidden_layers"] = "36";
  expect_error(j, "num_hidden_layers must be an integer");
  j = published_3b();
  j["num_hidden_layers"] = 6.48889e27;  // found by fuzz/config_fuzz: was cast to int64 (UB)
  expect_error(j, "num_hidden_layers must be an integer");
  j = published_3b();
  j["num_hidden_layers"] = 36.5;
  expect_error(j, "num_hidden_layers must be an integer");
  j = published_3b();
  j["num_hidden_layers"] = 36.0;  // an integral float is accepted
  EXPECT_EQ(Qwen25VLConfig::from_json(j).text.num_hidden_layers, 36);
  j = published_3b();
  j["vision_config"]["out_hidden_size"] = 1024;
  expect_error(j, "out_hidden_size 1024 must equal the text hidden_size 2048");
  j = published_3b();
  j["vision_config"]["fullatt_block_indexes"] = {7, 40};
  expect_error(j, "fullatt_block_indexes entry 40");
  j = published_3b();
  j.erase("image_token_id");
  expect_error(j, "image_token_id");
  j = published_3b();
  j["image_token_id"] = 200000;
  expect_error(j, "image_token_id 200000 is outside the vocabulary");
  j = published_3b();
  j["rope_scaling"]["type"] = "yarn";
  expect_error(j, "only the default/mrope rotary");
  j = published_3b();
  j["model_type"] = "llava";
  expect_error(j, "model_type is 'llava'");
  j = published_3b();
  j["vision_config"]["window_size"] = 100;
  expect_error(j, "window_size 100 must be a multiple");
  EXPECT_THROW(Qwen25VLConfig::load("/nonexistent/ckpt"), Error);
}

}  // namespace
}  // namespace vla
