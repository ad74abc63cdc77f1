// vla: the single command-line entry point of vla.cpp.
#include <algorithm>
#include <csignal>
#include <cstdio>

#include "command.h"
#include "core/core.h"

int main(int argc, char** argv) {
  CLI::App app{
      "vla.cpp - run and train vision-language-action robot policies in real time.\n"
      "A slow VLM (Qwen2.5-VL) runs in its own thread; a fast action expert turns the newest VL\n"
      "features and a 650 Hz force stream into 8-action chunks at a fixed rate.\n"
      "Run `vla <command> --help` for the options of one command.",
      "vla"};
  app.require_subcommand(1);
  app.fallthrough();
  int threads = 0;
  std::string log_level = "info";
  app.add_option("--threads", threads,
                 "LibTorch intra-op threads (default: all cores, or $VLA_THREADS)");
  app.add_option("--log-level", log_level, "debug | info | warn | error | off")
      ->check(CLI::IsMember({"debug", "info", "warn", "error", "off"}));
  app.parse_complete_callback([&] {
    vla::set_log_level(vla::parse_log_level(log_level));
    vla::configure_torch_threads(threads);
  });

  auto adders = vla::cli::command_adders();
  std::stable_sort(adders.begin(), adders.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [order, add] : adders) add(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const vla::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
