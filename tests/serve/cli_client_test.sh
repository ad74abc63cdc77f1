#!/usr/bin/env bash
# `vla client --load` (the C++ client's load test, apps/vla/cmd_serve.cpp) against a real
# `vla serve` process on a free port: 2 connections x 40 requests, every request answered (no
# error, ids echoed), the JSON report complete; then SIGINT stops the server cleanly.
# Usage: cli_client_test.sh VLA
set -euo pipefail
VLA=$1
JSON=$(mktemp --suffix=.json)
EXTRA_FILES=$JSON
source "$(dirname "$0")/serve_process.sh"
start_server "$VLA"
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
stop_server
