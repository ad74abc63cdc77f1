// `vla eval offline` (action MAE/MSE of a policy on recorded episodes) and `vla eval caption`
// (caption METEOR / BLEU-4 of a VLM on ground-truth scene captions).
#include <map>

#include "command.h"
#include "core/core.h"
#include "eval/eval.h"
#include "train/train.h"

namespace {

std::vector<size_t> pick_episodes(const vla::dataset::Dataset& ds, double holdout, int max_eps) {
  std::vector<size_t> tr, ho;
  vla::train::split_episodes(ds.size(), holdout, &tr, &ho);
  std::vector<size_t> eps = holdout > 0 ? ho : tr;
  if (max_eps > 0 && static_cast<int>(eps.size()) > max_eps) eps.resize(max_eps);
  VLA_CHECK(!eps.empty(), "eval: no episodes selected from ", ds.dir());
  return eps;
}

void add_offline(CLI::App& app) {
  auto* eval = vla::cli::get_or_add_subcommand(app, "eval", "Evaluate policies and VLMs");
  auto pol = std::make_shared<std::string>("default"), ds = std::make_shared<std::string>(),
       json = std::make_shared<std::string>();
  auto holdout = std::make_shared<double>(0.1);
  auto max_eps = std::make_shared<int>(0);
  auto* c = eval->add_subcommand(
      "offline",
      "Action error of a policy on recorded episodes: for every 10 Hz tick the policy encodes\n"
      "the recorded views + instruction with its VLM (no cache) and predicts a chunk from the\n"
      "recorded force window and proprio; MAE / MSE per action dimension (m) vs the expert.");
  c->add_option("--policy", *pol, "policy folder or 'default'")->capture_default_str();
  c->add_option("--dataset", *ds, "dataset folder")->required();
  c->add_option("--holdout", *holdout,
                "evaluate the last ceil(f * N) episodes (the training split's held-out part); "
                "0 = all episodes")
      ->check(CLI::Range(0.0, 0.9))
      ->capture_default_str();
  c->add_option("--episodes", *max_eps, "at most this many episodes (0 = all selected)")
      ->check(CLI::Range(0, 100000000))
      ->capture_default_str();
  c->add_option("--json", *json, "write the metrics as JSON");
  auto vo = std::make_shared<vla::policy::VlmOptions>();
  vla::cli::add_vlm_options(c, vo.get());
  c->callback([=] {
    auto p = vla::policy::Policy::load(*pol, *vo);
    auto d = vla::dataset::Dataset::open(*ds);
    auto eps = pick_episodes(d, *holdout, *max_eps);
    vla::eval::ActionErrors err(3);
    vla::ProgressBar bar("eval offline", static_cast<int64_t>(eps.size()));
    for (size_t i : eps) {
      auto ep = d.load(i, true);
      auto tk = vla::train::cut_ticks(ep, p->sensor_window(), p->horizon());
      torch::Tensor first;  // scene memory: the episode's first features
      for (int t = 0; t < tk.num_ticks; ++t) {
        auto vl = p->encode(ep.frames[t], ep.instruction);
        if (t == 0) first = vl;
        vl = p->expert_features(first, vl);
        auto a = p->act(vl, tk.force[t], tk.proprio[t]);
        int64_t valid = std::min<int64_t>(p->horizon(), ep.actions.size(0) - 8LL * t);
        err.add(a.narrow(0, 0, valid), tk.actions[t].narrow(0, 0, valid));
      }
      bar.tick();
    }
    bar.finish();
    vla::Table t({"dim", "MAE (mm)", "MSE (mm^2)"});
    const char* names[] = {"dx", "dy", "dz"};
    for (int k = 0; k < 3; ++k)
      t.add_row({names[k], vla::fmt_double(err.mae()[k] * 1e3, 4),
                 vla::fmt_double(err.mse()[k] * 1e6, 5)});
    t.print();
    auto j = err.to_json();
    j["episodes"] = eps.size();
    j["policy"] = p->info().value("dir", *pol);
    j["dataset"] = *ds;
    j["units"] = "m per action (80 Hz)";
    if (!json->empty()) vla::write_json_atomic(*json, j);
  });
}

void add_caption_eval(CLI::App& app) {
  auto* eval = vla::cli::get_or_add_subcommand(app, "eval", "Evaluate policies and VLMs");
  auto vlm = std::make_shared<std::string>(), ds = std::make_shared<std::string>(),
       json = std::make_shared<std::string>(), views = std::make_shared<std::string>();
  auto holdout = std::make_shared<double>(0.1);
  auto max_eps = std::make_shared<int>(10);
  auto max_tokens = std::make_shared<int>(96);
  auto* c = eval->add_subcommand(
      "caption",
      "Caption METEOR (Banerjee & Lavie 2005, exact matching) and corpus BLEU-4 of a VLM on\n"
      "held-out episodes: greedy captions of the first and middle tick vs the ground-truth\n"
      "scene captions (English and Korean prompts).");
  c->add_option("--vlm", *vlm, "VLM folder, or a policy folder (uses its vlm/)")->required();
  c->add_option("--dataset", *ds, "dataset folder")->required();
  c->add_option("--holdout", *holdout, "evaluate the last ceil(f * N) episodes (0 = all)")
      ->check(CLI::Range(0.0, 0.9))
      ->capture_default_str();
  c->add_option("--episodes", *max_eps, "at most this many episodes")
      ->check(CLI::Range(0, 100000000))
      ->capture_default_str();
  c->add_option("--use-views", *views, "comma-separated view indices given to the VLM");
  c->add_option("--max-new-tokens", *max_tokens, "caption length limit")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  c->add_option("--json", *json, "write the metrics as JSON");
  auto vo = std::make_shared<vla::policy::VlmOptions>();
  vla::cli::add_vlm_options(c, vo.get());
  c->callback([=] {
    vla::policy::PolicyConfig pc;
    std::string dir = *vlm;
    if (vla::file_exists(dir + "/policy.json")) {
      pc = vla::policy::PolicyConfig::from_json(vla::read_json(dir + "/policy.json")["config"]);
      dir += "/vlm";
    }
    if (!views->empty()) pc.use_views = vla::cli::parse_views(*views);
    auto enc = vla::policy::load_vlm(dir, pc, *vo);
    auto d = vla::dataset::Dataset::open(*ds);
    auto eps = pick_episodes(d, *holdout, *max_eps);
    nlohmann::json out;
    vla::Table t({"language", "METEOR", "BLEU-4", "captions"});
    for (std::string lang : {"en", "ko"}) {
      std::vector<vla::eval::Tokens> hyps;
      std::vector<std::vector<vla::eval::Tokens>> refs;
      nlohmann::json ex = nlohmann::json::array();
      for (size_t i : eps) {
        auto ep = d.load(i, true);
        for (int tick : {0, ep.num_ticks / 2}) {
          auto h = enc->caption(ep.frames[tick], vla::train::caption_prompt(lang), *max_tokens);
          auto r = vla::train::scene_caption(ep, tick, lang);
          hyps.push_back(vla::eval::tokenize(h));
          refs.push_back({vla::eval::tokenize(r)});
          if (ex.size() < 3) ex.push_back({{"hyp", h}, {"ref", r}});
        }
      }
      double m = vla::eval::corpus_meteor(hyps, refs), b = vla::eval::corpus_bleu(hyps, refs);
      out[lang] = {{"meteor", m}, {"bleu4", b}, {"captions", hyps.size()}, {"examples", ex}};
      t.add_row({lang, vla::fmt_double(m, 4), vla::fmt_double(b, 4), std::to_string(hyps.size())});
    }
    t.print();
    out["episodes"] = eps.size();
    out["vlm"] = dir;
    if (!json->empty()) vla::write_json_atomic(*json, out);
  });
}

}  // namespace

VLA_REGISTER_COMMAND(60, add_offline);
VLA_REGISTER_COMMAND(61, add_caption_eval);
