#!/usr/bin/env bash
# OpenHQM benchmark on the embedded queue, in the same run as the baseline,
# nginx `proxy_pass` to a static backend:
#   - durable submit throughput/latency of the ingress alone (`openhqm
#     listener`: every 202 fsynced, nothing consuming, as when a burst
#     outruns the workers);
#   - the same load on `openhqm serve`, whose workers run each request in the
#     same process while it is submitted, and end-to-end throughput (submit
#     until COMPLETED, with the demo processor).
# Installs its own tools (wrk, nginx). Prints a table.
#
#   bash bench/run.sh            # 10 s per measurement
#   DURATION=30 bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh

echo "building openhqm (release)..." >&2
cargo build --release -q -p openhqm

# --- baseline and listener alone, in alternating rounds ----------------------
# The VM's speed drifts by a tenth or more within a minute, so nginx and the
# listener alternate, ROUNDS times, and the table shows the median of each
# and the median of the per-round ratios (with their range).
#
# The listener alone is the ingress: every 202 fsynced, nothing draining the
# queue, so admission control (`server.max_pending`, 100,000 by default) is
# off and the run measures accepting, not refusing.
ROUNDS=${ROUNDS:-3}
BACKEND_PORT=$(port); PROXY_PORT=$(port); LSN_PORT=$(port)
for round in $(seq 1 "$ROUNDS"); do
  start_nginx "$PROXY_PORT" "$BACKEND_PORT" static
  echo "round $round/$ROUNDS: measuring nginx proxy_pass..." >&2
  wrk_run "http://127.0.0.1:$PROXY_PORT/" -s bench/submit.lua > "$WORK/nginx.$round"
  stop_nginx; sleep 0.5

  "$BIN" listener --host 127.0.0.1 --port "$LSN_PORT" --data-dir "$WORK/listener-data" \
    --set monitoring.log_level=WARNING --set server.max_pending=0 > "$WORK/listener.log" 2>&1 &
  LSN_PID=$!; PIDS+=("$LSN_PID")
  wait_http "http://127.0.0.1:$LSN_PORT/health/live"
  echo "round $round/$ROUNDS: measuring openhqm durable submit, listener alone..." >&2
  wrk_run "http://127.0.0.1:$LSN_PORT/api/v1/submit" -s bench/submit.lua > "$WORK/listener.$round"
  kill -TERM "$LSN_PID"; wait "$LSN_PID" || true
  rm -rf "$WORK/listener-data"
done

# --- openhqm serve on the embedded queue (fsync on every group commit) --------
OHQ_PORT=$(port)
"$BIN" serve --host 127.0.0.1 --port "$OHQ_PORT" --data-dir "$WORK/data" \
  --set monitoring.log_level=WARNING > "$WORK/openhqm.log" 2>&1 &
OHQ_PID=$!; PIDS+=("$OHQ_PID")
wait_http "http://127.0.0.1:$OHQ_PORT/health/live"
sleep 1
IDLE_RSS=$(rss_kib "$OHQ_PID")

echo "measuring openhqm serve: durable submit while its workers run, end to end..." >&2
START=$(date +%s.%N)
read -r OHQ_RPS OHQ_P50 OHQ_P99 OHQ_BAD < <(wrk_run "http://127.0.0.1:$OHQ_PORT/api/v1/submit" -s bench/submit.lua)
LOAD_RSS=$(rss_kib "$OHQ_PID")
ACCEPTED=$(wait_drained "http://127.0.0.1:$OHQ_PORT")
END=$(date +%s.%N)
PEAK_RSS=$(awk '/VmHWM/ {print $2}' "/proc/$OHQ_PID/status")
E2E_RPS=$(python3 -c "print(round($ACCEPTED / ($END - $START)))")
kill -TERM "$OHQ_PID"; wait "$OHQ_PID" || true

python3 - "$WORK" "$ROUNDS" <<PY
import statistics, sys
sys.path.insert(0, "bench")
import rounds as measured
from rounds import median_run
work, rounds = sys.argv[1], int(sys.argv[2])
def runs(name):
    return measured.runs(work, rounds, name)
ngx_runs, lsn_runs = runs("nginx"), runs("listener")
ngx, lsn = median_run(ngx_runs), median_run(lsn_runs)
ratios = sorted(l[0] / n[0] for l, n in zip(lsn_runs, ngx_runs))
ohq, e2e = $OHQ_RPS, $E2E_RPS
W = 52
print()
print(f"machine: $(nproc) cores; wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s on the same machine; {rounds} alternating rounds of nginx and listener (medians)")
print(f"{'measurement':{W}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'vs nginx':>9}")
print(f"{'nginx proxy_pass -> static nginx (baseline)':{W}} {ngx[0]:>9.0f} {ngx[1]:>8.2f} {ngx[2]:>8.2f} {ngx[3]:>8.0f} {1:>9.2f}")
print(f"{'openhqm submit, listener alone (durable, fsynced)':{W}} {lsn[0]:>9.0f} {lsn[1]:>8.2f} {lsn[2]:>8.2f} {sum(r[3] for r in lsn_runs):>8.0f} {statistics.median(ratios):>9.2f}")
print(f"{'openhqm submit, serve (its workers run meanwhile)':{W}} {ohq:>9.0f} {$OHQ_P50:>8.2f} {$OHQ_P99:>8.2f} {$OHQ_BAD:>8} {ohq/ngx[0]:>9.2f}")
print(f"{'openhqm end to end (serve: submit -> COMPLETED)':{W}} {e2e:>9.0f} {'':>8} {'':>8} {'':>8} {e2e/ngx[0]:>9.2f}")
print(f"listener/nginx per round: {', '.join(f'{r:.2f}' for r in ratios)}")
print(f"openhqm RSS: idle {$IDLE_RSS/1024:.1f} MiB, after load {$LOAD_RSS/1024:.1f} MiB, peak {$PEAK_RSS/1024:.1f} MiB; accepted {$ACCEPTED} requests")
PY
