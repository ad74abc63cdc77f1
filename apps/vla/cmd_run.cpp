// `vla run`: the default policy in the needle simulator through the asynchronous dual-rate runtime
// in wall time (real VLM thread, real 650 Hz physics thread, fixed-rate action loop).
#include <cstdio>

#include "command.h"
#include "core/core.h"

#if defined(VLA_HAS_RUNTIME) && defined(VLA_RUNTIME_WITH_SIM)
#include "runtime/runtime.h"

namespace {

struct RunArgs {
  std::string policy = "default";
  int episodes = 1;
  uint64_t seed = 1000;
  double action_hz = 10;
  double vlm_hz = 0;
  std::string blend = "replace";
  double max_staleness = 3.0;
  double vlm_latency = 0.3;
  bool sim_time = false;
  double time_limit = 0;
  std::string out = "out/run";
  std::string json;
  int vlm_threads = 1;
  int expert_threads = 1;
  int rt_priority = 50;  // ros2_control's default; without permission: a warning, normal scheduling
  int loop_cpu = -1;
  bool lock_memory = false;
  std::string device = "cpu";
};

void add_run(CLI::App& app) {
  auto a = std::make_shared<RunArgs>();
  auto* c = app.add_subcommand(
      "run",
      "Run a policy closed-loop in the needle simulator with the async runtime: VLM in its own "
      "thread, 650 Hz physics thread, fixed-rate action loop (wall time). Prints success and the "
      "runtime metrics; writes a contact sheet, timeline and feature-age plots to --out.");
  c->add_option(
       "--policy", a->policy,
       "default | no_reuse | a policy folder | expert (scripted; reads the sim under its lock)")
      ->capture_default_str();
  c->add_option("--episodes", a->episodes, "Episodes (seeds seed..seed+N-1)")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  c->add_option("--seed", a->seed, "First episode seed")->capture_default_str();
  c->add_option("--action-hz", a->action_hz, "Action loop rate (Hz)")
      ->check(CLI::Range(0.1, 1000.0))
      ->capture_default_str();
  c->add_option(
       "--vlm-hz", a->vlm_hz,
       "VLM launch rate (Hz); 0 = as fast as possible, at most one launch per action period")
      ->check(CLI::Range(0.0, 1000.0))
      ->capture_default_str();
  c->add_option("--blend", a->blend, "Chunk blending: replace | ensemble | rtc")
      ->check(CLI::IsMember({"replace", "ensemble", "rtc"}))
      ->capture_default_str();
  c->add_option("--max-staleness", a->max_staleness,
                "Feature age (s) beyond which the loop commands a safe stop")
      ->check(CLI::Range(1e-3, 1e6))
      ->capture_default_str();
  c->add_flag("--sim-time", a->sim_time,
              "Reproducible sim-time mode instead of wall time (VLM latency = --vlm-latency)");
  c->add_option("--vlm-latency", a->vlm_latency, "Modelled VLM latency (s), --sim-time only")
      ->check(CLI::Range(0.0, 1e3))
      ->capture_default_str();
  c->add_option("--time-limit", a->time_limit, "Episode time limit (s); 0 = simulator default")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  c->add_option("--vlm-threads", a->vlm_threads, "Torch threads of the VLM thread")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  c->add_option("--expert-threads", a->expert_threads, "Torch threads of the action loop")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  c->add_option(
       "--device", a->device,
       "where the policy's VLM runs: cpu | cuda | cuda:N (the action loop stays on the CPU)")
      ->capture_default_str();
  c->add_option("--rt-priority", a->rt_priority,
                "SCHED_FIFO priority 1..99 for the action loop (0 = normal scheduling; needs\n"
                "CAP_SYS_NICE or an rtprio limit, else it warns and runs normally)")
      ->check(CLI::Range(0, 99))
      ->capture_default_str();
  c->add_option("--loop-cpu", a->loop_cpu, "Pin the action loop to this CPU (-1 = no pinning)")
      ->check(CLI::Range(-1, 4095))
      ->capture_default_str();
  c->add_flag("--lock-memory", a->lock_memory,
              "mlockall() during the run so the loop never page-faults (needs `ulimit -l`)");
  c->add_option("--out", a->out, "Folder for contact sheet, frames, plots and metrics.json")
      ->capture_default_str();
  c->add_option("--json", a->json, "Also write the metrics JSON here");
  c->callback([a] {
    vla::runtime::ClosedLoopOptions o;
    o.policy = a->policy;
    o.episodes = a->episodes;
    o.seed = a->seed;
    o.wall_time = !a->sim_time;
    o.time_limit_s = a->time_limit;
    o.record_frames_episodes = 1;
    o.progress = a->episodes > 1;
    o.rt.action_hz = a->action_hz;
    o.rt.vlm_hz = a->vlm_hz;
    o.rt.blend = vla::runtime::parse_blend(a->blend);
    o.rt.max_staleness_s = a->max_staleness;
    o.rt.vlm_latency_s = a->sim_time ? a->vlm_latency : 0.0;
    o.rt.vlm_threads = a->vlm_threads;
    o.rt.expert_threads = a->expert_threads;
    o.rt.max_frames = 32;
    o.vlm_device = a->device;
    o.rt.loop_priority = a->rt_priority;
    o.rt.loop_cpu = a->loop_cpu;
    o.rt.lock_memory = a->lock_memory;
    std::vector<vla::runtime::EpisodeResult> eps;
    {
      vla::cli::StopSignals stop;
      eps = vla::runtime::run_closed_loop(o, &vla::cli::StopSignals::flag());
    }
    VLA_CHECK(!eps.empty(), "no episode ran");
    auto s = vla::runtime::summarize(eps);
    for (size_t i = 0; i < eps.size() && i < 20; ++i) {
      const auto& ep = eps[i];
      std::printf("episode %zu (seed %llu): %s in %.2f s%s%s\n", i,
                  static_cast<unsigned long long>(a->seed + i), ep.outcome.reason.c_str(),
                  ep.duration, ep.safe_stopped ? " -- safe stop: " : "",
                  ep.safe_stop_reason.c_str());
      for (const auto& e : ep.errors) std::printf("  error: %s\n", e.c_str());
    }
    vla::runtime::print_summary(
        s, vla::str_cat("vla run: policy ", a->policy, ", ", a->sim_time ? "sim" : "wall",
                        " time, action loop ", a->action_hz, " Hz, blend ", a->blend,
                        vla::cli::StopSignals::flag() ? " (interrupted)" : ""));
    auto j = vla::runtime::to_json(s);
    j["policy"] = a->policy;
    j["clock"] = a->sim_time ? "sim" : "wall";
    j["action_hz_target"] = a->action_hz;
    j["blend"] = a->blend;
    j["seed"] = a->seed;
    j["interrupted"] = vla::cli::StopSignals::flag().load();
    if (!a->sim_time) j["realtime"] = eps.front().realtime.to_json();
    vla::make_dirs(a->out);
    vla::write_json_atomic(a->out + "/metrics.json", j);
    if (!a->json.empty()) vla::write_json_atomic(a->json, j);
    const auto& ep0 = eps.front();
    if (!ep0.frames.empty()) {
      // Contact sheet: up to 8 captures of episode 0 (each a row of all views).
      std::vector<vla::Image> pick;
      const size_t n = ep0.frames.size(), k = std::min<size_t>(8, n);
      for (size_t i = 0; i < k; ++i) pick.push_back(ep0.frames[i * n / k]);
      vla::write_png(a->out + "/contact_sheet.png", vla::tile_images(pick, 1));
      vla::make_dirs(a->out + "/frames");
      for (size_t i = 0; i < n; ++i)
        vla::write_png(vla::str_cat(a->out, "/frames/",
                                    i < 10    ? "00"
                                    : i < 100 ? "0"
                                              : "",
                                    i, ".png"),
                       ep0.frames[i]);
    }
    vla::write_png(a->out + "/timeline.png", vla::runtime::plot_timeline(ep0, 5.0));
    vla::write_png(a->out + "/feature_age.png", vla::runtime::plot_age_histogram(eps));
    std::printf(
        "success: %d/%d (%.1f %%); wrote %s/{metrics.json,contact_sheet.png,timeline.png,"
        "feature_age.png,frames/}\n",
        s.successes, s.episodes, 100 * s.success_rate(), a->out.c_str());
  });
}

}  // namespace

VLA_REGISTER_COMMAND(10, add_run);
#endif
