// VlmEncoder on the fast executor (src/gpu): the same checkpoint, prompt, pooling and fingerprint
// as the reference encoder (vlm_qwen.cpp), run as a fixed-shape plan (fused weights; CUDA graphs
// and bf16 on CUDA, float32 on the CPU). Inference only: training goes through the reference
// encoder.
#include <filesystem>
#include <mutex>

#include "gpu/gpu.h"
#include "models/models.h"
#include "policy/policy.h"
#include "policy/vlm_common.h"

namespace vla::policy {

namespace fs = std::filesystem;

namespace {

class FastVlm : public VlmEncoder {
 public:
  FastVlm(std::unique_ptr<gpu::Engine> engine, std::shared_ptr<PromptCodec> codec, PolicyConfig cfg,
          std::string fingerprint, bool fp8_static)
      : engine_(std::move(engine)),
        codec_(std::move(codec)),
        cfg_(std::move(cfg)),
        fingerprint_(std::move(fingerprint)),
        fp8_static_(fp8_static) {}

  torch::Tensor encode(const std::vector<Image>& views,
                       const std::string& instruction) const override {
    c10::InferenceMode g;
    std::lock_guard<std::mutex> lock(mu_);
    // The views as the plan reads them: pointers into the caller's images (no copy) unless a
    // view needs converting to RGB.
    std::vector<Image> converted;
    std::vector<const Image*> used;
    for (int i : view_indices(views.size())) {
      if (views[i].channels == 3) {
        used.push_back(&views[i]);
      } else {
        converted.push_back(to_rgb(views[i]));
        used.push_back(nullptr);
      }
    }
    for (size_t i = 0, c = 0; i < used.size(); ++i)
      if (!used[i]) used[i] = &converted[c++];
    check_sizes(used);
    ensure_plan(static_cast<int>(used.size()), used[0]->height, used[0]->width, instruction);
    std::vector<const uint8_t*> ptrs;
    for (const Image* im : used) ptrs.push_back(im->pixels.data());
    if (fp8_static_ && !engine_->fp8_calibrated()) {
      // VlmOptions::fp8_static: these first frames calibrate the static scales (kept by the
      // engine for every later plan).
      engine_->calibrate_fp8(ptrs);
      log_info("VLM: fp8 static scales calibrated on the first ", ptrs.size(), " view(s)");
    }
    const at::Tensor hidden = engine_->encode(ptrs);  // [S, H], the plan's static output
    return pool_features(hidden.unsqueeze(0), plan_ids_, torch::ones_like(plan_ids_), cfg_,
                         engine_->config().image_token_id)
        .squeeze(0)
        .to(torch::kCPU, torch::kFloat32);
  }

  void prepare(int views, int height, int width, const std::string& instruction) const override {
    c10::InferenceMode g;
    std::lock_guard<std::mutex> lock(mu_);
    ensure_plan(static_cast<int>(view_indices(static_cast<size_t>(views)).size()), height, width,
                instruction);
  }

  int feature_dim() const override { return static_cast<int>(engine_->config().text.hidden_size); }
  std::string fingerprint() const override { return fingerprint_; }
  void save(const std::string&) const override {
    throw Error(
        "VLM: the fast backend runs a checkpoint, it does not write one (save from the "
        "reference backend)");
  }

  std::string caption(const std::vector<Image>& views, const std::string& prompt,
                      int max_new_tokens) const override {
    c10::InferenceMode g;
    std::lock_guard<std::mutex> lock(mu_);
    const auto in =
        gpu::chat_inputs(*engine_, *codec_, pick_views(views, cfg_), prompt, cfg_.text_first());
    auto out = engine_->generate_greedy(in.input_ids, in.pixel_values, in.grid_thw, max_new_tokens,
                                        engine_->config().eos_token_ids);
    if (!out.empty() &&
        std::find(engine_->config().eos_token_ids.begin(), engine_->config().eos_token_ids.end(),
                  out.back()) != engine_->config().eos_token_ids.end())
      out.pop_back();
    return codec_->decode(out);
  }

  void to(const torch::Device& device) override {
    VLA_CHECK(device == engine_->options().device, "VLM (fast backend) was built on ",
              engine_->options().device.str(), "; it cannot move to ", device.str(),
              " (load it there with --device)");
  }

 private:
  // Indices of the views the VLM sees (PolicyConfig::use_views; all when empty).
  // The plan for n views of h x w and this instruction's prompt (rendered once: chat template +
  // BPE cost ~1 ms); re-planning (CUDA graphs: ~0.4 s) only when one of them changed. Holds mu_.
  void ensure_plan(int n, int h, int w, const std::string& instruction) const {
    const std::string key = std::to_string(n) + "|" + instruction;
    if (prompts_.size() >= 4096 && prompts_.count(key) == 0) prompts_.clear();  // bounded
    auto& prompt = prompts_[key];
    if (prompt.empty())
      prompt = codec_->encode_chat(instruction, std::vector<int64_t>(static_cast<size_t>(n), 1),
                                   cfg_.text_first());
    const gpu::PlanSpec* cur = engine_->prepared() ? &engine_->plan() : nullptr;
    if (cur && cur->views == n && cur->height == h && cur->width == w && cur->prompt_ids == prompt)
      return;
    gpu::PlanSpec spec;
    spec.views = n;
    spec.height = h;
    spec.width = w;
    spec.prompt_ids = prompt;
    spec.text_layers = cfg_.vlm_layers;
    engine_->prepare(spec);
    // Which attention and MLP kernels the plan's timing chose (VLA_LOG=debug shows it).
    log_debug("VLM (fast backend): plan of ", n, " view(s) ", w, "x", h, ": ",
              engine_->attention_backend());
    plan_ids_ = torch::tensor(engine_->plan_token_ids(), torch::kInt64).view({1, -1});
  }

  std::vector<int> view_indices(size_t given) const {
    std::vector<int> idx = cfg_.use_views;
    if (idx.empty())
      for (size_t i = 0; i < given; ++i) idx.push_back(static_cast<int>(i));
    for (int i : idx)
      VLA_CHECK(i >= 0 && i < static_cast<int>(given), "VLM: view ", i, " requested but only ",
                given, " given");
    VLA_CHECK(!idx.empty(), "VLM: no views given");
    return idx;
  }
  // The plan has one frame shape.
  static void check_sizes(const std::vector<const Image*>& v) {
    for (size_t i = 0; i < v.size(); ++i)
      VLA_CHECK(v[i]->height == v[0]->height && v[i]->width == v[0]->width,
                "VLM (fast backend): every view must have the same size (view 0 is ", v[0]->width,
                "x", v[0]->height, ", view ", i, " is ", v[i]->width, "x", v[i]->height,
                "); use --vlm-backend reference for mixed sizes");
  }

  std::unique_ptr<gpu::Engine> engine_;
  std::shared_ptr<PromptCodec> codec_;
  PolicyConfig cfg_;
  std::string fingerprint_;
  bool fp8_static_ = false;  // VlmOptions::fp8_static: calibrate on the first encode
  mutable std::mutex mu_;    // one plan, one caller at a time; guards the members below
  mutable std::map<std::string, std::vector<int64_t>> prompts_;  // "views|instruction" -> ids
  mutable torch::Tensor plan_ids_;                               // [1, S] of the plan
};

}  // namespace

std::shared_ptr<VlmEncoder> load_fast_vlm(const std::string& dir, const PolicyConfig& cfg,
                                          const VlmOptions& options) {
  gpu::EngineOptions eo;
  eo.device = parse_device(options.device);
  eo.dtype = eo.device.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
  eo.fp8 = options.fp8;
  eo.fp8_output_projections = gpu::parse_fp8_output_projections(options.fp8_output_projections);
  const Qwen25VLConfig config = Qwen25VLConfig::load(dir);
  check_vlm_layers(cfg, config, dir);
  const ImagePreprocessConfig image = ImagePreprocessConfig::from_folder(dir);
  auto codec = make_prompt_codec(dir, config);
  VLA_CHECK(codec != nullptr, "VLM '", dir, "': no tokenizer.json / chat template");
  const bool has_weights =
      fs::exists(dir + "/model.safetensors") || fs::exists(dir + "/model.safetensors.index.json");
  if (!has_weights) {
    log_info("VLM: ", dir, " has no weights; fast backend with random weights (seed 0)");
    const std::string dump = config.to_json().dump();
    return std::make_shared<FastVlm>(
        gpu::Engine::random(config, image, eo, 0), codec, cfg,
        "qwen25vl-random-" + std::to_string(std::hash<std::string>()(dump)), options.fp8_static);
  }
  const WeightStore store = WeightStore::open(dir);
  // The names the executor reads, as the reference model calls them: the fingerprint is the
  // reference encoder's for the same checkpoint, so a policy accepts either backend.
  std::map<std::string, std::string> read;  // reference name -> checkpoint name
  const gpu::WeightFn base = gpu::checkpoint_weights(store);
  auto engine = std::make_unique<gpu::Engine>(
      config, image,
      [&](const std::string& name, const std::vector<int64_t>& shape) {
        at::Tensor t = base(name, shape);
        if (t.defined()) read[canonical_weight_name(name)] = name;
        return t;
      },
      eo);
  std::vector<std::string> names;
  for (const auto& kv : read) names.push_back(kv.first);
  const std::string fp = vlm_fingerprint(
      names, [&](const std::string& n) { return store.get(read.at(n), {}, torch::kFloat32); }, cfg);
  return std::make_shared<FastVlm>(std::move(engine), codec, cfg, fp, options.fp8_static);
}

}  // namespace vla::policy
