#!/usr/bin/env bash
# The grounded recipe (docs/training.md): layouts -> grounding pre-training (localisation head on
# the `tokens` features of a text-first prompt, optionally plus location tokens) -> localisation
# probe -> DART demonstrations -> cache -> stage 1 with feature reuse -> closed loop -> DAgger
# rounds -> no_reuse -> language / staleness evaluation, with the project's own commands.
# The shipped policies (30 Nov 2026, second release) come from this recipe, all on the H200 x2
# machine: grounding continued from the first inserting policy's VLM (two more runs, probe
# 3.21 mm), then steps 3-4 with DEVICE=cuda DEMOS=2000 S1_STEPS=4000 and no DAgger round; exact
# commands and numbers in docs/training.md. bench/policy_train_default.sh made the earlier ones (0 % in closed loop).
# Usage: bench/policy_train_grounded.sh [WORK_DIR]  (default /tmp/vla_grounded). Needs a built `vla` (VLA=path; scripts/build.sh or scripts/gpu_build.sh).
# DEVICE=cuda trains on a GPU (the recipe of the shipped policies, see docs/training.md);
# JOBS = simulator worker threads. Sizes: LAYOUTS, G_STEPS, G_BATCH, DEMOS, S1_STEPS,
# DAGGER_ROUNDS, DAGGER_EPISODES, EVAL_EPISODES, PROBE_LAYOUTS; STOP_AFTER=4 stops after the
# first closed-loop evaluation, STOP_AFTER=2 after grounding. VLM_INIT (the VLM folder grounding
# starts from: a config-only folder for random init, or an earlier grounded VLM to continue),
# G_LR, G_WARMUP; VLM=DIR skips grounding and uses that VLM; LAYOUT_DIR reuses layouts made elsewhere; PROBE_BEFORE=0 skips the first probe.
set -euo pipefail
cd "$(dirname "$0")/.."
VLA=${VLA:-./build/vla}
W=${1:-/tmp/vla_grounded}
DEVICE=${DEVICE:-cpu}
JOBS=${JOBS:-$(nproc)}
RES=224x224  # 8x8 merged tokens of 28 px (~34 mm) on the top view, ~1.2 mm per pixel
# The top camera (fixed): port positions read from it stay valid however stale. Instruction
# before the view, so every image token knows which port is named; `tokens` pooling gives the
# expert (and the probe) fixed slots, i.e. where.
F="--use-views 0 --pooling tokens --prompt-order text_first"
VLM_INIT=${VLM_INIT:-assets/policy/vlm_init_grounded}
LAYOUT_DIR=${LAYOUT_DIR:-$W/layouts}
mkdir -p "$W"
step() { echo "== $(date -u +%H:%M:%S) $*"; }

if [ -z "${VLM:-}" ]; then  # VLM=DIR: an already grounded VLM, steps 1-2 skipped
  step "1. grounding layouts: one top view per randomised scene (no rollout)"
  [ -f "$LAYOUT_DIR/index.json" ] ||
    $VLA datagen --episodes "${LAYOUTS:-20000}" --seed 100000 --views 1 --res $RES --layout-ticks 1 \
      --jobs "$JOBS" --out "$LAYOUT_DIR"

  # The probe's layouts are never seen by grounding (another seed range): its held-out error is
  # held out from both the VLM and the ridge fit.
  PROBE_DIR=${PROBE_DIR:-$W/probe_layouts}
  [ -f "$PROBE_DIR/index.json" ] ||
    $VLA datagen --episodes "${PROBE_LAYOUTS:-3000}" --seed 900000 --views 1 --res $RES --layout-ticks 1 \
      --jobs "$JOBS" --out "$PROBE_DIR"

  step "2. grounding pre-training of the small Qwen2.5-VL: localisation head (+ location tokens)"
  [ "${PROBE_BEFORE:-1}" = 0 ] ||
    $VLA eval probe --dataset "$PROBE_DIR" --vlm "$VLM_INIT" $F --device "$DEVICE" --json "$W/probe_before.json"
  # TRAIN_TIMEOUT=S stops grounding after S seconds (SIGTERM: it checkpoints and saves the VLM so
  # far, and the probe still runs).
  ${TRAIN_TIMEOUT:+timeout --preserve-status -s TERM $TRAIN_TIMEOUT} $VLA train --stage grounding --dataset "$LAYOUT_DIR" --vlm "$VLM_INIT" $F \
    --locate-weight 1 --dense-weight "${DENSE_WEIGHT:-1}" --caption-weight "${CAPTION_WEIGHT:-0}" \
    --steps "${G_STEPS:-1600}" --batch "${G_BATCH:-128}" --warmup "${G_WARMUP:-50}" --lr-vl "${G_LR:-2e-3}" --holdout 0.05 \
    --device "$DEVICE" --eval-every 200 --checkpoint-every 400 --out "$W/vlm" --json "$W/grounding.json"
  $VLA eval probe --dataset "$PROBE_DIR" --vlm "$W/vlm" $F --device "$DEVICE" --json "$W/probe_after.json"
fi
VLM=${VLM:-$W/vlm}

[ "${STOP_AFTER:-}" = 2 ] && exit 0

step "3. demonstrations: scripted demonstrator with DART noise on the executed actions (labels clean)"
[ -f "$W/demos/index.json" ] ||
  $VLA datagen --episodes "${DEMOS:-2000}" --seed 0 --views 1 --res $RES --dart-noise 0.0003 \
    --jobs "$JOBS" --out "$W/demos"

train_expert() {  # $1 = reuse count, $2 = out
  $VLA cache --dataset "$W/demos" --vlm "$VLM" $F \
    --device "$DEVICE" --out "$W/cache"
  $VLA train --stage 1 --dataset "$W/demos" --cache "$W/cache" --vlm "$VLM" $F --head mlp --d-model 64 --vl-memory first --vlm-reuse-count "$1" --random-staleness --all-episodes \
    --steps "${S1_STEPS:-4000}" --batch 256 --warmup 100 --lr-sensor 1e-3 --lr-action 1e-3 \
    --device "$DEVICE" --out "$2" --json "$2.json"
}
step "4. stage 1 (VLM frozen): expert on cached features (scene memory: the episode's first features too), feature reuse 15 with random staleness"
train_expert 15 "$W/default"
$VLA eval closed-loop --policy "$W/default" --mode sync --episodes "${EVAL_EPISODES:-50}" --seed 1000 \
  --device "${EVAL_DEVICE:-cpu}" --json "$W/closed_loop_round0.json"

[ "${STOP_AFTER:-}" = 4 ] && exit 0
for round in $(seq 1 "${DAGGER_ROUNDS:-1}"); do
  step "5. DAgger round $round: roll out the policy, the scripted demonstrator labels, aggregate, retrain"
  $VLA datagen --policy "$W/default" --episodes "${DAGGER_EPISODES:-600}" \
    --seed $((300000 + 10000 * round)) --views 1 --res $RES --jobs "$JOBS" --out "$W/demos"
  train_expert 15 "$W/default"
  $VLA eval closed-loop --policy "$W/default" --mode sync --episodes "${EVAL_EPISODES:-50}" --seed 1000 \
    --device "${EVAL_DEVICE:-cpu}" --json "$W/closed_loop_round$round.json"
done

step "6. no_reuse: the same VLM, expert trained on fresh features only"
train_expert 1 "$W/no_reuse"

step "7. closed loop, language, staleness"
$VLA eval language --policy "$W/default" --episodes "${EVAL_EPISODES:-50}" --seed 2000 --json "$W/language.json"
$VLA eval staleness --policies "$W/default,$W/no_reuse" --episodes "${EVAL_EPISODES:-50}" --seed 1000 \
  --json "$W/staleness.json" --png "$W/staleness.png"
step "done: policies in $W/default and $W/no_reuse"
