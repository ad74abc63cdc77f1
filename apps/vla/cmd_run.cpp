// `vla run`: the default policy in the needle simulator through the asynchronous dual-rate runtime
// in wall time (real VLM thread, real 650 Hz physics thread, fixed-rate action loop).
#include <cstdio>

#include "closed_loop/closed_loop.h"
#include "command.h"
#include "core/core.h"
#include "loop_options.h"

namespace {

struct RunArgs : vla::cli::LoopArgs {
  RunArgs() { episodes = 1; }
  std::string vlm_latency = "300ms";
  bool sim_time = false;
  std::string out = "out/run";
  std::string json;
  int vlm_threads = 1;
  int expert_threads = 1;
  int rt_priority = 50;  // ros2_control's default; without permission: a warning, normal scheduling
  int loop_cpu = -1;
  bool lock_memory = false;
  std::string vlm_config;
  int views = 0, width = 0, height = 0, replay_frames = 0;
};

void add_run(CLI::App& app) {
  auto a = std::make_shared<RunArgs>();
  auto* c = app.add_subcommand(
      "run",
      "Run a policy closed-loop in the needle simulator with the async runtime: VLM in its own\n"
      "thread, 650 Hz physics thread, fixed-rate action loop (wall time). Prints success and the\n"
      "runtime metrics; writes a contact sheet, timeline and feature-age plots to --out.");
  vla::cli::add_loop_options(c, *a);
  c->add_flag("--sim-time", a->sim_time,
              "Reproducible sim-time mode instead of wall time (VLM latency = --vlm-latency)");
  c->add_option("--vlm-latency", a->vlm_latency,
                "Modelled VLM latency, --sim-time only (e.g. 300ms, 1.5s, 0.3)")
      ->capture_default_str();
  c->add_option("--vlm-threads", a->vlm_threads, "Torch threads of the VLM thread")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  c->add_option("--expert-threads", a->expert_threads, "Torch threads of the action loop")
      ->check(CLI::Range(1, 1024))
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
  c->add_option("--vlm-config", a->vlm_config,
                "Run this VLM instead of the policy's: a checkpoint or an architecture folder\n"
                "(assets/configs/qwen2.5-vl-3b-instruct = the 3B architecture, random weights).\n"
                "The action expert is then UNTRAINED (timing the runtime, not success)")
      ->check(CLI::ExistingDirectory);
  c->add_option("--views", a->views, "Camera views given to the VLM (0 = the policy's)")
      ->check(CLI::Range(0, 5))
      ->capture_default_str();
  c->add_option("--width", a->width, "Camera width in pixels (0 = the policy's)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  c->add_option("--height", a->height, "Camera height in pixels (0 = the policy's)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  c->add_option("--replay-frames", a->replay_frames,
                "0 = the simulator renders every VLM frame (OSMesa, CPU); N = render N frame sets\n"
                "per episode up front and replay them, so the run measures the VLM, not the camera")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  c->add_option("--out", a->out, "Folder for contact sheet, frames, plots and metrics.json")
      ->capture_default_str();
  c->add_option("--json", a->json, "Also write the metrics JSON here");
  c->callback([a] {
    const double latency_s = vla::cli::parse_seconds(a->vlm_latency);  // checked in both modes
    vla::closed_loop::ClosedLoopOptions o =
        vla::cli::make_options(*a, a->sim_time ? latency_s : 0.0);
    o.wall_time = !a->sim_time;
    o.vlm_override = a->vlm_config;
    o.vlm_work_dir = a->out + "/vlm";
    o.num_views = a->views;
    o.image_width = a->width;
    o.image_height = a->height;
    o.replay_frames = a->replay_frames;
    o.record_frames_episodes = 1;
    o.progress = a->episodes > 1;
    o.rt.vlm_threads = a->vlm_threads;
    o.rt.expert_threads = a->expert_threads;
    o.rt.max_frames = 32;
    o.rt.loop_priority = a->rt_priority;
    o.rt.loop_cpu = a->loop_cpu;
    o.rt.lock_memory = a->lock_memory;
    std::vector<vla::runtime::EpisodeResult> eps;
    {
      vla::cli::StopSignals stop;
      eps = vla::closed_loop::run_closed_loop(o, &vla::cli::StopSignals::flag());
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
    const std::string frames_from =
        a->replay_frames > 0
            ? vla::str_cat(a->replay_frames,
                           " simulator frame set(s) rendered per episode, replayed")
            : "rendered live by the simulator (OSMesa)";
    std::printf("VLM: %s on %s (%s backend%s)%s; frames: %s\n",
                a->vlm_config.empty() ? "the policy's" : a->vlm_config.c_str(),
                a->vlm.device.c_str(), a->vlm.backend.c_str(), a->vlm.fp8 ? ", fp8" : "",
                a->vlm_config.empty() ? "" : "; action expert UNTRAINED (timing only)",
                frames_from.c_str());
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
    j["vlm"] = vla::cli::vlm_options_json(a->vlm);
    j["vlm"]["override"] = a->vlm_config;
    j["vlm"]["expert_trained"] = a->vlm_config.empty();
    j["frames"] = frames_from;
    j["interrupted"] = vla::cli::StopSignals::flag().load();
    if (!a->sim_time) j["realtime"] = eps.front().realtime.to_json();
    vla::make_dirs(a->out);
    vla::write_json_atomic(a->out + "/metrics.json", j);
    if (!a->json.empty()) vla::write_json_atomic(a->json, j);
    const auto& ep0 = eps.front();
    if (!ep0.frames.empty()) {
      // Contact sheet: up to 8 captures of episode 0 in time order (each a row of all views;
      // a single view's captures are laid out 4 to a row).
      std::vector<vla::Image> pick;
      const size_t n = ep0.frames.size(), k = std::min<size_t>(8, n);
      for (size_t i = 0; i < k; ++i) pick.push_back(ep0.frames[i * n / k]);
      const bool one_view = pick[0].width <= pick[0].height * 3 / 2;
      vla::write_png(a->out + "/contact_sheet.png",
                     vla::tile_images(pick, one_view ? std::min<int>(4, static_cast<int>(k)) : 1));
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
