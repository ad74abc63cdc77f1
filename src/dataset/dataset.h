// vla dataset: on-disk episodes of the needle-insertion task (no MuJoCo dependency).
//
// Layout (docs/dataset.md has the full spec):
//   DIR/index.json                      list of complete episodes (rewritten atomically)
//   DIR/episode_NNNNNN/meta.json        instruction, seed, success, reason, target, ports, counts
//   DIR/episode_NNNNNN/frames/vK_TTTT.png (or .jpg)  view K at 10 Hz tick T (t = T * 0.1 s)
//   DIR/episode_NNNNNN/force.bin        float32 little-endian [num_force, 7] = t, fx fy fz tx ty tz
//   DIR/episode_NNNNNN/actions.bin      float32 [num_actions, 3] 80 Hz deltas (m), action k at
//   t=k/80 DIR/episode_NNNNNN/proprio.bin      float32 [num_actions, 3] stage position when action
//   k began
// An episode is written into a hidden temp folder and renamed when complete, so a crash never
// leaves a half episode under its final name.
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/core.h"

namespace vla::dataset {

constexpr int kFormatVersion = 1;
constexpr double kFrameHz = kControlHz;  // frames are recorded once per control tick
using vla::kActionHz;
using vla::kForceHz;

struct PortMeta {
  std::string color, color_ko;
  std::array<double, 3> pos{};
  std::array<int, 3> rgb{};
  double radius = 0.0;
  // Pixel (u right, v down; -1 when behind the camera) of the port centre in each view's first
  // frame, at the recorded resolution. Empty in datasets recorded before it was added.
  std::vector<std::array<double, 2>> pixels;
};

// Everything the recorder needs; filled by the simulator-side data generator.
struct EpisodeData {
  std::string instruction;
  uint64_t seed = 0;
  bool success = false;
  std::string reason;
  double duration_s = 0.0;
  double peak_force = 0.0;
  int target = 0;
  std::vector<PortMeta> ports;
  std::vector<std::string> view_names;  // e.g. top front left right needle
  int width = 0, height = 0;
  std::vector<std::vector<Image>> frames;           // [tick][view], 10 Hz
  std::vector<std::array<float, 7>> force;          // t + 6
  std::vector<std::array<float, 3>> actions;        // 80 Hz
  std::vector<std::array<float, 3>> proprio;        // one per action
  nlohmann::json extra = nlohmann::json::object();  // free-form (e.g. expert settings)
};

// Writes episodes into a dataset folder (created if missing). Not thread-safe.
class DatasetWriter {
 public:
  // image_format: "png" or "jpg". Appends after the episodes already listed in DIR/index.json.
  explicit DatasetWriter(std::string dir, std::string image_format = "png", int jpeg_quality = 90);
  ~DatasetWriter();  // writes the index if episodes are pending
  DatasetWriter(const DatasetWriter&) = delete;
  DatasetWriter& operator=(const DatasetWriter&) = delete;
  // Writes one episode crash-safely (temp folder + rename) and returns its index. index.json is
  // rewritten every index_every episodes (default 1) and by flush()/the destructor; a writer that
  // opens the folder later lists complete episodes the index missed, so a crash loses nothing.
  size_t write(const EpisodeData& ep);
  // Same, with the frames already encoded by encode_frames() (encoding is the slow part and is
  // thread-safe, so parallel producers encode before taking their turn to write).
  size_t write(const EpisodeData& ep, const std::vector<std::vector<uint8_t>>& encoded);
  std::vector<std::vector<uint8_t>> encode_frames(const EpisodeData& ep) const;
  void flush();
  // Bulk writers (tens of thousands of one-tick layouts) set a larger interval: rewriting the
  // whole index per episode is quadratic.
  void set_index_every(int n);
  size_t size() const { return count_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_, format_;
  int quality_;
  size_t count_ = 0;
  nlohmann::json index_;
  int index_every_ = 1;
  bool dirty_ = false;
};

struct Episode {
  std::string name;  // "episode_000012"
  std::string dir;   // full path
  std::string instruction;
  uint64_t seed = 0;
  bool success = false;
  std::string reason;
  double duration_s = 0.0;
  double peak_force = 0.0;
  int target = 0;
  std::vector<PortMeta> ports;
  std::vector<std::string> view_names;
  int width = 0, height = 0;
  int num_ticks = 0;
  std::vector<std::vector<Image>> frames;  // [tick][view]; empty when loaded without frames
  torch::Tensor force;                     // float32 [N, 7]: t, fx fy fz tx ty tz
  torch::Tensor actions;                   // float32 [M, 3]
  torch::Tensor proprio;                   // float32 [M, 3]
  nlohmann::json meta;                     // the raw meta.json
};

class Dataset {
 public:
  // Opens and validates DIR: index.json, every listed episode's meta.json, the byte sizes of its
  // binary files and the presence of every frame. Throws vla::Error naming the episode and file.
  static Dataset open(const std::string& dir);
  size_t size() const { return names_.size(); }
  const std::string& dir() const { return dir_; }
  const std::string& name(size_t i) const;
  // Loads episode i (frames decoded when with_frames). Throws vla::Error on corrupt data.
  Episode load(size_t i, bool with_frames = true) const;
  // Decodes one frame of episode i.
  Image load_frame(size_t i, int tick, int view) const;
  // Cheap per-episode metadata without reading binaries.
  const nlohmann::json& meta(size_t i) const;

 private:
  std::string dir_;
  std::vector<std::string> names_;
  std::vector<nlohmann::json> metas_;
};

// The last `samples` force rows (6 columns, timestamps dropped) with t <= t_end, as float32
// [samples, 6]; rows before the episode start are zero. The policy's 100 ms window before control
// tick T is force_window(ep.force, 0.1 * T) (65 samples at 650 Hz).
torch::Tensor force_window(const torch::Tensor& force, double t_end, int samples = 65);

// Validates one episode folder (meta, byte counts, frames); throws vla::Error on problems.
nlohmann::json validate_episode(const std::string& episode_dir);

}  // namespace vla::dataset
