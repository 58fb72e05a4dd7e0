#!/usr/bin/env bash
# Submit throughput of `openhqm serve` with queue and results on Redis, next
# to Redis's own XADD rate (`redis-benchmark`) in the same run, against one
# private redis-server. A submit is one SET (the PENDING record) and one XADD,
# plus HTTP and JSON, so the ratio says what OpenHQM adds on top of Redis.
#
#   bash bench/redis.sh            # 10 s of wrk
#   DURATION=30 bash bench/redis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/openhqm-target}
BIN="$CARGO_TARGET_DIR/release/openhqm"
WORK=$(mktemp -d /tmp/openhqm-bench-redis.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need redis-server || ! need redis-benchmark; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q wrk redis-server >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk redis-server >/dev/null; }
fi

echo "building openhqm (release)..." >&2
cargo build --release -q -p openhqm

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }

REDIS_PORT=$(port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
  --dir "$WORK" --daemonize no > "$WORK/redis.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 200); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

echo "measuring redis-benchmark XADD..." >&2
XADD_RPS=$(redis-benchmark -p "$REDIS_PORT" -c "$CONNECTIONS" -n 200000 --csv XADD bench '*' payload x \
  | python3 -c 'import csv,sys; rows=list(csv.reader(sys.stdin)); print(round(float(rows[-1][1])))')
redis-cli -p "$REDIS_PORT" del bench >/dev/null

URL="redis://127.0.0.1:$REDIS_PORT"
# $1 = role (serve: API + workers; listener: API only); prints "rps p50 p99 non2xx".
measure() {
  local port; port=$(port)
  "$BIN" "$1" --host 127.0.0.1 --port "$port" \
    --set queue.type=redis --set cache.type=redis \
    --set queue.redis_url="$URL" --set cache.redis_url="$URL" \
    --set monitoring.log_level=WARNING > "$WORK/openhqm-$1.log" 2>&1 &
  local pid=$!; PIDS+=("$pid")
  wait_http "http://127.0.0.1:$port/health/ready"
  echo "measuring openhqm $1 submit on redis..." >&2
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s bench/submit.lua \
    "http://127.0.0.1:$port/api/v1/submit" > "$WORK/wrk-$1.out" 2>&1
  kill -TERM "$pid"; wait "$pid" || true
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
}
measure serve
measure listener

python3 - "$WORK" "$XADD_RPS" "$(nproc)" "$CONNECTIONS" <<'PY'
import re, sys
work, xadd, cores, conns = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
def parse(path):
    text = open(path).read()
    def ms(label):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % label, text, re.M)
        if not m: return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return rps, ms("50"), ms("99"), bad.group(1) if bad else 0
print()
print(f"machine: {cores} cores; {conns} connections; wrk, redis-server and openhqm on the same machine")
print(f"{'measurement':48} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'vs XADD':>8}")
print(f"{'redis-benchmark XADD (baseline)':48} {xadd:>9.0f} {'':>8} {'':>8} {'':>8} {1:>8.2f}")
for role, label in [("serve", "openhqm serve submit (API + workers)"), ("listener", "openhqm listener submit (API only)")]:
    rps, p50, p99, bad = parse(f"{work}/wrk-{role}.out")
    print(f"{label:48} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {bad:>8} {rps / xadd:>8.2f}")
print("target: openhqm serve >= 0.40 x XADD")
PY
