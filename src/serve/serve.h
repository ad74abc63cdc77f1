// vla serve: a policy server for real robots, speaking openpi's websocket + msgpack protocol
// (openpi/packages/openpi-client: websocket_client_policy.py, msgpack_numpy.py), with the
// dual-rate runtime behind it: frames go to a VLM thread (newest wins), force/torque samples into
// the 650 Hz ring, and every request runs the action expert on the newest VL features and the
// freshest 100 ms force window.
//
// Protocol (docs/serving.md):
//   * On connect the server sends one binary msgpack map: the metadata (policy, views, image size,
//     horizon, action dimension and units, rates, limits).
//   * Each request is one binary msgpack map. Arrays follow the openpi msgpack-numpy convention: a
//     map {"__ndarray__": true, "data": bytes, "dtype": "<f4" | "|u1" | "<f8", "shape": [..]};
//     keys may be msgpack str or bin. Fields: "images" (map view name -> uint8 H x W x 3),
//     "prompt" (str), "state" (float32 [3] proprio: needle tip x y z, m), "force" (float32 [N, 6]
//     Fx Fy Fz Tx Ty Tz, N and N m: the samples since the previous request), "force_t" (float64
//     [N], seconds on the robot's clock, increasing), "request_id" (int, echoed), optionally
//     "deadline_ms" (number).
//   * The reply is one binary msgpack map: "actions" (float32 [H, 3] target deltas, m per 80 Hz
//     step, clipped), "request_id", "obs_time" (the newest force stamp, robot clock), "status"
//     ("act" | "hold_startup" | "hold_sensor" | "safe_stop" | "fallback" | "expert_error"),
//     "feature_version", "feature_age_s"
//     (server clock: now - when the frames those features came from arrived), "stale_frames",
//     "stale_force", "server_timing" (ms per phase). A request that cannot be decoded gets
//     {"error": "..."} and the connection stays open.
//   * HTTP on the same port: GET /healthz -> 200, GET /metrics -> Prometheus text format.
// Nothing is computed across the two hosts' clocks: ages use the server's clock only, the robot's
// stamps only cut force windows.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/core.h"
#include "policy/policy.h"

namespace vla::serve {

struct ServeOptions {
  std::string host = "0.0.0.0";
  int port = 8000;                            // 0: any free port (PolicyServer::port() says which)
  std::string api_key;                        // non-empty: clients send header `x-api-key: KEY`
  size_t max_message_bytes = 64u << 20;       // one request (the websocket frame), bytes
  int max_array_elements = 16 * 1024 * 1024;  // per decoded array
  double max_staleness_s = 3.0;               // VL features older than this: safe stop (hold)
  double stale_input_s = 0.5;                 // no frames / force samples for this long: flagged
  double force_stop_s = 2.0;                  // no force samples for this long: safe stop
  double max_action_m = 0.002;                // each action component clipped to +-this (m)
  int vlm_threads = 1;                        // torch threads of the VLM thread
  // > 0: a request whose expert call is not done this many ms after it arrived is answered with
  // the rest of the last good chunk (status "fallback"); the late chunk becomes the next last good
  // one. A request may set its own "deadline_ms".
  double deadline_ms = 0.0;
};

// One decoded request (decode_request).
struct InferRequest {
  std::map<std::string, Image> images;  // view name -> RGB image
  std::string prompt;
  std::vector<float> state;  // proprio
  std::vector<std::array<float, 6>> force;
  std::vector<double> force_t;  // robot clock (s), one per force row
  int64_t request_id = -1;
  bool has_request_id = false;
  double deadline_ms = -1.0;  // optional "deadline_ms" (< 0: the server's --deadline-ms)
  // Optional "reset": a new episode starts with this request's frames (scene-memory policies
  // take their first features from them; a changed prompt does the same) and force samples (the
  // ring starts over, so the robot's clock may restart); the previous features are dropped, so
  // replies say hold_startup until this episode's frames are encoded.
  bool reset = false;
  // Optional "stream": true starts streaming on this connection (the server pushes a reply every
  // 1/"stream_hz" s on its own clock, default the control rate; the client's messages are then
  // observations, answered only on error); false stops it (this request gets a normal reply).
  int stream = -1;  // -1: absent, 0: false, 1: true
  double stream_hz = 0;
};

// Decodes one msgpack request (openpi msgpack-numpy arrays). Throws vla::Error naming the field
// on anything malformed: not a map, unknown dtype, shape/data mismatch, arrays over the limit,
// invalid UTF-8 in the prompt, force and force_t of different lengths.
InferRequest decode_request(const void* data, size_t size, const ServeOptions& limits);

struct InferReply {
  std::vector<std::array<float, 3>> actions;  // [H, 3]
  int64_t request_id = -1;
  bool has_request_id = false;
  double obs_time = 0.0;
  std::string status;
  int64_t feature_version = -1;
  double feature_age_s = -1.0;
  bool stale_frames = false, stale_force = false;
  std::map<std::string, double> timing_ms;
  int64_t stream_seq = -1;  // streamed replies: 0, 1, 2, ... (not sent when < 0)
};
std::string encode_reply(const InferReply& r);         // msgpack bytes
std::string encode_error(const std::string& message);  // {"error": message}
// The client side (PolicyClient): a request as msgpack (fields present only when set), and a
// reply decoded back. decode_reply throws vla::Error with the server's message for an error map,
// or naming what is malformed.
std::string encode_request(const InferRequest& r);
InferReply decode_reply(const void* data, size_t size);

// The dual-rate runtime behind the server: VLM thread + force ring + expert per request. Thread
// safe: any number of connections may call it.
class ServingRuntime {
 public:
  ServingRuntime(std::shared_ptr<policy::Policy> policy, ServeOptions opt);
  ~ServingRuntime();
  ServingRuntime(const ServingRuntime&) = delete;
  ServingRuntime& operator=(const ServingRuntime&) = delete;

  // Frames and force from one request, then the expert on the newest features. Throws vla::Error
  // on inputs that do not fit the policy (missing view, wrong image size, wrong state length).
  InferReply infer(const InferRequest& req);
  // Frames and force of one request only, no expert call (streaming observations). Same checks
  // and errors as infer().
  void observe(const InferRequest& req);
  nlohmann::json metadata() const;
  std::string prometheus_metrics() const;  // text exposition format 0.0.4
  void note_error();                       // a request answered with an error
  void note_connection(int delta);         // +1 on open, -1 on close

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The websocket + HTTP server (Boost.Beast; a thread per connection).
class PolicyServer {
 public:
  PolicyServer(std::shared_ptr<policy::Policy> policy, ServeOptions opt);
  ~PolicyServer();
  // Binds (throws vla::Error if it cannot) and serves until *stop becomes true.
  void run(const std::atomic<bool>& stop);
  // Binds now; run() then serves on this socket. Returns the bound port.
  int bind();
  int port() const { return port_; }
  ServingRuntime& runtime() { return *runtime_; }

 private:
  struct Net;
  ServeOptions opt_;
  std::unique_ptr<ServingRuntime> runtime_;
  std::unique_ptr<Net> net_;
  int port_ = 0;
};

// A C++ client of the protocol above (Boost.Beast websocket, synchronous): what `vla client`, the
// load test and the protocol tests use. Not thread-safe: one client per thread.
class PolicyClient {
 public:
  // Connects to ws://host:port/ and reads the metadata. Throws vla::Error when the server cannot
  // be reached, refuses the upgrade (wrong api key) or does not answer within timeout_s.
  PolicyClient(const std::string& host, int port, const std::string& api_key = "",
               double timeout_s = 30.0);
  ~PolicyClient();
  PolicyClient(const PolicyClient&) = delete;
  PolicyClient& operator=(const PolicyClient&) = delete;
  const nlohmann::json& metadata() const;
  // One request, one reply (throws vla::Error on an error reply, a closed connection or timeout).
  InferReply infer(const InferRequest& req);
  // Streaming: send an observation without waiting; receive the next pushed reply.
  void send(const InferRequest& req);
  InferReply receive();
  double last_round_trip_ms() const;  // of the last infer(), client clock

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// GET `target` over HTTP on host:port; returns the status code and the body in *body.
int http_get(const std::string& host, int port, const std::string& target,
             std::string* body = nullptr);

// Closed-loop episodes of the needle simulator driven through a server (`vla client`): each
// 10 Hz tick renders the views the server's policy reads (names and size from the metadata),
// sends them with the instruction, the proprio and the force samples since the last tick (their
// sim-time stamps), and executes the returned chunk. The simulator waits for each reply (sim
// time), and with wait_for_features a tick whose reply used features older than its frames asks
// again (no new frames) until the VLM thread has encoded them: the remote equivalent of the
// in-process synchronous loop (`vla eval closed-loop --mode sync`).
struct RemoteEpisodesOptions {
  int episodes = 10;
  uint64_t seed = 1000;     // episode i uses seed + i
  double time_limit_s = 0;  // 0: the simulator's default
  bool wait_for_features = true;
  bool progress = true;
};
struct RemoteEpisodesReport {
  int episodes = 0, successes = 0;
  std::map<std::string, int> outcomes;  // reason -> count
  std::map<std::string, int> statuses;  // reply status -> count
  std::vector<double> round_trip_ms;    // per request, client clock
  nlohmann::json to_json() const;
};
RemoteEpisodesReport drive_simulator(PolicyClient& client, const RemoteEpisodesOptions& opt);

}  // namespace vla::serve
