"""gate|up GEMM with SwiGLU in its epilogue (Triton, Hopper: TMA loads, warpgroup MMA).

One kernel replaces what the engine otherwise runs as two: cuBLAS(Lt)'s gate|up GEMM, whose
[M, 2N] output (the largest tensor of an MLP) goes to memory, and the SwiGLU kernel
(kernels/swiglu.cu) that reads it back. bf16 operands, or e4m3 ones with static scales (FP8).

  a    [M, K] bf16, or e4m3 quantised with the static scale *a_scale
  w    [2N, K] a's type: gate rows 0 .. N-1, then up rows N .. 2N-1 (e4m3: one scale *w_scale)
  bias [2N] bf16, or unused (HAS_BIAS = 0): the vision tower's MLP has biases, the decoder's not
  out  [M, N] bf16: silu(g) * u, or e4m3: saturate(silu(g) * u / *out_scale, +-448), with
       g, u = (a w^T)[:, n], (a w^T)[:, N + n] (e4m3: * *a_scale * *w_scale) + bias
  as Qwen2.5-VL's MLP computes down_proj's input: act_fn(gate_proj(x)) * up_proj(x)
  (transformers, models/qwen2_5_vl/modeling_qwen2_5_vl.py, Qwen2_5_VLMLP / Qwen2MLP).

Persistent: each program (one per SM) walks output tiles of BM rows x BN columns, grouped along M
by G for L2 reuse of the weight tiles. Each K step loads a [BM, BK] tile of a and, through a 3-D
view of w as [2, N, K], the gate and up rows of the tile's columns as ONE [2 BN, BK] tile, so one
[BM, 2 BN] product feeds both halves (two products of BN columns each ran ~20 % slower on an
H200, and the pointer-based version of this kernel reached 432-503 TFLOP/s in bf16 where this
one runs at cuBLAS' rate: docs/benchmarks.md, "thirteenth run"). The TMA descriptors are built on
the device, so the kernel needs global scratch memory (384 bytes per program): triton_aot.py
records the size, the launcher (triton_kernels.cpp) passes the caller's buffer.

Scales are read from device memory, so a captured CUDA graph keeps working after recalibration.
Needs N % BN == 0, K % BK == 0 and 16-byte aligned rows (the engine pads MLP widths to multiples of
64: ops.h mlp_width); M is free (TMA zero-fills the loads past it and clips the stores).
Compiled ahead of time by triton_aot.py (a cubin per operand type and tile configuration).
"""
import triton
import triton.language as tl


@triton.jit
def gemm_swiglu(a_ptr, w_ptr, bias_ptr, out_ptr, a_scale_ptr, w_scale_ptr, out_scale_ptr, M, N, K,
                FP8: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                BK: tl.constexpr, G: tl.constexpr):
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[2, N, K], strides=[N * K, K, 1],
                                       block_shape=[2, BN, BK])
    o_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN])
    num_m = tl.cdiv(M, BM)
    num_n = N // BN
    group = G * num_n
    for tile in tl.range(tl.program_id(0), num_m * num_n, tl.num_programs(0), flatten=True):
        first_m = (tile // group) * G
        size_m = min(num_m - first_m, G)
        pid_m = first_m + (tile % group) % size_m
        pid_n = (tile % group) // size_m
        acc = tl.zeros((BM, 2 * BN), dtype=tl.float32)
        for k in range(0, K // BK):
            a = a_desc.load([pid_m * BM, k * BK])
            w = w_desc.load([0, pid_n * BN, k * BK]).reshape(2 * BN, BK)
            acc = tl.dot(a, w.T, acc)
        if FP8:
            acc *= tl.load(a_scale_ptr) * tl.load(w_scale_ptr)
        if HAS_BIAS:
            rb = tl.arange(0, 2 * BN)
            rb = tl.where(rb < BN, pid_n * BN + rb, N + pid_n * BN + rb - BN)
            acc += tl.load(bias_ptr + rb).to(tl.float32)[None, :]
        # columns 0 .. BN-1 of acc are the gate's, BN .. 2BN-1 the up projection's
        g, u = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN)), (0, 2, 1)))
        y = g * tl.sigmoid(g) * u
        if FP8:
            y = tl.minimum(tl.maximum(y / tl.load(out_scale_ptr), -448.0), 448.0)
            o_desc.store([pid_m * BM, pid_n * BN], y.to(tl.float8e4nv))
        else:
            o_desc.store([pid_m * BM, pid_n * BN], y.to(tl.bfloat16))
