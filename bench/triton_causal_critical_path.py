#!/usr/bin/env python3
"""Is the engine's Triton causal attention (src/gpu/kernels/causal_attention.py) bound by its
critical path — the last query tile walks every key tile of the sequence in one program — or by
throughput? Times it at the Qwen2.5-VL-3B decoder's head dim (128, 8 query heads per KV head) for
one sequence of L rows with all 16 query heads and with 1-8 heads (then every program runs at
once, so the time is the longest program's). Needs torch + triton on a CUDA GPU; not part of the
build. Usage: python3 bench/triton_causal_critical_path.py

H200, 1 Dec 2026 (BM64 BN64, 4 warps, 2 stages — the tile the engine picks at 5 views): L 1525
(5 views) 30.7 us with 16 heads, 24.7 us with 1 head: ~80 % of the time is the last tile's chain
of 24 key tiles (~1 us each); at L 3050, 100.8 vs 46.2 us, throughput-bound. Splitting the long
tiles' keys over several programs would therefore save at most ~6 us per layer at 5 views (16 heads
at L 3050 do 4x the work in 100.8 us, so ~25 us is this kernel's throughput floor at 1525).
"""
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src" / "gpu" / "kernels"))
from causal_attention import causal_attention  # noqa: E402

D, GROUP = 128, 8
TILES = ((64, 64, 4, 2), (128, 64, 8, 3), (64, 32, 4, 3))  # BM, BN, warps, stages


def main():
    bench = lambda fn: triton.testing.do_bench_cudagraph(fn, rep=50)  # noqa: E731
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    for L in (381, 763, 1525, 3050):
        for H in (16, 1, 2, 4, 8):
            HK = max(1, H // GROUP)
            qkv = torch.randn(L, (H + 2 * HK) * D, device="cuda", dtype=torch.bfloat16)
            q, k, v = qkv[:, :H * D], qkv[:, H * D:(H + HK) * D], qkv[:, (H + HK) * D:]
            cu = torch.tensor([0, L], device="cuda", dtype=torch.int32)
            out = torch.empty(L, H * D, device="cuda", dtype=torch.bfloat16)
            res = []
            for bm, bn, w, st in TILES:
                tiles = (L + bm - 1) // bm
                run = lambda: causal_attention[(H, tiles)](  # noqa: E731
                    q, k, v, cu, out, None, qkv.stride(0), qkv.stride(0), qkv.stride(0), H * D, 1,
                    tiles, H // HK, D ** -0.5 * 1.4426950408889634, D=D, BM=bm, BN=bn,
                    OUT_FP8=0, num_warps=w, num_stages=st)
                run()
                res.append(f"BM{bm} BN{bn} w{w}: {bench(run) * 1e3:6.1f} us")
            print(f"L {L:5d} heads {H:2d} (kv {HK}): " + ", ".join(res))


if __name__ == "__main__":
    main()
