// bench_gpu: times the GPU fast path (src/gpu) on the Qwen2.5-VL-3B architecture (random bf16
// weights, or a checkpoint folder) for N views of WxH frames, end to end from host uint8 frames,
// with a per-stage breakdown, views as one sequence vs as a batch, graphs vs eager, and greedy
// decode tokens/s; then the same plans with FP8 (e4m3) GEMMs (EngineOptions::fp8, same random
// weights quantised), their error against the bf16 features, and FP8 vs bf16 GEMM rates. With
// --peer FILE (peer_qwen25vl.json from bench/peer_qwen25vl.py, run on the same machine) it prints
// the side-by-side table. Run by bench/gpu_side_by_side.sh.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/core.h"
#include "gpu/device.h"
#include "gpu/gpu.h"
#include "gpu/op_table.h"
#include "gpu/ops.h"
#include "weights/weights.h"

using namespace vla;
using namespace vla::gpu;

namespace {

struct Timing {
  double wall_ms = 0, upload_ms = 0, pre_ms = 0, vision_ms = 0, llm_ms = 0, device_ms = 0;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<int64_t> peer_prompt(const Qwen25VLConfig& d, int views, bool batch) {
  // Same token layout as bench/peer_qwen25vl.py: chat header, images, 12 text tokens, footer.
  std::vector<int64_t> ids = {151644, 872, 198};
  const int n = batch ? 1 : views;
  for (int i = 0; i < n; ++i) {
    ids.push_back(d.vision_start_token_id);
    ids.push_back(d.image_token_id);
    ids.push_back(d.vision_end_token_id);
  }
  for (int i = 0; i < 12; ++i) ids.push_back(10);
  for (int64_t t : {151645, 198, 151644, 77091, 198}) ids.push_back(t);
  return ids;
}

using ops::rel_err;

// The prepared plan's frames: uniform random bytes (seed 1), or all zero. It matters for speed:
// with zero frames every patch row is the same, the GEMMs see constant operands and draw less
// power, so the H200 holds higher clocks (the "zero frames" cases measure by how much).
void fill_frames(Engine& e, const PlanSpec& spec, bool zero) {
  at::manual_seed(1);
  for (int v = 0; v < spec.views; ++v) {
    auto r = zero ? at::zeros({spec.height, spec.width, 3}, at::kByte)
                  : at::randint(0, 256, {spec.height, spec.width, 3}, at::kByte);
    std::memcpy(e.frame_buffer(v), r.data_ptr<uint8_t>(), static_cast<size_t>(r.numel()));
  }
}

Timing time_plan(Engine& e, const PlanSpec& spec, int iters, nlohmann::json& rec,
                 at::Tensor* keep = nullptr, bool zero_frames = false) {
  Stopwatch prep;
  e.prepare(spec);
  rec["prepare_s"] = prep.elapsed_s();
  fill_frames(e, spec, zero_frames);
  for (int i = 0; i < 5; ++i) e.run();
  std::vector<double> wall, up, pre, vis, llm, dev;
  for (int i = 0; i < iters; ++i) {
    Stopwatch sw;
    e.run();  // synchronises
    wall.push_back(sw.elapsed_ms());
    StageTimes st = e.last_times();
    up.push_back(st.upload_ms);
    pre.push_back(st.preprocess_ms);
    vis.push_back(st.vision_ms);
    llm.push_back(st.llm_ms);
    dev.push_back(st.total_ms);
  }
  std::vector<double> vonly;
  for (int i = 0; i < iters; ++i) {
    Stopwatch sw;
    e.run_vision_only();
    vonly.push_back(sw.elapsed_ms());
  }
  Timing t{median(wall), median(up), median(pre), median(vis), median(llm), median(dev)};
  rec["wall_ms"] = t.wall_ms;
  rec["wall_min_ms"] = *std::min_element(wall.begin(), wall.end());
  rec["upload_ms"] = t.upload_ms;
  rec["preprocess_ms"] = t.pre_ms;
  rec["vision_ms"] = t.vision_ms;
  rec["vision_only_wall_ms"] = median(vonly);
  rec["llm_ms"] = t.llm_ms;
  rec["device_total_ms"] = t.device_ms;
  rec["tokens_per_sequence"] = e.plan_token_ids().size();
  rec["vision_patches"] = e.plan_vision_patches();
  rec["flops"] = e.plan_flops();
  rec["vision_flops"] = e.plan_vision_flops();
  rec["graphs"] = e.plan_uses_graphs();
  rec["attention"] = e.attention_backend();
  std::printf("  attention %s\n", e.attention_backend().c_str());
  auto f = e.run();
  rec["features_shape"] = f.sizes().vec();
  rec["features_finite"] = at::isfinite(f).all().item<bool>();
  if (keep) *keep = f.clone();
  return t;
}

// Per-op device times of the 5-view plan (eager, CUDA events, mean of 5 passes) on the random
// frames time_plan measures.
nlohmann::json profile_plan(Engine& engine, const Qwen25VLConfig& dims, int height, int width,
                            const std::string& title) {
  nlohmann::json prec;
  PlanSpec spec;
  spec.views = 5;
  spec.height = height;
  spec.width = width;
  spec.prompt_ids = peer_prompt(dims, 5, false);
  engine.set_cuda_graphs(false);
  engine.prepare(spec);
  engine.set_cuda_graphs(true);
  fill_frames(engine, spec, false);
  engine.profile_run();
  std::vector<std::pair<std::string, double>> acc;
  const int reps = 5;
  for (int r = 0; r < reps; ++r) {
    for (const auto& [k, ms] : engine.profile_run()) {
      auto it = std::find_if(acc.begin(), acc.end(), [&](const auto& p) { return p.first == k; });
      if (it == acc.end())
        acc.emplace_back(k, ms / reps);
      else
        it->second += ms / reps;
    }
  }
  double total = 0;
  for (const auto& kv : acc) total += kv.second;
  Table tab({title, "ms", "%"});
  for (const auto& [k, ms] : acc) {
    tab.add_row({k, fmt_double(ms, 3), fmt_double(100.0 * ms / total, 1)});
    prec["ops_ms"][k] = ms;
  }
  tab.add_row({"total", fmt_double(total, 3), "100"});
  tab.print();
  return prec;
}

// GPU milliseconds per call: 20 calls in a CUDA graph, best of 5 replays (device::gpu_time_ms), so
// small kernels are not timed by how fast the host can launch them.
double time_ms(const std::function<void()>& fn) {
  return gpu::device::gpu_time_ms(fn, at::Device(at::kCUDA, 0), 20, 5);
}

// a [M, K] quantised as the engine's calibrated activations are: one static scale (here the
// tensor's own amax), so that linear_fp8 runs tensor-wise against quantize_fp8_tensor weights.
ops::Fp8Rows static_fp8(const at::Tensor& a) {
  return ops::quantize_fp8(a, true, (a.abs().amax().to(at::kFloat) / 448.0).reshape({1}));
}

// cuBLAS rates for the shapes the engine runs: bf16, and FP8 through the engine's own quantise +
// _scaled_mm path with row-wise scales (plain and fast accumulation) and with tensor-wise scales
// (fast accumulation: calibrated static scales, Engine::calibrate_fp8).
nlohmann::json gemm_rates(bool fp8) {
  nlohmann::json rec;
  Table g({"GEMM M x K -> N", "bf16 ms", "TFLOP/s", "fp8 ms", "TFLOP/s", "fp8 fast ms", "TFLOP/s",
           "fp8 tensor-wise ms", "TFLOP/s"});
  const std::vector<std::array<int64_t, 3>> shapes = {
      {5980, 1176, 1280}, {5980, 1280, 3840},  {5980, 1280, 1280},  {5980, 1280, 6912},
      {5980, 3456, 1280}, {5980, 3420, 1280},  {1495, 5120, 5120},  {1525, 2048, 2560},
      {1525, 2048, 2048}, {1525, 2048, 22016}, {1525, 11008, 2048}, {1196, 1280, 3840},
      {1196, 1280, 6912}, {1196, 3456, 1280},  {321, 2048, 2560},   {321, 2048, 22016},
      {321, 11008, 2048}, {8192, 8192, 8192}};
  auto o = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  for (const auto& sh : shapes) {
    auto a = at::randn({sh[0], sh[1]}, o);
    auto b = at::randn({sh[2], sh[1]}, o);
    const double flop = 2.0 * sh[0] * sh[1] * sh[2];
    auto tf = [&](double ms) { return flop / (ms * 1e-3) / 1e12; };
    const std::string name =
        std::to_string(sh[0]) + " x " + std::to_string(sh[1]) + " -> " + std::to_string(sh[2]);
    const double ms = time_ms([&]() { at::mm(a, b.t()); });
    std::vector<std::string> row = {name, fmt_double(ms, 3), fmt_double(tf(ms), 0)};
    rec[name]["bf16_tflops"] = tf(ms);
    if (fp8 && sh[1] % 16 == 0 && sh[2] % 16 == 0) {
      // One FP8 product (x, w quantised by `quantise`) timed into the row and rec[name][key];
      // a failure fills the cells and rec[name][error_key].
      auto fp8_cells = [&](const char* key, const char* error_key,
                           const std::function<std::pair<ops::Fp8Rows, ops::Fp8Rows>()>& quantise,
                           bool fast) {
        try {
          const std::pair<ops::Fp8Rows, ops::Fp8Rows> q = quantise();
          const double m8 =
              time_ms([&]() { ops::linear_fp8(q.first, q.second, {}, at::kBFloat16, fast); });
          row.push_back(fmt_double(m8, 3));
          row.push_back(fmt_double(tf(m8), 0));
          rec[name][key] = tf(m8);
        } catch (const std::exception& e) {
          row.push_back("error");
          row.push_back("-");
          rec[name][error_key] = e.what();
        }
      };
      auto row_wise = [&]() {
        return std::make_pair(ops::quantize_fp8(a, true), ops::quantize_fp8(b, true));
      };
      fp8_cells("fp8_tflops", "fp8_error", row_wise, false);
      fp8_cells("fp8_fast_tflops", "fp8_error", row_wise, true);
      fp8_cells(
          "fp8_tensorwise_tflops", "fp8_tensorwise_error",
          [&]() { return std::make_pair(static_fp8(a), ops::quantize_fp8_tensor(b)); }, true);
    } else {
      for (int i = 0; i < 6; ++i) row.push_back("-");
    }
    g.add_row(row);
  }
  g.print();
  return rec;
}

// The plan's GEMM floor: each of its matrix products (Engine::plan_gemms: shapes, counts, bf16 or
// e4m3) timed alone through the same cuBLAS calls the engine makes, summed. A plan can only beat
// this by fusing or skipping GEMMs; wall / floor says how much else it spends. Shapes are timed
// once per process.
double gemm_floor_ms(const std::vector<PlanGemm>& gemms) {
  static std::map<std::string, double> memo;
  auto o = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  double total = 0;
  for (const PlanGemm& g : gemms) {
    const std::string key = std::to_string(g.m) + "x" + std::to_string(g.k) + "x" +
                            std::to_string(g.n) +
                            (g.fp8 ? (g.tensorwise ? "/fp8-tensor" : "/fp8") : "/bf16");
    auto it = memo.find(key);
    if (it == memo.end()) {
      auto a = at::randn({g.m, g.k}, o);
      auto b = at::randn({g.n, g.k}, o);
      double ms = 0;
      if (g.fp8) {
        auto aq = g.tensorwise ? static_fp8(a) : ops::quantize_fp8(a, true);
        auto bq = g.tensorwise ? ops::quantize_fp8_tensor(b) : ops::quantize_fp8(b, true);
        ms = time_ms([&]() { ops::linear_fp8(aq, bq, {}, at::kBFloat16, true); });
      } else {
        ms = time_ms([&]() { at::mm(a, b.t()); });
      }
      it = memo.emplace(key, ms).first;
    }
    total += it->second * g.count;
  }
  return total;
}

// The backend-parity table's cases at this model's shapes (src/gpu/op_table.h, the cases test_gpu
// checks at unit shapes): fused kernel vs ATen reference, time and error, plus achieved bandwidth.
nlohmann::json op_table_rates(const Qwen25VLConfig& dims, int views, int height, int width) {
  nlohmann::json rec;
  Table t({"op (bf16, model shape)", "fused ms", "reference ms", "speed-up", "fused GB/s",
           "err vs ref", "err vs f64"});
  const at::Device dev(at::kCUDA, 0);
  for (const ops::OpCase& c : ops::model_cases(dims, views, height, width)) {
    if (c.fp8() && !fp8_available(dev)) continue;
    try {
      const double fused = time_ms(ops::op_runner(c, dev, true));
      const double ref = time_ms(ops::op_runner(c, dev, false));
      const ops::OpParity p = ops::check_op(c, dev);
      // Bytes the op must move at least: inputs read once, outputs written once.
      const double elems = static_cast<double>(c.dims[0]) * static_cast<double>(c.dims[1]);
      double bytes = 0;
      if (c.op == "silu_mul") bytes = elems * 2 * 2 + elems * 2;
      if (c.op == "silu_mul_fp8") bytes = elems * 2 * 2 + elems;
      if (c.op == "add_rms_norm") bytes = elems * 2 * 2 + elems * 2 * 2;
      if (c.op == "add_rms_norm_fp8") bytes = elems * 2 * 2 + elems * 2 + elems;
      if (c.op == "quantize_fp8") bytes = elems * 2 + elems;
      if (c.op == "rotary") bytes = 2.0 * elems * static_cast<double>(c.dims[2]) * 2;
      if (c.op == "gemv") bytes = elems * 2;               // the weights, read once
      if (c.op == "gemv_fp8") bytes = elems;               // e4m3 weights
      if (c.op == "gemv_silu_mul") bytes = 2 * elems * 2;  // gate and up rows
      if (c.op == "gemv_silu_mul_fp8") bytes = 2 * elems;
      const std::string gbs = bytes > 0 ? fmt_double(bytes / (fused * 1e-3) / 1e9, 0) : "-";
      t.add_row({c.label(), fmt_double(fused, 4), fmt_double(ref, 4), fmt_double(ref / fused, 1),
                 gbs, fmt_double(p.fused_vs_reference, 5), fmt_double(p.fused_vs_f64, 5)});
      rec[c.label()] = {{"fused_ms", fused},
                        {"reference_ms", ref},
                        {"fused_vs_reference", p.fused_vs_reference},
                        {"fused_vs_f64", p.fused_vs_f64},
                        {"reference_vs_f64", p.reference_vs_f64}};
    } catch (const std::exception& e) {
      t.add_row({c.label(), "error", "-", "-", "-", "-", e.what()});
      rec[c.label()] = {{"error", e.what()}};
    }
  }
  t.print();
  return rec;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_gpu: Qwen2.5-VL GPU fast-path timings"};
  std::string model, json_out, peer;
  std::string config_dir = "assets/configs/qwen2.5-vl-3b-instruct";
  int height = 360, width = 640, iters = 30, decode_tokens = 64, vlm_layers = -1;
  double peak_tflops = 798.0;
  bool eager = true;
  bool profile = true;
  bool fp8 = true;
  app.add_option("--model", model, "checkpoint folder (default: random weights of --config)");
  app.add_option("--config", config_dir,
                 "architecture for random weights: a folder with config.json (+ processor config)");
  app.add_option("--height", height, "frame height (default 360)");
  app.add_option("--width", width, "frame width (default 640)");
  app.add_option("--iters", iters, "timed runs per case, median reported (default 30)");
  app.add_option("--decode-tokens", decode_tokens,
                 "greedy tokens for the decode test (default 64; 0 = skip)");
  app.add_option("--vlm-layers", vlm_layers,
                 "also time 5 views with features from the first K decoder layers (default: half "
                 "of them; 0 = skip)");
  app.add_option("--peak-tflops", peak_tflops,
                 "bf16 matmul peak used for the FLOP floor (default 798, measured H100)");
  app.add_option("--eager", eager, "also time 5 views without CUDA graphs (default true)");
  app.add_option("--profile", profile,
                 "per-op device times of the 5-view plan + GEMM shape rates (default true)");
  app.add_option("--fp8", fp8,
                 "also time the FP8 (e4m3) engine and its error vs bf16 (default true, when the "
                 "GPU has FP8 GEMMs)");
  app.add_option("--peer", peer,
                 "peer_qwen25vl.json from the same machine, for the side-by-side table");
  app.add_option("--json", json_out, "write all numbers as JSON");
  CLI11_PARSE(app, argc, argv);
  try {
    configure_torch_threads();
    VLA_CHECK(cuda_available(), "bench_gpu needs a CUDA device");
    EngineOptions opts = EngineOptions::best_available();
    fp8 = fp8 && fp8_available(opts.device);
    const std::string arch_dir = model.empty() ? config_dir : model;
    const Qwen25VLConfig dims = Qwen25VLConfig::load(arch_dir);
    if (vlm_layers < 0) vlm_layers = dims.text.num_hidden_layers / 2;
    VLA_CHECK(vlm_layers <= dims.text.num_hidden_layers, "--vlm-layers ", vlm_layers,
              " but the model has ", dims.text.num_hidden_layers, " decoder layers");
    const ImagePreprocessConfig image_config = ImagePreprocessConfig::from_folder(arch_dir);
    auto make_engine = [&](const EngineOptions& o) {
      return model.empty() ? Engine::random(dims, image_config, o, 0)
                           : Engine::from_pretrained(model, o);
    };
    Stopwatch load;
    std::unique_ptr<Engine> engine = make_engine(opts);
    nlohmann::json out;
    out["device"] = device_name(opts.device);
    out["torch"] = torch_build_info();
    out["model"] = model.empty() ? "random weights (bf16), architecture " + config_dir : model;
    out["attention"] = engine->attention_backend();
    out["load_s"] = load.elapsed_s();
    out["frame"] = std::to_string(width) + "x" + std::to_string(height);
    std::printf("device: %s | attention: %s | load %.1f s\n",
                out["device"].get<std::string>().c_str(), engine->attention_backend().c_str(),
                load.elapsed_s());
    struct Case {
      std::string key;
      int views;
      ViewLayout layout;
      bool graphs;
      bool fast_accum;
      int64_t min_rows;
      int text_layers = 0;  // PlanSpec::text_layers (0 = all)
      // FP8: static activation scales calibrated on other frames (Engine::calibrate_fp8).
      bool calibrated = false;
      // with calibrated: EngineOptions::fp8_output_projections
      EngineOptions::Fp8OutputProjections out_proj = EngineOptions{}.fp8_output_projections;
      bool residual_in_gemm = true;  // EngineOptions::residual_in_gemm
      bool zero_frames = false;      // time on all-zero frames (fill_frames)
      bool swiglu_in_gemm = true;    // EngineOptions::swiglu_in_gemm
    };
    std::map<std::string, at::Tensor> bf16_features, fp32_features;
    // Times `cases` on `e` into out[section]; with `reference` the features are compared.
    auto run_cases = [&](Engine& e, const std::vector<Case>& cases, const std::string& section,
                         bool keep, bool compare) {
      for (const auto& c : cases) {
        PlanSpec spec;
        spec.views = c.views;
        spec.height = height;
        spec.width = width;
        spec.layout = c.layout;
        spec.text_layers = c.text_layers;
        spec.prompt_ids = peer_prompt(dims, c.views, c.layout == ViewLayout::kBatch);
        nlohmann::json rec;
        e.set_cuda_graphs(c.graphs);
        e.set_residual_in_gemm(c.residual_in_gemm);
        e.set_swiglu_in_gemm(c.swiglu_in_gemm);
        if (e.options().fp8) {
          e.set_fp8_fast_accum(c.fast_accum);
          e.set_fp8_min_rows(c.min_rows);
          e.set_fp8_output_projections(c.out_proj);
        }
        try {
          if (c.calibrated) {
            e.clear_fp8_calibration();
            e.prepare(spec);
            at::manual_seed(2);  // not the frames time_plan measures on
            std::vector<at::Tensor> frames;
            std::vector<const uint8_t*> ptrs;
            for (int v = 0; v < c.views; ++v) {
              frames.push_back(at::randint(0, 256, {height, width, 3}, at::kByte));
              ptrs.push_back(frames.back().data_ptr<uint8_t>());
            }
            Stopwatch cal;
            e.calibrate_fp8(ptrs);
            rec["calibrate_s"] = cal.elapsed_s();
          }
          at::Tensor f;
          Timing t = time_plan(e, spec, iters, rec, &f, c.zero_frames);
          rec["zero_frames"] = c.zero_frames;
          rec["floor_ms"] = rec["flops"].get<double>() / (peak_tflops * 1e12) * 1e3;
          rec["vision_floor_ms"] = rec["vision_flops"].get<double>() / (peak_tflops * 1e12) * 1e3;
          rec["gemm_floor_ms"] = gemm_floor_ms(e.plan_gemms());
          rec["text_layers"] = c.text_layers;
          std::printf(
              "%-22s wall %.2f ms (upload %.2f, preprocess %.2f, vision %.2f, llm %.2f) | "
              "vision-only %.2f ms | %.1f TFLOP -> floor %.2f ms | GEMM floor %.2f ms | graphs "
              "%d\n",
              (section + "/" + c.key).c_str(), t.wall_ms, t.upload_ms, t.pre_ms, t.vision_ms,
              t.llm_ms, rec["vision_only_wall_ms"].get<double>(), rec["flops"].get<double>() / 1e12,
              rec["floor_ms"].get<double>(), rec["gemm_floor_ms"].get<double>(),
              rec["graphs"].get<bool>() ? 1 : 0);
          // Features are compared only with those of the same views, layout and depth (the fp32
          // reference has all layers).
          const std::string base_key =
              std::to_string(c.views) + "/" + (c.layout == ViewLayout::kBatch ? "batch" : "seq") +
              (c.text_layers > 0 ? "/layers" + std::to_string(c.text_layers) : "") +
              (c.zero_frames ? "/zero" : "");
          if (keep) bf16_features[base_key] = f;
          if (compare && bf16_features.count(base_key)) {
            const double err = rel_err(f, bf16_features[base_key]);
            rec["rel_err_vs_bf16"] = err;
            std::printf("%-22s features rel. err vs bf16 engine: %.4f\n",
                        (section + "/" + c.key).c_str(), err);
          }
          if (fp32_features.count(base_key)) {
            const double err = rel_err(f, fp32_features[base_key]);
            rec["rel_err_vs_fp32"] = err;
            std::printf("%-22s features rel. err vs fp32 engine: %.4f\n",
                        (section + "/" + c.key).c_str(), err);
          }
        } catch (const std::exception& ex) {
          rec["error"] = ex.what();
          std::printf("%-22s FAILED: %s\n", (section + "/" + c.key).c_str(), ex.what());
        }
        if (c.calibrated) e.clear_fp8_calibration();
        e.set_cuda_graphs(true);
        out[section][c.key] = rec;
        std::fflush(stdout);
      }
    };
    if (fp8) {
      // float32 reference of the same model (random weights are bf16-rounded for every dtype),
      // eager, math attention: the yardstick for the bf16 and fp8 errors.
      try {
        EngineOptions o32 = opts;
        o32.dtype = at::kFloat;
        o32.cuda_graphs = false;
        std::unique_ptr<Engine> e32 = make_engine(o32);
        for (int views : {1, 5}) {
          PlanSpec spec;
          spec.views = views;
          spec.height = height;
          spec.width = width;
          spec.prompt_ids = peer_prompt(dims, views, false);
          e32->prepare(spec);
          at::manual_seed(1);  // the frames of time_plan
          for (int v = 0; v < views; ++v) {
            auto r = at::randint(0, 256, {height, width, 3}, at::kByte);
            std::memcpy(e32->frame_buffer(v), r.data_ptr<uint8_t>(),
                        static_cast<size_t>(r.numel()));
          }
          fp32_features[std::to_string(views) + "/seq"] = e32->run().clone();
        }
        std::printf("fp32 reference features computed (eager, math attention)\n");
      } catch (const std::exception& e) {
        out["fp32_reference_error"] = e.what();
        std::printf("fp32 reference FAILED: %s\n", e.what());
      }
    }
    // A case like `base` under another key, changed by `change`.
    auto variant = [](Case base, const std::string& key, const std::function<void(Case&)>& change) {
      base.key = key;
      change(base);
      return base;
    };
    const Case one_view{"1view", 1, ViewLayout::kOneSequence, true, false, 0};
    const Case five_views{"5view", 5, ViewLayout::kOneSequence, true, false, 0};
    // (the comparisons first: the last case of a shape keeps its features)
    std::vector<Case> cases = {
        variant(one_view, "1view_swiglu_kernel", [](Case& c) { c.swiglu_in_gemm = false; }),
        one_view,
        variant(five_views, "5view_residual_add_kernel",
                [](Case& c) { c.residual_in_gemm = false; }),
        variant(five_views, "5view_swiglu_kernel", [](Case& c) { c.swiglu_in_gemm = false; }),
        five_views,
        variant(five_views, "5view_batched", [](Case& c) { c.layout = ViewLayout::kBatch; }),
        variant(five_views, "5view_zero_frames", [](Case& c) { c.zero_frames = true; })};
    if (eager) cases.push_back({"5view_eager", 5, ViewLayout::kOneSequence, false, false, 0});
    const std::string mid_key = "5view_layers" + std::to_string(vlm_layers);
    if (vlm_layers > 0)
      cases.push_back({mid_key, 5, ViewLayout::kOneSequence, true, false, 0, vlm_layers});
    run_cases(*engine, cases, "cases", true, false);
    if (profile) {
      try {
        out["profile"] = profile_plan(*engine, dims, height, width, "op (5 views, bf16, eager)");
        out["profile"]["gemm"] = gemm_rates(fp8);
        out["profile"]["ops"] = op_table_rates(dims, 5, height, width);
      } catch (const std::exception& e) {
        out["profile"]["error"] = e.what();
        std::printf("profile FAILED: %s\n", e.what());
      }
      std::fflush(stdout);
    }
    // One view, as for captioning: prefill, then greedy tokens (the decode step is one CUDA graph).
    auto decode_rate = [&](Engine& e, const char* what) {
      nlohmann::json rec;
      try {
        std::vector<uint8_t> frame(static_cast<size_t>(height) * width * 3, 77);
        auto [pv, grid] = e.preprocess({frame.data()}, height, width);
        const int64_t n = grid[0][1].item<int64_t>() * grid[0][2].item<int64_t>() / 4;
        std::vector<int64_t> ids;
        for (int64_t id : peer_prompt(dims, 1, false)) {
          if (id == dims.image_token_id)
            ids.insert(ids.end(), n, id);
          else
            ids.push_back(id);
        }
        double ms = 0;
        e.generate_greedy(ids, pv, grid, 4, {}, &ms);  // warm-up
        auto toks = e.generate_greedy(ids, pv, grid, decode_tokens + 1, {}, &ms);
        rec["tokens"] = static_cast<int>(toks.size()) - 1;
        rec["decode_ms"] = ms;
        rec["tokens_per_s"] = (toks.size() - 1) / (ms / 1e3);
        const std::string products = e.decode_report();
        rec["products"] = products;
        std::printf("decode %-6s products: %s\n", what, products.c_str());
        std::printf("decode %-6s %d tokens in %.1f ms -> %.1f tokens/s (greedy, 1 view)\n", what,
                    rec["tokens"].get<int>(), ms, rec["tokens_per_s"].get<double>());
      } catch (const std::exception& ex) {
        rec["error"] = ex.what();
        std::printf("decode %s FAILED: %s\n", what, ex.what());
      }
      std::fflush(stdout);
      return rec;
    };
    if (decode_tokens > 0) out["decode"] = decode_rate(*engine, "bf16");
    if (fp8) {
      // Same weights (same seed / checkpoint), projections quantised at load.
      engine.reset();
      EngineOptions o8 = opts;
      o8.fp8 = true;
      Stopwatch load8;
      std::unique_ptr<Engine> e8;
      try {
        e8 = make_engine(o8);
        out["fp8_load_s"] = load8.elapsed_s();
        using OutProj = EngineOptions::Fp8OutputProjections;
        const Case one8{"1view", 1, ViewLayout::kOneSequence, true, true, 0};
        const Case five8{"5view", 5, ViewLayout::kOneSequence, true, true, 0};
        auto calibrated = [&](const Case& base, const std::string& key, OutProj out_proj) {
          return variant(base, key, [&](Case& c) {
            c.calibrated = true;
            c.out_proj = out_proj;
          });
        };
        const OutProj product = EngineOptions{}.fp8_output_projections;
        const Case one_static = calibrated(one8, "1view_static", product);
        const Case five_static = calibrated(five8, "5view_static", product);
        std::vector<Case> c8 = {
            one8,
            variant(one8, "1view_min_rows_1024", [](Case& c) { c.min_rows = 1024; }),
            five8,
            variant(five8, "5view_exact_accum", [](Case& c) { c.fast_accum = false; }),
            variant(one_static, "1view_static_swiglu_kernel",
                    [](Case& c) { c.swiglu_in_gemm = false; }),
            one_static,
            variant(five_static, "5view_static_swiglu_kernel",
                    [](Case& c) { c.swiglu_in_gemm = false; }),
            five_static,
            calibrated(one8, "1view_static_out_proj", OutProj::kAll),
            calibrated(five8, "5view_static_out_proj", OutProj::kAll),
            calibrated(one8, "1view_static_out_proj_none", OutProj::kNone),
            calibrated(five8, "5view_static_out_proj_none", OutProj::kNone),
            calibrated(five8, "5view_static_out_proj_decoder", OutProj::kDecoder),
            variant(five_static, "5view_static_residual_add_kernel",
                    [](Case& c) { c.residual_in_gemm = false; }),
            variant(five_static, "5view_static_zero_frames",
                    [](Case& c) { c.zero_frames = true; })};
        if (vlm_layers > 0)
          c8.push_back({mid_key, 5, ViewLayout::kOneSequence, true, true, 0, vlm_layers});
        run_cases(*e8, c8, "fp8", false, true);
        // The FP8 engine's decode (its step runs the kept bf16 weights through cuBLAS).
        if (decode_tokens > 0) out["fp8_decode"] = decode_rate(*e8, "fp8");
        if (profile) {
          e8->set_fp8_fast_accum(true);
          e8->set_fp8_min_rows(0);
          out["fp8_profile"] = profile_plan(*e8, dims, height, width, "op (5 views, fp8, eager)");
        }
      } catch (const std::exception& e) {
        out["fp8"]["error"] = e.what();
        std::printf("fp8 FAILED: %s\n", e.what());
      }
      std::fflush(stdout);
    }
    if (!peer.empty() && file_exists(peer)) {
      nlohmann::json p = read_json(peer);
      out["peer"] = p;
      auto pm = [&](const std::string& k, const char* f) -> double {
        return p.contains(k) && p[k].contains(f) ? p[k][f].get<double>() : 0.0;
      };
      auto num = [&](const nlohmann::json& sec, const std::string& k,
                     const std::function<double(const nlohmann::json&)>& f) -> double {
        return sec.contains(k) && sec[k].contains("wall_ms") ? f(sec[k]) : 0.0;
      };
      const nlohmann::json none = nlohmann::json::object();
      const nlohmann::json& c16 = out["cases"];
      const nlohmann::json& c8 = out.contains("fp8") ? out["fp8"] : none;
      Table tab({"case", "ours bf16 ms", "ours fp8 ms", "transformers ms", "ratio bf16",
                 "ratio fp8", "FLOP floor ms", "GEMM floor bf16 ms (share)",
                 "GEMM floor fp8 ms (share)"});
      auto ms = [](double v) { return v > 0 ? fmt_double(v, 2) : std::string("-"); };
      auto ratio = [](double theirs, double ours) {
        return theirs > 0 && ours > 0 ? fmt_double(theirs / ours, 1) + "x" : std::string("-");
      };
      // GEMM floor of a case (gemm_floor_ms) and its share of the measured time: 1.0 = nothing
      // but the plan's GEMMs at cuBLAS' speed.
      auto share = [&](const nlohmann::json& sec, const std::string& k, double ours) {
        if (k.empty() || !sec.contains(k) || !sec[k].contains("gemm_floor_ms") || ours <= 0)
          return std::string("-");
        const double f = sec[k]["gemm_floor_ms"].get<double>();
        return fmt_double(f, 2) + " (" + fmt_double(f / ours, 2) + ")";
      };
      auto row = [&](const std::string& name, double b16, double f8, double theirs, double floor_ms,
                     const std::string& key = "", const std::string& key8 = "") {
        tab.add_row({name, ms(b16), ms(f8), theirs > 0 ? fmt_double(theirs, 1) : "-",
                     ratio(theirs, b16), ratio(theirs, f8), ms(floor_ms), share(c16, key, b16),
                     share(c8, key8.empty() ? key : key8, f8)});
      };
      auto wall = [](const nlohmann::json& c) { return c["wall_ms"].get<double>(); };
      auto model_ms = [](const nlohmann::json& c) {
        return c["vision_ms"].get<double>() + c["llm_ms"].get<double>();
      };
      auto vis = [](const nlohmann::json& c) { return c["vision_only_wall_ms"].get<double>(); };
      auto floor_of = [&](const std::string& k, const char* f) {
        return c16.contains(k) && c16[k].contains(f) ? c16[k][f].get<double>() : 0.0;
      };
      // transformers' times for a view count: the prefill, end to end (prefill + its own
      // preprocessing; 0 when the peer has no such case), the vision tower.
      auto peer_prefill = [&](const std::string& v) {
        return pm("sdpa/" + v + "/full_prefill", "median_ms");
      };
      auto peer_e2e = [&](const std::string& v) {
        const double full = peer_prefill(v);
        return full > 0 ? full + pm("sdpa/" + v + "/full_prefill", "preprocess_ms") : 0.0;
      };
      auto peer_vision = [&](const std::string& v) {
        return pm("sdpa/" + v + "/vision_only", "median_ms");
      };
      for (const std::string v : {"1view", "5view"}) {
        row(v + " end-to-end (incl. preprocess)", num(c16, v, wall), num(c8, v, wall), peer_e2e(v),
            floor_of(v, "floor_ms"), v);
        row(v + " model only (GPU)", num(c16, v, model_ms), num(c8, v, model_ms), peer_prefill(v),
            floor_of(v, "floor_ms"));
        row(v + " vision tower", num(c16, v, vis), num(c8, v, vis), peer_vision(v),
            floor_of(v, "vision_floor_ms"));
      }
      row("1view end-to-end, fp8 only for >= 1024 rows", 0, num(c8, "1view_min_rows_1024", wall),
          peer_e2e("1view"), floor_of("1view", "floor_ms"), "", "1view_min_rows_1024");
      if (vlm_layers > 0)
        row("5view end-to-end, features of layer " + std::to_string(vlm_layers) + " of " +
                std::to_string(dims.text.num_hidden_layers),
            num(c16, mid_key, wall), num(c8, mid_key, wall), 0, floor_of(mid_key, "floor_ms"),
            mid_key);
      for (const std::string v : {"1view", "5view"}) {
        row(v + " end-to-end, fp8 static scales (vision out-proj fp8)", 0,
            num(c8, v + "_static", wall), peer_e2e(v), floor_of(v, "floor_ms"), "", v + "_static");
        row(v + " vision tower, fp8 static scales", 0, num(c8, v + "_static", vis), peer_vision(v),
            floor_of(v, "vision_floor_ms"));
        for (const auto& [suffix, what] :
             {std::pair<std::string, std::string>{"_static_out_proj_none", "no out-proj"},
              {"_static_out_proj_decoder", "decoder out-proj"},
              {"_static_out_proj", "all out-proj"}})
          if (c8.contains(v + suffix))
            row(v + " end-to-end, fp8 static + " + what + " fp8", 0, num(c8, v + suffix, wall),
                peer_e2e(v), floor_of(v, "floor_ms"), "", v + suffix);
      }
      row("5view end-to-end, residual add in the norm kernel (not the GEMM)",
          num(c16, "5view_residual_add_kernel", wall),
          num(c8, "5view_static_residual_add_kernel", wall), peer_e2e("5view"),
          floor_of("5view", "floor_ms"));
      for (const std::string v : {"1view", "5view"})
        row(v + " end-to-end, SwiGLU as its own kernel (not the GEMM's epilogue)",
            num(c16, v + "_swiglu_kernel", wall), num(c8, v + "_static_swiglu_kernel", wall),
            peer_e2e(v), floor_of(v, "floor_ms"));
      row("5view end-to-end, fp8 without fast accum", 0, num(c8, "5view_exact_accum", wall),
          peer_e2e("5view"), floor_of("5view", "floor_ms"));
      row("5view vision tower, fp8 without fast accum", 0, num(c8, "5view_exact_accum", vis),
          peer_vision("5view"), floor_of("5view", "vision_floor_ms"));
      row("5view as batch (model only)", num(c16, "5view_batched", model_ms), 0,
          pm("sdpa/5view_batched/full_prefill", "median_ms"),
          floor_of("5view_batched", "floor_ms"));
      if (out.contains("decode") && out["decode"].contains("tokens_per_s")) {
        const double theirs = pm("sdpa/1view/decode", "tokens_per_s");
        const double ours = out["decode"]["tokens_per_s"].get<double>();
        const double ours8 =
            out.contains("fp8_decode") && out["fp8_decode"].contains("tokens_per_s")
                ? out["fp8_decode"]["tokens_per_s"].get<double>()
                : 0;
        tab.add_row(
            {"decode tokens/s (1 view)", fmt_double(ours, 1),
             ours8 > 0 ? fmt_double(ours8, 1) : "-", theirs > 0 ? fmt_double(theirs, 1) : "-",
             theirs > 0 ? fmt_double(ours / theirs, 1) + "x" : "-",
             theirs > 0 && ours8 > 0 ? fmt_double(ours8 / theirs, 1) + "x" : "-", "-", "-", "-"});
      }
      std::printf(
          "\n%s  (ratio = transformers / ours; FLOP floor = model FLOPs at %.0f TFLOP/s bf16; GEMM "
          "floor = the plan's GEMMs timed alone through cuBLAS, share = floor / ours)\n",
          out["device"].get<std::string>().c_str(), peak_tflops);
      tab.print();
      for (const std::string k : {"1view", "5view"}) {
        if (c16.contains(k) && c16[k].contains("rel_err_vs_fp32")) {
          std::printf("bf16 %-19s features (last hidden states) rel. err vs fp32: %.4f\n",
                      k.c_str(), c16[k]["rel_err_vs_fp32"].get<double>());
        }
      }
      for (const std::string k :
           {"1view", "1view_min_rows_1024", "5view", "5view_exact_accum", "1view_static",
            "5view_static", "1view_static_out_proj_none", "5view_static_out_proj_none",
            "5view_static_out_proj_decoder", "1view_static_out_proj", "5view_static_out_proj"}) {
        if (c8.contains(k) && c8[k].contains("rel_err_vs_bf16")) {
          std::printf(
              "fp8 %-20s features (last hidden states) rel. err vs bf16: %.4f, vs fp32: %.4f\n",
              k.c_str(), c8[k]["rel_err_vs_bf16"].get<double>(),
              c8[k].contains("rel_err_vs_fp32") ? c8[k]["rel_err_vs_fp32"].get<double>() : -1.0);
        }
      }
    }
    // How each GEMM problem ran (ops::linear / linear_fp8 / the accumulating GEMMs time ATen and
    // cuBLASLt's candidate algorithms once per problem).
    const std::string choices = ops::gemm_choices();
    out["gemm_choices"] = choices;
    std::printf("\nGEMM ways chosen (timed once per problem):\n%s", choices.c_str());
    if (!json_out.empty()) write_json_atomic(json_out, out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
