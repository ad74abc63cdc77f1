#!/usr/bin/env python3
"""Does an element-wise SwiGLU between two cuBLAS GEMMs gain from walking its rows in reverse? The
gate|up GEMM's last-written tiles are still in L2 when the first reversed blocks read them, and the
SwiGLU's own last-written rows (the first ones) are what the down GEMM reads first. A plain Triton
SwiGLU (silu(gate) * up, bf16, flat over all rows; not the engine's kernel, which is CUDA:
src/gpu/kernels/swiglu.cu) timed alone and in the chain gate|up GEMM -> SwiGLU -> down GEMM (CUDA
graph, best of 7 replays of 10 calls) at the Qwen2.5-VL-3B vision (5980 rows, 1280 -> 2 x 3456)
and decoder (1525 rows, 2048 -> 2 x 11008) MLP shapes, forward and reverse block order. Needs
torch + triton on a CUDA GPU; not part of the build. Usage: python3 bench/triton_swiglu_l2_order.py

H200, 1 Dec 2026, two runs on two machines (BLOCK 1024; chain minus the two GEMMs, forward ->
reverse): vision 26.8 -> 21.8 us and 25.6 -> 23.3 us (alone ~31 us either way), decoder 11.6 ->
11.3 us and 18.7 -> 11.1 us (alone ~26 us). The engine's SwiGLU kernel runs its blocks in reverse
since (docs/benchmarks.md, "tenth run").
"""
import torch
import triton
import triton.language as tl


@triton.jit
def swiglu(x_ptr, out_ptr, inter, total, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if REVERSE:
        pid = tl.num_programs(0) - 1 - pid
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    r = offs // inter
    c = offs - r * inter
    g = tl.load(x_ptr + r * 2 * inter + c, mask=mask).to(tl.float32)
    u = tl.load(x_ptr + r * 2 * inter + inter + c, mask=mask).to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * u
    tl.store(out_ptr + offs, y.to(tl.bfloat16), mask=mask)


def graph_ms(fn, calls=10, reps=7):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    best = 1e9
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) / calls)
    return best


def main():
    torch.manual_seed(0)
    dev = "cuda"
    for name, rows, hid, inter in [("vision", 5980, 1280, 3456), ("decoder", 1525, 2048, 11008)]:
        x = torch.randn(rows, hid, device=dev, dtype=torch.bfloat16)
        wgu = torch.randn(hid, 2 * inter, device=dev, dtype=torch.bfloat16) * 0.03
        wd = torch.randn(inter, hid, device=dev, dtype=torch.bfloat16) * 0.03
        gu = torch.mm(x, wgu)  # the SwiGLU's input, as the chain below makes it
        h = torch.empty(rows, inter, device=dev, dtype=torch.bfloat16)
        y = torch.empty(rows, hid, device=dev, dtype=torch.bfloat16)
        total = rows * inter
        res = {}
        for blk in (1024, 2048):
            grid = (triton.cdiv(total, blk),)
            for rev in (False, True):
                sw = lambda: swiglu[grid](gu, h, inter, total, REVERSE=rev, BLOCK=blk,
                                          num_warps=4)
                sw()
                ref = torch.nn.functional.silu(gu[:, :inter].float()) * gu[:, inter:].float()
                err = (h.float() - ref).abs().max().item()
                t_sw = graph_ms(sw)

                def chain():
                    torch.mm(x, wgu, out=gu)
                    sw()
                    torch.mm(h, wd, out=y)

                t_chain = graph_ms(chain)
                res[(blk, rev)] = (t_sw, t_chain, err)
        t_mm1 = graph_ms(lambda: torch.mm(x, wgu, out=gu))
        t_mm2 = graph_ms(lambda: torch.mm(h, wd, out=y))
        print(f"{name}: gate|up mm {t_mm1*1e3:.1f} us, down mm {t_mm2*1e3:.1f} us")
        for (blk, rev), (t_sw, t_chain, err) in res.items():
            print(f"  swiglu BLOCK {blk} {'reverse' if rev else 'forward'}: alone {t_sw*1e3:.1f} us,"
                  f" chain {t_chain*1e3:.1f} us (chain - mms {1e3*(t_chain - t_mm1 - t_mm2):.1f}),"
                  f" max abs err vs float {err:.3g}")


if __name__ == "__main__":
    main()
