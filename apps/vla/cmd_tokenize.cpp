// `vla tokenize` (Qwen2 tokenizer + chat template) and `vla checkpoint` (inspect/validate a
// Hugging Face checkpoint folder: config, safetensors, tokenizer).
#include "command.h"
#include "core/core.h"
#include "models/models.h"
#include "text/text.h"
#include "weights/weights.h"

namespace {

std::vector<int64_t> parse_counts(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      out.push_back(std::stoll(item));
    } catch (const std::exception&) {
      throw vla::Error("--image-tokens: '" + item + "' is not an integer");
    }
  }
  return out;
}

void add_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "tokenize",
      "Encode text with a Hugging Face tokenizer folder (Qwen2 byte-level BPE) and print ids");
  struct Opts {
    std::string tokenizer, text, file, json_out, image_tokens;
    bool chat = false, no_gen = false, decode = false;
    int images = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--tokenizer", o->tokenizer,
                  "Folder with tokenizer.json (+ chat template), e.g. a checkpoint folder")
      ->required();
  cmd->add_option("--text", o->text, "Text to encode");
  cmd->add_option("--file", o->file, "Read the text from this file instead of --text");
  cmd->add_flag("--chat", o->chat,
                "Wrap the text as one user message with the folder's chat template (Qwen2-VL)");
  cmd->add_option("--images", o->images,
                  "With --chat: number of image placeholders before the "
                  "text (default 0)");
  cmd->add_option("--image-tokens", o->image_tokens,
                  "Comma-separated merged-token count per image: expands each <|image_pad|> "
                  "(e.g. 64,64)");
  cmd->add_flag("--no-generation-prompt", o->no_gen,
                "With --chat: do not append '<|im_start|>assistant\\n'");
  cmd->add_flag("--decode", o->decode, "Treat --text as comma-separated ids and decode them");
  cmd->add_option("--json", o->json_out, "Also write {text, ids, tokens} to this JSON file");
  cmd->callback([o] {
    auto tok = vla::Tokenizer::from_folder(o->tokenizer);
    std::string text = o->file.empty() ? o->text : vla::read_file(o->file);
    if (o->decode) {
      auto ids = parse_counts(text);
      std::printf("%s\n", tok.decode(ids).c_str());
      return;
    }
    if (o->chat) {
      std::vector<vla::ChatContent> parts(static_cast<size_t>(o->images),
                                          vla::ChatContent::Image());
      parts.push_back(vla::ChatContent::Text(text));
      vla::ChatOptions opt;
      opt.add_generation_prompt = !o->no_gen;
      text = tok.apply_chat_template({vla::ChatMessage::Parts("user", parts)}, opt);
    }
    vla::Stopwatch sw;
    auto ids = tok.encode(text);
    double ms = sw.elapsed_ms();
    if (!o->image_tokens.empty())
      ids = vla::expand_image_pads(ids, parse_counts(o->image_tokens),
                                   tok.require_token("<|image_pad|>"));
    std::vector<std::string> toks;
    for (auto id : ids) toks.push_back(tok.id_to_token(id));
    if (o->chat) std::printf("rendered:\n%s\n", text.c_str());
    std::printf("%zu tokens (%.3f ms):", ids.size(), ms);
    for (auto id : ids) std::printf(" %lld", static_cast<long long>(id));
    std::printf("\n");
    if (!o->json_out.empty())
      vla::write_json_atomic(o->json_out, {{"text", text}, {"ids", ids}, {"tokens", toks}});
  });
}
VLA_REGISTER_COMMAND(800, add_tokenize);

void add_checkpoint(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "checkpoint",
      "Inspect and validate a Hugging Face Qwen2.5-VL checkpoint folder (config.json, "
      "safetensors incl. sharded index, tokenizer, chat template)");
  auto dir = std::make_shared<std::string>();
  auto json_out = std::make_shared<std::string>();
  auto list = std::make_shared<bool>(false);
  cmd->add_option("dir", *dir, "Checkpoint folder")->required();
  cmd->add_flag("--tensors", *list, "List every tensor (name, dtype, shape)");
  cmd->add_option("--json", *json_out, "Write the summary to this JSON file");
  auto no_load = std::make_shared<bool>(false);
  cmd->add_flag("--no-load", *no_load,
                "Skip the load check (building the model and loading every tensor, as `vla "
                "features` does)");
  cmd->callback([dir, json_out, list, no_load] {
    nlohmann::json out;
    out["path"] = *dir;
    auto cfg = vla::Qwen25VLConfig::load(*dir);
    out["layout"] = cfg.layout;
    out["config"] = cfg.to_json();
    std::printf(
        "config: %s layout, text %lld layers x %lld hidden (%lld heads, %lld kv), vocab "
        "%lld; vision %lld blocks x %lld hidden\n",
        cfg.layout.c_str(), (long long)cfg.text.num_hidden_layers, (long long)cfg.text.hidden_size,
        (long long)cfg.text.num_attention_heads, (long long)cfg.text.num_key_value_heads,
        (long long)cfg.text.vocab_size, (long long)cfg.vision.depth,
        (long long)cfg.vision.hidden_size);
    vla::Stopwatch sw;
    auto ws = vla::WeightStore::open(*dir);
    out["tensors"] = ws.size();
    out["bytes"] = ws.total_bytes();
    out["open_ms"] = sw.elapsed_ms();
    std::printf("weights: %zu tensors, %.1f MB (opened and validated in %.1f ms)\n", ws.size(),
                static_cast<double>(ws.total_bytes()) / 1e6, sw.elapsed_ms());
    if (*list) {
      vla::Table t({"tensor", "dtype", "shape"});
      for (const auto& n : ws.names()) {
        const auto& i = ws.info(n);
        t.add_row({n, vla::st_dtype_name(i.dtype), vla::shape_str(i.shape)});
      }
      t.print();
    }
    if (vla::file_exists(*dir + "/tokenizer.json")) {
      auto tok = vla::Tokenizer::from_folder(*dir);
      out["tokenizer_vocab"] = tok.vocab_size();
      out["chat_template"] = tok.has_chat_template() ? "qwen2-vl" : "none";
      VLA_CHECK(tok.token_to_id("<|image_pad|>") == cfg.image_token_id, *dir,
                ": tokenizer's <|image_pad|> id ", tok.token_to_id("<|image_pad|>"),
                " differs from config image_token_id ", cfg.image_token_id);
      std::printf("tokenizer: %lld ids, chat template %s, <|image_pad|> = %lld (matches config)\n",
                  (long long)tok.vocab_size(), tok.has_chat_template() ? "Qwen2-VL" : "none",
                  (long long)cfg.image_token_id);
    }
    // "Valid" means "loads": the same loading code as every command that uses the model (every
    // required tensor present with the right shape, an untied lm_head included). bf16 halves
    // the memory this takes; --no-load skips it for a quick look at a large checkpoint.
    if (!*no_load) {
      vla::Stopwatch lsw;
      try {
        vla::Qwen25VLImpl::from_pretrained(*dir, torch::kBFloat16);
      } catch (const vla::Error& e) {
        out["loads"] = false;
        out["load_error"] = e.what();
        if (!json_out->empty()) vla::write_json_atomic(*json_out, out);
        throw vla::Error(vla::str_cat("checkpoint does not load: ", e.what()));
      }
      out["loads"] = true;
      std::printf("load check: every model tensor present with its shape (%.0f ms)\n",
                  lsw.elapsed_ms());
    }
    if (!json_out->empty()) vla::write_json_atomic(*json_out, out);
  });
}
VLA_REGISTER_COMMAND(810, add_checkpoint);

}  // namespace
