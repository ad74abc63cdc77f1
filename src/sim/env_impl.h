// Private: NeedleEnv internals shared by env.cpp and render.cpp.
#pragma once

#include <mujoco/mujoco.h>

#include <random>

#include "sim/sim.h"

namespace vla::sim {

// Offscreen OSMesa + MuJoCo renderer (render.cpp).
class Renderer {
 public:
  Renderer(const mjModel* m, int width, int height);
  ~Renderer();
  Renderer(const Renderer&) = delete;
  Renderer& operator=(const Renderer&) = delete;
  Image render(const mjModel* m, mjData* d, int camera_id);

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// Per-episode tissue parameters (randomised at reset).
struct TissueParams {
  double surface_z = 0.04;
  double puncture_force = 1.0;     // N needed to pierce the port membrane
  double puncture_depth = 0.0015;  // m of membrane deflection at puncture
  double friction_k = 40.0;        // N/m axial stiffness of the channel after puncture
  double friction_f0 = 0.2;        // N Coulomb-like axial friction
  double damping = 4.0;            // N s/m axial viscous
  double lateral_k = 800.0;        // N/m channel wall stiffness
  double lateral_c = 4.0;          // N s/m
  double port_depth = 0.02;        // m; a stiff floor below
  double floor_k = 20000.0;        // N/m
};

struct NeedleEnv::Impl {
  EnvConfig cfg;
  std::string xml;
  mjModel* m = nullptr;
  mjData* d = nullptr;
  std::unique_ptr<Renderer> renderer;

  // ids
  int stage_body = -1, needle_body = -1, shaft_geom = -1, shaft_vis_geom = -1, tissue_geom = -1;
  std::vector<int> port_geoms, port_ring_geoms, cam_ids;
  int force_adr = 0, torque_adr = 0;
  double needle_len = 0.05;

  // episode
  uint64_t seed = 0;
  std::mt19937_64 noise_rng;
  std::normal_distribution<double> normal{0.0, 1.0};
  std::vector<PortInfo> ports;
  int target = 0;
  std::string instruction;
  TissueParams tissue;
  std::array<double, 6> bias{};
  std::array<double, 3> cmd{};  // commanded stage target now
  std::array<double, 3> chunk_base{};
  Chunk chunk;
  int64_t chunk_start_step = 0;
  int last_recorded_action = -1;
  int64_t steps = 0;
  int latched = -1;
  bool punctured = false;
  std::vector<ForceSample> force_log;
  std::vector<ActionRecord> action_log;
  Outcome outcome;

  void build_model();
  void update_target();
  void apply_tissue_forces();
  void update_outcome(double force_mag);
  std::array<double, 3> tip() const;
};

}  // namespace vla::sim
