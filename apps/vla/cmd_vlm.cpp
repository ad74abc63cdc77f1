// `vla features` and `vla caption`: Qwen2.5-VL on a Hugging Face checkpoint folder.
#include "command.h"
#include "core/core.h"

#ifdef VLA_HAS_MODELS
#include "models/models.h"

namespace {

torch::ScalarType parse_dtype(const std::string& s) {
  if (s == "float32" || s == "fp32") return torch::kFloat32;
  if (s == "bfloat16" || s == "bf16") return torch::kBFloat16;
  if (s == "float16" || s == "fp16") return torch::kFloat16;
  throw vla::Error(vla::str_cat("unknown --dtype '", s, "' (float32 | bfloat16 | float16)"));
}

std::vector<vla::Image> load_images(const std::vector<std::string>& paths) {
  std::vector<vla::Image> out;
  for (const auto& p : paths) out.push_back(vla::read_image(p, 3));
  return out;
}

struct FeatureArgs {
  std::string model, prompt = "Describe the scene.", out, json, pooling = "mean", dtype = "float32",
                     device = "cpu";
  std::vector<std::string> images;
  bool views_as_batch = false;
};

void add_features(CLI::App& app) {
  auto a = std::make_shared<FeatureArgs>();
  auto* c = app.add_subcommand(
      "features",
      "Encode camera views + an instruction into VL features (Qwen2.5-VL last hidden states)");
  c->add_option("--model", a->model,
                "Checkpoint folder as written by transformers' save_pretrained (config.json, "
                "*.safetensors, tokenizer.json, processor config)")
      ->required();
  c->add_option("--image", a->images,
                "Image file (PNG/JPEG); repeat for several views; none: text-only features");
  c->add_option("--prompt", a->prompt, "Instruction text (default: \"Describe the scene.\")");
  c->add_option("--out", a->out,
                "Output safetensors: features, attention_mask, input_ids (+ metadata)")
      ->required();
  c->add_flag("--views-as-batch", a->views_as_batch,
              "One sequence per view (instruction repeated, left-padded batch) instead of all "
              "views in one prompt (default: one sequence)");
  c->add_option("--pooling", a->pooling,
                "mean (masked mean over tokens, default) | last (last token) | all (every token)");
  c->add_option("--dtype", a->dtype, "Weights/activations dtype: float32 (default) | bfloat16");
  c->add_option("--device", a->device, "where the model runs: cpu | cuda | cuda:N")
      ->capture_default_str();
  c->add_option("--json", a->json, "Also write a JSON summary (shapes, timings)");
  c->callback([a] {
    const auto pooling = vla::parse_pooling(a->pooling);
    vla::Stopwatch load_sw;
    const auto device = vla::parse_device(a->device);  // before the load: errors come first
    auto model = vla::Qwen25VLImpl::from_pretrained(a->model, parse_dtype(a->dtype));
    model->to(device);
    const double load_ms = load_sw.elapsed_ms();
    auto images = load_images(a->images);
    vla::EncodeOptions o;
    o.pooling = pooling;
    o.views_as_batch = a->views_as_batch;
    auto r = model->encode(images, a->prompt, o);
    std::map<std::string, torch::Tensor> t = {
        {"features", r.features.to(torch::kCPU, torch::kFloat32).contiguous()},
        {"attention_mask", r.attention_mask.to(torch::kCPU)},
        {"input_ids", r.input_ids.to(torch::kCPU)}};
    vla::save_safetensors(a->out, t,
                          {{"model", a->model},
                           {"prompt", a->prompt},
                           {"pooling", a->pooling},
                           {"layout", a->views_as_batch ? "views_as_batch" : "one_sequence"}});
    vla::Table table(
        {"views", "layout", "tokens", "features", "load ms", "preprocess ms", "model ms"});
    table.add_row({std::to_string(images.size()),
                   a->views_as_batch ? "views as batch" : "one sequence",
                   std::to_string(r.attention_mask.sum().item<int64_t>()),
                   vla::shape_str(r.features.sizes()), vla::fmt_double(load_ms, 1),
                   vla::fmt_double(r.preprocess_ms, 1), vla::fmt_double(r.model_ms, 1)});
    table.print();
    std::printf("wrote %s\n", a->out.c_str());
    if (!a->json.empty()) {
      nlohmann::json j = {{"out", a->out},
                          {"views", images.size()},
                          {"views_as_batch", a->views_as_batch},
                          {"pooling", a->pooling},
                          {"features_shape", r.features.sizes().vec()},
                          {"tokens", r.attention_mask.sum().item<int64_t>()},
                          {"load_ms", load_ms},
                          {"preprocess_ms", r.preprocess_ms},
                          {"model_ms", r.model_ms}};
      vla::write_json_atomic(a->json, j);
    }
  });
}

struct CaptionArgs {
  std::string model, prompt = "Describe the image.", json, dtype = "float32", device = "cpu";
  std::vector<std::string> images;
  int max_new_tokens = 32, top_k = 0;
  double temperature = 0.0, top_p = 1.0;
  uint64_t seed = 0;
};

void add_caption(CLI::App& app) {
  auto a = std::make_shared<CaptionArgs>();
  auto* c = app.add_subcommand("caption", "Generate text about images with Qwen2.5-VL");
  c->add_option("--model", a->model, "Checkpoint folder (transformers save_pretrained layout)")
      ->required();
  c->add_option("--image", a->images, "Image file (PNG/JPEG); repeat for several images");
  c->add_option("--prompt", a->prompt, "User prompt (default: \"Describe the image.\")");
  c->add_option("--max-new-tokens", a->max_new_tokens, "Most tokens to generate (default 32)")
      ->check(CLI::Range(1, 1 << 20));
  c->add_option("--temperature", a->temperature,
                "Sampling temperature; 0 = greedy decoding (default 0)")
      ->check(CLI::Range(0.0, 100.0));
  c->add_option("--top-k", a->top_k, "Keep the k most likely tokens when sampling (0 = off)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--top-p", a->top_p, "Nucleus sampling mass in (0, 1] (1 = off)")
      ->check(CLI::Range(1e-9, 1.0));
  c->add_option("--seed", a->seed, "Sampling seed (default 0)");
  c->add_option("--dtype", a->dtype, "float32 (default) | bfloat16");
  c->add_option("--device", a->device, "where the model runs: cpu | cuda | cuda:N")
      ->capture_default_str();
  c->add_option("--json", a->json, "Write text, token ids and timings as JSON");
  c->callback([a] {
    const auto device = vla::parse_device(a->device);  // before the load: errors come first
    auto model = vla::Qwen25VLImpl::from_pretrained(a->model, parse_dtype(a->dtype));
    model->to(device);
    vla::GenerateOptions o;
    o.max_new_tokens = a->max_new_tokens;
    o.temperature = a->temperature;
    o.top_k = a->top_k;
    o.top_p = a->top_p;
    o.seed = a->seed;
    auto r = model->generate(load_images(a->images), a->prompt, o);
    std::printf("%s\n", r.text.c_str());
    // Decode rate over the tokens after the first (the first comes from the prefill); none when
    // fewer than two tokens or no measurable decode time.
    const size_t n = r.token_ids.size();
    const double tps = n > 1 && r.decode_ms > 0 ? (n - 1) * 1000.0 / r.decode_ms : 0.0;
    std::fprintf(stderr,
                 "[%zu tokens, stop: %s, prompt %lld tokens, prefill %.1f ms, %.1f tok/s]\n",
                 r.token_ids.size(), r.stop_reason.c_str(), static_cast<long long>(r.prompt_tokens),
                 r.prefill_ms, tps);
    if (!a->json.empty()) {
      vla::write_json_atomic(a->json, {{"text", r.text},
                                       {"token_ids", r.token_ids},
                                       {"prompt_tokens", r.prompt_tokens},
                                       {"stop_reason", r.stop_reason},
                                       {"prefill_ms", r.prefill_ms},
                                       {"decode_ms", r.decode_ms},
                                       {"tokens_per_s", tps}});
    }
  });
}

}  // namespace

VLA_REGISTER_COMMAND(300, add_features);
VLA_REGISTER_COMMAND(301, add_caption);
#endif
