// `vla train` (stage 1 / stage 2 / caption pre-training) and `vla cache` (VL feature cache).
#include "command.h"
#include "core/core.h"
#include "train/train.h"

namespace {

void add_train(CLI::App& app) {
  auto o = std::make_shared<vla::train::TrainOptions>();
  auto views = std::make_shared<std::string>();
  auto json = std::make_shared<std::string>();
  auto* c = app.add_subcommand(
      "train",
      "Train a policy or pre-train its VLM on a dataset from `vla datagen`.\n"
      "  --stage 1        VLM frozen: sensor encoder + action expert on cached VL features\n"
      "                   (--cache from `vla cache`, --vlm = the VLM the cache was made with)\n"
      "  --stage 2        VLM adapted too (LoRA merged at the end, or full fine-tune), starting\n"
      "                   from --init STAGE1_POLICY\n"
      "  --stage caption  caption pre-training of --vlm (a Qwen2.5-VL folder; a config-only\n"
      "                   folder is randomly initialised) on ground-truth scene captions\n"
      "                   (English + Korean); writes the VLM folder to --out and reports\n"
      "                   METEOR / BLEU-4 on held-out episodes.\n"
      "  --stage grounding  like caption, but the prompt is the episode's instruction and the\n"
      "                   answer starts with the location token of the instructed port\n"
      "                   (<loc_NNNN>, 2 mm grid; soft target, --location-sigma) - the token\n"
      "                   the policy's VL feature (the prompt's last token) has to predict.\n"
      "                   Needs a VLM folder with location tokens (scripts/make_vlm_init.py);\n"
      "                   reports the greedy location error (mm) on held-out episodes.\n"
      "Writes OUT/ (policy.json + policy.safetensors + vlm/, or the VLM), OUT/loss.png,\n"
      "OUT/train_report.json; resumable checkpoints in OUT/checkpoint (--resume).");
  c->add_option("--stage", o->stage, "1 | 2 | caption | grounding")
      ->check(CLI::IsMember({"1", "2", "caption", "grounding"}))
      ->capture_default_str();
  c->add_option("--location-sigma", o->location_sigma,
                "grounding: std (m) of the location token's Gaussian soft target")
      ->check(CLI::Range(1e-4, 0.02))
      ->capture_default_str();
  c->add_option("--location-sigma-start", o->location_sigma_start,
                "grounding: initial std (m), narrowed linearly to --location-sigma over the "
                "first half of the steps")
      ->check(CLI::Range(1e-4, 0.1))
      ->capture_default_str();
  c->add_option("--dataset", o->dataset, "dataset folder (vla datagen)")->required();
  c->add_option("--out", o->out, "output folder")->required();
  c->add_option("--cache", o->cache, "stage 1: VL feature cache folder (vla cache)");
  c->add_option("--vlm", o->vlm, "VLM folder (stage 1: attached to the policy; caption: init)");
  c->add_option("--init", o->init_policy, "stage 2: stage-1 policy folder to start from");
  c->add_option("--steps", o->steps, "optimizer steps")
      ->check(CLI::Range(1, 100000000))
      ->capture_default_str();
  c->add_option("--batch", o->batch, "batch size")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  c->add_option("--warmup", o->warmup, "linear LR warmup steps (then cosine decay)")
      ->check(CLI::Range(0, 100000000))
      ->capture_default_str();
  c->add_option("--lr-sensor", o->lr_sensor, "LR of the sensor encoder")
      ->check(CLI::Range(0.0, 10.0))
      ->capture_default_str();
  c->add_option("--lr-action", o->lr_action, "LR of the action expert")
      ->check(CLI::Range(0.0, 10.0))
      ->capture_default_str();
  c->add_option("--lr-vl", o->lr_vl, "LR of the VLM (stage 2 / caption)")
      ->check(CLI::Range(0.0, 10.0))
      ->capture_default_str();
  c->add_option("--lr-min", o->lr_min_factor, "final LR as a fraction of the peak")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  c->add_option("--weight-decay", o->weight_decay, "AdamW weight decay")
      ->check(CLI::Range(0.0, 10.0))
      ->capture_default_str();
  c->add_option("--grad-clip", o->grad_clip, "max global grad norm (0 = off)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  c->add_option("--vlm-reuse-count", o->reuse_count,
                "pair the VL feature of tick t with ticks t..t+N-1 (N = 1: fresh only)")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  c->add_flag("--random-staleness", o->random_staleness,
              "draw the staleness of each sample uniformly from 0..N-1 instead of the fixed "
              "reuse pairs");
  c->add_option("--holdout", o->holdout, "fraction of episodes held out (the last ones)")
      ->check(CLI::Range(0.0, 0.9))
      ->capture_default_str();
  c->add_option("--max-episodes", o->max_episodes, "use at most N episodes (0 = all)")
      ->check(CLI::Range(0, 100000000))
      ->capture_default_str();
  auto all_eps = std::make_shared<bool>(false);
  c->add_flag("--all-episodes", *all_eps,
              "train on failed episodes too (DAgger rollouts: their labels are the expert's)");
  c->add_option("--head", o->policy.head, "expert head: flow | mlp")->capture_default_str();
  c->add_option("--d-model", o->policy.d_model, "expert width")
      ->check(CLI::Range(8, 8192))
      ->capture_default_str();
  c->add_option("--layers", o->policy.layers, "expert layers")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  c->add_option("--ff-dim", o->policy.ff_dim, "expert feed-forward width")
      ->check(CLI::Range(8, 65536))
      ->capture_default_str();
  c->add_option("--flow-steps", o->policy.flow_steps, "flow-matching integration steps")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  c->add_option("--sensor-window", o->policy.sensor_window, "force samples per window (650 Hz)")
      ->check(CLI::Range(1, 2048))
      ->capture_default_str();
  c->add_option("--dropout", o->policy.dropout, "expert dropout")
      ->check(CLI::Range(0.0, 0.95))
      ->capture_default_str();
  c->add_option("--vl-dropout", o->policy.vl_dropout,
                "probability of zeroing a sample's VL features")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  c->add_option("--pooling", o->policy.pooling,
                "VLM feature pooling: last | mean | tokens (image tokens + last token)")
      ->capture_default_str();
  c->add_option("--use-views", *views,
                "comma-separated view indices given to the VLM (default: all recorded)");
  c->add_option("--vl-memory", o->policy.vl_memory,
                "stage 1: none | first (the expert also sees the episode's first VL features, "
                "before the arm hides anything; docs/training.md)")
      ->check(CLI::IsMember({"none", "first"}))
      ->capture_default_str();
  c->add_option("--prompt-order", o->policy.prompt_order,
                "VLM prompt: images_first | text_first (instruction before the views)")
      ->capture_default_str();
  vla::cli::add_vlm_layers_option(c, &o->policy.vlm_layers);
  c->add_option("--locate-weight", o->locate_weight,
                "grounding: weight of the localisation head (linear map from the pooled "
                "features to the named port's x/y; 0 = off)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  c->add_option("--dense-weight", o->dense_weight,
                "grounding: weight of the dense per-token target (each image token of the first "
                "view says how much of the named port / each colour's port lies at its centre; "
                "needs --pooling tokens and pixel labels from `vla datagen`; 0 = off)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  c->add_option("--caption-weight", o->caption_weight,
                "grounding: weight of the location-token + caption loss (0 = skip it)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  c->add_option("--finetune", o->finetune, "stage 2: lora | full")->capture_default_str();
  c->add_option("--lora-rank", o->lora_rank, "LoRA rank")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  c->add_option("--lora-alpha", o->lora_alpha, "LoRA alpha")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  c->add_option("--lora-targets", o->lora_targets, "LoRA target layer names")
      ->delimiter(',')
      ->capture_default_str();
  c->add_option("--checkpoint-every", o->checkpoint_every, "steps between resumable checkpoints")
      ->check(CLI::Range(0, 100000000))
      ->capture_default_str();
  c->add_flag("--resume", o->resume, "continue from OUT/checkpoint (bit-exact on CPU)");
  c->add_option("--seed", o->seed, "seed (init, batches, noise)")->capture_default_str();
  c->add_option("--threads", o->threads, "torch threads (0 = all cores)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  c->add_option("--eval-every", o->eval_every, "steps between held-out evaluations (0 = end)")
      ->check(CLI::Range(0, 100000000))
      ->capture_default_str();
  c->add_option("--device", o->device,
                "where training runs: cpu | cuda | cuda:N (inference and saved weights stay on "
                "the CPU)")
      ->capture_default_str();
  c->add_option("--json", *json, "write the training report as JSON");
  c->callback([o, views, json, all_eps] {
    o->policy.use_views = vla::cli::parse_views(*views);
    if (*all_eps) o->success_only = false;
    vla::cli::StopSignals stop;
    o->stop_requested = &vla::cli::StopSignals::flag();
    auto r = vla::train::train(*o);
    vla::Table t({"metric", "value"});
    t.add_row({"steps", std::to_string(r.steps)});
    t.add_row({"final loss (EMA)", vla::fmt_double(r.final_loss, 5)});
    t.add_row({"held-out loss", vla::fmt_double(r.holdout_loss, 5)});
    t.add_row({"samples/s", vla::fmt_double(r.samples_per_s, 1)});
    t.add_row({"seconds", vla::fmt_double(r.seconds, 1)});
    if (r.extra.contains("caption"))
      for (auto& [lang, m] : r.extra["caption"].items()) {
        t.add_row({"caption METEOR (" + lang + ")", vla::fmt_double(m["meteor"].get<double>(), 4)});
        t.add_row({"caption BLEU-4 (" + lang + ")", vla::fmt_double(m["bleu4"].get<double>(), 4)});
      }
    if (r.extra.contains("grounding")) {
      t.add_row({"held-out location error (mm)",
                 vla::fmt_double(r.extra["grounding"]["location_error_mm"].get<double>(), 2)});
      if (r.extra["grounding"].contains("locate_head_error_mm"))
        t.add_row({"held-out localisation head error (mm)",
                   vla::fmt_double(r.extra["grounding"]["locate_head_error_mm"].get<double>(), 2)});
      if (r.extra["grounding"].contains("dense_error_px"))
        t.add_row({"held-out dense head error (px)",
                   vla::fmt_double(r.extra["grounding"]["dense_error_px"].get<double>(), 2)});
    }
    t.print();
    if (!json->empty()) vla::write_json_atomic(*json, r.to_json());
  });
}

void add_cache(CLI::App& app) {
  auto ds = std::make_shared<std::string>(), vlm = std::make_shared<std::string>(),
       out = std::make_shared<std::string>(), views = std::make_shared<std::string>(),
       pooling = std::make_shared<std::string>("last");
  auto* c = app.add_subcommand(
      "cache",
      "Extract VL features of every (episode, 10 Hz tick) of a dataset once, for stage-1\n"
      "training. Keyed by VLM fingerprint + image content + prompt; `vla train` refuses a stale\n"
      "cache. Inference never uses it. Re-running skips episodes whose keys are unchanged.");
  c->add_option("--dataset", *ds, "dataset folder")->required();
  c->add_option("--vlm", *vlm, "VLM folder (Qwen2.5-VL)")->required();
  c->add_option("--out", *out, "cache folder")->required();
  c->add_option("--use-views", *views, "comma-separated view indices (default all)");
  c->add_option("--pooling", *pooling, "last | mean | tokens")->capture_default_str();
  auto order = std::make_shared<std::string>("images_first");
  c->add_option("--prompt-order", *order, "images_first | text_first")->capture_default_str();
  auto layers = std::make_shared<int>(0);
  vla::cli::add_vlm_layers_option(c, layers.get());
  auto vo = std::make_shared<vla::policy::VlmOptions>();
  vla::cli::add_vlm_options(c, vo.get());
  c->callback([=] {
    vla::policy::PolicyConfig pc;
    pc.use_views = vla::cli::parse_views(*views);
    pc.pooling = *pooling;
    pc.prompt_order = *order;
    pc.vlm_layers = *layers;
    auto d = vla::dataset::Dataset::open(*ds);
    auto enc = vla::policy::load_vlm(*vlm, pc, *vo);
    vla::Stopwatch sw;
    vla::train::FeatureCache::build(d, *enc, *out, true);
    std::printf("cache: %zu episodes -> %s (VLM %s) in %.1f s\n", d.size(), out->c_str(),
                enc->fingerprint().c_str(), sw.elapsed_s());
  });
}

void add_probe(CLI::App& app) {
  auto ds = std::make_shared<std::string>(), vlm = std::make_shared<std::string>(),
       views = std::make_shared<std::string>(), pooling = std::make_shared<std::string>("last"),
       json = std::make_shared<std::string>(), policy = std::make_shared<std::string>();
  auto max_eps = std::make_shared<int>(0);
  auto holdout = std::make_shared<double>(0.2);
  auto* eval = vla::cli::get_or_add_subcommand(app, "eval", "Evaluate policies and VLMs");
  auto* c = eval->add_subcommand(
      "probe",
      "Localisation probe: how well the instructed port's x/y (mm) can be read linearly from\n"
      "the VL features the expert receives. Features of the first frame of every episode;\n"
      "ridge regression fitted on the first episodes, error on the held-out last ones.\n"
      "Give --policy P (its VLM, pooling and views) or --vlm DIR with --pooling/--use-views.");
  c->add_option("--dataset", *ds, "dataset folder (e.g. `vla datagen --layout-ticks 1`)")
      ->required();
  c->add_option("--policy", *policy, "policy folder (or default / no_reuse)");
  c->add_option("--vlm", *vlm, "VLM folder (instead of --policy)");
  c->add_option("--use-views", *views, "with --vlm: comma-separated view indices");
  c->add_option("--pooling", *pooling, "with --vlm: last | mean | tokens")->capture_default_str();
  auto order = std::make_shared<std::string>("images_first");
  c->add_option("--prompt-order", *order, "with --vlm: images_first | text_first")
      ->capture_default_str();
  auto layers = std::make_shared<int>(0);
  c->add_option("--vlm-layers", *layers,
                "with --vlm: features of the first K decoder layers (0 = all)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--max-episodes", *max_eps, "use at most N episodes (0 = all)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--holdout", *holdout, "held-out fraction")
      ->check(CLI::Range(0.01, 0.9))
      ->capture_default_str();
  c->add_option("--json", *json, "write the report as JSON");
  auto vo = std::make_shared<vla::policy::VlmOptions>();
  vla::cli::add_vlm_options(c, vo.get());
  c->callback([=] {
    VLA_CHECK(policy->empty() != vlm->empty(), "probe: give exactly one of --policy / --vlm");
    std::shared_ptr<vla::policy::VlmEncoder> enc;
    std::shared_ptr<vla::policy::Policy> pol;
    if (!policy->empty()) {
      pol = vla::policy::Policy::load(*policy, *vo);
      enc = pol->vlm();
      VLA_CHECK(enc, "probe: policy ", *policy, " has no VLM");
    } else {
      vla::policy::PolicyConfig pc;
      pc.use_views = vla::cli::parse_views(*views);
      pc.pooling = *pooling;
      pc.prompt_order = *order;
      pc.vlm_layers = *layers;
      enc = vla::policy::load_vlm(*vlm, pc, *vo);
    }
    auto d = vla::dataset::Dataset::open(*ds);
    auto r = vla::train::localisation_probe(*enc, d, *max_eps, *holdout);
    vla::Table t({"localisation probe", "value"});
    t.add_row({"layouts train / held-out",
               std::to_string(r.train_layouts) + " / " + std::to_string(r.heldout_layouts)});
    t.add_row({"feature dim", std::to_string(r.feature_dim)});
    t.add_row({"ridge penalty", vla::fmt_double(r.ridge, 4)});
    t.add_row({"train error (mm)", vla::fmt_double(r.train_error_mm, 2)});
    t.add_row({"held-out error (mm)", vla::fmt_double(r.heldout_error_mm, 2)});
    t.add_row({"held-out |x| / |y| error (mm)",
               vla::fmt_double(r.heldout_x_mm, 2) + " / " + vla::fmt_double(r.heldout_y_mm, 2)});
    t.add_row({"mean predictor (mm)", vla::fmt_double(r.baseline_mm, 2)});
    t.print();
    if (!json->empty()) vla::write_json_atomic(*json, r.to_json());
  });
}

}  // namespace

VLA_REGISTER_COMMAND(40, add_train);
VLA_REGISTER_COMMAND(42, add_probe);
VLA_REGISTER_COMMAND(41, add_cache);
