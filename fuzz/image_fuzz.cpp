// libFuzzer harness: PNG / JPEG bytes through decode_image (the decoder of every image path:
// CLI, dataset reader, server), which applies EXIF orientation and drops alpha.
#include <cstdio>

#include "core/core.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto im = vla::decode_image(data, size, 3);
    if (im.width <= 0 || im.height <= 0 || im.channels != 3 ||
        im.pixels.size() != static_cast<size_t>(im.width) * im.height * 3) {
      std::fprintf(stderr, "decoded image has inconsistent size\n");
      std::abort();
    }
  } catch (const vla::Error&) {
  }
  return 0;
}
