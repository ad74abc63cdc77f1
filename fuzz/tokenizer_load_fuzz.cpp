// libFuzzer harness: tokenizer.json as Tokenizer::from_file reads it, then one encode/decode.
#include "fuzz_util.h"
#include "text/text.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = vla::fuzz::scratch_dir() + "/tokenizer.json";
  vla::fuzz::write_bytes(path, data, size);
  try {
    auto tok = vla::Tokenizer::from_file(path);
    auto ids = tok.encode("insert the needle <|im_start|> 바늘을 삽입하세요 123");
    (void)tok.decode(ids);
  } catch (const vla::Error&) {
  }
  return 0;
}
