#!/usr/bin/env python3
"""Tile sweep of the engine's FP8 gate|up GEMM + SwiGLU kernel (src/gpu/kernels/gemm_swiglu_fp8.py,
the same source the build compiles ahead of time) against what it replaces: cuBLASLt's tensor-wise
FP8 GEMM (torch._scaled_mm, bf16 out, fast accumulation; add the engine's static SwiGLU kernel from
bench_gpu's op table, e.g. 0.0258 ms at [1519, 11008] and 0.0306 ms at [5980, 3456] on an H200).
Shapes: the 3B model's decoder and vision tower at 5 and 1 views of 640x360. Prints, per shape,
cuBLAS' time and the fastest tile configurations with their error against the dequantised
reference; pick the tiles to list in src/gpu/kernels/triton_aot.py from it. Needs torch + triton on
a CUDA GPU with FP8 (sm_89+); not part of the build. Usage: python3 bench/triton_swiglu_gemm.py
"""
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src" / "gpu" / "kernels"))
from gemm_swiglu_fp8 import gemm_swiglu_fp8  # noqa: E402

SHAPES = [  # name, rows, K, inter, bias
    ("decoder, 5 views", 1525, 2048, 11008, False),
    ("vision, 5 views", 5980, 1280, 3456, True),
    ("decoder, 1 view", 321, 2048, 11008, False),
    ("vision, 1 view", 1196, 1280, 3456, True),
]
TILES = [  # BM, BN, BK, warps, stages
    (128, 128, 128, 8, 3), (128, 128, 128, 8, 4), (128, 128, 64, 8, 4), (128, 128, 64, 8, 5),
    (128, 128, 128, 4, 3), (128, 64, 128, 4, 4), (128, 64, 128, 8, 4), (128, 64, 64, 4, 5),
    (64, 128, 128, 4, 4), (64, 128, 128, 4, 3), (64, 128, 64, 4, 5), (64, 256, 128, 8, 3),
    (64, 256, 64, 8, 4), (64, 64, 128, 4, 4),
]


def main():
    dev, f8 = "cuda", torch.float8_e4m3fn
    bench = lambda fn: triton.testing.do_bench_cudagraph(fn, rep=50)  # noqa: E731
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    for name, M, K, N, bias in SHAPES:
        torch.manual_seed(0)
        a = torch.randn(M, K, device=dev)
        w = torch.randn(2 * N, K, device=dev) / K ** 0.5
        b = (torch.randn(2 * N, device=dev) * 0.1).to(torch.bfloat16)
        sa = (a.abs().max() / 448).float().reshape(1)
        sw = (w.abs().max() / 448).float().reshape(1)
        aq = (a / sa).clamp(-448, 448).to(f8)
        wq = (w / sw).clamp(-448, 448).to(f8)
        ref = torch.matmul(aq.float() * sa, (wq.float() * sw).t())
        if bias:
            ref = ref + b.float()
        ref = torch.nn.functional.silu(ref[:, :N]) * ref[:, N:]
        so = (ref.abs().max() / 448).float().reshape(1)
        out = torch.empty(M, N, device=dev, dtype=f8)
        cublas = bench(lambda: torch._scaled_mm(aq, wq.t(), scale_a=sa.reshape(()),
                                                scale_b=sw.reshape(()), bias=b if bias else None,
                                                out_dtype=torch.bfloat16, use_fast_accum=True))
        rows = []
        for bm, bn, bk, warps, stages in TILES:
            if N % bn or K % bk:
                continue
            grid = (triton.cdiv(M, bm) * (N // bn),)
            run = lambda: gemm_swiglu_fp8[grid](  # noqa: E731
                aq, wq, b, out, sa, sw, so, M, N, K, HAS_BIAS=int(bias), BM=bm, BN=bn, BK=bk, G=8,
                num_warps=warps, num_stages=stages)
            run()
            err = ((out.float() * so - ref).norm() / ref.norm()).item()
            rows.append((bench(run), (bm, bn, bk, warps, stages), err))
        rows.sort()
        print(f"{name}: {M} x {K} -> 2 x {N} | cuBLAS FP8 GEMM alone {cublas:.4f} ms")
        for ms, tile, err in rows[:5]:
            flop = 2.0 * M * K * 2 * N
            print(f"   BM{tile[0]} BN{tile[1]} BK{tile[2]} w{tile[3]} s{tile[4]}: {ms:.4f} ms "
                  f"({flop / ms / 1e9:.0f} TFLOP/s), rel. err {err:.4f}")


if __name__ == "__main__":
    main()
