// libFuzzer harness: model.safetensors.index.json (weight_map, metadata) next to one valid shard,
// as SafetensorsIndex::open and WeightStore::open read it.
#include "fuzz_util.h"
#include "weights/weights.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    auto d = vla::fuzz::scratch_dir() + "/sharded";
    std::filesystem::create_directories(d);
    vla::save_safetensors(d + "/model-00001-of-00001.safetensors",
                          {{"a.weight", torch::ones({2, 3})}, {"b.bias", torch::zeros({4})}});
    return d;
  }();
  const std::string path = dir + "/model.safetensors.index.json";
  vla::fuzz::write_bytes(path, data, size);
  try {
    auto idx = vla::SafetensorsIndex::open(path);
    for (const auto& name : idx.names()) (void)idx.info(name).numel();
    auto store = vla::WeightStore::open(dir);
    for (const auto& name : store.names()) (void)store.info(name);
  } catch (const vla::Error&) {
  }
  return 0;
}
