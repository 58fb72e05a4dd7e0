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
# server.max_pending=0: the listener-only run queues every request with no
# worker draining them, and admission control would (rightly) refuse them
# past its bound; here we measure what submit can take.
REDIS_SETS=(--set queue.type=redis --set cache.type=redis
  --set queue.redis_url="$URL" --set cache.redis_url="$URL"
  --set monitoring.log_level=WARNING --set server.max_pending=0)

# $1 = role (serve: API + workers; listener: API only). Writes
# "rps p50 p99 non2xx" to $WORK/$1.
measure() {
  local port pid; port=$(port)
  "$BIN" "$1" --host 127.0.0.1 --port "$port" "${REDIS_SETS[@]}" > "$WORK/openhqm-$1.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  wait_http "http://127.0.0.1:$port/health/ready"
  echo "measuring openhqm $1 submit on redis..." >&2
  wrk_run "http://127.0.0.1:$port/api/v1/submit" -s bench/submit.lua > "$WORK/$1"
  kill -TERM "$pid"; wait "$pid" || true
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
}
measure serve
measure listener

# End to end, scaled out: 1 listener and 2 worker processes (demo processor).
# Submits for DURATION, then waits until the workers have finished every
# accepted request; distinct COMPLETED requests / elapsed time is the
# end-to-end rate (the workers' counters count a redelivered request twice).
# A run still not drained E2E_DEADLINE seconds after the submits fails: a
# lost request would otherwise hang the benchmark.
E2E_DEADLINE=${E2E_DEADLINE:-300}
echo "measuring openhqm end to end: 1 listener + 2 workers on redis..." >&2
L_PORT=$(port)
"$BIN" listener --host 127.0.0.1 --port "$L_PORT" "${REDIS_SETS[@]}" > "$WORK/listener.log" 2>&1 &
PIDS+=("$!")
W_PORTS=()
for i in 1 2; do
  W_PORT=$(port); W_PORTS+=("$W_PORT")
  "$BIN" worker --host 127.0.0.1 --port "$W_PORT" "${REDIS_SETS[@]}" \
    --set queue.redis_consumer_name="bench-worker-$i" > "$WORK/worker-$i.log" 2>&1 &
  PIDS+=("$!")
done
wait_http "http://127.0.0.1:$L_PORT/health/ready"
for W_PORT in "${W_PORTS[@]}"; do wait_http "http://127.0.0.1:$W_PORT/health/ready"; done
START=$(date +%s.%N)
wrk_run "http://127.0.0.1:$L_PORT/api/v1/submit" -s bench/submit.lua > "$WORK/e2e-submit"
# Work left: entries not yet acknowledged (acknowledged ones are deleted)
# plus delayed retries, read in one step so a retry moving back is not missed.
left() {
  redis-cli -p "$REDIS_PORT" eval \
    "return redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])" \
    2 openhqm-requests openhqm-requests:delayed
}
# Distinct requests whose record reads COMPLETED (one key per request). It
# blocks Redis while it reads every record, so it runs once the queue is empty.
completed() {
  redis-cli -p "$REDIS_PORT" eval "
    local n = 0
    for _, key in ipairs(redis.call('KEYS', ARGV[1])) do
      local ok, record = pcall(cjson.decode, redis.call('GET', key))
      if ok and type(record) == 'table' and record.status == 'COMPLETED' then n = n + 1 end
    end
    return n" 0 'openhqm:result:*'
}
GIVE_UP=$(($(date +%s) + E2E_DEADLINE))
while [ "$(left)" -gt 0 ]; do
  if [ "$(date +%s)" -ge "$GIVE_UP" ]; then
    echo "FAILED: end to end: $(left) requests still queued ${E2E_DEADLINE}s after the submits ended" >&2
    exit 1
  fi
  sleep 0.05
done
END=$(date +%s.%N)
# Read once drained: submits still in flight when wrk stopped are answered by now.
ACCEPTED=$(metric "http://127.0.0.1:$L_PORT" 'openhqm_api_requests_total{method="POST",route="/api/v1/submit",status="202"}')
ACCEPTED=${ACCEPTED%.*}
COMPLETED=$(completed)
if [ "$COMPLETED" -lt "$ACCEPTED" ]; then
  echo "FAILED: end to end: $ACCEPTED requests accepted, only $COMPLETED COMPLETED once the queue was empty" >&2
  exit 1
fi

read -r SERVE_RPS SERVE_P50 SERVE_P99 SERVE_BAD < "$WORK/serve"
read -r LIST_RPS LIST_P50 LIST_P99 LIST_BAD < "$WORK/listener"
read -r E2E_SUBMIT _ _ E2E_BAD < "$WORK/e2e-submit"

python3 - <<PY
xadd = $XADD_RPS
e2e = $COMPLETED / ($END - $START)
print()
print(f"machine: $(nproc) cores; $CONNECTIONS connections; wrk, redis-server and openhqm on the same machine")
print(f"{'measurement':52} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'vs XADD':>8}")
print(f"{'redis-benchmark XADD (baseline)':52} {xadd:>9.0f} {'':>8} {'':>8} {'':>8} {1:>8.2f}")
print(f"{'openhqm serve submit (API + workers)':52} {$SERVE_RPS:>9.0f} {$SERVE_P50:>8.2f} {$SERVE_P99:>8.2f} {$SERVE_BAD:>8} {$SERVE_RPS / xadd:>8.2f}")
print(f"{'openhqm listener submit (API only)':52} {$LIST_RPS:>9.0f} {$LIST_P50:>8.2f} {$LIST_P99:>8.2f} {$LIST_BAD:>8} {$LIST_RPS / xadd:>8.2f}")
print(f"{'end to end, 1 listener + 2 workers (demo processor)':52} {e2e:>9.0f} {'':>8} {'':>8} {$E2E_BAD:>8} {e2e / xadd:>8.2f}")
print(f"(end to end: {$ACCEPTED:.0f} requests accepted at {$E2E_SUBMIT:.0f}/s, {$COMPLETED:.0f} distinct COMPLETED {$END - $START:.1f} s after the first)")
PY
