// vla: the single command-line entry point of dualrate.
#include <execinfo.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>

#include "command.h"
#include "core/core.h"

namespace {

// A crash prints where it happened (glibc backtrace; names need the executable's exported
// symbols, see CMakeLists.txt), then dies of the same signal so exit codes and core dumps stay.
extern "C" void on_fatal_signal(int sig) {
  static const char msg[] = "\nvla: fatal signal; stack (addr2line -Cfe vla ADDRESS for lines):\n";
  (void)!::write(STDERR_FILENO, msg, sizeof(msg) - 1);
  void* frames[64];
  const int n = ::backtrace(frames, 64);
  ::backtrace_symbols_fd(frames, n, STDERR_FILENO);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void install_crash_handler() {
  void* warm[1];
  ::backtrace(warm, 1);  // loads libgcc's unwinder now, not inside the handler
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) std::signal(sig, on_fatal_signal);
}

}  // namespace

int main(int argc, char** argv) {
  install_crash_handler();
  CLI::App app{
      "dualrate - run and train vision-language-action robot policies in real time.\n"
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
