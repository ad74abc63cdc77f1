// Metrics: summary statistics over episodes, JSON, console table, and PNG plots drawn by hand.
#include <algorithm>
#include <cmath>
#include <map>

#include "runtime/runtime.h"

namespace vla::runtime {

Summary summarize(const std::vector<EpisodeResult>& episodes) {
  Summary s;
  std::vector<double> expert, jitter, late, age, reuse;
  double span = 0.0;
  int64_t intervals = 0;
  double first_sum = 0.0;
  int first_n = 0;
  for (const auto& ep : episodes) {
    ++s.episodes;
    if (ep.outcome.success) ++s.successes;
    s.outcomes[ep.outcome.reason.empty() ? "unknown" : ep.outcome.reason]++;
    s.duration_s += ep.duration;
    s.ticks += static_cast<int64_t>(ep.ticks.size());
    if (ep.first_features_t >= 0) {
      first_sum += ep.first_features_t;
      ++first_n;
    }
    std::map<int64_t, int> per_version;
    for (size_t i = 0; i < ep.ticks.size(); ++i) {
      const TickRecord& r = ep.ticks[i];
      if (i > 0) {
        const TickRecord& p = ep.ticks[i - 1];
        const double d = r.start - p.start;
        const int missed = static_cast<int>(std::lround((r.deadline - p.deadline) / ep.period)) - 1;
        if (missed > 0)
          s.overruns += missed;
        else
          jitter.push_back(std::fabs(d - ep.period) * 1e3);
      }
      late.push_back((r.start - r.deadline) * 1e3);
      switch (r.status) {
        case TickStatus::kAct:
          expert.push_back(r.expert_ms);
          age.push_back(r.feature_age * 1e3);
          per_version[r.version]++;
          break;
        case TickStatus::kHoldStartup:
          ++s.hold_startup;
          break;
        case TickStatus::kHoldSensor:
          ++s.hold_sensor;
          break;
        case TickStatus::kSafeStop:
          ++s.safe_stop;
          break;
        case TickStatus::kExpertError:
          ++s.expert_errors;
          break;
      }
    }
    for (auto& kv : per_version) reuse.push_back(kv.second);
    if (ep.ticks.size() >= 2) {
      span += ep.ticks.back().start - ep.ticks.front().start;
      intervals += static_cast<int64_t>(ep.ticks.size()) - 1;
    }
    s.sensor_rejected += ep.sensor_rejected;
    for (const auto& v : ep.vlm) {
      if (v.ok)
        ++s.vlm_calls;
      else
        ++s.vlm_errors;
    }
  }
  s.action_hz = span > 0 ? intervals / span : 0.0;
  s.vlm_hz = s.duration_s > 0 ? s.vlm_calls / s.duration_s : 0.0;
  s.expert_ms_p50 = percentile(expert, 50);
  s.expert_ms_p99 = percentile(expert, 99);
  s.expert_ms_max = expert.empty() ? 0 : *std::max_element(expert.begin(), expert.end());
  s.jitter_ms_p50 = percentile(jitter, 50);
  s.jitter_ms_p99 = percentile(jitter, 99);
  s.jitter_ms_max = jitter.empty() ? 0 : *std::max_element(jitter.begin(), jitter.end());
  s.lateness_ms_p99 = percentile(late, 99);
  s.age_ms_p50 = percentile(age, 50);
  s.age_ms_p99 = percentile(age, 99);
  s.age_ms_max = age.empty() ? 0 : *std::max_element(age.begin(), age.end());
  s.reuse_mean = mean(reuse);
  s.reuse_max = reuse.empty() ? 0 : *std::max_element(reuse.begin(), reuse.end());
  s.first_features_s = first_n ? first_sum / first_n : -1.0;
  return s;
}

nlohmann::json to_json(const Summary& s) {
  nlohmann::json j;
  j["episodes"] = s.episodes;
  j["successes"] = s.successes;
  j["success_rate"] = s.success_rate();
  j["outcomes"] = s.outcomes;
  for (const auto& kv : s.outcomes) j[kv.first] = kv.second;  // failure counts at the top level
  j["duration_s"] = s.duration_s;
  j["ticks"] = s.ticks;
  j["action_hz"] = s.action_hz;
  j["vlm_hz"] = s.vlm_hz;
  j["vlm_calls"] = s.vlm_calls;
  j["vlm_errors"] = s.vlm_errors;
  j["expert_ms_p50"] = s.expert_ms_p50;
  j["expert_ms_p99"] = s.expert_ms_p99;
  j["expert_ms_max"] = s.expert_ms_max;
  j["loop_jitter_p50_ms"] = s.jitter_ms_p50;
  j["loop_jitter_p99_ms"] = s.jitter_ms_p99;
  j["loop_jitter_max_ms"] = s.jitter_ms_max;
  j["loop_lateness_p99_ms"] = s.lateness_ms_p99;
  j["overruns"] = s.overruns;
  j["feature_age_p50_ms"] = s.age_ms_p50;
  j["feature_age_p99_ms"] = s.age_ms_p99;
  j["feature_age_max_ms"] = s.age_ms_max;
  j["reuse_mean"] = s.reuse_mean;
  j["reuse_max"] = s.reuse_max;
  j["hold_startup_ticks"] = s.hold_startup;
  j["hold_sensor_ticks"] = s.hold_sensor;
  j["sensor_samples_rejected"] = s.sensor_rejected;
  j["safe_stop_ticks"] = s.safe_stop;
  j["expert_error_ticks"] = s.expert_errors;
  j["first_features_s"] = s.first_features_s;
  return j;
}

void print_summary(const Summary& s, const std::string& title) {
  std::printf("%s\n", title.c_str());
  Table t({"metric", "value"});
  t.add_row({"episodes", std::to_string(s.episodes)});
  t.add_row({"success rate", fmt_double(100.0 * s.success_rate(), 1) + " %"});
  std::string reasons;
  for (const auto& kv : s.outcomes)
    reasons += str_cat(reasons.empty() ? "" : ", ", kv.first, " ", kv.second);
  t.add_row({"outcomes", reasons});
  t.add_row({"action loop Hz", fmt_double(s.action_hz, 3)});
  t.add_row({"VLM Hz (calls / errors)",
             str_cat(fmt_double(s.vlm_hz, 2), " (", s.vlm_calls, " / ", s.vlm_errors, ")")});
  t.add_row({"expert latency p50 / p99 ms",
             str_cat(fmt_double(s.expert_ms_p50, 2), " / ", fmt_double(s.expert_ms_p99, 2))});
  t.add_row({"loop jitter p50 / p99 / max ms",
             str_cat(fmt_double(s.jitter_ms_p50, 3), " / ", fmt_double(s.jitter_ms_p99, 3), " / ",
                     fmt_double(s.jitter_ms_max, 3))});
  t.add_row({"missed deadlines", std::to_string(s.overruns)});
  t.add_row({"feature age p50 / p99 / max ms",
             str_cat(fmt_double(s.age_ms_p50, 0), " / ", fmt_double(s.age_ms_p99, 0), " / ",
                     fmt_double(s.age_ms_max, 0))});
  t.add_row({"reuse per feature mean / max",
             str_cat(fmt_double(s.reuse_mean, 1), " / ", fmt_double(s.reuse_max, 0))});
  t.add_row({"first features after s", fmt_double(s.first_features_s, 3)});
  t.add_row({"hold ticks startup / sensor", str_cat(s.hold_startup, " / ", s.hold_sensor)});
  t.add_row({"sensor samples rejected (stamp)", std::to_string(s.sensor_rejected)});
  t.add_row({"safe-stop ticks / expert errors", str_cat(s.safe_stop, " / ", s.expert_errors)});
  t.print();
}

// ---------------------------------------------------------------- drawing
namespace {
struct Rgb {
  uint8_t r, g, b;
};
void fill(Image& img, int x0, int y0, int x1, int y1, Rgb c) {
  x0 = std::max(0, x0), y0 = std::max(0, y0);
  x1 = std::min(img.width, x1), y1 = std::min(img.height, y1);
  for (int y = y0; y < y1; ++y) {
    uint8_t* row = img.row(y);
    for (int x = x0; x < x1; ++x) {
      row[x * 3] = c.r, row[x * 3 + 1] = c.g, row[x * 3 + 2] = c.b;
    }
  }
}
Rgb palette(int64_t v) {
  static const Rgb p[] = {{31, 119, 180}, {255, 127, 14},  {44, 160, 44},  {148, 103, 189},
                          {140, 86, 75},  {227, 119, 194}, {188, 189, 34}, {23, 190, 207}};
  return p[static_cast<size_t>(((v % 8) + 8) % 8)];
}
}  // namespace

Image plot_timeline(const EpisodeResult& ep, double seconds, int width) {
  const int height = 170;
  Image img = make_image(width, height, 3, 255);
  const int left = 10, right = width - 10;
  auto xs = [&](double t) { return left + static_cast<int>((right - left) * t / seconds); };
  // Second grid lines.
  for (int s = 0; s <= static_cast<int>(seconds); ++s)
    fill(img, xs(s), 5, xs(s) + 1, height - 5, {220, 220, 220});
  // Row 1 (y 20..60): VLM calls, a bar from capture to publish, coloured by version; red on error.
  for (const auto& v : ep.vlm) {
    if (v.start > seconds) break;
    Rgb c = v.ok ? palette(v.version) : Rgb{214, 39, 40};
    fill(img, xs(v.start), 20, std::max(xs(v.start) + 2, xs(std::min(v.end, seconds))), 60, c);
    fill(img, xs(v.end), 15, xs(v.end) + 2, 65, {0, 0, 0});  // publish marker
  }
  // Row 2 (y 90..150): action ticks, coloured by the feature version they used; bar height = age.
  double max_age = 1e-3;
  for (const auto& r : ep.ticks) max_age = std::max(max_age, r.feature_age);
  for (const auto& r : ep.ticks) {
    if (r.start > seconds) break;
    Rgb c = r.status == TickStatus::kAct        ? palette(r.version)
            : r.status == TickStatus::kSafeStop ? Rgb{214, 39, 40}
                                                : Rgb{150, 150, 150};
    const int h =
        r.status == TickStatus::kAct ? 10 + static_cast<int>(50 * r.feature_age / max_age) : 60;
    const int x = xs(r.start);
    fill(img, x, 150 - h, x + std::max(2, (xs(ep.period) - left) / 2), 150, c);
  }
  fill(img, left, 150, right, 151, {0, 0, 0});
  fill(img, left, 60, right, 61, {0, 0, 0});
  return img;
}

Image plot_age_histogram(const std::vector<EpisodeResult>& eps, int width, int height) {
  std::vector<double> ages;
  for (const auto& ep : eps)
    for (const auto& r : ep.ticks)
      if (r.status == TickStatus::kAct) ages.push_back(r.feature_age * 1e3);
  Image img = make_image(width, height, 3, 255);
  const int bins = 50;
  std::vector<int> h(bins, 0);
  const double mx = ages.empty() ? 1.0 : std::max(1.0, *std::max_element(ages.begin(), ages.end()));
  for (double a : ages)
    h[static_cast<size_t>(std::min(bins - 1, static_cast<int>(a / mx * bins)))]++;
  const int top = *std::max_element(h.begin(), h.end());
  const int bw = (width - 20) / bins;
  for (int i = 0; i < bins; ++i) {
    const int bh =
        top ? static_cast<int>((height - 30) * static_cast<double>(h[static_cast<size_t>(i)]) / top)
            : 0;
    fill(img, 10 + i * bw, height - 10 - bh, 10 + (i + 1) * bw - 1, height - 10, {31, 119, 180});
  }
  fill(img, 10, height - 10, width - 10, height - 9, {0, 0, 0});
  return img;
}

Image plot_bars(const std::vector<std::vector<double>>& rows, int width, int height) {
  Image img = make_image(width, height, 3, 255);
  if (rows.empty()) return img;
  const int groups = static_cast<int>(rows[0].size());
  const int n = static_cast<int>(rows.size());
  const int gw = (width - 20) / std::max(1, groups);
  const int bw = std::max(2, (gw - 20) / std::max(1, n));
  for (int g = 0; g < groups; ++g) {
    for (int r = 0; r < n; ++r) {
      const double v =
          std::max(0.0, std::min(1.0, rows[static_cast<size_t>(r)][static_cast<size_t>(g)]));
      const int bh = static_cast<int>((height - 30) * v);
      const int x = 10 + g * gw + 10 + r * bw;
      fill(img, x, height - 10 - bh, x + bw - 2, height - 10, palette(r));
    }
  }
  // 50 % and 100 % guide lines.
  fill(img, 10, height - 10 - (height - 30) / 2, width - 10, height - 9 - (height - 30) / 2,
       {200, 200, 200});
  fill(img, 10, 20, width - 10, 21, {200, 200, 200});
  fill(img, 10, height - 10, width - 10, height - 9, {0, 0, 0});
  return img;
}

}  // namespace vla::runtime
