#!/usr/bin/env bash
# Proxy-mode benchmark, in one run on one machine:
#   1. nginx proxy_pass -> a static nginx backend (the baseline);
#   2. openhqm's whole async path to the same backend: submit (durable),
#      forward, result stored; end-to-end requests/s. 1 and 2 alternate,
#      ROUNDS (3) times, and the table shows medians: the VM's speed drifts
#      by a tenth or more within a minute;
#   3. openhqm forwarding to a backend that answers after 50 ms, with
#      worker.count 256: forwarded messages/s.
# Installs wrk and nginx if missing. Prints a table.
#
#   bash bench/proxy.sh            # 10 s per load phase
#   DURATION=30 ROUNDS=5 bash bench/proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SLOW_MS=${SLOW_MS:-50}
source bench/lib.sh

echo "building openhqm and the bench backend (release)..." >&2
cargo build --release -q -p openhqm --bin openhqm --example bench_backend

# --- nginx: a static backend, and proxy_pass in front of it ------------------
ROUNDS=${ROUNDS:-3}
BACKEND_PORT=$(port); PROXY_PORT=$(port)

# Runs openhqm in proxy mode against $1 with worker.count $2, drives submits
# for DURATION, waits until every accepted request is finished, and prints
# "submit_rps e2e_rps accepted non2xx".
forward_run() {
  local backend=$1 count=$2 ohq_port pid start end accepted
  ohq_port=$(port)
  rm -rf "$WORK/data"
  "$BIN" serve --host 127.0.0.1 --port "$ohq_port" --data-dir "$WORK/data" \
    --set monitoring.log_level=WARNING --set proxy.enabled=true \
    --set proxy.default_endpoint="$backend" --set worker.count="$count" \
    > "$WORK/openhqm.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  wait_http "http://127.0.0.1:$ohq_port/health/ready"
  start=$(date +%s.%N)
  read -r rps _p50 _p99 bad < <(wrk_run "http://127.0.0.1:$ohq_port/api/v1/submit" -s bench/submit.lua)
  accepted=$(wait_drained "http://127.0.0.1:$ohq_port")
  end=$(date +%s.%N)
  failed=$(metric "http://127.0.0.1:$ohq_port" 'openhqm_worker_processing_duration_seconds_count{outcome="failed"}')
  kill -TERM "$pid"; wait "$pid" || true
  if [ "${failed:-0}" != 0 ]; then echo "warning: $failed forwards failed" >&2; fi
  python3 -c "print($rps, round($accepted / ($end - $start)), $accepted, $bad)"
}

for round in $(seq 1 "$ROUNDS"); do
  start_nginx "$PROXY_PORT" "$BACKEND_PORT" static
  echo "round $round/$ROUNDS: measuring nginx proxy_pass..." >&2
  wrk_run "http://127.0.0.1:$PROXY_PORT/" -s bench/submit.lua | awk '{print $1}' > "$WORK/nginx.$round"
  echo "round $round/$ROUNDS: measuring openhqm submit -> forward -> stored, same static backend..." >&2
  forward_run "http://127.0.0.1:$BACKEND_PORT/" 256 > "$WORK/fast.$round"
  stop_nginx; sleep 0.5
done

SLOW_PORT=$(port)
"$BACKEND_BIN" "127.0.0.1:$SLOW_PORT" "$SLOW_MS" &
PIDS+=("$!")
wait_http "http://127.0.0.1:$SLOW_PORT/"
echo "measuring openhqm forwarding to a ${SLOW_MS} ms backend with worker.count 256..." >&2
read -r SLOW_SUBMIT SLOW_E2E SLOW_N SLOW_BAD < <(forward_run "http://127.0.0.1:$SLOW_PORT/" 256)

python3 - "$WORK" "$ROUNDS" <<PY
import statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def rounds_of(name):
    return [[float(x) for x in open(f"{work}/{name}.{r}").read().split()] for r in range(1, rounds + 1)]
ngx_runs, fast_runs = rounds_of("nginx"), rounds_of("fast")
ngx = statistics.median(r[0] for r in ngx_runs)
submit = statistics.median(r[0] for r in fast_runs)
e2e = statistics.median(r[1] for r in fast_runs)
submit_ratios = sorted(f[0] / n[0] for f, n in zip(fast_runs, ngx_runs))
e2e_ratios = sorted(f[1] / n[0] for f, n in zip(fast_runs, ngx_runs))
accepted = sum(int(r[2]) for r in fast_runs)
bad = sum(int(r[3]) for r in fast_runs)
print()
print(f"machine: $(nproc) cores; wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s on the same machine; {rounds} alternating rounds of nginx and openhqm (medians)")
print(f"{'measurement':58} {'req/s':>9} {'vs nginx':>9}")
print(f"{'nginx proxy_pass -> static nginx (baseline)':58} {ngx:>9.0f} {1:>9.2f}")
print(f"{'openhqm submit, proxy mode (durable 202)':58} {submit:>9.0f} {statistics.median(submit_ratios):>9.2f}")
print(f"{'openhqm end to end: submit -> forward -> result stored':58} {e2e:>9.0f} {statistics.median(e2e_ratios):>9.2f}")
print(f"{'openhqm forwarding to a ${SLOW_MS} ms backend, worker.count 256':58} {$SLOW_E2E:>9.0f} {'':>9}")
print(f"end to end/nginx per round: {', '.join(f'{r:.2f}' for r in e2e_ratios)}")
print(f"(requests accepted: {accepted} and {$SLOW_N}; non-2xx submits: {bad} and {$SLOW_BAD}; the ${SLOW_MS} ms ceiling is {256*1000/$SLOW_MS:.0f} msg/s)")
PY
