// Helpers shared by the attention kernels (window_attention.cu, causal_attention.cu): tensor-core
// and asynchronous-copy PTX (sm_80+) and the rotary embedding of a tile in shared memory. Private
// to src/gpu/kernels/.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

namespace vla::gpu::kernels {
namespace {

// Two floats as a bf16 pair, lo in the low 16 bits (the A-fragment order of mma.sync).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// d += a (16x16, row-major fragment) * b (16x8, column fragment); PTX ISA "mma.m16n8k16".
__device__ __forceinline__ void mma_bf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 16-byte asynchronous copy global -> shared (PTX "cp.async"); valid = false writes zeros.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
               "r"(valid ? 16 : 0));
}
// Closes the group of cp.async copies issued so far by this thread.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Four 8x8 bf16 matrices from shared memory (PTX "ldmatrix"): lanes 8i .. 8i + 7 give the row
// addresses of matrix i; r[i] is this lane's fragment of it (row lane / 4, columns 2 (lane % 4)
// and 2 (lane % 4) + 1), the A / B fragment layout of mma.m16n8k16.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// Four 8x8 bf16 matrices from shared memory, transposed (PTX "ldmatrix ... .trans"): lanes 8i ..
// 8i + 7 give the row addresses of matrix i, r[i] is this lane's fragment of it.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// O += P v for one 16-key step kk of a warp's 16 query rows (FlashAttention-2's second product):
// P's A fragment is the S accumulators of key n-tiles 2 kk and 2 kk + 1 rounded to bf16 (the
// m16n8 C layout is the m16k16 A layout), v's B fragments come from rows kk * 16 .. kk * 16 + 15
// of the value tile in shared memory (row pitch `pitch`) through ldmatrix.trans, two d-tiles per
// instruction. acc is the m16 x D output fragment.
template <int D, int kKeyTiles>
__device__ __forceinline__ void pv_step(float (&acc)[D / 8][4], const float (&s)[kKeyTiles][4],
                                        int kk, const __nv_bfloat16* v, int pitch, int lane) {
  const uint32_t a0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
  const uint32_t a1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
  const uint32_t a2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
  const uint32_t a3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  const __nv_bfloat16* vrow =
      v + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * pitch + (lane >> 4) * 8;
#pragma unroll
  for (int n = 0; n < D / 8; n += 2) {
    uint32_t b[4];
    ldmatrix_x4_trans(b, vrow + n * 8);
    mma_bf16(acc[n], a0, a1, a2, a3, b[0], b[1]);
    mma_bf16(acc[n + 1], a0, a1, a2, a3, b[2], b[3]);
  }
}

// Two adjacent output values: as bf16, or as e4m3 (saturating at +-448).
__device__ __forceinline__ void store_pair(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}
__device__ __forceinline__ void store_pair(uint8_t* p, float a, float b) {
  *reinterpret_cast<__nv_fp8x2_storage_t*>(p) =
      __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
}

// Writes a warp's m16 x D output fragment (Out: __nv_bfloat16, or uint8_t for e4m3 with inv0 /
// inv1 including 1 / scale): this thread's values of row g (scaled by inv0) to oa and of row g + 8
// (by inv1) to ob, each pointing at the row's column 2 (lane % 4); a null pointer skips that row
// (past the sequence).
template <int D, typename Out>
__device__ __forceinline__ void store_fragment(const float (&acc)[D / 8][4], float inv0, float inv1,
                                               Out* oa, Out* ob) {
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    if (oa) store_pair(oa + n * 8, acc[n][0] * inv0, acc[n][1] * inv0);
    if (ob) store_pair(ob + n * 8, acc[n][2] * inv1, acc[n][3] * inv1);
  }
}

// Host side: f(std::integral_constant<int, D>{}) for the first D of Dims equal to head_dim, the
// last one otherwise (the kernels' head-dim instantiations; callers check head_dim first).
template <int D, int... Rest, typename F>
auto dispatch_head_dim(int head_dim, F&& f) {
  if constexpr (sizeof...(Rest) == 0) {
    return f(std::integral_constant<int, D>{});
  } else {
    return head_dim == D ? f(std::integral_constant<int, D>{})
                         : dispatch_head_dim<Rest...>(head_dim, f);
  }
}

// Rotary embedding, in place, of rows [0, rows) of two bf16 tiles in shared memory (row pitch
// `pitch`, head_dim D, D % 16 == 0): x = x * cos + rotate_half(x) * sin, in float, rounded to bf16
// as the standalone rotary kernel (rotary.cu) rounds. cos_half / sin_half: float [rows][D / 2] in
// shared memory, the first half of each table row (the halves of a Qwen2.5-VL table are equal:
// transformers' emb = cat(freqs, freqs)). kThreads threads (the whole block) call it, each taking
// one 8-wide chunk of the first half and its partner in the second half, of every kThreads / (D /
// 16)-th row; the caller synchronises before (tiles and tables loaded) and after.
template <int D, int kThreads>
__device__ __forceinline__ void rotate_tiles(__nv_bfloat16* a, __nv_bfloat16* b, int pitch,
                                             int rows, const float* cos_half,
                                             const float* sin_half) {
  constexpr int kHalf = D / 2, kChunks = kHalf / 8, kRowStep = kThreads / kChunks;
  const int tid = threadIdx.x;
  if (tid >= kRowStep * kChunks) return;
  const int c8 = (tid % kChunks) * 8;
  for (int row = tid / kChunks; row < rows; row += kRowStep) {
    float c[8], s[8];
    const float4* c4 = reinterpret_cast<const float4*>(cos_half + row * kHalf + c8);
    const float4* s4 = reinterpret_cast<const float4*>(sin_half + row * kHalf + c8);
    *reinterpret_cast<float4*>(c) = c4[0];
    *reinterpret_cast<float4*>(c + 4) = c4[1];
    *reinterpret_cast<float4*>(s) = s4[0];
    *reinterpret_cast<float4*>(s + 4) = s4[1];
#pragma unroll
    for (int which = 0; which < 2; ++which) {
      __nv_bfloat16* tile = which ? b : a;
      uint4* p1 = reinterpret_cast<uint4*>(tile + row * pitch + c8);
      uint4* p2 = reinterpret_cast<uint4*>(tile + row * pitch + c8 + kHalf);
      uint4 x = *p1, y = *p2;
      __nv_bfloat16* xe = reinterpret_cast<__nv_bfloat16*>(&x);
      __nv_bfloat16* ye = reinterpret_cast<__nv_bfloat16*>(&y);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float x1 = __bfloat162float(xe[j]);
        const float x2 = __bfloat162float(ye[j]);
        xe[j] = __float2bfloat16(x1 * c[j] - x2 * s[j]);
        ye[j] = __float2bfloat16(x2 * c[j] + x1 * s[j]);
      }
      *p1 = x;
      *p2 = y;
    }
  }
}

// S = q k^T for one warp's 16 query rows (m0 ..) against kKeyTiles * 8 keys, on tensor cores:
// q / k tiles in shared memory (row pitch `pitch`, D dims), fragments through ldmatrix (q's A
// fragment, and the B fragments of two key n-tiles per instruction). s[j] holds keys j * 8 +
// 2 (lane % 4) + {0, 1} of rows m0 + lane / 4 ({0, 1}) and + 8 ({2, 3}); key tile pairs starting
// at or past key_limit are skipped (left as they are).
template <int D, int kKeyTiles>
__device__ __forceinline__ void qk_tile(float (&s)[kKeyTiles][4], const __nv_bfloat16* qs,
                                        const __nv_bfloat16* ks, int pitch, int m0, int lane,
                                        int key_limit) {
  const __nv_bfloat16* q_lane =
      qs + (m0 + (lane & 7) + ((lane >> 3) & 1) * 8) * pitch + (lane >> 4) * 8;
  const __nv_bfloat16* k_lane = ks + ((lane & 7) + (lane >> 4) * 8) * pitch + ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, q_lane + kk * 16);
#pragma unroll
    for (int j = 0; j < kKeyTiles; j += 2) {
      if (j * 8 >= key_limit) continue;
      uint32_t b[4];
      ldmatrix_x4(b, k_lane + j * 8 * pitch + kk * 16);
      mma_bf16(s[j], a[0], a[1], a[2], a[3], b[0], b[1]);
      mma_bf16(s[j + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
    }
  }
}

}  // namespace
}  // namespace vla::gpu::kernels
