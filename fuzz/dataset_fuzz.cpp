// libFuzzer harness: the dataset episode reader. A valid one-episode dataset is written once; each
// input replaces one of its files (first byte picks: index.json, meta.json, force.bin,
// actions.bin, proprio.bin, a frame) before Dataset::open + load, and the file is restored after.
#include "dataset/dataset.h"
#include "fuzz_util.h"

namespace {

std::string make_dataset() {
  const auto dir = vla::fuzz::scratch_dir() + "/dataset";
  vla::remove_tree(dir);
  vla::dataset::DatasetWriter w(dir, "png");
  vla::dataset::EpisodeData ep;
  ep.instruction = "insert the needle into the red port";
  ep.success = true;
  ep.reason = "success";
  ep.duration_s = 0.2;
  vla::dataset::PortMeta p;
  p.color = "red";
  p.color_ko = "빨간색";
  p.pos = {0.01, 0.02, 0.04};
  p.rgb = {200, 40, 40};
  p.radius = 0.006;
  ep.ports = {p};
  ep.view_names = {"top"};
  ep.width = ep.height = 8;
  for (int t = 0; t < 2; ++t) ep.frames.push_back({vla::make_image(8, 8, 3, 100 + t)});
  for (int i = 0; i < 130; ++i) ep.force.push_back({(i + 1) / 650.0f, 0, 0, 0.1f, 0, 0, 0});
  for (int i = 0; i < 16; ++i) {
    ep.actions.push_back({0.001f, 0, -0.001f});
    ep.proprio.push_back({0, 0, 0.1f});
  }
  w.write(ep);
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = make_dataset();
  static const std::vector<std::string> files = {"index.json",
                                                 "episode_000000/meta.json",
                                                 "episode_000000/force.bin",
                                                 "episode_000000/actions.bin",
                                                 "episode_000000/proprio.bin",
                                                 "episode_000000/frames/v0_0001.png"};
  if (size == 0) return 0;
  const std::string path = dir + "/" + files[data[0] % files.size()];
  const std::string saved = vla::read_file(path);
  vla::fuzz::write_bytes(path, data + 1, size - 1);
  try {
    auto ds = vla::dataset::Dataset::open(dir);
    for (size_t i = 0; i < ds.size(); ++i) (void)ds.load(i, true);
  } catch (const vla::Error&) {
  }
  vla::fuzz::write_bytes(path, reinterpret_cast<const uint8_t*>(saved.data()), saved.size());
  return 0;
}
