// kernels.h gemm_lt: out (+)= a w^T (+ bias) as one cuBLASLt matmul, bf16 or tensor-wise e4m3
// operands, with the algorithm chosen by the caller among cuBLASLt's heuristic candidates (and, in
// the wide list, their configurations with other tiles, custom options and cluster shapes).
// cuBLASLt is the library here (aten::mm and aten::_scaled_mm run its heuristic's first algorithm,
// and _scaled_mm has no C operand for the residual add). Per device one handle and per problem the
// candidate list, made on first use (the engine's eager warm-up, before any CUDA graph capture);
// the workspace comes from the caller (ops.cpp: torch's caching allocator, which keeps it
// stream-ordered and capture-safe).
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <tuple>
#include <vector>

#include "gpu/kernels.h"

namespace vla::gpu::kernels {
namespace {

const char* lt_error(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? nullptr : cublasLtGetStatusString(s);
}

// RAII for one problem's descriptors.
struct Descriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  Descriptors() = default;
  Descriptors(const Descriptors&) = delete;
  Descriptors& operator=(const Descriptors&) = delete;
  ~Descriptors() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// Row-major out[M, N] (+)= a[M, K] w[N, K]^T is column-major out^T[N, M] (+)= w^T a^T: cuBLASLt's
// A = w (transposed), B = a, C = D = out (ld N). Scale and bias pointers are set per call.
const char* describe(Descriptors& d, bool fp8, bool bias, int64_t M, int64_t N, int64_t K) {
  const cudaDataType_t in_type = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
  if (const char* e = lt_error(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F)))
    return e;
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  if (fp8) {
    const int8_t fast = 1;  // Hopper FP8 accumulation without periodic promotion (as elsewhere)
    cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast));
  }
  if (bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bias_type = CUDA_R_16BF;
    cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi));
    cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                   sizeof(bias_type));
  }
  if (const char* e = lt_error(cublasLtMatrixLayoutCreate(&d.a, in_type, K, N, K))) return e;
  if (const char* e = lt_error(cublasLtMatrixLayoutCreate(&d.b, in_type, K, M, K))) return e;
  return lt_error(cublasLtMatrixLayoutCreate(&d.c, CUDA_R_16BF, N, M, N));
}

// The configuration of an algorithm as cublasLtMatmulAlgoConfigGetAttribute reads it: id, tile,
// stages, split-K, reduction scheme, CTA swizzling, custom option, cluster shape.
using Config = std::array<uint32_t, 8>;
Config config_of(const cublasLtMatmulAlgo_t& a) {
  Config c{};
  const cublasLtMatmulAlgoConfigAttributes_t attrs[] = {CUBLASLT_ALGO_CONFIG_ID,
                                                        CUBLASLT_ALGO_CONFIG_TILE_ID,
                                                        CUBLASLT_ALGO_CONFIG_STAGES_ID,
                                                        CUBLASLT_ALGO_CONFIG_SPLITK_NUM,
                                                        CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
                                                        CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING,
                                                        CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION,
                                                        CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID};
  for (size_t i = 0; i < c.size(); ++i) {
    size_t written = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&a, attrs[i], &c[i], sizeof(c[i]), &written);
  }
  return c;
}

// The wide list's alternatives: tile shapes of the Hopper kernels cuBLASLt itself picks among for
// large problems (rows x columns of its column-major output: ours transposed), cluster shapes of 1,
// 2 (either way) and 4 CTAs, and the custom options (up to the algorithm's maximum). The set that
// found every faster configuration of the 3B model's 5-view GEMMs in an exhaustive search over all
// tile ids (docs/benchmarks.md, "eleventh run").
constexpr uint32_t kWideTiles[] = {CUBLASLT_MATMUL_TILE_64x256,  CUBLASLT_MATMUL_TILE_128x128,
                                   CUBLASLT_MATMUL_TILE_128x256, CUBLASLT_MATMUL_TILE_256x128,
                                   CUBLASLT_MATMUL_TILE_96x128,  CUBLASLT_MATMUL_TILE_128x160,
                                   CUBLASLT_MATMUL_TILE_160x128, CUBLASLT_MATMUL_TILE_192x128,
                                   CUBLASLT_MATMUL_TILE_128x192, CUBLASLT_MATMUL_TILE_128x96};
constexpr uint16_t kWideClusters[] = {CUBLASLT_CLUSTER_SHAPE_1x1x1, CUBLASLT_CLUSTER_SHAPE_2x1x1,
                                      CUBLASLT_CLUSTER_SHAPE_1x2x1, CUBLASLT_CLUSTER_SHAPE_2x2x1};
constexpr uint32_t kWideCustomOptions = 8;

struct State {
  std::mutex mu;
  std::map<int, cublasLtHandle_t> handles;
  // The candidates per (device, M, N, K, fp8, bias, accumulate, wide, workspace bytes).
  using Key = std::tuple<int, int64_t, int64_t, int64_t, bool, bool, bool, bool, size_t>;
  std::map<Key, std::vector<cublasLtMatmulAlgo_t>> algos;
};
State& state() {
  static State s;
  return s;
}

// The candidate list of a problem (made on first use); nullptr and *error on failure. Called
// with the state's lock held.
const std::vector<cublasLtMatmulAlgo_t>* candidates(cublasLtHandle_t& handle, bool fp8, bool bias,
                                                    bool accumulate, int64_t M, int64_t N,
                                                    int64_t K, bool wide, size_t workspace_bytes,
                                                    const char** error) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    *error = "gemm_lt: no CUDA device";
    return nullptr;
  }
  State& s = state();
  handle = s.handles[dev];
  if (handle == nullptr) {
    if ((*error = lt_error(cublasLtCreate(&handle)))) return nullptr;
    s.handles[dev] = handle;
  }
  const State::Key key{dev, M, N, K, fp8, bias, accumulate, wide, workspace_bytes};
  auto it = s.algos.find(key);
  if (it != s.algos.end()) return &it->second;
  Descriptors d;
  if ((*error = describe(d, fp8, bias, M, N, K))) return nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  if ((*error = lt_error(cublasLtMatmulPreferenceCreate(&pref)))) return nullptr;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                       &workspace_bytes, sizeof(workspace_bytes));
  cublasLtMatmulHeuristicResult_t results[kGemmLtMaxCandidates] = {};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, d.op, d.a, d.b, d.c, d.c, pref,
                                                           kGemmLtMaxCandidates, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if ((*error = lt_error(st))) return nullptr;
  if (found == 0) {
    *error = "gemm_lt: cuBLASLt has no algorithm for this problem";
    return nullptr;
  }
  std::vector<cublasLtMatmulAlgo_t> list;
  for (int i = 0; i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) list.push_back(results[i].algo);
  if (wide) {
    std::set<Config> seen;
    for (const auto& a : list) seen.insert(config_of(a));
    const size_t seeds = list.size();
    for (size_t i = 0; i < seeds; ++i) {
      int32_t custom_max = 0;
      size_t written = 0;
      cublasLtMatmulAlgoCapGetAttribute(&list[i], CUBLASLT_ALGO_CAP_CUSTOM_OPTION_MAX, &custom_max,
                                        sizeof(custom_max), &written);
      const uint32_t customs = std::min<uint32_t>(
          kWideCustomOptions, static_cast<uint32_t>(std::max(custom_max, 0)) + 1);
      for (uint32_t tile : kWideTiles)
        for (uint32_t custom = 0; custom < customs; ++custom)
          for (uint16_t cluster : kWideClusters) {
            cublasLtMatmulAlgo_t c = list[i];
            if (cublasLtMatmulAlgoConfigSetAttribute(&c, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile,
                                                     sizeof(tile)) != CUBLAS_STATUS_SUCCESS ||
                cublasLtMatmulAlgoConfigSetAttribute(&c, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION,
                                                     &custom,
                                                     sizeof(custom)) != CUBLAS_STATUS_SUCCESS ||
                cublasLtMatmulAlgoConfigSetAttribute(&c, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
                                                     &cluster,
                                                     sizeof(cluster)) != CUBLAS_STATUS_SUCCESS)
              continue;
            if (!seen.insert(config_of(c)).second) continue;
            cublasLtMatmulHeuristicResult_t check{};
            if (cublasLtMatmulAlgoCheck(handle, d.op, d.a, d.b, d.c, d.c, &c, &check) ==
                    CUBLAS_STATUS_SUCCESS &&
                check.workspaceSize <= workspace_bytes)
              list.push_back(c);
          }
    }
  }
  return &s.algos.emplace(key, std::move(list)).first->second;
}

}  // namespace

int gemm_lt_candidates(bool fp8, bool bias, bool accumulate, int64_t M, int64_t N, int64_t K,
                       bool wide, size_t workspace_bytes, const char** error) {
  const char* err = nullptr;
  std::lock_guard<std::mutex> lock(state().mu);
  cublasLtHandle_t handle = nullptr;
  const auto* list =
      candidates(handle, fp8, bias, accumulate, M, N, K, wide, workspace_bytes, &err);
  if (error) *error = err;
  return list ? static_cast<int>(list->size()) : 0;
}

const char* gemm_lt(const void* a, const void* w, bool fp8, const float* a_scale,
                    const float* w_scale, const void* bias, void* out, bool accumulate, int64_t M,
                    int64_t N, int64_t K, bool wide, int algo, void* workspace,
                    size_t workspace_bytes, void* stream) {
  if (M < 1 || N < 1 || K < 1) return "gemm_lt: empty shape";
  if (K % 16 != 0 || N % 16 != 0) return "gemm_lt: K and N must be multiples of 16";
  if (fp8 && (a_scale == nullptr || w_scale == nullptr))
    return "gemm_lt: e4m3 operands need their scales";
  for (const void* p : {a, w, static_cast<const void*>(out)})
    if (p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 != 0)
      return "gemm_lt: null or not 16-byte aligned operand";
  for (const void* p : {static_cast<const void*>(a_scale), static_cast<const void*>(w_scale), bias})
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0)
      return "gemm_lt: scale or bias not 16-byte aligned";

  std::lock_guard<std::mutex> lock(state().mu);
  cublasLtHandle_t handle = nullptr;
  const char* err = nullptr;
  const auto* list =
      candidates(handle, fp8, bias != nullptr, accumulate, M, N, K, wide, workspace_bytes, &err);
  if (list == nullptr) return err;
  if (algo < 0 || algo >= static_cast<int>(list->size()))
    return "gemm_lt: algorithm index outside the problem's candidates (gemm_lt_candidates)";
  Descriptors d;
  if (const char* e = describe(d, fp8, bias != nullptr, M, N, K)) return e;
  if (fp8) {
    cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale,
                                   sizeof(w_scale));
    cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a_scale,
                                   sizeof(a_scale));
  }
  if (bias)
    cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  return lt_error(cublasLtMatmul(handle, d.op, &alpha, w, d.a, a, d.b, &beta, out, d.c, out, d.c,
                                 &(*list)[static_cast<size_t>(algo)], workspace, workspace_bytes,
                                 static_cast<cudaStream_t>(stream)));
}

}  // namespace vla::gpu::kernels
