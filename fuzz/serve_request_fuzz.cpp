// libFuzzer harness: `vla serve`'s request decoder (decode_request: msgpack with openpi's
// msgpack-numpy arrays) on arbitrary bytes, as a hostile network client would send them.
#include "fuzz_util.h"
#include "serve/serve.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vla::serve::ServeOptions lim;
  lim.max_array_elements = 1 << 20;  // keep single inputs small for the fuzzer's memory limit
  try {
    auto r = vla::serve::decode_request(data, size, lim);
    // Everything decoded must be self-consistent.
    if (r.force.size() != r.force_t.size()) __builtin_trap();
    for (const auto& [name, im] : r.images)
      if (im.pixels.size() != static_cast<size_t>(im.width) * im.height * 3) __builtin_trap();
  } catch (const vla::Error&) {
  }
  return 0;
}
