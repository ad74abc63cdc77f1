// libFuzzer harness: the project's tokenizer (assets/policy/vlm_init) encoding arbitrary text.
// Property: for valid UTF-8 input, decode(encode(text)) gives back the NFC form of the text byte
// for byte (Qwen2's tokenizer.json normalises to NFC; byte-level BPE then loses nothing).
#include <cstdio>

#include "fuzz_util.h"
#include "text/text.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const vla::Tokenizer tok =
      vla::Tokenizer::from_folder(vla::fuzz::source_dir() + "/assets/policy/vlm_init");
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    auto ids = tok.encode(text);
    if (vla::unicode::utf8_lossy(text) == text && tok.decode(ids) != vla::unicode::nfc(text)) {
      std::fprintf(stderr, "round trip changed the text\n");
      std::abort();
    }
  } catch (const vla::Error&) {
  }
  return 0;
}
