// VL feature cache: features per (episode, 10 Hz tick), keyed by VLM + image content + prompt.
#include <cstdio>
#include <filesystem>

#include "train/train.h"

namespace vla::train {

std::string image_hash(const Image& img) {
  std::string s = str_cat(img.width, "x", img.height, "x", img.channels, ":");
  s += fnv1a_hex(img.pixels.data(), img.pixels.size());
  return fnv1a_hex(s.data(), s.size());
}

std::string feature_key(const std::string& vlm_fingerprint, const std::vector<Image>& views,
                        const std::string& prompt) {
  std::string s = vlm_fingerprint + "|";
  for (auto& v : views) s += image_hash(v) + ",";
  s += "|" + prompt;
  return fnv1a_hex(s.data(), s.size());
}

static std::string feature_file(const std::string& dir, const std::string& ep) {
  return dir + "/features_" + ep + ".safetensors";
}

static std::vector<Image> tick_views(const dataset::Dataset& ds, size_t i, int tick, int nviews) {
  std::vector<Image> v;
  for (int k = 0; k < nviews; ++k) v.push_back(ds.load_frame(i, tick, k));
  return v;
}

void FeatureCache::build(const dataset::Dataset& ds, policy::VlmEncoder& vlm,
                         const std::string& out_dir, bool progress) {
  make_dirs(out_dir);
  const std::string fp = vlm.fingerprint();
  nlohmann::json index;
  if (file_exists(out_dir + "/index.json")) {
    index = read_json(out_dir + "/index.json");
    if (index.value("vlm_fingerprint", "") != fp) index = nlohmann::json();  // other VLM: rebuild
  }
  if (!index.is_object()) index = nlohmann::json::object();
  index["format"] = "vla.feature_cache/1";
  index["vlm_fingerprint"] = fp;
  if (!index.contains("episodes")) index["episodes"] = nlohmann::json::object();
  int64_t total = 0;
  for (size_t i = 0; i < ds.size(); ++i) total += ds.meta(i).value("num_ticks", 0);
  std::unique_ptr<ProgressBar> bar;
  if (progress) bar = std::make_unique<ProgressBar>("cache", total);
  Stopwatch sw;
  int64_t done = 0;
  for (size_t i = 0; i < ds.size(); ++i) {
    const auto& meta = ds.meta(i);
    const std::string name = ds.name(i);
    const std::string prompt = meta.value("instruction", "");
    const int ticks = meta.value("num_ticks", 0);
    const int nviews = static_cast<int>(meta.value("views", nlohmann::json::array()).size());
    VLA_CHECK(ticks > 0 && nviews > 0, "cache: episode ", name, " has no frames");
    std::vector<std::string> keys;
    std::vector<std::vector<Image>> views;
    for (int t = 0; t < ticks; ++t) {
      views.push_back(tick_views(ds, i, t, nviews));
      keys.push_back(feature_key(fp, views.back(), prompt));
    }
    auto& entry = index["episodes"][name];
    if (entry.is_object() && entry.value("keys", std::vector<std::string>()) == keys &&
        file_exists(feature_file(out_dir, name))) {
      done += ticks;
      if (bar) bar->tick(ticks, "reused");
      continue;
    }
    // All ticks of an episode in one padded forward (a GPU is idle with one frame at a time).
    torch::Tensor all;  // [ticks, tokens, dim]
    {
      c10::InferenceMode g;
      std::vector<const std::vector<Image>*> ptrs;
      for (const auto& v : views) ptrs.push_back(&v);
      all = vlm.encode_batch(ptrs, std::vector<std::string>(ptrs.size(), prompt)).contiguous();
      done += ticks;
      if (bar)
        bar->tick(ticks, str_cat(fmt_double(done / std::max(1e-9, sw.elapsed_s()), 1), " ticks/s"));
    }
    policy::save_tensors(feature_file(out_dir, name), {{"features", all}},
                         {{"vlm_fingerprint", fp}, {"episode", name}});
    entry = {{"keys", keys}, {"ticks", ticks}, {"shape", all.sizes().vec()}, {"prompt", prompt}};
    index["feature_shape"] = {all.size(1), all.size(2)};
    write_json_atomic(out_dir + "/index.json", index);  // after each episode: resumable
  }
  if (bar) bar->finish();
  write_json_atomic(out_dir + "/index.json", index);
}

FeatureCache FeatureCache::open(const std::string& dir) {
  VLA_CHECK(file_exists(dir + "/index.json"), "feature cache '", dir,
            "': no index.json (make one with `vla cache`)");
  FeatureCache c;
  c.dir_ = dir;
  c.index_ = read_json(dir + "/index.json");
  VLA_CHECK(c.index_.value("format", "") == "vla.feature_cache/1", dir,
            "/index.json: not a vla feature cache");
  c.fingerprint_ = c.index_.value("vlm_fingerprint", "");
  return c;
}

void FeatureCache::validate(const dataset::Dataset& ds, const std::string& vlm_fingerprint,
                            bool check_images) const {
  VLA_CHECK(fingerprint_ == vlm_fingerprint, "feature cache '", dir_,
            "' is stale: it was made with VLM ", fingerprint_, " but training uses VLM ",
            vlm_fingerprint, " (re-run `vla cache`)");
  for (size_t i = 0; i < ds.size(); ++i) {
    const std::string name = ds.name(i);
    const auto& eps = index_.at("episodes");
    VLA_CHECK(eps.contains(name), "feature cache '", dir_, "' has no features for episode ", name,
              " (re-run `vla cache`)");
    const auto& e = eps.at(name);
    const auto& meta = ds.meta(i);
    const std::string prompt = meta.value("instruction", "");
    VLA_CHECK(e.value("prompt", "") == prompt, "feature cache '", dir_, "': episode ", name,
              " was cached with a different prompt (stale; re-run `vla cache`)");
    auto keys = e.value("keys", std::vector<std::string>());
    const int ticks = meta.value("num_ticks", 0);
    VLA_CHECK(static_cast<int>(keys.size()) == ticks, "feature cache '", dir_, "': episode ", name,
              " has ", keys.size(), " cached ticks, dataset has ", ticks, " (stale)");
    if (!check_images) continue;
    const int nviews = static_cast<int>(meta.value("views", nlohmann::json::array()).size());
    for (int t = 0; t < ticks; ++t) {
      auto k = feature_key(vlm_fingerprint, tick_views(ds, i, t, nviews), prompt);
      VLA_CHECK(k == keys[t], "feature cache '", dir_, "': stale key for episode ", name, " tick ",
                t, " (images or prompt changed; re-run `vla cache`)");
    }
  }
}

torch::Tensor FeatureCache::features(const std::string& episode) const {
  const std::string path = feature_file(dir_, episode);
  for (auto& kv : policy::load_tensors(path))
    if (kv.first == "features") return kv.second.to(torch::kFloat32);
  throw Error(str_cat(path, ": no tensor 'features'"));
}

}  // namespace vla::train
