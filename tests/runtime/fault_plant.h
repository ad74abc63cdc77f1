// Test helper shared by tests/runtime and tests/closed_loop: a Plant wrapper that injects faults.
#pragma once

#include "runtime/runtime.h"

namespace vla::runtime::testing {

// Wraps a plant and injects one fault in plant time [t0, t1):
//   kNaN   the force reading becomes NaN;
//   kStuck the sensor stops updating (its last sample, same stamp, is delivered again: dropped);
//   kLate  samples arrive `lag` s late (stamped lag earlier than the plant's clock);
//   kThrow the plant throws (a driver / simulator fault).
enum class Fault { kNaN, kStuck, kLate, kThrow };
class FaultyPlant : public Plant {
 public:
  FaultyPlant(Plant& inner, Fault fault, double t0, double t1, double lag = 0.0)
      : in_(inner), fault_(fault), t0_(t0), t1_(t1), lag_(lag) {}
  std::string instruction() override { return in_.instruction(); }
  std::vector<vla::Image> render() override { return in_.render(); }
  void set_chunk(const std::vector<Action>& c) override { in_.set_chunk(c); }
  ForceSample step_physics() override {
    ForceSample s = in_.step_physics();
    const bool on = s.t >= t0_ && s.t < t1_;
    if (on && fault_ == Fault::kThrow) throw vla::Error("force/torque driver: bus error");
    if (on && fault_ == Fault::kNaN) s.f[2] = std::numeric_limits<float>::quiet_NaN();
    if (on && fault_ == Fault::kStuck && have_last_) return last_;
    if (on && fault_ == Fault::kLate) s.t -= lag_;
    last_ = s;
    have_last_ = true;
    return s;
  }
  Action proprio() override { return in_.proprio(); }
  double time() override { return in_.time(); }
  PlantOutcome outcome() override { return in_.outcome(); }

 private:
  Plant& in_;
  Fault fault_;
  double t0_, t1_, lag_;
  ForceSample last_;
  bool have_last_ = false;
};

int count_status(const EpisodeResult& ep, TickStatus s) {
  int n = 0;
  for (const auto& t : ep.ticks) n += t.status == s;
  return n;
}

}  // namespace vla::runtime::testing
