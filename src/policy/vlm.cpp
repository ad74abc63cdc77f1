// The policy's slow path: a Qwen2.5-VL engine behind the VlmEncoder interface.
#include "policy/policy.h"

namespace vla::policy {

std::shared_ptr<VlmEncoder> load_vlm(const std::string& dir, const PolicyConfig&) {
  throw Error(str_cat("policy: cannot load the VLM in '", dir,
                      "': this build has no Qwen2.5-VL engine (src/models)"));
}

}  // namespace vla::policy
