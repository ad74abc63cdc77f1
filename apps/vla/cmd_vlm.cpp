// `vla features` and `vla caption`: Qwen2.5-VL on a Hugging Face checkpoint folder.
#include "command.h"
#include "core/core.h"
#include "gpu/gpu.h"
#include "models/models.h"

namespace {

// The fast executor for a checkpoint folder on --device (bf16 on CUDA, float32 on the CPU).
std::unique_ptr<vla::gpu::Engine> fast_engine(const std::string& dir,
                                              const vla::policy::VlmOptions& o) {
  vla::gpu::EngineOptions eo;
  eo.device = vla::parse_device(o.device);
  eo.dtype = eo.device.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
  eo.fp8 = o.fp8;
  return vla::gpu::Engine::from_pretrained(dir, eo);
}

std::shared_ptr<vla::PromptCodec> codec_of(const std::string& dir, const vla::Qwen25VLConfig& c) {
  auto codec = vla::make_prompt_codec(dir, c);
  VLA_CHECK(codec != nullptr, dir, ": no tokenizer.json / chat template");
  return codec;
}

// Qwen25VLImpl::encode on the fast executor: the same prompts and pooling; views as a batch run
// one sequence per view (they must give equal token counts: the executor does not pad).
vla::EncodeResult encode_fast(vla::gpu::Engine& engine, const vla::PromptCodec& codec,
                              const std::vector<vla::Image>& images, const std::string& prompt,
                              const vla::EncodeOptions& o) {
  vla::EncodeResult r;
  vla::Stopwatch sw;
  std::vector<vla::gpu::ChatInputs> seqs;
  if (o.views_as_batch && images.size() > 1) {
    for (const auto& im : images)
      seqs.push_back(vla::gpu::chat_inputs(engine, codec, {im}, prompt));
  } else {
    seqs.push_back(vla::gpu::chat_inputs(engine, codec, images, prompt));
  }
  r.preprocess_ms = sw.elapsed_ms();
  sw.reset();
  std::vector<torch::Tensor> hidden, ids;
  for (const auto& in : seqs) {
    VLA_CHECK(in.input_ids.size() == seqs[0].input_ids.size(),
              "--views-as-batch with --vlm-backend fast needs views of one size (the fast "
              "executor does not pad); use --vlm-backend reference");
    hidden.push_back(
        engine.forward(in.input_ids, in.pixel_values, in.grid_thw, static_cast<int>(o.num_layers)));
    ids.push_back(torch::tensor(in.input_ids, torch::kInt64));
  }
  r.input_ids = torch::stack(ids);
  r.attention_mask = torch::ones_like(r.input_ids);
  r.features = vla::pool_hidden(torch::stack(hidden), r.attention_mask, o.pooling)
                   .to(torch::kCPU, torch::kFloat32);
  r.model_ms = sw.elapsed_ms();
  return r;
}

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
  std::string model, prompt = "Describe the scene.", out, json, pooling = "mean", dtype = "float32";
  vla::policy::VlmOptions vlm;
  std::vector<std::string> images;
  bool views_as_batch = false;
  int vlm_layers = 0;
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
  c->add_option("--dtype", a->dtype,
                "Reference backend dtype: float32 (default) | bfloat16 (the fast backend runs\n"
                "bf16 on CUDA and float32 on the CPU)");
  vla::cli::add_vlm_layers_option(c, &a->vlm_layers);
  vla::cli::add_vlm_options(c, &a->vlm);
  c->add_option("--json", a->json, "Also write a JSON summary (shapes, timings)");
  c->callback([a] {
    const auto pooling = vla::parse_pooling(a->pooling);
    vla::Stopwatch load_sw;
    a->vlm.validate();  // before the load: errors come first
    const auto dtype = parse_dtype(a->dtype);
    vla::EncodeOptions o;
    o.pooling = pooling;
    o.views_as_batch = a->views_as_batch;
    o.num_layers = a->vlm_layers;
    vla::EncodeResult r;
    double load_ms = 0;
    if (a->vlm.backend == "fast") {
      auto engine = fast_engine(a->model, a->vlm);
      auto codec = codec_of(a->model, engine->config());
      load_ms = load_sw.elapsed_ms();
      r = encode_fast(*engine, *codec, load_images(a->images), a->prompt, o);
    } else {
      auto model = vla::Qwen25VLImpl::from_pretrained(a->model, dtype);
      model->to(vla::parse_device(a->vlm.device));
      load_ms = load_sw.elapsed_ms();
      r = model->encode(load_images(a->images), a->prompt, o);
    }
    const size_t views = a->images.size();
    std::map<std::string, torch::Tensor> t = {
        {"features", r.features.to(torch::kCPU, torch::kFloat32).contiguous()},
        {"attention_mask", r.attention_mask.to(torch::kCPU)},
        {"input_ids", r.input_ids.to(torch::kCPU)}};
    vla::save_safetensors(a->out, t,
                          {{"model", a->model},
                           {"prompt", a->prompt},
                           {"pooling", a->pooling},
                           {"vlm_layers", std::to_string(a->vlm_layers)},
                           {"backend", a->vlm.backend},
                           {"layout", a->views_as_batch ? "views_as_batch" : "one_sequence"}});
    vla::Table table(
        {"views", "layout", "tokens", "features", "load ms", "preprocess ms", "model ms"});
    table.add_row({std::to_string(views), a->views_as_batch ? "views as batch" : "one sequence",
                   std::to_string(r.attention_mask.sum().item<int64_t>()),
                   vla::shape_str(r.features.sizes()), vla::fmt_double(load_ms, 1),
                   vla::fmt_double(r.preprocess_ms, 1), vla::fmt_double(r.model_ms, 1)});
    table.print();
    std::printf("wrote %s\n", a->out.c_str());
    if (!a->json.empty()) {
      nlohmann::json j = {{"out", a->out},
                          {"views", views},
                          {"backend", a->vlm.backend},
                          {"device", a->vlm.device},
                          {"views_as_batch", a->views_as_batch},
                          {"pooling", a->pooling},
                          {"vlm_layers", a->vlm_layers},
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
  std::string model, prompt = "Describe the image.", json, dtype = "float32";
  vla::policy::VlmOptions vlm;
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
  c->add_option("--dtype", a->dtype, "Reference backend dtype: float32 (default) | bfloat16");
  vla::cli::add_vlm_options(c, &a->vlm);
  c->add_option("--json", a->json, "Write text, token ids and timings as JSON");
  c->callback([a] {
    a->vlm.validate();  // before the load: errors come first
    const auto dtype = parse_dtype(a->dtype);
    vla::GenerateOptions o;
    o.max_new_tokens = a->max_new_tokens;
    o.temperature = a->temperature;
    o.top_k = a->top_k;
    o.top_p = a->top_p;
    o.seed = a->seed;
    vla::GenerateResult r;
    if (a->vlm.backend == "fast") {
      VLA_CHECK(a->temperature == 0.0,
                "--vlm-backend fast decodes greedily; sampling "
                "(--temperature > 0) needs --vlm-backend reference");
      auto engine = fast_engine(a->model, a->vlm);
      auto codec = codec_of(a->model, engine->config());
      vla::Stopwatch sw;
      const auto in = vla::gpu::chat_inputs(*engine, *codec, load_images(a->images), a->prompt);
      const auto& eos = engine->config().eos_token_ids;
      r.token_ids = engine->generate_greedy(in.input_ids, in.pixel_values, in.grid_thw,
                                            a->max_new_tokens, eos, &r.decode_ms);
      r.prefill_ms = sw.elapsed_ms() - r.decode_ms;
      r.prompt_tokens = static_cast<int64_t>(in.input_ids.size());
      const bool stopped = !r.token_ids.empty() &&
                           std::find(eos.begin(), eos.end(), r.token_ids.back()) != eos.end();
      r.stop_reason = stopped ? "stop_token" : "max_new_tokens";
      r.text = codec->decode(
          stopped ? std::vector<int64_t>(r.token_ids.begin(), r.token_ids.end() - 1) : r.token_ids);
    } else {
      auto model = vla::Qwen25VLImpl::from_pretrained(a->model, dtype);
      model->to(vla::parse_device(a->vlm.device));
      r = model->generate(load_images(a->images), a->prompt, o);
    }
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
