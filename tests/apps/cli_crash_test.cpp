// "Nothing lost": the real `vla` process is killed with SIGKILL at random points while it writes
// (datagen, a training checkpoint, the VL feature cache); afterwards what is on disk validates and
// the same command continues from it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/core.h"
#include "dataset/dataset.h"
#include "train/train.h"

extern char** environ;

namespace {

using Args = std::vector<std::string>;

std::string scratch(const std::string& name) {
  const std::string d = vla::str_cat("/tmp/vla_cli_crash_", name, "_", ::getpid());
  vla::remove_tree(d);
  vla::make_dirs(d);
  return d;
}

// Starts `vla args...` with stdout/stderr appended to `log`; returns its pid.
pid_t spawn_vla(const Args& args, const std::string& log) {
  std::vector<std::string> all = {VLA_BINARY, "--threads", "1"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw vla::Error(vla::str_cat("cannot start ", VLA_BINARY, ": ", rc));
  return pid;
}

// Runs to completion; returns the exit status (-signal when killed by a signal).
int run_vla(const Args& args, const std::string& log) {
  const pid_t pid = spawn_vla(args, log);
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

// Runs and SIGKILLs it after `ms` milliseconds; true when the kill landed before it exited.
bool run_and_kill(const Args& args, const std::string& log, int ms) {
  const pid_t pid = spawn_vla(args, log);
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  ::kill(pid, SIGKILL);
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL;
}

std::string vlm_init() { return std::string(VLA_SOURCE_DIR) + "/assets/policy/vlm_init"; }

Args datagen(const std::string& out, int episodes, uint64_t seed) {
  return {"datagen",
          "--episodes",
          std::to_string(episodes),
          "--seed",
          std::to_string(seed),
          "--views",
          "1",
          "--res",
          "64x64",
          "--jobs",
          "1",
          "--out",
          out};
}

}  // namespace

TEST(KillNine, DatagenLeavesAValidDatasetThatAppends) {
  const std::string dir = scratch("datagen"), log = dir + "/log.txt", ds = dir + "/ds";
  std::mt19937 rng(7);
  size_t before = 0;
  int landed = 0;
  for (int round = 0; round < 4; ++round) {
    const int ms = std::uniform_int_distribution<int>(300, 2500)(rng);
    landed += run_and_kill(datagen(ds, 500, 1000 * round), log, ms);
    if (!vla::file_exists(ds + "/index.json")) continue;  // killed before the first index
    ASSERT_EQ(run_vla({"datacheck", "--data", ds}, log), 0)
        << "round " << round << " (killed after " << ms << " ms): see " << log;
    const size_t n = vla::dataset::Dataset::open(ds).size();
    EXPECT_GE(n, before) << "episodes were lost";
    before = n;
  }
  EXPECT_GE(landed, 3) << "the kills should land while datagen runs";
  // The same command appends after what survived, and the result validates.
  ASSERT_EQ(run_vla(datagen(ds, 2, 9000), log), 0);
  ASSERT_EQ(run_vla({"datacheck", "--data", ds}, log), 0);
  // At least the 2 new ones: reopening for append also recovers episodes that were complete on
  // disk but not yet in the index when the kill landed.
  EXPECT_GE(vla::dataset::Dataset::open(ds).size(), before + 2);
  vla::remove_tree(dir);
}

TEST(KillNine, CacheAndTrainingResumeFromWhatSurvived) {
  const std::string dir = scratch("train"), log = dir + "/log.txt";
  const std::string ds = dir + "/ds", cache = dir + "/cache", out = dir + "/policy";
  const std::string vlm = dir + "/vlm";
  ASSERT_EQ(run_vla(datagen(ds, 30, 0), log), 0);
  std::mt19937 rng(11);
  // A VLM with weights on disk (one caption step from the config-only init), so that the cache and
  // the trainer see the same VLM.
  ASSERT_EQ(run_vla({"train", "--stage", "caption", "--dataset", ds, "--vlm", vlm_init(),
                     "--use-views", "0", "--steps", "1", "--batch", "2", "--out", vlm},
                    log),
            0)
      << "see " << log;

  // VL feature cache: killed, then the same command completes it.
  const Args cache_cmd = {"cache",       "--dataset", ds,      "--vlm", vlm,
                          "--use-views", "0",         "--out", cache};
  for (int round = 0; round < 2; ++round)
    run_and_kill(cache_cmd, log, std::uniform_int_distribution<int>(400, 1500)(rng));
  ASSERT_EQ(run_vla(cache_cmd, log), 0) << "see " << log;
  {
    auto c = vla::train::FeatureCache::open(cache);
    auto d = vla::dataset::Dataset::open(ds);
    EXPECT_NO_THROW(c.validate(d, c.vlm_fingerprint(), /*check_images=*/true));
  }

  // Stage 1 with a checkpoint every 2 steps: killed at random points, then --resume finishes.
  const Args train_cmd = {
      "train", "--stage",        "1",     "--dataset",   ds,        "--cache",
      cache,   "--vlm",          vlm,     "--use-views", "0",       "--head",
      "mlp",   "--steps",        "400",   "--batch",     "8",       "--checkpoint-every",
      "2",     "--all-episodes", "--out", out,           "--resume"};
  int resumed_from = 0;
  for (int round = 0; round < 3; ++round) {
    run_and_kill(train_cmd, log, std::uniform_int_distribution<int>(1500, 4000)(rng));
    // Whatever the kill interrupted, the checkpoint folder is absent or complete.
    const std::string ck = out + "/checkpoint/state.json";
    if (vla::file_exists(ck)) {
      const int step = vla::read_json(ck).at("step").get<int>();
      EXPECT_GE(step, resumed_from) << "a checkpoint went backwards";
      resumed_from = step;
    }
  }
  EXPECT_GT(resumed_from, 0) << "no checkpoint survived three kills; see " << log;
  ASSERT_EQ(run_vla(train_cmd, log), 0) << "see " << log;
  EXPECT_TRUE(vla::file_exists(out + "/policy.safetensors"));
  const std::string text = vla::read_file(log);
  EXPECT_NE(text.find("resumed from"), std::string::npos) << "the last run did not resume";
  vla::remove_tree(dir);
}
