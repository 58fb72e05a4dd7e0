#!/usr/bin/env bash
# User-space instructions per sidecar call, counted by callgrind: a figure
# the VM's drifting speed does not move (req/s here varies by a tenth
# within minutes, so a change of a few per cent shows only as a count).
# Each binary given (default: the release build) serves the sidecar
# benchmark's load (16 connections) under valgrind; the counters are zeroed
# after a warm-up and dumped when the load stops, so start-up and idle time
# are not counted. Kernel time (the TCP sends, about half of the CPU a call
# costs) is not counted either. Installs valgrind and wrk if missing.
#
#   bash bench/instructions.sh                      # the current build
#   bash bench/instructions.sh old/openhqm new/openhqm
#   LOAD_SECONDS=20 bash bench/instructions.sh      # 10 by default
#   KEEP=/tmp/cg bash bench/instructions.sh         # keep /tmp/cg.<name>
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh

if ! need valgrind; then
  apt-get install -y -q valgrind >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q valgrind >/dev/null; }
fi

echo "building openhqm and the bench backend (release)..." >&2
cargo build --release -q -p openhqm --bin openhqm --example bench_backend
LOAD_SECONDS=${LOAD_SECONDS:-10}
[ "$#" -gt 0 ] || set -- "$BIN"

APP_PORT=$(port)
"$BACKEND_BIN" "127.0.0.1:$APP_PORT" 0 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$APP_PORT/"

printf '%-24s %8s %16s %12s\n' binary calls instructions "per call"
for bin in "$@"; do
  API_PORT=$(port); SIDE_PORT=$(port)
  out="$WORK/callgrind.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" serve \
    --host 127.0.0.1 --port "$API_PORT" --data-dir "$WORK/data" \
    --set monitoring.log_level=WARNING --set proxy.enabled=true \
    --set proxy.default_endpoint="http://127.0.0.1:$APP_PORT" \
    --set sidecar.enabled=true --set sidecar.port="$SIDE_PORT" \
    --set worker.count=256 > "$WORK/openhqm.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  for _ in $(seq 1 600); do curl -fs "http://127.0.0.1:$API_PORT/health/ready" >/dev/null 2>&1 && break; sleep 0.1; done
  wrk -t1 -c16 -d3s -s bench/sidecar.lua "http://127.0.0.1:$SIDE_PORT/orders" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  wrk -t1 -c16 -d"${LOAD_SECONDS}s" -s bench/sidecar.lua "http://127.0.0.1:$SIDE_PORT/orders" > "$WORK/wrk.out"
  callgrind_control -d "$pid" >/dev/null 2>&1
  calls=$(grep -oP '\d+(?= requests in)' "$WORK/wrk.out")
  dump=$(ls -S "$out".* | head -1)
  total=$(awk '/^summary:|^totals:/ {print $2; exit}' "$dump")
  printf '%-24s %8d %16d %12d\n' "$(basename "$(dirname "$bin")")/$(basename "$bin")" "$calls" "$total" $((total / calls))
  [ -n "${KEEP:-}" ] && cp "$dump" "$KEEP.$(basename "$bin")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$WORK/data" "$out".*
done
