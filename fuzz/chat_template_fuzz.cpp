// libFuzzer harness: chat templates. First byte even: the bytes are a Jinja template given to
// ChatTemplate::from_string and rendered (the Jinja interpreter, src/jinja). Odd: they are a JSON
// list of messages (ChatMessage:: from_json) rendered with the Qwen2-VL template, with and without
// the generation prompt.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "text/text.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool messages = data[0] & 1;
  ++data, --size;
  try {
    if (!messages) {
      auto t = vla::ChatTemplate::from_string(
          std::string(reinterpret_cast<const char*>(data), size), "fuzz");
      (void)t.render({vla::ChatMessage::Parts("user", {vla::ChatContent::Text("hi")})});
      return 0;
    }
    auto j = nlohmann::json::parse(data, data + size, nullptr, false);
    if (j.is_discarded() || !j.is_array()) return 0;
    std::vector<vla::ChatMessage> msgs;
    for (const auto& m : j) msgs.push_back(vla::ChatMessage::from_json(m));
    const auto t = vla::ChatTemplate::qwen2_vl();
    vla::ChatOptions o;
    (void)t.render(msgs, o);
    o.add_generation_prompt = !o.add_generation_prompt;
    (void)t.render(msgs, o);
  } catch (const vla::Error&) {
  }
  return 0;
}
