#!/usr/bin/env python3
"""Compiles the engine's Triton kernels ahead of time into one C++ source of embedded cubins.

Run by CMake (src/gpu/CMakeLists.txt) when the build has CUDA and `import triton` works; the
output is linked into vla_gpu_kernels and launched through the CUDA driver API by
triton_kernels.cpp, so nothing at run time needs Python or Triton. Without Triton the engine
keeps its cuBLAS + CUDA-kernel path (kernels.h: gemm_swiglu_variants() and
causal_attention_triton_variants() return 0).

Each variant is one kernel specialised to one tile configuration (its constexprs); the engine
times the variants on its plan's shapes and keeps the fastest (engine.cpp). The generated file
records, per variant: the cubin, the kernel's symbol, its shared memory, warps, number of
parameters and global scratch per program (Triton appends scratch-pointer parameters of its own
after the kernel's: the launcher passes the caller's global scratch buffer first, then null; a
kernel that needs profiler scratch is refused here).

Usage: triton_aot.py --out FILE.cpp [--arch 90]
       triton_aot.py --check   (exit 0 when this Triton can compile the kernels; CMake asks first)
"""
import argparse
import importlib.util
import re
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

HERE = Path(__file__).resolve().parent
# The Triton the kernels were written and tested with (gemm_swiglu builds TMA descriptors on the
# device and reshapes a descriptor load: APIs of the 3.x series that changed between releases).
MIN_TRITON = (3, 6)

# (kernel file, kernel name, runtime parameter types in order, {constexpr: value}, warps, stages,
# and the table's facts: tile rows / columns / depth and the kernel's flag). Tile configurations:
# the ones measured fastest on an H200 for the 3B model's 1- and 5-view shapes (docs/benchmarks.md,
# "Triton kernels"); the engine picks among them per shape.
# gemm_swiglu: a, w, bias, out, a_scale, w_scale, out_scale, M, N, K; one table name per operand
# type. Tiles (BM, BN = half the product's columns, BK, G, warps, stages): the fastest on an H200
# at the 3B model's 5-view shapes (BM 128) and 1-view vision tower (BM 64), docs/benchmarks.md
# "thirteenth run".
def swiglu_sig(fp8):
    t = "*fp8e4nv:16" if fp8 else "*bf16:16"
    return [t, t, "*bf16:16", t, "*fp32:16", "*fp32:16", "*fp32:16", "i32", "i32:16", "i32:16"]


SWIGLU_TILES = {
    1: [(128, 128, 128, 8, 8, 3), (128, 128, 64, 8, 8, 4), (64, 128, 128, 8, 8, 4)],
    0: [(128, 128, 64, 8, 8, 3), (128, 128, 64, 8, 8, 4), (64, 128, 64, 8, 8, 4)],
}
VARIANTS = []
for fp8 in (1, 0):
    for has_bias in (0, 1):
        for bm, bn, bk, g, warps, stages in SWIGLU_TILES[fp8]:
            VARIANTS.append(dict(file="gemm_swiglu.py", kernel="gemm_swiglu",
                                 table="gemm_swiglu_fp8" if fp8 else "gemm_swiglu_bf16",
                                 sig=swiglu_sig(fp8),
                                 const=dict(FP8=fp8, HAS_BIAS=has_bias, BM=bm, BN=bn, BK=bk, G=g),
                                 warps=warps, stages=stages, bm=bm, bn=bn, bk=bk, flag=has_bias))


# causal_attention: q, k, v, cu, out, out_scale, q / k / v / out strides (elements), seqs, tiles,
# group, scale_log2. Head dim 128 (every Qwen2 / Qwen2.5-VL decoder); BN must divide BM.
def attention_sig(out_fp8):
    return ["*bf16:16", "*bf16:16", "*bf16:16", "*i32:16", "*fp8e4nv:16" if out_fp8 else "*bf16:16",
            "*fp32", "i32:16", "i32:16", "i32:16", "i32:16", "i32", "i32", "i32", "fp32"]


ATTENTION_TILES = [  # BM, BN, warps, stages
    (64, 64, 4, 2),  # both view counts
    (64, 32, 4, 3),  # 1 view
    (128, 64, 8, 3),  # 5 views
]
for out_fp8 in (0, 1):
    for bm, bn, warps, stages in ATTENTION_TILES:
        assert bm % bn == 0, "causal_attention: BN must divide BM"
        VARIANTS.append(dict(file="causal_attention.py", kernel="causal_attention",
                             sig=attention_sig(out_fp8),
                             const=dict(D=128, BM=bm, BN=bn, OUT_FP8=out_fp8), warps=warps,
                             stages=stages, bm=bm, bn=bn, bk=128, flag=out_fp8))


def load_kernel(file, name):
    spec = importlib.util.spec_from_file_location(Path(file).stem, HERE / file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def compile_variant(v, target):
    fn = load_kernel(v["file"], v["kernel"])
    names = fn.arg_names
    runtime = [n for n in names if n not in v["const"]]
    if len(runtime) != len(v["sig"]):
        raise SystemExit(f"{v['kernel']}: {len(runtime)} runtime parameters, {len(v['sig'])} types")
    signature, attrs = {}, {}
    for n in names:
        if n in v["const"]:
            signature[n] = "constexpr"
    for n, t in zip(runtime, v["sig"]):
        ty, _, hint = t.partition(":")
        signature[n] = ty
        if hint == "16":
            attrs[(names.index(n),)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=dict(v["const"]),
                                    attrs=attrs)
    backend = triton.compiler.make_backend(target)
    options = backend.parse_options({"num_warps": v["warps"], "num_stages": v["stages"]})
    k = triton.compile(src, target=target, options=options.__dict__)
    md = k.metadata
    scratch = getattr(md, "global_scratch_size", 0)
    if scratch > 0 and getattr(md, "global_scratch_align", 1) > 256:
        raise SystemExit(f"{v['kernel']}: global scratch aligned to {md.global_scratch_align} B")
    if getattr(md, "profile_scratch_size", 0) > 0:
        raise SystemExit(f"{v['kernel']}: needs profiler scratch memory")
    ptx = k.asm["ptx"]
    entry = re.search(r"\.entry\s+" + re.escape(md.name) + r"\s*\((.*?)\)", ptx, re.S)
    if not entry:
        raise SystemExit(f"{v['kernel']}: entry {md.name} not found in the PTX")
    nparams = entry.group(1).count(".param")
    if nparams < len(runtime):
        raise SystemExit(f"{v['kernel']}: PTX has {nparams} parameters, fewer than {len(runtime)}")
    return dict(cubin=k.asm["cubin"], symbol=md.name, shared=md.shared, warps=v["warps"],
                nparams=nparams, nargs=len(runtime), scratch=scratch)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--check", action="store_true",
                    help="only say whether this Triton can compile the kernels (exit 0 / 1)")
    args = ap.parse_args()
    version = tuple(int(x) for x in re.findall(r"\d+", triton.__version__)[:2])
    if version < MIN_TRITON:
        print(f"Triton {triton.__version__} is older than "
              f"{'.'.join(map(str, MIN_TRITON))}, which the kernels need")
        sys.exit(1)
    if args.check:
        print(f"Triton {triton.__version__}")
        return
    if args.out is None:
        ap.error("--out is required")
    target = GPUTarget("cuda", args.arch, 32)
    lines = [
        f"// Generated by src/gpu/kernels/triton_aot.py (Triton {triton.__version__}, sm_{args.arch}).",
        "// Do not edit: rebuilt from the kernels' .py sources.",
        '#include "gpu/kernels/triton_variants.h"',
        "",
        "namespace vla::gpu::kernels::triton_aot {",
        "namespace {",
    ]
    table = []
    for i, v in enumerate(VARIANTS):
        c = compile_variant(v, target)
        data = ", ".join(str(b) for b in c["cubin"])
        lines.append(f"const unsigned char kCubin{i}[] = {{{data}}};")
        const = v["const"]
        depth = "D" if v["kernel"] == "causal_attention" else "BK"
        table.append(
            f'  {{"{v.get("table", v["kernel"])}", kCubin{i}, sizeof(kCubin{i}), "{c["symbol"]}", '
            f'{c["shared"]}, {c["warps"]}, {c["nparams"]}, {c["nargs"]}, {c["scratch"]}, '
            f'{v["bm"]}, {v["bn"]}, {v["bk"]}, {v["flag"]}, "BM{v["bm"]} BN{v["bn"]} '
            f'{depth}{v["bk"]} w{v["warps"]} s{v["stages"]}"}},')
        print(f"triton_aot: {v.get('table', v['kernel'])} {const} warps {v['warps']} stages "
              f"{v['stages']}: {len(c['cubin'])} B cubin, {c['shared']} B shared, "
              f"{c['nparams']} params, {c['scratch']} B scratch per program", file=sys.stderr)
    lines += ["}  // namespace", "", "const Variant kVariants[] = {"] + table + [
        "};", f"const int kVariantCount = {len(VARIANTS)};", f"const int kArch = {args.arch};",
        "", "}  // namespace vla::gpu::kernels::triton_aot", ""]
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
