#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/) and the parser unit tests with clang + ASan + UBSan in
# build-fuzz, runs the sanitized unit tests, then runs each fuzzer for SECONDS on a copy of its
# seed corpus (fuzz/corpus/NAME). Prints executions/s and exits non-zero on any crash; crash
# inputs are kept in build-fuzz/crashes/NAME. docs/reliability.md.
#
# Usage: scripts/fuzz.sh [SECONDS] [NAME ...]    (default 60 s each, all fuzzers)
#   NAME: safetensors safetensors_index config tokenizer_load tokenizer_encode chat_template image
#         dataset serve_request
#   Env: BUILD (default build-fuzz), JOBS (default nproc), SKIP_TESTS=1 skips the unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
shift || true
BUILD=${BUILD:-build-fuzz}
JOBS=${JOBS:-$(nproc)}
ALL="safetensors safetensors_index config tokenizer_load tokenizer_encode chat_template image dataset serve_request"
NAMES=${*:-$ALL}
command -v clang++ >/dev/null || { echo "fuzz.sh: needs clang (apt-get install clang)"; exit 2; }
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVLA_FUZZ=ON \
    -DVLA_BUILD_BENCH=OFF -DVLA_WITH_SIM=OFF > "$BUILD.configure.log" 2>&1 ||
    { tail -30 "$BUILD.configure.log"; exit 1; }
fi
TESTS="test_core test_weights test_jinja test_text test_dataset"
echo "fuzz.sh: building the fuzzers and the parser tests with clang + ASan + UBSan in $BUILD" \
  "(compiler output shown only for errors and warnings)"
cmake --build "$BUILD" -j"$JOBS" --target fuzzers $TESTS 2>&1 | grep -E "error|warning:" -A3 || true
for t in $NAMES; do [ -x "$BUILD/fuzz/${t}_fuzz" ] || { echo "fuzz.sh: ${t}_fuzz was not built"; exit 1; }; done
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  for t in $TESTS; do
    bin=$(find "$BUILD/tests" -name "$t" -type f | head -1)
    note=""
    [ "$t" = test_jinja ] && note=", ~2 minutes under the sanitizers"
    echo "== $t (ASan + UBSan$note)"
    "$bin" --gtest_brief=1 2>&1 | tail -3
  done
fi
status=0
printf "%-18s %10s %12s %8s %s\n" fuzzer seconds "execs/s" corpus result
for t in $NAMES; do
  work="$BUILD/corpus/$t" crashes="$BUILD/crashes/$t"
  mkdir -p "$work" "$crashes"
  [ -d "fuzz/corpus/$t" ] && cp -n fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
  log="$BUILD/fuzz_$t.log"
  if "$BUILD/fuzz/${t}_fuzz" "$work" -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 \
      -max_len=65536 -timeout=20 -artifact_prefix="$crashes/" -print_final_stats=1 > "$log" 2>&1; then
    result=ok
  else
    result="CRASH (see $log, input in $crashes)"
    status=1
  fi
  execs=$(grep -m1 "stat::number_of_executed_units" "$log" | awk '{print $2}')
  printf "%-18s %10s %12s %8s %s\n" "$t" "$SECONDS_EACH" \
    "$(( ${execs:-0} / (SECONDS_EACH > 0 ? SECONDS_EACH : 1) ))" "$(ls "$work" | wc -l)" "$result"
done
exit $status
