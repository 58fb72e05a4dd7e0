#!/usr/bin/env bash
# Sidecar (sync-over-queue) benchmark: the same backend called three ways in
# one run, each with the same wrk load:
#   1. directly;
#   2. through nginx proxy_pass (the baseline);
#   3. through openhqm's passthrough ingress on the embedded queue, the
#      caller waiting for the backend's answer (each call is written to the
#      queue before it is replayed; as the answer is the acknowledgement, it
#      is fsynced only if a 202 must be given instead: see README, Sidecar).
# Each is measured under load (wrk -c64: requests/s, p50/p99) and unloaded
# (one connection: the latency a proxy adds to a single call), in ROUNDS
# alternating rounds (3 by default: the VM's speed drifts within a minute).
# Prints the medians, the median of the per-round ratios to nginx (and their
# range), and the p50 latency added over a direct call. Installs wrk and
# nginx if missing.
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

# $1 = name, $2 = URL, $3 = round: under load, then one connection at a time.
measure() {
  echo "round $3/$ROUNDS: measuring $1..." >&2
  wrk_run "$2" -s bench/sidecar.lua > "$WORK/$1.$3"
  CONNECTIONS=1 wrk_run "$2" -s bench/sidecar.lua > "$WORK/$1.c1.$3"
}

ROUNDS=${ROUNDS:-3}
PROXY_PORT=$(port); API_PORT=$(port); SIDE_PORT=$(port)
for round in $(seq 1 "$ROUNDS"); do
  measure direct "http://127.0.0.1:$APP_PORT/orders" "$round"

  start_nginx "$PROXY_PORT" "$APP_PORT"
  measure nginx "http://127.0.0.1:$PROXY_PORT/orders" "$round"
  stop_nginx

  "$BIN" serve --host 127.0.0.1 --port "$API_PORT" --data-dir "$WORK/data" \
    --set monitoring.log_level=WARNING --set proxy.enabled=true \
    --set proxy.default_endpoint="http://127.0.0.1:$APP_PORT" \
    --set sidecar.enabled=true --set sidecar.port="$SIDE_PORT" \
    --set worker.count=256 > "$WORK/openhqm.log" 2>&1 &
  OHQ_PID=$!; PIDS+=("$OHQ_PID")
  wait_http "http://127.0.0.1:$API_PORT/health/ready"
  measure openhqm "http://127.0.0.1:$SIDE_PORT/orders" "$round"
  kill -TERM "$OHQ_PID"; wait "$OHQ_PID" || true
  rm -rf "$WORK/data"
done

python3 - "$WORK" "$ROUNDS" <<PY
import statistics, sys
sys.path.insert(0, "bench")
import rounds as measured
from rounds import median_run
work, rounds = sys.argv[1], int(sys.argv[2])
def runs(name):
    return measured.runs(work, rounds, name)
loaded = {n: runs(n) for n in ("direct", "nginx", "openhqm")}
one = {n: runs(f"{n}.c1") for n in ("direct", "nginx", "openhqm")}
ratios = sorted(o[0] / n[0] for o, n in zip(loaded["openhqm"], loaded["nginx"]))
direct_c1_p50 = statistics.median(r[1] for r in one["direct"])
rows = [
    ("app called directly", "direct"),
    ("nginx proxy_pass -> app (baseline)", "nginx"),
    ("openhqm sidecar, callers wait on the queue", "openhqm"),
]
ngx = median_run(loaded["nginx"])[0]
print()
print(f"machine: $(nproc) cores; wrk -t$WRK_THREADS -d${DURATION}s; app, proxies and wrk on the same machine; {rounds} alternating rounds (medians)")
print(f"{'':46} {'--- $CONNECTIONS connections ---':>36} {'--- 1 connection ---':>28}")
print(f"{'measurement':46} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'vs nginx':>9} {'non-2xx':>7} {'p50 ms':>7} {'p99 ms':>7} {'+p50 ms':>8}")
for label, name in rows:
    rps, p50, p99, _ = median_run(loaded[name])
    bad = sum(r[3] for r in loaded[name])
    c1_p50 = statistics.median(r[1] for r in one[name])
    c1_p99 = statistics.median(r[2] for r in one[name])
    ratio = statistics.median(ratios) if name == "openhqm" else rps / ngx
    print(f"{label:46} {rps:>8.0f} {p50:>7.2f} {p99:>7.2f} {ratio:>9.2f} {bad:>7.0f} {c1_p50:>7.2f} {c1_p99:>7.2f} {c1_p50 - direct_c1_p50:>8.2f}")
print(f"openhqm/nginx per round: {', '.join(f'{r:.2f}' for r in ratios)}")
print("+p50: the median latency a proxy adds to one call over calling the app directly")
PY
