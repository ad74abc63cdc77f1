// Helpers shared by the libFuzzer harnesses (fuzz/*_fuzz.cpp). Each harness feeds arbitrary bytes
// to one parser: a vla::Error is the expected answer to bad input; any other exception, a crash,
// a leak or undefined behaviour (ASan + UBSan) is a bug that libFuzzer reports.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/core.h"

namespace vla::fuzz {

// A per-process scratch folder (in /dev/shm when it exists: no disk writes per execution).
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const std::string base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp";
    auto d = base + "/vla_fuzz_" + std::to_string(::getpid());
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

// Where the project's shipped assets are (for a real tokenizer); set at build time.
inline std::string source_dir() {
  const char* env = std::getenv("VLA_SOURCE_DIR");
  return env ? env : VLA_SOURCE_DIR;
}

}  // namespace vla::fuzz
