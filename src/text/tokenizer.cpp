// Byte-level BPE tokenizer read from an HF tokenizer.json (Qwen2 pipeline).
#include <sys/stat.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>

#include "core/core.h"
#include "text/text.h"

namespace vla {

namespace {
using json = nlohmann::json;

const char* kQwen2Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// GPT-2 bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 + n.
struct ByteMap {
  char32_t byte_to_cp[256];
  std::unordered_map<char32_t, uint8_t> cp_to_byte;
  std::string byte_to_utf8[256];
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      byte_to_cp[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      cp_to_byte[byte_to_cp[b]] = static_cast<uint8_t>(b);
      byte_to_utf8[b] = unicode::codepoints_to_utf8({byte_to_cp[b]});
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}
}  // namespace

struct Tokenizer::Impl {
  std::string path;
  std::unordered_map<std::string, int32_t> vocab;  // byte-level token string -> id
  std::vector<std::string> id_to_token;            // "" for holes
  std::vector<int8_t> id_kind;                     // 0 none, 1 vocab, 2 added, 3 added special
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (a,b) -> (rank, merged)
  int32_t byte_id[256];
  bool nfc = false;
  bool ignore_merges = false;
  std::vector<AddedToken> added;
  std::vector<std::vector<size_t>> added_by_first_byte = std::vector<std::vector<size_t>>(256);

  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  void bpe(const std::string& piece, std::vector<int64_t>& out) const;
  void encode_plain(const std::string& text, std::vector<int64_t>& out) const;
};

void Tokenizer::Impl::bpe(const std::string& piece, std::vector<int64_t>& out) const {
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = cache.find(piece);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> sym;
  sym.reserve(piece.size());
  for (unsigned char b : piece) {
    VLA_CHECK(byte_id[b] >= 0, "tokenizer ", path, ": vocabulary has no token for byte 0x",
              std::hex, static_cast<int>(b));
    sym.push_back(byte_id[b]);
  }
  bool whole = false;
  if (ignore_merges) {
    std::string s;
    for (unsigned char b : piece) s += byte_map().byte_to_utf8[b];
    auto it = vocab.find(s);
    if (it != vocab.end()) {
      sym.assign(1, it->second);
      whole = true;
    }
  }
  while (!whole && sym.size() > 1) {
    int32_t best_rank = INT32_MAX, best_id = -1;
    size_t best_pos = 0;
    for (size_t k = 0; k + 1 < sym.size(); ++k) {
      uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(sym[k])) << 32) |
                     static_cast<uint32_t>(sym[k + 1]);
      auto it = merges.find(key);
      if (it != merges.end() && it->second.first < best_rank) {
        best_rank = it->second.first;
        best_id = it->second.second;
        best_pos = k;
      }
    }
    if (best_id < 0) break;
    // Merge every occurrence of the best pair, left to right.
    const int32_t a = sym[best_pos], b = sym[best_pos + 1];
    std::vector<int32_t> next;
    next.reserve(sym.size());
    for (size_t k = 0; k < sym.size();) {
      if (k + 1 < sym.size() && sym[k] == a && sym[k + 1] == b) {
        next.push_back(best_id);
        k += 2;
      } else {
        next.push_back(sym[k++]);
      }
    }
    sym.swap(next);
  }
  out.insert(out.end(), sym.begin(), sym.end());
  std::lock_guard<std::mutex> lock(cache_mu);
  if (cache.size() > 200000) cache.clear();
  cache.emplace(piece, std::move(sym));
}

void Tokenizer::Impl::encode_plain(const std::string& text, std::vector<int64_t>& out) const {
  if (text.empty()) return;
  const std::string normalized = nfc ? unicode::nfc(text) : text;
  const auto cps = unicode::utf8_to_codepoints(normalized);
  // Byte offset of each code point (normalized is valid UTF-8 except for replaced bytes,
  // which we re-encode from the code points so offsets stay consistent).
  std::string utf8;
  std::vector<size_t> offset(cps.size() + 1);
  utf8.reserve(normalized.size());
  for (size_t i = 0; i < cps.size(); ++i) {
    offset[i] = utf8.size();
    append_utf8(utf8, cps[i]);
  }
  offset[cps.size()] = utf8.size();
  for (const auto& [b, e] : unicode::qwen2_split(cps))
    bpe(utf8.substr(offset[b], offset[e] - offset[b]), out);
}

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json) {
  const std::string& p = tokenizer_json;
  VLA_CHECK(file_exists(p), "tokenizer ", p, " not found");
  json j;
  try {
    j = json::parse(read_file(p));
  } catch (const json::exception& e) {
    throw Error(str_cat("tokenizer ", p, ": invalid JSON: ", e.what()));
  }
  VLA_CHECK(j.is_object(), "tokenizer ", p, ": not a JSON object");
  auto impl = std::make_shared<Impl>();
  impl->path = p;
  const std::string where = str_cat("tokenizer ", p, ": ");
  // Structure errors of a parsed file (a field of the wrong type, a required key missing) come out
  // of nlohmann as json::exception; they become vla::Error naming the file. Const lookups use
  // at() / value(): operator[] on a missing key of a const object is undefined behaviour (found by
  // fuzz/tokenizer_load_fuzz).
  // Token ids index dense tables (id -> token): a bound keeps a file claiming id 10^9 from
  // allocating tens of GB (fuzz/tokenizer_load_fuzz). Real vocabularies have < 300k ids.
  constexpr int64_t kMaxTokenId = int64_t{1} << 24;
  auto build = [&]() -> Tokenizer {
    // Normalizer: none, NFC, or a Sequence holding only NFC.
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      const auto& n = j["normalizer"];
      std::string type = n.value("type", "");
      if (type == "NFC") {
        impl->nfc = true;
      } else if (type == "Sequence" && n.contains("normalizers")) {
        for (const auto& s : n["normalizers"]) {
          VLA_CHECK(s.value("type", "") == "NFC", where, "unsupported normalizer ", s.dump(),
                    " (supported: NFC)");
          impl->nfc = true;
        }
      } else {
        throw Error(where + "unsupported normalizer " + n.dump() + " (supported: NFC)");
      }
    }
    // Pre-tokenizer: Qwen2's Split(regex, Isolated) + ByteLevel(use_regex=false).
    {
      VLA_CHECK(j.contains("pre_tokenizer") && j["pre_tokenizer"].is_object(), where,
                "missing pre_tokenizer (expected Qwen2's Split + ByteLevel)");
      const auto& pt = j["pre_tokenizer"];
      bool split_ok = false, bytelevel_ok = false;
      std::vector<json> parts;
      if (pt.value("type", "") == "Sequence") {
        for (const auto& s : pt.at("pretokenizers")) parts.push_back(s);
      } else {
        parts.push_back(pt);
      }
      for (const auto& s : parts) {
        std::string type = s.value("type", "");
        if (type == "Split") {
          std::string regex;
          if (s.contains("pattern") && s["pattern"].contains("Regex"))
            regex = s["pattern"]["Regex"].get<std::string>();
          VLA_CHECK(regex == kQwen2Pattern, where, "unsupported Split pattern ",
                    s.value("pattern", json()).dump(), " (only Qwen2's regex is implemented)");
          VLA_CHECK(s.value("behavior", "") == "Isolated" && !s.value("invert", false), where,
                    "Split must be behavior Isolated, invert false");
          split_ok = true;
        } else if (type == "ByteLevel") {
          VLA_CHECK(!s.value("add_prefix_space", false), where,
                    "ByteLevel add_prefix_space=true is not supported");
          VLA_CHECK(!s.value("use_regex", true) || split_ok, where,
                    "ByteLevel use_regex=true (GPT-2 regex) is not supported");
          bytelevel_ok = true;
        } else {
          throw Error(where + "unsupported pre_tokenizer " + s.dump());
        }
      }
      VLA_CHECK(split_ok && bytelevel_ok, where,
                "pre_tokenizer must be Qwen2's Sequence[Split(regex), ByteLevel], got ", pt.dump());
    }
    if (j.contains("decoder") && !j["decoder"].is_null())
      VLA_CHECK(j["decoder"].value("type", "") == "ByteLevel", where, "unsupported decoder ",
                j["decoder"].dump(), " (supported: ByteLevel)");

    // Model.
    VLA_CHECK(j.contains("model") && j["model"].is_object(), where, "missing 'model'");
    const auto& m = j["model"];
    VLA_CHECK(m.value("type", "BPE") == "BPE", where, "model.type must be BPE, got ",
              m.value("type", ""));
    VLA_CHECK(!m.contains("byte_fallback") || !m["byte_fallback"].is_boolean() ||
                  !m["byte_fallback"].get<bool>(),
              where, "model.byte_fallback is not supported");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      VLA_CHECK(!m.contains(k) || m[k].is_null() || m[k] == "", where, "model.", k,
                " is not supported");
    VLA_CHECK(!m.contains("dropout") || m["dropout"].is_null(), where,
              "model.dropout is not supported");
    impl->ignore_merges = m.value("ignore_merges", false);
    VLA_CHECK(m.contains("vocab") && m["vocab"].is_object(), where, "missing model.vocab");
    int64_t max_id = -1;
    for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
      VLA_CHECK(it.value().is_number_integer() && it.value().get<int64_t>() >= 0, where,
                "model.vocab[", it.key(), "] is not a non-negative integer id");
      int64_t id = it.value().get<int64_t>();
      VLA_CHECK(id < kMaxTokenId, where, "model.vocab id ", id, " is too large (ids < ",
                kMaxTokenId, ")");
      impl->vocab[it.key()] = static_cast<int32_t>(id);
      max_id = std::max(max_id, id);
    }
    // Added tokens.
    std::vector<AddedToken> added;
    if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
      for (const auto& a : j["added_tokens"]) {
        AddedToken t;
        VLA_CHECK(a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                      a["content"].is_string(),
                  where, "added_tokens entry needs integer 'id' and string 'content': ", a.dump());
        t.id = a["id"].get<int64_t>();
        t.content = a["content"].get<std::string>();
        VLA_CHECK(!t.content.empty() && t.id >= 0 && t.id < kMaxTokenId, where,
                  "bad added token (empty, or id not in 0..", kMaxTokenId - 1, "): ", a.dump());
        t.special = a.value("special", false);
        t.lstrip = a.value("lstrip", false);
        t.rstrip = a.value("rstrip", false);
        t.normalized = a.value("normalized", false);
        if (a.value("single_word", false))
          log_warn(where, "added token ", t.content, ": single_word is ignored");
        max_id = std::max(max_id, t.id);
        added.push_back(t);
      }
    }
    impl->id_to_token.assign(static_cast<size_t>(max_id + 1), "");
    impl->id_kind.assign(static_cast<size_t>(max_id + 1), 0);
    for (const auto& [tok, id] : impl->vocab) {
      impl->id_to_token[id] = tok;
      impl->id_kind[id] = 1;
    }
    for (size_t k = 0; k < added.size(); ++k) {
      const auto& t = added[k];
      impl->id_to_token[t.id] = t.content;
      impl->id_kind[t.id] = t.special ? 3 : 2;
      impl->added_by_first_byte[static_cast<unsigned char>(t.content[0])].push_back(k);
    }
    impl->added = added;
    for (int b = 0; b < 256; ++b) {
      auto it = impl->vocab.find(byte_map().byte_to_utf8[b]);
      impl->byte_id[b] = it == impl->vocab.end() ? -1 : it->second;
    }
    // Merges: "a b" strings (older files) or ["a", "b"] pairs (tokenizers >= 0.20).
    VLA_CHECK(m.contains("merges") && m["merges"].is_array(), where, "missing model.merges");
    int32_t rank = 0;
    for (const auto& mg : m["merges"]) {
      std::string a, b;
      if (mg.is_string()) {
        const std::string s = mg.get<std::string>();
        auto sp = s.find(' ', 1);
        VLA_CHECK(sp != std::string::npos, where, "merge '", s, "' is not 'a b'");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
        a = mg[0].get<std::string>();
        b = mg[1].get<std::string>();
      } else {
        throw Error(where + "bad merge entry " + mg.dump());
      }
      auto ia = impl->vocab.find(a), ib = impl->vocab.find(b), ic = impl->vocab.find(a + b);
      VLA_CHECK(ia != impl->vocab.end() && ib != impl->vocab.end() && ic != impl->vocab.end(),
                where, "merge #", rank, " (", a, " + ", b, ") uses tokens missing from the vocab");
      uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) |
                     static_cast<uint32_t>(ib->second);
      impl->merges.emplace(key, std::make_pair(rank, ic->second));
      ++rank;
    }
    Tokenizer t;
    t.path_ = p;
    t.added_ = added;
    t.vocab_size_ = max_id + 1;
    t.impl_ = impl;
    return t;
  };
  try {
    return build();
  } catch (const json::exception& e) {
    throw Error(where + "malformed: " + e.what());
  }
}

Tokenizer Tokenizer::from_folder(const std::string& dir) {
  VLA_CHECK(is_dir(dir), "tokenizer folder ", dir, " does not exist");
  Tokenizer t = from_file(dir + "/tokenizer.json");
  const std::string cfg = dir + "/tokenizer_config.json";
  if (file_exists(cfg)) {
    json j;
    try {
      j = json::parse(read_file(cfg));
    } catch (const json::exception& e) {
      throw Error(str_cat(cfg, ": invalid JSON: ", e.what()));
    }
    auto name = [&](const char* key) -> std::string {
      if (!j.contains(key) || j[key].is_null()) return "";
      if (j[key].is_string()) return j[key].get<std::string>();
      if (j[key].is_object() && j[key].contains("content")) return j[key]["content"];
      return "";
    };
    t.eos_token_ = name("eos_token");
    t.pad_token_ = name("pad_token");
  }
  bool has_template =
      file_exists(dir + "/chat_template.jinja") || file_exists(dir + "/chat_template.json");
  if (!has_template && file_exists(cfg)) {
    auto j = read_json(cfg);
    has_template = j.contains("chat_template") && !j["chat_template"].is_null();
  }
  if (has_template)
    t.chat_template_ = std::make_shared<ChatTemplate>(ChatTemplate::from_folder(dir));
  return t;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  const Impl& im = *impl_;
  std::vector<int64_t> out;
  out.reserve(text.size() / 3 + 4);
  size_t seg_start = 0, i = 0;
  const size_t n = text.size();
  while (i < n) {
    const auto& cands = im.added_by_first_byte[static_cast<unsigned char>(text[i])];
    size_t best = SIZE_MAX, best_len = 0;
    for (size_t k : cands) {
      const std::string& c = im.added[k].content;
      if (c.size() > best_len && text.compare(i, c.size(), c) == 0) {
        best = k;
        best_len = c.size();
      }
    }
    if (best == SIZE_MAX) {
      ++i;
      continue;
    }
    const AddedToken& t = im.added[best];
    size_t b = i, e = i + best_len;
    if (t.lstrip)
      while (b > seg_start && (text[b - 1] == ' ' || text[b - 1] == '\t' || text[b - 1] == '\n' ||
                               text[b - 1] == '\r'))
        --b;
    if (t.rstrip)
      while (e < n && (text[e] == ' ' || text[e] == '\t' || text[e] == '\n' || text[e] == '\r'))
        ++e;
    im.encode_plain(text.substr(seg_start, b - seg_start), out);
    out.push_back(t.id);
    i = seg_start = e;
  }
  im.encode_plain(text.substr(seg_start), out);
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  const Impl& im = *impl_;
  const auto& bm = byte_map();
  std::string bytes;
  for (int64_t id : ids) {
    VLA_CHECK(id >= 0 && id < vocab_size_ && im.id_kind[id] != 0, "tokenizer ", path_,
              ": cannot decode unknown id ", id, " (vocab size ", vocab_size_, ")");
    if (skip_special && im.id_kind[id] == 3) continue;
    const std::string& tok = im.id_to_token[id];
    // ByteLevel decoder: map each char back to its byte; a token with an unmapped char
    // contributes its raw UTF-8 bytes (as HF does for added tokens).
    auto cps = unicode::utf8_to_codepoints(tok);
    std::string tb;
    bool ok = true;
    for (auto c : cps) {
      auto it = bm.cp_to_byte.find(c);
      if (it == bm.cp_to_byte.end()) {
        ok = false;
        break;
      }
      tb.push_back(static_cast<char>(it->second));
    }
    bytes += ok ? tb : tok;
  }
  return unicode::utf8_lossy(bytes);
}

std::string Tokenizer::id_to_token(int64_t id) const {
  VLA_CHECK(id >= 0 && id < vocab_size_ && impl_->id_kind[id] != 0, "tokenizer ", path_,
            ": unknown id ", id);
  return impl_->id_to_token[id];
}

int64_t Tokenizer::token_to_id(const std::string& token) const {
  for (const auto& a : added_)
    if (a.content == token) return a.id;
  auto it = impl_->vocab.find(token);
  return it == impl_->vocab.end() ? -1 : it->second;
}

int64_t Tokenizer::require_token(const std::string& token) const {
  int64_t id = token_to_id(token);
  VLA_CHECK(id >= 0, "tokenizer ", path_, " has no token '", token, "'");
  return id;
}

bool Tokenizer::is_special(int64_t id) const {
  return id >= 0 && id < vocab_size_ && impl_->id_kind[id] == 3;
}

const ChatTemplate& Tokenizer::chat_template() const {
  VLA_CHECK(chat_template_, "tokenizer ", path_, " has no chat template");
  return *chat_template_;
}

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages,
                                           const ChatOptions& options) const {
  // transformers passes the tokenizer's special tokens to the template too.
  ChatOptions o = options;
  if (!o.extra.is_object()) o.extra = nlohmann::ordered_json::object();
  if (!eos_token_.empty() && !o.extra.contains("eos_token")) o.extra["eos_token"] = eos_token_;
  if (!pad_token_.empty() && !o.extra.contains("pad_token")) o.extra["pad_token"] = pad_token_;
  return chat_template().render(messages, o);
}

std::vector<int64_t> expand_image_pads(const std::vector<int64_t>& ids,
                                       const std::vector<int64_t>& counts, int64_t pad_id) {
  size_t pads = static_cast<size_t>(std::count(ids.begin(), ids.end(), pad_id));
  VLA_CHECK(pads == counts.size(), "prompt has ", pads, " image placeholders (id ", pad_id,
            ") but ", counts.size(), " images were given");
  std::vector<int64_t> out;
  size_t k = 0;
  for (auto id : ids) {
    if (id != pad_id) {
      out.push_back(id);
      continue;
    }
    VLA_CHECK(counts[k] > 0, "image ", k, " has a non-positive token count ", counts[k]);
    out.insert(out.end(), static_cast<size_t>(counts[k++]), pad_id);
  }
  return out;
}

std::string expand_placeholders(const std::string& text, const std::vector<int64_t>& counts,
                                const std::string& placeholder) {
  VLA_CHECK(!placeholder.empty(), "expand_placeholders: empty placeholder");
  std::string out;
  size_t pos = 0, k = 0;
  while (true) {
    size_t f = text.find(placeholder, pos);
    if (f == std::string::npos) break;
    VLA_CHECK(k < counts.size(), "prompt has more ", placeholder, " placeholders than the ",
              counts.size(), " images given");
    VLA_CHECK(counts[k] > 0, "image ", k, " has a non-positive token count ", counts[k]);
    out.append(text, pos, f - pos);
    for (int64_t r = 0; r < counts[k]; ++r) out += placeholder;
    ++k;
    pos = f + placeholder.size();
  }
  VLA_CHECK(k == counts.size(), "prompt has ", k, " ", placeholder, " placeholders but ",
            counts.size(), " images were given");
  out.append(text, pos, std::string::npos);
  return out;
}

}  // namespace vla
