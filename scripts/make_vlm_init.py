#!/usr/bin/python3
"""Writes the config-only Qwen2.5-VL folder that grounding pre-training starts from
(assets/policy/vlm_init_grounded) from the plain one (assets/policy/vlm_init): the same tiny
architecture plus PaliGemma / Kosmos-2 style location tokens.

Location tokens: one added token per cell of a 2 mm grid over the port area of the table
(x -70..70 mm, y -50..50 mm in the world frame of docs/simulator.md): `<loc_NNNN>` with
NNNN = iy * 71 + ix, ix = round((x + 70 mm) / 2 mm), iy = round((y + 50 mm) / 2 mm). One token names a
2-D place, so the hidden state that predicts it (the prompt's last token, which the policy uses
as its VL feature) has to carry both coordinates. The grid constants are mirrored in
src/train/train.h (LocationGrid), which checks that the ids are consecutive at load time.

Usage: /usr/bin/python3 scripts/make_vlm_init.py SRC_DIR OUT_DIR
  e.g. scripts/make_vlm_init.py assets/policy/vlm_init assets/policy/vlm_init_grounded
  SRC_DIR: a folder with the base tokenizer.json / config.json / processor_config.json.
Only the standard library is used.
"""
import json
import os
import shutil
import sys

NX, NY = 71, 51


def main(src, out):
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(src):
        if os.path.isfile(os.path.join(src, f)) and f.endswith((".json", ".jinja")):
            shutil.copy(os.path.join(src, f), os.path.join(out, f))
    tok = json.load(open(os.path.join(out, "tokenizer.json")))
    cfg = json.load(open(os.path.join(out, "config.json")))
    tok["added_tokens"] = [a for a in tok["added_tokens"] if not a["content"].startswith("<loc_")]
    base = max(a["id"] for a in tok["added_tokens"]) + 1
    base = max(base, cfg["text_config"]["vocab_size"])
    for k in range(NX * NY):
        tok["added_tokens"].append({"id": base + k, "content": "<loc_%04d>" % k,
                                    "single_word": False, "lstrip": False, "rstrip": False,
                                    "normalized": False, "special": False})
    cfg["text_config"]["vocab_size"] = base + NX * NY
    # The rotary base stays the base's (1e6): with the instruction before the views
    # (`--prompt-order text_first`) each image token has to find the colour word ~100 positions
    # back by content, which needs the slowly turning rotary frequencies. (A base of 10 was
    # tried to let the last token tell image regions apart; it also scrambles that lookup.)
    # A wider, deeper vision tower than the base's (depth 2, width 64): with the dense grounding
    # target it reached a 9.1 mm probe in 1,355 steps from random init where the narrow one had
    # 14.4 mm after 1,600 steps (docs/training.md). Still ~40 ms per 224x224 view on 2 CPU cores.
    cfg["vision_config"].update(depth=4, hidden_size=128, intermediate_size=256, num_heads=4,
                                fullatt_block_indexes=[1, 3])
    proc = json.load(open(os.path.join(out, "processor_config.json")))
    proc["image_processor"]["size"]["longest_edge"] = 224 * 224
    json.dump(tok, open(os.path.join(out, "tokenizer.json"), "w"), ensure_ascii=False)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    json.dump(proc, open(os.path.join(out, "processor_config.json"), "w"), indent=2)
    print("wrote", out, "vocab", cfg["text_config"]["vocab_size"], "location tokens from", base)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
