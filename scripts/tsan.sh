#!/usr/bin/env bash
# ThreadSanitizer run of the runtime's tests (the threads: VLM worker, 650 Hz physics, action loop,
# feature slot, sensor ring) in build-tsan. LibTorch, OpenMP and OpenBLAS are not instrumented:
# races reported inside them (torch's own thread pools) are suppressed by library in
# scripts/tsan.supp; every report that involves the project's code fails the run.
# docs/reliability.md has the last result.
#
# Usage: scripts/tsan.sh [GTEST_FILTER]      Env: BUILD (default build-tsan), JOBS (default nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-tsan}
JOBS=${JOBS:-$(nproc)}
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVLA_TSAN=ON -DVLA_BUILD_BENCH=OFF \
    -DVLA_WITH_SIM=OFF > "$BUILD.configure.log" 2>&1 || { tail -30 "$BUILD.configure.log"; exit 1; }
fi
cmake --build "$BUILD" -j"$JOBS" --target test_runtime 2>&1 | grep -E "error|warning:" -A3 || true
bin=$(find "$BUILD/tests" -name test_runtime -type f | head -1)
[ -x "$bin" ] || { echo "tsan.sh: test_runtime was not built"; exit 1; }
export TSAN_OPTIONS="suppressions=$PWD/scripts/tsan.supp halt_on_error=0 exitcode=66 second_deadlock_stack=1"
# One torch thread per runtime thread, as `vla run` configures it.
export OMP_NUM_THREADS=1
"$bin" --gtest_brief=1 ${1:+--gtest_filter=$1} 2>&1 | tee "$BUILD/tsan.log" | grep -E "WARNING: ThreadSanitizer|SUMMARY|PASSED|FAILED|tests ran" || true
rc=${PIPESTATUS[0]}
echo "tsan.sh: test_runtime exit $rc ($(grep -c 'WARNING: ThreadSanitizer' "$BUILD/tsan.log") reports; log $BUILD/tsan.log)"
exit "$rc"
