#!/usr/bin/env bash
# Middle-layer features vs all layers, on task success (docs/gpu.md, "Features from a middle
# layer"): one set of DART demonstrations, then for each K in LAYERS a feature cache of the VLM
# truncated to its first K decoder layers (`--vlm-layers K`, 0 = all), a stage-1 expert trained on
# it with the shipped policy's recipe (docs/training.md), and its closed-loop success on the same
# unseen seeds. The lanes (one per K) run side by side; each lane's evaluation is split into
# EVAL_PROCS processes over consecutive seed blocks and summed at the end.
#
# Usage: bench/middle_layer_closed_loop.sh [WORK_DIR]   (default /tmp/vla_middle_layer)
#   Env: VLA (default ./build/vla), VLM (default assets/policy/default/vlm: the shipped VLM),
#   LAYERS (default "0 1"), DEVICE (cpu | cuda, default cpu), JOBS (simulator threads),
#   DEMOS (2000), S1_STEPS (4000), EVAL_EPISODES (50), EVAL_SEED (1000), EVAL_PROCS (2 per lane:
#   more processes sharing one GPU slow every one of them down, docs/gpu.md).
# Prints one row per K: held-out action loss, successes / episodes, outcomes; writes
# WORK_DIR/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
VLA=${VLA:-./build/vla}
W=${1:-/tmp/vla_middle_layer}
VLM=${VLM:-assets/policy/default/vlm}
LAYERS=${LAYERS:-0 1}
DEVICE=${DEVICE:-cpu}
JOBS=${JOBS:-$(nproc)}
EPISODES=${EVAL_EPISODES:-50}
SEED=${EVAL_SEED:-1000}
PROCS=${EVAL_PROCS:-2}
F="--use-views 0 --pooling tokens --prompt-order text_first"  # the shipped policy's features
mkdir -p "$W"
step() { echo "== $(date -u +%H:%M:%S) $*"; }

step "demonstrations (the shipped recipe: 2,000 DART episodes, seed 0)"
[ -f "$W/demos/index.json" ] ||
  $VLA datagen --episodes "${DEMOS:-2000}" --seed 0 --views 1 --res 224x224 --dart-noise 0.0003 \
    --jobs "$JOBS" --out "$W/demos"

lane() {  # $1 = K
  local k=$1 d="$W/layers_$1"
  mkdir -p "$d"
  step "K=$k: feature cache"
  [ -f "$d/cache/index.json" ] ||
    $VLA cache --dataset "$W/demos" --vlm "$VLM" $F --vlm-layers "$k" --device "$DEVICE" --out "$d/cache"
  step "K=$k: stage 1"
  [ -f "$d/policy/policy.json" ] ||
    $VLA train --stage 1 --dataset "$W/demos" --cache "$d/cache" --vlm "$VLM" $F --vlm-layers "$k" \
      --head mlp --d-model 64 --vl-memory first --vlm-reuse-count 15 --random-staleness \
      --all-episodes --steps "${S1_STEPS:-4000}" --batch 256 --warmup 100 --lr-sensor 1e-3 \
      --lr-action 1e-3 --device "$DEVICE" --out "$d/policy" --json "$d/train.json"
  step "K=$k: closed loop, $EPISODES episodes from seed $SEED in $PROCS processes"
  # The cores shared out: every evaluation process (lanes x PROCS of them) gets its share for
  # torch (VLA_THREADS) and for the renderer (llvmpipe: LP_NUM_THREADS). Left at their defaults
  # (all cores each), 10 processes on a 16-core machine ran ~10x slower per episode than one
  # alone (oversubscription, most likely).
  local lanes share per=$(((EPISODES + PROCS - 1) / PROCS)) p
  lanes=$(echo $LAYERS | wc -w)
  share=$((JOBS / (lanes * PROCS) > 0 ? JOBS / (lanes * PROCS) : 1))
  for p in $(seq 0 $((PROCS - 1))); do
    local n=$((EPISODES - p * per < per ? EPISODES - p * per : per))
    [ "$n" -gt 0 ] || continue
    VLA_THREADS=$share LP_NUM_THREADS=$share $VLA eval closed-loop --policy "$d/policy" --mode sync --episodes "$n" --seed $((SEED + p * per)) \
      --device "$DEVICE" --json "$d/closed_loop_$p.json" > "$d/closed_loop_$p.log" 2>&1 &
  done
  wait
  step "K=$k: done"
}

for k in $LAYERS; do lane "$k" & done
wait

# One row per K (python3: the summing of the blocks' JSON).
python3 - "$W" $LAYERS <<'PY'
import glob, json, sys
w, rows = sys.argv[1], []
for k in sys.argv[2:]:
    d = f"{w}/layers_{k}"
    tr = json.load(open(f"{d}/policy/train_report.json"))
    blocks = [json.load(open(f)) for f in sorted(glob.glob(f"{d}/closed_loop_*.json"))]
    out = {}
    for b in blocks:
        for name, n in b["outcomes"].items():
            out[name] = out.get(name, 0) + n
    rows.append({"vlm_layers": int(k), "train": tr,
                 "episodes": sum(b["episodes"] for b in blocks),
                 "successes": sum(b["successes"] for b in blocks), "outcomes": out})
    held = tr.get("holdout_loss")
    print(f"K={k:>2} (0 = all)  held-out loss {held}  success {rows[-1]['successes']}/"
          f"{rows[-1]['episodes']}  outcomes {out}")
json.dump(rows, open(f"{w}/summary.json", "w"), indent=1)
PY
