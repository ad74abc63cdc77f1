// bench_text: tokenizer encode throughput (MB/s) and safetensors I/O on a ~100 MB checkpoint.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "core/core.h"
#include "text/text.h"
#include "weights/weights.h"

namespace {

const std::string kTokDir = std::string(VLA_SOURCE_DIR) + "/tests/fixtures/tokenizer";

// The whole reference corpus (English, Korean, code, emoji, whitespace cases + the long text).
std::string corpus() {
  auto ref = vla::read_json(kTokDir + "/reference_ids.json");
  std::string text;
  for (const auto& c : ref["cases"]) text += c["text"].get<std::string>() + "\n";
  return text;
}

void BM_TokenizerEncode(benchmark::State& state) {
  static const vla::Tokenizer tok = vla::Tokenizer::from_folder(kTokDir);
  const std::string text = corpus();
  int64_t n = 0;
  for (auto _ : state) {
    auto ids = tok.encode(text);
    n += static_cast<int64_t>(ids.size());
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(text.size()));
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_TokenizerEncode)->Unit(benchmark::kMillisecond);

// Cold: a fresh tokenizer each iteration (no BPE word cache), includes nothing else.
void BM_TokenizerEncodeColdCache(benchmark::State& state) {
  const std::string text = corpus();
  for (auto _ : state) {
    state.PauseTiming();
    vla::Tokenizer tok = vla::Tokenizer::from_folder(kTokDir);
    state.ResumeTiming();
    benchmark::DoNotOptimize(tok.encode(text).data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(text.size()));
}
BENCHMARK(BM_TokenizerEncodeColdCache)->Unit(benchmark::kMillisecond);

void BM_TokenizerLoad(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(vla::Tokenizer::from_folder(kTokDir).vocab_size());
}
BENCHMARK(BM_TokenizerLoad)->Unit(benchmark::kMillisecond);

const std::string& big_file() {
  static const std::string path = [] {
    std::string p = "/tmp/vla_bench_text_" + std::to_string(getpid()) + ".safetensors";
    std::map<std::string, torch::Tensor> m;
    for (int i = 0; i < 25; ++i)
      m["model.layers." + std::to_string(i) + ".mlp.weight"] = torch::randn({1024, 1024});
    vla::save_safetensors(p, m);  // 25 x 4 MiB = 100 MiB
    std::atexit([] {
      std::remove(("/tmp/vla_bench_text_" + std::to_string(getpid()) + ".safetensors").c_str());
    });
    return p;
  }();
  return path;
}

// Open (mmap + header validation) and copy every tensor out (page cache warm).
void BM_SafetensorsLoadCopy100MB(benchmark::State& state) {
  const auto& p = big_file();
  for (auto _ : state) {
    auto f = vla::SafetensorsFile::open(p);
    for (const auto& n : f->names()) benchmark::DoNotOptimize(f->load(n).data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * 100 * 1024 * 1024);
}
BENCHMARK(BM_SafetensorsLoadCopy100MB)->Unit(benchmark::kMillisecond);

// Open and convert every tensor to bf16 (what a bf16 model load does).
void BM_SafetensorsLoadToBf16_100MB(benchmark::State& state) {
  const auto& p = big_file();
  for (auto _ : state) {
    auto f = vla::SafetensorsFile::open(p);
    for (const auto& n : f->names())
      benchmark::DoNotOptimize(f->load(n, torch::kBFloat16).data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * 100 * 1024 * 1024);
}
BENCHMARK(BM_SafetensorsLoadToBf16_100MB)->Unit(benchmark::kMillisecond);

// Zero-copy views, then one full read pass over the data (sum).
void BM_SafetensorsViewAndTouch100MB(benchmark::State& state) {
  const auto& p = big_file();
  for (auto _ : state) {
    auto f = vla::SafetensorsFile::open(p);
    double s = 0;
    for (const auto& n : f->names()) s += f->view(n).sum().item<double>();
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(state.iterations() * 100 * 1024 * 1024);
}
BENCHMARK(BM_SafetensorsViewAndTouch100MB)->Unit(benchmark::kMillisecond);

void BM_SafetensorsSave100MB(benchmark::State& state) {
  std::map<std::string, torch::Tensor> m;
  for (int i = 0; i < 25; ++i) m["w" + std::to_string(i)] = torch::randn({1024, 1024});
  const std::string p = "/tmp/vla_bench_text_save_" + std::to_string(getpid()) + ".safetensors";
  for (auto _ : state) vla::save_safetensors(p, m);
  std::remove(p.c_str());
  state.SetBytesProcessed(state.iterations() * 100 * 1024 * 1024);
}
BENCHMARK(BM_SafetensorsSave100MB)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
