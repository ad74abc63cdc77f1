// The network side of `vla serve`: Boost.Beast websocket + HTTP on one port, a thread (and an
// io_context) per connection. Websocket: metadata on connect, then one msgpack request -> one
// msgpack reply, or, after a request with "stream": true, replies pushed at a fixed rate on the
// server's clock while the client's messages are observations. HTTP: GET /healthz, GET /metrics.
#include <sys/socket.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include "serve/serve.h"

namespace vla::serve {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;

struct PolicyServer::Net {
  net::io_context ioc{1};
  std::unique_ptr<tcp::acceptor> acceptor;
  std::mutex mu;
  std::set<int> open_fds;  // shut down at stop so that blocked reads return
  std::atomic<int> sessions{0};
};

PolicyServer::PolicyServer(std::shared_ptr<policy::Policy> policy, ServeOptions opt)
    : opt_(opt),
      runtime_(std::make_unique<ServingRuntime>(std::move(policy), opt)),
      net_(std::make_unique<Net>()) {
  VLA_CHECK(opt.port >= 0 && opt.port <= 65535, "serve: --port must be 0..65535, got ", opt.port);
}

PolicyServer::~PolicyServer() = default;

int PolicyServer::bind() {
  if (net_->acceptor) return port_;
  beast::error_code ec;
  const auto addr = net::ip::make_address(opt_.host, ec);
  VLA_CHECK(!ec, "serve: --host '", opt_.host, "' is not an IP address (", ec.message(), ")");
  auto acc = std::make_unique<tcp::acceptor>(net_->ioc);
  const tcp::endpoint ep{addr, static_cast<unsigned short>(opt_.port)};
  acc->open(ep.protocol(), ec);
  if (!ec) acc->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acc->bind(ep, ec);
  if (!ec) acc->listen(net::socket_base::max_listen_connections, ec);
  VLA_CHECK(!ec, "serve: cannot listen on ", opt_.host, ":", opt_.port, " (", ec.message(), ")");
  acc->non_blocking(true);
  port_ = acc->local_endpoint().port();
  net_->acceptor = std::move(acc);
  return port_;
}

namespace {

void respond(tcp::socket& s, const http::request<http::string_body>& req, http::status st,
             const std::string& type, std::string body) {
  http::response<http::string_body> res{st, req.version()};
  res.set(http::field::server, "dualrate");
  res.set(http::field::content_type, type);
  res.keep_alive(false);
  res.body() = std::move(body);
  res.prepare_payload();
  beast::error_code ec;
  http::write(s, res, ec);
}

bool authorised(const http::request<http::string_body>& req, const std::string& key) {
  if (key.empty()) return true;
  const auto it = req.find("x-api-key");
  return it != req.end() && std::string(it->value()) == key;
}

using WebSocket = websocket::stream<tcp::socket>;

// Streaming on one connection (its own io_context, so reads, writes and the tick timer interleave
// on this thread): every 1/hz s of the server's clock the expert runs on the newest features with
// the client's latest state and the reply is pushed; the client's messages are observations
// (frames, force, state), answered only on error, until one carries "stream": false, which gets a
// normal reply. At most 4 replies wait for a client that does not read (older ones are dropped:
// the newest chunk is the one to execute). Returns false when the connection ended.
bool stream_replies(WebSocket& ws, net::io_context& io, ServingRuntime& rt,
                    const InferRequest& start, const ServeOptions& opt,
                    const std::atomic<bool>& stop) {
  const double hz = start.stream_hz > 0 ? start.stream_hz : kControlHz;
  const auto period = std::chrono::nanoseconds(static_cast<int64_t>(1e9 / hz));
  InferRequest tick;  // what each tick acts on: no frames, no force, the latest state and ids
  tick.state = start.state;
  tick.request_id = start.request_id;
  tick.has_request_id = start.has_request_id;
  tick.deadline_ms = start.deadline_ms;
  int64_t seq = 1;  // the start request's reply was 0
  std::deque<std::string> outq;
  bool writing = false, open = true, ended = false;
  beast::flat_buffer buf;
  net::steady_timer timer(io);
  auto next = std::chrono::steady_clock::now() + period;
  auto close_all = [&] {
    open = false;
    timer.cancel();
    beast::error_code ec;
    ws.next_layer().cancel(ec);
  };
  std::function<void()> pump = [&] {
    if (writing || outq.empty() || !open) return;
    writing = true;
    ws.binary(true);
    ws.async_write(net::buffer(outq.front()), [&](beast::error_code ec, size_t) {
      writing = false;
      if (ec) return close_all();
      outq.pop_front();
      pump();
    });
  };
  auto push = [&](std::string bytes) {
    if (outq.size() >= 4) outq.erase(outq.begin() + (writing ? 1 : 0));
    outq.push_back(std::move(bytes));
    pump();
  };
  std::function<void()> read_one = [&] {
    ws.async_read(buf, [&](beast::error_code ec, size_t) {
      if (ec) return close_all();
      try {
        VLA_CHECK(ws.got_binary(), "request: expected a binary msgpack frame");
        InferRequest r = decode_request(buf.data().data(), buf.size(), opt);
        buf.consume(buf.size());
        if (!r.state.empty()) tick.state = r.state;
        if (r.has_request_id) tick.request_id = r.request_id, tick.has_request_id = true;
        if (r.deadline_ms >= 0) tick.deadline_ms = r.deadline_ms;
        if (r.stream == 0) {  // back to request / reply: this request is answered as usual
          if (r.state.empty()) r.state = tick.state;
          ended = true;
          timer.cancel();
          push(encode_reply(rt.infer(r)));
          return;
        }
        rt.observe(r);
      } catch (const std::exception& e) {
        buf.consume(buf.size());
        rt.note_error();
        push(encode_error(e.what()));
      }
      read_one();
    });
  };
  std::function<void()> arm = [&] {
    timer.expires_at(next);
    timer.async_wait([&](beast::error_code ec) {
      if (ec || ended || !open) return;
      if (stop.load()) return close_all();
      try {
        InferReply out = rt.infer(tick);
        out.stream_seq = seq++;
        push(encode_reply(out));
      } catch (const std::exception& e) {
        rt.note_error();
        push(encode_error(e.what()));
      }
      // The next tick on the fixed grid; ticks missed while the expert ran are skipped.
      const auto now = std::chrono::steady_clock::now();
      do next += period;
      while (next <= now);
      arm();
    });
  };
  io.restart();
  read_one();
  arm();
  io.run();
  return open && !stop.load();
}

}  // namespace

void PolicyServer::run(const std::atomic<bool>& stop) {
  bind();
  const std::string metadata = [&] {
    const auto bytes = nlohmann::json::to_msgpack(runtime_->metadata());
    return std::string(bytes.begin(), bytes.end());
  }();
  Net& n = *net_;
  auto session = [this, &n, &stop, metadata](std::shared_ptr<net::io_context> io,
                                             tcp::socket sock) {
    const int fd = sock.native_handle();
    {
      std::lock_guard<std::mutex> lock(n.mu);
      n.open_fds.insert(fd);
    }
    beast::error_code ec;
    try {
      beast::flat_buffer buf;
      http::request_parser<http::string_body> parser;
      parser.body_limit(1 << 16);
      parser.header_limit(1 << 14);
      http::read(sock, buf, parser, ec);
      if (!ec) {
        auto req = parser.release();
        if (!authorised(req, opt_.api_key)) {
          respond(sock, req, http::status::unauthorized, "text/plain", "api key\n");
        } else if (websocket::is_upgrade(req)) {
          WebSocket ws{std::move(sock)};
          ws.read_message_max(opt_.max_message_bytes);
          ws.accept(req);
          runtime_->note_connection(+1);
          ws.binary(true);
          ws.write(net::buffer(metadata));
          while (!stop.load()) {
            beast::flat_buffer msg;
            ws.read(msg, ec);
            if (ec) break;  // closed, reset, or over the size limit
            std::string reply;
            InferRequest r;
            try {
              VLA_CHECK(ws.got_binary(), "request: expected a binary msgpack frame");
              const auto t0 = now_ns();
              r = decode_request(msg.data().data(), msg.size(), opt_);
              const double decode_ms = (now_ns() - t0) * 1e-6;
              InferReply out = runtime_->infer(r);
              out.timing_ms["decode_ms"] = decode_ms;
              if (r.stream == 1) out.stream_seq = 0;
              reply = encode_reply(out);
            } catch (const std::exception& e) {
              runtime_->note_error();
              reply = encode_error(e.what());
              r.stream = -1;
            }
            ws.binary(true);
            ws.write(net::buffer(reply), ec);
            if (ec) break;
            if (r.stream == 1 && !stream_replies(ws, *io, *runtime_, r, opt_, stop)) break;
          }
          runtime_->note_connection(-1);
          if (ws.is_open()) ws.close(websocket::close_code::normal, ec);
        } else if (req.method() == http::verb::get && req.target() == "/healthz") {
          respond(sock, req, http::status::ok, "text/plain", "ok\n");
        } else if (req.method() == http::verb::get && req.target() == "/metrics") {
          respond(sock, req, http::status::ok, "text/plain; version=0.0.4",
                  runtime_->prometheus_metrics());
        } else {
          respond(sock, req, http::status::not_found, "text/plain",
                  "websocket, GET /healthz or GET /metrics\n");
        }
      }
    } catch (const std::exception& e) {
      log_warn("serve: connection ended: ", e.what());
    }
    {
      std::lock_guard<std::mutex> lock(n.mu);
      n.open_fds.erase(fd);
    }
    n.sessions.fetch_sub(1);
  };
  // The CLI prints its own banner; embedders see this with VLA_LOG=debug.
  log_debug("serve: listening on ", opt_.host, ":", port_, " (websocket; GET /healthz, /metrics)");
  while (!stop.load()) {
    beast::error_code ec;
    auto io = std::make_shared<net::io_context>(1);  // the connection's own (streaming)
    tcp::socket sock{*io};
    n.acceptor->accept(sock, ec);
    if (ec == net::error::would_block || ec == net::error::try_again) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    if (ec) {
      log_warn("serve: accept: ", ec.message());
      continue;
    }
    sock.non_blocking(false, ec);
    sock.set_option(tcp::no_delay(true), ec);
    n.sessions.fetch_add(1);
    std::thread(session, std::move(io), std::move(sock)).detach();
  }
  // Stop: wake every blocked read, then wait for the sessions to finish.
  {
    std::lock_guard<std::mutex> lock(n.mu);
    for (int fd : n.open_fds) ::shutdown(fd, SHUT_RDWR);
  }
  const int64_t give_up = now_ns() + 5'000'000'000LL;
  while (n.sessions.load() > 0 && now_ns() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  n.acceptor->close();
}

}  // namespace vla::serve
