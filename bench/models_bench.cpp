// CPU latency of a small Qwen2.5-VL-architecture model (random weights): VL features for 1 and 5
// camera views of 224x224, all views in one prompt vs views as a batch of per-view sequences.
// Run: build/bench/bench_models (or bench_models --benchmark_filter=Encode).
#include <benchmark/benchmark.h>

#include "models/models.h"

namespace {

vla::Qwen25VLConfig small_config() {
  nlohmann::json j = {
      {"model_type", "qwen2_5_vl"},
      {"image_token_id", 4093},
      {"video_token_id", 4094},
      {"vision_start_token_id", 4090},
      {"vision_end_token_id", 4091},
      {"text_config",
       {{"vocab_size", 4096},
        {"hidden_size", 256},
        {"intermediate_size", 768},
        {"num_hidden_layers", 4},
        {"num_attention_heads", 4},
        {"num_key_value_heads", 2},
        {"rms_norm_eps", 1e-6},
        {"tie_word_embeddings", true},
        {"eos_token_id", 4089},
        {"rope_parameters",
         {{"rope_type", "default"}, {"rope_theta", 1000000.0}, {"mrope_section", {8, 12, 12}}}}}},
      {"vision_config",
       {{"depth", 6},
        {"hidden_size", 192},
        {"intermediate_size", 512},
        {"num_heads", 3},
        {"out_hidden_size", 256},
        {"window_size", 112},
        {"fullatt_block_indexes", {2, 5}},
        {"patch_size", 14},
        {"spatial_merge_size", 2},
        {"temporal_patch_size", 2}}}};
  return vla::Qwen25VLConfig::from_json(j, "bench config");
}

vla::Qwen25VL& model() {
  static vla::Qwen25VL m = [] {
    vla::configure_torch_threads();
    vla::seed_everything(0);
    auto p = std::make_shared<vla::Qwen25VLImpl>(small_config());
    p->eval();
    vla::ImagePreprocessConfig ic;
    p->set_image_config(ic);
    return vla::Qwen25VL(p);
  }();
  return m;
}

std::vector<vla::Image> views(int n, int w, int h) {
  std::vector<vla::Image> out;
  for (int v = 0; v < n; ++v) {
    auto im = vla::make_image(w, h, 3);
    for (size_t i = 0; i < im.pixels.size(); ++i)
      im.pixels[i] = static_cast<uint8_t>((i * 7 + v * 31) % 251);
    out.push_back(im);
  }
  return out;
}

// Prompt ids without a tokenizer: 20 "system" tokens, the images, 12 instruction tokens.
std::vector<int64_t> prompt(const vla::Qwen25VLConfig& c, const std::vector<int64_t>& tokens) {
  std::vector<int64_t> ids;
  for (int i = 0; i < 20; ++i) ids.push_back(100 + i);
  for (auto t : tokens) {
    ids.push_back(c.vision_start_token_id);
    for (int64_t k = 0; k < t; ++k) ids.push_back(c.image_token_id);
    ids.push_back(c.vision_end_token_id);
  }
  for (int i = 0; i < 12; ++i) ids.push_back(200 + i);
  return ids;
}

// End to end from uint8 frames: preprocessing + vision tower + LLM, mean-pooled features.
void BM_Encode(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const bool batch = state.range(1) != 0;
  auto& m = model();
  auto imgs = views(n, 224, 224);
  torch::NoGradGuard g;
  int64_t tokens = 0;
  for (auto _ : state) {
    auto pre = vla::preprocess_images(imgs, m->image_config());
    auto per = pre.tokens_per_image();
    torch::Tensor ids;
    if (batch) {
      std::vector<torch::Tensor> rows;
      for (auto t : per) rows.push_back(torch::tensor(prompt(m->config(), {t}), torch::kInt64));
      ids = torch::stack(rows);
    } else {
      ids = torch::tensor(prompt(m->config(), per), torch::kInt64).view({1, -1});
    }
    vla::ForwardOptions fo;
    fo.compute_logits = false;
    auto out = m->forward(ids, {}, pre.pixel_values, pre.grid_thw, fo);
    auto feats = out.last_hidden.mean(1);
    benchmark::DoNotOptimize(feats.data_ptr<float>());
    tokens = ids.numel();
  }
  state.counters["llm_tokens"] = static_cast<double>(tokens);
  state.SetLabel(batch ? "views as batch" : "one sequence");
}
BENCHMARK(BM_Encode)
    ->ArgsProduct({{1, 5}, {0, 1}})
    ->ArgNames({"views", "batch"})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);

void BM_VisionTower(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  auto& m = model();
  auto pre = vla::preprocess_images(views(n, 224, 224), m->image_config());
  torch::NoGradGuard g;
  for (auto _ : state)
    benchmark::DoNotOptimize(m->visual(pre.pixel_values, pre.grid_thw).data_ptr<float>());
}
BENCHMARK(BM_VisionTower)->Arg(1)->Arg(5)->ArgName("views")->Unit(benchmark::kMillisecond);

void BM_Preprocess(benchmark::State& state) {
  auto imgs = views(1, static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
  vla::ImagePreprocessConfig c;
  for (auto _ : state)
    benchmark::DoNotOptimize(vla::preprocess_images(imgs, c).pixel_values.data_ptr<float>());
}
BENCHMARK(BM_Preprocess)
    ->Args({224, 224})
    ->Args({640, 360})
    ->ArgNames({"w", "h"})
    ->Unit(benchmark::kMillisecond);

// Greedy decode after one 224x224 view: tokens/s with the KV cache.
void BM_Decode(benchmark::State& state) {
  auto& m = model();
  auto pre = vla::preprocess_images(views(1, 224, 224), m->image_config());
  auto ids =
      torch::tensor(prompt(m->config(), pre.tokens_per_image()), torch::kInt64).view({1, -1});
  vla::GenerateOptions o;
  o.max_new_tokens = 32;
  o.use_stop_tokens = false;
  double decode_ms = 0;
  int64_t n = 0;
  for (auto _ : state) {
    vla::GenerateResult r;
    auto toks = m->generate_ids(ids, pre.pixel_values, pre.grid_thw, o, &r);
    decode_ms += r.decode_ms;
    n += static_cast<int64_t>(toks.size()) - 1;
  }
  state.counters["decode_tok_per_s"] = decode_ms > 0 ? n * 1000.0 / decode_ms : 0.0;
}
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
