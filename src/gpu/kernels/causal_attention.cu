// Causal attention over packed sequences with grouped KV heads: the decoder's prefill attention
// (kernels.h: causal_attention). FlashAttention-2 (Dao, 2023, arXiv:2307.08691): one CTA of four
// warps per (64-query tile, head), keys in tiles of 64 with an online softmax, S = q k^T and
// O += P v on tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulation; v's fragments through
// ldmatrix.trans), P rounded to bf16 for the second product. As in FlashAttention-2 the next key
// tile is copied (cp.async) while the softmax and P v of this one run, and the next value tile
// while the next S is computed. Written for this engine (no library here has it for C++ callers:
// torch's flash kernel uses 128-query tiles, so a 1525-token prompt with 16 heads gives 192 CTAs
// for 132 SMs); the tiles are launched longest first so the diagonal's short tiles fill the tail.
// The output is bf16, or e4m3 with a static scale (the FP8 output projection's input).
#include "gpu/kernels/common.cuh"
#include "gpu/kernels/mma.cuh"

namespace vla::gpu::kernels {
namespace {

constexpr int kTile = 64;           // query rows per CTA and keys per step
constexpr int kWarps = kTile / 16;  // one warp per 16 query rows
constexpr float kLog2e = 1.4426950408889634f;

template <int D>
constexpr int smem_bytes() {
  return 3 * kTile * (D + 8) * 2;  // q, k, v tiles, rows padded by 8 (bank-conflict free loads)
}

// Copies rows [0, rows_valid) of a 64-row tile (row r at src + r * stride, D bf16) to shared
// memory (row pitch D + 8); rows past rows_valid are zero.
template <int D>
__device__ __forceinline__ void load_tile(__nv_bfloat16* dst, const __nv_bfloat16* src,
                                          int64_t stride, int rows_valid) {
  constexpr int kChunks = D / 8;
  for (int i = threadIdx.x; i < kTile * kChunks; i += kWarps * 32) {
    const int row = i / kChunks, c8 = (i - row * kChunks) * 8;
    const bool valid = row < rows_valid;
    cp_async16(dst + row * (D + 8) + c8, src + (valid ? row : 0) * stride + c8, valid);
  }
  cp_async_commit();
}

// grid (heads, tiles): tiles numbered over all sequences (ceil(len / 64) each) and taken in
// reverse, so the last (longest) tiles start first. q rows: q + row * q_stride + h * D; k / v rows
// likewise with KV head h / (heads / kv_heads). Out: __nv_bfloat16, or uint8_t (e4m3, divided by
// *out_scale).
template <int D, typename Out>
__global__ void __launch_bounds__(kWarps * 32)
    causal_attention_kernel(const __nv_bfloat16* __restrict__ q, int64_t q_stride,
                            const __nv_bfloat16* __restrict__ k, int64_t k_stride,
                            const __nv_bfloat16* __restrict__ v, int64_t v_stride,
                            const int32_t* __restrict__ cu, int seqs, int heads, int kv_heads,
                            float scale_log2, Out* __restrict__ out, int64_t out_stride,
                            const float* __restrict__ out_scale) {
  constexpr int kP = D + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* ks = qs + kTile * kP;
  __nv_bfloat16* vs = ks + kTile * kP;

  // This CTA's sequence and query tile.
  const int h = blockIdx.x, kvh = h / (heads / kv_heads);
  int t = static_cast<int>(gridDim.y - 1 - blockIdx.y), seq_start = 0, len = 0;
  for (int s = 0; s < seqs; ++s) {
    seq_start = cu[s];
    len = cu[s + 1] - seq_start;
    const int tiles = (len + kTile - 1) / kTile;
    if (t < tiles) break;
    t -= tiles;
  }
  const int q0 = t * kTile, q_rows = min(kTile, len - q0);
  const int64_t row0 = static_cast<int64_t>(seq_start);
  load_tile<D>(qs, q + (row0 + q0) * q_stride + static_cast<int64_t>(h) * D, q_stride, q_rows);
  auto k_src = [&](int kt) {
    return k + (row0 + kt * kTile) * k_stride + static_cast<int64_t>(kvh) * D;
  };
  auto v_src = [&](int kt) {
    return v + (row0 + kt * kTile) * v_stride + static_cast<int64_t>(kvh) * D;
  };
  load_tile<D>(ks, k_src(0), k_stride, min(kTile, len));
  load_tile<D>(vs, v_src(0), v_stride, min(kTile, len));

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int m0 = warp * 16;
  const int qa_row = q0 + m0 + g, qb_row = qa_row + 8;  // this thread's rows, sequence-local
  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float run_max0 = -INFINITY, run_max1 = -INFINITY, sum0 = 0.f, sum1 = 0.f;

  const int key_tiles = t + 1;  // causal: keys up to this query tile's last row
  for (int kt = 0; kt < key_tiles; ++kt) {
    cp_async_wait<1>();  // q (first step) and this k tile are in; v may still be in flight
    __syncthreads();
    // S = q k^T: n-tile j holds keys kt * 64 + j * 8 + 2 t4 + {0, 1}.
    float s[kTile / 8][4];
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
    qk_tile<D, kTile / 8>(s, qs, ks, kP, m0, lane, kTile);
    __syncthreads();  // every warp is done with this k tile
    if (kt + 1 < key_tiles)
      load_tile<D>(ks, k_src(kt + 1), k_stride, min(kTile, len - (kt + 1) * kTile));
    // Online softmax (log2 domain); the diagonal tile masks keys after the query.
    if (kt == t) {
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = kt * kTile + j * 8 + t4 * 2 + e;
          if (key > qa_row) s[j][e] = -INFINITY;
          if (key > qb_row) s[j][2 + e] = -INFINITY;
        }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j) {
      mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
      mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
    }
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o));
    }
    // Every row sees key kt * 64 <= its own index, so the maxima are finite.
    const float new0 = fmaxf(run_max0, mx0 * scale_log2), new1 = fmaxf(run_max1, mx1 * scale_log2);
    const float corr0 = exp2f(run_max0 - new0), corr1 = exp2f(run_max1 - new1);
    run_max0 = new0;
    run_max1 = new1;
    sum0 *= corr0;
    sum1 *= corr1;
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j) {
      s[j][0] = exp2f(s[j][0] * scale_log2 - new0);
      s[j][1] = exp2f(s[j][1] * scale_log2 - new0);
      s[j][2] = exp2f(s[j][2] * scale_log2 - new1);
      s[j][3] = exp2f(s[j][3] * scale_log2 - new1);
      sum0 += s[j][0] + s[j][1];
      sum1 += s[j][2] + s[j][3];
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      acc[n][0] *= corr0;
      acc[n][1] *= corr0;
      acc[n][2] *= corr1;
      acc[n][3] *= corr1;
    }
    // O += P v (the S accumulators of n-tiles 2 kk and 2 kk + 1 are the A fragment of step kk).
    if (kt + 1 < key_tiles)
      cp_async_wait<1>();  // this v tile is in (the next k tile may still be in flight)
    else
      cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) pv_step<D>(acc, s, kk, vs, kP, lane);
    __syncthreads();  // every warp is done with this v tile
    if (kt + 1 < key_tiles)
      load_tile<D>(vs, v_src(kt + 1), v_stride, min(kTile, len - (kt + 1) * kTile));
  }
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1) {
    sum0 += __shfl_xor_sync(0xffffffffu, sum0, o);
    sum1 += __shfl_xor_sync(0xffffffffu, sum1, o);
  }
  const float to_out = out_scale ? 1.f / __ldg(out_scale) : 1.f;
  const float inv0 = to_out / sum0, inv1 = to_out / sum1;
  const int ra = m0 + g, rb = ra + 8;
  auto row_out = [&](int r) {
    return r < q_rows ? out + (row0 + q0 + r) * out_stride + static_cast<int64_t>(h) * D + t4 * 2
                      : nullptr;
  };
  store_fragment<D>(acc, inv0, inv1, row_out(ra), row_out(rb));
}

template <int D, typename Out>
const char* launch(const void* q, int64_t q_stride, const void* k, int64_t k_stride, const void* v,
                   int64_t v_stride, const int32_t* cu, int seqs, int64_t tiles, int heads,
                   int kv_heads, float scale, void* out, int64_t out_stride, const float* out_scale,
                   cudaStream_t s) {
  constexpr int bytes = smem_bytes<D>();
  if (bytes > 48 * 1024) {
    static const cudaError_t set = cudaFuncSetAttribute(
        causal_attention_kernel<D, Out>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (set != cudaSuccess) return cudaGetErrorString(set);
  }
  const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>(tiles));
  causal_attention_kernel<D, Out><<<grid, kWarps * 32, bytes, s>>>(
      static_cast<const __nv_bfloat16*>(q), q_stride, static_cast<const __nv_bfloat16*>(k),
      k_stride, static_cast<const __nv_bfloat16*>(v), v_stride, cu, seqs, heads, kv_heads,
      scale * kLog2e, static_cast<Out*>(out), out_stride, out_scale);
  return last_error();
}

}  // namespace

bool causal_attention_fits(int head_dim) {
  return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
}

const char* causal_attention(const void* q, int64_t q_stride, const void* k, int64_t k_stride,
                             const void* v, int64_t v_stride, const int32_t* cu, int seqs,
                             int64_t tiles, int heads, int kv_heads, int head_dim, float scale,
                             void* out, int64_t out_stride, const float* out_scale, void* stream) {
  if (seqs == 0 || tiles == 0) return nullptr;
  if (!causal_attention_fits(head_dim))
    return "causal_attention: head_dim must be 16, 32, 64 or 128";
  if (tiles > 65535) return "causal_attention: more than 65535 query tiles in one launch";
  if (kv_heads < 1 || heads % kv_heads != 0)
    return "causal_attention: heads must be a multiple of kv_heads";
  for (const auto& [p, stride] :
       {std::pair<const void*, int64_t>{q, q_stride}, {k, k_stride}, {v, v_stride}})
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0 || stride % 8 != 0)
      return "causal_attention: q, k and v need 16-byte aligned rows";
  if (reinterpret_cast<uintptr_t>(out) % 4 != 0 || out_stride % 2 != 0)
    return "causal_attention: out needs 4-byte aligned rows";
  auto s = static_cast<cudaStream_t>(stream);
  auto run = [&](auto d) {
    constexpr int kD = decltype(d)::value;
    return out_scale
               ? launch<kD, uint8_t>(q, q_stride, k, k_stride, v, v_stride, cu, seqs, tiles, heads,
                                     kv_heads, scale, out, out_stride, out_scale, s)
               : launch<kD, __nv_bfloat16>(q, q_stride, k, k_stride, v, v_stride, cu, seqs, tiles,
                                           heads, kv_heads, scale, out, out_stride, nullptr, s);
  };
  return dispatch_head_dim<16, 32, 64, 128>(head_dim, run);
}

}  // namespace vla::gpu::kernels
