// Private: the table of ahead-of-time compiled Triton kernels that kernels/triton_aot.py generates
// (one entry per kernel and tile configuration) and kernels/triton_kernels.cpp launches.
#pragma once

#include <cstddef>

namespace vla::gpu::kernels::triton_aot {

struct Variant {
  const char* kernel;          // the table's name, e.g. "gemm_swiglu_fp8" (bf16 / e4m3 twins)
  const unsigned char* cubin;  // the compiled module (ELF)
  size_t cubin_size;           // bytes
  const char* symbol;          // the kernel's entry in the module
  int shared;                  // dynamic shared memory, bytes
  int warps;                   // block = warps * 32 threads
  int params;                  // entry parameters; those past `args` are Triton's scratch pointers
  int args;                    // the kernel's own runtime parameters
  int scratch;                 // global scratch bytes per program (device-side TMA descriptors)
  int bm, bn, bk;              // tile rows x columns, reduction depth (attention: BM, BN, D)
  int flag;                    // gemm_swiglu_*: HAS_BIAS; causal_attention: OUT_FP8
  const char* name;            // "BM128 BN128 BK128 w8 s3"
};

extern const Variant kVariants[];
extern const int kVariantCount;
extern const int kArch;  // compute capability the cubins target, e.g. 90

}  // namespace vla::gpu::kernels::triton_aot
