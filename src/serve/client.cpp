// The C++ side of the protocol: PolicyClient (Boost.Beast websocket, synchronous, with a socket
// receive timeout), http_get, and drive_simulator (`vla client`: the needle simulator through a
// server).
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <thread>

#include "serve/serve.h"
#include "sim/sim.h"

namespace vla::serve {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

// Blocking reads give up after `seconds` (a server that stopped answering).
void set_receive_timeout(tcp::socket& s, double seconds) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(seconds);
  tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

void connect(tcp::socket& s, net::io_context& ioc, const std::string& host, int port) {
  beast::error_code ec;
  tcp::resolver res{ioc};
  const auto eps = res.resolve(host, std::to_string(port), ec);
  if (!ec) net::connect(s, eps, ec);
  VLA_CHECK(!ec, "client: cannot connect to ", host, ":", port, " (", ec.message(), ")");
}

}  // namespace

struct PolicyClient::Impl {
  net::io_context ioc;
  websocket::stream<tcp::socket> ws{ioc};
  nlohmann::json metadata;
  double rtt_ms = 0;

  std::string read() {
    beast::flat_buffer b;
    beast::error_code ec;
    ws.read(b, ec);
    VLA_CHECK(!ec, "client: connection lost or no reply in time (", ec.message(), ")");
    return beast::buffers_to_string(b.data());
  }
  void write(const InferRequest& req) {
    const std::string bytes = encode_request(req);
    beast::error_code ec;
    ws.binary(true);
    ws.write(net::buffer(bytes), ec);
    VLA_CHECK(!ec, "client: send failed (", ec.message(), ")");
  }
};

PolicyClient::PolicyClient(const std::string& host, int port, const std::string& api_key,
                           double timeout_s)
    : impl_(std::make_unique<Impl>()) {
  VLA_CHECK(timeout_s > 0, "client: timeout must be > 0");
  Impl& m = *impl_;
  connect(m.ws.next_layer(), m.ioc, host, port);
  set_receive_timeout(m.ws.next_layer(), timeout_s);
  if (!api_key.empty())
    m.ws.set_option(websocket::stream_base::decorator(
        [api_key](websocket::request_type& req) { req.set("x-api-key", api_key); }));
  beast::error_code ec;
  m.ws.handshake(host, "/", ec);
  VLA_CHECK(!ec, "client: websocket handshake with ", host, ":", port, " failed (", ec.message(),
            "; a wrong or missing --api-key is refused here)");
  m.ws.read_message_max(64u << 20);
  const std::string md = m.read();
  try {
    m.metadata = nlohmann::json::from_msgpack(md);
  } catch (const std::exception& e) {
    throw Error(str_cat("client: the server's metadata is not msgpack (", e.what(), ")"));
  }
  VLA_CHECK(
      m.metadata.is_object() && m.metadata.contains("views") && m.metadata.contains("horizon"),
      "client: the server's metadata lacks views / horizon");
}

PolicyClient::~PolicyClient() {
  beast::error_code ec;
  if (impl_->ws.is_open()) impl_->ws.close(websocket::close_code::normal, ec);
}

const nlohmann::json& PolicyClient::metadata() const { return impl_->metadata; }

InferReply PolicyClient::infer(const InferRequest& req) {
  const int64_t t0 = now_ns();
  impl_->write(req);
  const std::string bytes = impl_->read();
  impl_->rtt_ms = (now_ns() - t0) * 1e-6;
  return decode_reply(bytes.data(), bytes.size());
}

void PolicyClient::send(const InferRequest& req) { impl_->write(req); }

InferReply PolicyClient::receive() {
  const std::string bytes = impl_->read();
  return decode_reply(bytes.data(), bytes.size());
}

double PolicyClient::last_round_trip_ms() const { return impl_->rtt_ms; }

int http_get(const std::string& host, int port, const std::string& target, std::string* body) {
  net::io_context ioc;
  tcp::socket s{ioc};
  connect(s, ioc, host, port);
  set_receive_timeout(s, 10.0);
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, host);
  beast::error_code ec;
  http::write(s, req, ec);
  beast::flat_buffer b;
  http::response<http::string_body> resp;
  if (!ec) http::read(s, b, resp, ec);
  VLA_CHECK(!ec, "client: GET ", target, " failed (", ec.message(), ")");
  if (body) *body = resp.body();
  return static_cast<int>(resp.result_int());
}

nlohmann::json RemoteEpisodesReport::to_json() const {
  return {{"episodes", episodes},
          {"successes", successes},
          {"success_rate", episodes ? double(successes) / episodes : 0.0},
          {"outcomes", outcomes},
          {"statuses", statuses},
          {"requests", round_trip_ms.size()},
          {"round_trip_p50_ms", percentile(round_trip_ms, 50)},
          {"round_trip_p99_ms", percentile(round_trip_ms, 99)}};
}

RemoteEpisodesReport drive_simulator(PolicyClient& client, const RemoteEpisodesOptions& opt) {
  VLA_CHECK(opt.episodes > 0, "client: --episodes must be > 0");
  const nlohmann::json& md = client.metadata();
  // The views the server reads, by name; the simulator renders up to the last of them.
  const auto& names = sim::view_names();
  std::vector<std::pair<std::string, int>> views;
  int num_views = 0;
  for (const auto& v : md["views"]) {
    const std::string name = v.get<std::string>();
    const auto it = std::find(names.begin(), names.end(), name);
    VLA_CHECK(it != names.end(), "client: the server reads view '", name,
              "', which the simulator does not have");
    views.push_back({name, static_cast<int>(it - names.begin())});
    num_views = std::max(num_views, views.back().second + 1);
  }
  sim::EnvConfig cfg;
  cfg.num_views = num_views;
  cfg.width = md["image_width"].get<int>();
  cfg.height = md["image_height"].get<int>();
  if (opt.time_limit_s > 0) cfg.time_limit_s = opt.time_limit_s;
  sim::NeedleEnv env(cfg);
  RemoteEpisodesReport rep;
  std::unique_ptr<ProgressBar> bar;
  if (opt.progress) bar = std::make_unique<ProgressBar>("episodes via server", opt.episodes);
  int64_t request_id = 0, used_version = -1;  // feature versions grow across episodes
  for (int e = 0; e < opt.episodes; ++e) {
    env.reset(opt.seed + static_cast<uint64_t>(e));
    size_t sent_force = 0;
    bool first = true;
    while (!env.outcome().done) {
      const std::vector<Image> frames = env.render();
      InferRequest req;
      for (const auto& [name, index] : views) req.images[name] = frames[static_cast<size_t>(index)];
      req.prompt = env.instruction();
      req.reset = first;  // a new episode: scene-memory policies start over
      first = false;
      const auto p = env.proprio();
      req.state = {p[0], p[1], p[2]};
      const auto& log = env.force_log();
      for (; sent_force < log.size(); ++sent_force) {
        req.force.push_back(log[sent_force].f);
        req.force_t.push_back(log[sent_force].t);
      }
      req.request_id = request_id++;
      req.has_request_id = true;
      InferReply r = client.infer(req);
      rep.round_trip_ms.push_back(client.last_round_trip_ms());
      // Synchronous equivalent: features from this tick's frames (ask again, without new frames
      // or force, until the VLM thread has published a version newer than the last one used).
      auto waiting = [&](const InferReply& x) {
        return x.status == "hold_startup" ||
               (opt.wait_for_features && x.feature_version <= used_version);
      };
      InferRequest again;
      again.state = req.state;
      again.has_request_id = true;
      for (int k = 0; k < 10000 && waiting(r); ++k) {  // at most ~20 s per tick
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        again.request_id = request_id++;
        r = client.infer(again);
        rep.round_trip_ms.push_back(client.last_round_trip_ms());
      }
      VLA_CHECK(!waiting(r), "client: the server published no features for 20 s");
      used_version = r.feature_version;
      ++rep.statuses[r.status];
      sim::Chunk chunk;
      for (const auto& a : r.actions) chunk.push_back(a);
      env.step_chunk(chunk);
    }
    ++rep.episodes;
    rep.successes += env.outcome().success ? 1 : 0;
    ++rep.outcomes[env.outcome().reason];
    if (bar) bar->tick(1, str_cat("success ", rep.successes, "/", rep.episodes));
  }
  if (bar) bar->finish();
  return rep;
}

}  // namespace vla::serve
