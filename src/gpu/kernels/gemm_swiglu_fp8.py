"""FP8 gate|up GEMM with SwiGLU and static e4m3 quantisation in its epilogue (Triton, Hopper).

One kernel replaces what the engine otherwise runs as two: cuBLASLt's tensor-wise FP8 GEMM
(gate|up, bf16 out) and the static-FP8 SwiGLU kernel (kernels/swiglu.cu). The bf16 gate|up
activations ([M, 2N], the largest tensor of an MLP) are never written to memory.

  a    [M, K] e4m3 (row stride K), quantised with the static scale *a_scale
  w    [2N, K] e4m3 (row stride K): gate rows 0 .. N-1, then up rows N .. 2N-1, one scale *w_scale
  bias [2N] bf16 or unused (HAS_BIAS = 0): the vision tower's MLP has biases, the decoder's not
  out  [M, N] e4m3 (row stride N):
       out = saturate(silu(g) * u / *out_scale, +-448), g, u = (a w^T) * *a_scale * *w_scale + bias
  as Qwen2.5-VL's MLP computes down_proj's input: act_fn(gate_proj(x)) * up_proj(x)
  (transformers, models/qwen2_5_vl/modeling_qwen2_5_vl.py, Qwen2_5_VLMLP / Qwen2MLP).

Scales are read from device memory, so a captured CUDA graph keeps working after recalibration.
Needs N % BN == 0 and K % BK == 0 (the engine pads MLP widths to multiples of 64; ops.h
mlp_width); M is masked. The grid is one program per (BM x BN) output tile, grouped along M by G
for L2 reuse of the weight tiles (Triton's matmul tutorial ordering).

Compiled ahead of time by triton_aot.py at build time (a cubin per tile configuration, launched
from C++ through the CUDA driver API: triton_kernels.cpp); bench/triton_swiglu_gemm.py times it.
"""
import triton
import triton.language as tl


@triton.jit
def gemm_swiglu_fp8(a_ptr, w_ptr, bias_ptr, out_ptr, a_scale_ptr, w_scale_ptr, out_scale_ptr, M,
                    N, K, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr, G: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = N // BN
    group = G * num_n
    first_m = (pid // group) * G
    size_m = min(num_m - first_m, G)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    # Rows past M read row M - 1 (valid memory, results discarded): no mask in the main loop.
    rm_load = tl.minimum(rm, M - 1).to(tl.int64)
    a_ptrs = a_ptr + rm_load[:, None] * K + rk[None, :]
    g_ptrs = w_ptr + rn[None, :].to(tl.int64) * K + rk[:, None]
    u_ptrs = g_ptrs + N.to(tl.int64) * K
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, K // BK):
        a = tl.load(a_ptrs)
        acc_g = tl.dot(a, tl.load(g_ptrs), acc_g)
        acc_u = tl.dot(a, tl.load(u_ptrs), acc_u)
        a_ptrs += BK
        g_ptrs += BK
        u_ptrs += BK
    s = tl.load(a_scale_ptr) * tl.load(w_scale_ptr)
    gate = acc_g * s
    up = acc_u * s
    if HAS_BIAS:
        gate += tl.load(bias_ptr + rn).to(tl.float32)[None, :]
        up += tl.load(bias_ptr + N + rn).to(tl.float32)[None, :]
    y = gate * tl.sigmoid(gate) * up / tl.load(out_scale_ptr)
    y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    out_ptrs = out_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(out_ptrs, y.to(tl.float8e4nv), mask=rm[:, None] < M)
