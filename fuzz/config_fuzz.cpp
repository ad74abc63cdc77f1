// libFuzzer harness: config.json (Qwen25VLConfig::from_json) and the image processor config
// (ImagePreprocessConfig::from_json) from arbitrary JSON.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "vision/vision.h"
#include "weights/weights.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;  // not JSON: the loaders report that before from_json
  try {
    (void)vla::Qwen25VLConfig::from_json(j, "fuzz config.json");
  } catch (const vla::Error&) {
  }
  try {
    vla::ImagePreprocessConfig::from_json(j, "fuzz processor_config.json").validate();
  } catch (const vla::Error&) {
  }
  return 0;
}
