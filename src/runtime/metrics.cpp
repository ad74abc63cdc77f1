// Metrics: summary statistics over episodes, JSON, console table, and PNG plots drawn by hand.
#include <algorithm>
#include <cmath>
#include <map>

#include "plot/plot.h"
#include "runtime/runtime.h"

namespace vla::runtime {

Summary summarize(const std::vector<EpisodeResult>& episodes) {
  Summary s;
  std::vector<double> expert, jitter, late, age, reuse, vlm_ms;
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
      if (v.ok) {
        ++s.vlm_calls;
        vlm_ms.push_back(1e3 * (v.end - v.start));
      } else {
        ++s.vlm_errors;
      }
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
  s.vlm_ms_p50 = percentile(vlm_ms, 50);
  s.vlm_ms_p99 = percentile(vlm_ms, 99);
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
  j["vlm_call_p50_ms"] = s.vlm_ms_p50;
  j["vlm_call_p99_ms"] = s.vlm_ms_p99;
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
  t.add_row({"VLM call p50 / p99 ms (capture to publish)",
             str_cat(fmt_double(s.vlm_ms_p50, 1), " / ", fmt_double(s.vlm_ms_p99, 1))});
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
  t.add_row({"sensor samples rejected (stamp not increasing)", std::to_string(s.sensor_rejected)});
  t.add_row({"safe-stop ticks / expert errors", str_cat(s.safe_stop, " / ", s.expert_errors)});
  t.print();
}

// ---------------------------------------------------------------- charts
Image plot_timeline(const EpisodeResult& ep, double seconds, int width) {
  plot::Chart c;
  c.title = "VLM calls and the feature age each action tick used";
  c.x.label = "episode time (s)";
  c.y.label = "milliseconds";
  c.width = width, c.height = 360;
  plot::Series calls{"VLM call latency (capture to publish)", plot::Mark::kSegments};
  calls.width = 3;
  for (const auto& v : ep.vlm)
    if (v.start <= seconds && v.ok) {
      calls.x.push_back(v.start), calls.x_end.push_back(v.end);
      calls.y.push_back(1e3 * (v.end - v.start));
    }
  plot::Series failed{"VLM call failed", plot::Mark::kSegments, {}, {}, 3, 3};
  for (const auto& v : ep.vlm)
    if (v.start <= seconds && !v.ok) {
      failed.x.push_back(v.start), failed.x_end.push_back(v.end);
      failed.y.push_back(1e3 * (v.end - v.start));
    }
  plot::Series age{"feature age at an acting tick", plot::Mark::kPoints, {}, {}, 1, 2};
  plot::Series hold{"hold tick (no action; at 0)", plot::Mark::kPoints, {}, {}, 7, 2};
  plot::Series stop{"safe-stop tick (at 0)", plot::Mark::kPoints, {}, {}, 3, 2.5};
  for (const auto& r : ep.ticks) {
    if (r.start > seconds) break;
    plot::Series& s = r.status == TickStatus::kAct        ? age
                      : r.status == TickStatus::kSafeStop ? stop
                                                          : hold;
    s.x.push_back(r.start);
    s.y.push_back(r.status == TickStatus::kAct ? 1e3 * r.feature_age : 0.0);
  }
  // Room above the data for the legend, and a margin below 0 s / 0 ms so that the hold and
  // safe-stop ticks (drawn at 0) do not sit on the axes.
  double top = 1.0;
  for (const plot::Series* s : {&calls, &failed, &age})
    for (double y : s->y) top = std::max(top, y);
  c.y.min = -0.04 * 1.6 * top, c.y.max = 1.6 * top;
  c.x.min = -0.02 * seconds, c.x.max = seconds;
  for (plot::Series* s : {&calls, &failed, &age, &hold, &stop})
    if (!s->x.empty()) c.series.push_back(std::move(*s));
  return plot::render(c);
}

Image plot_age_histogram(const std::vector<EpisodeResult>& eps, int width, int height) {
  std::vector<double> ages;
  for (const auto& ep : eps)
    for (const auto& r : ep.ticks)
      if (r.status == TickStatus::kAct) ages.push_back(r.feature_age * 1e3);
  plot::Chart c;
  c.title = str_cat("Feature age at use (", ages.size(), " acting ticks)");
  c.x.label = "feature age (ms)";
  c.y.label = "action ticks";
  c.y.integer = true;
  c.width = width, c.height = height;
  plot::Series bars{"", plot::Mark::kBars};  // one series: the title says what it counts
  bars.width = 1.0;
  if (!ages.empty()) {
    // Bins of a "nice" width (at least 1 ms: ages come from a clock, finer bins only show
    // scheduling noise), about 30 over the data, aligned to multiples of the width.
    const double lo = *std::min_element(ages.begin(), ages.end());
    const double hi = *std::max_element(ages.begin(), ages.end());
    const std::vector<double> t = plot::nice_ticks(lo, std::max(hi, lo + 1.0), 30);
    const double w = std::max(1.0, t.size() > 1 ? t[1] - t[0] : 1.0);
    const double start = std::floor(lo / w) * w;
    const int bins = std::max(1, static_cast<int>(std::floor((hi - start) / w)) + 1);
    std::vector<double> n(static_cast<size_t>(bins), 0.0);
    for (double a : ages)
      n[static_cast<size_t>(std::clamp(static_cast<int>((a - start) / w), 0, bins - 1))]++;
    for (int i = 0; i < bins; ++i) {
      bars.x.push_back(start + (i + 0.5) * w);
      bars.y.push_back(n[static_cast<size_t>(i)]);
    }
    c.x.min = start - w, c.x.max = start + (bins + 1) * w;  // a free bin each side
  }
  c.series.push_back(std::move(bars));
  return plot::render(c);
}

}  // namespace vla::runtime
