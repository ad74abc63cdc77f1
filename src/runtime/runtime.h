// vla runtime: the asynchronous dual-rate scheduler.
//
// A slow VLM turns camera views + instruction into VL features in its own thread; a fixed-rate
// action loop (10 Hz default) turns the newest features + the last 100 ms of a 650 Hz force/torque
// stream into chunks of H=8 Cartesian actions (80 Hz) without ever blocking on the VLM.
//
// Building blocks (usable on their own): FeatureSlot (wait-free triple buffer), SensorRing
// (timestamped 650 Hz ring with time-cut windows, gap/NaN detection), ChunkBlender (replace /
// temporal ensembling / RTC-style), Metrics (rates, jitter, feature age, plots).
// Runners: run_sim_time() (single thread, deterministic, VLM latency modelled in sim time) and
// run_wall_time() (real threads: physics at 650 Hz paced in wall time, VLM worker, action loop).
// The plant and the policy are reached through the small interfaces Plant and PolicyFns, so the
// runtime is testable with fakes and adapts to the simulator and the learned policy.
#pragma once

#include <torch/torch.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/core.h"
#include "policy/policy.h"

namespace vla::runtime {

constexpr double kSensorHz = kForceHz;       // force/torque stream and physics rate (core.h)
constexpr double kActionStepHz = kActionHz;  // rate of the actions inside a chunk
constexpr int kMaxHorizon = 32;              // largest chunk the blender accepts

using vla::Action;       // core/core.h
using vla::ForceSample;  // core/core.h

// ---------------------------------------------------------------- interfaces

struct PlantOutcome {
  bool done = false;
  bool success = false;
  std::string reason;  // "success", "wrong_port", "excess_force", "timeout", ...
};

// What the runtime controls: the simulator or a robot. Not required to be thread-safe; the
// wall-time runner serialises all calls (physics thread + renders for the VLM thread).
class Plant {
 public:
  virtual ~Plant() = default;
  virtual std::string instruction() = 0;
  virtual std::vector<Image> render() = 0;
  // Chunk of Cartesian target deltas played at 80 Hz from now on (hold the last when it runs out).
  virtual void set_chunk(const std::vector<Action>& chunk) = 0;
  // Advances physics by 1/650 s and returns the new sensor sample (t = plant time).
  virtual ForceSample step_physics() = 0;
  virtual Action proprio() = 0;
  virtual double time() = 0;
  virtual PlantOutcome outcome() = 0;
};

// The policy as two callables: slow `encode` (VLM, runs on the VLM thread) and fast `act`
// (action expert, runs on the loop thread). act(vl, window [W,6] float, proprio [3]) -> [H,3].
struct PolicyFns {
  std::function<torch::Tensor(const std::vector<Image>& views, const std::string& instruction)>
      encode;
  std::function<torch::Tensor(const torch::Tensor& vl, const torch::Tensor& window,
                              const torch::Tensor& proprio)>
      act;
  // Scene memory (optional): the published features = expert_features(the episode's first
  // encode() output, the newest); Policy::expert_features for learned policies.
  std::function<torch::Tensor(const torch::Tensor& first, const torch::Tensor& newest)>
      expert_features;
  // Optional: readies encode() for an instruction (Policy::prepare_vlm); the wall-time VLM thread
  // calls it before its first capture, so plan building does not age the first features.
  std::function<void(const std::string& instruction)> prepare;
  int sensor_window = kForceWindow;  // samples per window (100 ms at 650 Hz)
  int horizon = kChunkSize;          // actions per chunk
  std::string name = "policy";
};

// ---------------------------------------------------------------- feature slot
struct Features {
  torch::Tensor data;
  int64_t version = -1;    // -1: none yet
  double capture_t = 0.0;  // when the views were captured (runtime clock, s)
  double ready_t = 0.0;    // when the features were published
  bool valid() const { return version >= 0; }
};

// Latest-value slot between one writer (VLM thread) and one reader (action loop): a wait-free
// triple buffer. publish() never blocks the reader; read() never blocks and never allocates;
// old tensors are released on the writer's thread.
class FeatureSlot {
 public:
  FeatureSlot();
  void publish(Features f);
  // Newest published features (version -1 until the first publish). The reference stays valid
  // until the next read() on the same thread.
  const Features& read();
  int64_t published() const { return published_.load(std::memory_order_acquire); }

 private:
  static constexpr uint8_t kDirty = 4;
  std::array<Features, 3> buf_;
  std::atomic<uint8_t> middle_{1};
  int back_ = 0;
  int front_ = 2;
  std::atomic<int64_t> published_{0};
};

// ---------------------------------------------------------------- sensor ring
enum class WindowStatus { kOk = 0, kShort, kGap, kNaN, kDropout };
const char* to_string(WindowStatus s);

// Timestamped 650 Hz ring. push() from the producer thread; window() from the loop thread.
// Windows are cut by time: the `n` newest samples up to time t_end; checks: enough samples, no gap
// (consecutive stamps further apart than gap_factor/650 s), all finite, newest not older than
// `timeout_s` before t_end. Short windows (start-up) are padded by repeating the oldest sample.
// Stamps must increase: a sample whose stamp is not finite or not newer than the previous one (a
// repeated or out-of-order stamp, e.g. a driver re-sending its last reading) is rejected and
// counted, so a window always spans the time it claims; a stream that stops advancing then shows
// as a gap or a dropout.
class SensorRing {
 public:
  explicit SensorRing(size_t capacity = 4096, double rate_hz = kSensorHz);
  bool push(const ForceSample& s);  // false: rejected (stamp not finite or not increasing)
  void clear();
  size_t size() const;
  int64_t total_pushed() const;
  int64_t rejected() const;
  // Writes n x 6 floats into out (row-major, oldest first).
  WindowStatus window(double t_end, int n, float* out, double timeout_s = 0.05,
                      double gap_factor = 1.5) const;

 private:
  mutable std::mutex mu_;
  std::vector<ForceSample> buf_;
  int64_t head_ = 0;  // total samples pushed
  int64_t rejected_ = 0;
  double period_;
};

// ---------------------------------------------------------------- chunk blending
enum class BlendMode { kReplace, kEnsemble, kRtc };
BlendMode parse_blend(const std::string& name);  // "replace" | "ensemble" | "rtc"
const char* to_string(BlendMode m);

// Blends consecutive chunks on an absolute timeline: action i of a chunk issued at time t applies
// at t + i/80 s. replace: the new chunk wins. ensemble (ACT temporal ensembling): every stored
// chunk covering a time contributes with weight exp(-m * k), k = 0 for the oldest. rtc
// (real-time-chunking style): the first `rtc_prefix` actions stay as already committed by the
// previous plan, the rest ramps linearly from the previous plan to the new chunk. No allocation
// after construction.
class ChunkBlender {
 public:
  ChunkBlender(BlendMode mode, int horizon, double ensemble_m = 0.01, int rtc_prefix = 2,
               double step_hz = kActionStepHz);
  // chunk: horizon x 3 floats. out: horizon actions (resized once by the caller).
  void blend(double t, const float* chunk, std::vector<Action>& out);
  void reset();

 private:
  bool value_at(int idx, double tau, Action& a) const;  // stored chunk idx at time tau
  BlendMode mode_;
  int horizon_;
  double m_;
  int rtc_prefix_;
  double step_hz_;
  struct Stored {
    double t = 0.0;
    std::array<Action, kMaxHorizon> a{};
  };
  std::array<Stored, 16> hist_{};  // ring of issued (or, for rtc, committed-plan) chunks
  int count_ = 0;
  int next_ = 0;
};

// ---------------------------------------------------------------- metrics
enum class TickStatus : uint8_t {
  kAct = 0,      // expert ran on valid features
  kHoldStartup,  // no VL features yet: holding
  kHoldSensor,   // sensor window bad (NaN / gap / dropout): holding
  kSafeStop,     // features too stale (or VLM dead): safe stop, holding
  kExpertError,  // expert threw or returned non-finite actions: holding
};
const char* to_string(TickStatus s);

// The gate every action tick passes before the expert may run; the runtime's loops and `vla serve`
// share it. In order: no features yet -> hold (safe stop once startup_timeout_s has passed since
// the start); features older than max_staleness_s, or no sensor samples for sensor_stop_s -> safe
// stop; a bad sensor window (NaN, gap, dropout) or no samples for sensor_stale_s -> hold; else act.
struct TickLimits {
  double max_staleness_s = 3.0;
  double startup_timeout_s = std::numeric_limits<double>::infinity();
  double sensor_stale_s = std::numeric_limits<double>::infinity();
  double sensor_stop_s = std::numeric_limits<double>::infinity();
};
struct TickInputs {
  bool have_features = false;
  double feature_age_s = 0;  // now - capture time of the features' frames
  double since_start_s = 0;  // since the loop / server started
  WindowStatus sensor = WindowStatus::kOk;
  // Since the last sensor sample arrived (serve; 0 in the loops). Infinite: none has arrived yet,
  // a hold (the stream has not started), never a safe stop.
  double sensor_idle_s = 0;
};
struct TickGate {
  TickStatus status = TickStatus::kAct;  // kAct, kHoldStartup, kHoldSensor or kSafeStop
  std::string reason;                    // why, for holds and safe stops
};
TickGate gate_tick(const TickInputs& in, const TickLimits& limits);

struct TickRecord {
  double deadline = 0.0;      // scheduled tick time (s)
  double start = 0.0;         // actual start (s)
  double expert_ms = 0.0;     // expert latency (0 when not run)
  double feature_age = -1.0;  // now - capture time of features used (s); -1 none
  int64_t version = -1;       // feature version used
  TickStatus status = TickStatus::kAct;
  WindowStatus sensor = WindowStatus::kOk;
};

struct VlmRecord {
  double start = 0.0;  // capture time
  double end = 0.0;    // publish (or failure) time
  int64_t version = -1;
  bool ok = true;
};

struct Summary {
  int episodes = 0;
  int successes = 0;
  std::map<std::string, int> outcomes;  // reason -> count
  double duration_s = 0.0;              // total controlled time
  int64_t ticks = 0;
  double action_hz = 0.0;
  double vlm_hz = 0.0;
  int64_t vlm_calls = 0;
  int64_t vlm_errors = 0;
  double expert_ms_p50 = 0, expert_ms_p99 = 0, expert_ms_max = 0;
  double jitter_ms_p50 = 0, jitter_ms_p99 = 0, jitter_ms_max = 0;  // |period - nominal|
  double lateness_ms_p99 = 0;                                      // start - deadline
  int64_t overruns = 0;  // ticks that started a full period late (missed deadlines)
  double age_ms_p50 = 0, age_ms_p99 = 0, age_ms_max = 0;
  double vlm_ms_p50 = 0, vlm_ms_p99 = 0;  // VLM call latency, frame capture to publish
  double reuse_mean = 0, reuse_max = 0;   // ticks per feature version
  int64_t hold_startup = 0, hold_sensor = 0, safe_stop = 0, expert_errors = 0;
  int64_t sensor_rejected = 0;   // samples with a repeated / backwards / non-finite stamp
  double first_features_s = -1;  // mean time to first features
  double success_rate() const { return episodes ? double(successes) / episodes : 0.0; }
};

// What apply_realtime() managed to set; `notes` says why a setting fell back.
struct RealtimeStatus {
  bool fifo = false, pinned = false, memory_locked = false, heap_kept = false;
  std::vector<std::string> notes;
  nlohmann::json to_json() const;
};

// Everything one episode (or a wall-time session) produced.
struct EpisodeResult {
  PlantOutcome outcome;
  bool safe_stopped = false;
  bool interrupted = false;
  std::string safe_stop_reason;
  std::vector<std::string> errors;  // VLM / expert exceptions (first few)
  int64_t sensor_rejected = 0;      // force/torque samples the ring refused (SensorRing::push)
  RealtimeStatus realtime;          // wall time: the loop's real-time settings as applied
  double period = 0.1;              // nominal loop period
  double duration = 0.0;
  double first_features_t = -1.0;
  std::vector<TickRecord> ticks;
  std::vector<VlmRecord> vlm;
  std::vector<std::vector<Action>> chunks;  // commanded chunk per tick (when record_chunks)
  std::vector<Image> frames;                // views tiled per VLM capture (when record_frames)
};

Summary summarize(const std::vector<EpisodeResult>& episodes);
nlohmann::json to_json(const Summary& s);
void print_summary(const Summary& s, const std::string& title);
// Timeline of the first `seconds` of an episode (src/plot chart, `width` x 360 px): each VLM call
// as a segment from frame capture to feature publish at the height of its latency (ms), the
// feature age each acting tick used (ms), hold and safe-stop ticks as markers at 0.
Image plot_timeline(const EpisodeResult& ep, double seconds = 5.0, int width = 1000);
// Histogram of the feature age at use (ms) of every acting tick of `eps` (40 bins).
Image plot_age_histogram(const std::vector<EpisodeResult>& eps, int width = 600, int height = 300);

// ---------------------------------------------------------------- runners
struct RuntimeConfig {
  double action_hz = 10.0;
  double vlm_hz = 0.0;            // 0: as fast as possible (at most one launch per action period)
  double vlm_latency_s = 0.0;     // sim time only: modelled VLM latency (0 = sync: fresh each tick)
  double max_staleness_s = 3.0;   // feature age beyond this -> safe stop
  double startup_timeout_s = 30;  // no features at all after this -> safe stop
  bool stop_on_safe_stop = true;  // end the episode at a safe stop (else keep holding)
  BlendMode blend = BlendMode::kReplace;
  double ensemble_m = 0.01;
  int rtc_prefix = 2;
  double sensor_timeout_s = 0.12;  // newest sample older than this -> dropout (renders for
                                   // the VLM pause the wall-time physics thread ~30-60 ms)
  double max_duration_s = 0.0;     // 0: until the plant reports done
  bool record_chunks = false;
  bool record_frames = false;
  int max_frames = 64;
  // wall time
  int vlm_threads = 1;     // torch intra-op threads on the VLM thread
  int expert_threads = 1;  // torch intra-op threads on the loop thread
  int vlm_nice = 5;        // niceness added to the VLM thread (lower priority than the loop)
  double spin_us = 200;    // busy-wait this long before each deadline for precise wake-up
  // Real-time settings of the action loop thread (wall time; docs/runtime.md). Each is tried and
  // reported in EpisodeResult::realtime; without permission the loop runs with normal scheduling.
  int loop_priority = 0;     // SCHED_FIFO priority 1..99 (0: normal scheduling)
  int loop_cpu = -1;         // pin the loop thread to this CPU (-1: no pinning)
  bool lock_memory = false;  // mlockall(MCL_CURRENT | MCL_FUTURE): no page faults in the loop
  // malloc keeps freed memory (mallopt: mmap threshold 32 MiB, glibc's maximum; no trimming) so the
  // VLM thread's allocations do not fault in fresh pages beside the loop; process-wide.
  bool keep_heap = true;
};

// Applies cfg's real-time settings to the calling thread (and mlockall to the process).
RealtimeStatus apply_realtime(const RuntimeConfig& cfg);

// Deterministic single-thread episode in sim time: physics steps of 1/650 s, loop ticks at
// action_hz, a VLM call launched at a tick delivers its features vlm_latency_s later (0 = same
// tick).
EpisodeResult run_sim_time(Plant& plant, const PolicyFns& policy, const RuntimeConfig& cfg);

// Real threads in wall time: physics thread (650 Hz, paced), VLM worker thread, action loop on the
// calling thread. Returns when the plant is done, max_duration_s passed, a safe stop ended it, or
// *stop became true (SIGINT).
EpisodeResult run_wall_time(Plant& plant, const PolicyFns& policy, const RuntimeConfig& cfg,
                            const std::atomic<bool>* stop = nullptr);

// Throws vla::Error unless `f` holds VL features that are all finite. A VLM call whose features
// fail this has failed: they are never published, so the expert keeps the older features and
// their growing age (and safe-stops past max staleness) instead of acting on NaN.
void check_features(const torch::Tensor& f);

// Limits OpenBLAS's own thread pool (no-op when the library does not export it).
void set_blas_threads(int n);

// ---------------------------------------------------------------- toy plant
// A small stand-in plant for tests and benchmarks without MuJoCo: a 3-D point tracking the
// commanded target with first-order dynamics, a "surface" at z=0 producing a contact force, noise.
// Success when the point reaches `goal` (within 2 mm) before time_limit.
class ToyPlant : public Plant {
 public:
  // can_finish=false: never reports done (for fixed-duration wall-time runs).
  explicit ToyPlant(uint64_t seed = 0, double time_limit = 5.0, bool can_finish = true);
  std::string instruction() override { return "reach the goal"; }
  std::vector<Image> render() override;
  void set_chunk(const std::vector<Action>& chunk) override;
  ForceSample step_physics() override;
  Action proprio() override { return pos_; }
  double time() override { return n_ / kSensorHz; }
  PlantOutcome outcome() override;
  Action goal() const { return goal_; }

 private:
  int64_t n_ = 0;
  Action pos_{}, target_{}, goal_{};
  std::vector<Action> chunk_;
  int64_t chunk_start_ = 0;
  double time_limit_;
  bool can_finish_;
  uint64_t rng_;
};
// A policy for ToyPlant: encode returns the goal as "features" (reading the plant, like a perfect
// VLM), act moves toward it with at most 0.25 mm per action.
PolicyFns toy_policy(ToyPlant& plant);

// ---------------------------------------------------------------- adapters
// A learned policy as PolicyFns (encode = the policy's VLM, act = its expert).
PolicyFns policy_fns(std::shared_ptr<vla::policy::Policy> policy);

}  // namespace vla::runtime
