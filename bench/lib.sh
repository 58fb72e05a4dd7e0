# Shared set-up and helpers of the benchmark scripts: settings, a scratch
# dir cleaned up (with every process in PIDS, and nginx) on exit, tool
# installation, free ports, readiness waits, RSS, and a wrk run reduced to
# "req/s p50 p99 non2xx". Sourced from the repository root.

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/openhqm-target}
BIN="$CARGO_TARGET_DIR/release/openhqm"
BACKEND_BIN="$CARGO_TARGET_DIR/release/examples/bench_backend"
WORK=$(mktemp -d /tmp/openhqm-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q wrk nginx >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk nginx >/dev/null; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# wrk output -> "req_per_s p50_ms p99_ms non2xx"
wrk_run() {
  local url=$1; shift
  wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$url" > "$WORK/wrk.out" 2>&1
  python3 - "$WORK/wrk.out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(label):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % label, text, re.M)
    if not m: return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errs = re.search(r"Socket errors:.*", text)
print(f"{rps:.0f} {ms('50'):.2f} {ms('99'):.2f} {bad.group(1) if bad else 0}")
if errs: print(errs.group(0), file=sys.stderr)
PY
}

# Starts nginx with proxy_pass on port $1 to a keep-alive upstream at
# 127.0.0.1:$2; with a third argument `static`, nginx also serves $2 itself,
# answering every request with a small JSON body. Stop it with stop_nginx.
start_nginx() {
  local proxy=$1 upstream=$2 static=""
  if [ "${3:-}" = static ]; then
    static="server { listen 127.0.0.1:$upstream; location / { default_type application/json; return 200 '{\"ok\":true}'; } }"
  fi
  cat > "$WORK/nginx.conf" <<NGX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$upstream; keepalive 128; }
  $static
  server {
    listen 127.0.0.1:$proxy;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
  "$NGINX" -c "$WORK/nginx.conf" -p "$WORK"
  wait_http "http://127.0.0.1:$proxy/"
}
stop_nginx() { kill "$(cat "$WORK/nginx.pid")"; rm -f "$WORK/nginx.pid"; }

# The value of one Prometheus sample from openhqm at $1 (a base URL).
metric() { curl -fs "$1/metrics" | awk -v m="$2" 'index($0, m) == 1 {v = $NF} END {print v + 0}'; }

# Waits until openhqm at $1 has finished (completed or failed for good) as
# many requests as it accepted; prints the number accepted.
wait_drained() {
  local accepted done failed
  accepted=$(metric "$1" 'openhqm_api_requests_total{method="POST",route="/api/v1/submit",status="202"}')
  while :; do
    done=$(metric "$1" 'openhqm_worker_processing_duration_seconds_count{outcome="completed"}')
    failed=$(metric "$1" 'openhqm_worker_processing_duration_seconds_count{outcome="failed"}')
    [ "$((${done:-0} + ${failed:-0}))" -ge "$accepted" ] && break
    sleep 0.05
  done
  echo "$accepted"
}
