// kernels.h gemm_lt: out (+)= a w^T (+ bias) as one cuBLASLt matmul, bf16 or tensor-wise e4m3
// operands, with the algorithm chosen by the caller among cuBLASLt's heuristic candidates. cuBLASLt
// is the library here (aten::mm and aten::_scaled_mm run its heuristic's first algorithm, and
// _scaled_mm has no C operand for the residual add). Per device one handle and per problem the
// heuristic's candidate list, made on first use (the engine's eager warm-up, before any CUDA graph
// capture); the workspace comes from the caller (ops.cpp: torch's caching allocator, which keeps it
// stream-ordered and capture-safe).
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <mutex>
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

struct State {
  std::mutex mu;
  std::map<int, cublasLtHandle_t> handles;
  // The heuristic's candidates per (device, M, N, K, fp8, bias, accumulate, workspace bytes).
  using Key = std::tuple<int, int64_t, int64_t, int64_t, bool, bool, bool, size_t>;
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
                                                    int64_t K, size_t workspace_bytes,
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
  const State::Key key{dev, M, N, K, fp8, bias, accumulate, workspace_bytes};
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
  return &s.algos.emplace(key, std::move(list)).first->second;
}

}  // namespace

int gemm_lt_candidates(bool fp8, bool bias, bool accumulate, int64_t M, int64_t N, int64_t K,
                       size_t workspace_bytes, const char** error) {
  const char* err = nullptr;
  std::lock_guard<std::mutex> lock(state().mu);
  cublasLtHandle_t handle = nullptr;
  const auto* list = candidates(handle, fp8, bias, accumulate, M, N, K, workspace_bytes, &err);
  if (error) *error = err;
  return list ? static_cast<int>(list->size()) : 0;
}

const char* gemm_lt(const void* a, const void* w, bool fp8, const float* a_scale,
                    const float* w_scale, const void* bias, void* out, bool accumulate, int64_t M,
                    int64_t N, int64_t K, int algo, void* workspace, size_t workspace_bytes,
                    void* stream) {
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
      candidates(handle, fp8, bias != nullptr, accumulate, M, N, K, workspace_bytes, &err);
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
