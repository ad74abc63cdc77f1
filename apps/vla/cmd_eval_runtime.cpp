// `vla eval closed-loop` and `vla eval staleness`: closed-loop success of a policy in the needle
// simulator, in the reproducible sim-time mode of the async runtime (VLM latency modelled).
#include <cstdio>
#include <sstream>

#include "closed_loop/closed_loop.h"
#include "command.h"
#include "core/core.h"
#include "loop_options.h"
#include "plot/plot.h"

namespace {

using vla::cli::add_loop_options;
using vla::cli::LoopArgs;
using vla::cli::make_options;
using vla::cli::parse_seconds;

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

void add_eval_runtime(CLI::App& app) {
  CLI::App* eval = vla::cli::get_or_add_subcommand(app, "eval", "Evaluate policies");

  // ------------------------------------------------------------ closed-loop
  auto* cl = eval->add_subcommand(
      "closed-loop",
      "Closed-loop success in the needle simulator (sim-time runtime: physics at 650 Hz, action "
      "loop at --action-hz, VLM latency modelled; deterministic for a seed)");
  auto a = std::make_shared<LoopArgs>();
  auto mode = std::make_shared<std::string>("sync");
  auto latency = std::make_shared<std::string>("1.5s");
  auto json = std::make_shared<std::string>();
  add_loop_options(cl, *a);
  cl->add_option("--mode", *mode,
                 "sync: fresh VL features every control step; async: features arrive "
                 "--vlm-latency after their capture and are reused meanwhile")
      ->check(CLI::IsMember({"sync", "async"}))
      ->capture_default_str();
  cl->add_option("--vlm-latency", *latency, "Modelled VLM latency in async mode (e.g. 1.5s, 300ms)")
      ->capture_default_str();
  cl->add_option("--json", *json, "Write the metrics as JSON here");
  cl->callback([a, mode, latency, json] {
    const double lat = *mode == "sync" ? 0.0 : parse_seconds(*latency);
    auto o = make_options(*a, lat);
    auto eps = vla::closed_loop::run_closed_loop(o);
    auto s = vla::runtime::summarize(eps);
    vla::runtime::print_summary(
        s, vla::str_cat("closed loop: policy ", a->policy, ", mode ", *mode,
                        *mode == "async" ? vla::str_cat(" (VLM latency ", lat, " s)") : "",
                        ", blend ", a->blend, ", ", a->action_hz, " Hz, sim time"));
    if (!json->empty()) {
      auto j = vla::runtime::to_json(s);
      j["policy"] = a->policy;
      j["mode"] = *mode;
      j["vlm_latency_s"] = lat;
      j["blend"] = a->blend;
      j["seed"] = a->seed;
      j["clock"] = "sim";
      j["vlm"] = vla::cli::vlm_options_json(a->vlm);
      vla::write_json_atomic(*json, j);
    }
  });

  // ------------------------------------------------------------ staleness
  auto* st = eval->add_subcommand(
      "staleness",
      "Success rate vs VLM latency (sim time) for policies trained with and without feature "
      "reuse: one row per policy x latency");
  auto sa = std::make_shared<LoopArgs>();
  auto policies = std::make_shared<std::string>("default,no_reuse");
  auto latencies = std::make_shared<std::string>("0,0.3,1.5");
  auto sjson = std::make_shared<std::string>();
  auto png = std::make_shared<std::string>("out/staleness.png");
  add_loop_options(st, *sa);
  st->add_option("--policies", *policies, "Comma-separated policies to compare")
      ->capture_default_str();
  st->add_option("--latencies", *latencies, "Comma-separated VLM latencies (s; 0 = synchronous)")
      ->capture_default_str();
  st->add_option("--json", *sjson, "Write the rows as JSON here");
  st->add_option("--png", *png, "Bar plot: success per latency (groups), one bar per policy")
      ->capture_default_str();
  st->callback([sa, policies, latencies, sjson, png] {
    auto pols = split(*policies);
    auto lats = split(*latencies);
    VLA_CHECK(!pols.empty() && !lats.empty(), "--policies and --latencies must not be empty");
    nlohmann::json rows = nlohmann::json::array();
    vla::Table t(
        {"policy", "VLM latency s", "success %", "episodes", "feature age p50 ms", "failures"});
    std::vector<std::vector<double>> bars;
    for (const auto& p : pols) {
      std::vector<double> bar;
      for (const auto& l : lats) {
        LoopArgs a = *sa;
        a.policy = p;
        const double lat = parse_seconds(l);
        // Features are never fresher than the latency: keep the safe stop out of the way.
        a.max_staleness = std::max(a.max_staleness, 2 * lat + 1.0);
        vla::log_info("staleness: policy ", p, ", VLM latency ", lat, " s");
        auto s = vla::runtime::summarize(vla::closed_loop::run_closed_loop(make_options(a, lat)));
        auto j = vla::runtime::to_json(s);
        j["policy"] = p;
        j["vlm_latency_s"] = lat;
        j["mode"] = lat == 0 ? "sync" : "async";
        rows.push_back(j);
        std::string fails;
        for (const auto& kv : s.outcomes)
          if (kv.first != "success")
            fails += vla::str_cat(fails.empty() ? "" : ", ", kv.first, " ", kv.second);
        t.add_row({p, vla::fmt_double(lat, 2), vla::fmt_double(100 * s.success_rate(), 1),
                   std::to_string(s.episodes), vla::fmt_double(s.age_ms_p50, 0), fails});
        bar.push_back(s.success_rate());
      }
      bars.push_back(bar);
    }
    std::printf("success vs VLM latency (sim time, %d episodes each from seed %llu)\n",
                sa->episodes, static_cast<unsigned long long>(sa->seed));
    t.print();
    if (!png->empty()) {
      auto dir = png->substr(0, png->find_last_of('/'));
      if (png->find('/') != std::string::npos && !dir.empty()) vla::make_dirs(dir);
      vla::plot::Chart c;
      c.title = vla::str_cat("Closed-loop success vs VLM latency (", sa->episodes,
                             " episodes per bar, sim time)");
      c.x.label = "VLM latency (s; 0 = synchronous)";
      c.x.categories = lats;
      c.y.label = "success (%)";
      c.y.min = 0, c.y.max = 105;
      for (size_t k = 0; k < pols.size(); ++k) {
        vla::plot::Series s{pols[k], vla::plot::Mark::kBars};
        for (size_t i = 0; i < lats.size(); ++i)
          s.x.push_back(static_cast<double>(i)), s.y.push_back(100.0 * bars[k][i]);
        c.series.push_back(std::move(s));
      }
      vla::write_png(*png, vla::plot::render(c));
      vla::log_info("plot: ", *png, " (groups = latencies ", *latencies, "; bars = policies ",
                    *policies, ")");
    }
    if (!sjson->empty()) {
      nlohmann::json j;
      j["rows"] = rows;
      j["policies"] = pols;
      std::vector<double> lat_s;
      for (const auto& l : lats) lat_s.push_back(parse_seconds(l));
      j["latencies_s"] = lat_s;
      j["episodes"] = sa->episodes;
      j["seed"] = sa->seed;
      vla::write_json_atomic(*sjson, j);
    }
  });
}

}  // namespace

VLA_REGISTER_COMMAND(410, add_eval_runtime);
