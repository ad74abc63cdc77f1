# Sourced by the tests that talk to a real `vla serve` process: start_server VLA starts one on a
# free localhost port and sets PID, PORT and LOG (its output); stop_server sends SIGINT and checks
# that it stopped cleanly. The server is killed on exit whatever happens.
start_server() {
  LOG=$(mktemp)
  "$1" serve --port 0 --host 127.0.0.1 > "$LOG" 2>&1 &
  PID=$!
  trap 'kill $PID 2>/dev/null || true; rm -f "$LOG" ${EXTRA_FILES:-}' EXIT
  for _ in $(seq 1 300); do grep -q "on ws://" "$LOG" && break; sleep 0.1; done
  PORT=$(sed -n 's/.*on ws:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$LOG")
  [ -n "$PORT" ] || { cat "$LOG"; echo "server did not start"; exit 1; }
}
stop_server() {
  kill -INT "$PID"
  wait "$PID"
  grep -q "vla serve: stopped" "$LOG"
}
