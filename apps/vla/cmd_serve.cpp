// `vla serve`: the policy behind an openpi-compatible websocket server (src/serve/serve.h,
// docs/serving.md).
#include <algorithm>
#include <cstdio>
#include <map>
#include <thread>

#include "command.h"
#include "core/core.h"
#include "serve/serve.h"

namespace {

void add_serve(CLI::App& app) {
  auto o = std::make_shared<vla::serve::ServeOptions>();
  auto policy = std::make_shared<std::string>("default");
  auto max_mb = std::make_shared<double>(64);
  auto max_action_mm = std::make_shared<double>(2.0);
  auto vlm = std::make_shared<vla::policy::VlmOptions>();
  auto* c = app.add_subcommand(
      "serve",
      "Serve a policy to a robot over websocket + msgpack (openpi's client protocol): metadata\n"
      "on connect, then one request (images, prompt, state, force + force_t, request_id) -> one\n"
      "reply (actions [H,3], status, feature age/version, server timing). The VLM runs in its own\n"
      "thread on the newest frames; each request runs the action expert on the newest features\n"
      "and the freshest 100 ms force window. GET /healthz and GET /metrics (Prometheus) on the\n"
      "same port. Ctrl-C stops it. Protocol: docs/serving.md; Python client: clients/python.");
  c->add_option("--policy", *policy, "default | no_reuse | a policy folder")->capture_default_str();
  c->add_option("--host", o->host, "address to listen on (IPv4 or IPv6 literal)")
      ->capture_default_str();
  c->add_option("--port", o->port, "TCP port (0 = any free port, printed)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  c->add_option("--api-key", o->api_key,
                "require this key in the `x-api-key` header of every connection (or $VLA_API_KEY)")
      ->envname("VLA_API_KEY");
  c->add_option("--max-message-mb", *max_mb, "largest request accepted (MB)")
      ->check(CLI::Range(0.01, 1024.0))
      ->capture_default_str();
  c->add_option("--max-staleness", o->max_staleness_s,
                "VL features older than this (s): reply status safe_stop with a hold chunk")
      ->check(CLI::Range(1e-3, 1e6))
      ->capture_default_str();
  c->add_option("--stale-input", o->stale_input_s,
                "no frames / force samples for this long (s): flagged in every reply; stale force\n"
                "also holds")
      ->check(CLI::Range(1e-3, 1e6))
      ->capture_default_str();
  c->add_option("--force-stop", o->force_stop_s,
                "no force samples for this long (s, >= --stale-input): reply safe_stop")
      ->check(CLI::Range(1e-3, 1e6))
      ->capture_default_str();
  c->add_option("--max-action-mm", *max_action_mm, "clip each action component to +- this (mm)")
      ->check(CLI::Range(1e-3, 100.0))
      ->capture_default_str();
  vla::cli::add_vlm_options(c, vlm.get());
  c->add_option("--deadline-ms", o->deadline_ms,
                "answer a request whose expert call is not done this many ms after it arrived\n"
                "with the rest of the last good chunk (status fallback; 0 = wait)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  c->add_option("--vlm-threads", o->vlm_threads, "torch threads of the VLM thread")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  c->callback([o, policy, max_mb, max_action_mm, vlm] {
    vla::serve::ServeOptions opt = *o;
    opt.max_action_m = *max_action_mm * 1e-3;
    opt.max_message_bytes = static_cast<size_t>(*max_mb * 1024 * 1024);
    auto p = vla::policy::Policy::load(*policy, *vlm);
    vla::serve::PolicyServer server(p, opt);
    const int port = server.bind();
    std::printf("vla serve: policy %s on ws://%s:%d (GET /healthz, /metrics)%s\n", policy->c_str(),
                opt.host.c_str(), port, opt.api_key.empty() ? "" : "; api key required");
    std::fflush(stdout);
    vla::cli::StopSignals stop;
    server.run(vla::cli::StopSignals::flag());
    std::printf("vla serve: stopped\n");
  });
}

// The server's resident memory from its /metrics (process_resident_memory_bytes), MB.
double server_rss_mb(const std::string& host, int port) {
  std::string body;
  if (vla::serve::http_get(host, port, "/metrics", &body) != 200) return -1;
  const std::string key = "\nprocess_resident_memory_bytes ";
  const auto at = body.find(key);
  return at == std::string::npos ? -1 : std::stod(body.substr(at + key.size())) / (1 << 20);
}

struct ClientArgs {
  std::string host = "127.0.0.1", api_key, json;
  int port = 8000, episodes = 10, load = 0, requests = 1000;
  uint64_t seed = 1000;
  double time_limit = 0, timeout = 30;
  bool no_wait = false;
};

// --load C: C connections, each `requests` synthetic requests back to back (grey frames every
// 10th request, the last 100 ms of force samples): round trip, server phases, errors, statuses
// and the server's resident memory.
nlohmann::json load_test(const ClientArgs& a) {
  const double rss0 = server_rss_mb(a.host, a.port);
  struct PerClient {
    std::vector<double> rtt, infer, expert, decode;
    int errors = 0;
    std::map<std::string, int> statuses;
  };
  std::vector<PerClient> per(static_cast<size_t>(a.load));
  std::vector<std::thread> threads;
  vla::Stopwatch sw;
  for (int c = 0; c < a.load; ++c)
    threads.emplace_back([&, c] {
      PerClient& out = per[static_cast<size_t>(c)];
      vla::serve::PolicyClient client(a.host, a.port, a.api_key, a.timeout);
      const auto& md = client.metadata();
      for (int i = 0; i < a.requests; ++i) {
        vla::serve::InferRequest req;
        if (i % 10 == 0) {
          for (const auto& v : md["views"])
            req.images[v.get<std::string>()] = vla::make_image(
                md["image_width"].get<int>(), md["image_height"].get<int>(), 3, 90 + c);
          req.prompt = "insert the needle into the red port";
        }
        // One force stream shared by all connections (one robot): the 100 ms of samples up to
        // now on this host's steady clock; samples older than what another connection already
        // sent are refused by the ring, as they would be from a real sensor.
        const double now_s = vla::now_ns() * 1e-9;
        for (int k = 64; k >= 0; --k) {
          req.force.push_back({0.0f, 0.0f, 0.05f, 0.0f, 0.0f, 0.0f});
          req.force_t.push_back(now_s - k / 650.0);
        }
        req.state = {0.0f, 0.0f, 0.03f};
        req.request_id = i;
        req.has_request_id = true;
        try {
          const auto r = client.infer(req);
          VLA_CHECK(r.request_id == i, "request id not echoed");
          out.rtt.push_back(client.last_round_trip_ms());
          out.infer.push_back(r.timing_ms.count("infer_ms") ? r.timing_ms.at("infer_ms") : 0);
          out.expert.push_back(r.timing_ms.count("expert_ms") ? r.timing_ms.at("expert_ms") : 0);
          out.decode.push_back(r.timing_ms.count("decode_ms") ? r.timing_ms.at("decode_ms") : 0);
          ++out.statuses[r.status];
        } catch (const std::exception& e) {
          ++out.errors;
        }
      }
    });
  for (auto& th : threads) th.join();
  const double seconds = sw.elapsed_s();
  const double rss1 = server_rss_mb(a.host, a.port);
  std::vector<double> rtt, infer, expert, decode;
  int errors = 0;
  std::map<std::string, int> statuses;
  for (const auto& p : per) {
    rtt.insert(rtt.end(), p.rtt.begin(), p.rtt.end());
    infer.insert(infer.end(), p.infer.begin(), p.infer.end());
    expert.insert(expert.end(), p.expert.begin(), p.expert.end());
    decode.insert(decode.end(), p.decode.begin(), p.decode.end());
    errors += p.errors;
    for (const auto& [s, n] : p.statuses) statuses[s] += n;
  }
  vla::Table t({"phase (ms)", "p50", "p99"});
  t.add_row({"round trip (client clock)", vla::fmt_double(vla::percentile(rtt, 50), 2),
             vla::fmt_double(vla::percentile(rtt, 99), 2)});
  t.add_row({"server decode", vla::fmt_double(vla::percentile(decode, 50), 2),
             vla::fmt_double(vla::percentile(decode, 99), 2)});
  t.add_row({"server infer (frames, force, expert)", vla::fmt_double(vla::percentile(infer, 50), 2),
             vla::fmt_double(vla::percentile(infer, 99), 2)});
  t.add_row({"server expert", vla::fmt_double(vla::percentile(expert, 50), 2),
             vla::fmt_double(vla::percentile(expert, 99), 2)});
  std::printf(
      "%d clients x %d requests in %.1f s (%.0f requests/s): %d errors; server RSS %.1f -> "
      "%.1f MB\n",
      a.load, a.requests, seconds, a.load * a.requests / seconds, errors, rss0, rss1);
  t.print();
  return {{"clients", a.load},
          {"requests_per_client", a.requests},
          {"seconds", seconds},
          {"errors", errors},
          {"statuses", statuses},
          {"round_trip_ms", {{"p50", vla::percentile(rtt, 50)}, {"p99", vla::percentile(rtt, 99)}}},
          {"server_decode_ms",
           {{"p50", vla::percentile(decode, 50)}, {"p99", vla::percentile(decode, 99)}}},
          {"server_infer_ms",
           {{"p50", vla::percentile(infer, 50)}, {"p99", vla::percentile(infer, 99)}}},
          {"server_expert_ms",
           {{"p50", vla::percentile(expert, 50)}, {"p99", vla::percentile(expert, 99)}}},
          {"server_rss_mb_before", rss0},
          {"server_rss_mb_after", rss1}};
}

void add_client(CLI::App& app) {
  auto a = std::make_shared<ClientArgs>();
  auto* c = app.add_subcommand(
      "client",
      "Drive the needle simulator through a running `vla serve` (the C++ client of its\n"
      "protocol): each 10 Hz tick sends the views, instruction, proprio and new force samples and\n"
      "executes the returned chunk; prints the success rate. With --load C it is a load test\n"
      "instead: C connections x --requests synthetic requests, latency per phase, errors and the\n"
      "server's resident memory before and after.");
  c->add_option("--host", a->host, "server address")->capture_default_str();
  c->add_option("--port", a->port, "server port")
      ->check(CLI::Range(1, 65535))
      ->capture_default_str();
  c->add_option("--api-key", a->api_key, "sent as `x-api-key` (or $VLA_API_KEY)")
      ->envname("VLA_API_KEY");
  c->add_option("--episodes", a->episodes, "simulator episodes (seeds seed..seed+N-1)")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  c->add_option("--seed", a->seed, "first episode seed (1000+ are unseen by training data)")
      ->capture_default_str();
  c->add_option("--time-limit", a->time_limit, "episode time limit (s); 0 = simulator default")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  c->add_flag("--no-wait-features", a->no_wait,
              "act on whatever features the server has (default: wait, per tick, for the features\n"
              "of the frames just sent: the synchronous loop's equivalent, the sim waits anyway)");
  c->add_option("--load", a->load, "load test with this many concurrent connections (0 = off)")
      ->check(CLI::Range(0, 256))
      ->capture_default_str();
  c->add_option("--requests", a->requests, "requests per connection (--load)")
      ->check(CLI::Range(1, 10000000))
      ->capture_default_str();
  c->add_option("--timeout", a->timeout, "seconds to wait for a reply before giving up")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  c->add_option("--json", a->json, "write the results as JSON here");
  c->callback([a] {
    nlohmann::json out;
    if (a->load > 0) {
      out = load_test(*a);
    } else {
      vla::serve::PolicyClient client(a->host, a->port, a->api_key, a->timeout);
      std::printf("server: policy %s, views %s, %dx%d\n",
                  client.metadata().value("policy", std::string("?")).c_str(),
                  client.metadata()["views"].dump().c_str(),
                  client.metadata()["image_width"].get<int>(),
                  client.metadata()["image_height"].get<int>());
      vla::serve::RemoteEpisodesOptions o;
      o.episodes = a->episodes;
      o.seed = a->seed;
      o.time_limit_s = a->time_limit;
      o.wait_for_features = !a->no_wait;
      const auto rep = vla::serve::drive_simulator(client, o);
      out = rep.to_json();
      std::string reasons;
      for (const auto& [k, n] : rep.outcomes)
        reasons += vla::str_cat(reasons.empty() ? "" : ", ", k, " ", n);
      std::printf(
          "success: %d/%d (%.1f %%; %s); %zu requests (re-asks included: each tick waits for the "
          "features of its frames; --no-wait-features acts at once), round trip p50 %.2f ms, p99 "
          "%.2f ms\n",
          rep.successes, rep.episodes, 100.0 * out["success_rate"].get<double>(), reasons.c_str(),
          rep.round_trip_ms.size(), out["round_trip_p50_ms"].get<double>(),
          out["round_trip_p99_ms"].get<double>());
    }
    if (!a->json.empty()) vla::write_json_atomic(a->json, out);
  });
}

}  // namespace

VLA_REGISTER_COMMAND(60, add_serve);
VLA_REGISTER_COMMAND(65, add_client);
