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

OHQ_PORT=$(port)
URL="redis://127.0.0.1:$REDIS_PORT"
"$BIN" serve --host 127.0.0.1 --port "$OHQ_PORT" \
  --set queue.type=redis --set cache.type=redis \
  --set queue.redis_url="$URL" --set cache.redis_url="$URL" \
  --set monitoring.log_level=WARNING > "$WORK/openhqm.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$OHQ_PORT/health/ready"

echo "measuring openhqm submit on redis..." >&2
wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s bench/submit.lua \
  "http://127.0.0.1:$OHQ_PORT/api/v1/submit" > "$WORK/wrk.out" 2>&1
python3 - "$WORK/wrk.out" "$XADD_RPS" "$(nproc)" "$CONNECTIONS" "$DURATION" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
xadd, cores, conns, secs = float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def ms(label):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % label, text, re.M)
    if not m: return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
print()
print(f"machine: {cores} cores; {conns} connections; everything on the same machine")
print(f"{'measurement':44} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
print(f"{'redis-benchmark XADD (baseline)':44} {xadd:>9.0f}")
print(f"{'openhqm submit, queue+cache on redis':44} {rps:>9.0f} {ms('50'):>8.2f} {ms('99'):>8.2f} {bad.group(1) if bad else 0:>8}")
print(f"ratio openhqm / XADD: {rps / xadd:.2f} (target >= 0.40)")
PY
