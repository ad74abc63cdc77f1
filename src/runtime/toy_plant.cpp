// ToyPlant: a tiny deterministic stand-in plant for tests and benchmarks without MuJoCo.
#include <cmath>
#include <limits>

#include "runtime/runtime.h"

namespace vla::runtime {
namespace {
uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
double uniform(uint64_t& x) { return static_cast<double>(splitmix(x) >> 11) * 0x1.0p-53; }
}  // namespace

ToyPlant::ToyPlant(uint64_t seed, double time_limit, bool can_finish)
    : time_limit_(time_limit), can_finish_(can_finish), rng_(seed * 7919 + 1) {
  for (int k = 0; k < 3; ++k) goal_[k] = static_cast<float>(0.01 + 0.02 * uniform(rng_));
  pos_ = {0.0f, 0.0f, 0.03f};
  target_ = pos_;
  goal_[2] = static_cast<float>(0.002 + 0.01 * uniform(rng_));
}

std::vector<Image> ToyPlant::render() {
  // One 32x32 view with a dot at the goal and one at the point (enough to exercise the pipeline).
  Image img = make_image(32, 32, 3, 20);
  auto dot = [&](const Action& p, uint8_t r, uint8_t g) {
    int x = std::max(0, std::min(31, static_cast<int>(p[0] / 0.04 * 31)));
    int y = std::max(0, std::min(31, static_cast<int>(p[1] / 0.04 * 31)));
    img.row(y)[x * 3] = r;
    img.row(y)[x * 3 + 1] = g;
  };
  dot(goal_, 255, 0);
  dot(pos_, 0, 255);
  return {img};
}

void ToyPlant::set_chunk(const std::vector<Action>& chunk) {
  chunk_ = chunk;
  chunk_start_ = n_;
}

ForceSample ToyPlant::step_physics() {
  // The chunk's action i (a target delta) is applied at 80 Hz steps from the call.
  if (!chunk_.empty()) {
    const int64_t steps = n_ - chunk_start_;
    // An action is consumed whenever the 80 Hz clock ticks.
    const int64_t a_prev = (steps * 80) / 650;
    const int64_t a_now = ((steps + 1) * 80) / 650;
    if (steps == 0 || a_now != a_prev) {
      const int64_t i = steps == 0 ? 0 : a_now;
      if (i < static_cast<int64_t>(chunk_.size())) {
        for (int k = 0; k < 3; ++k) target_[k] += chunk_[static_cast<size_t>(i)][k];
      }
    }
  }
  for (int k = 0; k < 3; ++k) pos_[k] += static_cast<float>((target_[k] - pos_[k]) * 0.05);
  ++n_;
  ForceSample s;
  s.t = time();
  const float contact = pos_[2] < 0.0f ? -pos_[2] * 2000.0f : 0.0f;
  for (int k = 0; k < 6; ++k) s.f[k] = static_cast<float>((uniform(rng_) - 0.5) * 0.02);
  s.f[2] += contact;
  return s;
}

PlantOutcome ToyPlant::outcome() {
  PlantOutcome o;
  if (!can_finish_) return o;
  double d2 = 0;
  for (int k = 0; k < 3; ++k) d2 += (pos_[k] - goal_[k]) * (pos_[k] - goal_[k]);
  if (std::sqrt(d2) < 0.002) {
    o.done = o.success = true;
    o.reason = "success";
  } else if (time() >= time_limit_) {
    o.done = true;
    o.reason = "timeout";
  }
  return o;
}

PolicyFns toy_policy(ToyPlant& plant) {
  PolicyFns p;
  p.name = "toy";
  p.encode = [&plant](const std::vector<Image>& views, const std::string&) {
    VLA_CHECK(!views.empty(), "toy policy: no views");
    Action g = plant.goal();
    return torch::tensor({g[0], g[1], g[2]});
  };
  p.act = [](const torch::Tensor& vl, const torch::Tensor& window, const torch::Tensor& proprio) {
    VLA_CHECK(window.dim() == 2 && window.size(1) == 6, "toy policy: window must be [W,6]");
    auto err = vl - proprio;
    auto out = torch::empty({8, 3});
    auto step = (err / 8.0).clamp(-0.00025, 0.00025);
    for (int i = 0; i < 8; ++i) out[i] = step;
    return out;
  };
  return p;
}

}  // namespace vla::runtime
