// kernels.h for builds without CUDA: every launcher reports that the kernels are not built in.
// ops.cpp only calls them for CUDA tensors, which such a build cannot make.
#include "gpu/kernels.h"

namespace vla::gpu::kernels {

namespace {
const char* kNoCuda = "this build has no CUDA kernels (libtorch without CUDA)";
}  // namespace

const char* rmsnorm(const void*, int64_t, void*, int64_t, const void*, void*, int64_t, int64_t,
                    int64_t, float, DType, void*) {
  return kNoCuda;
}
const char* rmsnorm_fp8(const void*, int64_t, void*, int64_t, const void*, void*, float*,
                        const float*, int64_t, int64_t, float, DType, void*) {
  return kNoCuda;
}
const char* silu_mul_fp8(const void*, int64_t, void*, float*, const float*, int64_t, int64_t, DType,
                         void*) {
  return kNoCuda;
}
const char* quantize_fp8(const void*, int64_t, void*, float*, const float*, int64_t, int64_t, DType,
                         void*) {
  return kNoCuda;
}
const char* rotary(void*, int64_t, const float*, const float*, int64_t, int, int, DType, void*) {
  return kNoCuda;
}
const char* rotary_append_kv(void*, int64_t, const float*, const float*, int64_t, int, int, int,
                             void*, void*, const int64_t*, DType, void*) {
  return kNoCuda;
}
bool window_attention_fits(int, int64_t) { return false; }
const char* window_attention(const void*, int64_t, const float*, const float*, const int32_t*,
                             int64_t, int64_t, int, int, float, void*, int64_t, const float*,
                             void*) {
  return kNoCuda;
}
bool causal_attention_fits(int) { return false; }
const char* causal_attention(const void*, int64_t, const void*, int64_t, const void*, int64_t,
                             const int32_t*, int, int64_t, int, int, int, float, void*, int64_t,
                             const float*, void*) {
  return kNoCuda;
}
int causal_attention_triton_variants() { return 0; }
const char* causal_attention_triton_variant_name(int) { return "none"; }
int causal_attention_triton_tile_rows(int) { return 0; }
const char* causal_attention_triton(int, const void*, int64_t, const void*, int64_t, const void*,
                                    int64_t, const int32_t*, int, int64_t, int, int, int, float,
                                    void*, int64_t, const float*, void*) {
  return kNoCuda;
}
const char* silu_mul(const void*, int64_t, void*, int64_t, int64_t, DType, void*) {
  return kNoCuda;
}
int gemm_swiglu_variants(bool) { return 0; }
const char* gemm_swiglu_variant_name(bool, int) { return "none"; }
bool gemm_swiglu_fits(bool, int, int64_t, int64_t) { return false; }
size_t gemm_swiglu_scratch_bytes(bool, int, int64_t, int64_t) { return 0; }
const char* gemm_swiglu(bool, int, const void*, const void*, const void*, void*, int64_t, int64_t,
                        int64_t, const float*, const float*, const float*, void*, void*) {
  return kNoCuda;
}
const char* gemm_lt(const void*, const void*, bool, const float*, const float*, const void*, void*,
                    bool, int64_t, int64_t, int64_t, int, void*, size_t, void*) {
  return kNoCuda;
}
int gemm_lt_candidates(bool, bool, bool, int64_t, int64_t, int64_t, size_t, const char** error) {
  if (error) *error = kNoCuda;
  return 0;
}
const char* gemv(const void*, const void*, bool, const float*, const void*, void*, int64_t, int64_t,
                 bool, DType, void*) {
  return kNoCuda;
}
const char* resize_h_u8(const uint8_t*, uint8_t*, int, int, int, int, const int32_t*,
                        const int32_t*, int, int, void*) {
  return kNoCuda;
}
const char* resize_v_patchify(const uint8_t*, void*, int64_t, const int32_t*, int, int, int, int,
                              const int32_t*, const int32_t*, int, int, int, int, const float*,
                              const float*, DType, void*) {
  return kNoCuda;
}
const char* copy_h2d(void*, const void*, int64_t, void*) { return kNoCuda; }

}  // namespace vla::gpu::kernels
