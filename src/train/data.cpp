// Per-tick training data, the feature-reuse schedule and the LR schedule.
#include <cmath>

#include "train/train.h"

namespace vla::train {

std::vector<TickPair> reuse_pairs(int num_ticks, int reuse_count) {
  VLA_CHECK(reuse_count >= 1, "vlm reuse count must be >= 1, got ", reuse_count);
  std::vector<TickPair> out;
  for (int f = 0; f < num_ticks; ++f)
    for (int t = f; t < std::min(num_ticks, f + reuse_count); ++t) out.push_back({f, t});
  return out;
}

TickPair random_staleness_pair(int target_tick, int reuse_count, std::mt19937_64& rng) {
  VLA_CHECK(reuse_count >= 1, "vlm reuse count must be >= 1, got ", reuse_count);
  const int lo = std::max(0, target_tick - reuse_count + 1);
  return {std::uniform_int_distribution<int>(lo, target_tick)(rng), target_tick};
}

std::vector<TickPair> random_staleness_pairs(int num_ticks, int reuse_count, std::mt19937_64& rng) {
  std::vector<TickPair> out;
  for (int t = 0; t < num_ticks; ++t) out.push_back(random_staleness_pair(t, reuse_count, rng));
  return out;
}

double lr_factor(int64_t step, int64_t warmup, int64_t total, double min_factor) {
  if (warmup > 0 && step < warmup)
    return static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (total <= warmup) return 1.0;
  double p = static_cast<double>(step - warmup) / static_cast<double>(total - warmup);
  p = std::min(1.0, std::max(0.0, p));
  return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + std::cos(M_PI * p));
}

EpisodeTicks cut_ticks(const dataset::Episode& ep, int window, int horizon) {
  const std::string where = str_cat("episode ", ep.name);
  VLA_CHECK(ep.force.defined() && ep.force.dim() == 2 && ep.force.size(1) == 7, where,
            ": force must be [N, 7]");
  VLA_CHECK(ep.actions.defined() && ep.actions.dim() == 2 && ep.actions.size(1) == 3, where,
            ": actions must be [M, 3]");
  VLA_CHECK(ep.proprio.defined() && ep.proprio.sizes() == ep.actions.sizes(), where,
            ": proprio must match actions");
  const int64_t nf = ep.force.size(0), na = ep.actions.size(0);
  // A tick is usable when its first action exists.
  int ticks = std::min<int64_t>(ep.num_ticks, (na + 7) / 8);
  VLA_CHECK(ticks > 0, where, ": no usable 10 Hz ticks");
  EpisodeTicks out;
  out.name = ep.name;
  out.instruction = ep.instruction;
  out.num_ticks = ticks;
  out.force = torch::zeros({ticks, window, 6});
  out.proprio = torch::zeros({ticks, 3});
  out.actions = torch::zeros({ticks, horizon, 3});
  auto f6 = ep.force.narrow(1, 1, 6);
  for (int t = 0; t < ticks; ++t) {
    // Samples stamped at <= t * 0.1 s: indices < 65 t (sample i is stamped (i + 1) / 650 s).
    int64_t end = std::min<int64_t>(65LL * t, nf);
    int64_t begin = std::max<int64_t>(0, end - window);
    if (end > begin)
      out.force[t]
          .narrow(0, window - (end - begin), end - begin)
          .copy_(f6.narrow(0, begin, end - begin));
    int64_t a0 = 8LL * t;
    out.proprio[t].copy_(ep.proprio[a0]);
    int64_t n = std::min<int64_t>(horizon, na - a0);
    out.actions[t].narrow(0, 0, n).copy_(ep.actions.narrow(0, a0, n));
  }
  return out;
}

void split_episodes(size_t n, double holdout, std::vector<size_t>* train,
                    std::vector<size_t>* held) {
  VLA_CHECK(holdout >= 0 && holdout < 1, "holdout fraction must be in [0, 1)");
  size_t h = static_cast<size_t>(std::ceil(holdout * static_cast<double>(n)));
  if (n > 1 && h >= n) h = n - 1;
  train->clear();
  held->clear();
  for (size_t i = 0; i < n; ++i) (i < n - h ? train : held)->push_back(i);
}

}  // namespace vla::train
