#include "text/text.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include "core/core.h"

namespace vla {
namespace {

using json = nlohmann::json;

std::string fx(const std::string& rel) {
  return std::string(VLA_SOURCE_DIR) + "/tests/fixtures/tokenizer/" + rel;
}

std::string temp_dir() {
  char tmpl[] = "/tmp/vla_text_test_XXXXXX";
  char* d = mkdtemp(tmpl);
  return d ? std::string(d) : std::string("/tmp");
}

const Tokenizer& tok() {
  static const Tokenizer t = Tokenizer::from_folder(fx(""));
  return t;
}

std::vector<int64_t> ids_of(const json& j) { return j.get<std::vector<int64_t>>(); }

TEST(Tokenizer, IdenticalIdsToHfOnTheWholeCorpus) {
  auto ref = read_json(fx("reference_ids.json"));
  ASSERT_EQ(ref["mismatches"], 0);  // HF tokenizers == transformers AutoTokenizer there
  int checked = 0;
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"];
    auto ids = tok().encode(text);
    EXPECT_EQ(ids, ids_of(c["ids"])) << "text: " << text;
    ++checked;
  }
  EXPECT_GE(checked, 60);
}

TEST(Tokenizer, DecodeMatchesHfAndRoundTrips) {
  auto ref = read_json(fx("reference_ids.json"));
  for (const auto& c : ref["cases"]) {
    auto ids = ids_of(c["ids"]);
    EXPECT_EQ(tok().decode(ids), c["decoded"].get<std::string>()) << c["text"];
    EXPECT_EQ(tok().decode(ids, /*skip_special=*/true),
              c["decoded_skip_special"].get<std::string>())
        << c["text"];
    // Round trip: decode(encode(x)) == NFC(x).
    const std::string text = c["text"];
    EXPECT_EQ(tok().decode(tok().encode(text)), unicode::nfc(text)) << text;
  }
}

TEST(Tokenizer, VocabularyAndSpecialTokens) {
  EXPECT_EQ(tok().vocab_size(), 3016);
  const int64_t pad = tok().require_token("<|image_pad|>");
  EXPECT_TRUE(tok().is_special(pad));
  EXPECT_EQ(tok().id_to_token(pad), "<|image_pad|>");
  const int64_t call = tok().require_token("<tool_call>");
  EXPECT_FALSE(tok().is_special(call));  // added but not special: kept by skip_special
  EXPECT_EQ(tok().decode({call}, true), "<tool_call>");
  EXPECT_EQ(tok().decode({pad}, true), "");
  EXPECT_EQ(tok().token_to_id("no-such-token"), -1);
  EXPECT_THROW(tok().require_token("<|nope|>"), Error);
  EXPECT_THROW(tok().id_to_token(99999), Error);
  EXPECT_THROW(tok().decode({-1}), Error);
  // Byte-level token strings: " the" is "Ġthe".
  auto the = tok().encode(" the");
  ASSERT_EQ(the.size(), 1u);
  EXPECT_EQ(tok().id_to_token(the[0]), "\xC4\xA0the");
  EXPECT_EQ(tok().eos_token(), "<|im_end|>");
  EXPECT_EQ(tok().pad_token(), "<|endoftext|>");
}

TEST(Tokenizer, AddedTokensAreMatchedBeforeNfc) {
  // HF tokenizers split added tokens (normalized: false) off the raw text and normalise the
  // stretches between them on their own. NFC of the whole text would compose the token's '>' with
  // a following U+0338 into U+226F and lose the token (found by fuzz/tokenizer_encode_fuzz).
  const int64_t pad = tok().require_token("<|image_pad|>");
  const std::string text = "a<|image_pad|>\u0330\u0338h";
  const std::vector<int64_t> ids = tok().encode(text);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), pad), 1);
  EXPECT_EQ(tok().decode(ids), "a<|image_pad|>" + unicode::nfc("\u0330\u0338h"));
  EXPECT_NE(tok().decode(ids), unicode::nfc(text));  // the whole-text NFC differs here
}

TEST(Tokenizer, PartialUtf8DecodesLossily) {
  // A Korean syllable is 3 bytes; decoding only its first byte token gives U+FFFD as HF does.
  auto ids = tok().encode("\xEB\xB0\x94");  // 바
  std::string all = tok().decode(ids);
  EXPECT_EQ(all, "\xEB\xB0\x94");
  EXPECT_EQ(unicode::utf8_lossy("a\xEB\xB0"), "a\xEF\xBF\xBD");
  EXPECT_EQ(unicode::utf8_lossy("\xFF"
                                "b"),
            "\xEF\xBF\xBD"
            "b");
}

TEST(Unicode, CategoriesAndNfc) {
  EXPECT_TRUE(unicode::is_letter(U'a'));
  EXPECT_TRUE(unicode::is_letter(U'\uBC14'));   // 바
  EXPECT_TRUE(unicode::is_letter(U'\u4E2D'));   // 中
  EXPECT_TRUE(unicode::is_letter(U'\u01C5'));   // ǅ Lt
  EXPECT_FALSE(unicode::is_letter(U'\u0301'));  // combining mark
  EXPECT_TRUE(unicode::is_number(U'7'));
  EXPECT_TRUE(unicode::is_number(U'\u0663'));  // Arabic-Indic 3
  EXPECT_TRUE(unicode::is_number(U'\u216B'));  // Ⅻ Nl
  EXPECT_TRUE(unicode::is_number(U'\u00BD'));  // ½ No
  EXPECT_TRUE(unicode::is_whitespace(U'\u3000'));
  EXPECT_TRUE(unicode::is_whitespace(U'\u00A0'));
  EXPECT_FALSE(unicode::is_whitespace(U'\u200B'));
  // Hangul jamo compose; Latin e + acute composes; already-NFC text is unchanged.
  EXPECT_EQ(unicode::nfc("\u1112\u1161\u11AB"), "\uD55C");
  EXPECT_EQ(unicode::nfc("e\u0301"), "\u00E9");
  EXPECT_EQ(unicode::nfc("\u00E9 \uD55C abc"), "\u00E9 \uD55C abc");
  // Canonical reordering: dot below (ccc 220) before acute (230) -> ẹ́ composes ẹ + ́.
  EXPECT_EQ(unicode::nfc("e\u0301\u0323"), "\u1EB9\u0301");
  // Singleton decomposition: Angstrom sign -> Å.
  EXPECT_EQ(unicode::nfc("\u212B"), "\u00C5");
}

TEST(Unicode, Qwen2SplitPieces) {
  auto split = [](const std::string& s) {
    auto cps = unicode::utf8_to_codepoints(s);
    std::vector<std::string> out;
    for (auto [b, e] : unicode::qwen2_split(cps))
      out.push_back(unicode::codepoints_to_utf8(std::vector<char32_t>(
          cps.begin() + static_cast<long>(b), cps.begin() + static_cast<long>(e))));
    return out;
  };
  EXPECT_EQ(split("I'M here"), (std::vector<std::string>{"I", "'M", " here"}));
  EXPECT_EQ(split("x   hello"), (std::vector<std::string>{"x", "  ", " hello"}));
  EXPECT_EQ(split("a 12!!\n\nb"), (std::vector<std::string>{"a", " ", "1", "2", "!!\n\n", "b"}));
  EXPECT_EQ(split("end  "), (std::vector<std::string>{"end", "  "}));
  EXPECT_EQ(split("a \n b"), (std::vector<std::string>{"a", " \n", " b"}));
}

TEST(ChatTemplate, IdenticalToHfApplyChatTemplate) {
  auto ref = read_json(fx("chat_template_ref.json"));
  ASSERT_GE(ref.size(), 6u);
  ASSERT_TRUE(tok().has_chat_template());
  for (const auto& c : ref) {
    EXPECT_EQ(c["method"], "transformers.apply_chat_template");
    std::vector<ChatMessage> msgs;
    for (const auto& m : c["messages"]) msgs.push_back(ChatMessage::from_json(m));
    ChatOptions o;
    o.add_generation_prompt = c["add_generation_prompt"];
    o.add_vision_id = c["kwargs"].value("add_vision_id", false);
    std::string rendered = tok().apply_chat_template(msgs, o);
    EXPECT_EQ(rendered, c["rendered"].get<std::string>()) << c["name"];
    EXPECT_EQ(tok().encode(rendered), ids_of(c["ids"])) << c["name"];
  }
}

TEST(ChatTemplate, FoundInEveryLocationAndEditedTemplatesRender) {
  const std::string jinja = read_file(fx("chat_template.jinja"));
  EXPECT_EQ(jinja, ChatTemplate::qwen2_vl_jinja());
  const std::vector<ChatMessage> msgs = {
      ChatMessage::Parts("user", {ChatContent::Image(), ChatContent::Text("go")})};
  const std::string want = ChatTemplate::qwen2_vl().render(msgs);
  EXPECT_EQ(want,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>go<|im_end|>\n<|im_start|>assistant\n");
  const std::string d1 = temp_dir();
  write_json_atomic(d1 + "/chat_template.json", json{{"chat_template", jinja}});
  EXPECT_EQ(ChatTemplate::from_folder(d1).render(msgs), want);
  const std::string d2 = temp_dir();
  write_json_atomic(
      d2 + "/tokenizer_config.json",
      json{{"chat_template", json::array({{{"name", "default"}, {"template", jinja}},
                                          {{"name", "tool_use"}, {"template", "x"}}})}});
  EXPECT_EQ(ChatTemplate::from_folder(d2).render(msgs), want);
  // A fine-tune's one-character edit renders (it was refused before the interpreter).
  std::string edited = jinja;
  edited.replace(edited.find("helpful"), 7, "careful");
  auto e = ChatTemplate::from_string(edited, "ckpt/chat_template.jinja");
  std::string want_edited = want;
  want_edited.replace(want_edited.find("helpful"), 7, "careful");
  EXPECT_EQ(e.render(msgs), want_edited);
  // The Qwen2 text ChatML template: list contents fail as in transformers (str + list).
  auto t = ChatTemplate::from_string(
      read_file(std::string(VLA_SOURCE_DIR) + "/tests/fixtures/chat_templates/qwen2_chatml.jinja"),
      "chatml.jinja");
  EXPECT_EQ(t.render({ChatMessage::Text("user", "hi")}),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi"
            "<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_THROW(t.render({ChatMessage::Parts("user", {ChatContent::Image()})}), Error);
  // Syntax errors name the file and line.
  try {
    ChatTemplate::from_string("ok\n{% if %}", "ckpt/chat_template.jinja");
    FAIL();
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("ckpt/chat_template.jinja:2:"), std::string::npos)
        << err.what();
  }
  EXPECT_THROW(ChatTemplate::from_folder(temp_dir()), Error);
}

TEST(ChatTemplate, ImagePadExpansion) {
  std::vector<ChatMessage> msgs = {ChatMessage::Parts(
      "user", {ChatContent::Image(), ChatContent::Image(), ChatContent::Text("go")})};
  const std::string prompt = ChatTemplate::qwen2_vl().render(msgs);
  const int64_t pad = tok().require_token("<|image_pad|>");
  auto ids = tok().encode(prompt);
  auto expanded = expand_image_pads(ids, {4, 6}, pad);
  EXPECT_EQ(expanded.size(), ids.size() + 3 + 5);
  EXPECT_EQ(std::count(expanded.begin(), expanded.end(), pad), 10);
  // Text-level expansion then tokenization gives the same ids.
  EXPECT_EQ(tok().encode(expand_placeholders(prompt, {4, 6})), expanded);
  EXPECT_THROW(expand_image_pads(ids, {4}, pad), Error);
  EXPECT_THROW(expand_placeholders(prompt, {4, 6, 1}), Error);
  EXPECT_THROW(expand_image_pads(ids, {4, 0}, pad), Error);
}

TEST(Tokenizer, BadFilesGiveClearErrors) {
  const std::string d = temp_dir();
  auto j = read_json(fx("tokenizer.json"));
  auto expect_err = [&](const json& bad, const std::string& frag) {
    write_json_atomic(d + "/tokenizer.json", bad);
    try {
      Tokenizer::from_file(d + "/tokenizer.json");
      FAIL() << frag;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(frag), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(d), std::string::npos) << e.what();
    }
  };
  auto b = j;
  b["model"]["type"] = "WordPiece";
  expect_err(b, "model.type must be BPE");
  b = j;
  b["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+";
  expect_err(b, "unsupported Split pattern");
  b = j;
  b["normalizer"] = json{{"type", "NFKC"}};
  expect_err(b, "unsupported normalizer");
  b = j;
  b["model"]["merges"].push_back(json::array({"zzz_missing", "q"}));
  expect_err(b, "uses tokens missing from the vocab");
  // Found by fuzz/tokenizer_load_fuzz: a Split without "pattern" read a missing key of a const
  // object (undefined behaviour, a heap overflow under ASan); fields of the wrong type escaped as
  // nlohmann exceptions. Both are clear errors now.
  b = j;
  b["pre_tokenizer"]["pretokenizers"][0].erase("pattern");
  expect_err(b, "unsupported Split pattern");
  b = j;
  b["pre_tokenizer"].erase("pretokenizers");
  expect_err(b, "malformed");
  b = j;
  b["pre_tokenizer"]["pretokenizers"] = json::array({1, 2});
  expect_err(b, "malformed");
  b = j;  // an id that would size the id -> token table at 10^9 entries (fuzz: out of memory)
  b["added_tokens"].push_back(json{{"id", 1000000000}, {"content", "<big>"}});
  expect_err(b, "bad added token");
  b = j;
  b["model"]["vocab"]["zz_big"] = 1 << 29;
  expect_err(b, "is too large");
  EXPECT_THROW(
      Tokenizer::from_file(std::string(VLA_SOURCE_DIR) +
                           "/tests/fixtures/text/fuzz_tokenizer_split_without_pattern.json"),
      Error);
  write_file_atomic(d + "/tokenizer.json", std::string("{\"model\": [1,"));
  EXPECT_THROW(Tokenizer::from_file(d + "/tokenizer.json"), Error);
  EXPECT_THROW(Tokenizer::from_file(d + "/missing.json"), Error);
}

TEST(Tokenizer, ReadsTheQwen25VLFixtureTokenizer) {
  const std::string dir = std::string(VLA_SOURCE_DIR) + "/tests/fixtures/qwen25vl/tiny_a";
  if (!file_exists(dir + "/tokenizer.json")) GTEST_SKIP();
  auto t = Tokenizer::from_folder(dir);
  EXPECT_EQ(t.require_token("<|image_pad|>"), 398);
  EXPECT_EQ(t.decode(t.encode("Insert the needle into the red port.")),
            "Insert the needle into the red port.");
  auto t4 = Tokenizer::from_folder(dir + "_v4");  // chat_template.json layout
  const std::vector<ChatMessage> msgs = {ChatMessage::Text("user", "hi")};
  EXPECT_EQ(t4.apply_chat_template(msgs), t.apply_chat_template(msgs));
}

}  // namespace
}  // namespace vla
