"""Causal attention over packed sequences with grouped KV heads (Triton, Hopper): the decoder's
prefill attention, the same contract as kernels/causal_attention.cu (kernels.h causal_attention).

FlashAttention-2 (Dao, 2023, arXiv:2307.08691) in the form of Triton's fused-attention tutorial:
one program per (query tile of BM rows, head), keys in tiles of BN with an online softmax in the
log2 domain, S = q k^T and O += P v with fp32 accumulation, P rounded to bf16 for the second
product. Key tiles before the query tile's diagonal run without masks; the diagonal tiles mask
keys after the query (and past the sequence). On sm_90 Triton lowers the products to WGMMA
(warpgroup MMA), which the hand-written mma.sync kernel does not use: the reason this one exists.

  q    rows r of sequence s at q_ptr + (cu[s] + r) * q_stride + h * D (bf16), heads query heads
  k, v likewise with KV head h // group (group = heads / kv_heads)
  cu   int32 [seqs + 1]: sequence s is rows cu[s] .. cu[s + 1] - 1
  out  [rows, heads * D] at out_ptr + row * out_stride + h * D: bf16, or (OUT_FP8) e4m3 with
       out = saturate(attention / *out_scale, +-448) (the FP8 output projection's input)
  out[r, h] = softmax(q[r, h] k[j, h // group]^T * scale) v[j, h // group] over j <= r in r's sequence
  (transformers' Qwen2 / Qwen2.5-VL decoder attention with is_causal = True).

Grid: (heads, tiles) with tiles = sum over sequences of ceil(len / BM), taken in reverse so the
longest (last) query tiles start first and the short diagonal ones fill the tail. Compiled ahead
of time by triton_aot.py; bench/triton_causal_attention.py sweeps its tiles.
"""
import triton
import triton.language as tl


@triton.jit
def causal_attention(q_ptr, k_ptr, v_ptr, cu_ptr, out_ptr, out_scale_ptr, q_stride, k_stride,
                     v_stride, out_stride, seqs, tiles, group, scale_log2, D: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, OUT_FP8: tl.constexpr):
    h = tl.program_id(0)
    kvh = h // group
    # This program's sequence and query tile (tile numbers run over the sequences in order).
    rem = tiles - 1 - tl.program_id(1)
    zero = rem * 0  # int32 loop-carried values
    start = zero
    length = zero
    qt = zero
    found = zero
    for s in range(0, seqs):
        st = tl.load(cu_ptr + s)
        ln = tl.load(cu_ptr + s + 1) - st
        n = (ln + BM - 1) // BM
        take = (found == 0) & (rem < n)
        start = tl.where(take, st, start)
        length = tl.where(take, ln, length)
        qt = tl.where(take, rem, qt)
        rem = tl.where((found == 0) & (rem >= n), rem - n, rem)
        found = tl.where(take, 1, found)

    offs_m = qt * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    row0 = start.to(tl.int64)
    q = tl.load(q_ptr + (row0 + offs_m[:, None]) * q_stride + h * D + offs_d[None, :],
                mask=offs_m[:, None] < length, other=0.0)
    k_base = k_ptr + row0 * k_stride + kvh * D
    v_base = v_ptr + row0 * v_stride + kvh * D
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, D], dtype=tl.float32)

    # Keys before the diagonal: every query row of the tile sees all of them.
    diag = qt * BM
    for n0 in range(0, diag, BN):
        k = tl.load(k_base + (n0 + offs_n)[None, :].to(tl.int64) * k_stride + offs_d[:, None])
        qk = tl.dot(q, k) * scale_log2
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + (n0 + offs_n)[:, None].to(tl.int64) * v_stride + offs_d[None, :])
        acc = tl.dot(p.to(tl.bfloat16), v, acc * alpha[:, None])
        m_i = m_new
    # The diagonal: keys after the query row, or past the sequence, are masked.
    hi = tl.minimum(diag + BM, length)
    for n0 in range(diag, hi, BN):
        keys = n0 + offs_n
        valid = keys < length
        k = tl.load(k_base + keys[None, :].to(tl.int64) * k_stride + offs_d[:, None],
                    mask=valid[None, :], other=0.0)
        qk = tl.dot(q, k) * scale_log2
        qk = tl.where((offs_m[:, None] >= keys[None, :]) & valid[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + keys[:, None].to(tl.int64) * v_stride + offs_d[None, :],
                    mask=valid[:, None], other=0.0)
        acc = tl.dot(p.to(tl.bfloat16), v, acc * alpha[:, None])
        m_i = m_new

    out = acc / l_i[:, None]
    out_ptrs = out_ptr + (row0 + offs_m[:, None]) * out_stride + h * D + offs_d[None, :]
    if OUT_FP8:
        y = tl.minimum(tl.maximum(out / tl.load(out_scale_ptr), -448.0), 448.0)
        tl.store(out_ptrs, y.to(tl.float8e4nv), mask=offs_m[:, None] < length)
    else:
        tl.store(out_ptrs, out.to(tl.bfloat16), mask=offs_m[:, None] < length)
