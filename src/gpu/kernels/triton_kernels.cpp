// Launchers of the ahead-of-time compiled Triton kernels (kernels.h: gemm_swiglu,
// causal_attention_triton). The cubins
// and their launch facts come from the file kernels/triton_aot.py generates at build time
// (or, when the build found no Triton, the empty table of triton_variants_none.cpp: no variants).
// Modules are loaded through the CUDA driver API once per CUDA context (one per device: torch
// uses the primary contexts), on the first launch; the engine's eager warm-up makes that happen
// before any CUDA graph capture.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "gpu/kernels.h"
#include "gpu/kernels/triton_variants.h"

namespace vla::gpu::kernels {

namespace {

using triton_aot::kVariantCount;
using triton_aot::kVariants;
using triton_aot::Variant;

// Whether the current device is the architecture the cubins were built for.
bool arch_matches() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
    return false;
  return major * 10 + minor == triton_aot::kArch;
}

// The compiled variants of one kernel and flag specialisation (Variant::flag), in table order.
std::vector<int> variants_of(const char* kernel, int flag) {
  std::vector<int> v;
  for (int i = 0; i < kVariantCount; ++i)
    if (std::string(kVariants[i].kernel) == kernel && kVariants[i].flag == flag) v.push_back(i);
  return v;
}

// Table index of `kernel`'s variant `variant` (flag 0 numbering; the flag-1 list is in the same
// tile order), or -1.
int table_index(const char* kernel, int variant, int flag) {
  const std::vector<int> v = variants_of(kernel, flag);
  return variant >= 0 && variant < static_cast<int>(v.size()) ? v[static_cast<size_t>(variant)]
                                                              : -1;
}

// The tile name of `kernel`'s variant `variant` ("BM128 BN128 BK128 w8 s3"), or "none".
const char* variant_name(const char* kernel, int variant) {
  const int index = table_index(kernel, variant, 0);
  return index < 0 ? "none" : kVariants[index].name;
}

// A driver error as a static string (its name, e.g. "CUDA_ERROR_INVALID_IMAGE").
const char* driver_error(CUresult r) {
  const char* s = nullptr;
  if (cuGetErrorName(r, &s) != CUDA_SUCCESS || s == nullptr) return "triton kernels: CUDA error";
  return s;
}

// The kernel functions of the current context (loaded on first use), or an error.
const char* functions(std::vector<CUfunction>** out) {
  static std::mutex mu;
  static std::map<CUcontext, std::vector<CUfunction>> loaded;
  CUcontext ctx = nullptr;
  CUresult r = cuCtxGetCurrent(&ctx);
  if (r != CUDA_SUCCESS) return driver_error(r);
  if (ctx == nullptr) return "triton kernels: no current CUDA context";
  std::lock_guard<std::mutex> lock(mu);
  auto it = loaded.find(ctx);
  if (it != loaded.end()) {
    *out = &it->second;
    return nullptr;
  }
  std::vector<CUfunction> fns(static_cast<size_t>(kVariantCount), nullptr);
  for (int i = 0; i < kVariantCount; ++i) {
    const Variant& v = kVariants[i];
    CUmodule mod = nullptr;
    if ((r = cuModuleLoadData(&mod, v.cubin)) != CUDA_SUCCESS) return driver_error(r);
    if ((r = cuModuleGetFunction(&fns[static_cast<size_t>(i)], mod, v.symbol)) != CUDA_SUCCESS)
      return driver_error(r);
    if (v.shared > 48 * 1024 &&
        (r = cuFuncSetAttribute(fns[static_cast<size_t>(i)],
                                CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, v.shared)) !=
            CUDA_SUCCESS)
      return driver_error(r);
  }
  *out = &loaded.emplace(ctx, std::move(fns)).first->second;
  return nullptr;
}

// The table index of `kernel`'s variant `variant` with `flag` when it can launch here (`usable`:
// the kernel's *_variants(), 0 off the cubins' architecture), else the error to report.
const char* launchable(const char* kernel, int usable, int variant, int flag, int& index) {
  index = variant < usable ? table_index(kernel, variant, flag) : -1;
  if (index >= 0) return nullptr;
  return kVariantCount == 0
             ? "triton kernels: this build has none (Triton was not found at build time)"
             : "triton kernels: no such compiled variant for this device";
}

// Launches table entry `index` on `grid` with the kernel's own parameters (pointers to each
// argument, in order) followed by Triton's scratch pointers: `global_scratch` (the kernel's
// Variant::scratch bytes per program, or null when it needs none), then null.
const char* launch(int index, std::vector<void*> params, unsigned grid_x, unsigned grid_y,
                   void* stream, void* global_scratch = nullptr) {
  const Variant& v = kVariants[index];
  if (static_cast<int>(params.size()) != v.args)
    return "triton kernels: compiled kernel has an unexpected signature";
  if (v.scratch > 0 && (global_scratch == nullptr || v.params - v.args < 1))
    return "triton kernels: the kernel needs global scratch memory";
  std::vector<CUfunction>* fns = nullptr;
  if (const char* e = functions(&fns)) return e;
  std::vector<CUdeviceptr> scratch(static_cast<size_t>(v.params - v.args), 0);
  if (!scratch.empty()) scratch[0] = reinterpret_cast<CUdeviceptr>(global_scratch);
  for (CUdeviceptr& p : scratch) params.push_back(&p);
  const CUresult r = cuLaunchKernel(
      (*fns)[static_cast<size_t>(index)], grid_x, grid_y, 1, static_cast<unsigned>(32 * v.warps), 1,
      1, static_cast<unsigned>(v.shared), static_cast<CUstream>(stream), params.data(), nullptr);
  return r == CUDA_SUCCESS ? nullptr : driver_error(r);
}

bool aligned16(const void* p) { return p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Streaming multiprocessors of the current device (0 if it cannot be asked).
int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 0;
  return n;
}

const char* swiglu_table(bool fp8) { return fp8 ? "gemm_swiglu_fp8" : "gemm_swiglu_bf16"; }

// gemm_swiglu's persistent grid: one program per SM, at most one per output tile.
int64_t swiglu_programs(const Variant& v, int64_t M, int64_t N) {
  const int64_t tiles = (M + v.bm - 1) / v.bm * (N / v.bn);
  return std::min<int64_t>(tiles, std::max(sm_count(), 1));
}

}  // namespace

int gemm_swiglu_variants(bool fp8) {
  return arch_matches() ? static_cast<int>(variants_of(swiglu_table(fp8), 0).size()) : 0;
}

const char* gemm_swiglu_variant_name(bool fp8, int variant) {
  return variant_name(swiglu_table(fp8), variant);
}

bool gemm_swiglu_fits(bool fp8, int variant, int64_t N, int64_t K) {
  const int index = table_index(swiglu_table(fp8), variant, 0);
  if (index < 0) return false;
  const Variant& x = kVariants[index];
  return N > 0 && K > 0 && N % x.bn == 0 && K % x.bk == 0;
}

size_t gemm_swiglu_scratch_bytes(bool fp8, int variant, int64_t M, int64_t N) {
  const int index = table_index(swiglu_table(fp8), variant, 0);
  if (index < 0 || M < 1 || N < 1) return 0;
  const Variant& v = kVariants[index];
  return static_cast<size_t>(swiglu_programs(v, M, N)) * static_cast<size_t>(v.scratch);
}

const char* gemm_swiglu(bool fp8, int variant, const void* a, const void* w, const void* bias,
                        void* out, int64_t M, int64_t N, int64_t K, const float* a_scale,
                        const float* w_scale, const float* out_scale, void* scratch, void* stream) {
  int index = -1;
  if (const char* e = launchable(swiglu_table(fp8), gemm_swiglu_variants(fp8), variant,
                                 bias != nullptr ? 1 : 0, index))
    return e;
  const Variant& v = kVariants[index];
  if (M < 1 || M > INT32_MAX || N < 1 || 2 * N > INT32_MAX || K < 1 || K > INT32_MAX ||
      N % v.bn != 0 || K % v.bk != 0 || N % 16 != 0 || K % 16 != 0)
    return "gemm_swiglu: shape outside the variant's tiles (N % BN, K % BK)";
  for (const void* p : {a, w, static_cast<const void*>(out)})
    if (!aligned16(p)) return "gemm_swiglu: null or not 16-byte aligned pointer";
  if (fp8)
    for (const void* p : {static_cast<const void*>(a_scale), static_cast<const void*>(w_scale),
                          static_cast<const void*>(out_scale)})
      if (!aligned16(p)) return "gemm_swiglu: null or not 16-byte aligned FP8 scale";
  if (bias != nullptr && !aligned16(bias)) return "gemm_swiglu: bias not 16-byte aligned";
  if (v.scratch > 0 && (scratch == nullptr || reinterpret_cast<uintptr_t>(scratch) % 256 != 0))
    return "gemm_swiglu: null or not 256-byte aligned scratch";
  // Parameters in the kernel's order.
  CUdeviceptr ptrs[7] = {
      reinterpret_cast<CUdeviceptr>(a),        reinterpret_cast<CUdeviceptr>(w),
      reinterpret_cast<CUdeviceptr>(bias),     reinterpret_cast<CUdeviceptr>(out),
      reinterpret_cast<CUdeviceptr>(a_scale),  reinterpret_cast<CUdeviceptr>(w_scale),
      reinterpret_cast<CUdeviceptr>(out_scale)};
  int32_t dims[3] = {static_cast<int32_t>(M), static_cast<int32_t>(N), static_cast<int32_t>(K)};
  std::vector<void*> params;
  for (CUdeviceptr& p : ptrs) params.push_back(&p);
  for (int32_t& d : dims) params.push_back(&d);
  return launch(index, std::move(params), static_cast<unsigned>(swiglu_programs(v, M, N)), 1,
                stream, scratch);
}

int causal_attention_triton_variants() {
  return arch_matches() ? static_cast<int>(variants_of("causal_attention", 0).size()) : 0;
}

const char* causal_attention_triton_variant_name(int variant) {
  return variant_name("causal_attention", variant);
}

int causal_attention_triton_tile_rows(int variant) {
  const int index = table_index("causal_attention", variant, 0);
  return index < 0 ? 0 : kVariants[index].bm;
}

const char* causal_attention_triton(int variant, const void* q, int64_t q_stride, const void* k,
                                    int64_t k_stride, const void* v, int64_t v_stride,
                                    const int32_t* cu, int seqs, int64_t tiles, int heads,
                                    int kv_heads, int head_dim, float scale, void* out,
                                    int64_t out_stride, const float* out_scale, void* stream) {
  int index = -1;
  if (const char* e = launchable("causal_attention", causal_attention_triton_variants(), variant,
                                 out_scale != nullptr ? 1 : 0, index))
    return e;
  if (seqs == 0 || tiles == 0) return nullptr;
  const Variant& var = kVariants[index];
  if (head_dim != var.bk) return "causal_attention_triton: head_dim must be 128";
  if (kv_heads < 1 || heads % kv_heads != 0)
    return "causal_attention_triton: heads must be a multiple of kv_heads";
  if (tiles > 65535 || heads > 65535) return "causal_attention_triton: grid too large";
  for (int64_t stride : {q_stride, k_stride, v_stride, out_stride})
    if (stride % 16 != 0 || stride < 1 || stride > INT32_MAX)
      return "causal_attention_triton: row strides must be positive multiples of 16 elements";
  for (const void* p : {q, k, v, static_cast<const void*>(cu), static_cast<const void*>(out)})
    if (!aligned16(p)) return "causal_attention_triton: null or not 16-byte aligned pointer";
  CUdeviceptr ptrs[6] = {
      reinterpret_cast<CUdeviceptr>(q),   reinterpret_cast<CUdeviceptr>(k),
      reinterpret_cast<CUdeviceptr>(v),   reinterpret_cast<CUdeviceptr>(cu),
      reinterpret_cast<CUdeviceptr>(out), reinterpret_cast<CUdeviceptr>(out_scale)};
  int32_t ints[7] = {static_cast<int32_t>(q_stride),
                     static_cast<int32_t>(k_stride),
                     static_cast<int32_t>(v_stride),
                     static_cast<int32_t>(out_stride),
                     seqs,
                     static_cast<int32_t>(tiles),
                     heads / kv_heads};
  float scale_log2 = scale * 1.4426950408889634f;
  std::vector<void*> params;
  for (CUdeviceptr& p : ptrs) params.push_back(&p);
  for (int32_t& i : ints) params.push_back(&i);
  params.push_back(&scale_log2);
  return launch(index, std::move(params), static_cast<unsigned>(heads),
                static_cast<unsigned>(tiles), stream);
}

}  // namespace vla::gpu::kernels
