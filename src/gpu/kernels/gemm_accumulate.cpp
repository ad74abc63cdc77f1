// kernels.h gemm_accumulate: a GEMM that adds its product into the residual stream in its
// epilogue (cuBLASLt, C = D = out, beta = 1), so the block's following norm reads one tensor
// instead of adding two (it replaces add + RMSNorm by RMSNorm). cuBLASLt is the library here
// (aten::_scaled_mm, which the other FP8 GEMMs use, has no C operand); per device one handle and
// per shape the heuristic's first algorithm, made on first use (the engine's eager warm-up, before
// any CUDA graph capture); the workspace comes from the caller (ops.cpp: torch's caching
// allocator, which keeps it stream-ordered and capture-safe).
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "gpu/kernels.h"

namespace vla::gpu::kernels {
namespace {

const char* lt_error(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? nullptr : cublasLtGetStatusString(s);
}

// RAII for one call's descriptors.
struct Descriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  ~Descriptors() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

}  // namespace

const char* gemm_accumulate(const void* a, const void* w, bool fp8, const float* a_scale,
                            const float* w_scale, const void* bias, void* out, int64_t M, int64_t N,
                            int64_t K, void* workspace, size_t workspace_bytes, void* stream) {
  if (M < 1 || N < 1 || K < 1) return "gemm_accumulate: empty shape";
  if (K % 16 != 0 || N % 16 != 0) return "gemm_accumulate: K and N must be multiples of 16";
  if (fp8 && (a_scale == nullptr || w_scale == nullptr))
    return "gemm_accumulate: e4m3 operands need their scales";
  for (const void* p : {a, w, static_cast<const void*>(out)})
    if (p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 != 0)
      return "gemm_accumulate: null or not 16-byte aligned operand";
  for (const void* p : {static_cast<const void*>(a_scale), static_cast<const void*>(w_scale), bias})
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0)
      return "gemm_accumulate: scale or bias not 16-byte aligned";

  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return "gemm_accumulate: no CUDA device";
  static std::mutex mu;
  static std::map<int, cublasLtHandle_t> handles;
  // The heuristic's algorithm per (device, M, N, K, fp8, bias).
  using Key = std::tuple<int, int64_t, int64_t, int64_t, bool, bool>;
  static std::map<Key, cublasLtMatmulAlgo_t> algos;
  std::lock_guard<std::mutex> lock(mu);
  cublasLtHandle_t& handle = handles[dev];
  if (handle == nullptr)
    if (const char* e = lt_error(cublasLtCreate(&handle))) return e;

  // Row-major out[M, N] += a[M, K] w[N, K]^T is column-major out^T[N, M] += w^T a^T: cuBLASLt's
  // A = w (transposed), B = a, C = D = out (ld N).
  const cudaDataType_t in_type = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
  Descriptors d;
  if (const char* e = lt_error(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F)))
    return e;
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  if (fp8) {
    const int8_t fast = 1;  // Hopper FP8 accumulation without periodic promotion (as elsewhere)
    cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale,
                                   sizeof(w_scale));
    cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a_scale,
                                   sizeof(a_scale));
    cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast));
  }
  if (bias != nullptr) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bias_type = CUDA_R_16BF;
    cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi));
    cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
    cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                   sizeof(bias_type));
  }
  if (const char* e = lt_error(cublasLtMatrixLayoutCreate(&d.a, in_type, K, N, K))) return e;
  if (const char* e = lt_error(cublasLtMatrixLayoutCreate(&d.b, in_type, K, M, K))) return e;
  if (const char* e = lt_error(cublasLtMatrixLayoutCreate(&d.c, CUDA_R_16BF, N, M, N))) return e;

  const Key key{dev, M, N, K, fp8, bias != nullptr};
  auto it = algos.find(key);
  if (it == algos.end()) {
    cublasLtMatmulPreference_t pref = nullptr;
    if (const char* e = lt_error(cublasLtMatmulPreferenceCreate(&pref))) return e;
    const size_t ws = workspace_bytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                         sizeof(ws));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t s =
        cublasLtMatmulAlgoGetHeuristic(handle, d.op, d.a, d.b, d.c, d.c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_error(s);
    if (found == 0) return "gemm_accumulate: cuBLASLt has no algorithm for this shape";
    it = algos.emplace(key, result.algo).first;
  }
  const float alpha = 1.f, beta = 1.f;
  return lt_error(cublasLtMatmul(handle, d.op, &alpha, w, d.a, a, d.b, &beta, out, d.c, out, d.c,
                                 &it->second, workspace, workspace_bytes,
                                 static_cast<cudaStream_t>(stream)));
}

}  // namespace vla::gpu::kernels
