#!/usr/bin/env python3
"""safetensors interoperability fixtures, run on the GPU machine (has `safetensors`, torch).

    python3 tests/weights/make_safetensors_fixture.py OUT_DIR
1. Writes OUT_DIR/hf_written.safetensors with HF's `safetensors.torch.save_file` (dtypes F32, F16,
   BF16, I64, I32, U8, BOOL, F64 + metadata) and OUT_DIR/hf_written.json with every tensor's
   values as float lists: the C++ reader must read the same values.
2. Loads tests/weights/fixtures/vla_written.safetensors (written by the C++ writer, see
   safetensors_test.cpp) with HF's `safe_open` and records names, dtypes, shapes, values and
   metadata into OUT_DIR/vla_written.hf_check.json: proves HF reads our writer's output.
"""
import json
import os
import sys
import traceback

import torch
from safetensors import safe_open
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "out")
os.makedirs(OUT, exist_ok=True)
HERE = os.path.dirname(os.path.abspath(__file__))

g = torch.Generator().manual_seed(0)
t = {
    "model.embed_tokens.weight": torch.randn(6, 4, generator=g),
    "half": torch.randn(5, generator=g).half(),
    "visual.blocks.0.attn.qkv.weight": torch.randn(3, 2, 2, generator=g).bfloat16(),
    "ids": torch.arange(-3, 4, dtype=torch.int64),
    "i32": torch.tensor([7, -8, 9], dtype=torch.int32),
    "u8": torch.tensor([0, 1, 255], dtype=torch.uint8),
    "mask": torch.tensor([True, False, True]),
    "f64": torch.tensor([1.0 / 3.0, -2.5], dtype=torch.float64),
}
save_file(t, os.path.join(OUT, "hf_written.safetensors"), metadata={"format": "pt", "k": "v"})
ref = {n: {"dtype": str(v.dtype), "shape": list(v.shape),
           "values": v.double().flatten().tolist()} for n, v in t.items()}
json.dump(ref, open(os.path.join(OUT, "hf_written.json"), "w"), indent=1)
print("wrote hf_written", flush=True)

check = {"ok": False}
try:
    p = os.path.join(HERE, "fixtures", "vla_written.safetensors")
    with safe_open(p, framework="pt") as f:
        check["metadata"] = f.metadata()
        check["tensors"] = {}
        for k in f.keys():
            v = f.get_tensor(k)
            check["tensors"][k] = {"dtype": str(v.dtype), "shape": list(v.shape),
                                   "values": v.double().flatten().tolist()}
    check["ok"] = True
except Exception:
    check["error"] = traceback.format_exc()
json.dump(check, open(os.path.join(OUT, "vla_written.hf_check.json"), "w"), indent=1)
print("vla_written check", check["ok"], check.get("error", ""), flush=True)
