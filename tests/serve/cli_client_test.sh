#!/usr/bin/env bash
# `vla client --load` (the C++ client's load test, apps/vla/cmd_serve.cpp) against a real
# `vla serve` process on a free port: 2 connections x 40 requests, every request answered (no
# error, ids echoed), the JSON report complete; then SIGINT stops the server cleanly.
# Usage: cli_client_test.sh VLA
set -euo pipefail
VLA=$1
LOG=$(mktemp)
JSON=$(mktemp --suffix=.json)
"$VLA" serve --port 0 --host 127.0.0.1 > "$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$LOG" "$JSON"' EXIT
for _ in $(seq 1 300); do grep -q "on ws://" "$LOG" && break; sleep 0.1; done
PORT=$(sed -n 's/.*on ws:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$LOG")
[ -n "$PORT" ] || { cat "$LOG"; echo "server did not start"; exit 1; }
OUT=$("$VLA" client --port "$PORT" --load 2 --requests 40 --json "$JSON")
echo "$OUT"
echo "$OUT" | grep -q "^2 clients x 40 requests in .*: 0 errors; server RSS" ||
  { echo "load test: expected 2 x 40 requests without errors"; exit 1; }
FLAT=$(tr -d ' \n' < "$JSON")
echo "$FLAT" | grep -q '"errors":0[,}]' && echo "$FLAT" | grep -q '"requests_per_client":40[,}]' ||
  { cat "$JSON"; echo "load test JSON incomplete"; exit 1; }
# Every request got a status (act, fallback, ...): the statuses add up to 80.
SUM=$(echo "$FLAT" | sed -n 's/.*"statuses":{\([^}]*\)}.*/\1/p' | tr ',' '\n' | sed 's/.*://' |
  paste -sd+)
TOTAL=$((${SUM:-0}))
[ "$TOTAL" = 80 ] || { cat "$JSON"; echo "statuses add up to $TOTAL, expected 80"; exit 1; }
kill -INT $PID
wait $PID
grep -q "vla serve: stopped" "$LOG"
