// The two runners: deterministic sim time (one thread) and wall time (physics, VLM and loop
// threads).
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <thread>

#include "runtime/runtime.h"

namespace vla::runtime {

const char* to_string(TickStatus s) {
  switch (s) {
    case TickStatus::kAct:
      return "act";
    case TickStatus::kHoldStartup:
      return "hold_startup";
    case TickStatus::kHoldSensor:
      return "hold_sensor";
    case TickStatus::kSafeStop:
      return "safe_stop";
    case TickStatus::kExpertError:
      return "expert_error";
  }
  return "?";
}

TickGate gate_tick(const TickInputs& in, const TickLimits& lim) {
  TickGate g;
  if (!in.have_features) {
    const bool late = in.since_start_s >= lim.startup_timeout_s;
    g.status = late ? TickStatus::kSafeStop : TickStatus::kHoldStartup;
    g.reason = late ? "no VL features within startup timeout" : "no VL features yet";
  } else if (in.feature_age_s > lim.max_staleness_s) {
    g.status = TickStatus::kSafeStop;
    g.reason = str_cat("VL features ", fmt_double(in.feature_age_s, 2), " s old > max staleness ",
                       lim.max_staleness_s, " s");
  } else if (std::isfinite(in.sensor_idle_s) && in.sensor_idle_s > lim.sensor_stop_s) {
    g.status = TickStatus::kSafeStop;
    g.reason = str_cat("no sensor samples for ", fmt_double(in.sensor_idle_s, 2), " s");
  } else if (in.sensor == WindowStatus::kNaN || in.sensor == WindowStatus::kGap ||
             in.sensor == WindowStatus::kDropout || in.sensor_idle_s > lim.sensor_stale_s) {
    g.status = TickStatus::kHoldSensor;
    g.reason = "sensor window not usable";
  }
  return g;
}

namespace {

void check_loop_priority(const RuntimeConfig& cfg) {
  VLA_CHECK(cfg.loop_priority >= 0 && cfg.loop_priority <= 99,
            "runtime: loop priority must be 0..99, got ", cfg.loop_priority);
}

void check_config(const PolicyFns& policy, const RuntimeConfig& cfg) {
  VLA_CHECK(policy.encode && policy.act, "runtime: policy '", policy.name,
            "' lacks an encode or act function");
  VLA_CHECK(policy.horizon >= 1 && policy.horizon <= kMaxHorizon, "runtime: policy horizon ",
            policy.horizon, " outside 1..", kMaxHorizon);
  VLA_CHECK(policy.sensor_window >= 1 && policy.sensor_window <= 2048, "runtime: sensor window ",
            policy.sensor_window, " outside 1..2048");
  VLA_CHECK(cfg.action_hz > 0 && cfg.action_hz <= 1000,
            "runtime: --action-hz must be in (0, 1000], got ", cfg.action_hz);
  VLA_CHECK(cfg.vlm_hz >= 0, "runtime: --vlm-hz must be >= 0, got ", cfg.vlm_hz);
  VLA_CHECK(cfg.vlm_latency_s >= 0, "runtime: --vlm-latency must be >= 0, got ", cfg.vlm_latency_s);
  VLA_CHECK(cfg.max_staleness_s > 0, "runtime: --max-staleness must be > 0, got ",
            cfg.max_staleness_s);
  check_loop_priority(cfg);
}

// A plant that throws (a driver fault, a simulator error) ends the episode as a safe stop.
void note_plant_error(EpisodeResult& ep, const std::string& what) {
  ep.safe_stopped = true;
  ep.safe_stop_reason = str_cat("plant error: ", what);
  ep.errors.push_back(ep.safe_stop_reason);
  ep.outcome.done = true;
  ep.outcome.success = false;
  ep.outcome.reason = "plant_error";
  log_error("runtime: safe stop: ", ep.safe_stop_reason);
}

// Scene memory: the features to publish from a checked encode() output (`first` is set by the
// episode's first call).
torch::Tensor with_memory(const PolicyFns& policy, torch::Tensor& first,
                          const torch::Tensor& newest) {
  if (!policy.expert_features) return newest;
  if (!first.defined()) first = newest;
  return policy.expert_features(first, newest);
}

// The per-tick work shared by both runners. Everything is pre-allocated in the constructor.
class LoopCore {
 public:
  LoopCore(const PolicyFns& policy, const RuntimeConfig& cfg)
      : policy_(policy),
        cfg_(cfg),
        blender_(cfg.blend, policy.horizon, cfg.ensemble_m, cfg.rtc_prefix),
        window_(torch::zeros({policy.sensor_window, 6})),
        proprio_(torch::zeros({3})),
        chunk_buf_(static_cast<size_t>(policy.horizon) * 3, 0.0f),
        out_(static_cast<size_t>(policy.horizon)),
        hold_(static_cast<size_t>(policy.horizon), Action{0, 0, 0}) {
    limits_.max_staleness_s = cfg.max_staleness_s;
    limits_.startup_timeout_s = cfg.startup_timeout_s;
  }

  // Runs one tick at time `now`. Returns the chunk to command (hold = zeros).
  const std::vector<Action>& tick(double now, const Features& f, const SensorRing& ring,
                                  const Action& proprio, TickRecord& rec, EpisodeResult& ep) {
    rec.version = f.version;
    rec.feature_age = f.valid() ? now - f.capture_t : -1.0;
    rec.sensor =
        ring.window(now, policy_.sensor_window, window_.data_ptr<float>(), cfg_.sensor_timeout_s);
    TickInputs in;
    in.have_features = f.valid();
    in.feature_age_s = rec.feature_age;
    in.since_start_s = now;
    in.sensor = rec.sensor;
    const TickGate gate = gate_tick(in, limits_);
    if (gate.status != TickStatus::kAct) {
      rec.status = gate.status;
      if (gate.status == TickStatus::kSafeStop) note_safe_stop(ep, gate.reason);
      return hold_;
    }
    float* p = proprio_.data_ptr<float>();
    for (int k = 0; k < 3; ++k) p[k] = proprio[k];
    const int64_t t0 = now_ns();
    torch::Tensor chunk;
    try {
      chunk = policy_.act(f.data, window_, proprio_);
    } catch (const std::exception& e) {
      rec.expert_ms = (now_ns() - t0) * 1e-6;
      rec.status = TickStatus::kExpertError;
      if (ep.errors.size() < 8) ep.errors.push_back(str_cat("expert: ", e.what()));
      return hold_;
    }
    rec.expert_ms = (now_ns() - t0) * 1e-6;
    if (!chunk.defined() || chunk.numel() != policy_.horizon * 3) {
      rec.status = TickStatus::kExpertError;
      if (ep.errors.size() < 8)
        ep.errors.push_back(str_cat("expert: chunk has ", chunk.defined() ? chunk.numel() : 0,
                                    " values, expected ", policy_.horizon * 3));
      return hold_;
    }
    auto c = chunk.to(torch::kFloat).contiguous();
    const float* src = c.data_ptr<float>();
    for (size_t i = 0; i < chunk_buf_.size(); ++i) {
      if (!std::isfinite(src[i])) {
        rec.status = TickStatus::kExpertError;
        if (ep.errors.size() < 8) ep.errors.push_back("expert: non-finite action");
        return hold_;
      }
      chunk_buf_[i] = src[i];
    }
    blender_.blend(now, chunk_buf_.data(), out_);
    rec.status = TickStatus::kAct;
    return out_;
  }

 private:
  void note_safe_stop(EpisodeResult& ep, const std::string& why) {
    if (!ep.safe_stopped) {
      ep.safe_stopped = true;
      ep.safe_stop_reason = why;
      log_warn("runtime: safe stop: ", why);
    }
  }
  const PolicyFns& policy_;
  const RuntimeConfig& cfg_;
  TickLimits limits_;
  ChunkBlender blender_;
  torch::Tensor window_, proprio_;
  std::vector<float> chunk_buf_;
  std::vector<Action> out_, hold_;
};

void finish_outcome(EpisodeResult& ep) {
  if (!ep.outcome.done) {
    ep.outcome.done = true;
    ep.outcome.success = false;
    ep.outcome.reason = ep.interrupted    ? "interrupted"
                        : ep.safe_stopped ? "safe_stop"
                                          : "time_limit";
  }
}

void maybe_record_frame(EpisodeResult& ep, const RuntimeConfig& cfg,
                        const std::vector<Image>& views) {
  if (!cfg.record_frames || static_cast<int>(ep.frames.size()) >= cfg.max_frames || views.empty())
    return;
  ep.frames.push_back(views.size() == 1 ? views[0]
                                        : tile_images(views, static_cast<int>(views.size())));
}

}  // namespace

void check_features(const torch::Tensor& f) {
  VLA_CHECK(f.defined() && f.numel() > 0, "VLM returned no features");
  VLA_CHECK(torch::isfinite(f).all().item<bool>(), "VLM returned non-finite features");
}

// ---------------------------------------------------------------- sim time
EpisodeResult run_sim_time(Plant& plant, const PolicyFns& policy, const RuntimeConfig& cfg) {
  check_config(policy, cfg);
  c10::InferenceMode guard;
  EpisodeResult ep;
  ep.period = 1.0 / cfg.action_hz;
  SensorRing ring(4096);
  LoopCore core(policy, cfg);
  FeatureSlot slot;
  const std::string instruction = plant.instruction();
  const double t_begin = plant.time();
  int64_t version = 0;
  bool vlm_busy = false;
  torch::Tensor first_features;  // scene memory: the episode's first encode() output
  Features pending;
  double next_launch = 0.0;
  // VLM and expert failures are handled where they happen; what reaches the outer catch came from
  // the plant.
  try {
    for (int64_t k = 0;; ++k) {
      const double t = k * ep.period;  // episode-relative sim time of this tick
      if (cfg.max_duration_s > 0 && t >= cfg.max_duration_s - 1e-9) break;
      // VLM: deliver a finished call, then launch the next one (captures the views now).
      if (vlm_busy && pending.ready_t <= t + 1e-9) {
        ep.vlm.push_back({pending.capture_t, pending.ready_t, pending.version, true});
        if (ep.first_features_t < 0) ep.first_features_t = pending.ready_t;
        slot.publish(std::move(pending));
        pending = Features();
        vlm_busy = false;
      }
      if (!vlm_busy && t + 1e-9 >= next_launch) {
        Features f;
        f.capture_t = t;
        f.ready_t = t + cfg.vlm_latency_s;
        try {
          std::vector<Image> views = plant.render();  // a camera fault is a failed VLM call
          maybe_record_frame(ep, cfg, views);
          f.data = policy.encode(views, instruction);
          check_features(f.data);
          f.data = with_memory(policy, first_features, f.data);
          f.version = version++;
          vlm_busy = true;
          pending = std::move(f);
        } catch (const std::exception& e) {
          ep.vlm.push_back({t, t, -1, false});
          if (ep.errors.size() < 8) ep.errors.push_back(str_cat("vlm: ", e.what()));
        }
        if (cfg.vlm_hz > 0) next_launch = std::max(next_launch + 1.0 / cfg.vlm_hz, t);
        if (vlm_busy && pending.ready_t <= t + 1e-9) {  // zero latency: synchronous
          ep.vlm.push_back({pending.capture_t, pending.ready_t, pending.version, true});
          if (ep.first_features_t < 0) ep.first_features_t = pending.ready_t;
          slot.publish(std::move(pending));
          pending = Features();
          vlm_busy = false;
        }
      }
      TickRecord rec;
      rec.deadline = rec.start = t;
      const Features& f = slot.read();
      const auto& chunk = core.tick(t, f, ring, plant.proprio(), rec, ep);
      ep.ticks.push_back(rec);
      if (cfg.record_chunks) ep.chunks.push_back(chunk);
      plant.set_chunk(chunk);
      if (ep.safe_stopped && cfg.stop_on_safe_stop) break;
      // Physics until the next tick.
      const double t_next = (k + 1) * ep.period;
      bool done = false;
      while (plant.time() - t_begin < t_next - 1e-9) {
        ForceSample s = plant.step_physics();
        s.t -= t_begin;
        ring.push(s);
        // The outcome is checked after every physics step: a finished plant stops stepping and
        // re-sends its last sample, which the ring would count as a stale-sensor rejection.
        PlantOutcome o = plant.outcome();
        if (o.done) {
          ep.outcome = o;
          done = true;
          break;
        }
      }
      if (done) break;
    }
  } catch (const std::exception& e) {
    note_plant_error(ep, e.what());
  }
  ep.sensor_rejected = ring.rejected();
  try {
    ep.duration = plant.time() - t_begin;
  } catch (const std::exception&) {
    ep.duration = static_cast<double>(ep.ticks.size()) * ep.period;
  }
  finish_outcome(ep);
  return ep;
}

// ---------------------------------------------------------------- wall time
namespace {

// Heap tuning and mlockall (process-wide; mlockall is slow, it faults in everything mapped): done
// before the loop's clock starts, so it cannot make the first ticks late.
void prepare_memory(const RuntimeConfig& cfg, RealtimeStatus& st) {
  if (cfg.keep_heap) {
    // glibc returns large freed blocks to the kernel (munmap, heap trimming); the VLM thread's
    // next call then page-faults fresh zeroed pages in the kernel, which this VM's
    // non-preemptible kernel lets delay the loop's wake-up (measured: period jitter p99 1.6-2.0
    // ms without, 1.03 ms with, 0.80 ms with SCHED_FIFO too; docs/runtime.md).
    st.heap_kept = ::mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 &&
                   ::mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 && ::mallopt(M_TOP_PAD, 64 << 20) == 1;
    if (!st.heap_kept) st.notes.push_back("heap tuning (mallopt) refused");
  }
  if (cfg.lock_memory) {
    if (::mlockall(MCL_CURRENT | MCL_FUTURE) == 0)
      st.memory_locked = true;
    else
      st.notes.push_back(str_cat("memory not locked (mlockall: ", std::strerror(errno),
                                 "; raise `ulimit -l` or grant CAP_IPC_LOCK)"));
  }
}

// Affinity and SCHED_FIFO of the calling thread. Applied after the worker threads exist: threads
// created later would inherit both.
void apply_thread_realtime(const RuntimeConfig& cfg, RealtimeStatus& st) {
  if (cfg.loop_cpu >= 0) {
    const int ncpu = static_cast<int>(std::thread::hardware_concurrency());
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cfg.loop_cpu, &set);
    const int rc = cfg.loop_cpu < ncpu && cfg.loop_cpu < CPU_SETSIZE
                       ? pthread_setaffinity_np(pthread_self(), sizeof(set), &set)
                       : EINVAL;
    if (rc == 0)
      st.pinned = true;
    else
      st.notes.push_back(str_cat("loop not pinned to CPU ", cfg.loop_cpu, " (", std::strerror(rc),
                                 "; this machine has ", ncpu, " CPUs)"));
  }
  if (cfg.loop_priority > 0) {
    sched_param sp{};
    sp.sched_priority = cfg.loop_priority;
    const int rc = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
    if (rc == 0)
      st.fifo = true;
    else
      st.notes.push_back(str_cat("SCHED_FIFO ", cfg.loop_priority, " not permitted (",
                                 std::strerror(rc),
                                 "; needs CAP_SYS_NICE or an rtprio limit): normal scheduling"));
  }
}

}  // namespace

RealtimeStatus apply_realtime(const RuntimeConfig& cfg) {
  check_loop_priority(cfg);
  RealtimeStatus st;
  prepare_memory(cfg, st);
  apply_thread_realtime(cfg, st);
  for (const auto& n : st.notes) log_warn("runtime: ", n);
  return st;
}

nlohmann::json RealtimeStatus::to_json() const {
  return {{"sched_fifo", fifo},
          {"pinned", pinned},
          {"memory_locked", memory_locked},
          {"heap_kept", heap_kept},
          {"notes", notes}};
}

namespace {

void sleep_until_precise(int64_t deadline_ns, double spin_us, const std::atomic<bool>& stop) {
  const int64_t spin_ns = static_cast<int64_t>(spin_us * 1000);
  int64_t now = now_ns();
  if (deadline_ns - now > spin_ns) {
    std::this_thread::sleep_until(
        Clock::time_point(std::chrono::nanoseconds(deadline_ns - spin_ns)));
  }
  while (now_ns() < deadline_ns && !stop.load(std::memory_order_relaxed)) {
  }
}

void lower_thread_priority(int nice) {
  if (nice <= 0) return;
  const pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
  const int cur = getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
  (void)setpriority(PRIO_PROCESS, static_cast<id_t>(tid), cur + nice);
}

// State shared with the worker threads; held by shared_ptr so a VLM thread stuck in encode can be
// detached at shutdown without dangling.
struct Shared {
  std::atomic<bool> stop{false};
  std::atomic<bool> vlm_finished{false};
  std::mutex plant_mu;  // serialises every Plant call (physics thread + renders)
  FeatureSlot slot;
  SensorRing ring{4096};
  // Chunk mailbox: loop -> physics thread.
  std::mutex cmd_mu;
  std::vector<Action> cmd;
  bool cmd_new = false;
  // Snapshots published by the physics thread.
  std::mutex snap_mu;
  Action proprio{};
  PlantOutcome outcome;
  std::atomic<bool> done{false};
  std::atomic<bool> physics_failed{false};
  std::string physics_error;  // under snap_mu
  // VLM bookkeeping (VLM thread writes, main reads after join or under mu).
  std::mutex vlm_mu;
  std::vector<VlmRecord> vlm;
  std::vector<std::string> vlm_errors;
  std::vector<Image> frames;
  double first_features_t = -1.0;
  int64_t t0_ns = 0;
  double rel(int64_t ns) const { return (ns - t0_ns) * 1e-9; }
};

}  // namespace

EpisodeResult run_wall_time(Plant& plant, const PolicyFns& policy, const RuntimeConfig& cfg,
                            const std::atomic<bool>* user_stop) {
  check_config(policy, cfg);
  set_blas_threads(1);
  auto sh = std::make_shared<Shared>();
  EpisodeResult ep;
  ep.period = 1.0 / cfg.action_hz;
  prepare_memory(cfg, ep.realtime);
  {
    std::lock_guard<std::mutex> lock(sh->plant_mu);
    sh->proprio = plant.proprio();
  }
  const std::string instruction = plant.instruction();
  sh->t0_ns = now_ns();
  const double plant_t0 = plant.time();

  // Physics thread: one 1/650 s step per absolute deadline; catches up after a render stall.
  std::thread physics([sh, &plant, plant_t0] {
    try {
      const double dt = 1.0 / kSensorHz;
      std::vector<Action> cmd;
      for (int64_t n = 1; !sh->stop.load(); ++n) {
        const int64_t deadline = sh->t0_ns + static_cast<int64_t>(n * dt * 1e9);
        if (deadline > now_ns()) {
          std::this_thread::sleep_until(Clock::time_point(std::chrono::nanoseconds(deadline)));
        }
        bool apply = false;
        {
          std::lock_guard<std::mutex> lock(sh->cmd_mu);
          if (sh->cmd_new) {
            cmd.assign(sh->cmd.begin(), sh->cmd.end());
            sh->cmd_new = false;
            apply = true;
          }
        }
        ForceSample s;
        Action pr;
        PlantOutcome o;
        {
          std::lock_guard<std::mutex> lock(sh->plant_mu);
          if (apply) plant.set_chunk(cmd);
          s = plant.step_physics();
          pr = plant.proprio();
          o = plant.outcome();  // every step: a finished plant re-sends its last sample
        }
        // Stamp with the plant's own clock mapped onto the runtime clock (a hardware timestamp).
        // A finished plant stops stepping and re-sends its last sample: not a new reading.
        if (!o.done) {
          s.t -= plant_t0;
          sh->ring.push(s);
        }
        {
          std::lock_guard<std::mutex> lock(sh->snap_mu);
          sh->proprio = pr;
          sh->outcome = o;
        }
        if (o.done) {
          sh->done.store(true);
          break;
        }
      }
    } catch (const std::exception& e) {
      {
        std::lock_guard<std::mutex> lock(sh->snap_mu);
        sh->physics_error = e.what();
      }
      sh->physics_failed.store(true);
      sh->done.store(true);
    }
  });

  // VLM worker: render (under the plant lock), encode, publish.
  PolicyFns pol = policy;  // copy: the thread may outlive this call if it is stuck in encode
  RuntimeConfig vcfg = cfg;
  std::thread vlm([sh, &plant, pol, vcfg, instruction] {
    lower_thread_priority(vcfg.vlm_nice);
    at::set_num_threads(vcfg.vlm_threads);
    c10::InferenceMode guard;
    int64_t version = 0;
    int64_t launches = 0, last_launch_ns = 0;
    torch::Tensor first_features;  // scene memory: the episode's first encode() output
    if (pol.prepare) {
      try {
        pol.prepare(instruction);  // before the first capture: plan building ages no frame
      } catch (const std::exception& e) {
        log_warn("runtime: VLM prepare failed (the first call will retry): ", e.what());
      }
    }
    while (!sh->stop.load()) {
      // --vlm-hz: launches on a fixed grid. "As fast as possible" still waits one action period
      // after the previous launch: features newer than the loop can read are never used, and a
      // cheap encode would otherwise re-render back to back and starve the physics thread of the
      // plant lock.
      const int64_t deadline =
          vcfg.vlm_hz > 0
              ? sh->t0_ns + static_cast<int64_t>(launches * 1e9 / vcfg.vlm_hz)
              : (launches == 0 ? 0 : last_launch_ns + static_cast<int64_t>(1e9 / vcfg.action_hz));
      while (now_ns() < deadline && !sh->stop.load())
        std::this_thread::sleep_for(std::chrono::microseconds(
            std::min<int64_t>(20000, std::max<int64_t>(100, (deadline - now_ns()) / 1000))));
      if (sh->stop.load()) break;
      ++launches;
      std::vector<Image> views;
      const int64_t cap_ns = now_ns();
      last_launch_ns = cap_ns;
      try {
        {
          std::lock_guard<std::mutex> lock(sh->plant_mu);
          if (sh->stop.load()) break;
          views = plant.render();
        }
        if (vcfg.record_frames) {
          std::lock_guard<std::mutex> lock(sh->vlm_mu);
          if (static_cast<int>(sh->frames.size()) < vcfg.max_frames && !views.empty())
            sh->frames.push_back(
                views.size() == 1 ? views[0] : tile_images(views, static_cast<int>(views.size())));
        }
        torch::Tensor feat = pol.encode(views, instruction);
        check_features(feat);
        feat = with_memory(pol, first_features, feat);
        if (sh->stop.load()) break;
        Features f;
        f.data = feat;
        f.version = version++;
        f.capture_t = sh->rel(cap_ns);
        f.ready_t = sh->rel(now_ns());
        {
          std::lock_guard<std::mutex> lock(sh->vlm_mu);
          sh->vlm.push_back({f.capture_t, f.ready_t, f.version, true});
          if (sh->first_features_t < 0) sh->first_features_t = f.ready_t;
        }
        sh->slot.publish(std::move(f));
      } catch (const std::exception& e) {
        {
          std::lock_guard<std::mutex> lock(sh->vlm_mu);
          sh->vlm.push_back({sh->rel(cap_ns), sh->rel(now_ns()), -1, false});
          if (sh->vlm_errors.size() < 8) sh->vlm_errors.push_back(str_cat("vlm: ", e.what()));
        }
        log_warn("runtime: VLM call failed (loop continues on older features): ", e.what());
        std::this_thread::sleep_for(std::chrono::milliseconds(50));  // back off
      }
    }
    sh->vlm_finished.store(true);
  });

  // Action loop on this thread.
  at::set_num_threads(cfg.expert_threads);
  c10::InferenceMode guard;
  // The loop runs on the caller's thread: its scheduling and affinity are restored afterwards.
  int prev_policy = SCHED_OTHER;
  sched_param prev_param{};
  cpu_set_t prev_cpus;
  (void)pthread_getschedparam(pthread_self(), &prev_policy, &prev_param);
  (void)pthread_getaffinity_np(pthread_self(), sizeof(prev_cpus), &prev_cpus);
  apply_thread_realtime(cfg, ep.realtime);
  for (const auto& n : ep.realtime.notes) log_warn("runtime: ", n);
  LoopCore core(policy, cfg);
  const int64_t period_ns = static_cast<int64_t>(1e9 / cfg.action_hz);
  const size_t reserve =
      static_cast<size_t>((cfg.max_duration_s > 0 ? cfg.max_duration_s : 120.0) * cfg.action_hz) +
      16;
  ep.ticks.reserve(reserve);
  if (cfg.record_chunks) ep.chunks.reserve(reserve);
  for (int64_t k = 0;; ++k) {
    const int64_t deadline = sh->t0_ns + k * period_ns;
    if (cfg.max_duration_s > 0 && sh->rel(deadline) >= cfg.max_duration_s - 1e-9) break;
    sleep_until_precise(deadline, cfg.spin_us, sh->stop);
    if (user_stop && user_stop->load()) {
      ep.interrupted = true;
      break;
    }
    if (sh->done.load()) break;
    TickRecord rec;
    const int64_t start = now_ns();
    rec.deadline = sh->rel(deadline);
    rec.start = sh->rel(start);
    Action pr;
    {
      std::lock_guard<std::mutex> lock(sh->snap_mu);
      pr = sh->proprio;
    }
    const Features& f = sh->slot.read();
    const auto& chunk = core.tick(rec.start, f, sh->ring, pr, rec, ep);
    {
      std::lock_guard<std::mutex> lock(sh->cmd_mu);
      sh->cmd.assign(chunk.begin(), chunk.end());
      sh->cmd_new = true;
    }
    if (ep.ticks.size() < ep.ticks.capacity()) ep.ticks.push_back(rec);
    if (cfg.record_chunks && ep.chunks.size() < ep.chunks.capacity()) ep.chunks.push_back(chunk);
    if (ep.safe_stopped && cfg.stop_on_safe_stop) {
      // Let the hold command reach the plant before stopping.
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      break;
    }
    // Skip deadlines that already passed (overrun): count them, do not burst.
    const int64_t now = now_ns();
    if (now > deadline + 2 * period_ns) k = (now - sh->t0_ns) / period_ns;
  }
  if (ep.realtime.fifo) (void)pthread_setschedparam(pthread_self(), prev_policy, &prev_param);
  if (ep.realtime.pinned)
    (void)pthread_setaffinity_np(pthread_self(), sizeof(prev_cpus), &prev_cpus);
  if (ep.realtime.memory_locked) (void)::munlockall();
  sh->stop.store(true);
  physics.join();
  // The VLM thread may be stuck inside encode (a stalled VLM): wait a while, then detach it.
  const int64_t give_up = now_ns() + 3'000'000'000LL;
  while (!sh->vlm_finished.load() && now_ns() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const bool vlm_done = sh->vlm_finished.load();
  if (vlm_done) {
    vlm.join();
  } else {
    log_warn("runtime: VLM thread still busy at shutdown; detached");
    vlm.detach();
  }
  ep.duration = sh->rel(now_ns());
  {
    std::lock_guard<std::mutex> lock(sh->snap_mu);
    if (sh->outcome.done) ep.outcome = sh->outcome;
  }
  {
    std::lock_guard<std::mutex> lock(sh->vlm_mu);
    ep.vlm = sh->vlm;
    ep.first_features_t = sh->first_features_t;
    for (auto& e : sh->vlm_errors) ep.errors.push_back(e);
    ep.frames = sh->frames;
  }
  ep.sensor_rejected = sh->ring.rejected();
  if (sh->physics_failed.load()) {
    std::lock_guard<std::mutex> lock(sh->snap_mu);
    note_plant_error(ep, sh->physics_error);
  }
  finish_outcome(ep);
  return ep;
}

}  // namespace vla::runtime
