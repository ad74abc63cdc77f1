#include "policy/policy.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "weights/weights.h"

namespace vla::policy {

namespace fs = std::filesystem;

// ---------------------------------------------------------------- config
nlohmann::json PolicyConfig::to_json() const {
  return {{"sensor_window", sensor_window},
          {"sensor_channels", sensor_channels},
          {"proprio_dim", proprio_dim},
          {"horizon", horizon},
          {"action_dim", action_dim},
          {"vl_dim", vl_dim},
          {"vl_tokens", vl_tokens},
          {"head", head},
          {"d_model", d_model},
          {"sensor_dim", sensor_dim},
          {"layers", layers},
          {"heads", heads},
          {"ff_dim", ff_dim},
          {"flow_steps", flow_steps},
          {"dropout", dropout},
          {"vl_dropout", vl_dropout},
          {"num_views", num_views},
          {"image_width", image_width},
          {"image_height", image_height},
          {"pooling", pooling},
          {"prompt_order", prompt_order},
          {"vl_memory", vl_memory},
          {"vlm_layers", vlm_layers},
          {"use_views", use_views}};
}

PolicyConfig PolicyConfig::from_json(const nlohmann::json& j) {
  PolicyConfig c;
  VLA_CHECK(j.is_object(), "policy config: expected a JSON object");
  auto get = [&](const char* k, auto& v) {
    if (j.contains(k)) {
      try {
        j.at(k).get_to(v);
      } catch (const std::exception& e) {
        throw Error(str_cat("policy config: field '", k, "' has the wrong type: ", e.what()));
      }
    }
  };
  get("sensor_window", c.sensor_window);
  get("sensor_channels", c.sensor_channels);
  get("proprio_dim", c.proprio_dim);
  get("horizon", c.horizon);
  get("action_dim", c.action_dim);
  get("vl_dim", c.vl_dim);
  get("vl_tokens", c.vl_tokens);
  get("head", c.head);
  get("d_model", c.d_model);
  get("sensor_dim", c.sensor_dim);
  get("layers", c.layers);
  get("heads", c.heads);
  get("ff_dim", c.ff_dim);
  get("flow_steps", c.flow_steps);
  get("dropout", c.dropout);
  get("vl_dropout", c.vl_dropout);
  get("num_views", c.num_views);
  get("image_width", c.image_width);
  get("image_height", c.image_height);
  get("pooling", c.pooling);
  get("prompt_order", c.prompt_order);
  get("vl_memory", c.vl_memory);
  get("vlm_layers", c.vlm_layers);
  get("use_views", c.use_views);
  c.validate();
  return c;
}

void PolicyConfig::validate() const {
  VLA_CHECK(sensor_window >= 8, "policy config: sensor_window must be >= 8, got ", sensor_window);
  VLA_CHECK(sensor_channels > 0 && proprio_dim >= 0 && horizon > 0 && action_dim > 0,
            "policy config: channel/horizon sizes must be positive");
  VLA_CHECK(vl_dim > 0 && vl_tokens > 0, "policy config: vl_dim and vl_tokens must be positive");
  VLA_CHECK(head == "flow" || head == "mlp", "policy config: head must be 'flow' or 'mlp', got '",
            head, "'");
  VLA_CHECK(d_model > 0 && heads > 0 && d_model % heads == 0,
            "policy config: d_model must be a positive multiple of heads");
  VLA_CHECK(layers > 0 && ff_dim > 0 && sensor_dim > 0, "policy config: layer sizes must be > 0");
  VLA_CHECK(flow_steps > 0 && flow_steps <= 100, "policy config: flow_steps must be in 1..100");
  VLA_CHECK(dropout >= 0 && dropout < 1 && vl_dropout >= 0 && vl_dropout < 1,
            "policy config: dropout must be in [0, 1)");
  VLA_CHECK(num_views > 0 && image_width > 0 && image_height > 0,
            "policy config: num_views/image size must be positive");
  VLA_CHECK(pooling == "mean" || pooling == "last" || pooling == "tokens",
            "policy config: pooling must be mean|last|tokens, got '", pooling, "'");
  VLA_CHECK(vl_memory == "none" || vl_memory == "first",
            "policy config: vl_memory must be none|first, got '", vl_memory, "'");
  VLA_CHECK(prompt_order == "images_first" || prompt_order == "text_first",
            "policy config: prompt_order must be images_first|text_first, got '", prompt_order,
            "'");
  VLA_CHECK(vlm_layers >= 0, "policy config: vlm_layers must be >= 0 (0 = all), got ", vlm_layers);
  for (int v : use_views)
    VLA_CHECK(v >= 0 && v < num_views, "policy config: use_views entry ", v, " not in 0..",
              num_views - 1);
}

// ---------------------------------------------------------------- normalisation
Normalizer Normalizer::identity(int channels) {
  return {torch::zeros({channels}), torch::ones({channels})};
}

Normalizer Normalizer::fit(const torch::Tensor& x, double min_std) {
  VLA_CHECK(x.dim() == 2 && x.size(0) > 0, "Normalizer::fit: expected [N, C] with N > 0");
  auto xf = x.to(torch::kFloat64);
  auto m = xf.mean(0);
  auto s = xf.std(0, /*unbiased=*/false).clamp_min(min_std);
  return {m.to(torch::kFloat32), s.to(torch::kFloat32)};
}

torch::Tensor Normalizer::normalize(const torch::Tensor& x) const { return (x - mean) / std; }
torch::Tensor Normalizer::denormalize(const torch::Tensor& x) const { return x * std + mean; }

static std::vector<double> to_vec(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

nlohmann::json Normalizer::to_json() const {
  return {{"mean", to_vec(mean)}, {"std", to_vec(std)}};
}

Normalizer Normalizer::from_json(const nlohmann::json& j, int channels, const std::string& what) {
  VLA_CHECK(j.is_object() && j.contains("mean") && j.contains("std"), "normalisation stats '", what,
            "': expected {mean, std}");
  std::vector<double> m, s;
  try {
    m = j.at("mean").get<std::vector<double>>();
    s = j.at("std").get<std::vector<double>>();
  } catch (const std::exception& e) {
    throw Error(str_cat("normalisation stats '", what, "': ", e.what()));
  }
  VLA_CHECK(static_cast<int>(m.size()) == channels && static_cast<int>(s.size()) == channels,
            "normalisation stats '", what, "': expected ", channels, " channels, got ", m.size(),
            "/", s.size());
  for (double v : s)
    VLA_CHECK(v > 0 && std::isfinite(v), "normalisation stats '", what, "': std must be > 0");
  for (double v : m)
    VLA_CHECK(std::isfinite(v), "normalisation stats '", what, "': mean not finite");
  return {torch::tensor(m, torch::kFloat64).to(torch::kFloat32),
          torch::tensor(s, torch::kFloat64).to(torch::kFloat32)};
}

nlohmann::json NormStats::to_json() const {
  return {{"force", force.to_json()}, {"proprio", proprio.to_json()}, {"action", action.to_json()}};
}

NormStats NormStats::from_json(const nlohmann::json& j, const PolicyConfig& c) {
  VLA_CHECK(j.is_object(), "policy norm stats: expected an object");
  NormStats s;
  s.force = Normalizer::from_json(j.value("force", nlohmann::json()), c.sensor_channels, "force");
  s.proprio = Normalizer::from_json(j.value("proprio", nlohmann::json()), c.proprio_dim, "proprio");
  s.action = Normalizer::from_json(j.value("action", nlohmann::json()), c.action_dim, "action");
  return s;
}

NormStats NormStats::identity(const PolicyConfig& c) {
  return {Normalizer::identity(c.sensor_channels), Normalizer::identity(c.proprio_dim),
          Normalizer::identity(c.action_dim)};
}

// ---------------------------------------------------------------- modules
static int conv_out(int len) { return (len + 2 * 2 - 5) / 2 + 1; }

SensorEncoderImpl::SensorEncoderImpl(const PolicyConfig& c) {
  using torch::nn::Conv1dOptions;
  int h = c.sensor_dim;
  c1 = register_module(
      "c1", torch::nn::Conv1d(Conv1dOptions(c.sensor_channels, h / 2, 5).stride(2).padding(2)));
  c2 = register_module("c2", torch::nn::Conv1d(Conv1dOptions(h / 2, h, 5).stride(2).padding(2)));
  c3 = register_module("c3", torch::nn::Conv1d(Conv1dOptions(h, h, 5).stride(2).padding(2)));
  last = register_module("last", torch::nn::Linear(c.sensor_channels, h));
  tokens_ = conv_out(conv_out(conv_out(c.sensor_window))) + 1;
}

torch::Tensor SensorEncoderImpl::forward(const torch::Tensor& window) {
  auto x = window.transpose(1, 2);  // [B, C, W]
  x = torch::gelu(c1->forward(x));
  x = torch::gelu(c2->forward(x));
  x = c3->forward(x).transpose(1, 2);                                              // [B, S, h]
  auto newest = last->forward(window.select(1, window.size(1) - 1)).unsqueeze(1);  // [B, 1, h]
  return torch::cat({x, newest}, 1);
}

ExpertImpl::ExpertImpl(const PolicyConfig& c) : cfg(c) {
  c.validate();
  sensor = register_module("sensor", SensorEncoder(c));
  const int d = c.d_model;
  vl_proj = register_module("vl_proj", torch::nn::Linear(c.vl_dim, d));
  sensor_proj = register_module("sensor_proj", torch::nn::Linear(c.sensor_dim, d));
  proprio_proj = register_module("proprio_proj", torch::nn::Linear(std::max(1, c.proprio_dim), d));
  const int t_cond = c.vl_tokens + sensor->num_tokens() + 1;
  cond_pos = register_parameter("cond_pos", torch::randn({t_cond, d}) * 0.02);
  if (c.head == "flow") {
    act_in = register_module("act_in", torch::nn::Linear(c.action_dim, d));
    time_in = register_module("time_in", torch::nn::Linear(32, d));
    act_out = register_module("act_out", torch::nn::Linear(d, c.action_dim));
    act_pos = register_parameter("act_pos", torch::randn({c.horizon, d}) * 0.02);
    auto layer =
        torch::nn::TransformerEncoderLayer(torch::nn::TransformerEncoderLayerOptions(d, c.heads)
                                               .dim_feedforward(c.ff_dim)
                                               .dropout(c.dropout)
                                               .activation(torch::kGELU));
    trunk = register_module("trunk", torch::nn::TransformerEncoder(
                                         torch::nn::TransformerEncoderOptions(layer, c.layers)));
    out_norm = register_module("out_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  } else {
    torch::nn::Sequential seq;
    int in = t_cond * d;
    for (int i = 0; i < c.layers; ++i) {
      seq->push_back(torch::nn::Linear(in, c.ff_dim));
      seq->push_back(torch::nn::GELU());
      if (c.dropout > 0) seq->push_back(torch::nn::Dropout(c.dropout));
      in = c.ff_dim;
    }
    seq->push_back(torch::nn::Linear(in, c.horizon * c.action_dim));
    mlp = register_module("mlp", seq);
  }
}

torch::Tensor ExpertImpl::condition(const torch::Tensor& vl, const torch::Tensor& force,
                                    const torch::Tensor& proprio) {
  VLA_CHECK(vl.dim() == 3 && vl.size(1) == cfg.vl_tokens && vl.size(2) == cfg.vl_dim,
            "expert: VL features must be [B, ", cfg.vl_tokens, ", ", cfg.vl_dim, "], got ",
            vl.sizes());
  VLA_CHECK(force.dim() == 3 && force.size(1) == cfg.sensor_window &&
                force.size(2) == cfg.sensor_channels,
            "expert: force window must be [B, ", cfg.sensor_window, ", ", cfg.sensor_channels,
            "], got ", force.sizes());
  auto v = vl_proj->forward(vl);
  auto s = sensor_proj->forward(sensor->forward(force));
  torch::Tensor p;
  if (cfg.proprio_dim > 0) {
    VLA_CHECK(proprio.dim() == 2 && proprio.size(1) == cfg.proprio_dim,
              "expert: proprio must be [B, ", cfg.proprio_dim, "], got ", proprio.sizes());
    p = proprio_proj->forward(proprio).unsqueeze(1);
  } else {
    p = proprio_proj->forward(torch::zeros({vl.size(0), 1}, vl.options())).unsqueeze(1);
  }
  return torch::cat({v, s, p}, 1) + cond_pos;
}

static torch::Tensor time_features(const torch::Tensor& t) {  // [B] -> [B, 32]
  auto freqs = torch::exp(torch::arange(16, t.options()) * (-std::log(1000.0) / 16.0)) * 6.2832;
  auto a = t.unsqueeze(1) * freqs.unsqueeze(0);
  return torch::cat({torch::sin(a), torch::cos(a)}, 1);
}

torch::Tensor ExpertImpl::flow_velocity(const torch::Tensor& cond, const torch::Tensor& x,
                                        const torch::Tensor& t) {
  auto a = act_in->forward(x) + act_pos + time_in->forward(time_features(t)).unsqueeze(1);
  auto seq = torch::cat({cond, a}, 1).transpose(0, 1);  // [T, B, d]
  auto out = trunk->forward(seq).transpose(0, 1);       // [B, T, d]
  auto h = out.narrow(1, cond.size(1), cfg.horizon);
  return act_out->forward(out_norm->forward(h));
}

torch::Tensor ExpertImpl::loss(const torch::Tensor& vl, const torch::Tensor& force,
                               const torch::Tensor& proprio, const torch::Tensor& actions) {
  auto cond = condition(vl, force, proprio);
  if (cfg.head == "mlp") {
    auto pred = mlp->forward(cond.flatten(1)).view({-1, cfg.horizon, cfg.action_dim});
    return torch::mse_loss(pred, actions);
  }
  auto x0 = torch::randn_like(actions);
  auto t = torch::rand({actions.size(0)}, actions.options());
  auto tt = t.view({-1, 1, 1});
  auto xt = (1 - tt) * x0 + tt * actions;
  auto v = flow_velocity(cond, xt, t);
  return torch::mse_loss(v, actions - x0);
}

torch::Tensor ExpertImpl::predict(const torch::Tensor& vl, const torch::Tensor& force,
                                  const torch::Tensor& proprio) {
  auto cond = condition(vl, force, proprio);
  if (cfg.head == "mlp")
    return mlp->forward(cond.flatten(1)).view({-1, cfg.horizon, cfg.action_dim});
  const int64_t b = vl.size(0);
  auto x = torch::zeros({b, cfg.horizon, cfg.action_dim}, cond.options());
  const double dt = 1.0 / cfg.flow_steps;
  for (int k = 0; k < cfg.flow_steps; ++k) {
    auto t = torch::full({b}, k * dt, cond.options());
    x = x + dt * flow_velocity(cond, x, t);
  }
  return x;
}

std::vector<torch::Tensor> ExpertImpl::sensor_parameters() {
  auto p = sensor->parameters();
  for (auto& q : sensor_proj->parameters()) p.push_back(q);
  return p;
}

std::vector<torch::Tensor> ExpertImpl::action_parameters() {
  std::vector<torch::Tensor> out;
  auto sp = sensor_parameters();
  for (auto& q : parameters()) {
    bool is_sensor = false;
    for (auto& s : sp) is_sensor |= s.is_same(q);
    if (!is_sensor) out.push_back(q);
  }
  return out;
}

// ---------------------------------------------------------------- state I/O
std::vector<std::pair<std::string, torch::Tensor>> named_state(torch::nn::Module& m,
                                                               const std::string& prefix) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& kv : m.named_parameters(true)) out.emplace_back(prefix + kv.key(), kv.value());
  for (auto& kv : m.named_buffers(true)) out.emplace_back(prefix + kv.key(), kv.value());
  return out;
}

void load_state(torch::nn::Module& m, const std::string& prefix,
                const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                const std::string& source) {
  std::map<std::string, torch::Tensor> by_name;
  for (auto& kv : tensors) by_name[kv.first] = kv.second;
  torch::NoGradGuard ng;
  for (auto& kv : named_state(m, prefix)) {
    auto it = by_name.find(kv.first);
    VLA_CHECK(it != by_name.end(), source, ": missing tensor '", kv.first, "'");
    VLA_CHECK(it->second.sizes() == kv.second.sizes(), source, ": tensor '", kv.first,
              "' has shape ", it->second.sizes(), ", expected ", kv.second.sizes());
    kv.second.copy_(it->second);
  }
}

void save_tensors(const std::string& path,
                  const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                  const nlohmann::json& metadata) {
  std::map<std::string, torch::Tensor> named;
  for (const auto& kv : tensors)
    VLA_CHECK(named.emplace(kv.first, kv.second.detach()).second, path, ": tensor name '", kv.first,
              "' given twice");
  std::map<std::string, std::string> md;
  for (const auto& [k, v] : metadata.items())
    md[k] = v.is_string() ? v.get<std::string>() : dump_json(v);
  save_safetensors(path, named, md);
}

std::vector<std::pair<std::string, torch::Tensor>> load_tensors(const std::string& path) {
  VLA_CHECK(file_exists(path), path, ": file not found");
  const auto file = SafetensorsFile::open(path);  // validated: header, dtypes, offsets, coverage
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& name : file->names()) out.emplace_back(name, file->load(name));
  return out;
}

// ---------------------------------------------------------------- policy
Policy::Policy(PolicyConfig cfg, Expert expert, NormStats stats, std::shared_ptr<VlmEncoder> vlm,
               nlohmann::json provenance)
    : cfg_(std::move(cfg)),
      expert_(std::move(expert)),
      stats_(std::move(stats)),
      vlm_(std::move(vlm)),
      provenance_(std::move(provenance)) {
  cfg_.validate();
  expert_->eval();
  refresh_info();
}

std::shared_ptr<Policy> Policy::untrained_for(const Policy& like, const std::string& vlm_dir,
                                              const VlmOptions& vlm_options, int num_views,
                                              int image_width, int image_height) {
  PolicyConfig cfg = like.config();
  cfg.pooling = "last";
  cfg.vl_memory = "none";
  cfg.vl_tokens = 1;
  cfg.use_views.clear();
  cfg.num_views = num_views;
  cfg.image_width = image_width;
  cfg.image_height = image_height;
  auto vlm = load_vlm(vlm_dir, cfg, vlm_options);
  cfg.vl_dim = vlm->feature_dim();
  return std::make_shared<Policy>(cfg, Expert(cfg), like.stats(), vlm,
                                  nlohmann::json{{"untrained_expert", true}});
}

void Policy::refresh_info() {
  info_ = {{"config", cfg_.to_json()},
           {"norm", stats_.to_json()},
           {"vlm_fingerprint", vlm_ ? vlm_->fingerprint() : std::string()},
           {"provenance", provenance_}};
}

void Policy::save(const std::string& dir) const {
  make_dirs(dir);
  nlohmann::json j = info_;
  j["format"] = "vla.policy/1";
  save_tensors(dir + "/policy.safetensors", named_state(*expert_.ptr(), "expert."),
               {{"format", "vla.policy/1"}});
  if (vlm_) {
    vlm_->save(dir + "/vlm");
    // The fingerprint of the VLM as written (the HF writer may not round-trip bit-exactly):
    // this is what load() checks.
    j["vlm_fingerprint"] = load_vlm(dir + "/vlm", cfg_)->fingerprint();
  }
  write_json_atomic(dir + "/policy.json", j);  // last: a folder with policy.json is complete
}

static std::string exe_dir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  buf[n] = 0;
  return fs::path(buf).parent_path().string();
}

std::string Policy::resolve(const std::string& name) {
  if (name != "default" && name != "no_reuse") {
    VLA_CHECK(file_exists(name + "/policy.json"), "policy folder '", name,
              "' has no policy.json (expected a folder written by `vla train`)");
    return name;
  }
  std::vector<std::string> roots;
  if (const char* e = std::getenv("VLA_ASSETS_DIR")) roots.push_back(std::string(e) + "/..");
  std::string d = exe_dir();
  for (int i = 0; i < 4 && !d.empty(); ++i) {
    roots.push_back(d);
    d = fs::path(d).parent_path().string();
  }
#ifdef VLA_POLICY_SOURCE_DIR
  roots.push_back(VLA_POLICY_SOURCE_DIR);
#endif
  roots.push_back(".");
  for (auto& r : roots) {
    std::string p = r + "/assets/policy/" + name;
    if (file_exists(p + "/policy.json")) return fs::weakly_canonical(p).string();
  }
  throw Error(str_cat("policy '", name, "': assets/policy/", name,
                      "/policy.json not found next to the executable, "
                      "in the source tree, or under $VLA_ASSETS_DIR"));
}

std::shared_ptr<Policy> Policy::load(const std::string& dir_or_default,
                                     const VlmOptions& vlm_options) {
  const std::string dir = resolve(dir_or_default);
  nlohmann::json j = read_json(dir + "/policy.json");
  VLA_CHECK(j.value("format", "") == "vla.policy/1", dir, "/policy.json: unknown format '",
            j.value("format", ""), "'");
  VLA_CHECK(j.contains("config") && j.contains("norm"), dir,
            "/policy.json: missing 'config' or 'norm'");
  PolicyConfig cfg;
  NormStats stats;
  try {
    cfg = PolicyConfig::from_json(j.at("config"));
    stats = NormStats::from_json(j.at("norm"), cfg);
  } catch (const Error& e) {
    throw Error(str_cat(dir, "/policy.json: ", e.what()));
  }
  Expert expert(cfg);
  load_state(*expert, "expert.", load_tensors(dir + "/policy.safetensors"),
             dir + "/policy.safetensors");
  std::shared_ptr<VlmEncoder> vlm;
  const std::string want = j.value("vlm_fingerprint", "");
  if (fs::exists(dir + "/vlm")) {
    vlm = load_vlm(dir + "/vlm", cfg, vlm_options);
    VLA_CHECK(want.empty() || vlm->fingerprint() == want, dir,
              ": the VLM in vlm/ does not match the one this policy was trained with (expected "
              "fingerprint ",
              want, ", found ", vlm->fingerprint(), ")");
    VLA_CHECK(vlm->feature_dim() == cfg.vl_dim, dir, ": VLM feature size ", vlm->feature_dim(),
              " != policy vl_dim ", cfg.vl_dim);
  }
  auto p = std::make_shared<Policy>(cfg, expert, stats, vlm,
                                    j.value("provenance", nlohmann::json::object()));
  p->info_["vlm_fingerprint"] = want;
  p->info_["dir"] = dir;
  return p;
}

torch::Tensor Policy::expert_features(const torch::Tensor& first,
                                      const torch::Tensor& newest) const {
  if (!cfg_.has_memory()) return newest;
  VLA_CHECK(first.defined() && first.sizes() == newest.sizes(),
            "policy: the first and newest VL features differ in shape (",
            first.defined() ? first.sizes() : c10::IntArrayRef{}, " vs ", newest.sizes(), ")");
  return torch::cat({first, newest}, 0);
}

torch::Tensor Policy::encode(const std::vector<Image>& views,
                             const std::string& instruction) const {
  VLA_CHECK(vlm_, "policy: no VLM attached (the policy folder has no vlm/)");
  VLA_CHECK(static_cast<int>(views.size()) == cfg_.num_views, "policy.encode: expected ",
            cfg_.num_views, " views, got ", views.size());
  for (auto& v : views)
    VLA_CHECK(v.width == cfg_.image_width && v.height == cfg_.image_height,
              "policy.encode: expected ", cfg_.image_width, "x", cfg_.image_height, " views, got ",
              v.width, "x", v.height);
  c10::InferenceMode guard;
  return vlm_->encode(views, instruction);
}

void Policy::prepare_vlm(const std::string& instruction) const {
  if (vlm_) vlm_->prepare(cfg_.num_views, cfg_.image_height, cfg_.image_width, instruction);
}

torch::Tensor Policy::act(const torch::Tensor& vl_features, const torch::Tensor& force_window,
                          const torch::Tensor& proprio) const {
  c10::InferenceMode guard;
  auto vl = vl_features.to(torch::kFloat32);
  if (vl.dim() == 1) vl = vl.unsqueeze(0);
  VLA_CHECK(vl.dim() == 2 && vl.size(0) == cfg_.vl_tokens && vl.size(1) == cfg_.vl_dim,
            "policy.act: VL features must be [", cfg_.vl_tokens, ", ", cfg_.vl_dim, "], got ",
            vl_features.sizes());
  VLA_CHECK(force_window.dim() == 2 && force_window.size(1) == cfg_.sensor_channels &&
                force_window.size(0) >= cfg_.sensor_window,
            "policy.act: force window must be [>=", cfg_.sensor_window, ", ", cfg_.sensor_channels,
            "], got ", force_window.sizes());
  auto f = force_window.narrow(0, force_window.size(0) - cfg_.sensor_window, cfg_.sensor_window)
               .to(torch::kFloat32);
  f = stats_.force.normalize(f).unsqueeze(0);
  torch::Tensor p;
  if (cfg_.proprio_dim > 0) {
    VLA_CHECK(proprio.numel() == cfg_.proprio_dim, "policy.act: proprio must have ",
              cfg_.proprio_dim, " values, got ", proprio.numel());
    p = stats_.proprio.normalize(proprio.reshape({1, cfg_.proprio_dim}).to(torch::kFloat32));
  } else {
    p = torch::zeros({1, 0});
  }
  auto out = expert_.ptr()->predict(vl.unsqueeze(0), f, p).squeeze(0);
  return stats_.action.denormalize(out);
}

}  // namespace vla::policy
