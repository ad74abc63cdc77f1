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
  p.act = [policy](const torch::Tensor& vl, const torch::Tensor& window,
                   const torch::Tensor& proprio) { return policy->act(vl, window, proprio); };
  if (policy->config().has_memory())
    p.expert_features = [policy](const torch::Tensor& first, const torch::Tensor& newest) {
      return policy->expert_features(first, newest);
    };
  return p;
}

#ifdef VLA_RUNTIME_WITH_SIM
vla::sim::Policy sim_policy(std::shared_ptr<vla::policy::Policy> policy) {
  VLA_CHECK(policy != nullptr, "runtime: null policy");
  // Scene memory: the first features of the episode, kept until the env is reset.
  struct Memory {
    torch::Tensor first;
    int64_t steps = -1;
  };
  auto memory = std::make_shared<Memory>();
  return [policy, memory](const vla::sim::NeedleEnv& env) {
    // render() is not const (it makes the GL context current); the env is only read otherwise.
    auto views = const_cast<vla::sim::NeedleEnv&>(env).render();
    auto vl = policy->encode(views, env.instruction());
    if (env.steps() <= memory->steps || !memory->first.defined())
      memory->first = vl;  // new episode
    memory->steps = env.steps();
    vl = policy->expert_features(memory->first, vl);
    const int64_t w = policy->sensor_window();
    auto window = torch::zeros({w, vla::sim::kForceDim});
    const auto& log = env.force_log();
    const int64_t n = std::min<int64_t>(w, static_cast<int64_t>(log.size()));
    for (int64_t i = 0; i < n; ++i) {
      const auto& f = log[log.size() - static_cast<size_t>(n) + static_cast<size_t>(i)].f;
      for (int k = 0; k < vla::sim::kForceDim; ++k) window[w - n + i][k] = f[k];
    }
    const auto p = env.proprio();
    auto chunk = policy->act(vl, window, torch::tensor({p[0], p[1], p[2]}));
    vla::sim::Chunk out(
        static_cast<size_t>(std::min<int64_t>(chunk.size(0), vla::sim::kChunkSize)));
    for (size_t i = 0; i < out.size(); ++i)
      for (int k = 0; k < vla::sim::kActionDim; ++k)
        out[i][k] = chunk[static_cast<int64_t>(i)][k].item<float>();
    return out;
  };
}
#endif

}  // namespace vla::runtime
