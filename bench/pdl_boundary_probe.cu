// Kernel boundaries inside a CUDA graph, and what programmatic dependent launch (PDL) does to
// them: a cuBLAS bf16 GEMM of the decoder's o_proj shape (1525 x 2048 -> 2048) followed by an
// element-wise kernel, and two element-wise kernels in a row, each 100 times in one graph, with
// and without PDL on the element-wise launches (griddepcontrol.wait before reading, then
// launch_dependents). Standalone (not part of the build; sm_90, CUDA 12.3+):
//   nvcc -O3 -std=c++17 -arch=sm_90 bench/pdl_boundary_probe.cu -o /tmp/pdl -lcublas && /tmp/pdl
// H200, 1 Dec 2026: a boundary costs ~0.3-0.5 us (GEMM 17.34 + element-wise 2.73 vs 20.57 us as a
// pair; two element-wise 5.77 vs 2 x 2.73), and PDL made both slower (21.54, 7.99): the early
// blocks hold SM slots while they wait. docs/development/README.md, "Where GPU speed stands".
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                 \
  do {                                                                        \
    cudaError_t e_ = (x);                                                     \
    if (e_ != cudaSuccess) {                                                  \
      std::printf("CUDA error %s at %d\n", cudaGetErrorString(e_), __LINE__); \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)

// y = x * 1.0001 (16-byte vectors), one vector per thread; with kPdl: waits for the previous grid
// (griddepcontrol.wait) before reading, and lets the next grid launch at once.
template <bool kPdl>
__global__ void scale_kernel(const uint4* __restrict__ x, uint4* __restrict__ y, int n) {
  if constexpr (kPdl) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;");
  }
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  uint4 v = x[i];
  __nv_bfloat162* e = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
  for (int j = 0; j < 4; ++j) e[j] = __hmul2(e[j], __floats2bfloat162_rn(1.0001f, 1.0001f));
  y[i] = v;
}

template <bool kPdl>
void launch(const uint4* x, uint4* y, int n, cudaStream_t s) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((n + 127) / 128);
  cfg.blockDim = dim3(128);
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = kPdl ? attr : nullptr;
  cfg.numAttrs = kPdl ? 1 : 0;
  CK(cudaLaunchKernelEx(&cfg, scale_kernel<kPdl>, x, y, n));
}

template <class F>
float graph_us(F&& f, cudaStream_t s, int calls) {
  f();
  CK(cudaStreamSynchronize(s));
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) f();
  CK(cudaStreamEndCapture(s, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  CK(cudaGraphLaunch(ge, s));
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  float best = 1e9;
  for (int r = 0; r < 7; ++r) {
    cudaEventRecord(a, s);
    CK(cudaGraphLaunch(ge, s));
    cudaEventRecord(b, s);
    CK(cudaEventSynchronize(b));
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    best = std::min(best, ms * 1000.f / calls);
  }
  return best;
}

int main() {
  cudaStream_t s;
  cudaStreamCreate(&s);
  cublasHandle_t h;
  cublasCreate(&h);
  cublasSetStream(h, s);
  const int rows = 1525, hid = 2048;
  const size_t elems = static_cast<size_t>(rows) * hid;
  __nv_bfloat16 *x, *w, *y, *z;
  CK(cudaMalloc(&x, elems * 2));
  CK(cudaMalloc(&y, elems * 2));
  CK(cudaMalloc(&z, elems * 2));
  CK(cudaMalloc(&w, static_cast<size_t>(hid) * hid * 2));
  std::vector<__nv_bfloat16> hx(elems), hw(static_cast<size_t>(hid) * hid);
  for (size_t i = 0; i < hx.size(); ++i) hx[i] = __float2bfloat16((i % 97) * 0.01f - 0.5f);
  for (size_t i = 0; i < hw.size(); ++i) hw[i] = __float2bfloat16((i % 89) * 0.0002f - 0.009f);
  CK(cudaMemcpy(x, hx.data(), elems * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(w, hw.data(), hw.size() * 2, cudaMemcpyHostToDevice));
  const float one = 1.f, zero = 0.f;
  auto gemm = [&]() {
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, hid, rows, hid, &one, w, CUDA_R_16BF, hid, z,
                 CUDA_R_16BF, hid, &zero, y, CUDA_R_16BF, hid, CUBLAS_COMPUTE_32F,
                 CUBLAS_GEMM_DEFAULT);
  };
  const int n = static_cast<int>(elems / 8);
  auto* xv = reinterpret_cast<uint4*>(x);
  auto* yv = reinterpret_cast<uint4*>(y);
  auto* zv = reinterpret_cast<uint4*>(z);
  const int calls = 100;
  const float t_gemm = graph_us(gemm, s, calls);
  const float t_el = graph_us([&]() { launch<false>(yv, zv, n, s); }, s, calls);
  const float t_el_pdl = graph_us([&]() { launch<true>(yv, zv, n, s); }, s, calls);
  const float t_pair = graph_us(
      [&]() {
        gemm();
        launch<false>(yv, zv, n, s);
      },
      s, calls);
  const float t_pair_pdl = graph_us(
      [&]() {
        gemm();
        launch<true>(yv, zv, n, s);
      },
      s, calls);
  const float t_chain = graph_us(
      [&]() {
        launch<false>(xv, zv, n, s);
        launch<false>(zv, yv, n, s);
      },
      s, calls);
  const float t_chain_pdl = graph_us(
      [&]() {
        launch<true>(xv, zv, n, s);
        launch<true>(zv, yv, n, s);
      },
      s, calls);
  std::printf("per call (us), CUDA graph of %d calls, [%d, %d] bf16\n", calls, rows, hid);
  std::printf("  cuBLAS GEMM %dx%d->%d           %.2f\n", rows, hid, hid, t_gemm);
  std::printf("  element-wise kernel               %.2f   with PDL %.2f\n", t_el, t_el_pdl);
  std::printf("  GEMM -> element-wise              %.2f   with PDL on the element-wise %.2f\n",
              t_pair, t_pair_pdl);
  std::printf("  element-wise -> element-wise      %.2f   both with PDL %.2f\n", t_chain,
              t_chain_pdl);
  return 0;
}
