#!/usr/bin/env bash
# GPU side by side: builds the fast path against the machine's PyTorch libtorch (CUDA), checks the
# GPU output against the CPU/fp32 references on the tiny fixtures (test_gpu), times our engine on
# the full Qwen2.5-VL-3B architecture (random bf16 weights, or --model DIR) at 1 and 5 views of
# 640x360, times Hugging Face transformers on the same config in the same run
# (bench/peer_qwen25vl.py), and prints the table (ours bf16, ours with FP8 e4m3 GEMMs
# (EngineOptions::fp8), transformers, ratios, FLOP floor) plus the FP8 error against bf16.
#
# Usage (repo root, on the GPU machine): bench/gpu_side_by_side.sh [--model DIR] [--skip-peer]
#   Header-only deps missing there (nlohmann-json, CLI11, stb, GoogleTest, Google Benchmark) are
#   taken from Debian .debs in .deps/debs (fetch them elsewhere: see docs/gpu.md).
#   Env: OUT (results folder, default ./out-gpu), BUILD (default build-gpu-dev), JOBS,
#   PEER_JSON (with --skip-peer: an earlier peer_qwen25vl.json to compare against).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out-gpu}
BUILD=${BUILD:-build-gpu-dev}
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

# 1. dependencies: unpack the carried .debs into .deps/root (idempotent)
DEPS=$PWD/.deps/root
if [ -d .deps/debs ] && [ ! -f "$DEPS/.done" ]; then
  mkdir -p "$DEPS"
  for f in .deps/debs/*.deb; do dpkg -x "$f" "$DEPS"; done
  touch "$DEPS/.done"
fi
TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')

# 2. configure + build (kept between calls while the machine is warm). Only the folders the fast
#    path needs are staged, so work in progress elsewhere in the tree cannot break this build.
ROOT=$PWD
SRC=${SRC:-/tmp/vla-gpu-src}
rm -rf "$SRC" && mkdir -p "$SRC/src" "$SRC/tests" "$SRC/bench"
cp -r CMakeLists.txt cmake apps "$SRC/"
cp src/CMakeLists.txt "$SRC/src/" && cp -r src/core src/weights src/gpu "$SRC/src/"
cp tests/CMakeLists.txt "$SRC/tests/" && cp -r tests/gpu "$SRC/tests/"
cp bench/CMakeLists.txt bench/gpu.cmake bench/gpu_bench.cpp "$SRC/bench/"
set -e
cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVLA_WITH_SIM=OFF -DVLA_BUILD_TESTS=ON \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$DEPS/usr;$DEPS/usr/lib/x86_64-linux-gnu/cmake" \
  -DVLA_DEPS_ROOT="$DEPS" -Dnlohmann_json_DIR="$DEPS/usr/share/cmake/nlohmann_json" \
  -DGTest_DIR="$DEPS/usr/lib/x86_64-linux-gnu/cmake/GTest" \
  -Dbenchmark_DIR="$DEPS/usr/lib/x86_64-linux-gnu/cmake/benchmark" \
  -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" \
  -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; exit 1; }
cmake --build "$BUILD" --target test_gpu bench_gpu -j"$JOBS" > "$OUT/build.log" 2>&1 ||
  { grep -E "error|Error" -A3 "$OUT/build.log" | head -60; exit 1; }
set +e

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
