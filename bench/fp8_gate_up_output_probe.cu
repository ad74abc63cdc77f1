// The MLP's gate|up product with an e4m3 output (cuBLASLt D = e4m3 with a scale) followed by a
// SwiGLU that reads e4m3, against what the engine runs: the bf16-output FP8 GEMM and its static-FP8
// SwiGLU kernel (kernels/swiglu.cu silu_mul_bf16_flat, included from the product). Shapes: the 3B
// decoder and vision tower at 5 views of 640x360; random e4m3 operands; each GEMM the fastest of
// cuBLASLt's heuristic candidates, each step timed alone (20 calls, best of 5). Standalone:
//   nvcc -O2 -std=c++17 -arch=sm_90 -Isrc bench/fp8_gate_up_output_probe.cu -lcublasLt \
//     -o /tmp/f8out && /tmp/f8out
// H200, 1 Dec 2026: decoder GEMM + SwiGLU 94.4 + 45.5 = 139.9 us (bf16 out) vs 100.1 + 24.2 =
// 124.2 us (e4m3 out); vision 84.1 + 54.4 = 138.6 vs 82.8 + 28.6 = 111.5 us (the engine's fused
// Triton gate|up + SwiGLU takes ~110). About 0.2 ms per 5-view forward for one more rounding of
// the pre-activations: not built (docs/benchmarks.md, "eleventh run").
#include <cublasLt.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdio>
#include <functional>

#include "cuda_probe.cuh"
#include "gpu/kernels/swiglu.cu"

using namespace vla::gpu::kernels;

// e4m3 gate|up rows [rows, 2 inter] (scale *in_scale) -> e4m3 silu(g) * u / *out_scale.
__global__ void __launch_bounds__(128)
    silu_mul_e4m3_flat(const uint8_t* __restrict__ x, uint8_t* __restrict__ out,
                       const float* __restrict__ in_scale, const float* __restrict__ out_scale,
                       int nvec, int total) {
  const int idx = (gridDim.x - 1 - blockIdx.x) * 128 + threadIdx.x;
  if (idx >= total) return;
  const int r = idx / nvec, i = idx - r * nvec;
  const uint4* g = reinterpret_cast<const uint4*>(x + (int64_t)r * nvec * 32) + i;
  const uint4 gv = __ldg(g), uv = __ldg(g + nvec);
  const __nv_fp8_e4m3* ge = reinterpret_cast<const __nv_fp8_e4m3*>(&gv);
  const __nv_fp8_e4m3* ue = reinterpret_cast<const __nv_fp8_e4m3*>(&uv);
  const float is = __ldg(in_scale), qs = 1.f / __ldg(out_scale);
  uint4 o;
  uint32_t* oe = reinterpret_cast<uint32_t*>(&o);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float v[4];
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const float gg = float(ge[4 * j + t]) * is, uu = float(ue[4 * j + t]) * is;
      v[t] = silu(gg) * uu;
    }
    oe[j] = pack_e4m3(make_float4(v[0], v[1], v[2], v[3]), qs);
  }
  reinterpret_cast<uint4*>(out)[idx] = o;
}

// Microseconds per call of f: 3 warm-up calls, then the best of 5 rounds of `reps`.
double time_us(const std::function<void()>& f, int reps = 20) {
  for (int i = 0; i < 3; ++i) f();
  return best_us_per_call(f, reps, 5);
}

int main() {
  cublasLtHandle_t h;
  CK(cublasLtCreate(&h));
  size_t wsb = 32 << 20;
  void* ws;
  CK(cudaMalloc(&ws, wsb));
  struct P {
    const char* name;
    int64_t M, I, K;
    bool bias;
  } ps[] = {{"decoder 5 views", 1525, 11008, 2048, false},
            {"vision 5 views", 5980, 3456, 1280, true}};
  for (const P& p : ps) {
    const int64_t N = 2 * p.I;
    uint8_t *a, *w, *d8, *o8;
    void *d16, *bias;
    float* sc;
    CK(cudaMalloc(&a, p.M * p.K));
    CK(cudaMalloc(&w, N * p.K));
    CK(cudaMalloc(&d8, p.M * N));
    CK(cudaMalloc(&d16, p.M * N * 2));
    CK(cudaMalloc(&o8, p.M * p.I));
    CK(cudaMalloc(&bias, N * 2));
    CK(cudaMemset(bias, 0, N * 2));
    CK(cudaMalloc(&sc, 64));
    float s[16];
    for (int i = 0; i < 16; ++i) s[i] = 1.f / 64;
    CK(cudaMemcpy(sc, s, 64, cudaMemcpyHostToDevice));
    fill_e4m3<<<1024, 256>>>((__nv_fp8_e4m3*)a, p.M * p.K, 200.f, 1);
    fill_e4m3<<<1024, 256>>>((__nv_fp8_e4m3*)w, N * p.K, 200.f, 2);
    CK(cudaDeviceSynchronize());
    double best[2] = {1e30, 1e30};
    for (int out8 = 0; out8 < 2; ++out8) {
      cublasLtMatmulDesc_t op;
      CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
      const int8_t fast = 1;
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, 1);
      const float* as = sc;
      const float* wsc = sc + 4;
      const float* dsc = sc + 8;
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &wsc, sizeof(wsc));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &as, sizeof(as));
      if (out8)
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, &dsc, sizeof(dsc));
      if (p.bias) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        const cudaDataType_t bt = CUDA_R_16BF;
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi));
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt));
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
      }
      cublasLtMatrixLayout_t la, lb, lc, ld;
      CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, p.K, N, p.K));
      CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, p.K, p.M, p.K));
      CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, N, p.M, N));
      CK(cublasLtMatrixLayoutCreate(&ld, out8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF, N, p.M, N));
      cublasLtMatmulPreference_t pref;
      cublasLtMatmulPreferenceCreate(&pref);
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb,
                                           sizeof(wsb));
      cublasLtMatmulHeuristicResult_t res[16] = {};
      int found = 0;
      auto st = cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, ld, pref, 16, res, &found);
      printf("%s out %s: heuristic status %d, %d found\n", p.name, out8 ? "e4m3" : "bf16", (int)st,
             found);
      const float alpha = 1.f, beta = 0.f;
      void* dptr = out8 ? (void*)d8 : d16;
      for (int i = 0; i < found; ++i) {
        const double us = time_us([&] {
          cublasLtMatmul(h, op, &alpha, w, la, a, lb, &beta, d16, lc, dptr, ld, &res[i].algo, ws,
                         wsb, 0);
        });
        if (cudaGetLastError() == cudaSuccess) best[out8] = std::min(best[out8], us);
      }
      printf("   GEMM best %.1f us\n", best[out8]);
    }
    const int nvec16 = p.I / 16, total16 = p.M * nvec16;
    const double s8 = time_us([&] {
      silu_mul_e4m3_flat<<<(total16 + 127) / 128, 128>>>(d8, o8, sc, sc + 8, nvec16, total16);
    });
    const int nvec8 = p.I / 8, total8 = p.M * nvec8;
    const double s16 = time_us([&] { launch_flat<true>(d16, N, o8, sc + 8, nvec8, total8, 0); });
    CK(cudaGetLastError());
    // chains: GEMM then SwiGLU, alternating, as in the model
    printf(
        "-> %s: bf16 path GEMM %.1f + SwiGLU %.1f = %.1f us; e4m3 path GEMM %.1f + SwiGLU %.1f = "
        "%.1f us\n",
        p.name, best[0], s16, best[0] + s16, best[1], s8, best[1] + s8);
  }
}
