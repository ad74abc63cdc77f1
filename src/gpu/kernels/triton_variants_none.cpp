// The Triton kernel table of a CUDA build that found no Triton (kernels/triton_aot.py could not
// run): no variants, so kernels.h's *_variants() are 0 and the engine keeps cuBLAS +
// its CUDA kernels.
#include "gpu/kernels/triton_variants.h"

namespace vla::gpu::kernels::triton_aot {

const Variant kVariants[] = {{"none", nullptr, 0, "", 0, 0, 0, 0, 0, 1, 1, 1, 0, "none"}};
const int kVariantCount = 0;
const int kArch = 0;

}  // namespace vla::gpu::kernels::triton_aot
