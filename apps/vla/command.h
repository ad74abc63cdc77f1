// Subcommand registry for the `vla` CLI. Each apps/vla/cmd_<name>.cpp adds its subcommands with
// VLA_REGISTER_COMMAND so main.cpp never needs editing when a command is added.
#pragma once

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/core.h"
#include "policy/policy.h"

namespace vla::cli {

// "1.5", "1.5s", "300ms" -> seconds (a duration option: --vlm-latency). Throws vla::Error.
inline double parse_seconds(const std::string& text) {
  std::string s = text;
  double scale = 1.0;
  if (s.size() > 2 && s.substr(s.size() - 2) == "ms") {
    scale = 1e-3;
    s.resize(s.size() - 2);
  } else if (!s.empty() && s.back() == 's') {
    s.pop_back();
  }
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  VLA_CHECK(used == s.size() && !s.empty() && v >= 0, "bad duration '", text,
            "' (expected e.g. 1.5s, 300ms or 0.3)");
  return v * scale;
}

using CommandAdder = std::function<void(CLI::App& app)>;

inline std::vector<std::pair<int, CommandAdder>>& command_adders() {
  static std::vector<std::pair<int, CommandAdder>> adders;
  return adders;
}

// `order` sorts commands in --help (lower first).
inline bool register_command(int order, CommandAdder adder) {
  command_adders().emplace_back(order, std::move(adder));
  return true;
}

// Returns the subcommand `name` of `parent`, creating it when absent, so that several
// cmd_*.cpp files can add children to one group (e.g. `vla eval offline`, `vla eval closed-loop`).
inline CLI::App* get_or_add_subcommand(CLI::App& parent, const std::string& name,
                                       const std::string& description) {
  for (CLI::App* sub : parent.get_subcommands({})) {
    if (sub->get_name() == name) return sub;
  }
  CLI::App* sub = parent.add_subcommand(name, description);
  sub->require_subcommand(1);
  return sub;
}

// "0,4" -> {0, 4}: the `--use-views` list of train, cache and eval caption (empty -> {}).
inline std::vector<int> parse_views(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    if (tok.empty()) continue;
    try {
      out.push_back(std::stoi(tok));
    } catch (...) {
      throw Error(str_cat("--use-views: '", tok, "' is not a view index"));
    }
  }
  return out;
}

// --device, --vlm-backend and --fp8: where and how a policy's VLM runs (one definition for every
// command that loads a policy or a VLM; defaults from policy::VlmOptions).
inline void add_vlm_options(CLI::App* c, vla::policy::VlmOptions* o) {
  c->add_option("--device", o->device,
                "where the VLM runs: cpu | cuda | cuda:N (an action expert stays on the CPU)")
      ->capture_default_str();
  c->add_option(
       "--vlm-backend", o->backend,
       "reference (trainable LibTorch model, float32) | fast (fixed-shape executor: fused\n"
       "weights, CUDA graphs, bf16 on CUDA; inference only)")
      ->check(CLI::IsMember(vla::policy::vlm_backends()))
      ->capture_default_str();
  c->add_flag("--fp8", o->fp8,
              "with --vlm-backend fast on a GPU of compute capability >= 8.9: FP8 (e4m3) GEMMs\n"
              "for the qkv / gate|up / down projections (faster; moves the shipped VLM's\n"
              "features by ~9 %; docs/gpu.md). Off by default");
  CLI::Option* fp8_static = c->add_flag(
      "--fp8-static", o->fp8_static,
      "with --fp8: one static scale per activation, calibrated on the first frames the\n"
      "VLM encodes (faster tensor-wise GEMMs; docs/gpu.md)");
  // Given explicitly, the choice needs static scales (VlmOptions::validate cannot tell an explicit
  // `vision` from the default).
  c->add_option("--fp8-out-proj", o->fp8_output_projections,
                "with --fp8-static: which attention output projections run in FP8 too: none,\n"
                "vision (the vision tower's: 0.5 ms faster at 5 views on an H200, no measurable\n"
                "loss of task success), decoder (the LLM's: the shipped policy then succeeds\n"
                "less often) or all (docs/gpu.md)")
      ->check(CLI::IsMember(vla::gpu::fp8_output_projection_names()))
      ->needs(fp8_static)
      ->capture_default_str();
}

// --vlm-layers K: features from the first K decoder layers of the VLM's LLM (0 = all; one
// definition for every command that makes features: PolicyConfig::vlm_layers).
inline void add_vlm_layers_option(CLI::App* c, int* layers) {
  c->add_option("--vlm-layers", *layers,
                "VL features from the first K decoder layers of the VLM's LLM, final norm\n"
                "applied (a middle layer, as GR00T N1; the prefill stops there: faster). 0 = all")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

// SIGINT / SIGTERM (Ctrl-C, `timeout`, a job scheduler) set flag() while an instance lives, so a
// long command can stop at a safe point and keep its work; the previous handlers come back after.
class StopSignals {
 public:
  StopSignals() {
    flag().store(false);
    prev_int_ = std::signal(SIGINT, on_signal);
    prev_term_ = std::signal(SIGTERM, on_signal);
  }
  ~StopSignals() {
    std::signal(SIGINT, prev_int_);
    std::signal(SIGTERM, prev_term_);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  static std::atomic<bool>& flag() {
    static std::atomic<bool> f{false};
    return f;
  }

 private:
  static void on_signal(int) { flag().store(true); }
  void (*prev_int_)(int) = SIG_DFL;
  void (*prev_term_)(int) = SIG_DFL;
};

}  // namespace vla::cli

#define VLA_CONCAT_INNER(a, b) a##b
#define VLA_CONCAT(a, b) VLA_CONCAT_INNER(a, b)
#define VLA_REGISTER_COMMAND(order, fn) \
  static const bool VLA_CONCAT(vla_registered_, __LINE__) = ::vla::cli::register_command(order, fn)
