// Launchers of the ahead-of-time compiled Triton kernels (kernels.h: gemm_swiglu_fp8). The cubins
// and their launch facts come from the file kernels/triton_aot.py generates at build time
// (or, when the build found no Triton, the empty table of triton_variants_none.cpp: no variants).
// Modules are loaded through the CUDA driver API once per CUDA context (one per device: torch
// uses the primary contexts), on the first launch; the engine's eager warm-up makes that happen
// before any CUDA graph capture.
#include <cuda.h>
#include <cuda_runtime_api.h>

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

// The compiled variants of one kernel and bias specialisation, in table order.
std::vector<int> variants_of(const char* kernel, int has_bias) {
  std::vector<int> v;
  for (int i = 0; i < kVariantCount; ++i)
    if (std::string(kVariants[i].kernel) == kernel && kVariants[i].has_bias == has_bias)
      v.push_back(i);
  return v;
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

}  // namespace

int gemm_swiglu_fp8_variants() {
  return arch_matches() ? static_cast<int>(variants_of("gemm_swiglu_fp8", 0).size()) : 0;
}

const char* gemm_swiglu_fp8_variant_name(int variant) {
  const std::vector<int> v = variants_of("gemm_swiglu_fp8", 0);
  if (variant < 0 || variant >= static_cast<int>(v.size())) return "none";
  return kVariants[v[static_cast<size_t>(variant)]].name;
}

bool gemm_swiglu_fp8_fits(int variant, int64_t N, int64_t K) {
  const std::vector<int> v = variants_of("gemm_swiglu_fp8", 0);
  if (variant < 0 || variant >= static_cast<int>(v.size())) return false;
  const Variant& x = kVariants[v[static_cast<size_t>(variant)]];
  return N > 0 && K > 0 && N % x.bn == 0 && K % x.bk == 0;
}

const char* gemm_swiglu_fp8(int variant, const void* a, const void* w, const void* bias, void* out,
                            int64_t M, int64_t N, int64_t K, const float* a_scale,
                            const float* w_scale, const float* out_scale, void* stream) {
  static const std::vector<int> plain = variants_of("gemm_swiglu_fp8", 0);
  static const std::vector<int> biased = variants_of("gemm_swiglu_fp8", 1);
  const std::vector<int>& table = bias != nullptr ? biased : plain;
  if (variant < 0 || variant >= gemm_swiglu_fp8_variants() ||
      variant >= static_cast<int>(table.size()))
    return kVariantCount == 0
               ? "gemm_swiglu_fp8: this build has no Triton kernels (Triton was not found at "
                 "build time)"
               : "gemm_swiglu_fp8: no such compiled variant for this device";
  const int index = table[static_cast<size_t>(variant)];
  const Variant& v = kVariants[index];
  if (M < 1 || M > INT32_MAX || N < 1 || N > INT32_MAX || K < 1 || K > INT32_MAX || N % v.bn != 0 ||
      K % v.bk != 0 || N % 16 != 0 || K % 16 != 0)
    return "gemm_swiglu_fp8: shape outside the variant's tiles (N % BN, K % BK)";
  for (const void* p : {a, w, static_cast<const void*>(out), static_cast<const void*>(a_scale),
                        static_cast<const void*>(w_scale), static_cast<const void*>(out_scale)})
    if (p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 != 0)
      return "gemm_swiglu_fp8: null or not 16-byte aligned pointer";
  if (bias != nullptr && reinterpret_cast<uintptr_t>(bias) % 16 != 0)
    return "gemm_swiglu_fp8: bias not 16-byte aligned";
  std::vector<CUfunction>* fns = nullptr;
  if (const char* e = functions(&fns)) return e;
  // Parameters in the kernel's order; Triton's trailing scratch pointers are null.
  CUdeviceptr ptrs[7] = {
      reinterpret_cast<CUdeviceptr>(a),        reinterpret_cast<CUdeviceptr>(w),
      reinterpret_cast<CUdeviceptr>(bias),     reinterpret_cast<CUdeviceptr>(out),
      reinterpret_cast<CUdeviceptr>(a_scale),  reinterpret_cast<CUdeviceptr>(w_scale),
      reinterpret_cast<CUdeviceptr>(out_scale)};
  int32_t dims[3] = {static_cast<int32_t>(M), static_cast<int32_t>(N), static_cast<int32_t>(K)};
  if (v.args != 10) return "gemm_swiglu_fp8: compiled kernel has an unexpected signature";
  std::vector<CUdeviceptr> scratch(static_cast<size_t>(v.params - v.args), 0);
  std::vector<void*> params;
  for (CUdeviceptr& p : ptrs) params.push_back(&p);
  for (int32_t& d : dims) params.push_back(&d);
  for (CUdeviceptr& s : scratch) params.push_back(&s);
  const int64_t tiles = (M + v.bm - 1) / v.bm * (N / v.bn);
  if (tiles > INT32_MAX) return "gemm_swiglu_fp8: grid too large";
  const CUresult r =
      cuLaunchKernel((*fns)[static_cast<size_t>(index)], static_cast<unsigned>(tiles), 1, 1,
                     static_cast<unsigned>(32 * v.warps), 1, 1, static_cast<unsigned>(v.shared),
                     static_cast<CUstream>(stream), params.data(), nullptr);
  return r == CUDA_SUCCESS ? nullptr : driver_error(r);
}

}  // namespace vla::gpu::kernels
