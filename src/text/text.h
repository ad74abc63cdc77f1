// vla text: the Qwen2 byte-level BPE tokenizer read from a Hugging Face tokenizer.json, and chat
// templates (any Hugging Face Jinja template, rendered by src/jinja) with image placeholders.
//
// Pipeline (identical to HF `tokenizers` for Qwen2/Qwen2.5-VL files):
//   added/special tokens matched first on the raw text (leftmost-longest) ->
//   NFC normaliser (when the file has one) -> Split pre-tokenizer with Qwen2's regex (matched by
//   hand over code points with Unicode \p{L}/\p{N}/White_Space tables) -> byte-level mapping ->
//   BPE with merge ranks -> ids.
// Unicode tables come from Python's unicodedata (Unicode 14); code points added in later Unicode
// versions are classified as "other".
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "jinja/jinja.h"

namespace vla {

struct AddedToken {
  int64_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false;  // swallow whitespace on the left / right of the match
  bool rstrip = false;
  bool normalized = false;
};

// One part of a chat message: text, an image placeholder or a video placeholder.
struct ChatContent {
  enum class Type { kText, kImage, kVideo };
  Type type = Type::kText;
  std::string text;
  static ChatContent Text(std::string t) { return {Type::kText, std::move(t)}; }
  static ChatContent Image() { return {Type::kImage, ""}; }
  static ChatContent Video() { return {Type::kVideo, ""}; }
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  // content as a plain string (content_is_string) or as a list of parts, as in HF messages.
  bool content_is_string = false;
  std::string text;
  std::vector<ChatContent> parts;
  static ChatMessage Text(std::string role, std::string text);
  static ChatMessage Parts(std::string role, std::vector<ChatContent> parts);
  // Parses an HF-style message {"role": .., "content": "str" | [{"type": "image"}, {"type":
  // "text", "text": ..}, ...]}.
  static ChatMessage from_json(const nlohmann::json& j);
};

struct ChatOptions {
  bool add_generation_prompt = true;
  bool add_vision_id = false;  // "Picture 1: " before each image (Qwen2-VL template option)
  // Further template variables, as transformers' apply_chat_template(**kwargs) passes them
  // (e.g. "tools", "bos_token"); a JSON object, or null for none.
  nlohmann::ordered_json extra;
};

// A Hugging Face chat template (Jinja) rendered by vla::jinja as transformers'
// apply_chat_template(messages, tokenize=False, ...) renders it: any template the interpreter
// covers (src/jinja/jinja.h), published or edited.
class ChatTemplate {
 public:
  // Parses a Jinja template text; `source` names the file in errors. Throws vla::Error
  // "<source>:<line>: ..." on a syntax error.
  static ChatTemplate from_string(const std::string& jinja, const std::string& source);
  // Finds the template in DIR/chat_template.jinja, DIR/chat_template.json or
  // DIR/tokenizer_config.json ("chat_template": string or [{name, template}], "default" used).
  // Throws when none exists or it does not parse.
  static ChatTemplate from_folder(const std::string& dir);
  // The built-in Qwen2-VL template (the one this project's tokenizer folder ships; Qwen2.5-VL
  // instruct checkpoints ship the same text).
  static ChatTemplate qwen2_vl();
  static const std::string& qwen2_vl_jinja();  // its exact Jinja text

  const std::string& source() const { return source_; }
  // Renders messages (HF format: role + string content or a list of text / image / video
  // parts) with add_generation_prompt, add_vision_id when set, and options.extra. Throws
  // vla::Error "<source>:<line>: ..." when the template fails (e.g. its raise_exception).
  std::string render(const std::vector<ChatMessage>& messages,
                     const ChatOptions& options = {}) const;

 private:
  std::shared_ptr<const jinja::Template> template_;
  std::string source_;
};

class Tokenizer {
 public:
  // Reads an HF tokenizer.json (BPE model, byte-level, Qwen2 Split regex). Throws vla::Error
  // naming the file and field for anything unsupported or malformed.
  static Tokenizer from_file(const std::string& tokenizer_json);
  // DIR/tokenizer.json plus, when present, the chat template and tokenizer_config.json
  // (eos/pad token names).
  static Tokenizer from_folder(const std::string& dir);

  // Encodes text (no BOS/EOS added: Qwen2 adds none). Special tokens in the text are matched.
  std::vector<int64_t> encode(const std::string& text) const;
  // Decodes ids; added special tokens are dropped when skip_special. Invalid UTF-8 from partial
  // byte sequences becomes U+FFFD (as HF's lossy decode). Unknown ids throw.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special = false) const;
  // Byte-level token string of an id, e.g. "Ġthe"; throws for unknown ids.
  std::string id_to_token(int64_t id) const;
  // -1 when the token does not exist.
  int64_t token_to_id(const std::string& token) const;
  // Like token_to_id but throws "tokenizer has no token '<|image_pad|>'".
  int64_t require_token(const std::string& token) const;
  // Number of ids (max id + 1 over vocab and added tokens).
  int64_t vocab_size() const { return vocab_size_; }
  bool is_special(int64_t id) const;
  const std::vector<AddedToken>& added_tokens() const { return added_; }

  // Chat template (from_folder only); has_chat_template() false otherwise.
  bool has_chat_template() const { return chat_template_ != nullptr; }
  const ChatTemplate& chat_template() const;
  std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                  const ChatOptions& options = {}) const;
  // eos/pad token names from tokenizer_config.json ("" when absent).
  const std::string& eos_token() const { return eos_token_; }
  const std::string& pad_token() const { return pad_token_; }
  const std::string& path() const { return path_; }

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
  std::vector<AddedToken> added_;
  std::shared_ptr<ChatTemplate> chat_template_;
  std::string eos_token_, pad_token_, path_;
  int64_t vocab_size_ = 0;
};

// Replaces the k-th `pad_id` in ids with counts[k] copies of it (the per-image merged-token
// counts, grid_t * grid_h * grid_w / merge^2), as Qwen2-VL's processor expands <|image_pad|>.
// Throws when the number of pads in ids differs from counts.size().
std::vector<int64_t> expand_image_pads(const std::vector<int64_t>& ids,
                                       const std::vector<int64_t>& counts, int64_t pad_id);
// The same on text, before tokenization: each `placeholder` ("<|image_pad|>") becomes counts[k]
// copies.
std::string expand_placeholders(const std::string& text, const std::vector<int64_t>& counts,
                                const std::string& placeholder = "<|image_pad|>");

// ------------------------------------------------------------------ Unicode helpers (tested)
namespace unicode {
std::vector<char32_t> utf8_to_codepoints(const std::string& s);  // invalid bytes -> U+FFFD
std::string codepoints_to_utf8(const std::vector<char32_t>& cps);
// Lossy UTF-8 validation: invalid sequences become U+FFFD (as Rust's String::from_utf8_lossy).
std::string utf8_lossy(const std::string& bytes);
bool is_letter(char32_t c);      // \p{L}
bool is_number(char32_t c);      // \p{N}
bool is_whitespace(char32_t c);  // \s (Unicode White_Space)
std::string nfc(const std::string& s);
// Qwen2 pre-tokenizer: splits into the pieces the Split regex isolates (byte offsets).
std::vector<std::pair<size_t, size_t>> qwen2_split(const std::vector<char32_t>& cps);
}  // namespace unicode

}  // namespace vla
