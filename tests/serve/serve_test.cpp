// `vla serve`: request decoding (openpi msgpack-numpy, hostile input) and the server through real
// sockets (Boost.Beast client): metadata, replies, errors that keep the connection, HTTP health
// and metrics, API key, several clients at once, streaming, hostile clients; the C++ client
// (PolicyClient) and the simulator driven through the server.
#include "serve/serve.h"

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <cstring>
#include <msgpack.hpp>
#include <random>
#include <set>
#include <thread>

#include "closed_loop/closed_loop.h"

using namespace vla;
using namespace vla::serve;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;

void str(Packer& pk, const std::string& s) {
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}
void bin(Packer& pk, const std::string& s) {  // openpi packs the array keys as bytes
  pk.pack_bin(static_cast<uint32_t>(s.size()));
  pk.pack_bin_body(s.data(), static_cast<uint32_t>(s.size()));
}
void ndarray(Packer& pk, const void* data, size_t bytes, const std::string& dtype,
             const std::vector<int64_t>& shape) {
  pk.pack_map(4);
  bin(pk, "__ndarray__");
  pk.pack_true();
  bin(pk, "data");
  pk.pack_bin(static_cast<uint32_t>(bytes));
  pk.pack_bin_body(static_cast<const char*>(data), static_cast<uint32_t>(bytes));
  bin(pk, "dtype");
  str(pk, dtype);
  bin(pk, "shape");
  pk.pack_array(static_cast<uint32_t>(shape.size()));
  for (auto d : shape) pk.pack_int64(d);
}

struct Obs {
  std::map<std::string, std::pair<int, int>> views;  // name -> (w, h)
  std::string prompt = "insert the needle into the red port";
  int n_force = 65;
  double t0 = 0.0;  // first force stamp is t0 + 1/650
  int64_t request_id = 7;
  std::string force_dtype = "<f4";
  double deadline_ms = -1;  // < 0: not sent
  int stream = -1;          // < 0: not sent; 0 / 1: "stream": false / true
  double stream_hz = 0;     // > 0: sent with stream
  bool with_images = true;
};

std::string request(const Obs& o) {
  msgpack::sbuffer buf;
  Packer pk(&buf);
  pk.pack_map(5 + (o.deadline_ms >= 0) + (o.stream >= 0) + (o.stream >= 0 && o.stream_hz > 0) +
              o.with_images);
  if (o.deadline_ms >= 0) {
    str(pk, "deadline_ms");
    pk.pack_double(o.deadline_ms);
  }
  if (o.stream >= 0) {
    str(pk, "stream");
    pk.pack(o.stream == 1);
  }
  if (o.stream >= 0 && o.stream_hz > 0) {
    str(pk, "stream_hz");
    pk.pack_double(o.stream_hz);
  }
  if (o.with_images) str(pk, "images");
  if (o.with_images) pk.pack_map(static_cast<uint32_t>(o.views.size()));
  for (const auto& [name, wh] : o.with_images ? o.views : decltype(o.views){}) {
    std::vector<uint8_t> px(static_cast<size_t>(wh.first * wh.second * 3), 90);
    str(pk, name);
    ndarray(pk, px.data(), px.size(), "|u1", {wh.second, wh.first, 3});
  }
  str(pk, "prompt");
  str(pk, o.prompt);
  str(pk, "state");
  const float state[3] = {0.0f, 0.0f, 0.03f};
  ndarray(pk, state, sizeof(state), "<f4", {3});
  str(pk, "force");
  std::vector<float> f(static_cast<size_t>(o.n_force) * 6, 0.01f);
  ndarray(pk, f.data(), f.size() * 4, o.force_dtype, {o.n_force, 6});
  str(pk, "force_t");
  std::vector<double> t(static_cast<size_t>(o.n_force));
  for (int i = 0; i < o.n_force; ++i) t[static_cast<size_t>(i)] = o.t0 + (i + 1) / 650.0;
  ndarray(pk, t.data(), t.size() * 8, "<f8", {o.n_force});
  str(pk, "request_id");
  pk.pack_int64(o.request_id);
  return std::string(buf.data(), buf.size());
}

// The reply's fields as msgpack objects (keys are str).
struct Reply {
  msgpack::object_handle oh;
  const msgpack::object* get(const std::string& k) const {
    const auto& m = oh.get().via.map;
    for (uint32_t i = 0; i < m.size; ++i)
      if (m.ptr[i].key.as<std::string>() == k) return &m.ptr[i].val;
    return nullptr;
  }
  bool has(const std::string& k) const { return get(k) != nullptr; }
};

Reply parse(const std::string& bytes) {
  Reply r;
  r.oh = msgpack::unpack(bytes.data(), bytes.size());
  EXPECT_EQ(r.oh.get().type, msgpack::type::MAP);
  return r;
}

std::vector<float> actions_of(const Reply& r) {
  std::vector<float> acts;
  const auto* a = r.get("actions");
  for (uint32_t i = 0; i < a->via.map.size; ++i)
    if (a->via.map.ptr[i].key.as<std::string>() == "data") {
      const auto& d = a->via.map.ptr[i].val.via.bin;
      acts.resize(d.size / 4);
      std::memcpy(acts.data(), d.ptr, d.size);
    }
  return acts;
}

std::shared_ptr<policy::Policy> default_policy() {
  static auto p = policy::Policy::load("default");
  return p;
}

Obs default_obs(const nlohmann::json& md) {
  Obs o;
  for (const auto& v : md["views"])
    o.views[v.get<std::string>()] = {md["image_width"].get<int>(), md["image_height"].get<int>()};
  return o;
}

// A websocket client over a real socket.
struct Client {
  net::io_context ioc;
  websocket::stream<tcp::socket> ws{ioc};
  nlohmann::json metadata;
  explicit Client(int port, const std::string& key = "") {
    tcp::resolver res{ioc};
    net::connect(ws.next_layer(), res.resolve("127.0.0.1", std::to_string(port)));
    if (!key.empty())
      ws.set_option(websocket::stream_base::decorator(
          [key](websocket::request_type& req) { req.set("x-api-key", key); }));
    ws.handshake("127.0.0.1", "/");
    beast::flat_buffer b;
    ws.read(b);
    const auto* p = static_cast<const uint8_t*>(b.data().data());
    metadata = nlohmann::json::from_msgpack(p, p + b.size());
  }
  std::string call(const std::string& msg, bool binary = true) {
    send(msg, binary);
    return recv();
  }
  void send(const std::string& msg, bool binary = true) {
    ws.binary(binary);
    ws.write(net::buffer(msg));
  }
  std::string recv() {
    beast::flat_buffer b;
    ws.read(b);
    return beast::buffers_to_string(b.data());
  }
};

int http_get(int port, const std::string& target, std::string* body = nullptr) {
  net::io_context ioc;
  tcp::socket s{ioc};
  tcp::resolver res{ioc};
  net::connect(s, res.resolve("127.0.0.1", std::to_string(port)));
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, "127.0.0.1");
  http::write(s, req);
  beast::flat_buffer b;
  http::response<http::string_body> resp;
  http::read(s, b, resp);
  if (body) *body = resp.body();
  return static_cast<int>(resp.result_int());
}

// A server on a free port in a background thread; stops on destruction.
struct Running {
  std::atomic<bool> stop{false};
  PolicyServer server;
  std::thread thread;
  int port = 0;
  explicit Running(ServeOptions opt)
      : server(default_policy(), [&] {
          opt.host = "127.0.0.1";
          opt.port = 0;
          return opt;
        }()) {
    port = server.bind();
    thread = std::thread([this] { server.run(stop); });
  }
  ~Running() {
    stop = true;
    thread.join();
  }
};

}  // namespace

TEST(Decode, OpenpiStyleRequest) {
  Obs o;
  o.views = {{"top", {4, 3}}};
  InferRequest r = decode_request(request(o).data(), request(o).size(), ServeOptions{});
  ASSERT_EQ(r.images.count("top"), 1u);
  EXPECT_EQ(r.images["top"].width, 4);
  EXPECT_EQ(r.images["top"].height, 3);
  EXPECT_EQ(r.images["top"].pixels[0], 90);
  EXPECT_EQ(r.prompt, o.prompt);
  ASSERT_EQ(r.state.size(), 3u);
  EXPECT_FLOAT_EQ(r.state[2], 0.03f);
  ASSERT_EQ(r.force.size(), 65u);
  EXPECT_FLOAT_EQ(r.force[64][5], 0.01f);
  EXPECT_DOUBLE_EQ(r.force_t[64], 65 / 650.0);
  EXPECT_TRUE(r.has_request_id);
  EXPECT_EQ(r.request_id, 7);
}

TEST(Decode, HostileInputGetsAClearErrorNamingTheField) {
  ServeOptions lim;
  auto expect_error = [&](const std::string& bytes, const std::string& needle) {
    try {
      decode_request(bytes.data(), bytes.size(), lim);
      ADD_FAILURE() << "accepted; expected an error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("", "bytes");
  expect_error("\xc1garbage", "msgpack");
  {
    msgpack::sbuffer b;
    Packer pk(&b);
    pk.pack_array(1);
    pk.pack_int(1);
    expect_error(std::string(b.data(), b.size()), "map");
  }
  Obs o;
  o.force_dtype = "<i8";  // 8-byte ints where floats belong
  expect_error(request(o), "dtype");
  o = Obs();
  o.prompt = "bad \xff\xfe utf-8";
  expect_error(request(o), "UTF-8");
  {  // "reset" is a boolean; a number is refused
    msgpack::sbuffer b;
    Packer pk(&b);
    pk.pack_map(1);
    str(pk, "reset");
    pk.pack_int(1);
    expect_error(std::string(b.data(), b.size()), "reset");
    msgpack::sbuffer ok;
    Packer pk2(&ok);
    pk2.pack_map(1);
    str(pk2, "reset");
    pk2.pack_true();
    EXPECT_TRUE(decode_request(ok.data(), ok.size(), lim).reset);
  }
  {  // shape says more elements than the data has
    msgpack::sbuffer b;
    Packer pk(&b);
    pk.pack_map(1);
    str(pk, "state");
    const float s[3] = {0, 0, 0};
    ndarray(pk, s, sizeof(s), "<f4", {1000});
    expect_error(std::string(b.data(), b.size()), "data bytes");
  }
  {  // a shape too large to allocate is refused before any allocation
    msgpack::sbuffer b;
    Packer pk(&b);
    pk.pack_map(1);
    str(pk, "state");
    ndarray(pk, "", 0, "<f4", {1 << 30, 1 << 30});
    expect_error(std::string(b.data(), b.size()), "state");
  }
  // Random bytes never crash the decoder.
  std::mt19937 rng(3);
  const std::string good = request(Obs());
  for (int i = 0; i < 300; ++i) {
    std::string s = good;
    for (int k = 0; k < 8; ++k) s[rng() % s.size()] = static_cast<char>(rng());
    s.resize(rng() % s.size() + 1);
    try {
      decode_request(s.data(), s.size(), lim);
    } catch (const Error&) {
    }
  }
}

TEST(Server, RequestsGetActionsAndBadRequestsKeepTheConnection) {
  Running srv(ServeOptions{});
  Client c(srv.port);
  const auto& md = c.metadata;
  EXPECT_EQ(md["server"], "dualrate");
  EXPECT_EQ(md["horizon"], 8);
  EXPECT_EQ(md["action_dim"], 3);
  EXPECT_FALSE(md["views"].empty());
  Obs o = default_obs(md);
  // Features come from the VLM thread: the first replies hold, then the expert acts.
  std::string status;
  Reply r;
  for (int i = 0; i < 200 && status != "act"; ++i) {
    o.request_id = i;
    o.t0 = i * 0.1;
    r = parse(c.call(request(o)));
    ASSERT_FALSE(r.has("error")) << r.get("error")->as<std::string>();
    EXPECT_EQ(r.get("request_id")->as<int64_t>(), i);
    status = r.get("status")->as<std::string>();
    if (status != "act") std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(status, "act");
  EXPECT_GE(r.get("feature_version")->as<int64_t>(), 0);
  EXPECT_GE(r.get("feature_age_s")->as<double>(), 0.0);
  EXPECT_NEAR(r.get("obs_time")->as<double>(), o.t0 + 65 / 650.0, 1e-9);
  // actions: msgpack-numpy float32 [8, 3], clipped to the limit.
  const auto* a = r.get("actions");
  ASSERT_TRUE(a && a->type == msgpack::type::MAP);
  std::vector<float> acts;
  for (uint32_t i = 0; i < a->via.map.size; ++i)
    if (a->via.map.ptr[i].key.as<std::string>() == "data") {
      const auto& d = a->via.map.ptr[i].val.via.bin;
      acts.resize(d.size / 4);
      std::memcpy(acts.data(), d.ptr, d.size);
    }
  ASSERT_EQ(acts.size(), 24u);
  for (float v : acts) {
    EXPECT_TRUE(std::isfinite(v));
    EXPECT_LE(std::abs(v), 0.002f + 1e-7f);
  }
  EXPECT_TRUE(r.has("server_timing"));
  // Garbage, a text frame and a wrong-sized view: an error each, the connection stays usable.
  Reply e = parse(c.call("\x93not a map"));
  EXPECT_TRUE(e.has("error"));
  e = parse(c.call("hello", /*binary=*/false));
  EXPECT_NE(e.get("error")->as<std::string>().find("binary"), std::string::npos);
  Obs bad = o;
  bad.views.begin()->second = {17, 9};
  e = parse(c.call(request(bad)));
  EXPECT_NE(e.get("error")->as<std::string>().find("trained on"), std::string::npos);
  o.t0 += 100;
  r = parse(c.call(request(o)));
  EXPECT_FALSE(r.has("error"));
  // A repeated force stamp batch is refused by the ring and counted in /metrics.
  r = parse(c.call(request(o)));
  std::string metrics;
  ASSERT_EQ(http_get(srv.port, "/metrics", &metrics), 200);
  EXPECT_NE(metrics.find("dualrate_requests_total{status=\"act\"}"), std::string::npos);
  EXPECT_NE(metrics.find("dualrate_request_errors_total 3"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("dualrate_force_samples_rejected_total 65"), std::string::npos);
  EXPECT_NE(metrics.find("dualrate_connections 1"), std::string::npos);
  EXPECT_EQ(http_get(srv.port, "/healthz"), 200);
  EXPECT_EQ(http_get(srv.port, "/nothing"), 404);
}

// Streaming: after "stream": true the server pushes replies at stream_hz on its own clock while
// the client's messages are observations (answered only on error); "stream": false returns to
// request / reply.
TEST(Server, StreamingPushesChunksAtTheRequestedRate) {
  Running srv(ServeOptions{});
  Client c(srv.port);
  Obs o = default_obs(c.metadata);
  o.stream = 1;
  o.stream_hz = 20;
  Reply r = parse(c.call(request(o)));
  ASSERT_FALSE(r.has("error"));
  EXPECT_EQ(r.get("stream_seq")->as<int64_t>(), 0);
  // Observations: force only (the frames came with the start), sent as replies arrive.
  Obs obs = o;
  obs.stream = -1;
  obs.with_images = false;
  obs.n_force = 32;
  std::vector<int64_t> seqs;
  std::set<std::string> statuses;
  const auto t0 = std::chrono::steady_clock::now();
  bool error_seen = false;
  for (int i = 0; i < 40 && seqs.size() < 30; ++i) {
    obs.t0 = 0.1 + i * 32 / 650.0;
    obs.request_id = 100 + i;
    c.send(request(obs));
    if (i == 5) c.send("\x93not a map");  // an error reply, the stream goes on
    Reply s = parse(c.recv());
    if (s.has("error")) {
      error_seen = true;
      continue;
    }
    seqs.push_back(s.get("stream_seq")->as<int64_t>());
    statuses.insert(s.get("status")->as<std::string>());
    // The reply echoes the newest request id the server had when the tick ran.
    EXPECT_GE(s.get("request_id")->as<int64_t>(), 7);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_GE(seqs.size(), 30u);
  for (size_t i = 1; i < seqs.size(); ++i) EXPECT_GT(seqs[i], seqs[i - 1]);
  // 30 pushes at 20 Hz: ~1.5 s on the server's clock (a loaded machine skips, never bunches).
  EXPECT_GT(seconds, 1.2);
  EXPECT_LT(seconds, 6.0);
  EXPECT_TRUE(error_seen);
  EXPECT_TRUE(statuses.count("act")) << "the expert never acted while streaming";
  // Stop: the reply without stream_seq answers it (queued pushes may come first).
  obs.stream = 0;
  obs.request_id = 999;
  c.send(request(obs));
  for (int i = 0; i < 10; ++i) {
    r = parse(c.recv());
    if (!r.has("stream_seq")) break;
  }
  ASSERT_FALSE(r.has("stream_seq"));
  EXPECT_EQ(r.get("request_id")->as<int64_t>(), 999);
  // Request / reply again.
  obs.stream = -1;
  obs.request_id = 1000;
  obs.t0 += 1.0;
  r = parse(c.call(request(obs)));
  EXPECT_EQ(r.get("request_id")->as<int64_t>(), 1000);
  EXPECT_FALSE(r.has("stream_seq"));
}

TEST(Server, StaleForceHoldsAndSeveralClientsReconnect) {
  ServeOptions opt;
  opt.stale_input_s = 0.2;
  opt.force_stop_s = 0.6;
  Running srv(opt);
  {
    Client a(srv.port), b(srv.port);  // two at once
    Obs o = default_obs(a.metadata);
    std::string st;
    for (int i = 0; i < 200 && st != "act"; ++i) {
      o.t0 = i * 0.1;
      st = parse(a.call(request(o))).get("status")->as<std::string>();
      parse(b.call(request(o)));  // same stamps again from b: refused, not an error
      if (st != "act") std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_EQ(st, "act");
    // No new force samples for longer than the stale-input limit: hold, flagged.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    Obs no_force = o;
    no_force.n_force = 0;
    Reply r = parse(a.call(request(no_force)));
    EXPECT_EQ(r.get("status")->as<std::string>(), "hold_sensor");
    EXPECT_TRUE(r.get("stale_force")->as<bool>());
    // Past the second limit the reply is a safe stop (still a hold chunk).
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    r = parse(a.call(request(no_force)));
    EXPECT_EQ(r.get("status")->as<std::string>(), "safe_stop");
    for (float v : actions_of(r)) EXPECT_EQ(v, 0.0f);
  }
  // Both disconnected; a new client is served by the same (already loaded) policy.
  Client c(srv.port);
  Obs o = default_obs(c.metadata);
  o.t0 = 1000;
  Reply r = parse(c.call(request(o)));
  EXPECT_EQ(r.get("status")->as<std::string>(), "act");
}

TEST(Server, MissedDeadlineRepliesWithTheRestOfTheLastGoodChunk) {
  Running srv(ServeOptions{});
  Client c(srv.port);
  Obs o = default_obs(c.metadata);
  Reply good;
  std::string st;
  for (int i = 0; i < 200 && st != "act"; ++i) {
    o.t0 = i * 0.1;
    good = parse(c.call(request(o)));
    st = good.get("status")->as<std::string>();
    if (st != "act") std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(st, "act");
  const auto last = actions_of(good);
  // A deadline no expert call can meet (1 ns): the reply does not wait for the expert.
  o.t0 += 1;
  o.deadline_ms = 1e-6;
  Reply fb = parse(c.call(request(o)));
  ASSERT_FALSE(fb.has("error"));
  EXPECT_EQ(fb.get("status")->as<std::string>(), "fallback");
  // Each row is the last good chunk's row `skip + i` (played on from when it was issued) or a
  // hold (zeros) past its end.
  const auto acts = actions_of(fb);
  ASSERT_EQ(acts.size(), last.size());
  size_t skip = 0;
  while (skip < 8 && !std::equal(acts.begin(), acts.begin() + 3, last.begin() + 3 * skip)) ++skip;
  for (size_t i = 0; i < 8; ++i)
    for (size_t k = 0; k < 3; ++k)
      EXPECT_EQ(acts[3 * i + k], i + skip < 8 ? last[3 * (i + skip) + k] : 0.0f) << i;
  // Without the deadline the next request acts again.
  o.t0 += 1;
  o.deadline_ms = -1;
  EXPECT_EQ(parse(c.call(request(o))).get("status")->as<std::string>(), "act");
}

TEST(Server, ApiKeyIsRequiredWhenSet) {
  ServeOptions opt;
  opt.api_key = "s3cret";
  Running srv(opt);
  EXPECT_THROW(Client c(srv.port), std::exception);
  EXPECT_THROW(Client c(srv.port, "wrong"), std::exception);
  Client ok(srv.port, "s3cret");
  EXPECT_EQ(ok.metadata["server"], "dualrate");
}

namespace vla::serve {
namespace {

// The client side of the codec: what PolicyClient sends decodes to the same request, and a reply
// survives encode_reply -> decode_reply; an error map becomes an exception with its message.
TEST(Codec, RequestsAndRepliesRoundTrip) {
  InferRequest q;
  q.images["top"] = make_image(5, 4, 3, 17);
  q.images["top"].pixels[7] = 200;
  q.prompt = "insert the needle into the 빨간색 port";
  q.state = {0.01f, -0.02f, 0.03f};
  q.force = {{1, 2, 3, 4, 5, 6}, {6, 5, 4, 3, 2, 1}};
  q.force_t = {0.5, 0.5 + 1 / 650.0};
  q.request_id = 42;
  q.has_request_id = true;
  q.deadline_ms = 12.5;
  q.reset = true;
  q.stream = 1;
  q.stream_hz = 25;
  const std::string bytes = encode_request(q);
  const InferRequest d = decode_request(bytes.data(), bytes.size(), ServeOptions{});
  EXPECT_EQ(d.images.at("top").pixels, q.images.at("top").pixels);
  EXPECT_EQ(d.images.at("top").width, 5);
  EXPECT_EQ(d.prompt, q.prompt);
  EXPECT_EQ(d.state, q.state);
  EXPECT_EQ(d.force, q.force);
  EXPECT_EQ(d.force_t, q.force_t);
  EXPECT_EQ(d.request_id, 42);
  EXPECT_DOUBLE_EQ(d.deadline_ms, 12.5);
  EXPECT_TRUE(d.reset);
  EXPECT_EQ(d.stream, 1);
  EXPECT_DOUBLE_EQ(d.stream_hz, 25);
  InferRequest bad = q;
  bad.force_t.pop_back();
  EXPECT_THROW(encode_request(bad), Error);

  InferReply r;
  r.actions = {{0.001f, -0.002f, 0.0f}, {0.0f, 0.0f, 0.0005f}};
  r.request_id = 42;
  r.has_request_id = true;
  r.obs_time = 3.25;
  r.status = "act";
  r.feature_version = 9;
  r.feature_age_s = 0.125;
  r.stale_force = true;
  r.timing_ms = {{"expert_ms", 1.5}};
  r.stream_seq = 3;
  const std::string rb = encode_reply(r);
  const InferReply back = decode_reply(rb.data(), rb.size());
  EXPECT_EQ(back.actions, r.actions);
  EXPECT_EQ(back.request_id, 42);
  EXPECT_DOUBLE_EQ(back.obs_time, 3.25);
  EXPECT_EQ(back.status, "act");
  EXPECT_EQ(back.feature_version, 9);
  EXPECT_DOUBLE_EQ(back.feature_age_s, 0.125);
  EXPECT_TRUE(back.stale_force);
  EXPECT_FALSE(back.stale_frames);
  EXPECT_DOUBLE_EQ(back.timing_ms.at("expert_ms"), 1.5);
  EXPECT_EQ(back.stream_seq, 3);
  const std::string err = encode_error("request: 'state' is not finite");
  try {
    decode_reply(err.data(), err.size());
    FAIL() << "an error reply must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'state' is not finite"), std::string::npos);
  }
  EXPECT_THROW(decode_reply("\xc1", 1), Error);
}

// The product's C++ client through the protocol tests: metadata, infer with id echo, health,
// metrics (with the server's resident memory), a clear error for a refused connection.
TEST(PolicyClientProtocol, MetadataInferHealthMetrics) {
  Running srv(ServeOptions{});
  PolicyClient c("127.0.0.1", srv.port);
  EXPECT_EQ(c.metadata()["server"], "dualrate");
  InferRequest q;
  for (const auto& v : c.metadata()["views"])
    q.images[v.get<std::string>()] = make_image(c.metadata()["image_width"].get<int>(),
                                                c.metadata()["image_height"].get<int>(), 3, 90);
  q.prompt = "insert the needle into the red port";
  q.state = {0.0f, 0.0f, 0.03f};
  std::string status;
  for (int i = 0; i < 200 && status != "act"; ++i) {
    q.force.clear();
    q.force_t.clear();
    for (int k = 1; k <= 65; ++k) {
      q.force.push_back({0, 0, 0.05f, 0, 0, 0});
      q.force_t.push_back(i * 0.1 + k / 650.0);
    }
    q.request_id = 1000 + i;
    q.has_request_id = true;
    const InferReply r = c.infer(q);
    EXPECT_EQ(r.request_id, 1000 + i);
    EXPECT_EQ(r.actions.size(), 8u);
    EXPECT_GT(c.last_round_trip_ms(), 0.0);
    status = r.status;
    if (status != "act") std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(status, "act");
  InferRequest bad = q;
  bad.state = {0.0f};
  EXPECT_THROW(c.infer(bad), Error);  // the server's error reply, as an exception
  std::string body;
  EXPECT_EQ(http_get("127.0.0.1", srv.port, "/healthz"), 200);
  ASSERT_EQ(http_get("127.0.0.1", srv.port, "/metrics", &body), 200);
  EXPECT_NE(body.find("process_resident_memory_bytes "), std::string::npos);
  EXPECT_NE(body.find("dualrate_requests_total{status=\"act\"}"), std::string::npos);
  EXPECT_THROW(PolicyClient("127.0.0.1", 1), Error);  // nothing listens on port 1
}

// Requests missing a field get an error naming it; the connection keeps serving.
TEST(Server, MissingFieldsGetAnErrorNamingThem) {
  Running srv(ServeOptions{});
  PolicyClient c("127.0.0.1", srv.port);
  const auto& md = c.metadata();
  InferRequest ok;
  ok.state = {0.0f, 0.0f, 0.03f};
  auto error_of = [&](const InferRequest& q) -> std::string {
    try {
      c.infer(q);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  InferRequest no_state;  // nothing but an id
  no_state.request_id = 1;
  no_state.has_request_id = true;
  EXPECT_NE(error_of(no_state).find("'state'"), std::string::npos) << error_of(no_state);
  InferRequest no_prompt = ok;  // frames of a fresh server without the instruction
  for (const auto& v : md["views"])
    no_prompt.images[v.get<std::string>()] =
        make_image(md["image_width"].get<int>(), md["image_height"].get<int>(), 3, 90);
  EXPECT_NE(error_of(no_prompt).find("prompt"), std::string::npos) << error_of(no_prompt);
  InferRequest wrong_view = ok;  // a view the policy does not read, the one it reads missing
  wrong_view.prompt = "insert the needle into the red port";
  wrong_view.images["no_such_camera"] = make_image(8, 8, 3, 0);
  EXPECT_NE(error_of(wrong_view).find("no_such_camera"), std::string::npos);
  // force without force_t: refused by the decoder (built by hand: encode_request refuses it).
  msgpack::sbuffer b;
  Packer pk(&b);
  pk.pack_map(2);
  str(pk, "state");
  const float st[3] = {0, 0, 0.03f};
  ndarray(pk, st, sizeof(st), "<f4", {3});
  str(pk, "force");
  const float f[6] = {0, 0, 0, 0, 0, 0};
  ndarray(pk, f, sizeof(f), "<f4", {1, 6});
  Client raw(srv.port);
  Reply e = parse(raw.call(std::string(b.data(), b.size())));
  ASSERT_TRUE(e.has("error"));
  EXPECT_NE(e.get("error")->as<std::string>().find("force_t"), std::string::npos);
  // Both connections still serve a complete request.
  EXPECT_NO_THROW(c.infer(ok));
  EXPECT_FALSE(parse(raw.call(encode_request(ok))).has("error"));
}

// Hostile clients (a 100 MB frame, a client that connects and sends nothing, one that hangs up
// in the middle of a request) lose their connection; a well-behaved client keeps being served.
TEST(Server, HostileClientsDoNotStopTheOthers) {
  Running srv(ServeOptions{});
  PolicyClient good("127.0.0.1", srv.port);
  InferRequest q;
  q.state = {0.0f, 0.0f, 0.03f};
  double t = 0;
  auto serve_one = [&] {
    q.force.clear();
    q.force_t.clear();
    for (int k = 0; k < 65; ++k)
      q.force.push_back({0, 0, 0.05f, 0, 0, 0}), q.force_t.push_back(t += 1 / 650.0);
    return good.infer(q);
  };
  EXPECT_NO_THROW(serve_one());
  // Connects and sends nothing (its thread waits on it; nobody else does).
  Client idle(srv.port);
  EXPECT_NO_THROW(serve_one());
  // A 100 MB frame (over the 64 MB limit): that connection is closed.
  {
    Client big(srv.port);
    std::string huge(100u << 20, '\x01');
    beast::error_code ec;
    big.ws.binary(true);
    big.ws.write(net::buffer(huge), ec);
    beast::flat_buffer b;
    if (!ec) big.ws.read(b, ec);
    EXPECT_TRUE(ec) << "the server answered a 100 MB frame";
  }
  EXPECT_NO_THROW(serve_one());
  // Half a frame, then the socket closes.
  {
    Client half(srv.port);
    const std::string msg = request(default_obs(half.metadata));
    half.ws.binary(true);
    half.ws.write_some(false, net::buffer(msg.data(), msg.size() / 2));
    beast::error_code ec;
    half.ws.next_layer().close(ec);
  }
  for (int i = 0; i < 5; ++i) EXPECT_NO_THROW(serve_one());
  EXPECT_EQ(http_get("127.0.0.1", srv.port, "/healthz"), 200);
}

// Simulator episodes through the server (`vla client`) succeed as the in-process synchronous loop
// does on the same seeds.
TEST(RemoteSim, EpisodesThroughTheServerMatchInProcess) {
  Running srv(ServeOptions{});
  PolicyClient c("127.0.0.1", srv.port);
  RemoteEpisodesOptions o;
  o.episodes = 2;
  o.seed = 1000;
  o.progress = false;
  const RemoteEpisodesReport remote = drive_simulator(c, o);
  closed_loop::ClosedLoopOptions in;
  in.policy = "default";
  in.episodes = 2;
  in.seed = 1000;
  in.rt.vlm_latency_s = 0;  // synchronous: fresh features every tick
  in.progress = false;
  const runtime::Summary local = runtime::summarize(closed_loop::run_closed_loop(in));
  EXPECT_EQ(remote.episodes, 2);
  EXPECT_EQ(remote.successes, local.successes) << remote.to_json().dump();
  EXPECT_GE(remote.successes, 1);
  EXPECT_GT(remote.statuses.count("act") ? remote.statuses.at("act") : 0, 10);
}

}  // namespace
}  // namespace vla::serve
