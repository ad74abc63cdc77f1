#!/usr/bin/env bash
# GPU side by side: builds the fast path against the machine's PyTorch libtorch (CUDA), checks the
# GPU output against the CPU/fp32 references on the tiny fixtures (test_gpu), times our engine on
# the full Qwen2.5-VL-3B architecture (random bf16 weights, or --model DIR) at 1 and 5 views of
# 640x360, times Hugging Face transformers on the same config in the same run
# (bench/peer_qwen25vl.py), and prints the table (ours bf16, ours with FP8 e4m3 GEMMs
# (EngineOptions::fp8), transformers, ratios, FLOP floor) plus the FP8 error against bf16.
#
# Usage (repo root, on the GPU machine): bench/gpu_side_by_side.sh [--model DIR] [--skip-peer]
#   Builds the whole tree with scripts/gpu_build.sh (Debian .debs carried in .deps/debs and
#   .deps/debs_extra: see docs/development/README.md). Env: OUT (results folder, default ./out-gpu), BUILD, JOBS,
#   PEER_JSON (with --skip-peer: an earlier peer_qwen25vl.json to compare against).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out-gpu}
BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-$(nproc)}
MODEL=""
PEER=1
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --skip-peer) PEER=0; shift ;;
    *) echo "unknown argument $1"; exit 2 ;;
  esac
done
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

# 1-2. the whole tree (simulator included), as every GPU run builds it
BUILD="$BUILD" JOBS="$JOBS" scripts/gpu_build.sh > "$OUT/build.log" 2>&1 ||
  { tail -60 "$OUT/build.log"; exit 1; }
export LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ROOT=$PWD

# 3. parity on the fixtures (GPU vs fp32 references)
VLA_SOURCE_DIR="$ROOT" "$BUILD"/tests/gpu/test_gpu --gtest_brief=1 > "$OUT/test_gpu.log" 2>&1
echo "test_gpu exit $?"; grep -E "FAILED|PASSED|SKIPPED|rel|Failure|expected" "$OUT/test_gpu.log" | head -70

# 4. transformers peer on the same machine
if [ "$PEER" = 1 ]; then
  PYTHONUNBUFFERED=1 OUT="$OUT" python3 bench/peer_qwen25vl.py > "$OUT/peer.log" 2>&1
  echo "peer exit $?"; tail -12 "$OUT/peer.log"
fi

# 5. ours, and the table
PEER_FILE="$OUT/peer_qwen25vl.json"
# --skip-peer with PEER_JSON=FILE reuses an earlier transformers run of the same machine kind
[ "$PEER" = 0 ] && [ -n "${PEER_JSON:-}" ] && PEER_FILE="$PEER_JSON"
ARGS=(--json "$OUT/bench_gpu.json" --peer "$PEER_FILE")
[ -n "$MODEL" ] && ARGS+=(--model "$MODEL")
"$BUILD"/bench_gpu "${ARGS[@]}" 2>&1 | tee "$OUT/bench_gpu.log"
