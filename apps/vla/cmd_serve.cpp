// `vla serve`: the policy behind an openpi-compatible websocket server (src/serve/serve.h,
// docs/serving.md).
#include <cstdio>

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

}  // namespace

VLA_REGISTER_COMMAND(60, add_serve);
