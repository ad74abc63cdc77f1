// ScriptedDemonstrator: approach above the target port, find the surface by force, puncture, insert
// to a depth measured from the contact point, back off on excess force.
#include <algorithm>
#include <cmath>

#include "sim/sim.h"

namespace vla::sim {
namespace {
enum Phase { kApproach = 0, kSearch = 1, kInsert = 2, kHold = 3 };
const char* kPhaseNames[] = {"approach", "search", "insert", "hold"};
constexpr double kNeedleLen = 0.05;
constexpr double kHoverZ = 0.045 + kNeedleLen + 0.0;  // highest surface + needle length
}  // namespace

ScriptedDemonstrator::ScriptedDemonstrator(ExpertConfig cfg) : cfg_(cfg) { reset(); }

void ScriptedDemonstrator::reset() {
  phase_ = kApproach;
  contact_z_ = 0.0;
  slow_factor_ = 1.0;
  backoff_ticks_ = 0;
  phase_name_ = kPhaseNames[phase_];
}

const std::string& ScriptedDemonstrator::phase() const { return phase_name_; }

Chunk ScriptedDemonstrator::act(const NeedleEnv& env) {
  const SceneInfo scene = env.scene();
  const PortInfo& port = scene.ports.at(scene.target);
  const auto cmd = env.target();
  const auto prop = env.proprio();
  // Force features from the last 100 ms window (what the learned policy also sees).
  const auto& log = env.force_log();
  const size_t n = log.size();
  const size_t w0 = n > static_cast<size_t>(kStepsPerChunk) ? n - kStepsPerChunk : 0;
  const size_t r0 = n > 13 ? n - 13 : 0;
  double fz_recent = 0.0, fmax = 0.0;
  for (size_t i = r0; i < n; ++i) fz_recent += log[i].f[2];
  if (n > r0) fz_recent /= static_cast<double>(n - r0);
  for (size_t i = w0; i < n; ++i) {
    const auto& f = log[i].f;
    fmax =
        std::max(fmax, std::sqrt(double(f[0]) * f[0] + double(f[1]) * f[1] + double(f[2]) * f[2]));
  }
  // Lateral error of the measured needle base from the port axis. Off-nominal states (DART noise,
  // a learned policy's rollout in DAgger) get a label that re-centres before going deeper.
  const double xy_err = std::hypot(port.pos[0] - prop[0], port.pos[1] - prop[1]);

  const double hover_z = kHoverZ + cfg_.approach_height;
  double goal_z = cmd[2];
  double z_speed = cfg_.fast_speed;
  if (phase_ != kApproach && xy_err > cfg_.realign_tolerance) {
    // Off the port axis in contact or on the way down: back up to the hover height and realign.
    phase_ = kApproach;
    slow_factor_ = 1.0;
    backoff_ticks_ = 0;
  }
  if (phase_ == kApproach) {
    goal_z = hover_z;
    const double dist = std::sqrt(std::pow(port.pos[0] - cmd[0], 2) +
                                  std::pow(port.pos[1] - cmd[1], 2) + std::pow(goal_z - cmd[2], 2));
    const double pdist =
        std::sqrt(std::pow(port.pos[0] - prop[0], 2) + std::pow(port.pos[1] - prop[1], 2) +
                  std::pow(goal_z - prop[2], 2));
    // Below the hover height (a realignment) only the lateral error has to be closed.
    const bool low = cmd[2] < hover_z && xy_err < 0.0008;
    if ((dist < 1e-4 && pdist < 0.0008) || low) phase_ = kSearch;
  }
  if (phase_ == kSearch) {
    if (fz_recent > cfg_.contact_threshold) {
      contact_z_ = prop[2];
      phase_ = kInsert;
    } else {
      goal_z = cmd[2] - 1.0;  // keep descending
      z_speed = cfg_.search_speed;
    }
  }
  if (phase_ == kInsert || phase_ == kHold) {
    if (fmax > cfg_.backoff_force) {
      backoff_ticks_ = 1;
      slow_factor_ = std::max(0.125, slow_factor_ * 0.5);
    }
    if (backoff_ticks_ > 0) {
      --backoff_ticks_;
      goal_z = cmd[2] + 0.001;  // retract 1 mm this tick
      z_speed = 0.01;
      phase_ = kInsert;
    } else {
      goal_z = contact_z_ - cfg_.target_depth;
      z_speed = cfg_.insert_speed * slow_factor_;
      if (std::fabs(cmd[2] - goal_z) < 1e-5) phase_ = kHold;
    }
  }
  phase_name_ = kPhaseNames[phase_];

  // The commanded target moves towards the port axis (up to fast_speed) and, independently,
  // towards goal_z at the phase's speed; in the approach both form one straight line.
  Chunk chunk(kChunkSize, Action{0.f, 0.f, 0.f});
  std::array<double, 3> c = {cmd[0], cmd[1], cmd[2]};
  const std::array<double, 3> goal = {port.pos[0], port.pos[1], goal_z};
  for (int i = 0; i < kChunkSize; ++i) {
    double d[3] = {goal[0] - c[0], goal[1] - c[1], goal[2] - c[2]};
    double s_xy = 1.0, s_z = 1.0;
    if (phase_ == kApproach) {
      const double len = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
      const double step = cfg_.fast_speed / kActionHz;
      s_xy = s_z = len > step ? step / len : 1.0;
    } else {
      const double lxy = std::hypot(d[0], d[1]);
      const double sxy = cfg_.fast_speed / kActionHz, sz = z_speed / kActionHz;
      s_xy = lxy > sxy ? sxy / lxy : 1.0;
      s_z = std::fabs(d[2]) > sz ? sz / std::fabs(d[2]) : 1.0;
      // Do not go deeper while more than half a millimetre off the axis.
      if (xy_err > 0.0005 && d[2] < 0 && phase_ == kSearch) s_z *= 0.5;
    }
    const double scale[3] = {s_xy, s_xy, s_z};
    for (int k = 0; k < 3; ++k) {
      double delta = std::clamp(d[k] * scale[k], -kMaxActionDelta, kMaxActionDelta);
      chunk[i][k] = static_cast<float>(delta);
      c[k] += static_cast<float>(delta);
    }
  }
  return chunk;
}

}  // namespace vla::sim
