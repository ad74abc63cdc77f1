// Prefill GEMMs through cuBLASLt with the algorithm chosen by measurement (kernels.h: gemm).
// cuBLASLt's heuristic ranks algorithms by a model of the GPU; at the engine's shapes its first
// choice is often not the fastest (the 1-view decoder's qkv 321 x 2048 -> 2560 ran at 120-170
// TFLOP/s), so the first call of each shape times the heuristic's candidates, each also with
// split-K where the algorithm allows it, on the real operands (GPU time in a CUDA graph), and keeps
// the fastest. The choice is kept per process (shape, types, epilogue, alignment), as TensorRT
// keeps its tactics.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "gpu/kernels.h"

namespace vla::gpu::kernels {
namespace {

const char* status_string(cublasStatus_t s) { return cublasLtGetStatusString(s); }

cublasLtHandle_t lt_handle() {
  static cublasLtHandle_t h = [] {
    cublasLtHandle_t handle = nullptr;
    return cublasLtCreate(&handle) == CUBLAS_STATUS_SUCCESS ? handle : nullptr;
  }();
  return h;
}

uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

// The descriptors of one product (created per call: cheap next to the product, and never shared
// between threads).
struct Descs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  Descs() = default;
  Descs(const Descs&) = delete;
  Descs& operator=(const Descs&) = delete;
  ~Descs() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
  template <typename V>
  void set(cublasLtMatmulDescAttributes_t attr, const V& v) {
    if (status == CUBLAS_STATUS_SUCCESS)
      status = cublasLtMatmulDescSetAttribute(op, attr, &v, sizeof(v));
  }
  template <typename V>
  void pref_set(cublasLtMatmulPreferenceAttributes_t attr, const V& v) {
    if (status == CUBLAS_STATUS_SUCCESS)
      status = cublasLtMatmulPreferenceSetAttribute(pref, attr, &v, sizeof(v));
  }
};

// Row-major out[m, n] = x[m, k] w[n, k]^T is column-major D[n, m] = op(A) B with A = w as a
// column-major [k, n] matrix transposed ("TN", the layout FP8 needs) and B = x as [k, m].
void describe(Descs& ds, const GemmShape& s, const void* x, const float* x_scale, const void* w,
              const float* w_scale, const void* bias, void* out) {
  const cudaDataType_t in = s.fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
  ds.status = cublasLtMatmulDescCreate(&ds.op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  if (ds.status != CUBLAS_STATUS_SUCCESS) return;
  ds.set(CUBLASLT_MATMUL_DESC_TRANSA, cublasOperation_t{CUBLAS_OP_T});
  ds.set(CUBLASLT_MATMUL_DESC_TRANSB, cublasOperation_t{CUBLAS_OP_N});
  if (s.fp8) {
    ds.set(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, w_scale);
    ds.set(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, x_scale);
    ds.set(CUBLASLT_MATMUL_DESC_FAST_ACCUM, int8_t{s.fast_accum ? int8_t{1} : int8_t{0}});
  }
  if (bias) {
    ds.set(CUBLASLT_MATMUL_DESC_EPILOGUE, cublasLtEpilogue_t{CUBLASLT_EPILOGUE_BIAS});
    ds.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
    ds.set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, cudaDataType_t{CUDA_R_16BF});
  }
  auto layout = [&](cublasLtMatrixLayout_t* l, cudaDataType_t t, int64_t rows, int64_t cols) {
    if (ds.status == CUBLAS_STATUS_SUCCESS)
      ds.status = cublasLtMatrixLayoutCreate(l, t, static_cast<uint64_t>(rows),
                                             static_cast<uint64_t>(cols), rows);
  };
  layout(&ds.a, in, s.k, s.n);
  layout(&ds.b, in, s.k, s.m);
  layout(&ds.d, CUDA_R_16BF, s.n, s.m);
  if (ds.status == CUBLAS_STATUS_SUCCESS) ds.status = cublasLtMatmulPreferenceCreate(&ds.pref);
  ds.pref_set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t{kGemmWorkspaceBytes});
  ds.pref_set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment(w));
  ds.pref_set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment(x));
  ds.pref_set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment(out));
  ds.pref_set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment(out));
}

using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, bool, uint32_t, int>;
Key key_of(const GemmShape& s, const void* x, const void* w, const void* out) {
  int dev = 0;
  cudaGetDevice(&dev);
  const uint32_t al = std::min({alignment(x), alignment(w), alignment(out)});
  return {s.m, s.n, s.k, s.fp8, s.fast_accum, s.bias, al, dev};
}

struct Choice {
  cublasLtMatmulAlgo_t algo{};
  GemmTuning tuning;
};
std::mutex& cache_mutex() {
  static std::mutex m;
  return m;
}
std::map<Key, Choice>& cache() {
  static std::map<Key, Choice> c;
  return c;
}

// The heuristic's candidates, each followed by its split-K variants (2, 4 and 8 slices, where the
// algorithm supports split-K and cuBLASLt accepts the configuration).
std::vector<cublasLtMatmulAlgo_t> candidates(Descs& ds, int requested) {
  std::vector<cublasLtMatmulHeuristicResult_t> res(static_cast<size_t>(requested));
  int got = 0;
  ds.status = cublasLtMatmulAlgoGetHeuristic(lt_handle(), ds.op, ds.a, ds.b, ds.d, ds.d, ds.pref,
                                             requested, res.data(), &got);
  std::vector<cublasLtMatmulAlgo_t> out;
  if (ds.status != CUBLAS_STATUS_SUCCESS) return out;
  for (int i = 0; i < got; ++i) {
    if (res[static_cast<size_t>(i)].state != CUBLAS_STATUS_SUCCESS) continue;
    const cublasLtMatmulAlgo_t algo = res[static_cast<size_t>(i)].algo;
    out.push_back(algo);
    if (requested == 1) continue;
    int32_t splitk_support = 0, splits = 1;
    size_t written = 0;
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &splitk_support,
                                      sizeof(splitk_support), &written);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits,
                                         sizeof(splits), &written);
    if (!splitk_support || splits != 1) continue;
    for (int32_t k_slices : {2, 4, 8}) {
      cublasLtMatmulAlgo_t v = algo;
      if (cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &k_slices,
                                               sizeof(k_slices)) != CUBLAS_STATUS_SUCCESS)
        continue;
      cublasLtMatmulHeuristicResult_t check{};
      if (cublasLtMatmulAlgoCheck(lt_handle(), ds.op, ds.a, ds.b, ds.d, ds.d, &v, &check) ==
              CUBLAS_STATUS_SUCCESS &&
          check.workspaceSize <= static_cast<size_t>(kGemmWorkspaceBytes))
        out.push_back(v);
    }
  }
  return out;
}

cublasStatus_t run(Descs& ds, const cublasLtMatmulAlgo_t& algo, const void* x, const void* w,
                   void* out, void* workspace, cudaStream_t stream) {
  const float one = 1.f, zero = 0.f;
  return cublasLtMatmul(lt_handle(), ds.op, &one, w, ds.a, x, ds.b, &zero, out, ds.d, out, ds.d,
                        &algo, workspace, static_cast<size_t>(kGemmWorkspaceBytes), stream);
}

// GPU milliseconds per call of one candidate, or a negative value when it fails: kReps calls
// captured in a CUDA graph on a stream of our own (ordered after `stream`'s work), best of three
// replays -- the engine runs its plans as graphs, so host-side launch costs must not pick the
// algorithm. The caller's stream then waits for the timing work.
float time_candidate(Descs& ds, const cublasLtMatmulAlgo_t& algo, const void* x, const void* w,
                     void* out, void* workspace, cudaStream_t stream) {
  constexpr int kReps = 10;
  cudaStream_t ts = nullptr;
  cudaEvent_t ready = nullptr, t0 = nullptr, t1 = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool ok = cudaStreamCreateWithFlags(&ts, cudaStreamNonBlocking) == cudaSuccess &&
            cudaEventCreate(&ready) == cudaSuccess && cudaEventCreate(&t0) == cudaSuccess &&
            cudaEventCreate(&t1) == cudaSuccess && cudaEventRecord(ready, stream) == cudaSuccess &&
            cudaStreamWaitEvent(ts, ready, 0) == cudaSuccess;
  ok = ok && run(ds, algo, x, w, out, workspace, ts) == CUBLAS_STATUS_SUCCESS;
  if (ok && cudaStreamBeginCapture(ts, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
    for (int r = 0; r < kReps && ok; ++r)
      ok = run(ds, algo, x, w, out, workspace, ts) == CUBLAS_STATUS_SUCCESS;
    ok = cudaStreamEndCapture(ts, &graph) == cudaSuccess && ok;
  } else {
    ok = false;
  }
  ok = ok && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess &&
       cudaGraphLaunch(exec, ts) == cudaSuccess;  // the first launch uploads the graph
  float best = -1.f;
  for (int round = 0; round < 3 && ok; ++round) {
    float ms = 0.f;
    ok = cudaEventRecord(t0, ts) == cudaSuccess && cudaGraphLaunch(exec, ts) == cudaSuccess &&
         cudaEventRecord(t1, ts) == cudaSuccess && cudaEventSynchronize(t1) == cudaSuccess &&
         cudaEventElapsedTime(&ms, t0, t1) == cudaSuccess;
    if (ok && (best < 0 || ms < best)) best = ms;
  }
  if (ts) {
    if (cudaEventRecord(ready, ts) == cudaSuccess) cudaStreamWaitEvent(stream, ready, 0);
    cudaStreamSynchronize(ts);
    cudaStreamDestroy(ts);
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  for (cudaEvent_t e : {ready, t0, t1})
    if (e) cudaEventDestroy(e);
  return ok ? best / kReps : -1.f;
}

}  // namespace

const char* gemm(const GemmShape& s, const void* x, const float* x_scale, const void* w,
                 const float* w_scale, const void* bias, void* out, void* workspace, bool tune,
                 void* stream) {
  if (s.m < 1 || s.n < 1 || s.k < 1 || s.k % 16 != 0 || s.n % 16 != 0)
    return "gemm: needs m, n, k >= 1 and k, n multiples of 16";
  if (s.fp8 && (!x_scale || !w_scale)) return "gemm: e4m3 operands need their scales";
  if (s.bias != (bias != nullptr)) return "gemm: bias pointer does not match the shape's bias flag";
  if (!workspace) return "gemm: needs a workspace";
  if (!lt_handle()) return "gemm: cublasLtCreate failed";
  auto st = static_cast<cudaStream_t>(stream);
  Descs ds;
  describe(ds, s, x, x_scale, w, w_scale, bias, out);
  if (ds.status != CUBLAS_STATUS_SUCCESS) return status_string(ds.status);
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(st, &capturing) != cudaSuccess) return "gemm: bad stream";
  const bool can_time = tune && capturing == cudaStreamCaptureStatusNone;

  const Key key = key_of(s, x, w, out);
  std::lock_guard<std::mutex> lock(cache_mutex());
  auto it = cache().find(key);
  if (it == cache().end() || (can_time && it->second.tuning.best_ms < 0)) {
    const std::vector<cublasLtMatmulAlgo_t> cands = candidates(ds, can_time ? 16 : 1);
    if (cands.empty())
      return ds.status != CUBLAS_STATUS_SUCCESS ? status_string(ds.status)
                                                : "gemm: cuBLASLt has no algorithm for this shape";
    Choice c;
    c.algo = cands.front();
    if (can_time) {
      c.tuning.candidates = static_cast<int>(cands.size());
      for (size_t i = 0; i < cands.size(); ++i) {
        const float ms = time_candidate(ds, cands[i], x, w, out, workspace, st);
        if (i == 0) c.tuning.first_ms = ms;
        if (ms >= 0 && (c.tuning.best_ms < 0 || ms < c.tuning.best_ms)) {
          c.tuning.best_ms = ms;
          c.tuning.chosen = static_cast<int>(i);
          c.algo = cands[i];
        }
      }
      cudaGetLastError();  // a refused candidate's launch error is not this call's
    }
    it = cache().insert_or_assign(key, c).first;
  }
  const cublasStatus_t r = run(ds, it->second.algo, x, w, out, workspace, st);
  return r == CUBLAS_STATUS_SUCCESS ? nullptr : status_string(r);
}

GemmTuning gemm_tuning(const GemmShape& s) {
  std::lock_guard<std::mutex> lock(cache_mutex());
  GemmTuning t;
  for (const auto& [key, choice] : cache()) {
    if (std::get<0>(key) == s.m && std::get<1>(key) == s.n && std::get<2>(key) == s.k &&
        std::get<3>(key) == s.fp8 && std::get<4>(key) == s.fast_accum &&
        std::get<5>(key) == s.bias && choice.tuning.best_ms >= 0)
      return choice.tuning;
  }
  return t;
}

}  // namespace vla::gpu::kernels
