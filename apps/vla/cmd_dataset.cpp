// `vla datacheck`: validate a dataset folder completely and summarise it.
#include <cstdio>
#include <map>

#include "command.h"
#include "core/core.h"
#include "dataset/dataset.h"

namespace {

// `vla datacheck`: validate a dataset folder completely and summarise it.
void run_datacheck(const std::string& dir, bool frames, const std::string& json) {
  vla::dataset::Dataset ds = vla::dataset::Dataset::open(dir);
  VLA_CHECK(ds.size() > 0, "dataset ", dir, " has no episodes");
  std::map<std::string, int> reasons;
  int64_t ticks = 0, force = 0, actions = 0, images = 0;
  std::vector<double> durations;
  vla::ProgressBar bar("datacheck", static_cast<int64_t>(ds.size()));
  for (size_t i = 0; i < ds.size(); ++i) {
    vla::dataset::Episode ep = ds.load(i, frames);
    reasons[ep.reason]++;
    ticks += ep.num_ticks;
    force += ep.force.size(0);
    actions += ep.actions.size(0);
    for (const auto& t : ep.frames) images += static_cast<int64_t>(t.size());
    durations.push_back(ep.duration_s);
    bar.tick();
  }
  bar.finish();
  const double rate = static_cast<double>(reasons["success"]) / static_cast<double>(ds.size());
  vla::Table table({"metric", "value"});
  table.add_row({"episodes", std::to_string(ds.size())});
  table.add_row({"success rate", vla::fmt_double(100.0 * rate, 1) + " %"});
  for (const auto& [r, n] : reasons) table.add_row({"reason: " + r, std::to_string(n)});
  table.add_row({"10 Hz ticks", std::to_string(ticks)});
  table.add_row({"force samples (650 Hz)", std::to_string(force)});
  table.add_row({"actions (80 Hz)", std::to_string(actions)});
  table.add_row({"frames decoded", frames ? std::to_string(images) : "skipped"});
  table.add_row({"mean duration (s)", vla::fmt_double(vla::mean(durations), 2)});
  table.print();
  if (!json.empty()) {
    vla::write_json_atomic(json, {{"episodes", ds.size()},
                                  {"success_rate", rate},
                                  {"reasons", reasons},
                                  {"ticks", ticks},
                                  {"force_samples", force},
                                  {"actions", actions},
                                  {"frames", images},
                                  {"valid", true}});
  }
}

void add_datacheck(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto json = std::make_shared<std::string>();
  auto no_frames = std::make_shared<bool>(false);
  auto* c = app.add_subcommand(
      "datacheck",
      "Validate a dataset folder written by `vla datagen` (index, meta.json, byte counts,\n"
      "timestamps, every frame decoded) and print a summary; exits 1 naming the bad file.");
  c->add_option("--data", *dir, "dataset folder")->required();
  c->add_flag("--no-frames", *no_frames, "skip decoding frames (only check that they exist)");
  c->add_option("--json", *json, "write the summary as JSON to FILE");
  c->callback([dir, json, no_frames] { run_datacheck(*dir, !*no_frames, *json); });
}

}  // namespace

VLA_REGISTER_COMMAND(22, add_datacheck);
