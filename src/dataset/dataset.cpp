// Episode dataset: crash-safe writer and validating reader.
#include "dataset/dataset.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <type_traits>

namespace vla::dataset {
namespace fs = std::filesystem;
namespace {

constexpr int kForceCols = 7;

std::string episode_name(size_t i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "episode_%06zu", i);
  return buf;
}

std::string frame_file(int tick, int view, const std::string& ext) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "frames/v%d_%04d.%s", view, tick, ext.c_str());
  return buf;
}

void write_plain(const std::string& path, const void* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  VLA_CHECK(f, "dataset: cannot create ", path);
  size_t n = size ? std::fwrite(data, 1, size, f) : 0;
  int rc = std::fclose(f);
  VLA_CHECK(n == size && rc == 0, "dataset: short write to ", path);
}

int64_t file_size(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.st_size);
}

nlohmann::json port_to_json(const PortMeta& p) {
  nlohmann::json j = {{"color", p.color},
                      {"color_ko", p.color_ko},
                      {"pos", p.pos},
                      {"rgb", p.rgb},
                      {"radius", p.radius}};
  if (!p.pixels.empty()) j["pixels"] = p.pixels;
  return j;
}

// Typed field access with errors naming the episode, file and field.
template <typename T>
T field(const nlohmann::json& j, const char* key, const std::string& where) {
  VLA_CHECK(j.is_object() && j.contains(key), where, ": missing field '", key, "'");
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    // Integers must be JSON integers within T's range: nlohmann's get<int>() of 2.7e54 casts an
    // out-of-range double (undefined behaviour; found by fuzz/dataset_fuzz).
    const auto& v = j.at(key);
    VLA_CHECK(v.is_number_integer(), where, ": field '", key, "' must be an integer, got ",
              v.dump());
    const bool fits =
        v.is_number_unsigned()
            ? v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max())
            : v.get<int64_t>() >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
                  (v.get<int64_t>() < 0 ||
                   static_cast<uint64_t>(v.get<int64_t>()) <=
                       static_cast<uint64_t>(std::numeric_limits<T>::max()));
    VLA_CHECK(fits, where, ": field '", key, "' = ", v.dump(), " is out of range");
    return v.get<T>();
  }
  try {
    return j.at(key).get<T>();
  } catch (const std::exception& e) {
    throw Error(str_cat(where, ": field '", key, "' has the wrong type (", e.what(), ")"));
  }
}

torch::Tensor read_floats(const std::string& path, int64_t rows, int64_t cols,
                          const std::string& where) {
  const int64_t want = rows * cols * 4;
  const int64_t have = file_size(path);
  VLA_CHECK(have >= 0, where, ": missing file ", fs::path(path).filename().string());
  VLA_CHECK(have == want, where, ": ", fs::path(path).filename().string(), " has ", have,
            " bytes, expected ", want, " (", rows, " x ", cols, " float32)");
  std::string bytes = read_file(path);
  VLA_CHECK(static_cast<int64_t>(bytes.size()) == want, where, ": ",
            fs::path(path).filename().string(), " changed while reading");
  torch::Tensor t = torch::empty({rows, cols}, torch::kFloat32);
  if (want) std::memcpy(t.data_ptr<float>(), bytes.data(), static_cast<size_t>(want));
  return t;
}

}  // namespace

// ------------------------------------------------------------------------------------ writer
DatasetWriter::DatasetWriter(std::string dir, std::string image_format, int jpeg_quality)
    : dir_(std::move(dir)), format_(std::move(image_format)), quality_(jpeg_quality) {
  VLA_CHECK(format_ == "png" || format_ == "jpg", "dataset: image format must be png or jpg, got '",
            format_, "'");
  make_dirs(dir_);
  const std::string index_path = dir_ + "/index.json";
  if (file_exists(index_path)) {
    index_ = read_json(index_path);
    VLA_CHECK(index_.contains("episodes") && index_["episodes"].is_array(), index_path,
              ": no 'episodes' array");
    count_ = index_["episodes"].size();
  } else {
    index_ = {{"format_version", kFormatVersion}, {"episodes", nlohmann::json::array()}};
  }
  // Episodes renamed into place after the last index write (the index is written every
  // index_every episodes) are complete: list them again, in order.
  for (;;) {
    const std::string dir = dir_ + "/" + episode_name(count_);
    if (!file_exists(dir + "/meta.json")) break;
    const auto meta = read_json(dir + "/meta.json");
    index_["episodes"].push_back({{"name", episode_name(count_)},
                                  {"seed", meta.value("seed", uint64_t{0})},
                                  {"success", meta.value("success", false)},
                                  {"reason", meta.value("reason", std::string())},
                                  {"instruction", meta.value("instruction", std::string())},
                                  {"num_ticks", meta.value("num_ticks", 0)}});
    ++count_;
    dirty_ = true;
  }
  if (dirty_) flush();
  // Leftovers of a crashed writer are never listed in the index: remove them.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    if (e.path().filename().string().rfind(".tmp_episode_", 0) != 0) continue;
    try {
      remove_tree(e.path().string());
    } catch (const Error& err) {
      log_warn("dataset: leftover of a crashed writer not removed: ", err.what());
    }
  }
}

std::vector<std::vector<uint8_t>> DatasetWriter::encode_frames(const EpisodeData& ep) const {
  std::vector<std::vector<uint8_t>> out;
  for (const auto& tick : ep.frames)
    for (const Image& im : tick)
      out.push_back(format_ == "png" ? encode_png(im) : encode_jpeg(im, quality_));
  return out;
}

size_t DatasetWriter::write(const EpisodeData& ep) { return write(ep, encode_frames(ep)); }

size_t DatasetWriter::write(const EpisodeData& ep,
                            const std::vector<std::vector<uint8_t>>& encoded) {
  const int views = static_cast<int>(ep.view_names.size());
  VLA_CHECK(views > 0, "dataset: episode has no views");
  VLA_CHECK(ep.width > 0 && ep.height > 0, "dataset: episode has no resolution");
  for (size_t t = 0; t < ep.frames.size(); ++t) {
    VLA_CHECK(static_cast<int>(ep.frames[t].size()) == views, "dataset: tick ", t, " has ",
              ep.frames[t].size(), " views, expected ", views);
    for (const Image& im : ep.frames[t]) {
      VLA_CHECK(im.width == ep.width && im.height == ep.height && im.channels == 3,
                "dataset: tick ", t, " frame is ", im.width, "x", im.height, "x", im.channels,
                ", expected ", ep.width, "x", ep.height, "x3");
    }
  }
  VLA_CHECK(ep.actions.size() == ep.proprio.size(), "dataset: ", ep.actions.size(), " actions but ",
            ep.proprio.size(), " proprio rows");
  const size_t idx = count_;
  const std::string name = episode_name(idx);
  const std::string tmp = str_cat(dir_, "/.tmp_", name, "_", ::getpid());
  const std::string final_dir = dir_ + "/" + name;
  VLA_CHECK(!file_exists(final_dir), "dataset: ", final_dir, " exists but is not in index.json");
  remove_tree(tmp);
  make_dirs(tmp + "/frames");
  VLA_CHECK(encoded.size() == ep.frames.size() * static_cast<size_t>(views),
            "dataset: ", encoded.size(), " encoded frames for ", ep.frames.size(), " ticks x ",
            views, " views");
  for (size_t t = 0; t < ep.frames.size(); ++t) {
    for (int v = 0; v < views; ++v) {
      const auto& bytes = encoded[t * static_cast<size_t>(views) + static_cast<size_t>(v)];
      write_plain(tmp + "/" + frame_file(static_cast<int>(t), v, format_), bytes.data(),
                  bytes.size());
    }
  }
  write_file_atomic(tmp + "/force.bin", ep.force.data(), ep.force.size() * sizeof(ep.force[0]));
  write_file_atomic(tmp + "/actions.bin", ep.actions.data(),
                    ep.actions.size() * sizeof(ep.actions[0]));
  write_file_atomic(tmp + "/proprio.bin", ep.proprio.data(),
                    ep.proprio.size() * sizeof(ep.proprio[0]));
  nlohmann::json ports = nlohmann::json::array();
  for (const auto& p : ep.ports) ports.push_back(port_to_json(p));
  nlohmann::json meta = {
      {"format_version", kFormatVersion},
      {"name", name},
      {"instruction", ep.instruction},
      {"seed", ep.seed},
      {"success", ep.success},
      {"reason", ep.reason},
      {"duration_s", ep.duration_s},
      {"peak_force", ep.peak_force},
      {"target", ep.target},
      {"target_color", ep.target >= 0 && ep.target < static_cast<int>(ep.ports.size())
                           ? ep.ports[ep.target].color
                           : ""},
      {"ports", ports},
      {"views", ep.view_names},
      {"width", ep.width},
      {"height", ep.height},
      {"image_format", format_},
      {"num_ticks", ep.frames.size()},
      {"num_force", ep.force.size()},
      {"num_actions", ep.actions.size()},
      {"frame_hz", kFrameHz},
      {"action_hz", kActionHz},
      {"force_hz", kForceHz},
      {"force_columns", {"t", "fx", "fy", "fz", "tx", "ty", "tz"}},
      {"extra", ep.extra},
  };
  write_json_atomic(tmp + "/meta.json", meta);
  std::error_code ec;
  fs::rename(tmp, final_dir, ec);
  VLA_CHECK(!ec, "dataset: cannot rename ", tmp, " to ", final_dir, ": ", ec.message());
  index_["episodes"].push_back({{"name", name},
                                {"seed", ep.seed},
                                {"success", ep.success},
                                {"reason", ep.reason},
                                {"instruction", ep.instruction},
                                {"num_ticks", ep.frames.size()}});
  ++count_;
  dirty_ = true;
  if (count_ % static_cast<size_t>(index_every_) == 0) flush();
  return idx;
}

void DatasetWriter::flush() {
  if (!dirty_) return;
  write_json_atomic(dir_ + "/index.json", index_);
  dirty_ = false;
}

DatasetWriter::~DatasetWriter() {
  try {
    flush();
  } catch (const std::exception& e) {
    log_warn("dataset: index of ", dir_, " not written: ", e.what());
  }
}

void DatasetWriter::set_index_every(int n) {
  VLA_CHECK(n >= 1, "dataset: index interval must be >= 1, got ", n);
  index_every_ = n;
}

// ------------------------------------------------------------------------------------ reader
nlohmann::json validate_episode(const std::string& episode_dir) {
  const std::string name = fs::path(episode_dir).filename().string();
  const std::string meta_path = episode_dir + "/meta.json";
  const std::string where = str_cat("episode ", name, ": meta.json");
  VLA_CHECK(file_exists(meta_path), "episode ", name, ": missing meta.json in ", episode_dir);
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(read_file(meta_path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(where, ": bad JSON (", e.what(), ")"));
  }
  VLA_CHECK(meta.is_object(), where, ": not a JSON object");
  const int version = field<int>(meta, "format_version", where);
  VLA_CHECK(version == kFormatVersion, where, ": format_version ", version, ", this build reads ",
            kFormatVersion);
  field<std::string>(meta, "instruction", where);
  field<uint64_t>(meta, "seed", where);
  field<bool>(meta, "success", where);
  field<std::string>(meta, "reason", where);
  const int width = field<int>(meta, "width", where);
  const int height = field<int>(meta, "height", where);
  VLA_CHECK(width > 0 && height > 0, where, ": bad resolution ", width, "x", height);
  const auto views = field<std::vector<std::string>>(meta, "views", where);
  VLA_CHECK(!views.empty(), where, ": no views");
  const std::string fmt = field<std::string>(meta, "image_format", where);
  VLA_CHECK(fmt == "png" || fmt == "jpg", where, ": unknown image_format '", fmt, "'");
  const int64_t ticks = field<int64_t>(meta, "num_ticks", where);
  const int64_t nf = field<int64_t>(meta, "num_force", where);
  const int64_t na = field<int64_t>(meta, "num_actions", where);
  VLA_CHECK(ticks >= 0 && nf >= 0 && na >= 0, where, ": negative counts");
  const int target = field<int>(meta, "target", where);
  const auto ports = field<nlohmann::json>(meta, "ports", where);
  VLA_CHECK(ports.is_array() && target >= 0 && target < static_cast<int>(ports.size()), where,
            ": target ", target, " does not index the ", ports.size(), " ports");
  const std::string ew = str_cat("episode ", name);
  struct Bin {
    const char* file;
    int64_t rows, cols;
  };
  for (const Bin& b :
       {Bin{"force.bin", nf, kForceCols}, Bin{"actions.bin", na, 3}, Bin{"proprio.bin", na, 3}}) {
    const int64_t have = file_size(episode_dir + "/" + b.file);
    VLA_CHECK(have >= 0, ew, ": missing file ", b.file);
    VLA_CHECK(have == b.rows * b.cols * 4, ew, ": ", b.file, " has ", have, " bytes, expected ",
              b.rows * b.cols * 4, " (", b.rows, " x ", b.cols, " float32 per meta.json)");
  }
  for (int64_t t = 0; t < ticks; ++t) {
    for (size_t v = 0; v < views.size(); ++v) {
      const std::string f = frame_file(static_cast<int>(t), static_cast<int>(v), fmt);
      const int64_t sz = file_size(episode_dir + "/" + f);
      VLA_CHECK(sz > 0, ew, ": missing or empty frame ", f, " (tick ", t, ", view ", views[v], ")");
    }
  }
  return meta;
}

Dataset Dataset::open(const std::string& dir) {
  const std::string index_path = dir + "/index.json";
  VLA_CHECK(file_exists(index_path), "dataset ", dir, ": missing index.json");
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(read_file(index_path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(index_path, ": bad JSON (", e.what(), ")"));
  }
  VLA_CHECK(index.is_object() && index.contains("episodes") && index["episodes"].is_array(),
            index_path, ": no 'episodes' array");
  Dataset ds;
  ds.dir_ = dir;
  for (const auto& e : index["episodes"]) {
    const std::string name = field<std::string>(e, "name", index_path);
    ds.metas_.push_back(validate_episode(dir + "/" + name));
    ds.names_.push_back(name);
  }
  return ds;
}

const std::string& Dataset::name(size_t i) const {
  VLA_CHECK(i < names_.size(), "dataset ", dir_, ": episode index ", i, " out of range (size ",
            names_.size(), ")");
  return names_[i];
}

const nlohmann::json& Dataset::meta(size_t i) const {
  name(i);
  return metas_[i];
}

Image Dataset::load_frame(size_t i, int tick, int view) const {
  const nlohmann::json& m = meta(i);
  const int ticks = m["num_ticks"].get<int>();
  const int views = static_cast<int>(m["views"].size());
  VLA_CHECK(tick >= 0 && tick < ticks && view >= 0 && view < views, "episode ", names_[i],
            ": frame tick ", tick, " view ", view, " out of range (", ticks, " ticks, ", views,
            " views)");
  const std::string f = frame_file(tick, view, m["image_format"].get<std::string>());
  const std::string path = dir_ + "/" + names_[i] + "/" + f;
  std::string bytes = read_file(path);
  Image im;
  try {
    im = decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 3);
  } catch (const std::exception& e) {
    throw Error(str_cat("episode ", names_[i], ": cannot decode ", f, ": ", e.what()));
  }
  VLA_CHECK(im.width == m["width"].get<int>() && im.height == m["height"].get<int>(), "episode ",
            names_[i], ": ", f, " is ", im.width, "x", im.height, ", meta.json says ",
            m["width"].get<int>(), "x", m["height"].get<int>());
  return im;
}

Episode Dataset::load(size_t i, bool with_frames) const {
  const nlohmann::json& m = meta(i);
  Episode ep;
  ep.name = names_[i];
  ep.dir = dir_ + "/" + ep.name;
  ep.meta = m;
  ep.instruction = m["instruction"].get<std::string>();
  ep.seed = m["seed"].get<uint64_t>();
  ep.success = m["success"].get<bool>();
  ep.reason = m["reason"].get<std::string>();
  ep.duration_s = m.value("duration_s", 0.0);
  ep.peak_force = m.value("peak_force", 0.0);
  ep.target = m["target"].get<int>();
  const std::string where = str_cat("episode ", ep.name, ": meta.json");
  for (const auto& p : m["ports"]) {
    PortMeta pm;
    pm.color = field<std::string>(p, "color", where);
    pm.color_ko = p.value("color_ko", "");
    pm.pos = field<std::array<double, 3>>(p, "pos", where);
    pm.rgb = field<std::array<int, 3>>(p, "rgb", where);
    pm.radius = p.value("radius", 0.0);
    if (p.contains("pixels"))
      pm.pixels = field<std::vector<std::array<double, 2>>>(p, "pixels", where);
    ep.ports.push_back(pm);
  }
  ep.view_names = m["views"].get<std::vector<std::string>>();
  ep.width = m["width"].get<int>();
  ep.height = m["height"].get<int>();
  ep.num_ticks = m["num_ticks"].get<int>();
  const std::string ew = str_cat("episode ", ep.name);
  ep.force = read_floats(ep.dir + "/force.bin", m["num_force"].get<int64_t>(), kForceCols, ew);
  ep.actions = read_floats(ep.dir + "/actions.bin", m["num_actions"].get<int64_t>(), 3, ew);
  ep.proprio = read_floats(ep.dir + "/proprio.bin", m["num_actions"].get<int64_t>(), 3, ew);
  VLA_CHECK(torch::isfinite(ep.force).all().item<bool>(), ew, ": force.bin has NaN/Inf values");
  VLA_CHECK(torch::isfinite(ep.actions).all().item<bool>(), ew, ": actions.bin has NaN/Inf values");
  if (ep.force.size(0) > 1) {
    auto t = ep.force.select(1, 0);
    VLA_CHECK((t.slice(0, 1) > t.slice(0, 0, -1)).all().item<bool>(), ew,
              ": force.bin timestamps are not strictly increasing");
  }
  if (with_frames) {
    ep.frames.resize(ep.num_ticks);
    for (int t = 0; t < ep.num_ticks; ++t) {
      for (int v = 0; v < static_cast<int>(ep.view_names.size()); ++v) {
        ep.frames[t].push_back(load_frame(i, t, v));
      }
    }
  }
  return ep;
}

torch::Tensor force_window(const torch::Tensor& force, double t_end, int samples) {
  VLA_CHECK(
      force.dim() == 2 && force.size(1) == kForceCols && force.scalar_type() == torch::kFloat32,
      "force_window: expected a float32 [N, 7] force tensor, got ", force.sizes());
  VLA_CHECK(samples > 0, "force_window: samples must be > 0");
  auto f = force.contiguous();
  const float* p = f.data_ptr<float>();
  const int64_t n = f.size(0);
  // Number of rows with t <= t_end (timestamps are increasing).
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (static_cast<double>(p[mid * kForceCols]) <= t_end + 1e-6) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  const int64_t end = lo;
  torch::Tensor out = torch::zeros({samples, kForceCols - 1}, torch::kFloat32);
  const int64_t take = std::min<int64_t>(samples, end);
  if (take > 0) {
    out.slice(0, samples - take, samples)
        .copy_(f.slice(0, end - take, end).slice(1, 1, kForceCols));
  }
  return out;
}

}  // namespace vla::dataset
