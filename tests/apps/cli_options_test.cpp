// The `vla` command line as a user meets it: contradicting or unknown VLM options are refused
// before anything loads, with a message that names the option (apps/vla/command.h).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace {

struct Result {
  int status = -1;
  std::string output;  // stdout and stderr
};

// Runs `vla <args>` through the shell and collects what it prints.
Result run_vla(const std::string& args) {
  Result r;
  FILE* p = ::popen((std::string(VLA_BINARY) + " " + args + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

}  // namespace

// --fp8-out-proj: its choices and default in --help; given without --fp8-static, or with a value
// that is not a choice, the command stops at once with the reason.
TEST(CliVlmOptions, Fp8OutputProjectionsAreCheckedBeforeAnythingRuns) {
  const Result help = run_vla("features --help");
  EXPECT_EQ(help.status, 0) << help.output;
  EXPECT_NE(help.output.find("--fp8-out-proj TEXT:{none,vision,decoder,all}=vision"),
            std::string::npos)
      << help.output;

  // Everything `features` requires is given (and never read: the command stops at the option).
  const std::string features = std::string("features --model ") + VLA_SOURCE_DIR +
                               "/assets/policy/vlm_init --out /nonexistent/f.safetensors";
  const Result no_static = run_vla(features + " --vlm-backend fast --fp8 --fp8-out-proj vision");
  EXPECT_NE(no_static.status, 0);
  EXPECT_NE(no_static.output.find("--fp8-out-proj requires --fp8-static"), std::string::npos)
      << no_static.output;

  const Result unknown =
      run_vla(features + " --vlm-backend fast --fp8 --fp8-static --fp8-out-proj both");
  EXPECT_NE(unknown.status, 0);
  EXPECT_NE(unknown.output.find("both not in {none,vision,decoder,all}"), std::string::npos)
      << unknown.output;
}
