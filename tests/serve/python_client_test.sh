#!/usr/bin/env bash
# The Python client (clients/python/dualrate_client.py, Debian's python3-websockets / msgpack /
# numpy) against a real `vla serve` process on a free port: metadata, 20 requests at 20 Hz with
# their ids echoed, the features arrive (status "act"), GET /healthz and /metrics; streaming, 30 pushed replies at 20 Hz; then SIGINT stops the
# server cleanly.
# Usage: python_client_test.sh VLA PYTHON
set -euo pipefail
VLA=$1 PY=$2
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
"$PY" -c "import websockets, msgpack, numpy" 2>/dev/null ||
  { echo "SKIP: python3-websockets / python3-msgpack / python3-numpy not installed"; exit 0; }
source "$(dirname "$0")/serve_process.sh"
start_server "$VLA"
OUT=$("$PY" "$ROOT/clients/python/dualrate_client.py" --port "$PORT" --requests 20 --hz 20)
echo "$OUT"
echo "$OUT" | grep -q "'act': " || { echo "no request was answered with actions"; exit 1; }
echo "$OUT" | grep -q "health ok; metrics: [1-9][0-9]* VLM calls" || { echo "health / metrics"; exit 1; }
# Streaming: the server pushes 30 replies at 20 Hz while the client sends observations.
OUT=$("$PY" "$ROOT/clients/python/dualrate_client.py" --port "$PORT" --requests 30 --hz 20 --stream)
echo "$OUT"
echo "$OUT" | grep -q "30 pushed replies: status {.*'act': " || { echo "streaming never acted"; exit 1; }
stop_server
