// Chat templates: found in a checkpoint folder, rendered by the Jinja interpreter (src/jinja).
#include "core/core.h"
#include "text/text.h"

namespace vla {

namespace {
using json = nlohmann::json;

const std::string kQwen2VLJinja =
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

json parse_json_file(const std::string& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw Error(str_cat(path, ": invalid JSON: ", e.what()));
  }
}

// "chat_template" value: a string, or a list of {name, template} (the "default" one is used).
std::string template_from_value(const json& v, const std::string& source) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    for (const auto& e : v)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
          e["template"].is_string())
        return e["template"].get<std::string>();
    throw Error(str_cat(source, ": chat_template list has no 'default' entry"));
  }
  throw Error(str_cat(source, ": chat_template must be a string or a list of {name, template}"));
}
}  // namespace

ChatMessage ChatMessage::Text(std::string role, std::string text) {
  ChatMessage m;
  m.role = std::move(role);
  m.content_is_string = true;
  m.text = std::move(text);
  return m;
}

ChatMessage ChatMessage::Parts(std::string role, std::vector<ChatContent> parts) {
  ChatMessage m;
  m.role = std::move(role);
  m.parts = std::move(parts);
  return m;
}

ChatMessage ChatMessage::from_json(const nlohmann::json& j) {
  VLA_CHECK(j.is_object() && j.contains("role") && j["role"].is_string(),
            "chat message needs a string 'role': ", j.dump());
  VLA_CHECK(j.contains("content"), "chat message needs 'content': ", j.dump());
  const auto& c = j["content"];
  if (c.is_string()) return Text(j["role"], c.get<std::string>());
  VLA_CHECK(c.is_array(), "chat message content must be a string or a list: ", j.dump());
  std::vector<ChatContent> parts;
  for (const auto& p : c) {
    VLA_CHECK(p.is_object(), "chat content part must be an object: ", p.dump());
    std::string type = p.value("type", "");
    // Same tests, same order, as the Jinja template.
    if (type == "image" || p.contains("image") || p.contains("image_url")) {
      parts.push_back(ChatContent::Image());
    } else if (type == "video" || p.contains("video")) {
      parts.push_back(ChatContent::Video());
    } else if (p.contains("text")) {
      VLA_CHECK(p["text"].is_string(), "chat content 'text' must be a string: ", p.dump());
      parts.push_back(ChatContent::Text(p["text"].get<std::string>()));
    } else {
      throw Error(str_cat("chat content part of unknown type: ", p.dump()));
    }
  }
  return Parts(j["role"], std::move(parts));
}

const std::string& ChatTemplate::qwen2_vl_jinja() { return kQwen2VLJinja; }

ChatTemplate ChatTemplate::qwen2_vl() {
  return from_string(kQwen2VLJinja, "built-in Qwen2-VL template");
}

ChatTemplate ChatTemplate::from_string(const std::string& jinja, const std::string& source) {
  ChatTemplate t;
  t.source_ = source;
  t.template_ = std::make_shared<jinja::Template>(jinja::Template::parse(jinja, source));
  return t;
}

ChatTemplate ChatTemplate::from_folder(const std::string& dir) {
  // Same precedence as transformers: chat_template.jinja, chat_template.json, tokenizer_config.
  const std::string jinja = dir + "/chat_template.jinja";
  if (file_exists(jinja)) return from_string(read_file(jinja), jinja);
  const std::string js = dir + "/chat_template.json";
  if (file_exists(js)) {
    json j = parse_json_file(js);
    VLA_CHECK(j.is_object() && j.contains("chat_template"), js, ": missing 'chat_template'");
    return from_string(template_from_value(j["chat_template"], js), js);
  }
  const std::string cfg = dir + "/tokenizer_config.json";
  if (file_exists(cfg)) {
    json j = parse_json_file(cfg);
    if (j.is_object() && j.contains("chat_template") && !j["chat_template"].is_null())
      return from_string(template_from_value(j["chat_template"], cfg), cfg);
  }
  throw Error(str_cat("no chat template in ", dir,
                      " (looked for chat_template.jinja, chat_template.json and "
                      "tokenizer_config.json's chat_template)"));
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 const ChatOptions& options) const {
  VLA_CHECK(template_ != nullptr, "chat template: render() on an empty template");
  nlohmann::ordered_json ctx = nlohmann::ordered_json::object();
  auto msgs = nlohmann::ordered_json::array();
  for (const auto& m : messages) {
    nlohmann::ordered_json j = {{"role", m.role}};
    if (m.content_is_string) {
      j["content"] = m.text;
    } else {
      auto parts = nlohmann::ordered_json::array();
      for (const auto& p : m.parts) {
        switch (p.type) {
          case ChatContent::Type::kImage:
            parts.push_back({{"type", "image"}});
            break;
          case ChatContent::Type::kVideo:
            parts.push_back({{"type", "video"}});
            break;
          case ChatContent::Type::kText:
            parts.push_back({{"type", "text"}, {"text", p.text}});
            break;
        }
      }
      j["content"] = parts;
    }
    msgs.push_back(j);
  }
  ctx["messages"] = msgs;
  ctx["add_generation_prompt"] = options.add_generation_prompt;
  if (options.add_vision_id) ctx["add_vision_id"] = true;
  if (options.extra.is_object())
    for (const auto& [k, v] : options.extra.items()) ctx[k] = v;
  return template_->render(ctx);
}

}  // namespace vla
