// Qwen2.5-VL config.json parsing (transformers 4.x flat and 5.x nested layouts) and writing.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/core.h"
#include "weights/weights.h"

namespace vla {

namespace {
using json = nlohmann::json;

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string dirname_of(const std::string& path) {
  auto p = path.find_last_of('/');
  return p == std::string::npos ? "." : path.substr(0, p);
}

// A JSON object with a name for error messages ("text_config", "vision_config", "").
struct Section {
  const json* j = nullptr;
  std::string prefix;  // "text_config." etc.
  std::string source;

  bool has(const std::string& key) const {
    return j && j->is_object() && j->contains(key) && !(*j)[key].is_null();
  }
  std::string where(const std::string& key) const { return str_cat(source, ": ", prefix, key); }
  int64_t get_int(const std::string& key) const {
    const auto& v = (*j)[key];
    if (v.is_number_integer()) return v.get<int64_t>();
    // A float that holds an integer (e.g. 2048.0) is accepted; the range check comes before the
    // cast (casting an out-of-range double is undefined behaviour; found by fuzz/config_fuzz).
    const double d = v.is_number_float() ? v.get<double>() : 0.5;
    VLA_CHECK(std::isfinite(d) && std::abs(d) < 9.0e18 && d == std::floor(d), where(key),
              " must be an integer, got ", v.dump());
    return static_cast<int64_t>(d);
  }
  double get_double(const std::string& key) const {
    const auto& v = (*j)[key];
    VLA_CHECK(v.is_number(), where(key), " must be a number, got ", v.dump());
    return v.get<double>();
  }
  bool get_bool(const std::string& key) const {
    const auto& v = (*j)[key];
    VLA_CHECK(v.is_boolean(), where(key), " must be true or false, got ", v.dump());
    return v.get<bool>();
  }
  std::string get_string(const std::string& key) const {
    const auto& v = (*j)[key];
    VLA_CHECK(v.is_string(), where(key), " must be a string, got ", v.dump());
    return v.get<std::string>();
  }
  std::vector<int64_t> get_int_list(const std::string& key) const {
    const auto& v = (*j)[key];
    VLA_CHECK(v.is_array(), where(key), " must be a list of integers, got ", v.dump());
    std::vector<int64_t> out;
    for (const auto& e : v) {
      VLA_CHECK(e.is_number_integer(), where(key), " must be a list of integers, got ", v.dump());
      out.push_back(e.get<int64_t>());
    }
    return out;
  }
  Section sub(const std::string& key) const {
    Section s;
    s.source = source;
    s.prefix = prefix + key + ".";
    if (has(key)) {
      VLA_CHECK((*j)[key].is_object(), where(key), " must be an object, got ", (*j)[key].dump());
      s.j = &(*j)[key];
    }
    return s;
  }
};

// Looks a key up in several sections, first match wins.
struct Lookup {
  std::vector<Section> sections;
  const Section* find(const std::string& key) const {
    for (const auto& s : sections)
      if (s.has(key)) return &s;
    return nullptr;
  }
  void get(const std::string& key, int64_t& out) const {
    if (auto* s = find(key)) out = s->get_int(key);
  }
  void get(const std::string& key, double& out) const {
    if (auto* s = find(key)) out = s->get_double(key);
  }
  void get(const std::string& key, bool& out) const {
    if (auto* s = find(key)) out = s->get_bool(key);
  }
  void get(const std::string& key, std::string& out) const {
    if (auto* s = find(key)) out = s->get_string(key);
  }
  void get(const std::string& key, std::vector<int64_t>& out) const {
    if (auto* s = find(key)) out = s->get_int_list(key);
  }
  int64_t required_int(const std::string& key, const std::string& what) const {
    auto* s = find(key);
    VLA_CHECK(s, sections.front().source, ": missing required field '", key, "' (", what, ")");
    return s->get_int(key);
  }
};

// eos_token_id may be an int or a list of ints.
std::vector<int64_t> id_list(const Section& s, const std::string& key) {
  const auto& v = (*s.j)[key];
  if (v.is_array()) return s.get_int_list(key);
  return {s.get_int(key)};
}
}  // namespace

Qwen25VLConfig Qwen25VLConfig::from_json(const nlohmann::json& j, const std::string& source) {
  VLA_CHECK(j.is_object(), source, ": config must be a JSON object");
  Qwen25VLConfig c;
  Section top{&j, "", source};
  if (top.has("model_type")) {
    std::string mt = top.get_string("model_type");
    VLA_CHECK(mt == "qwen2_5_vl" || mt == "qwen2_vl", source, ": model_type is '", mt,
              "', expected 'qwen2_5_vl'");
    if (mt == "qwen2_vl") log_warn(source, ": model_type qwen2_vl read as Qwen2.5-VL");
  }
  Section text = top.sub("text_config");
  c.layout = text.j ? "transformers-5" : "transformers-4";
  // 5.x: text_config first, then top level (some exports keep fields at both places).
  Lookup t;
  if (text.j) t.sections.push_back(text);
  t.sections.push_back(top);

  auto& tc = c.text;
  tc.vocab_size = t.required_int("vocab_size", "text vocabulary size");
  tc.hidden_size = t.required_int("hidden_size", "text hidden size");
  tc.intermediate_size = t.required_int("intermediate_size", "text MLP size");
  tc.num_hidden_layers = t.required_int("num_hidden_layers", "text layers");
  tc.num_attention_heads = t.required_int("num_attention_heads", "text attention heads");
  tc.num_key_value_heads = tc.num_attention_heads;
  t.get("num_key_value_heads", tc.num_key_value_heads);
  t.get("max_position_embeddings", tc.max_position_embeddings);
  t.get("rms_norm_eps", tc.rms_norm_eps);
  t.get("rope_theta", tc.rope_theta);
  t.get("hidden_act", tc.hidden_act);
  t.get("use_sliding_window", tc.use_sliding_window);
  if (auto* s = t.find("head_dim")) {
    int64_t hd = s->get_int("head_dim");
    VLA_CHECK(tc.num_attention_heads > 0 && hd * tc.num_attention_heads == tc.hidden_size,
              s->where("head_dim"), " = ", hd,
              " differs from hidden_size / num_attention_heads, which Qwen2.5 requires");
  }
  // Tied embeddings: the top level is authoritative in 5.x; 4.x has it there too.
  if (top.has("tie_word_embeddings"))
    tc.tie_word_embeddings = top.get_bool("tie_word_embeddings");
  else if (text.has("tie_word_embeddings"))
    tc.tie_word_embeddings = text.get_bool("tie_word_embeddings");

  // Rotary: rope_parameters (5.x) or rope_scaling (4.x), in text_config or at the top level.
  bool found_rope = false;
  for (const auto& sec : t.sections) {
    for (const char* key : {"rope_parameters", "rope_scaling"}) {
      if (found_rope || !sec.has(key)) continue;
      Section r = sec.sub(key);
      std::string type;
      if (r.has("rope_type")) type = r.get_string("rope_type");
      if (r.has("type") && (type.empty() || type == "default")) type = r.get_string("type");
      VLA_CHECK(type.empty() || type == "default" || type == "mrope", r.where("rope_type"), " is '",
                type, "': only the default/mrope rotary of Qwen2.5-VL is supported");
      if (r.has("rope_theta")) tc.rope_theta = r.get_double("rope_theta");
      if (r.has("mrope_section")) {
        tc.mrope_section = r.get_int_list("mrope_section");
        found_rope = true;
      }
    }
  }
  VLA_CHECK(!tc.mrope_section.empty(), source,
            ": missing rope_scaling.mrope_section / rope_parameters.mrope_section (Qwen2.5-VL "
            "needs the M-RoPE split, e.g. [16, 24, 24])");

  // Vision tower.
  Section v = top.sub("vision_config");
  if (!v.j) log_warn(source, ": no vision_config; using transformers' Qwen2.5-VL vision defaults");
  Lookup vl{{v}};
  auto& vc = c.vision;
  vl.get("depth", vc.depth);
  vl.get("hidden_size", vc.hidden_size);
  vl.get("intermediate_size", vc.intermediate_size);
  vl.get("num_heads", vc.num_heads);
  vl.get("in_chans", vc.in_channels);
  vl.get("in_channels", vc.in_channels);
  vl.get("spatial_patch_size", vc.patch_size);
  vl.get("patch_size", vc.patch_size);
  vl.get("temporal_patch_size", vc.temporal_patch_size);
  vl.get("spatial_merge_size", vc.spatial_merge_size);
  vl.get("window_size", vc.window_size);
  vl.get("out_hidden_size", vc.out_hidden_size);
  vl.get("fullatt_block_indexes", vc.fullatt_block_indexes);
  vl.get("tokens_per_second", vc.tokens_per_second);
  vl.get("hidden_act", vc.hidden_act);
  if (v.has("rope_parameters")) {
    Section r = v.sub("rope_parameters");
    if (r.has("rope_theta")) vc.rope_theta = r.get_double("rope_theta");
  }

  // Special tokens: top level, then text_config.
  Lookup ids;
  ids.sections.push_back(top);
  if (text.j) ids.sections.push_back(text);
  c.image_token_id = ids.required_int("image_token_id", "the <|image_pad|> token id");
  c.vision_start_token_id = ids.required_int("vision_start_token_id", "<|vision_start|> id");
  c.vision_end_token_id = ids.required_int("vision_end_token_id", "<|vision_end|> id");
  ids.get("video_token_id", c.video_token_id);
  ids.get("bos_token_id", c.bos_token_id);
  ids.get("pad_token_id", c.pad_token_id);
  if (auto* s = ids.find("eos_token_id")) c.eos_token_ids = id_list(*s, "eos_token_id");
  if (top.has("torch_dtype")) c.torch_dtype = top.get_string("torch_dtype");
  if (c.torch_dtype.empty() && top.has("dtype")) c.torch_dtype = top.get_string("dtype");
  if (c.torch_dtype.empty() && text.has("dtype")) c.torch_dtype = text.get_string("dtype");
  c.validate(source);
  return c;
}

Qwen25VLConfig Qwen25VLConfig::load(const std::string& dir_or_file) {
  std::string path = is_dir(dir_or_file) ? dir_or_file + "/config.json" : dir_or_file;
  VLA_CHECK(file_exists(path), "config ", path, " not found");
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw Error(str_cat(path, ": invalid JSON: ", e.what()));
  }
  Qwen25VLConfig c = from_json(j, path);
  const std::string gen = dirname_of(path) + "/generation_config.json";
  if (file_exists(gen)) {
    json g;
    try {
      g = json::parse(read_file(gen));
    } catch (const json::exception& e) {
      throw Error(str_cat(gen, ": invalid JSON: ", e.what()));
    }
    Section s{&g, "", gen};
    if (s.has("bos_token_id")) c.bos_token_id = s.get_int("bos_token_id");
    if (s.has("pad_token_id")) c.pad_token_id = s.get_int("pad_token_id");
    if (s.has("eos_token_id")) c.eos_token_ids = id_list(s, "eos_token_id");
    c.validate(gen);
  }
  return c;
}

void Qwen25VLConfig::validate(const std::string& source) const {
  const auto& t = text;
  auto positive = [&](int64_t v, const char* name) {
    VLA_CHECK(v > 0, source, ": ", name, " must be positive, got ", v);
  };
  positive(t.vocab_size, "vocab_size");
  positive(t.hidden_size, "hidden_size");
  positive(t.intermediate_size, "intermediate_size");
  positive(t.num_hidden_layers, "num_hidden_layers");
  positive(t.num_attention_heads, "num_attention_heads");
  positive(t.num_key_value_heads, "num_key_value_heads");
  positive(t.max_position_embeddings, "max_position_embeddings");
  VLA_CHECK(t.rms_norm_eps > 0, source, ": rms_norm_eps must be positive, got ", t.rms_norm_eps);
  VLA_CHECK(t.rope_theta > 0, source, ": rope_theta must be positive, got ", t.rope_theta);
  VLA_CHECK(t.hidden_size % t.num_attention_heads == 0, source, ": hidden_size ", t.hidden_size,
            " is not divisible by num_attention_heads ", t.num_attention_heads);
  VLA_CHECK(t.num_attention_heads % t.num_key_value_heads == 0, source, ": num_attention_heads ",
            t.num_attention_heads, " is not a multiple of num_key_value_heads ",
            t.num_key_value_heads);
  VLA_CHECK(t.mrope_section.size() == 3, source,
            ": mrope_section must have 3 entries (t, h, w), got ", shape_str(t.mrope_section));
  for (auto m : t.mrope_section)
    VLA_CHECK(m > 0, source, ": mrope_section entries must be positive, got ",
              shape_str(t.mrope_section));
  int64_t msum = std::accumulate(t.mrope_section.begin(), t.mrope_section.end(), int64_t{0});
  VLA_CHECK(msum * 2 == t.head_dim(), source, ": sum(mrope_section) * 2 = ", msum * 2, " for ",
            shape_str(t.mrope_section),
            " must equal head_dim = hidden_size / num_attention_heads = ", t.head_dim());
  static const std::vector<std::string> acts = {"silu",       "swish", "gelu", "gelu_pytorch_tanh",
                                                "quick_gelu", "relu"};
  VLA_CHECK(std::find(acts.begin(), acts.end(), t.hidden_act) != acts.end(), source,
            ": unsupported hidden_act '", t.hidden_act, "'");
  VLA_CHECK(std::find(acts.begin(), acts.end(), vision.hidden_act) != acts.end(), source,
            ": unsupported vision_config.hidden_act '", vision.hidden_act, "'");

  const auto& v = vision;
  positive(v.depth, "vision_config.depth");
  positive(v.hidden_size, "vision_config.hidden_size");
  positive(v.intermediate_size, "vision_config.intermediate_size");
  positive(v.num_heads, "vision_config.num_heads");
  positive(v.in_channels, "vision_config.in_channels");
  positive(v.patch_size, "vision_config.patch_size");
  positive(v.temporal_patch_size, "vision_config.temporal_patch_size");
  positive(v.spatial_merge_size, "vision_config.spatial_merge_size");
  positive(v.window_size, "vision_config.window_size");
  positive(v.out_hidden_size, "vision_config.out_hidden_size");
  VLA_CHECK(v.hidden_size % v.num_heads == 0, source, ": vision_config.hidden_size ", v.hidden_size,
            " is not divisible by vision_config.num_heads ", v.num_heads);
  VLA_CHECK(v.head_dim() % 4 == 0, source, ": vision head_dim ", v.head_dim(),
            " must be a multiple of 4 (2D rotary over height and width)");
  VLA_CHECK(v.window_size % (v.patch_size * v.spatial_merge_size) == 0, source,
            ": vision_config.window_size ", v.window_size, " must be a multiple of patch_size * ",
            "spatial_merge_size = ", v.patch_size * v.spatial_merge_size);
  for (auto b : v.fullatt_block_indexes)
    VLA_CHECK(b >= 0 && b < v.depth, source, ": vision_config.fullatt_block_indexes entry ", b,
              " is outside [0, depth=", v.depth, ")");
  VLA_CHECK(v.out_hidden_size == t.hidden_size, source, ": vision_config.out_hidden_size ",
            v.out_hidden_size, " must equal the text hidden_size ", t.hidden_size,
            " (the merger feeds the language model)");
  VLA_CHECK(v.tokens_per_second > 0, source, ": vision_config.tokens_per_second must be positive");

  auto in_vocab = [&](int64_t id, const char* name, bool required) {
    if (!required && id < 0) return;
    VLA_CHECK(id >= 0 && id < t.vocab_size, source, ": ", name, " ", id,
              " is outside the vocabulary [0, ", t.vocab_size, ")");
  };
  in_vocab(image_token_id, "image_token_id", true);
  in_vocab(vision_start_token_id, "vision_start_token_id", true);
  in_vocab(vision_end_token_id, "vision_end_token_id", true);
  in_vocab(video_token_id, "video_token_id", false);
  // bos/eos/pad are checked loosely: transformers' defaults put them at 151643+ even for small
  // vocabularies (they are only used for generation); warn instead of failing.
  for (auto e : eos_token_ids)
    if (e < 0 || e >= t.vocab_size)
      log_warn(source, ": eos_token_id ", e, " is outside the vocabulary of ", t.vocab_size);
}

nlohmann::json Qwen25VLConfig::to_json() const {
  json tc = {
      {"model_type", "qwen2_5_vl_text"},
      {"vocab_size", text.vocab_size},
      {"hidden_size", text.hidden_size},
      {"intermediate_size", text.intermediate_size},
      {"num_hidden_layers", text.num_hidden_layers},
      {"num_attention_heads", text.num_attention_heads},
      {"num_key_value_heads", text.num_key_value_heads},
      {"max_position_embeddings", text.max_position_embeddings},
      {"rms_norm_eps", text.rms_norm_eps},
      {"hidden_act", text.hidden_act},
      {"use_sliding_window", text.use_sliding_window},
      {"sliding_window", nullptr},
      {"attention_dropout", 0.0},
      {"rope_parameters",
       {{"rope_type", "default"},
        {"type", "mrope"},
        {"mrope_section", text.mrope_section},
        {"rope_theta", text.rope_theta}}},
  };
  if (bos_token_id >= 0) tc["bos_token_id"] = bos_token_id;
  if (!eos_token_ids.empty())
    tc["eos_token_id"] = eos_token_ids.size() == 1 ? json(eos_token_ids[0]) : json(eos_token_ids);
  tc["pad_token_id"] = pad_token_id >= 0 ? json(pad_token_id) : json(nullptr);
  json vc = {
      {"model_type", "qwen2_5_vl_vision"},
      {"depth", vision.depth},
      {"hidden_size", vision.hidden_size},
      {"intermediate_size", vision.intermediate_size},
      {"num_heads", vision.num_heads},
      {"in_channels", vision.in_channels},
      {"patch_size", vision.patch_size},
      {"temporal_patch_size", vision.temporal_patch_size},
      {"spatial_merge_size", vision.spatial_merge_size},
      {"window_size", vision.window_size},
      {"out_hidden_size", vision.out_hidden_size},
      {"fullatt_block_indexes", vision.fullatt_block_indexes},
      {"tokens_per_second", vision.tokens_per_second},
      {"hidden_act", vision.hidden_act},
      {"rope_parameters", {{"rope_type", "axial"}, {"rope_theta", vision.rope_theta}}},
  };
  json j = {
      {"architectures", {"Qwen2_5_VLForConditionalGeneration"}},
      {"model_type", "qwen2_5_vl"},
      {"text_config", tc},
      {"vision_config", vc},
      {"image_token_id", image_token_id},
      {"vision_start_token_id", vision_start_token_id},
      {"vision_end_token_id", vision_end_token_id},
      {"tie_word_embeddings", text.tie_word_embeddings},
  };
  if (video_token_id >= 0) j["video_token_id"] = video_token_id;
  if (!torch_dtype.empty()) j["dtype"] = torch_dtype;
  return j;
}

nlohmann::json Qwen25VLConfig::generation_config_json() const {
  json g = json::object();
  if (bos_token_id >= 0) g["bos_token_id"] = bos_token_id;
  if (pad_token_id >= 0) g["pad_token_id"] = pad_token_id;
  if (!eos_token_ids.empty())
    g["eos_token_id"] = eos_token_ids.size() == 1 ? json(eos_token_ids[0]) : json(eos_token_ids);
  return g;
}

void Qwen25VLConfig::save(const std::string& dir) const {
  validate(dir + "/config.json");
  make_dirs(dir);
  write_json_atomic(dir + "/config.json", to_json());
  write_json_atomic(dir + "/generation_config.json", generation_config_json());
}

}  // namespace vla
