#!/usr/bin/env python3
"""Tile sweep of the engine's Triton causal attention kernel (src/gpu/kernels/causal_attention.py,
the same source the build compiles ahead of time) against torch's SDPA backends (cuDNN, flash) at
the Qwen2.5-VL-3B decoder's prefill shapes: 16 query heads, 2 KV heads, head_dim 128, one
sequence of 1 or 5 views of 640x360 (321 / 1525 tokens) and 5 sequences of 321 packed. Prints per
shape the SDPA times and the fastest tiles with TFLOP/s (causal: half the dense products) and
relative error against float32 math attention. Needs torch + triton on a CUDA GPU; not part of the
build. Usage: python3 bench/triton_causal_attention.py
"""
import sys
from pathlib import Path

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src" / "gpu" / "kernels"))
from causal_attention import causal_attention  # noqa: E402

SHAPES = [("5 views", [1525]), ("1 view", [321]), ("5 x 1 view packed", [321] * 5)]
H, HK, D = 16, 2, 128
TILES = [  # BM, BN, warps, stages
    (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 4, 3),
    (64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 3), (128, 32, 4, 3), (64, 32, 4, 3),
]


def main():
    dev, bf = "cuda", torch.bfloat16
    bench = lambda fn: triton.testing.do_bench_cudagraph(fn, rep=50)  # noqa: E731
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    for name, lens in SHAPES:
        torch.manual_seed(0)
        T = sum(lens)
        qkv = torch.randn(T, (H + 2 * HK) * D, device=dev, dtype=bf)
        q = qkv[:, : H * D].view(T, H, D)
        k = qkv[:, H * D: (H + HK) * D].view(T, HK, D)
        v = qkv[:, (H + HK) * D:].view(T, HK, D)
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device=dev, dtype=torch.int32)
        scale = D ** -0.5
        refs = []
        for i in range(len(lens)):
            s, e = cu[i].item(), cu[i + 1].item()
            qi, ki, vi = (x[s:e].transpose(0, 1).float() for x in (q, k, v))
            ki, vi = ki.repeat_interleave(H // HK, 0), vi.repeat_interleave(H // HK, 0)
            refs.append(torch.nn.functional.scaled_dot_product_attention(
                qi, ki, vi, is_causal=True, scale=scale).transpose(0, 1))
        ref = torch.cat(refs).reshape(T, H * D)
        flops = sum(2.0 * l * l * H * D for l in lens)  # 4 l^2 H D / 2
        line = []
        if len(set(lens)) == 1:
            B, L = len(lens), lens[0]
            qb = q.view(B, L, H, D).transpose(1, 2)
            kb = k.view(B, L, HK, D).transpose(1, 2).repeat_interleave(H // HK, 1)
            vb = v.view(B, L, HK, D).transpose(1, 2).repeat_interleave(H // HK, 1)
            for be, nm in ((SDPBackend.CUDNN_ATTENTION, "cuDNN"), (SDPBackend.FLASH_ATTENTION,
                                                                   "flash")):
                def sd(be=be):
                    with sdpa_kernel(be):
                        return torch.nn.functional.scaled_dot_product_attention(
                            qb, kb, vb, is_causal=True, scale=scale)
                try:
                    sd()
                    ms = bench(sd)
                    line.append(f"{nm} {ms:.4f} ms ({flops / ms / 1e9:.0f} TFLOP/s)")
                except RuntimeError as e:
                    line.append(f"{nm} unavailable ({str(e).splitlines()[0][:60]})")
        print(f"{name} ({T} rows): " + ", ".join(line))
        out = torch.empty(T, H * D, device=dev, dtype=bf)
        rows = []
        for bm, bn, warps, stages in TILES:
            tiles = sum((l + bm - 1) // bm for l in lens)
            run = lambda: causal_attention[(H, tiles)](  # noqa: E731
                q, k, v, cu, out, None, qkv.stride(0), qkv.stride(0), qkv.stride(0), H * D,
                len(lens), tiles, H // HK, scale * 1.4426950408889634, D=D, BM=bm, BN=bn,
                OUT_FP8=0, num_warps=warps, num_stages=stages)
            try:
                run()
            except Exception as e:
                print(f"   BM{bm} BN{bn} w{warps} s{stages}: {type(e).__name__} {e}"[:1500])
                continue
            err = ((out.float() - ref).norm() / ref.norm()).item()
            rows.append((bench(run), (bm, bn, warps, stages), err))
        rows.sort()
        for ms, t, err in rows[:6]:
            print(f"   BM{t[0]} BN{t[1]} w{t[2]} s{t[3]}: {ms:.4f} ms ({flops / ms / 1e9:.0f} "
                  f"TFLOP/s), rel. err {err:.4f}")


if __name__ == "__main__":
    main()
