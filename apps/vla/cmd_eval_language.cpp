// `vla eval language`: the language ablation in closed loop. Built with the simulator.
#include <map>

#include "closed_loop/closed_loop.h"
#include "command.h"
#include "core/core.h"

namespace {

// Language ablation: the instruction names a port other than the one the seed would pick.
void add_language_eval(CLI::App& app) {
  auto* eval = vla::cli::get_or_add_subcommand(app, "eval", "Evaluate policies and VLMs");
  auto pol = std::make_shared<std::string>("default"), json = std::make_shared<std::string>();
  auto episodes = std::make_shared<int>(50);
  auto seed = std::make_shared<uint64_t>(2000);
  auto* c = eval->add_subcommand(
      "language",
      "Language ablation in closed loop (synchronous: fresh VL features every tick): episode i\n"
      "uses seed+i but the instruction names a different port than that seed's default target;\n"
      "success is measured against the instruction. Also counts episodes that went to the\n"
      "seed's default port instead (= the policy ignored the instruction).");
  c->add_option("--policy", *pol, "policy folder or 'default'")->capture_default_str();
  c->add_option("--episodes", *episodes, "episodes")
      ->check(CLI::Range(0, 100000000))
      ->capture_default_str();
  c->add_option("--seed", *seed, "first seed")->capture_default_str();
  c->add_option("--json", *json, "write the metrics as JSON");
  auto vo = std::make_shared<vla::policy::VlmOptions>();
  vla::cli::add_vlm_options(c, vo.get());
  c->callback([=] {
    auto p = vla::policy::Policy::load(*pol, *vo);
    vla::sim::EnvConfig ec;
    ec.num_views = p->num_views();
    ec.width = p->image_width();
    ec.height = p->image_height();
    vla::sim::NeedleEnv env(ec);
    auto fns = vla::runtime::policy_fns(p);
    vla::runtime::RuntimeConfig rt;
    rt.vlm_latency_s = 0.0;
    int ok = 0, to_default = 0;
    std::map<std::string, int> reasons;
    vla::ProgressBar bar("language ablation", *episodes);
    for (int i = 0; i < *episodes; ++i) {
      env.reset(*seed + i);
      const int n = static_cast<int>(env.scene().ports.size());
      const int def = env.scene().target;
      const int other = (def + 1 + i % (n - 1)) % n;
      env.reset(*seed + i, other);
      vla::closed_loop::SimPlant plant(env);
      auto r = vla::runtime::run_sim_time(plant, fns, rt);
      ok += r.outcome.success;
      reasons[r.outcome.reason]++;
      if (env.scene().inserted_port == def) ++to_default;
      bar.tick(1, vla::str_cat("success ", ok, "/", i + 1));
    }
    bar.finish();
    vla::Table t({"metric", "value"});
    t.add_row({"episodes", std::to_string(*episodes)});
    t.add_row({"success (named port)", vla::fmt_double(100.0 * ok / *episodes, 1) + " %"});
    t.add_row({"went to the seed's default port", std::to_string(to_default)});
    for (auto& [k, v] : reasons) t.add_row({"reason: " + k, std::to_string(v)});
    t.print();
    nlohmann::json j = {{"episodes", *episodes},
                        {"success_rate", static_cast<double>(ok) / *episodes},
                        {"went_to_default_port", to_default},
                        {"reasons", reasons},
                        {"seed", *seed},
                        {"policy", p->info().value("dir", *pol)}};
    if (!json->empty()) vla::write_json_atomic(*json, j);
  });
}
}  // namespace

VLA_REGISTER_COMMAND(62, add_language_eval);
