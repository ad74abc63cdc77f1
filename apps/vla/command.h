// Subcommand registry for the `vla` CLI. Each apps/vla/cmd_<name>.cpp adds its subcommands with
// VLA_REGISTER_COMMAND so main.cpp never needs editing when a command is added.
#pragma once

#include <functional>
#include <vector>

#include <CLI/CLI.hpp>

namespace vla::cli {

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

}  // namespace vla::cli

#define VLA_CONCAT_INNER(a, b) a##b
#define VLA_CONCAT(a, b) VLA_CONCAT_INNER(a, b)
#define VLA_REGISTER_COMMAND(order, fn) \
  static const bool VLA_CONCAT(vla_registered_, __LINE__) = ::vla::cli::register_command(order, fn)
