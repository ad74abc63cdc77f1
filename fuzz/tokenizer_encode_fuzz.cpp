// libFuzzer harness: the project's tokenizer (assets/policy/vlm_init) encoding arbitrary text.
// Property: for valid UTF-8 input, decode(encode(text)) gives back the text with each stretch
// between matched added tokens in NFC, byte for byte. Qwen2's tokenizer.json normalises to NFC,
// and HF tokenizers split added tokens (normalized: false) off the raw text first, so a
// combining mark right after one ('>' + U+0338) is normalised with the text after it, not
// composed into the token; byte-level BPE then loses nothing.
#include <cstdio>
#include <map>

#include "fuzz_util.h"
#include "text/text.h"

namespace {

// Whether `decoded` (the decode of `ids`) is `text` split at the added tokens the ids hold, each
// stretch between them in NFC: the added tokens' contents are found in `text` in order (any
// occurrence that leaves an NFC-consistent stretch before it).
bool round_trip_holds(const vla::Tokenizer& tok, const std::string& text,
                      const std::vector<int64_t>& ids) {
  static const std::map<int64_t, std::string> added = [&tok] {
    std::map<int64_t, std::string> m;
    for (const vla::AddedToken& a : tok.added_tokens()) m[a.id] = a.content;
    return m;
  }();
  std::vector<std::string> stretches, tokens;  // decoded stretch i comes before token i
  std::vector<int64_t> run;
  for (int64_t id : ids) {
    auto it = added.find(id);
    if (it == added.end()) {
      run.push_back(id);
      continue;
    }
    stretches.push_back(tok.decode(run));
    tokens.push_back(it->second);
    run.clear();
  }
  stretches.push_back(tok.decode(run));
  size_t cursor = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    size_t at = text.find(tokens[i], cursor);
    while (at != std::string::npos &&
           vla::unicode::nfc(text.substr(cursor, at - cursor)) != stretches[i])
      at = text.find(tokens[i], at + 1);
    if (at == std::string::npos) return false;
    cursor = at + tokens[i].size();
  }
  return vla::unicode::nfc(text.substr(cursor)) == stretches.back();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const vla::Tokenizer tok =
      vla::Tokenizer::from_folder(vla::fuzz::source_dir() + "/assets/policy/vlm_init");
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    auto ids = tok.encode(text);
    if (vla::unicode::utf8_lossy(text) == text && !round_trip_holds(tok, text, ids)) {
      std::fprintf(stderr, "round trip changed the text\n");
      std::abort();
    }
  } catch (const vla::Error&) {
  }
  return 0;
}
