// Adapter: the learned vla::policy::Policy as runtime PolicyFns.
#include "runtime/runtime.h"

namespace vla::runtime {

PolicyFns policy_fns(std::shared_ptr<vla::policy::Policy> policy) {
  VLA_CHECK(policy != nullptr, "runtime: null policy");
  PolicyFns p;
  p.name = policy->info().value("dir", std::string("policy"));
  p.sensor_window = policy->sensor_window();
  p.horizon = policy->horizon();
  p.encode = [policy](const std::vector<Image>& views, const std::string& instruction) {
    return policy->encode(views, instruction);
  };
  p.prepare = [policy](const std::string& instruction) { policy->prepare_vlm(instruction); };
  p.act = [policy](const torch::Tensor& vl, const torch::Tensor& window,
                   const torch::Tensor& proprio) { return policy->act(vl, window, proprio); };
  if (policy->config().has_memory())
    p.expert_features = [policy](const torch::Tensor& first, const torch::Tensor& newest) {
      return policy->expert_features(first, newest);
    };
  return p;
}

}  // namespace vla::runtime
