#!/usr/bin/env bash
# Sidecar (sync-over-queue) benchmark: the same backend called three ways in
# one run, each with the same wrk load:
#   1. directly;
#   2. through nginx proxy_pass (the baseline);
#   3. through openhqm's passthrough ingress on the embedded queue (durable:
#      every call is fsynced on the queue before it is replayed, and the
#      caller waits for the backend's answer).
# Each is measured under load (wrk -c64: requests/s, p50/p99) and unloaded
# (one connection: the latency a proxy adds to a single call). Prints the
# ratio to nginx and the p50 latency added over a direct call. Installs wrk
# and nginx if missing.
#
#   bash bench/sidecar.sh            # 10 s per measurement
#   DURATION=30 bash bench/sidecar.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh

echo "building openhqm and the bench backend (release)..." >&2
cargo build --release -q -p openhqm --bin openhqm --example bench_backend

# The app: answers every request at once.
APP_PORT=$(port)
"$BACKEND_BIN" "127.0.0.1:$APP_PORT" 0 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$APP_PORT/"

# $1 = name, $2 = URL: under load, then one connection at a time.
measure() {
  echo "measuring $1..." >&2
  wrk_run "$2" -s bench/sidecar.lua > "$WORK/$1"
  CONNECTIONS=1 wrk_run "$2" -s bench/sidecar.lua > "$WORK/$1.c1"
}
measure direct "http://127.0.0.1:$APP_PORT/orders"

PROXY_PORT=$(port)
start_nginx "$PROXY_PORT" "$APP_PORT"
measure nginx "http://127.0.0.1:$PROXY_PORT/orders"
stop_nginx

API_PORT=$(port); SIDE_PORT=$(port)
"$BIN" serve --host 127.0.0.1 --port "$API_PORT" --data-dir "$WORK/data" \
  --set monitoring.log_level=WARNING --set proxy.enabled=true \
  --set proxy.default_endpoint="http://127.0.0.1:$APP_PORT" \
  --set sidecar.enabled=true --set sidecar.port="$SIDE_PORT" \
  --set worker.count=256 > "$WORK/openhqm.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$API_PORT/health/ready"
measure openhqm "http://127.0.0.1:$SIDE_PORT/orders"

python3 - "$WORK" <<PY
import sys
work = sys.argv[1]
def row(name):
    rps, p50, p99, bad = open(f"{work}/{name}").read().split()
    _, c1_p50, c1_p99, _ = open(f"{work}/{name}.c1").read().split()
    return float(rps), float(p50), float(p99), int(bad), float(c1_p50), float(c1_p99)
rows = [
    ("app called directly", row("direct")),
    ("nginx proxy_pass -> app (baseline)", row("nginx")),
    ("openhqm sidecar, callers wait on the queue", row("openhqm")),
]
ngx = rows[1][1][0]
direct = rows[0][1]
print()
print(f"machine: $(nproc) cores; wrk -t$WRK_THREADS -d${DURATION}s; app, proxies and wrk on the same machine")
print(f"{'':46} {'--- $CONNECTIONS connections ---':>36} {'--- 1 connection ---':>28}")
print(f"{'measurement':46} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'vs nginx':>9} {'non-2xx':>7} {'p50 ms':>7} {'p99 ms':>7} {'+p50 ms':>8}")
for name, (rps, p50, p99, bad, c1_p50, c1_p99) in rows:
    print(f"{name:46} {rps:>8.0f} {p50:>7.2f} {p99:>7.2f} {rps / ngx:>9.2f} {bad:>7} {c1_p50:>7.2f} {c1_p99:>7.2f} {c1_p50 - direct[4]:>8.2f}")
print("+p50: the median latency a proxy adds to one call over calling the app directly")
PY
