// bench_gpu: times the GPU fast path (src/gpu) on the Qwen2.5-VL-3B architecture (random bf16
// weights, or a checkpoint folder) for N views of WxH frames, end to end from host uint8 frames,
// with a per-stage breakdown, views as one sequence vs as a batch, graphs vs eager, and greedy
// decode tokens/s. With --peer FILE (peer_qwen25vl.json from bench/peer_qwen25vl.py, run on the
// same machine) it prints the side-by-side table. Run by bench/gpu_side_by_side.sh.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/core.h"
#include "gpu/gpu.h"
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

std::vector<int64_t> peer_prompt(const ModelDims& d, int views, bool batch) {
  // Same token layout as bench/peer_qwen25vl.py: chat header, images, 12 text tokens, footer.
  std::vector<int64_t> ids = {151644, 872, 198};
  const int n = batch ? 1 : views;
  for (int i = 0; i < n; ++i) {
    ids.push_back(d.text.vision_start_id);
    ids.push_back(d.text.image_token_id);
    ids.push_back(d.text.vision_end_id);
  }
  for (int i = 0; i < 12; ++i) ids.push_back(10);
  for (int64_t t : {151645, 198, 151644, 77091, 198}) ids.push_back(t);
  return ids;
}

Timing time_plan(Engine& e, const PlanSpec& spec, int iters, nlohmann::json& rec) {
  Stopwatch prep;
  e.prepare(spec);
  rec["prepare_s"] = prep.elapsed_s();
  at::manual_seed(1);
  for (int v = 0; v < spec.views; ++v) {
    auto r = at::randint(0, 256, {spec.height, spec.width, 3}, at::kByte);
    std::memcpy(e.frame_buffer(v), r.data_ptr<uint8_t>(), static_cast<size_t>(r.numel()));
  }
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
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_gpu: Qwen2.5-VL GPU fast-path timings"};
  std::string model, json_out, peer;
  int height = 360, width = 640, iters = 30, decode_tokens = 64;
  double peak_tflops = 798.0;
  bool eager = true;
  bool profile = true;
  app.add_option("--model", model, "checkpoint folder (default: random 3B-architecture weights)");
  app.add_option("--height", height, "frame height (default 360)");
  app.add_option("--width", width, "frame width (default 640)");
  app.add_option("--iters", iters, "timed runs per case, median reported (default 30)");
  app.add_option("--decode-tokens", decode_tokens,
                 "greedy tokens for the decode test (default 64; 0 = skip)");
  app.add_option("--peak-tflops", peak_tflops,
                 "bf16 matmul peak used for the FLOP floor (default 798, measured H100)");
  app.add_option("--eager", eager, "also time 5 views without CUDA graphs (default true)");
  app.add_option("--profile", profile,
                 "per-op device times of the 5-view plan + GEMM shape rates (default true)");
  app.add_option("--peer", peer,
                 "peer_qwen25vl.json from the same machine, for the side-by-side table");
  app.add_option("--json", json_out, "write all numbers as JSON");
  CLI11_PARSE(app, argc, argv);
  try {
    configure_torch_threads();
    VLA_CHECK(cuda_available(), "bench_gpu needs a CUDA device");
    EngineOptions opts = EngineOptions::best_available();
    std::unique_ptr<Engine> engine;
    ModelDims dims = ModelDims::qwen25vl_3b();
    Stopwatch load;
    if (!model.empty()) {
      dims = ModelDims::from_checkpoint_dir(model);
      auto ws = std::make_shared<WeightStore>(WeightStore::open(model));
      engine = std::make_unique<Engine>(
          dims, [ws](const std::string& n) { return ws->has(n) ? ws->get(n) : at::Tensor(); },
          opts);
      engine->preprocess_config() = PreprocessConfig::from_checkpoint_dir(model);
    } else {
      engine = Engine::random(dims, opts, 0);
    }
    nlohmann::json out;
    out["device"] = device_name(opts.device);
    out["torch"] = torch_build_info();
    out["model"] = model.empty() ? "random Qwen2.5-VL-3B architecture (bf16)" : model;
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
    };
    std::vector<Case> cases = {{"1view", 1, ViewLayout::kOneSequence, true},
                               {"5view", 5, ViewLayout::kOneSequence, true},
                               {"5view_batched", 5, ViewLayout::kBatch, true}};
    if (eager) cases.push_back({"5view_eager", 5, ViewLayout::kOneSequence, false});
    for (const auto& c : cases) {
      PlanSpec spec;
      spec.views = c.views;
      spec.height = height;
      spec.width = width;
      spec.layout = c.layout;
      spec.prompt_ids = peer_prompt(dims, c.views, c.layout == ViewLayout::kBatch);
      nlohmann::json rec;
      engine->set_cuda_graphs(c.graphs);
      try {
        Timing t = time_plan(*engine, spec, iters, rec);
        rec["floor_ms"] = rec["flops"].get<double>() / (peak_tflops * 1e12) * 1e3;
        rec["vision_floor_ms"] = rec["vision_flops"].get<double>() / (peak_tflops * 1e12) * 1e3;
        std::printf(
            "%-14s wall %.2f ms (upload %.2f, preprocess %.2f, vision %.2f, llm %.2f) | "
            "vision-only %.2f ms | %.1f TFLOP -> floor %.2f ms | graphs %d\n",
            c.key.c_str(), t.wall_ms, t.upload_ms, t.pre_ms, t.vision_ms, t.llm_ms,
            rec["vision_only_wall_ms"].get<double>(), rec["flops"].get<double>() / 1e12,
            rec["floor_ms"].get<double>(), rec["graphs"].get<bool>() ? 1 : 0);
      } catch (const std::exception& e) {
        rec["error"] = e.what();
        std::printf("%-14s FAILED: %s\n", c.key.c_str(), e.what());
      }
      engine->set_cuda_graphs(true);
      out["cases"][c.key] = rec;
      std::fflush(stdout);
    }
    if (profile) {
      nlohmann::json prec;
      try {
        PlanSpec spec;
        spec.views = 5;
        spec.height = height;
        spec.width = width;
        spec.prompt_ids = peer_prompt(dims, 5, false);
        engine->set_cuda_graphs(false);
        engine->prepare(spec);
        engine->set_cuda_graphs(true);
        engine->profile_run();
        std::vector<std::pair<std::string, double>> acc;
        const int reps = 5;
        for (int r = 0; r < reps; ++r) {
          for (const auto& [k, ms] : engine->profile_run()) {
            auto it =
                std::find_if(acc.begin(), acc.end(), [&](const auto& p) { return p.first == k; });
            if (it == acc.end())
              acc.emplace_back(k, ms / reps);
            else
              it->second += ms / reps;
          }
        }
        double total = 0;
        for (const auto& kv : acc) total += kv.second;
        Table tab({"op (5 views, eager, events)", "ms", "%"});
        for (const auto& [k, ms] : acc) {
          tab.add_row({k, fmt_double(ms, 3), fmt_double(100.0 * ms / total, 1)});
          prec["ops_ms"][k] = ms;
        }
        tab.add_row({"total", fmt_double(total, 3), "100"});
        tab.print();
        // cuBLAS rates for the shapes the engine runs
        Table g({"GEMM M x K -> N (bf16)", "ms", "TFLOP/s"});
        const std::vector<std::array<int64_t, 3>> shapes = {
            {5980, 1176, 1280}, {5980, 1280, 3840},  {5980, 1280, 1280},  {5980, 1280, 6912},
            {5980, 3456, 1280}, {5980, 3420, 1280},  {1495, 5120, 5120},  {1525, 2048, 2560},
            {1525, 2048, 2048}, {1525, 2048, 22016}, {1525, 11008, 2048}, {8192, 8192, 8192}};
        auto o = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
        for (const auto& sh : shapes) {
          auto a = at::randn({sh[0], sh[1]}, o);
          auto b = at::randn({sh[2], sh[1]}, o);
          for (int i = 0; i < 3; ++i) at::mm(a, b.t());
          torch::cuda::synchronize();
          Stopwatch sw;
          const int n = 20;
          for (int i = 0; i < n; ++i) at::mm(a, b.t());
          torch::cuda::synchronize();
          const double ms = sw.elapsed_ms() / n;
          const double tf = 2.0 * sh[0] * sh[1] * sh[2] / (ms * 1e-3) / 1e12;
          const std::string name = std::to_string(sh[0]) + " x " + std::to_string(sh[1]) + " -> " +
                                   std::to_string(sh[2]);
          g.add_row({name, fmt_double(ms, 3), fmt_double(tf, 0)});
          prec["gemm_tflops"][name] = tf;
        }
        g.print();
      } catch (const std::exception& e) {
        prec["error"] = e.what();
        std::printf("profile FAILED: %s\n", e.what());
      }
      out["profile"] = prec;
      std::fflush(stdout);
    }
    if (decode_tokens > 0) {
      nlohmann::json rec;
      try {
        // one view, as for captioning: prefill then greedy tokens (eager decode loop)
        PlanSpec spec;
        spec.views = 1;
        spec.height = height;
        spec.width = width;
        std::vector<uint8_t> frame(static_cast<size_t>(height) * width * 3, 77);
        auto [pv, grid] = engine->preprocess({frame.data()}, height, width);
        const int64_t n = grid[0][1].item<int64_t>() * grid[0][2].item<int64_t>() / 4;
        std::vector<int64_t> ids;
        for (int64_t id : peer_prompt(dims, 1, false)) {
          if (id == dims.text.image_token_id)
            ids.insert(ids.end(), n, id);
          else
            ids.push_back(id);
        }
        double ms = 0;
        engine->generate_greedy(ids, pv, grid, 4, {}, &ms);  // warm-up
        auto toks = engine->generate_greedy(ids, pv, grid, decode_tokens + 1, {}, &ms);
        rec["tokens"] = static_cast<int>(toks.size()) - 1;
        rec["decode_ms"] = ms;
        rec["tokens_per_s"] = (toks.size() - 1) / (ms / 1e3);
        std::printf("decode         %d tokens in %.1f ms -> %.1f tokens/s (greedy, eager loop)\n",
                    rec["tokens"].get<int>(), ms, rec["tokens_per_s"].get<double>());
      } catch (const std::exception& e) {
        rec["error"] = e.what();
        std::printf("decode FAILED: %s\n", e.what());
      }
      out["decode"] = rec;
    }
    if (!peer.empty() && file_exists(peer)) {
      nlohmann::json p = read_json(peer);
      out["peer"] = p;
      auto pm = [&](const std::string& k, const char* f) -> double {
        return p.contains(k) && p[k].contains(f) ? p[k][f].get<double>() : 0.0;
      };
      Table tab({"case", "ours ms", "transformers ms", "ratio", "floor ms", "ours/floor"});
      auto row = [&](const std::string& name, double ours, double theirs, double floor_ms) {
        tab.add_row({name, fmt_double(ours, 2), theirs > 0 ? fmt_double(theirs, 1) : "-",
                     theirs > 0 ? fmt_double(theirs / ours, 1) + "x" : "-",
                     floor_ms > 0 ? fmt_double(floor_ms, 2) : "-",
                     floor_ms > 0 ? fmt_double(floor_ms / ours * 100.0, 0) + "%" : "-"});
      };
      for (const std::string v : {"1view", "5view"}) {
        const auto& c = out["cases"][v];
        if (!c.contains("wall_ms")) continue;
        const double pre = pm("sdpa/" + v + "/full_prefill", "preprocess_ms");
        const double full = pm("sdpa/" + v + "/full_prefill", "median_ms");
        row(v + " end-to-end (incl. preprocess)", c["wall_ms"], full > 0 ? full + pre : 0,
            c["floor_ms"]);
        row(v + " model only (GPU)", c["vision_ms"].get<double>() + c["llm_ms"].get<double>(), full,
            c["floor_ms"]);
        row(v + " vision tower", c["vision_only_wall_ms"],
            pm("sdpa/" + v + "/vision_only", "median_ms"), c["vision_floor_ms"]);
      }
      if (out["cases"]["5view_batched"].contains("wall_ms")) {
        const auto& c = out["cases"]["5view_batched"];
        row("5view as batch (model only)", c["vision_ms"].get<double>() + c["llm_ms"].get<double>(),
            pm("sdpa/5view_batched/full_prefill", "median_ms"), c["floor_ms"]);
      }
      if (out.contains("decode") && out["decode"].contains("tokens_per_s")) {
        const double theirs = pm("sdpa/1view/decode", "tokens_per_s");
        tab.add_row({"decode tokens/s (1 view)", fmt_double(out["decode"]["tokens_per_s"], 1),
                     theirs > 0 ? fmt_double(theirs, 1) : "-",
                     theirs > 0
                         ? fmt_double(out["decode"]["tokens_per_s"].get<double>() / theirs, 1) + "x"
                         : "-",
                     "-", "-"});
      }
      std::printf(
          "\n%s  (ratio = transformers / ours; ours/floor = FLOP floor at %.0f TFLOP/s / ours)\n",
          out["device"].get<std::string>().c_str(), peak_tflops);
      tab.print();
    }
    if (!json_out.empty()) write_json_atomic(json_out, out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
