// Tests of the GPU fast-path engine. The CPU tests run the same engine code in float32 with the
// ATen reference ops against the transformers fixtures (tests/fixtures/qwen25vl); the CUDA tests
// (skipped without a GPU) check the kernels against those references and the bf16 GPU path
// against the fp32 fixtures within bf16 tolerance.
#include "gpu/gpu.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "core/core.h"
#include "gpu/device.h"
#include "gpu/kernels.h"
#include "gpu/op_table.h"
#include "gpu/ops.h"
#include "models/models.h"
#include "weights/weights.h"

namespace vla::gpu {
namespace {

std::string fixture_dir() {
  const char* env = std::getenv("VLA_SOURCE_DIR");
  return std::string(env ? env : VLA_SOURCE_DIR) + "/tests/fixtures/qwen25vl";
}

using ops::rel_err;

struct Fixture {
  std::string name;  // tiny_a / tiny_b
  Qwen25VLConfig config;
  ImagePreprocessConfig image;
  std::shared_ptr<WeightStore> weights;
  std::shared_ptr<WeightStore> ref;
  WeightFn fn() const { return checkpoint_weights(*weights); }
  std::unique_ptr<Engine> engine(const EngineOptions& o) const {
    return std::make_unique<Engine>(config, image, fn(), o);
  }
};

Fixture load_fixture(const std::string& name) {
  Fixture f;
  f.name = name;
  const std::string dir = fixture_dir() + "/" + name;
  f.config = Qwen25VLConfig::load(dir);
  f.image = ImagePreprocessConfig::from_folder(dir);
  f.weights = std::make_shared<WeightStore>(WeightStore::open(dir));
  f.ref = std::make_shared<WeightStore>(
      WeightStore::open(fixture_dir() + "/ref_" + name.substr(5) + ".safetensors"));
  return f;
}

WeightStore& preprocess_store() {
  static WeightStore ws = WeightStore::open(fixture_dir() + "/preprocess.safetensors");
  return ws;
}

std::vector<int64_t> ids_of(const at::Tensor& t) {
  auto c = t.to(at::kLong).contiguous().view({-1});
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// pixel values of the images of a case, concatenated.
at::Tensor case_pixels(const std::vector<std::string>& imgs) {
  std::vector<at::Tensor> pv;
  for (const auto& i : imgs) pv.push_back(preprocess_store().get(i + ".pixel_values"));
  return at::cat(pv, 0);
}

const std::vector<std::string> kImages = {"img_a", "img_b", "img_c", "img_d", "img_e"};

// ------------------------------------------------------------------ CPU (CI) tests
// The executor reads exactly the tensors (names and shapes) of the model definition in
// src/models: a Qwen25VL module's parameters are the checkpoint's names.
TEST(GpuWeights, EngineReadsExactlyTheReferenceModelsTensors) {
  for (const std::string fx : {"tiny_a", "tiny_b"}) {
    Fixture f = load_fixture(fx);
    Qwen25VL model(f.config);
    std::map<std::string, std::vector<int64_t>> want, got;
    for (const auto& [name, t] : model->state_tensors()) want[name] = t.sizes().vec();
    auto fn = f.fn();
    Engine e(
        f.config, f.image,
        [&](const std::string& n, const std::vector<int64_t>& shape) {
          at::Tensor t = fn(n, shape);
          if (t.defined()) got[n] = shape;
          return t;
        },
        EngineOptions{});
    EXPECT_EQ(got, want) << fx;
  }
}

void check_pixel_values(const EngineOptions& opts) {
  Fixture f = load_fixture("tiny_a");
  const auto& meta = read_json(fixture_dir() + "/meta.json");
  f.image.min_pixels = meta["min_pixels"];
  f.image.max_pixels = meta["max_pixels"];
  Engine e(f.config, f.image, f.fn(), opts);
  for (const auto& name : kImages) {
    auto src = preprocess_store().get(name + ".uint8").contiguous();
    auto [pv, grid] = e.preprocess({src.data_ptr<uint8_t>()}, static_cast<int>(src.size(0)),
                                   static_cast<int>(src.size(1)));
    auto ref = preprocess_store().get(name + ".pixel_values");
    ASSERT_EQ(pv.sizes(), ref.sizes()) << name;
    EXPECT_TRUE(at::equal(grid.cpu(), preprocess_store().get(name + ".grid_thw"))) << name;
    const double maxdiff = (pv.cpu() - ref).abs().max().item<double>();
    EXPECT_LE(maxdiff, 1e-6) << name;
  }
}

TEST(GpuPreprocess, PixelValuesMatchTransformersOnCpu) { check_pixel_values(EngineOptions{}); }

struct CaseSpec {
  std::string name;
  std::vector<std::string> images;
};

// A fixture case's prompt ids and (for cases with images) pixel values and grid.
struct CaseInputs {
  std::vector<int64_t> ids;
  at::Tensor pixel_values, grid_thw;
};
CaseInputs case_inputs(const Fixture& f, const CaseSpec& c) {
  CaseInputs in;
  in.ids = ids_of(f.ref->get(c.name + ".input_ids"));
  if (!c.images.empty()) {
    in.pixel_values = case_pixels(c.images);
    in.grid_thw = f.ref->get(c.name + ".grid_thw");
  }
  return in;
}
const std::vector<CaseSpec> kCases = {
    {"one", {"img_a"}}, {"multi", {"img_b", "img_c", "img_e"}}, {"text", {}}};

// Runs the fixture cases through `opts` and checks vision output and last hidden states.
void check_model_parity(const std::string& fixture, const EngineOptions& opts, double vis_tol,
                        double hid_tol) {
  Fixture f = load_fixture(fixture);
  Engine e(f.config, f.image, f.fn(), opts);
  for (const auto& c : kCases) {
    const CaseInputs in = case_inputs(f, c);
    if (in.pixel_values.defined()) {
      auto vis = e.vision_forward(in.pixel_values, in.grid_thw);
      const double ev = rel_err(vis, f.ref->get(c.name + ".vision_out"));
      EXPECT_LE(ev, vis_tol) << fixture << " " << c.name << " vision_out";
    }
    auto hid = e.forward(in.ids, in.pixel_values, in.grid_thw);
    auto ref = f.ref->get(c.name + ".last_hidden").select(0, 0);
    const double eh = rel_err(hid, ref);
    EXPECT_LE(eh, hid_tol) << fixture << " " << c.name << " last_hidden";
    auto lg = e.logits(hid);
    const double el = rel_err(lg, f.ref->get(c.name + ".logits").select(0, 0));
    EXPECT_LE(el, hid_tol) << fixture << " " << c.name << " logits";
  }
}

// Vision output, last hidden states and logits of every fixture case (float32, on the CPU).
struct CaseOutputs {
  std::vector<at::Tensor> vision, hidden, logits;
};
CaseOutputs run_cases(const Fixture& f, const EngineOptions& opts) {
  Engine e(f.config, f.image, f.fn(), opts);
  CaseOutputs out;
  for (const auto& c : kCases) {
    const CaseInputs in = case_inputs(f, c);
    out.vision.push_back(in.pixel_values.defined()
                             ? e.vision_forward(in.pixel_values, in.grid_thw).to(at::kFloat).cpu()
                             : at::Tensor());
    auto hid = e.forward(in.ids, in.pixel_values, in.grid_thw);
    out.hidden.push_back(hid.to(at::kFloat).cpu());
    out.logits.push_back(e.logits(hid).cpu());
  }
  return out;
}

// FP8 engine vs the fp32 transformers fixtures and vs a reference engine of the same dtype
// without fp8 (`base`); prints every error and checks them against `tol` (fp32 refs) and
// `tol_base`.
void check_fp8_parity(const std::string& fixture, EngineOptions base, double tol, double tol_base) {
  Fixture f = load_fixture(fixture);
  EngineOptions q = base;
  q.fp8 = true;
  const CaseOutputs a = run_cases(f, q);
  const CaseOutputs b = run_cases(f, base);
  const char* dev = base.device.is_cuda() ? "cuda" : "cpu-emulated";
  for (size_t i = 0; i < kCases.size(); ++i) {
    const auto& c = kCases[i];
    if (a.vision[i].defined()) {
      const double ev = rel_err(a.vision[i], f.ref->get(c.name + ".vision_out"));
      const double evb = rel_err(a.vision[i], b.vision[i]);
      std::printf("[fp8 %s] %s %s vision_out: rel err vs fp32 %.4f, vs %s %.4f\n", dev,
                  fixture.c_str(), c.name.c_str(), ev, c10::toString(base.dtype), evb);
      EXPECT_LE(ev, tol) << fixture << " " << c.name << " vision_out";
      EXPECT_LE(evb, tol_base) << fixture << " " << c.name << " vision_out vs base";
    }
    const double eh = rel_err(a.hidden[i], f.ref->get(c.name + ".last_hidden").select(0, 0));
    const double ehb = rel_err(a.hidden[i], b.hidden[i]);
    const double el = rel_err(a.logits[i], f.ref->get(c.name + ".logits").select(0, 0));
    const double elb = rel_err(a.logits[i], b.logits[i]);
    std::printf(
        "[fp8 %s] %s %s last_hidden: rel err vs fp32 %.4f, vs %s %.4f | logits: vs fp32 %.4f, "
        "vs %s %.4f\n",
        dev, fixture.c_str(), c.name.c_str(), eh, c10::toString(base.dtype), ehb, el,
        c10::toString(base.dtype), elb);
    EXPECT_LE(eh, tol) << fixture << " " << c.name << " last_hidden";
    EXPECT_LE(ehb, tol_base) << fixture << " " << c.name << " last_hidden vs base";
    EXPECT_LE(el, tol) << fixture << " " << c.name << " logits";
  }
  std::fflush(stdout);
}

TEST(GpuParity, CpuFloat32MatchesTransformers) {
  check_model_parity("tiny_a", EngineOptions{}, 1e-5, 1e-5);
  check_model_parity("tiny_b", EngineOptions{}, 1e-5, 1e-5);
}

TEST(GpuParity, GreedyTokensMatchTransformersOnCpu) {
  for (const std::string fx : {"tiny_a", "tiny_b"}) {
    Fixture f = load_fixture(fx);
    Engine e(f.config, f.image, f.fn(), EngineOptions{});
    for (const auto& c : kCases) {
      const CaseInputs in = case_inputs(f, c);
      auto toks = e.generate_greedy(in.ids, in.pixel_values, in.grid_thw, 16);
      EXPECT_EQ(toks, ids_of(f.ref->get(c.name + ".generated"))) << fx << " " << c.name;
    }
  }
}

// A plan (fixed shapes, frames in, features out) gives the same features as the step-by-step
// reference path, for views as one sequence and views as a batch.
void check_plan_matches_forward(const EngineOptions& opts, double tol) {
  Fixture f = load_fixture("tiny_b");
  f.image.min_pixels = 3136;
  f.image.max_pixels = 31360;
  Engine e(f.config, f.image, f.fn(), opts);
  const int H = 90, W = 120, V = 2;
  std::vector<std::vector<uint8_t>> frames(V);
  at::manual_seed(7);
  for (int v = 0; v < V; ++v) {
    auto r = at::randint(0, 256, {H, W, 3}, at::kByte);
    frames[v].assign(r.data_ptr<uint8_t>(), r.data_ptr<uint8_t>() + r.numel());
  }
  std::vector<const uint8_t*> ptrs = {frames[0].data(), frames[1].data()};
  const int64_t img = f.config.image_token_id;
  const std::vector<int64_t> prompt = {
      1, 2, f.config.vision_start_token_id, img, f.config.vision_end_token_id, 5, 6, 7};
  // reference
  auto [pv, grid] = e.preprocess(ptrs, H, W);
  const int64_t per = grid[0][1].item<int64_t>() * grid[0][2].item<int64_t>() / 4;
  // All decoder layers, and features from the first 2 of 3 (PlanSpec::text_layers).
  for (int K : {0, 2})
    for (ViewLayout layout : {ViewLayout::kOneSequence, ViewLayout::kBatch}) {
      PlanSpec spec;
      spec.text_layers = K;
      spec.views = V;
      spec.height = H;
      spec.width = W;
      spec.layout = layout;
      if (layout == ViewLayout::kOneSequence) {
        spec.prompt_ids = {1,
                           2,
                           f.config.vision_start_token_id,
                           img,
                           f.config.vision_end_token_id,
                           f.config.vision_start_token_id,
                           img,
                           f.config.vision_end_token_id,
                           5,
                           6,
                           7};
      } else {
        spec.prompt_ids = prompt;
      }
      e.prepare(spec);
      auto feats = e.encode(ptrs).clone();
      if (layout == ViewLayout::kOneSequence) {
        std::vector<int64_t> ids;
        for (int64_t id : spec.prompt_ids) {
          if (id == img)
            ids.insert(ids.end(), per, img);
          else
            ids.push_back(id);
        }
        EXPECT_EQ(ids, e.plan_token_ids());
        auto ref = e.forward(ids, pv, grid, K);
        EXPECT_LE(rel_err(feats, ref), tol) << "one sequence, layers " << K;
      } else {
        ASSERT_EQ(feats.dim(), 3);
        ASSERT_EQ(feats.size(0), V);
        for (int v = 0; v < V; ++v) {
          auto ref = e.forward(e.plan_token_ids(), pv.narrow(0, v * per * 4, per * 4),
                               grid.narrow(0, v, 1), K);
          EXPECT_LE(rel_err(feats[v], ref), tol) << "batch view " << v << ", layers " << K;
        }
      }
    }
  EXPECT_GT(e.plan_flops(), e.plan_vision_flops());
}

// Engine::calibrate_fp8 on one set of frames, measured on another: the plan's features stay near
// the per-token FP8 ones and the unquantised engine's, its FP8 GEMMs run tensor-wise (the
// attention output projections too with EngineOptions::fp8_output_projections), the eager path
// uses the same static scales, and clearing the calibration gives the per-token features back.
void check_static_fp8(const EngineOptions& base, double tol) {
  Fixture f = load_fixture("tiny_b");
  f.image.min_pixels = 3136;
  f.image.max_pixels = 31360;
  using OutProj = EngineOptions::Fp8OutputProjections;
  EngineOptions q = base;
  q.fp8 = true;
  q.fp8_output_projections = OutProj::kNone;  // the projections are checked one by one below
  Engine e(f.config, f.image, f.fn(), q);
  Engine plain(f.config, f.image, f.fn(), base);
  const int H = 90, W = 120;
  auto frames = [&](uint64_t seed) {
    at::manual_seed(seed);
    std::vector<std::vector<uint8_t>> fr(2);
    for (auto& v : fr) {
      auto r = at::randint(0, 256, {H, W, 3}, at::kByte);
      v.assign(r.data_ptr<uint8_t>(), r.data_ptr<uint8_t>() + r.numel());
    }
    return fr;
  };
  const auto measure = frames(7), calibration = frames(8);
  const std::vector<const uint8_t*> mp = {measure[0].data(), measure[1].data()};
  const int64_t img = f.config.image_token_id, vs = f.config.vision_start_token_id,
                ve = f.config.vision_end_token_id;
  PlanSpec spec;
  spec.views = 2;
  spec.height = H;
  spec.width = W;
  spec.prompt_ids = {1, 2, vs, img, ve, vs, img, ve, 5, 6, 7};
  plain.prepare(spec);
  const at::Tensor want = plain.encode(mp).clone();
  e.prepare(spec);
  const at::Tensor per_token = e.encode(mp).clone();
  EXPECT_FALSE(e.fp8_calibrated());
  e.calibrate_fp8({calibration[0].data(), calibration[1].data()});
  ASSERT_TRUE(e.fp8_calibrated());
  int tensorwise = 0;
  for (const PlanGemm& g : e.plan_gemms()) {
    EXPECT_EQ(g.tensorwise, g.fp8) << g.what;
    tensorwise += g.tensorwise ? 1 : 0;
  }
  EXPECT_GT(tensorwise, 0);
  auto output_projections_fp8 = [](const Engine& eng) {
    int n = 0;
    for (const PlanGemm& g : eng.plan_gemms())
      if (g.what == "vision proj" || g.what == "decoder o_proj") n += g.fp8 ? 1 : 0;
    return n;
  };
  EXPECT_EQ(output_projections_fp8(e), 0);  // EngineOptions::fp8_output_projections is off
  // Turned on after a calibration without it: no site-3 scales, so the projections (and the plan's
  // account of them) stay bf16 until the next calibrate_fp8.
  e.set_fp8_output_projections(OutProj::kAll);
  e.prepare(spec);
  EXPECT_EQ(output_projections_fp8(e), 0);
  e.set_fp8_output_projections(OutProj::kNone);
  e.prepare(spec);
  const at::Tensor fixed = e.encode(mp).clone();
  const double vs_plain = rel_err(fixed, want), vs_per_token = rel_err(fixed, per_token);
  std::printf(
      "[fp8 static %s] features rel err vs unquantised %.4f (per-token fp8: %.4f), vs "
      "per-token fp8 %.4f\n",
      base.device.str().c_str(), vs_plain, rel_err(per_token, want), vs_per_token);
  EXPECT_LE(vs_plain, tol);
  EXPECT_LE(vs_per_token, tol);
  EXPECT_GT(vs_per_token, 0.0);  // the scales changed something
  auto [pv, grid] = e.preprocess(mp, H, W);
  EXPECT_LE(rel_err(e.forward(e.plan_token_ids(), pv, grid), fixed), 5e-2);
  // EngineOptions::fp8_output_projections: the same scales, the named towers' output projections
  // in FP8 too (and only those).
  struct Which {
    OutProj which;
    const char* name;
    bool vision, decoder;
  };
  std::map<std::string, at::Tensor> by_which;
  for (const Which& w : {Which{OutProj::kVision, "vision", true, false},
                         Which{OutProj::kDecoder, "decoder", false, true},
                         Which{OutProj::kAll, "all", true, true}}) {
    EngineOptions b = q;
    b.fp8_output_projections = w.which;
    Engine eb(f.config, f.image, f.fn(), b);
    eb.prepare(spec);
    eb.calibrate_fp8({calibration[0].data(), calibration[1].data()});
    for (const PlanGemm& g : eb.plan_gemms()) {
      if (g.what == "vision proj") {
        EXPECT_EQ(g.fp8, w.vision) << w.name;
      }
      if (g.what == "decoder o_proj") {
        EXPECT_EQ(g.fp8, w.decoder) << w.name;
      }
    }
    const at::Tensor fp8_proj = eb.encode(mp).clone();
    std::printf(
        "[fp8 static %s] output projections fp8 (%s): rel err vs unquantised %.4f (bf16: %.4f)\n",
        base.device.str().c_str(), w.name, rel_err(fp8_proj, want), vs_plain);
    EXPECT_LE(rel_err(fp8_proj, want), tol) << w.name;
    EXPECT_GT(rel_err(fp8_proj, fixed), 0.0) << w.name;  // the option changed something
    by_which[w.name] = fp8_proj;
  }
  // Each tower's choice moves the features its own way; both together differ from either.
  EXPECT_GT(rel_err(by_which["vision"], by_which["decoder"]), 0.0);
  EXPECT_GT(rel_err(by_which["all"], by_which["vision"]), 0.0);
  EXPECT_GT(rel_err(by_which["all"], by_which["decoder"]), 0.0);
  e.clear_fp8_calibration();
  EXPECT_FALSE(e.fp8_calibrated());
  EXPECT_LE(rel_err(e.encode(mp), per_token), 1e-2);
}

// Features from a middle layer (Engine::forward's text_layers) are the reference model's with
// ForwardOptions::num_layers (which src/models checks against the truncated model), and stopping
// earlier really changes them.
TEST(GpuParity, MiddleLayerFeaturesMatchTheReferenceModelOnCpu) {
  Fixture f = load_fixture("tiny_b");
  Engine e(f.config, f.image, f.fn(), EngineOptions{});
  auto model = Qwen25VLImpl::from_pretrained(fixture_dir() + "/tiny_b");
  const CaseInputs in = case_inputs(f, kCases[1]);
  const auto ids = at::tensor(in.ids, at::kLong).view({1, -1});
  at::Tensor prev;
  for (int K = 1; K <= f.config.text.num_hidden_layers; ++K) {
    ForwardOptions fo;
    fo.compute_logits = false;
    fo.num_layers = K;
    auto ref = model->forward(ids, {}, in.pixel_values, in.grid_thw, fo).last_hidden.select(0, 0);
    auto ours = e.forward(in.ids, in.pixel_values, in.grid_thw, K);
    EXPECT_LE(rel_err(ours, ref), 1e-5) << "layers " << K;
    if (prev.defined()) {
      EXPECT_GT(rel_err(ours, prev), 1e-2) << "layers " << K;
    }
    prev = ours;
  }
  EXPECT_LE(rel_err(prev, e.forward(in.ids, in.pixel_values, in.grid_thw)), 1e-6);
  EXPECT_THROW(e.forward(in.ids, in.pixel_values, in.grid_thw, 4), Error);
}

// The decoder's prefill attention forced to the causal kernel (EngineOptions::decoder_attention)
// against the same plans with flash-varlen: features of one sequence of two views and of a batch,
// all layers and the first two, on both fixtures. On the CPU both run the math reference (the
// option's wiring is checked there).
void check_causal_kernel_plan(const EngineOptions& base, double tol) {
  for (const std::string fx : {"tiny_a", "tiny_b"}) {
    Fixture f = load_fixture(fx);
    f.image.min_pixels = 3136;
    f.image.max_pixels = 31360;
    EngineOptions kernel = base, flash = base;
    kernel.decoder_attention = EngineOptions::DecoderAttention::kCausalKernel;
    flash.decoder_attention = EngineOptions::DecoderAttention::kFlashVarlen;
    Engine ek(f.config, f.image, f.fn(), kernel), ef(f.config, f.image, f.fn(), flash);
    const int H = 90, W = 120;
    at::manual_seed(3);
    std::vector<at::Tensor> frames;
    std::vector<const uint8_t*> ptrs;
    for (int v = 0; v < 2; ++v) {
      frames.push_back(at::randint(0, 256, {H, W, 3}, at::kByte));
      ptrs.push_back(frames.back().data_ptr<uint8_t>());
    }
    const int64_t img = f.config.image_token_id, vs = f.config.vision_start_token_id,
                  ve = f.config.vision_end_token_id;
    for (ViewLayout layout : {ViewLayout::kOneSequence, ViewLayout::kBatch})
      for (int K : {0, 2}) {
        PlanSpec spec;
        spec.views = 2;
        spec.height = H;
        spec.width = W;
        spec.layout = layout;
        spec.text_layers = K;
        spec.prompt_ids = layout == ViewLayout::kOneSequence
                              ? std::vector<int64_t>{1, vs, img, ve, vs, img, ve, 5, 6}
                              : std::vector<int64_t>{1, vs, img, ve, 5, 6};
        ek.prepare(spec);
        ef.prepare(spec);
        EXPECT_NE(ek.attention_backend().find("decoder attention: causal-kernel"),
                  std::string::npos)
            << ek.attention_backend();
        const at::Tensor a = ek.encode(ptrs).clone(), b = ef.encode(ptrs).clone();
        EXPECT_LE(rel_err(a, b), tol)
            << fx << (layout == ViewLayout::kBatch ? " batch" : " seq") << ", layers " << K;
      }
  }
}

TEST(GpuPlan, CausalKernelChoiceMatchesOnCpu) { check_causal_kernel_plan(EngineOptions{}, 1e-4); }

TEST(GpuPlan, FixedShapePlanMatchesReferencePathOnCpu) {
  check_plan_matches_forward(EngineOptions{}, 1e-5);
}

TEST(GpuErrors, BadInputsGiveClearErrors) {
  Fixture f = load_fixture("tiny_a");
  Engine e(f.config, f.image, f.fn(), EngineOptions{});
  try {
    e.vision_forward(at::zeros({5, 1176}), at::tensor(std::vector<int64_t>{1, 4, 4}).view({1, 3}));
    FAIL() << "no throw";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("pixel_values"), std::string::npos) << err.what();
  }
  auto fn = f.fn();
  auto missing = [fn](const std::string& n, const std::vector<int64_t>& shape) {
    return n == "visual.blocks.1.attn.qkv.weight" ? at::Tensor() : fn(n, shape);
  };
  try {
    Engine bad(f.config, f.image, missing, EngineOptions{});
    FAIL() << "no throw";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("visual.blocks.1.attn.qkv.weight"), std::string::npos)
        << err.what();
  }
  auto wrong = [fn](const std::string& n, const std::vector<int64_t>& shape) {
    return n == "model.norm.weight" ? at::zeros({3}) : fn(n, shape);
  };
  try {
    Engine bad(f.config, f.image, wrong, EngineOptions{});
    FAIL() << "no throw";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("model.norm.weight"), std::string::npos) << err.what();
  }
  PlanSpec spec;
  spec.views = 2;
  spec.height = 56;
  spec.width = 56;
  spec.prompt_ids = {1, f.config.image_token_id, 2};  // one placeholder for two views
  EXPECT_THROW(e.prepare(spec), Error);
  EXPECT_THROW(e.forward({1, 2, 100000}, {}, {}), Error);
}

// FP8 emulated on the CPU (dequantised products): same quantisation as the GPU path. Needs
// torch >= 2.1 (skipped with older libtorch, as in CI).
TEST(GpuFp8, CpuEmulationStaysCloseToFloat32) {
  if (!fp8_available(at::Device(at::kCPU))) GTEST_SKIP() << "torch has no float8 types";
  check_fp8_parity("tiny_a", EngineOptions{}, 0.1, 0.1);
  check_fp8_parity("tiny_b", EngineOptions{}, 0.1, 0.1);
}

TEST(GpuFp8, StaticScalesCalibrateOnCpu) {
  if (!fp8_available(at::Device(at::kCPU))) GTEST_SKIP() << "torch has no float8 types";
  check_static_fp8(EngineOptions{}, 0.1);
}

TEST(GpuFp8, CalibrationNeedsAnFp8EngineWithAPlan) {
  Fixture f = load_fixture("tiny_b");
  Engine e(f.config, f.image, f.fn(), EngineOptions{});
  const std::vector<uint8_t> frame(90 * 120 * 3, 7);
  try {
    e.calibrate_fp8({frame.data()});
    FAIL() << "no throw";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("EngineOptions::fp8"), std::string::npos) << err.what();
  }
  EXPECT_FALSE(e.fp8_calibrated());
  e.clear_fp8_calibration();  // nothing to clear: no-op
}

TEST(GpuFp8, UnavailableFp8GivesAClearError) {
  if (fp8_available(at::Device(at::kCPU))) GTEST_SKIP() << "fp8 available here";
  Fixture f = load_fixture("tiny_a");
  EngineOptions o;
  o.fp8 = true;
  try {
    Engine e(f.config, f.image, f.fn(), o);
    FAIL() << "no throw";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("fp8"), std::string::npos) << err.what();
  }
}

// The backend-parity table on the CPU: every op's ATen path against its float64 definition (no
// kernels here: the "fused" path must fall back to the same reference).
TEST(GpuOpTable, EveryCaseMatchesItsDefinitionOnCpu) {
  const at::Device cpu(at::kCPU);
  int checked = 0;
  for (const ops::OpCase& c : ops::unit_cases()) {
    if (c.fp8() && !ops::fp8_supported(cpu)) continue;  // torch < 2.1 has no float8 types
    const ops::OpParity p = ops::check_op(c, cpu, 3);
    EXPECT_FALSE(p.fused_ran) << c.label();
    EXPECT_EQ(p.fused_vs_reference, 0.0) << c.label();
    EXPECT_LE(p.reference_vs_f64, ops::tolerance_vs_f64(c)) << c.label();
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

TEST(GpuOpTable, ModelCasesFollowTheConfig) {
  const auto cfg =
      Qwen25VLConfig::load(std::string(VLA_SOURCE_DIR) + "/assets/configs/qwen2.5-vl-3b-instruct");
  const auto cases = ops::model_cases(cfg, 5, 360, 640);
  ASSERT_FALSE(cases.empty());
  // 640x360 -> smart_resize 644x364 -> 46 x 26 patches per view, 5 views.
  EXPECT_EQ(cases.front().dims[0], 5 * 46 * 26);
  EXPECT_EQ(cases.front().dims[1], cfg.vision.hidden_size);
  bool decoder = false;
  for (const auto& c : cases)
    if (c.op == "silu_mul" && c.dims[1] == ops::mlp_width(cfg.text.intermediate_size)) {
      decoder = true;
      EXPECT_EQ(c.dims[0], 5 * 46 * 26 / 4 + 24);
    }
  EXPECT_TRUE(decoder);
  EXPECT_THROW(ops::check_op({"no_such_op", {1, 2}}, at::Device(at::kCPU)), Error);
  EXPECT_THROW(ops::check_op({"rms_norm", {4}}, at::Device(at::kCPU)), Error);
}

// ------------------------------------------------------------------ CUDA tests
#define REQUIRE_CUDA() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device (CPU-only build or machine)"

at::TensorOptions cuda_opts(at::ScalarType dt) {
  return at::TensorOptions().dtype(dt).device(at::Device(at::kCUDA, 0));
}

// The backend-parity table (src/gpu/op_table.h) at unit shapes on CUDA: every fused kernel
// against its ATen reference and both against the float64 definition.
TEST(GpuOpTable, EveryCaseMatchesOnCuda) {
  REQUIRE_CUDA();
  const at::Device dev(at::kCUDA, 0);
  int checked = 0;
  for (const ops::OpCase& c : ops::unit_cases()) {
    if (c.fp8() && !fp8_available(dev)) continue;
    const ops::OpParity p = ops::check_op(c, dev, 7);
    // attention runs flash where torch has it; causal_attention (and its _static_fp8 variant) has
    // a kernel for bf16 and head dims 16 .. 128 only (the other cases check its fallback).
    const bool causal = c.op.compare(0, 16, "causal_attention") == 0;
    // linear_swiglu(_static_fp8)'s kernel exists when the build had Triton (GpuTriton checks it).
    const bool kernel_optional =
        c.op == "attention" ||
        (c.op == "linear_swiglu_static_fp8" && kernels::gemm_swiglu_variants(true) == 0) ||
        (c.op == "linear_swiglu" &&
         (c.dtype != at::kBFloat16 || kernels::gemm_swiglu_variants(false) == 0)) ||
        // the residual-add GEMM: bf16 residual, K and N multiples of 16
        (c.op.compare(0, 17, "linear_accumulate") == 0 &&
         (c.dtype != at::kBFloat16 || c.dims[1] % 16 != 0 || c.dims[2] % 16 != 0)) ||
        (causal && (c.dtype != at::kBFloat16 ||
                    !kernels::causal_attention_fits(static_cast<int>(c.dims[3]))));
    EXPECT_TRUE(p.fused_ran || kernel_optional) << c.label() << ": no kernel ran";
    EXPECT_LE(p.fused_vs_reference, ops::tolerance_vs_reference(c)) << c.label();
    EXPECT_LE(p.fused_vs_f64, ops::tolerance_vs_f64(c)) << c.label();
    EXPECT_LE(p.reference_vs_f64, ops::tolerance_vs_f64(c)) << c.label();
    ++checked;
  }
  EXPECT_GE(checked, 40);
}

// The same table at the 3B model's shapes (what bench_gpu times).
TEST(GpuOpTable, ModelShapesMatchOnCuda) {
  REQUIRE_CUDA();
  const at::Device dev(at::kCUDA, 0);
  const auto cfg =
      Qwen25VLConfig::load(std::string(VLA_SOURCE_DIR) + "/assets/configs/qwen2.5-vl-3b-instruct");
  for (const ops::OpCase& c : ops::model_cases(cfg, 5, 360, 640)) {
    if (c.fp8() && !fp8_available(dev)) continue;
    const ops::OpParity p = ops::check_op(c, dev, 11);
    EXPECT_LE(p.fused_vs_reference, ops::tolerance_vs_reference(c)) << c.label();
    EXPECT_LE(p.fused_vs_f64, ops::tolerance_vs_f64(c)) << c.label();
  }
}

TEST(GpuPreprocess, PixelValuesMatchTransformersOnGpu) {
  REQUIRE_CUDA();
  EngineOptions o;
  o.device = at::Device(at::kCUDA, 0);
  o.dtype = at::kFloat;
  check_pixel_values(o);
}

TEST(GpuParity, Bf16GpuMatchesFloat32FixturesWithinBf16Tolerance) {
  REQUIRE_CUDA();
  check_model_parity("tiny_a", EngineOptions::best_available(), 2e-2, 2e-2);
  check_model_parity("tiny_b", EngineOptions::best_available(), 2e-2, 2e-2);
}

TEST(GpuParity, Float32GpuKernelsMatchTransformersTightly) {
  REQUIRE_CUDA();
  EngineOptions o;
  o.device = at::Device(at::kCUDA, 0);
  o.dtype = at::kFloat;
  check_model_parity("tiny_b", o, 1e-4, 1e-4);
}

TEST(GpuPlan, GraphPlanMatchesReferencePathOnGpu) {
  REQUIRE_CUDA();
  check_plan_matches_forward(EngineOptions::best_available(), 2e-2);
}

TEST(GpuPlan, CausalKernelPlanMatchesFlashPlan) {
  REQUIRE_CUDA();
  check_causal_kernel_plan(EngineOptions::best_available(), 2e-2);
}

// Greedy decode on CUDA: the step captured as one graph gives the eager step's tokens, and both
// the float32 fixtures' tokens where bf16 rounding does not flip an argmax (checked: the first
// tokens, before errors compound).
TEST(GpuDecode, GraphDecodeMatchesEagerDecode) {
  REQUIRE_CUDA();
  for (const std::string fx : {"tiny_a", "tiny_b"}) {
    Fixture f = load_fixture(fx);
    EngineOptions graphs = EngineOptions::best_available(), eager = graphs;
    eager.cuda_graphs = false;
    auto eg = f.engine(graphs), ee = f.engine(eager);
    for (const auto& c : kCases) {
      const CaseInputs in = case_inputs(f, c);
      double ms_graph = 0, ms_eager = 0;
      auto a = eg->generate_greedy(in.ids, in.pixel_values, in.grid_thw, 16, {}, &ms_graph);
      auto b = ee->generate_greedy(in.ids, in.pixel_values, in.grid_thw, 16, {}, &ms_eager);
      EXPECT_EQ(a, b) << fx << " " << c.name;
      auto ref = ids_of(f.ref->get(c.name + ".generated"));
      ASSERT_FALSE(a.empty());
      EXPECT_EQ(a[0], ref[0]) << fx << " " << c.name << ": first token";
      std::printf("[decode %s %s] 16 tokens: graph %.2f ms, eager %.2f ms\n", fx.c_str(),
                  c.name.c_str(), ms_graph, ms_eager);
    }
  }
}

// The decode state (KV cache, rotary rows, on CUDA the captured step) is kept across calls: a call
// after others, and one that needs more cache rows than are kept (re-made), give the tokens of a
// fresh engine.
TEST(GpuDecode, KeptDecodeStateGivesTheTokensOfAFreshEngine) {
  Fixture f = load_fixture("tiny_a");
  const EngineOptions opts = EngineOptions::best_available();
  auto kept = f.engine(opts);
  const CaseInputs one = case_inputs(f, kCases[0]), multi = case_inputs(f, kCases[1]);
  const auto first = kept->generate_greedy(one.ids, one.pixel_values, one.grid_thw, 16);
  const auto other = kept->generate_greedy(multi.ids, multi.pixel_values, multi.grid_thw, 16);
  // 1,100 new tokens need more than the 1,024 rows kept so far.
  const auto longer = kept->generate_greedy(one.ids, one.pixel_values, one.grid_thw, 1100);
  const auto again = kept->generate_greedy(one.ids, one.pixel_values, one.grid_thw, 16);
  auto fresh = [&](const CaseInputs& in) {
    return f.engine(opts)->generate_greedy(in.ids, in.pixel_values, in.grid_thw, 16);
  };
  EXPECT_EQ(first, fresh(one));
  EXPECT_EQ(other, fresh(multi));
  ASSERT_EQ(longer.size(), 1100u);
  EXPECT_EQ(std::vector<int64_t>(longer.begin(), longer.begin() + 16), first);
  EXPECT_EQ(again, first);
}

// The decode step's products through the GEMV kernel give the tokens of the cuBLAS products.
TEST(GpuDecode, GemvDecodeMatchesCublasDecode) {
  REQUIRE_CUDA();
  for (const std::string fx : {"tiny_a", "tiny_b"}) {
    Fixture f = load_fixture(fx);
    EngineOptions on = EngineOptions::best_available(), off = on;
    on.decode_gemv = EngineOptions::DecodeGemv::kOn;
    off.decode_gemv = EngineOptions::DecodeGemv::kOff;
    auto eon = f.engine(on), eoff = f.engine(off);
    for (const auto& c : kCases) {
      const CaseInputs in = case_inputs(f, c);
      EXPECT_EQ(eon->generate_greedy(in.ids, in.pixel_values, in.grid_thw, 16),
                eoff->generate_greedy(in.ids, in.pixel_values, in.grid_thw, 16))
          << fx << " " << c.name;
    }
    std::printf("[decode %s] measured choice: %s\n", fx.c_str(),
                f.engine(EngineOptions::best_available())->decode_report().c_str());
  }
}

#define REQUIRE_FP8_CUDA()                      \
  REQUIRE_CUDA();                               \
  if (!fp8_available(at::Device(at::kCUDA, 0))) \
  GTEST_SKIP() << "no FP8 GEMMs on this GPU / torch (needs compute capability >= 8.9)"

TEST(GpuFp8, ScaledMatmulMatchesDequantisedReference) {
  REQUIRE_FP8_CUDA();
  for (int64_t m : {1, 37, 300}) {
    for (bool bias : {false, true}) {
      for (bool fast : {false, true}) {
        const int64_t k = 1280, n = 3840;
        auto x = at::randn({m, k}, cuda_opts(at::kBFloat16));
        auto w = (at::randn({n, k}, cuda_opts(at::kFloat)) * 0.02).to(at::kBFloat16);
        at::Tensor b = bias ? at::randn({n}, cuda_opts(at::kBFloat16)) * 0.1 : at::Tensor();
        auto xq = ops::quantize_fp8(x, true);
        auto wq = ops::quantize_fp8(w, true);
        auto out = ops::linear_fp8(xq, wq, b, at::kBFloat16, fast);
        ASSERT_EQ(out.scalar_type(), at::kBFloat16);
        ASSERT_EQ(out.size(0), m);
        ASSERT_EQ(out.size(1), n);
        auto ref = at::matmul(ops::dequantize_fp8(xq), ops::dequantize_fp8(wq).t());
        if (bias) ref = ref + b.to(at::kFloat);
        EXPECT_LE(rel_err(out, ref), 1e-2) << "m " << m << " bias " << bias << " fast " << fast;
        EXPECT_LE(rel_err(out, ops::linear(x, w, b)), 8e-2) << "vs bf16, m " << m;
        // Tensor-wise: one static scale for x (as calibrated), one for w.
        auto xs = ops::quantize_fp8(x, true, (x.abs().amax().to(at::kFloat) / 448.0).reshape({1}));
        auto ws = ops::quantize_fp8_tensor(w);
        ASSERT_TRUE(ws.tensorwise);
        auto out_s = ops::linear_fp8(xs, ws, b, at::kBFloat16, fast);
        auto ref_s = at::matmul(ops::dequantize_fp8(xs), ops::dequantize_fp8(ws).t());
        if (bias) ref_s = ref_s + b.to(at::kFloat);
        EXPECT_LE(rel_err(out_s, ref_s), 1e-2) << "tensor-wise, m " << m << " bias " << bias;
        EXPECT_LE(rel_err(out_s, ops::linear(x, w, b)), 8e-2) << "tensor-wise vs bf16, m " << m;
      }
    }
  }
}

// Every algorithm cuBLASLt's heuristic offers for kernels::gemm_lt's problems (bf16 and, where the
// GPU has it, tensor-wise e4m3 operands; with and without bias; written and accumulated into a
// residual), against the float32 product of the same (dequantised) operands; then ops::linear and
// ops::linear_fp8, which run whichever way timed fastest, against the same reference.
TEST(GpuGemm, EveryCublasLtCandidateMatchesTheReference) {
  REQUIRE_CUDA();
  const at::Device dev(at::kCUDA, 0);
  const at::Tensor ws = at::empty({32 << 20}, cuda_opts(at::kByte));
  struct Shape {
    int64_t m, k, n;
  };
  int checked = 0;
  for (const Shape& sh : {Shape{37, 64, 48}, Shape{300, 2048, 2560}, Shape{1525, 2048, 2048}})
    for (bool fp8 : {false, true}) {
      if (fp8 && !fp8_available(dev)) continue;
      const at::Tensor x = at::randn({sh.m, sh.k}, cuda_opts(at::kFloat));
      const at::Tensor w =
          (at::randn({sh.n, sh.k}, cuda_opts(at::kFloat)) / std::sqrt(double(sh.k)))
              .to(at::kBFloat16);
      ops::Fp8Rows x8, w8;
      at::Tensor xa = x.to(at::kBFloat16), wa = w, xf = xa.to(at::kFloat), wf = w.to(at::kFloat);
      if (fp8) {
        x8 = ops::quantize_fp8(x, true, (x.abs().amax() / 448.0).reshape({1}).contiguous());
        w8 = ops::quantize_fp8_tensor(w);
        xa = x8.q;
        wa = w8.q;
        xf = ops::dequantize_fp8(x8);
        wf = ops::dequantize_fp8(w8);
      }
      const float* xs = fp8 ? x8.scale.data_ptr<float>() : nullptr;
      const float* wsc = fp8 ? w8.scale.data_ptr<float>() : nullptr;
      for (bool bias : {false, true})
        for (bool acc : {false, true}) {
          const at::Tensor b = bias ? at::randn({sh.n}, cuda_opts(at::kBFloat16)) : at::Tensor();
          const at::Tensor residual = at::randn({sh.m, sh.n}, cuda_opts(at::kBFloat16));
          at::Tensor ref = at::matmul(xf, wf.t());
          if (bias) ref += b.to(at::kFloat);
          if (acc) ref += residual.to(at::kFloat);
          const char* err = nullptr;
          const int n = kernels::gemm_lt_candidates(fp8, bias, acc, sh.m, sh.n, sh.k,
                                                    static_cast<size_t>(ws.numel()), &err);
          ASSERT_GT(n, 0) << (err ? err : "");
          for (int algo = 0; algo < n; ++algo) {
            at::Tensor out = acc ? residual.clone() : at::empty({sh.m, sh.n}, residual.options());
            const char* e = kernels::gemm_lt(
                xa.data_ptr(), wa.data_ptr(), fp8, xs, wsc, bias ? b.data_ptr() : nullptr,
                out.data_ptr(), acc, sh.m, sh.n, sh.k, algo, ws.data_ptr(),
                static_cast<size_t>(ws.numel()), device::current_stream(dev));
            ASSERT_EQ(e, nullptr) << e;
            EXPECT_LE(rel_err(out, ref), 1e-2)
                << sh.m << "x" << sh.k << "->" << sh.n << " fp8 " << fp8 << " bias " << bias
                << " accumulate " << acc << " algorithm " << algo << " of " << n;
            ++checked;
          }
          if (!acc) {
            const at::Tensor got =
                fp8 ? ops::linear_fp8(x8, w8, b, at::kBFloat16, true) : ops::linear(xa, wa, b);
            EXPECT_LE(rel_err(got, ref), 1e-2) << "ops::linear" << (fp8 ? "_fp8 " : " ") << sh.m;
          }
        }
    }
  EXPECT_GE(checked, 12);
  // An index past the problem's candidates is refused, not run.
  EXPECT_NE(kernels::gemm_lt(ws.data_ptr(), ws.data_ptr(), false, nullptr, nullptr, nullptr,
                             ws.data_ptr(), false, 16, 16, 16, kernels::kGemmLtMaxCandidates,
                             ws.data_ptr(), 1 << 20, device::current_stream(dev)),
            nullptr);
}

// Every compiled tile configuration of the Triton gate|up GEMM + SwiGLU kernel against the float32
// reference (dequantise, product, SwiGLU, quantise) at a unit shape and at the 3B decoder's and
// vision tower's 5-view shapes; a width that fits no tile is refused.
TEST(GpuTriton, EveryLinearSwigluVariantMatchesTheReference) {
  REQUIRE_FP8_CUDA();
  const int variants = kernels::gemm_swiglu_variants(true);
  if (variants == 0) GTEST_SKIP() << "this build has no Triton kernels (no Triton at build time)";
  struct Shape {
    int64_t rows, inter, k;
    bool bias;
  };
  for (const Shape& sh : {Shape{37, 128, 256, false}, Shape{1525, 11008, 2048, false},
                          Shape{5980, 3456, 1280, true}}) {
    const at::Tensor x = at::randn({sh.rows, sh.k}, cuda_opts(at::kFloat));
    const ops::Fp8Rows x8 =
        ops::quantize_fp8(x, true, (x.abs().amax() / 448.0).reshape({1}).contiguous());
    const ops::Fp8Rows w8 = ops::quantize_fp8_tensor(
        (at::randn({2 * sh.inter, sh.k}, cuda_opts(at::kFloat)) * 2 / std::sqrt(double(sh.k)))
            .to(at::kBFloat16));
    const at::Tensor b =
        sh.bias ? (at::randn({2 * sh.inter}, cuda_opts(at::kFloat)) * 0.5).to(at::kBFloat16)
                : at::Tensor();
    const at::Tensor unit = at::ones({1}, cuda_opts(at::kFloat));
    const at::Tensor out_scale =
        (ops::dequantize_fp8(ops::linear_swiglu_fp8(x8, w8, b, sh.inter, unit, -1)).abs().amax() /
         448.0)
            .reshape({1})
            .contiguous();
    const ops::Fp8Rows ref = ops::linear_swiglu_fp8(x8, w8, b, sh.inter, out_scale, -1);
    int ran = 0;
    for (int v = 0; v < variants; ++v) {
      if (!kernels::gemm_swiglu_fits(true, v, sh.inter, sh.k)) continue;
      ++ran;
      const ops::Fp8Rows got = ops::linear_swiglu_fp8(x8, w8, b, sh.inter, out_scale, v);
      ASSERT_EQ(got.q.size(0), sh.rows);
      ASSERT_EQ(got.q.size(1), sh.inter);
      EXPECT_LE(rel_err(ops::dequantize_fp8(got), ops::dequantize_fp8(ref)), 1e-2)
          << kernels::gemm_swiglu_variant_name(true, v) << " rows " << sh.rows << " inter "
          << sh.inter;
    }
    EXPECT_GT(ran, 0) << "no compiled variant fits inter " << sh.inter << ", K " << sh.k;
  }
  const at::Tensor x = at::randn({8, 256}, cuda_opts(at::kFloat));
  const ops::Fp8Rows x8 = ops::quantize_fp8(x, true, at::ones({1}, cuda_opts(at::kFloat)));
  const ops::Fp8Rows w8 = ops::quantize_fp8_tensor(at::randn({200, 256}, cuda_opts(at::kFloat)));
  EXPECT_THROW(ops::linear_swiglu_fp8(x8, w8, {}, 100, at::ones({1}, cuda_opts(at::kFloat)), 0),
               Error);
}

// The bf16 twin: every compiled tile configuration of the gate|up GEMM + SwiGLU kernel with bf16
// operands against the float32 reference (product, SwiGLU) at a unit shape and the 3B decoder's
// and vision tower's 5-view and 1-view shapes (rows not a multiple of the tiles); a width that
// fits no tile is refused.
TEST(GpuTriton, EveryBf16LinearSwigluVariantMatchesTheReference) {
  REQUIRE_CUDA();
  const int variants = kernels::gemm_swiglu_variants(false);
  if (variants == 0) GTEST_SKIP() << "this build has no Triton kernels (no Triton at build time)";
  struct Shape {
    int64_t rows, inter, k;
    bool bias;
  };
  for (const Shape& sh :
       {Shape{37, 128, 256, false}, Shape{1525, 11008, 2048, false}, Shape{5980, 3456, 1280, true},
        Shape{321, 11008, 2048, false}, Shape{1196, 3456, 1280, true}}) {
    const at::Tensor x = at::randn({sh.rows, sh.k}, cuda_opts(at::kBFloat16));
    const at::Tensor w =
        (at::randn({2 * sh.inter, sh.k}, cuda_opts(at::kFloat)) * 2 / std::sqrt(double(sh.k)))
            .to(at::kBFloat16);
    const at::Tensor b =
        sh.bias ? (at::randn({2 * sh.inter}, cuda_opts(at::kFloat)) * 0.5).to(at::kBFloat16)
                : at::Tensor();
    const at::Tensor ref = ops::linear_swiglu(x, w, b, sh.inter, -1);
    int ran = 0;
    for (int v = 0; v < variants; ++v) {
      if (!kernels::gemm_swiglu_fits(false, v, sh.inter, sh.k)) continue;
      ++ran;
      const at::Tensor got = ops::linear_swiglu(x, w, b, sh.inter, v);
      ASSERT_EQ(got.size(0), sh.rows);
      ASSERT_EQ(got.size(1), sh.inter);
      EXPECT_LE(rel_err(got, ref), 1e-2) << kernels::gemm_swiglu_variant_name(false, v) << " rows "
                                         << sh.rows << " inter " << sh.inter;
    }
    EXPECT_GT(ran, 0) << "no compiled variant fits inter " << sh.inter << ", K " << sh.k;
  }
  const at::Tensor x = at::randn({8, 256}, cuda_opts(at::kBFloat16));
  const at::Tensor w = at::randn({200, 256}, cuda_opts(at::kBFloat16));
  EXPECT_THROW(ops::linear_swiglu(x, w, {}, 100, 0), Error);
}

// Every compiled tile configuration of the Triton causal attention kernel, bf16 and static-FP8
// output, against the float32 math reference: the 3B decoder's heads (16 query, 2 KV, head_dim
// 128) at one 5-view sequence, five packed 1-view sequences and ragged lengths (1 row, shorter
// than a tile, tile + 1), rows strided inside a qkv buffer as the engine has them; head_dim 64 is
// refused.
TEST(GpuTriton, EveryCausalAttentionVariantMatchesTheReference) {
  REQUIRE_CUDA();
  const at::Tensor probe = at::zeros({1, 1, 128}, cuda_opts(at::kBFloat16));
  const int variants = ops::causal_attention_triton_variants(probe);
  if (variants == 0) GTEST_SKIP() << "this build has no Triton kernels (no Triton at build time)";
  const int64_t H = 16, Hk = 2, D = 128;
  for (const std::vector<int64_t>& lens : {std::vector<int64_t>{1525}, std::vector<int64_t>(5, 321),
                                           std::vector<int64_t>{1, 37, 65}}) {
    std::vector<int64_t> cu = {0};
    for (int64_t l : lens) cu.push_back(cu.back() + l);
    const ops::Varlen seqs = ops::Varlen::make(cu, at::Device(at::kCUDA));
    const int64_t T = cu.back();
    const at::Tensor qkv = at::randn({T, (H + 2 * Hk) * D}, cuda_opts(at::kBFloat16));
    const at::Tensor q = qkv.narrow(1, 0, H * D).view({T, H, D});
    const at::Tensor k = qkv.narrow(1, H * D, Hk * D).view({T, Hk, D});
    const at::Tensor v = qkv.narrow(1, (H + Hk) * D, Hk * D).view({T, Hk, D});
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    const at::Tensor ref = ops::causal_attention(q, k, v, seqs, scale, /*fused=*/false);
    const at::Tensor out_scale = (ref.abs().amax().to(at::kFloat) / 448.0).reshape({1});
    for (int var = 0; var < variants; ++var) {
      const char* name = kernels::causal_attention_triton_variant_name(var);
      const at::Tensor got = ops::causal_attention(q, k, v, seqs, scale, true, var);
      ASSERT_EQ(got.sizes(), ref.sizes()) << name;
      EXPECT_LE(rel_err(got, ref), 1e-2)
          << name << ", " << lens.size() << " sequences, " << T << " rows";
      if (!fp8_available(q.device())) continue;
      const ops::Fp8Rows got8 =
          ops::causal_attention_fp8(q, k, v, seqs, scale, true, out_scale, var);
      EXPECT_LE(rel_err(ops::dequantize_fp8(got8).view({T, H, D}), ref), 5e-2)
          << name << " (e4m3 output), " << T << " rows";
    }
  }
  const at::Tensor q64 = at::randn({8, 2, 64}, cuda_opts(at::kBFloat16));
  const ops::Varlen one = ops::Varlen::make({0, 8}, at::Device(at::kCUDA));
  EXPECT_THROW(ops::causal_attention(q64, q64, q64, one, 0.125, true, 0), Error);
}

TEST(GpuFp8, Fp8GpuStaysCloseToFloat32FixturesAndBf16) {
  REQUIRE_FP8_CUDA();
  check_fp8_parity("tiny_a", EngineOptions::best_available(), 0.1, 0.1);
  check_fp8_parity("tiny_b", EngineOptions::best_available(), 0.1, 0.1);
}

TEST(GpuFp8, StaticScalesCalibrateOnCuda) {
  REQUIRE_FP8_CUDA();
  check_static_fp8(EngineOptions::best_available(), 0.1);
}

TEST(GpuFp8, Fp8GraphPlanMatchesReferencePath) {
  REQUIRE_FP8_CUDA();
  EngineOptions o = EngineOptions::best_available();
  o.fp8 = true;
  check_plan_matches_forward(o, 5e-2);
}

}  // namespace
}  // namespace vla::gpu
