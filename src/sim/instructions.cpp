// Instruction phrasings (English and Korean) naming the target port by colour.
#include "sim/sim.h"

namespace vla::sim {
namespace {

std::string replace_all(std::string s, const std::string& key, const std::string& value) {
  for (size_t pos = s.find(key); pos != std::string::npos; pos = s.find(key, pos + value.size())) {
    s.replace(pos, key.size(), value);
  }
  return s;
}

// {c}: English colour name, {k}: Korean colour name.
const std::vector<std::string>& english() {
  static const std::vector<std::string> p = {
      "insert the needle into the {c} port",
      "put the needle in the {c} port",
      "guide the needle into the {c} insertion port",
      "please insert the needle into the port marked {c}",
      "move to the {c} port and insert the needle",
  };
  return p;
}
const std::vector<std::string>& korean() {
  static const std::vector<std::string> p = {
      "바늘을 {k} 포트에 삽입하세요",
      "{k} 포트에 바늘을 넣어 주세요",
      "{k} 삽입구로 바늘을 찔러 넣으세요",
  };
  return p;
}

}  // namespace

int num_english_phrasings() { return static_cast<int>(english().size()); }
int num_phrasings() { return static_cast<int>(english().size() + korean().size()); }

std::string make_instruction(const PortInfo& port, int phrasing) {
  VLA_CHECK(phrasing >= 0 && phrasing < num_phrasings(), "instruction phrasing ", phrasing,
            " out of range [0, ", num_phrasings(), ")");
  const std::string& tmpl = phrasing < num_english_phrasings()
                                ? english()[phrasing]
                                : korean()[phrasing - num_english_phrasings()];
  return replace_all(replace_all(tmpl, "{c}", port.color), "{k}", port.color_ko);
}

}  // namespace vla::sim
