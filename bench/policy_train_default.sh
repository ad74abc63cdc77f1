#!/usr/bin/env bash
# Reproduces the shipped policies (assets/policy/default, assets/policy/no_reuse) on CPU with the
# project's own commands. Usage: bench/policy_train_default.sh [WORK_DIR] (default /tmp/vla_policy)
# Needs a built `vla` (scripts/build.sh) with the simulator. See docs/training.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VLA=${VLA:-./build/vla}
W=${1:-/tmp/vla_policy}
EPISODES=${EPISODES:-400}
mkdir -p "$W"
step() { echo "== $(date -u +%H:%M:%S) $*"; }

step "1. demonstrations (scripted expert, 5 views 112x112, seeds 0..$((EPISODES-1)))"
[ -f "$W/data/index.json" ] || $VLA datagen --episodes "$EPISODES" --seed 0 --views 5 --res 112x112 --out "$W/data"

step "2. caption pre-training of the small Qwen2.5-VL (random init from assets/policy/vlm_init)"
$VLA train --stage caption --dataset "$W/data" --vlm assets/policy/vlm_init --use-views 0,4 \
  --steps ${CAPTION_STEPS:-300} --batch 16 --warmup 30 --lr-vl 2e-3 --holdout 0.05 --out "$W/vlm_caption" \
  --json "$W/caption_train.json"
$VLA eval caption --vlm "$W/vlm_caption" --dataset "$W/data" --use-views 0,4 --holdout 0.05 \
  --episodes 10 --json "$W/caption_eval.json"

step "3. VL feature cache (VLM frozen)"
$VLA cache --dataset "$W/data" --vlm "$W/vlm_caption" --use-views 0,4 --pooling last --out "$W/cache"

for R in 1 ${REUSE:-5}; do
  step "4. stage 1 (cached features, reuse $R)"
  $VLA train --stage 1 --dataset "$W/data" --cache "$W/cache" --vlm "$W/vlm_caption" \
    --use-views 0,4 --pooling last --vlm-reuse-count "$R" --head flow --steps ${S1_STEPS:-3000} --batch 64 \
    --warmup 100 --lr-sensor 5e-4 --lr-action 5e-4 --out "$W/stage1_r$R" --json "$W/stage1_r$R.json"
  step "5. stage 2 (full fine-tune of the VLM + expert, reuse $R)"
  $VLA train --stage 2 --init "$W/stage1_r$R" --dataset "$W/data" --finetune full \
    --vlm-reuse-count "$R" --steps ${S2_STEPS:-800} --batch 32 --warmup 50 \
    --lr-sensor 2e-4 --lr-action 2e-4 --lr-vl 5e-4 --out "$W/stage2_r$R" --json "$W/stage2_r$R.json"
done

step "6. closed loop (synchronous) + language ablation"
$VLA eval closed-loop --policy "$W/stage2_r${REUSE:-5}" --mode sync --episodes 50 --seed 1000 --json "$W/closed_loop.json"
$VLA eval language --policy "$W/stage2_r${REUSE:-5}" --episodes 50 --seed 2000 --json "$W/language.json"
step "done: copy $W/stage2_r${REUSE:-5} to assets/policy/default and $W/stage2_r1 to assets/policy/no_reuse"
