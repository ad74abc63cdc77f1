// vla sim: MuJoCo needle-insertion environment (650 Hz physics, 6-axis F/T sensor, five
// OSMesa-rendered cameras), a force-using scripted demonstrator, and the episode recorder glue.
//
// Conventions (all SI units, world frame: x right, y away from the front camera, z up):
//  * One physics step = 1/650 s. Time() is simulation time in seconds since reset().
//  * Actions are Cartesian deltas of the stage (needle base) position target, metres per action,
//    80 actions per second; a chunk of 8 actions covers 100 ms = 65 physics steps. Within an
//    action the target moves linearly (interpolated at 650 Hz). Each component is clipped to
//    +-kMaxActionDelta and the target is clipped to the stage limits.
//  * set_chunk() replaces whatever is queued; the new chunk starts at the current sim time. When a
//    chunk runs out before a new one arrives, the env holds the last target.
//  * Force/torque: 6 values (fx fy fz tx ty tz) in the sensor frame, which is aligned with the
//    world axes; tared at reset (reads ~0 when the needle is free and at rest); fz > 0 when the
//    tissue pushes the needle up. Gaussian noise with EnvConfig::force_noise_std (N) is added to
//    the forces and force_noise_std * 0.05 (N m) to the torques. One sample per physics step,
//    stamped with the sim time at the end of that step.
//  * Images: vla::Image uint8 HxWx3, top row first, views in the order top, front, left, right,
//    needle (the first num_views of them).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/core.h"

namespace vla::sim {

constexpr double kPhysicsHz = kForceHz;       // one physics step per force sample = 1/650 s
using vla::kActionHz;                         // actions per second (core/core.h)
using vla::kChunkSize;                        // 8 actions = 100 ms = one control tick at 10 Hz
constexpr int kStepsPerChunk = kForceWindow;  // physics steps per chunk (100 ms)
constexpr int kForceDim = 6;                  // fx fy fz tx ty tz (sensor frame)
constexpr int kActionDim = 3;                 // dx dy dz target delta in metres per action
constexpr int kNumViews = 5;                  // top, front, left, right, needle
constexpr double kMaxActionDelta = 0.005;     // |component| per action (m) => 0.4 m/s max speed

using vla::Action;  // core/core.h (kActionDim components)
using Chunk = std::vector<Action>;

// Names of the views in render() order.
const std::vector<std::string>& view_names();

struct EnvConfig {
  int width = 128, height = 128;  // per-view image size
  int num_views = kNumViews;      // 1..5: the first num_views of top, front, left, right, needle
  double force_noise_std = 0.02;  // N (torque noise is 5 % of it in N m)
  double time_limit_s = 12.0;     // episode fails with "timeout" past this
  int num_ports = 3;              // 3..6 coloured ports
  bool render = true;             // false: no OSMesa context (render() throws)
  double force_limit = 8.0;       // N; |F| above it ends the episode with "excess_force"
  double success_depth = 0.008;   // m below the tissue surface, inside the named port
};

using vla::ForceSample;  // core/core.h: t = sim time (s) at the end of the physics step

// One executed action (recorded when it becomes active) and the stage position at that moment.
struct ActionRecord {
  double t;
  Action action;
  std::array<float, 3> proprio;
};

struct Outcome {
  bool done = false, success = false;
  std::string reason;       // "success", "wrong_port", "excess_force", "timeout", "" while running
  double time_s = 0.0;      // sim time when done (or now, while running)
  double peak_force = 0.0;  // max |F| (N, noise-free) so far in the episode
};

struct PortInfo {
  std::string color;           // English colour name ("red")
  std::string color_ko;        // Korean colour name ("빨간색")
  std::array<double, 3> pos;   // centre of the port opening on the tissue surface (m)
  std::array<uint8_t, 3> rgb;  // nominal colour
  double radius = 0.0;         // m
};

struct SceneInfo {
  std::vector<PortInfo> ports;
  int target = 0;                      // index into ports named by the instruction
  std::array<double, 3> needle_tip{};  // ground-truth tip position (m)
  double surface_z = 0.0;              // tissue surface height (m)
  double insertion_depth = 0.0;        // depth of the tip below the surface inside a port (m)
  int inserted_port = -1;              // port the tip is inside, -1 if none
};

// Instruction text for a port colour: phrasing 0..num_phrasings()-1; phrasings with index >=
// num_english_phrasings() are Korean.
int num_phrasings();
int num_english_phrasings();
std::string make_instruction(const PortInfo& port, int phrasing);

class NeedleEnv {
 public:
  explicit NeedleEnv(EnvConfig cfg = {});
  ~NeedleEnv();
  NeedleEnv(const NeedleEnv&) = delete;
  NeedleEnv& operator=(const NeedleEnv&) = delete;

  // New randomised episode (port colours/positions, tissue height and properties, target,
  // instruction phrasing, start pose), fully determined by seed.
  void reset(uint64_t seed);
  // Same, with the target forced to port `target_port` (the instruction names this port).
  void reset(uint64_t seed, int target_port);

  const std::string& instruction() const;
  // Queue up to kChunkSize actions (more are rejected); played at 80 Hz from now.
  void set_chunk(const Chunk& chunk);
  // ONE 650 Hz physics step; appends a ForceSample and updates the outcome. No-op once done.
  void step_physics();
  // set_chunk + kStepsPerChunk physics steps (stops early when the episode ends).
  void step_chunk(const Chunk& chunk);
  // The num_views views now. Throws when the env was made with render=false. Not thread-safe:
  // call from one thread at a time (the OSMesa context is made current on each call).
  std::vector<Image> render();

  const std::vector<ForceSample>& force_log() const;
  const std::vector<ActionRecord>& action_log() const;
  std::array<float, 3> proprio() const;  // measured stage / needle-base position (m)
  std::array<float, 3> target() const;   // current commanded stage position (m)
  double time() const;
  int64_t steps() const;  // physics steps since reset
  const Outcome& outcome() const;
  SceneInfo scene() const;
  const EnvConfig& config() const;
  uint64_t seed() const;

  // Camera geometry for tests/tools: world position, 3x3 rotation (row-major, columns are the
  // camera x, y, z axes in world; the camera looks along -z) and vertical field of view (deg).
  struct CameraPose {
    std::array<double, 3> pos;
    std::array<double, 9> mat;
    double fovy_deg;
  };
  CameraPose camera_pose(int view) const;
  // Projects a world point into pixel coordinates (u right, v down, top-left origin) of a view.
  // Returns false when the point is behind the camera.
  bool project(int view, const std::array<double, 3>& world, double* u, double* v) const;

  // The generated MJCF (for docs/debugging).
  const std::string& model_xml() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct ExpertConfig {
  double approach_height = 0.012;    // m above the highest possible surface before the slow descent
  double fast_speed = 0.12;          // m/s during the approach
  double search_speed = 0.012;       // m/s while descending to find contact
  double insert_speed = 0.006;       // m/s while inserting
  double contact_threshold = 0.25;   // N of fz (filtered) that counts as contact
  double target_depth = 0.011;       // m past the contact point (success needs success_depth)
  double backoff_force = 5.0;        // N: above this the expert retracts and slows down
  double realign_tolerance = 0.003;  // m of lateral error past the approach: back up, realign
};

// A scripted demonstrator: uses the (privileged) target port x/y for the approach; finds the
// surface by force (contact detection), controls depth relative to the contact point, and backs
// off when the force gets too high.
class ScriptedDemonstrator {
 public:
  explicit ScriptedDemonstrator(ExpertConfig cfg = {});
  // Forget the episode state; call after env.reset().
  void reset();
  // Next kChunkSize actions from proprio, the last 100 ms of force samples and the target port.
  Chunk act(const NeedleEnv& env);
  const std::string& phase() const;

 private:
  ExpertConfig cfg_;
  int phase_ = 0;
  double contact_z_ = 0.0;
  double slow_factor_ = 1.0;
  int backoff_ticks_ = 0;
  std::string phase_name_;
};

// A closed-loop policy: called once per 100 ms control tick, returns the next chunk.
using ChunkPolicy = std::function<Chunk(const NeedleEnv& env)>;

// Wraps a ScriptedDemonstrator as a Policy (reset automatically at the first tick of each episode).
ChunkPolicy demonstrator_policy(std::shared_ptr<ScriptedDemonstrator> expert);

struct RolloutResult {
  Outcome outcome;
  int64_t steps = 0;  // physics steps
  double wall_s = 0;  // wall time of the episode
};

// One recorded episode in the simulator's own types (closed_loop::to_episode_data turns it into
// the dataset format; the simulator does not depend on it).
struct Recording {
  std::string instruction;
  uint64_t seed = 0;
  int width = 0, height = 0;            // rendered resolution (pixels)
  std::vector<std::string> view_names;  // e.g. top front left right needle
  SceneInfo scene;                      // at the end of the episode (ports, target, surface)
  // Pixel (u right, v down; -1 when behind the camera) of each port centre in each view's first
  // frame: [port][view].
  std::vector<std::vector<std::array<double, 2>>> port_pixels;
  Outcome outcome;                            // reason "truncated" when max_ticks stopped it
  std::vector<std::vector<Image>> frames;     // [tick][view], rendered before the tick's chunk
  std::vector<ForceSample> force;             // every 650 Hz sample (N, N m)
  std::vector<Action> actions;                // 80 Hz: the labels (with a labeler) or as executed
  std::vector<std::array<float, 3>> proprio;  // stage position (m) when each action began
  std::string driver = "scripted";            // "scripted" | "dart" (noisy labeler) | "dagger"
  bool labelled = false;                      // actions are the labeler's, not the executed ones
  double action_noise_std = 0.0;              // m per action (DART)
  double force_noise_std = 0.0;               // N (EnvConfig)
};

// Runs one episode: reset(seed, target_port) (target_port < 0: random), then per 10 Hz tick
// [render when recording] -> policy -> step_chunk until done. When `record` is given, the env must
// render and the episode (frames at each tick before its chunk, forces, actions, proprio, scene)
// is stored there.
//
// Corrective data (`opts`): with opts.labeler the recorded actions are the labeler's chunk at
// each tick's state (e.g. the scripted demonstrator) while `policy` drives the robot (DAgger: a
// learned policy; a null policy executes the labeler's own chunk). opts.action_noise_std > 0 adds
// Gaussian noise (m per action; z gets half) to the executed actions only (DART, Laskey et al.
// 2017), so the recorded labels stay the clean actions.
struct RolloutOptions {
  ChunkPolicy labeler;            // empty: the executed actions are recorded
  double action_noise_std = 0.0;  // m per 80 Hz action, x/y (z: half)
  uint64_t noise_seed = 0;        // noise RNG seed (mixed with the episode seed)
  int max_ticks = 0;              // > 0: stop after this many ticks (reason "truncated")
};
RolloutResult run_episode(NeedleEnv& env, const ChunkPolicy& policy, uint64_t seed,
                          int target_port = -1, Recording* record = nullptr,
                          const RolloutOptions& opts = {});

}  // namespace vla::sim
