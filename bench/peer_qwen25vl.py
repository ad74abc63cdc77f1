# Usage on the GPU machine: python3 peer_qwen25vl.py  (writes $OUT/peer_qwen25vl.json)
# Copy of shared/bench/peer_qwen25vl.py with three additions for the side-by-side table
# (bench/gpu_side_by_side.sh): PEER_ATTN picks the attention implementations (default "sdpa";
# "sdpa,eager" as the original), preprocessing time is the median of 5 calls (the original timed
# one, first, call), and greedy decode tokens/s after one image ("sdpa/1view/decode").
# Peer baseline: Hugging Face transformers Qwen2.5-VL-3B (random weights, exact architecture)
# prefill / VL-feature latency for 1 view and 5 views of 640x360, bf16, on a GPU.
import time, json, sys, os, math
import torch
import transformers
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig
print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name(0), flush=True)
text = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
            num_key_value_heads=2, rope_theta=1000000.0, max_position_embeddings=128000, vocab_size=151936,
            rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3, out_hidden_size=2048,
              patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
              fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu", tokens_per_second=2)
try:
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=151655, video_token_id=151656,
                           vision_start_token_id=151652, vision_end_token_id=151653)
except Exception as e:
    print("config via text_config failed", e); cfg = Qwen2_5_VLConfig(**text, vision_config=vision)
results = {}
for attn in os.environ.get("PEER_ATTN", "sdpa").split(","):
    try:
        torch.manual_seed(0)
        cfg._attn_implementation = attn
        with torch.device("cuda"):
            model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, torch_dtype=torch.bfloat16, attn_implementation=attn)
        model.eval()
    except Exception as e:
        print("model build failed", attn, repr(e)); continue
    nparams = sum(p.numel() for p in model.parameters())
    print(attn, "params", nparams / 1e9, "B", flush=True)
    from transformers import Qwen2VLImageProcessor
    proc = Qwen2VLImageProcessor()
    import numpy as np
    for nviews in [1, 5]:
        imgs = [np.random.randint(0, 255, (360, 640, 3), dtype=np.uint8) for _ in range(nviews)]
        pre_ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            pi = proc(images=imgs, return_tensors="pt")
            pre_ts.append(time.perf_counter() - t0)
        t_pre = sorted(pre_ts)[2]
        pv = pi["pixel_values"].to("cuda", torch.bfloat16)
        thw = pi["image_grid_thw"].to("cuda")
        ntok = [int(t * h * w // 4) for t, h, w in thw.tolist()]
        ids = [151644, 872, 198]
        for n in ntok:
            ids += [151652] + [151655] * n + [151653]
        ids += [10] * 12 + [151645, 198, 151644, 77091, 198]
        input_ids = torch.tensor([ids], device="cuda")
        mask = torch.ones_like(input_ids)
        def run():
            with torch.inference_mode():
                out = model(input_ids=input_ids, attention_mask=mask, pixel_values=pv, image_grid_thw=thw,
                            output_hidden_states=True, use_cache=False)
            return out.hidden_states[-1]
        def vis():
            with torch.inference_mode():
                v = model.model.visual(pv, grid_thw=thw) if hasattr(model, "model") and hasattr(model.model, "visual") else model.visual(pv, grid_thw=thw)
            return v
        for name, fn in [("full_prefill", run), ("vision_only", vis)]:
            try:
                for _ in range(3): fn()
                torch.cuda.synchronize()
                ts = []
                for _ in range(10):
                    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
                    s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
                ts.sort()
                key = f"{attn}/{nviews}view/{name}"
                results[key] = dict(median_ms=ts[len(ts)//2], min_ms=ts[0], seq=len(ids), vision_tokens=sum(ntok), preprocess_ms=t_pre*1e3)
                print(key, results[key], flush=True)
            except Exception as e:
                print("run failed", attn, nviews, name, repr(e)[:400], flush=True)
        if nviews == 1 and int(os.environ.get("PEER_DECODE", "64")) > 0:
            # greedy decode after one image: time(N+1 new tokens) - time(1 new token) over N
            try:
                N = int(os.environ.get("PEER_DECODE", "64"))
                def gen(n):
                    with torch.inference_mode():
                        return model.generate(input_ids=input_ids, attention_mask=mask, pixel_values=pv,
                                              image_grid_thw=thw, max_new_tokens=n, min_new_tokens=n,
                                              do_sample=False)
                gen(2); gen(N + 1)
                def tmed(n):
                    ts = []
                    for _ in range(3):
                        torch.cuda.synchronize(); t0 = time.perf_counter(); gen(n); torch.cuda.synchronize()
                        ts.append(time.perf_counter() - t0)
                    return sorted(ts)[1]
                t1, tN = tmed(1), tmed(N + 1)
                key = f"{attn}/1view/decode"
                results[key] = dict(tokens=N, decode_ms=(tN - t1) * 1e3, tokens_per_s=N / (tN - t1))
                print(key, results[key], flush=True)
            except Exception as e:
                print("decode failed", repr(e)[:400], flush=True)
    # batched views: 5 separate sequences as batch (seed 003 approach 1)
    try:
        imgs = [np.random.randint(0, 255, (360, 640, 3), dtype=np.uint8) for _ in range(5)]
        pi = proc(images=imgs, return_tensors="pt")
        pv = pi["pixel_values"].to("cuda", torch.bfloat16); thw = pi["image_grid_thw"].to("cuda")
        n = int(thw[0].prod().item() // 4)
        one = [151644, 872, 198, 151652] + [151655] * n + [151653] + [10] * 12 + [151645, 198, 151644, 77091, 198]
        input_ids = torch.tensor([one] * 5, device="cuda"); mask = torch.ones_like(input_ids)
        def runb():
            with torch.inference_mode():
                out = model(input_ids=input_ids, attention_mask=mask, pixel_values=pv, image_grid_thw=thw, output_hidden_states=True, use_cache=False)
            return out.hidden_states[-1]
        for _ in range(3): runb()
        torch.cuda.synchronize(); ts = []
        for _ in range(10):
            s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
            s.record(); runb(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
        ts.sort(); key = f"{attn}/5view_batched/full_prefill"
        results[key] = dict(median_ms=ts[5], min_ms=ts[0]); print(key, results[key], flush=True)
    except Exception as e:
        print("batched failed", repr(e)[:400])
    del model; torch.cuda.empty_cache()
os.makedirs(os.environ.get("OUT", "/tmp/out"), exist_ok=True)
json.dump(results, open(os.path.join(os.environ.get("OUT", "/tmp/out"), "peer_qwen25vl.json"), "w"), indent=1)
print(json.dumps(results))
