// `vla info`: what this build contains.
#include "command.h"
#include "core/core.h"

namespace {
void add_info(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("info", "Print build information (torch version, devices, threads)");
  cmd->callback([] {
    std::printf("dualrate %s\n%s\nintra-op threads: %d\n", "0.1.0", vla::torch_build_info().c_str(),
                at::get_num_threads());
  });
}
}  // namespace

VLA_REGISTER_COMMAND(900, add_info);
