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

WRK_THREADS=${WRK_THREADS:-1}
source bench/lib.sh
if ! need redis-server || ! need redis-benchmark; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q redis-server >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
fi

echo "building openhqm (release)..." >&2
cargo build --release -q -p openhqm

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
  wrk_run "http://127.0.0.1:$port/api/v1/submit" -s bench/submit.lua
  kill -TERM "$pid"; wait "$pid" || true
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
}
read -r SERVE_RPS SERVE_P50 SERVE_P99 SERVE_BAD < <(measure serve)
read -r LIST_RPS LIST_P50 LIST_P99 LIST_BAD < <(measure listener)

python3 - <<PY
xadd = $XADD_RPS
print()
print(f"machine: $(nproc) cores; $CONNECTIONS connections; wrk, redis-server and openhqm on the same machine")
print(f"{'measurement':48} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'vs XADD':>8}")
print(f"{'redis-benchmark XADD (baseline)':48} {xadd:>9.0f} {'':>8} {'':>8} {'':>8} {1:>8.2f}")
print(f"{'openhqm serve submit (API + workers)':48} {$SERVE_RPS:>9.0f} {$SERVE_P50:>8.2f} {$SERVE_P99:>8.2f} {$SERVE_BAD:>8} {$SERVE_RPS / xadd:>8.2f}")
print(f"{'openhqm listener submit (API only)':48} {$LIST_RPS:>9.0f} {$LIST_P50:>8.2f} {$LIST_P99:>8.2f} {$LIST_BAD:>8} {$LIST_RPS / xadd:>8.2f}")
PY
