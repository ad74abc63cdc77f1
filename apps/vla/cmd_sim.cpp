// `vla sim` (closed-loop episodes of the needle-insertion simulator with a scripted policy) and
// `vla datagen` (record expert demonstrations into a dataset folder). Built with the simulator.
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "closed_loop/closed_loop.h"
#include "command.h"
#include "core/core.h"
#include "dataset/dataset.h"
#include "sim/sim.h"

namespace {

void parse_res(const std::string& res, int* w, int* h) {
  int a = 0, b = 0;
  char x = 0;
  VLA_CHECK(std::sscanf(res.c_str(), "%d%c%d", &a, &x, &b) == 3 && (x == 'x' || x == 'X'),
            "--res must look like WIDTHxHEIGHT (e.g. 128x128), got '", res, "'");
  VLA_CHECK(a >= 16 && b >= 16 && a <= 4096 && b <= 4096, "--res ", res,
            " out of range (16..4096 per side)");
  *w = a;
  *h = b;
}

struct SimOptions {
  std::string policy = "scripted";
  int episodes = 10;
  uint64_t seed = 1;
  std::string res = "128x128";
  int views = vla::sim::kNumViews;
  double noise = vla::sim::EnvConfig{}.force_noise_std;
  double time_limit = vla::sim::EnvConfig{}.time_limit_s;
  int ports = 3;
  int target = -1;
  std::string json, snapshot;
  bool verbose = false;
};

vla::sim::EnvConfig env_config(const SimOptions& o, bool render) {
  vla::sim::EnvConfig cfg;
  parse_res(o.res, &cfg.width, &cfg.height);
  cfg.num_views = o.views;
  cfg.force_noise_std = o.noise;
  cfg.time_limit_s = o.time_limit;
  cfg.num_ports = o.ports;
  cfg.render = render;
  return cfg;
}

vla::sim::ChunkPolicy make_policy(const std::string& name) {
  if (vla::closed_loop::is_scripted_policy(name))
    return vla::sim::demonstrator_policy(std::make_shared<vla::sim::ScriptedDemonstrator>());
  if (name == "hold") {
    return [](const vla::sim::NeedleEnv&) {
      return vla::sim::Chunk(vla::sim::kChunkSize, vla::sim::Action{0, 0, 0});
    };
  }
  throw vla::Error(vla::str_cat("unknown --policy '", name, "' (scripted | hold)"));
}

void write_snapshot(const SimOptions& o) {
  vla::sim::NeedleEnv env(env_config(o, true));
  auto expert = std::make_shared<vla::sim::ScriptedDemonstrator>();
  env.reset(o.seed, o.target);
  expert->reset();
  // Advance to the moment the needle touches the tissue (or 3 s), then grab all views.
  for (int tick = 0; tick < 30 && !env.outcome().done && expert->phase() != "insert"; ++tick) {
    env.step_chunk(expert->act(env));
  }
  vla::write_png(o.snapshot, vla::tile_images(env.render(), 3));
  vla::log_info("snapshot of seed ", o.seed, " at t=", vla::fmt_double(env.time(), 2),
                " s written to ", o.snapshot, " (", env.instruction(), ")");
}

void run_sim(const SimOptions& o) {
  VLA_CHECK(o.episodes > 0, "--episodes must be > 0");
  if (!o.snapshot.empty()) write_snapshot(o);
  vla::sim::NeedleEnv env(env_config(o, false));
  vla::sim::ChunkPolicy policy = make_policy(o.policy);
  std::map<std::string, int> reasons = {
      {"success", 0}, {"wrong_port", 0}, {"excess_force", 0}, {"timeout", 0}};
  std::vector<double> times, success_times, peaks;
  int64_t steps = 0;
  double wall = 0.0;
  nlohmann::json per_episode = nlohmann::json::array();
  vla::ProgressBar bar("sim " + o.policy, o.episodes);
  for (int i = 0; i < o.episodes; ++i) {
    const uint64_t seed = o.seed + static_cast<uint64_t>(i);
    vla::sim::RolloutResult r = vla::sim::run_episode(env, policy, seed, o.target);
    reasons[r.outcome.reason]++;
    times.push_back(r.outcome.time_s);
    peaks.push_back(r.outcome.peak_force);
    if (r.outcome.success) success_times.push_back(r.outcome.time_s);
    steps += r.steps;
    wall += r.wall_s;
    per_episode.push_back({{"seed", seed},
                           {"instruction", env.instruction()},
                           {"success", r.outcome.success},
                           {"reason", r.outcome.reason},
                           {"time_s", r.outcome.time_s},
                           {"peak_force", r.outcome.peak_force}});
    if (o.verbose) {
      vla::log_info(
          "seed ", seed, ": ", r.outcome.reason, " t=", vla::fmt_double(r.outcome.time_s, 2),
          " s peak=", vla::fmt_double(r.outcome.peak_force, 2), " N  \"", env.instruction(), "\"");
    }
    bar.tick(1, vla::str_cat("success ", reasons["success"], "/", i + 1));
  }
  bar.finish();
  const double rate = static_cast<double>(reasons["success"]) / o.episodes;
  const double steps_per_s = wall > 0 ? static_cast<double>(steps) / wall : 0.0;
  vla::Table table({"metric", "value"});
  table.add_row({"policy", o.policy});
  table.add_row({"episodes", std::to_string(o.episodes)});
  table.add_row({"success rate", vla::fmt_double(100.0 * rate, 1) + " %"});
  for (const char* r : {"wrong_port", "excess_force", "timeout"}) {
    table.add_row({std::string("failures: ") + r, std::to_string(reasons[r])});
  }
  table.add_row({"mean time (s), all", vla::fmt_double(vla::mean(times), 2)});
  table.add_row({"mean time (s), successes", vla::fmt_double(vla::mean(success_times), 2)});
  table.add_row({"peak force p50/max (N)", vla::fmt_double(vla::percentile(peaks, 50), 2) + " / " +
                                               vla::fmt_double(vla::percentile(peaks, 100), 2)});
  table.add_row({"physics steps/s (incl. policy)", vla::fmt_double(steps_per_s, 0)});
  table.add_row(
      {"real-time factor", vla::fmt_double(steps_per_s / vla::sim::kPhysicsHz, 1) + " x"});
  table.print();
  if (!o.json.empty()) {
    nlohmann::json j = {{"policy", o.policy},
                        {"episodes", o.episodes},
                        {"seed", o.seed},
                        {"success_rate", rate},
                        {"successes", reasons["success"]},
                        {"failures",
                         {{"wrong_port", reasons["wrong_port"]},
                          {"excess_force", reasons["excess_force"]},
                          {"timeout", reasons["timeout"]}}},
                        {"wrong_port", reasons["wrong_port"]},
                        {"excess_force", reasons["excess_force"]},
                        {"timeout", reasons["timeout"]},
                        {"mean_time_s", vla::mean(times)},
                        {"mean_success_time_s", vla::mean(success_times)},
                        {"steps_per_s", steps_per_s},
                        {"per_episode", per_episode}};
    vla::write_json_atomic(o.json, j);
  }
}

void add_sim(CLI::App& app) {
  auto o = std::make_shared<SimOptions>();
  auto* c = app.add_subcommand(
      "sim",
      "Run closed-loop episodes of the MuJoCo needle-insertion simulator with a scripted policy\n"
      "and print success rate, failure reasons, mean episode time and physics steps/s.");
  c->add_option("--policy", o->policy,
                "scripted (the force-using scripted demonstrator) | hold (no motion)")
      ->capture_default_str();
  c->add_option("--episodes", o->episodes, "number of episodes (seeds seed..seed+N-1)")
      ->check(CLI::Range(1, 100000000))
      ->capture_default_str();
  c->add_option("--seed", o->seed, "seed of the first episode")->capture_default_str();
  c->add_option("--res", o->res, "camera resolution WxH (used by --snapshot)")
      ->capture_default_str();
  c->add_option("--views", o->views, "number of views 1..5 (top front left right needle)")
      ->check(CLI::Range(1, 5))
      ->capture_default_str();
  c->add_option("--noise", o->noise, "force sensor noise std (N)")
      ->check(CLI::Range(0.0, 1000.0))
      ->capture_default_str();
  c->add_option("--time-limit", o->time_limit, "episode time limit (s)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  c->add_option("--ports", o->ports, "number of coloured ports 3..6")
      ->check(CLI::Range(3, 6))
      ->capture_default_str();
  c->add_option("--target", o->target, "force the target port index (-1: random)")
      ->check(CLI::Range(-1, 5))
      ->capture_default_str();
  c->add_option("--json", o->json, "write the results as JSON to FILE");
  c->add_option("--snapshot", o->snapshot,
                "write a PNG contact sheet of the views of the first episode at first contact");
  c->add_flag("--verbose,-v", o->verbose, "log each episode");
  c->callback([o] { run_sim(*o); });
}

struct DatagenOptions {
  int episodes = 10;
  std::string out;
  uint64_t seed = 0;
  int views = vla::sim::kNumViews;
  std::string res = "128x128";
  std::string format = "png";
  double noise = vla::sim::EnvConfig{}.force_noise_std;
  int ports = 3;
  std::string json;
  double dart_noise = 0.0;  // DART: noise on executed actions (m per action), labels clean
  int layout_ticks = 0;     // > 0: episodes of this many ticks (grounding layouts), not full runs
  int jobs = 1;             // worker threads, each with its own env
  std::string policy;       // DAgger: roll out this learned policy, the expert labels
};

int64_t dir_bytes(const std::string& dir) {
  int64_t total = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec)) total += static_cast<int64_t>(e.file_size(ec));
  }
  return total;
}

void run_datagen(const DatagenOptions& o) {
  VLA_CHECK(o.episodes > 0, "--episodes must be > 0");
  VLA_CHECK(!o.out.empty(), "--out DIR is required");
  VLA_CHECK(o.jobs >= 1 && o.jobs <= 256, "--jobs must be 1..256, got ", o.jobs);
  VLA_CHECK(std::isfinite(o.dart_noise) && o.dart_noise >= 0 && o.dart_noise <= 0.005,
            "--dart-noise must be 0..0.005 m per action, got ", o.dart_noise);
  VLA_CHECK(o.layout_ticks >= 0, "--layout-ticks must be >= 0, got ", o.layout_ticks);
  SimOptions so;
  so.res = o.res;
  so.views = o.views;
  so.noise = o.noise;
  so.ports = o.ports;
  vla::dataset::DatasetWriter writer(o.out, o.format);
  writer.set_index_every(std::max(1, std::min(200, o.episodes / 50)));
  const size_t first = writer.size();
  vla::ProgressBar bar("datagen", o.episodes);
  vla::Stopwatch sw;
  int ok = 0;
  int64_t frames = 0;
  // Workers take episode indices in order and hand them to the writer in the same order, so the
  // dataset does not depend on --jobs (episode i always uses seed + i).
  std::mutex mu;
  std::condition_variable turn;
  int next_to_write = 0;
  std::atomic<int> next_index{0};
  std::exception_ptr failure;
  auto worker = [&] {
    try {
      vla::sim::NeedleEnv env(env_config(so, true));
      auto expert = std::make_shared<vla::sim::ScriptedDemonstrator>();
      vla::sim::ChunkPolicy labeler = vla::sim::demonstrator_policy(expert);
      vla::sim::RolloutOptions ro;
      ro.action_noise_std = o.dart_noise;
      ro.noise_seed = o.seed;
      ro.max_ticks = o.layout_ticks;
      vla::sim::ChunkPolicy executed = labeler;
      if (o.dart_noise > 0) {  // DART: the labeler's own chunk is executed with noise
        ro.labeler = labeler;
        executed = vla::sim::ChunkPolicy();
      }
      if (!o.policy.empty()) {  // DAgger: the learned policy drives, the expert labels
        ro.labeler = labeler;
        executed = vla::closed_loop::sim_policy(vla::policy::Policy::load(o.policy));
      }
      for (int i = next_index++; i < o.episodes; i = next_index++) {
        vla::sim::Recording rec;
        vla::sim::run_episode(env, executed, o.seed + static_cast<uint64_t>(i), -1, &rec, ro);
        const vla::dataset::EpisodeData ep = vla::closed_loop::to_episode_data(std::move(rec));
        const auto encoded = writer.encode_frames(ep);
        std::unique_lock<std::mutex> lock(mu);
        turn.wait(lock, [&] { return next_to_write == i || failure; });
        if (failure) return;
        ok += ep.success ? 1 : 0;
        frames += static_cast<int64_t>(ep.frames.size() * ep.view_names.size());
        writer.write(ep, encoded);
        ++next_to_write;
        turn.notify_all();
        const double per_min = (i + 1) / std::max(sw.elapsed_s(), 1e-9) * 60.0;
        bar.tick(1, vla::str_cat("success ", ok, "/", i + 1, " | ", vla::fmt_double(per_min, 1),
                                 " ep/min"));
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!failure) failure = std::current_exception();
      next_index = o.episodes;
      turn.notify_all();
    }
  };
  // Several workers each running a policy: one torch thread each instead of all cores each.
  if (!o.policy.empty() && o.jobs > 1) vla::configure_torch_threads(1);
  std::vector<std::thread> pool;
  for (int j = 0; j < std::min(o.jobs, o.episodes); ++j) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  writer.flush();
  if (failure) std::rethrow_exception(failure);
  bar.finish();
  const double secs = sw.elapsed_s();
  const double per_min = o.episodes / secs * 60.0;
  const int64_t bytes = dir_bytes(o.out);
  vla::Table table({"metric", "value"});
  table.add_row({"episodes written", std::to_string(o.episodes) + " (" + o.out + ", first index " +
                                         std::to_string(first) + ")"});
  table.add_row({"demonstrator success", std::to_string(ok) + "/" + std::to_string(o.episodes)});
  table.add_row({"views x res", std::to_string(o.views) + " x " + o.res + " " + o.format});
  table.add_row({"frames", std::to_string(frames)});
  table.add_row({"episodes/min", vla::fmt_double(per_min, 1)});
  table.add_row({"dataset size (MB)", vla::fmt_double(bytes / 1e6, 1)});
  table.print();
  if (!o.json.empty()) {
    vla::write_json_atomic(o.json, {{"episodes", o.episodes},
                                    {"successes", ok},
                                    {"success_rate", static_cast<double>(ok) / o.episodes},
                                    {"frames", frames},
                                    {"seconds", secs},
                                    {"episodes_per_min", per_min},
                                    {"bytes", bytes},
                                    {"out", o.out}});
  }
}

void add_datagen(CLI::App& app) {
  auto o = std::make_shared<DatagenOptions>();
  auto* c = app.add_subcommand(
      "datagen",
      "Record scripted-demonstrator episodes (frames at 10 Hz, 650 Hz forces, 80 Hz actions) into "
      "a\n"
      "dataset folder (see docs/dataset.md). All episodes are kept with their success flag.");
  c->add_option("--episodes", o->episodes, "number of episodes")
      ->check(CLI::Range(1, 100000000))
      ->capture_default_str();
  c->add_option("--out", o->out, "dataset folder (created; appends after existing episodes)")
      ->required();
  c->add_option("--seed", o->seed, "seed of the first episode (episode i uses seed+i)")
      ->capture_default_str();
  c->add_option("--views", o->views, "number of views 1..5 (top front left right needle)")
      ->check(CLI::Range(1, 5))
      ->capture_default_str();
  c->add_option("--res", o->res, "camera resolution WxH")->capture_default_str();
  c->add_option("--format", o->format, "frame encoding: png | jpg")
      ->check(CLI::IsMember({"png", "jpg"}))
      ->capture_default_str();
  c->add_option("--noise", o->noise, "force sensor noise std (N)")
      ->check(CLI::Range(0.0, 1000.0))
      ->capture_default_str();
  c->add_option("--ports", o->ports, "number of coloured ports 3..6")
      ->check(CLI::Range(3, 6))
      ->capture_default_str();
  c->add_option("--json", o->json, "write throughput numbers as JSON to FILE");
  c->add_option("--dart-noise", o->dart_noise,
                "DART: Gaussian noise (m per 80 Hz action; z gets half) added to the executed\n"
                "actions while the recorded labels stay the clean expert actions (0 = off)")
      ->check(CLI::Range(0.0, 0.1))
      ->capture_default_str();
  c->add_option("--layout-ticks", o->layout_ticks,
                "record only the first N ticks of each episode (cheap grounding layouts: one\n"
                "render per tick; 0 = full episodes)")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  c->add_option("--jobs", o->jobs, "worker threads (each renders with its own OSMesa context)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  c->add_option(
      "--policy", o->policy,
      "DAgger: roll out this learned policy (synchronous: fresh VL features every\n"
      "tick) and record the scripted demonstrator's action at every visited state as the\n"
      "label; append to an existing dataset to aggregate rounds. --views/--res must\n"
      "match what the policy was trained on.");
  c->callback([o] { run_datagen(*o); });
}

}  // namespace

VLA_REGISTER_COMMAND(20, add_sim);
VLA_REGISTER_COMMAND(21, add_datagen);
