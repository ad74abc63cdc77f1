#!/usr/bin/env python3
"""Tile sweep of the engine's gate|up GEMM + SwiGLU kernel (src/gpu/kernels/gemm_swiglu.py, the same
source the build compiles ahead of time), bf16 and e4m3 operands, against what it replaces: the
GEMM alone (cuBLAS bf16 through torch.nn.functional.linear; cuBLASLt's tensor-wise FP8 through
torch._scaled_mm, bf16 out, fast accumulation) plus the SwiGLU pass (here torch's silu * mul,
slower than the engine's kernel: add bench_gpu's op-table time instead, e.g. silu_mul 0.0309 ms at
[5980, 3456] and 0.0255 ms at [1519, 11008] on an H200). Shapes: the 3B model's decoder and
vision tower at 5 and 1 views of 640x360. Prints, per shape and operand type, the GEMM's time and
the fastest tile configurations with their error against the float32 reference; pick the tiles to
list in src/gpu/kernels/triton_aot.py from it. Times are CUDA-graph replays (do_bench_cudagraph:
sustained, as the engine's forward pass runs its GEMMs at the power limit). Needs torch + triton on
a CUDA GPU with FP8 (sm_90); not part of the build. Usage: python3 bench/triton_swiglu_gemm.py
"""
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src" / "gpu" / "kernels"))
from gemm_swiglu import gemm_swiglu  # noqa: E402

SHAPES = [  # name, rows, K, inter, bias
    ("decoder, 5 views", 1525, 2048, 11008, False),
    ("vision, 5 views", 5980, 1280, 3456, True),
    ("decoder, 1 view", 321, 2048, 11008, False),
    ("vision, 1 view", 1196, 1280, 3456, True),
]
TILES = [  # BM, BN (half the product's columns), BK, warps, stages
    (128, 128, 128, 8, 3), (128, 128, 128, 8, 4), (128, 128, 64, 8, 3), (128, 128, 64, 8, 4),
    (64, 128, 128, 8, 4), (64, 128, 64, 8, 4), (64, 128, 128, 4, 4),
]


def main():
    dev, f8 = "cuda", torch.float8_e4m3fn
    # The kernel builds its TMA descriptors on the device: Triton asks for scratch memory.
    triton.set_allocator(lambda size, align, stream: torch.empty(size, device=dev, dtype=torch.int8))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
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
        ab, wb = a.to(torch.bfloat16), w.to(torch.bfloat16)
        for fp8 in (False, True):
            x, wt = (aq, wq) if fp8 else (ab, wb)
            ref = (torch.matmul(aq.float() * sa, (wq.float() * sw).t()) if fp8 else
                   torch.matmul(ab.float(), wb.float().t()))
            if bias:
                ref = ref + b.float()
            ref = torch.nn.functional.silu(ref[:, :N]) * ref[:, N:]
            so = (ref.abs().max() / 448).float().reshape(1)
            out = torch.empty(M, N, device=dev, dtype=f8 if fp8 else torch.bfloat16)
            if fp8:
                gemm = lambda: torch._scaled_mm(  # noqa: E731
                    aq, wq.t(), scale_a=sa.reshape(()), scale_b=sw.reshape(()),
                    bias=b if bias else None, out_dtype=torch.bfloat16, use_fast_accum=True)
            else:
                gemm = lambda: torch.nn.functional.linear(ab, wb, b if bias else None)  # noqa: E731
            gemm_ms = bench(gemm)
            gu = gemm()
            swiglu_ms = bench(lambda: torch.nn.functional.silu(gu[:, :N]) * gu[:, N:])
            rows = []
            for bm, bn, bk, warps, stages in TILES:
                if N % bn or K % bk:
                    continue
                grid = (min(sms, triton.cdiv(M, bm) * (N // bn)),)
                run = lambda: gemm_swiglu[grid](  # noqa: E731
                    x, wt, b, out, sa, sw, so, M, N, K, FP8=int(fp8), HAS_BIAS=int(bias), BM=bm,
                    BN=bn, BK=bk, G=8, num_warps=warps, num_stages=stages)
                try:
                    run()
                except Exception as e:  # e.g. out of shared memory for this tile
                    print(f"   BM{bm} BN{bn} BK{bk} w{warps} s{stages}: {str(e).splitlines()[0]}")
                    continue
                got = out.float() * so if fp8 else out.float()
                err = ((got - ref).norm() / ref.norm()).item()
                rows.append((bench(run), (bm, bn, bk, warps, stages), err))
            rows.sort()
            kind = "e4m3" if fp8 else "bf16"
            print(f"{name}, {kind}: {M} x {K} -> 2 x {N} | GEMM alone {gemm_ms:.4f} ms, torch "
                  f"SwiGLU {swiglu_ms:.4f} ms")
            for ms, tile, err in rows[:4]:
                flop = 2.0 * M * K * 2 * N
                print(f"   BM{tile[0]} BN{tile[1]} BK{tile[2]} w{tile[3]} s{tile[4]}: {ms:.4f} ms "
                      f"({flop / ms / 1e9:.0f} TFLOP/s), rel. err {err:.4f}")


if __name__ == "__main__":
    main()
