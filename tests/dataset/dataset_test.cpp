#include "dataset/dataset.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace vla::dataset {
namespace {
namespace fs = std::filesystem;

std::string temp_dir() {
  char tmpl[] = "/tmp/vla_dataset_test_XXXXXX";
  char* d = mkdtemp(tmpl);
  return d ? std::string(d) : std::string("/tmp");
}

EpisodeData synthetic(uint64_t seed, int ticks = 3, int views = 2) {
  EpisodeData ep;
  ep.instruction = "insert the needle into the red port";
  ep.seed = seed;
  ep.success = seed % 2 == 0;
  ep.reason = ep.success ? "success" : "timeout";
  ep.duration_s = ticks * 0.1;
  ep.target = 1;
  for (int i = 0; i < 3; ++i) {
    PortMeta p;
    p.color = i == 1 ? "red" : "blue";
    p.color_ko = i == 1 ? "빨간색" : "파란색";
    p.pos = {0.01 * i, -0.02, 0.04};
    p.rgb = {i * 50, 10, 200};
    p.radius = 0.006;
    ep.ports.push_back(p);
  }
  ep.width = 20;
  ep.height = 12;
  for (int v = 0; v < views; ++v) ep.view_names.push_back("view" + std::to_string(v));
  for (int t = 0; t < ticks; ++t) {
    std::vector<Image> row;
    for (int v = 0; v < views; ++v) {
      Image im = make_image(20, 12, 3);
      for (size_t k = 0; k < im.pixels.size(); ++k)
        im.pixels[k] = uint8_t((k * 7 + t * 13 + v * 31 + seed) & 255);
      row.push_back(im);
    }
    ep.frames.push_back(row);
  }
  const int nf = ticks * 65, na = ticks * 8;
  for (int i = 0; i < nf; ++i) {
    std::array<float, 7> f;
    f[0] = (i + 1) / 650.0f;
    for (int k = 1; k < 7; ++k) f[k] = 0.01f * k + 0.001f * i;
    ep.force.push_back(f);
  }
  for (int i = 0; i < na; ++i) {
    ep.actions.push_back({0.001f * i, -0.002f, 0.0005f});
    ep.proprio.push_back({0.1f, 0.2f, 0.3f + 0.001f * i});
  }
  return ep;
}

TEST(Dataset, RoundTrip) {
  const std::string dir = temp_dir() + "/ds";
  EpisodeData a = synthetic(2), b = synthetic(3, 4, 1);
  {
    DatasetWriter w(dir);
    EXPECT_EQ(w.write(a), 0u);
    EXPECT_EQ(w.write(b), 1u);
  }
  {
    // Re-opening the writer appends after the existing episodes.
    DatasetWriter w(dir, "jpg");
    EXPECT_EQ(w.size(), 2u);
    EXPECT_EQ(w.write(synthetic(4)), 2u);
  }
  Dataset ds = Dataset::open(dir);
  ASSERT_EQ(ds.size(), 3u);
  EXPECT_EQ(ds.name(1), "episode_000001");
  Episode e = ds.load(0);
  EXPECT_EQ(e.instruction, a.instruction);
  EXPECT_EQ(e.seed, 2u);
  EXPECT_TRUE(e.success);
  EXPECT_EQ(e.reason, "success");
  EXPECT_EQ(e.target, 1);
  ASSERT_EQ(e.ports.size(), 3u);
  EXPECT_EQ(e.ports[1].color, "red");
  EXPECT_EQ(e.ports[1].color_ko, "빨간색");
  EXPECT_EQ(e.ports[2].pos, a.ports[2].pos);
  EXPECT_EQ(e.num_ticks, 3);
  ASSERT_EQ(e.frames.size(), 3u);
  ASSERT_EQ(e.frames[2].size(), 2u);
  EXPECT_EQ(e.frames[2][1].pixels, a.frames[2][1].pixels);
  ASSERT_EQ(e.force.sizes(), (std::vector<int64_t>{195, 7}));
  EXPECT_EQ(e.force[10][0].item<float>(), a.force[10][0]);
  EXPECT_EQ(e.force[10][6].item<float>(), a.force[10][6]);
  ASSERT_EQ(e.actions.sizes(), (std::vector<int64_t>{24, 3}));
  EXPECT_EQ(e.actions[5][0].item<float>(), a.actions[5][0]);
  EXPECT_EQ(e.proprio[7][2].item<float>(), a.proprio[7][2]);
  Episode e1 = ds.load(1, /*with_frames=*/false);
  EXPECT_FALSE(e1.success);
  EXPECT_TRUE(e1.frames.empty());
  EXPECT_EQ(e1.num_ticks, 4);
  EXPECT_EQ(ds.load_frame(1, 3, 0).pixels, b.frames[3][0].pixels);
  // JPEG episode decodes to the right size (lossy).
  Episode e2 = ds.load(2);
  EXPECT_EQ(e2.meta["image_format"], "jpg");
  EXPECT_EQ(e2.frames[0][0].width, 20);
  EXPECT_THROW(ds.load(3), Error);
  EXPECT_THROW(ds.load_frame(0, 3, 0), Error);
  vla::remove_tree(fs::path(dir).parent_path().string());
}

// Helper: writes one episode and returns the dataset dir.
std::string one_episode_dataset() {
  const std::string dir = temp_dir() + "/ds";
  DatasetWriter w(dir);
  w.write(synthetic(2));
  return dir;
}

void expect_error(const std::string& dir, const std::vector<std::string>& needles) {
  try {
    Dataset ds = Dataset::open(dir);
    ds.load(0);
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  }
}

TEST(Dataset, TruncatedForceFileIsReported) {
  std::string dir = one_episode_dataset();
  fs::resize_file(dir + "/episode_000000/force.bin", 100);
  expect_error(dir, {"episode_000000", "force.bin", "100 bytes"});
}

TEST(Dataset, MissingFrameIsReported) {
  std::string dir = one_episode_dataset();
  fs::remove(dir + "/episode_000000/frames/v1_0002.png");
  expect_error(dir, {"episode_000000", "frames/v1_0002.png"});
}

TEST(Dataset, CorruptFrameIsReported) {
  std::string dir = one_episode_dataset();
  std::ofstream(dir + "/episode_000000/frames/v0_0001.png") << "not a png";
  expect_error(dir, {"episode_000000", "v0_0001.png"});
}

TEST(Dataset, BadMetaJsonIsReported) {
  std::string dir = one_episode_dataset();
  std::ofstream(dir + "/episode_000000/meta.json") << "{\"format_version\": 1, ";
  expect_error(dir, {"episode_000000", "meta.json", "bad JSON"});
}

TEST(Dataset, CountMismatchIsReported) {
  std::string dir = one_episode_dataset();
  nlohmann::json meta = read_json(dir + "/episode_000000/meta.json");
  meta["num_actions"] = 25;
  write_json_atomic(dir + "/episode_000000/meta.json", meta);
  expect_error(dir, {"episode_000000", "actions.bin", "expected 300"});
  meta["num_actions"] = 24;
  meta.erase("instruction");
  write_json_atomic(dir + "/episode_000000/meta.json", meta);
  expect_error(dir, {"episode_000000", "instruction"});
  // Found by fuzz/dataset_fuzz: a huge float where an int belongs was cast (undefined behaviour).
  meta = read_json(dir + "/episode_000000/meta.json");
  meta["instruction"] = "x";
  meta["width"] = 2.77778e54;
  write_json_atomic(dir + "/episode_000000/meta.json", meta);
  expect_error(dir, {"episode_000000", "width", "must be an integer"});
  meta["width"] = 1ll << 40;
  write_json_atomic(dir + "/episode_000000/meta.json", meta);
  expect_error(dir, {"episode_000000", "width", "out of range"});
}

TEST(Dataset, MissingEpisodeAndIndexAreReported) {
  std::string dir = one_episode_dataset();
  fs::rename(dir + "/episode_000000", dir + "/moved");
  expect_error(dir, {"episode_000000", "meta.json"});
  fs::remove(dir + "/index.json");
  expect_error(dir, {"index.json"});
}

TEST(Dataset, UnfinishedEpisodeIsInvisibleAndCleanedUp) {
  std::string dir = one_episode_dataset();
  // A writer that crashed mid-episode leaves only a hidden temp folder.
  fs::create_directories(dir + "/.tmp_episode_000001_123/frames");
  EXPECT_EQ(Dataset::open(dir).size(), 1u);
  DatasetWriter w(dir);
  EXPECT_FALSE(fs::exists(dir + "/.tmp_episode_000001_123"));
  EXPECT_EQ(w.write(synthetic(5)), 1u);
  EXPECT_EQ(Dataset::open(dir).size(), 2u);
}

TEST(Dataset, WriterRejectsInconsistentEpisodes) {
  const std::string dir = temp_dir() + "/ds";
  DatasetWriter w(dir);
  EpisodeData ep = synthetic(1);
  ep.proprio.pop_back();
  EXPECT_THROW(w.write(ep), Error);
  ep = synthetic(1);
  ep.frames[1].pop_back();
  EXPECT_THROW(w.write(ep), Error);
  EXPECT_THROW(DatasetWriter(dir, "bmp"), Error);
  EXPECT_EQ(w.size(), 0u);
}

TEST(Dataset, ForceWindowCutsByTime) {
  EpisodeData ep = synthetic(2);  // 195 samples, t = (i+1)/650
  torch::Tensor force = torch::from_blob(ep.force.data(), {195, 7}, torch::kFloat32).clone();
  // Window before tick 2 (t = 0.2 s): samples 65..129.
  torch::Tensor w = force_window(force, 0.2);
  ASSERT_EQ(w.sizes(), (std::vector<int64_t>{65, 6}));
  EXPECT_EQ(w[0][0].item<float>(), ep.force[65][1]);
  EXPECT_EQ(w[64][5].item<float>(), ep.force[129][6]);
  // Before enough history exists the front is zero-padded.
  torch::Tensor w0 = force_window(force, 0.05, 65);
  const int have = 32;  // t = 1/650 .. 32/650 <= 0.05 s
  EXPECT_EQ(w0[65 - have - 1].abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(w0[65 - have][0].item<float>(), ep.force[0][1]);
  EXPECT_EQ(w0[64][0].item<float>(), ep.force[have - 1][1]);
  EXPECT_EQ(force_window(force, -1.0).abs().sum().item<float>(), 0.0f);
  EXPECT_THROW(force_window(force.slice(1, 0, 6), 0.1), Error);
}

// DAgger aggregation appends rounds to one folder: a second writer keeps every earlier episode
// byte for byte and continues the numbering.
TEST(Dataset, AppendingKeepsEarlierEpisodes) {
  const std::string dir = temp_dir();
  {
    DatasetWriter w(dir);
    w.write(synthetic(2));
    w.write(synthetic(4));
  }
  const std::string before = read_file(dir + "/episode_000001/actions.bin");
  {
    DatasetWriter w(dir);
    EXPECT_EQ(w.size(), 2u);
    EXPECT_EQ(w.write(synthetic(6)), 2u);
  }
  Dataset ds = Dataset::open(dir);
  ASSERT_EQ(ds.size(), 3u);
  EXPECT_EQ(ds.load(0, false).seed, 2u);
  EXPECT_EQ(ds.load(1, false).seed, 4u);
  EXPECT_EQ(ds.load(2, false).seed, 6u);
  EXPECT_EQ(read_file(dir + "/episode_000001/actions.bin"), before);
  vla::remove_tree(dir);
}

// With a sparse index (bulk generation), episodes renamed into place after the last index write
// are complete; a writer opening the folder after a crash lists them again.
TEST(Dataset, EpisodesMissedByASparseIndexAreRecovered) {
  const std::string dir = temp_dir();
  std::string index_after_two;
  {
    DatasetWriter w(dir);
    w.set_index_every(2);
    w.write(synthetic(2));
    w.write(synthetic(4));  // index written here
    index_after_two = read_file(dir + "/index.json");
    w.write(synthetic(6));
    w.write(synthetic(8));
    w.write(synthetic(10));
  }
  // Simulate a crash before the last index writes.
  write_file_atomic(dir + "/index.json", index_after_two);
  EXPECT_EQ(Dataset::open(dir).size(), 2u);
  {
    DatasetWriter w(dir);
    EXPECT_EQ(w.size(), 5u);
  }
  Dataset ds = Dataset::open(dir);
  ASSERT_EQ(ds.size(), 5u);
  EXPECT_EQ(ds.load(4, false).seed, 10u);
  EXPECT_THROW(DatasetWriter(dir).set_index_every(0), Error);
  vla::remove_tree(dir);
}

}  // namespace
}  // namespace vla::dataset
