// libFuzzer harness: a .safetensors file (header length, JSON header, data section) as
// SafetensorsFile::open maps and validates it, then every tensor loaded.
#include "fuzz_util.h"
#include "weights/weights.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = vla::fuzz::scratch_dir() + "/model.safetensors";
  vla::fuzz::write_bytes(path, data, size);
  try {
    auto f = vla::SafetensorsFile::open(path);
    for (const auto& name : f->names()) {
      const auto& info = f->info(name);
      if (info.nbytes() <= (1u << 20)) (void)f->load(name, torch::kFloat32).sum();
    }
  } catch (const vla::Error&) {
  }
  return 0;
}
