#!/usr/bin/env bash
# Reproduces the shipped policies (assets/policy/default, assets/policy/no_reuse) with the
# project's own commands on CPU. Usage: bench/policy_train_default.sh [WORK_DIR]
# (default /tmp/vla_policy). Needs a built `vla` (scripts/build.sh). See docs/training.md for the
# recipe, timings and results. Env overrides: EPISODES, CAPTION_STEPS, S1_STEPS, S2_STEPS, REUSE.
set -euo pipefail
cd "$(dirname "$0")/.."
VLA=${VLA:-./build/vla}
W=${1:-/tmp/vla_policy}
EPISODES=${EPISODES:-400}
REUSE=${REUSE:-5}
VIEWS=0,4  # top + needle camera
mkdir -p "$W"
step() { echo "== $(date -u +%H:%M:%S) $*"; }

step "1. demonstrations (scripted demonstrator, 5 views 112x112): 400 episodes (seeds 0..399) for the
 caption / cache / stage-1 steps, the same + 1600 more (seeds 10000.., 20000..) for stage 2"
[ -f "$W/data/index.json" ] ||
  $VLA datagen --episodes "$EPISODES" --seed 0 --views 5 --res 112x112 --out "$W/data"
if [ ! -f "$W/data2000/index.json" ]; then
  cp -r "$W/data" "$W/data2000"
  $VLA datagen --episodes 800 --seed 10000 --views 5 --res 112x112 --out "$W/data2000"
  $VLA datagen --episodes 800 --seed 20000 --views 5 --res 112x112 --out "$W/data2000"
fi

step "2. caption pre-training of the small Qwen2.5-VL (random init from assets/policy/vlm_init)"
$VLA train --stage caption --dataset "$W/data" --vlm assets/policy/vlm_init --use-views $VIEWS \
  --steps "${CAPTION_STEPS:-300}" --batch 16 --warmup 30 --lr-vl 2e-3 --holdout 0.05 \
  --checkpoint-every 100 --out "$W/vlm_caption" --json "$W/caption_train.json"

step "3. VL feature cache of the caption-trained VLM (frozen)"
$VLA cache --dataset "$W/data" --vlm "$W/vlm_caption" --use-views $VIEWS --pooling tokens \
  --out "$W/cache"

step "4. stage 1: expert on cached features (VLM frozen), reuse $REUSE"
$VLA train --stage 1 --dataset "$W/data" --cache "$W/cache" --vlm "$W/vlm_caption" \
  --use-views $VIEWS --pooling tokens --vlm-reuse-count 30 --random-staleness --head mlp \
  --steps "${S1_STEPS:-1500}" --batch 64 --warmup 100 --lr-sensor 1e-3 --lr-action 1e-3 \
  --out "$W/stage1" --json "$W/stage1.json"

step "5. stage 2: full fine-tune of the VLM + expert, reuse $REUSE -> default"
$VLA train --stage 2 --init "$W/stage1" --dataset "$W/data2000" --finetune full \
  --vlm-reuse-count "$REUSE" --random-staleness --steps "${S2_STEPS:-1600}" --batch 32 --warmup 50 \
  --lr-sensor 5e-4 --lr-action 5e-4 --lr-vl 1e-3 --holdout 0.05 --out "$W/default" --json "$W/stage2.json"

step "6. no_reuse: the stage-2 VLM frozen, expert trained on fresh features only"
$VLA cache --dataset "$W/data" --vlm "$W/default/vlm" --use-views $VIEWS --pooling tokens \
  --out "$W/cache2"
$VLA train --stage 1 --dataset "$W/data" --cache "$W/cache2" --vlm "$W/default/vlm" \
  --use-views $VIEWS --pooling tokens --vlm-reuse-count 1 --head mlp \
  --steps "${S1_STEPS:-1500}" --batch 64 --warmup 100 --lr-sensor 1e-3 --lr-action 1e-3 \
  --out "$W/no_reuse" --json "$W/no_reuse.json"

step "7. closed loop (synchronous), language ablation, staleness"
$VLA eval closed-loop --policy "$W/default" --mode sync --episodes 50 --seed 1000 \
  --json "$W/closed_loop.json"
$VLA eval language --policy "$W/default" --episodes 50 --seed 2000 --json "$W/language.json"
$VLA eval staleness --policies "$W/default,$W/no_reuse" --episodes 50 --seed 1000 \
  --json "$W/staleness.json" --png "$W/staleness.png"
step "done: copy $W/default and $W/no_reuse (without checkpoint/) to assets/policy/"
