// Embedding a dualrate policy in a C++ robot stack (a ROS 2 node, a controller) without a socket:
// vla::serve::ServingRuntime (src/serve/serve.h) is the same dual-rate runtime `vla serve` puts
// behind its websocket. The caller's control loop hands it camera frames (whenever new ones come;
// the VLM encodes them on its own thread, newest wins), the force/torque samples since the last
// call and the proprio, and gets an 8-action chunk back within a few milliseconds.
//
// Usage: embed_policy [POLICY] [SECONDS]     (default: the shipped policy, 2 s)
// Here the robot is synthetic: grey frames, a quiet force sensor, a fixed tip position; a real
// node would fill InferRequest from its camera and F/T driver callbacks and send the chunk to its
// Cartesian controller. Exits 1 unless the expert acted.
#include <cstdio>
#include <map>
#include <thread>

#include "serve/serve.h"

int main(int argc, char** argv) try {
  const std::string policy_name = argc > 1 ? argv[1] : "default";
  const double seconds = argc > 2 ? std::stod(argv[2]) : 2.0;
  auto policy = vla::policy::Policy::load(policy_name);
  vla::serve::ServeOptions opt;
  opt.deadline_ms = 20;  // the control loop never waits longer than this for the expert
  vla::serve::ServingRuntime runtime(policy, opt);
  const nlohmann::json md = runtime.metadata();
  std::printf("policy %s: views %s, %dx%d, horizon %d\n", policy_name.c_str(),
              md["views"].dump().c_str(), md["image_width"].get<int>(),
              md["image_height"].get<int>(), md["horizon"].get<int>());

  const double loop_hz = 100, force_hz = md["force_hz"].get<double>();
  const int frames_every = 10;  // cameras at 10 Hz
  std::map<std::string, int> statuses;
  double robot_t = 0;  // the robot's own clock (s): stamps of its F/T samples
  auto next = std::chrono::steady_clock::now();
  for (int tick = 0; tick < static_cast<int>(seconds * loop_hz); ++tick) {
    vla::serve::InferRequest req;
    if (tick % frames_every == 0) {
      for (const auto& v : md["views"])
        req.images[v.get<std::string>()] =
            vla::make_image(md["image_width"].get<int>(), md["image_height"].get<int>(), 3, 90);
      req.prompt = "insert the needle into the red port";
    }
    // The F/T samples since the previous tick (650 Hz / 100 Hz = 6-7 of them).
    const double until = (tick + 1) / loop_hz;
    while (robot_t + 1.0 / force_hz <= until + 1e-12) {
      robot_t += 1.0 / force_hz;
      req.force.push_back({0.0f, 0.0f, 0.05f, 0.0f, 0.0f, 0.0f});
      req.force_t.push_back(robot_t);
    }
    req.state = {0.0f, 0.0f, 0.03f};
    const vla::serve::InferReply r = runtime.infer(req);
    ++statuses[r.status];
    // r.actions: horizon x 3 target deltas (m per 80 Hz step) -> the Cartesian controller.
    next += std::chrono::microseconds(static_cast<int64_t>(1e6 / loop_hz));
    std::this_thread::sleep_until(next);
  }
  std::printf("%.1f s at %.0f Hz:", seconds, loop_hz);
  for (const auto& [s, n] : statuses) std::printf(" %s %d", s.c_str(), n);
  std::printf("\n%s", runtime.prometheus_metrics().c_str());
  return statuses.count("act") ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 2;
}
