#!/usr/bin/env python3
"""Feasibility probe for issue 14's last lever: an FP8 gate|up GEMM with SwiGLU and the static
e4m3 quantisation in its epilogue (Triton, Hopper), against what the engine runs today:
cuBLASLt's tensor-wise FP8 GEMM (torch._scaled_mm, bf16 out, fast accumulation) followed by the
engine's static-FP8 SwiGLU kernel (op table: 0.0258 ms at [1519, 11008], 0.0306 ms at [5980, 3456]
on an H200). Shapes: the 3B model's decoder (1525 x 2048 -> 2 x 11008) and vision tower at five
640x360 views (5980 x 1280 -> 2 x 3456). Prints both times and the fused kernel's error against
the dequantised reference. Needs torch + triton on a CUDA GPU with FP8 (sm_89+); not part of the
build. Usage: python3 bench/triton_swiglu_gemm.py
"""
import torch
import triton
import triton.language as tl


@triton.autotune(
    configs=[
        triton.Config({"BM": 128, "BN": 128, "BK": 128, "G": 8}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BN": 64, "BK": 128, "G": 8}, num_warps=4, num_stages=4),
        triton.Config({"BM": 128, "BN": 128, "BK": 64, "G": 8}, num_warps=8, num_stages=4),
        triton.Config({"BM": 64, "BN": 128, "BK": 128, "G": 8}, num_warps=4, num_stages=4),
    ],
    key=["M", "N", "K"],
)
@triton.jit
def gemm_swiglu_fp8(a_ptr, w_ptr, o_ptr, M, N, K, scale_ab, inv_out,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, G: tl.constexpr):
    # a [M, K] e4m3; w [2N, K] e4m3 (gate rows, then up rows); o [M, N] e4m3 =
    # sat(silu(gate) * up / out_scale) with gate, up = (a w^T) * scale_a * scale_w.
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
    a_ptrs = a_ptr + rm[:, None] * K + rk[None, :]
    g_ptrs = w_ptr + rn[None, :] * K + rk[:, None]
    u_ptrs = w_ptr + (rn[None, :] + N) * K + rk[:, None]
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, K // BK):
        a = tl.load(a_ptrs, mask=rm[:, None] < M, other=0.0)
        acc_g = tl.dot(a, tl.load(g_ptrs), acc_g)
        acc_u = tl.dot(a, tl.load(u_ptrs), acc_u)
        a_ptrs += BK
        g_ptrs += BK
        u_ptrs += BK
    gate = acc_g * scale_ab
    up = acc_u * scale_ab
    y = gate * tl.sigmoid(gate) * up * inv_out
    y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    tl.store(o_ptr + rm[:, None] * N + rn[None, :], y.to(tl.float8e4nv), mask=rm[:, None] < M)


def main():
    dev = "cuda"
    f8 = torch.float8_e4m3fn
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    print("shape (M x K -> 2 x N) | cuBLAS FP8 GEMM ms | + engine SwiGLU ms (op table) | "
          "Triton fused ms | fused TFLOP/s | fused rel. err vs reference")
    for M, K, N, swiglu_ms in [(1525, 2048, 11008, 0.0258), (5980, 1280, 3456, 0.0306),
                               (321, 2048, 11008, None)]:
        torch.manual_seed(0)
        a = torch.randn(M, K, device=dev)
        w = torch.randn(2 * N, K, device=dev) / K ** 0.5
        sa = (a.abs().max() / 448).float()
        sw = (w.abs().max() / 448).float()
        aq = (a / sa).clamp(-448, 448).to(f8)
        wq = (w / sw).clamp(-448, 448).to(f8)
        ref = torch.matmul(aq.float() * sa, (wq.float() * sw).t())
        ref = torch.nn.functional.silu(ref[:, :N]) * ref[:, N:]
        so = (ref.abs().max() / 448).float()
        out = torch.empty(M, N, device=dev, dtype=f8)
        grid = lambda meta: (triton.cdiv(M, meta["BM"]) * (N // meta["BN"]),)
        scale_ab, inv_out = float(sa * sw), float(1 / so)  # host floats: no sync inside a capture
        run = lambda: gemm_swiglu_fp8[grid](aq, wq, out, M, N, K, scale_ab, inv_out)
        run()
        err = ((out.float() * so - ref).norm() / ref.norm()).item()
        fused = triton.testing.do_bench_cudagraph(run)
        gemm = lambda: torch._scaled_mm(aq, wq.t(), scale_a=sa.reshape(()), scale_b=sw.reshape(()),
                                        out_dtype=torch.bfloat16, use_fast_accum=True)
        cublas = triton.testing.do_bench_cudagraph(gemm)
        flop = 2.0 * M * K * 2 * N
        base = f"{cublas + swiglu_ms:.4f}" if swiglu_ms else "-"
        print(f"{M} x {K} -> 2 x {N} | {cublas:.4f} | {base} | {fused:.4f} | "
              f"{flop / fused / 1e9:.0f} | {err:.4f}  (config {gemm_swiglu_fp8.best_config})")


if __name__ == "__main__":
    main()
