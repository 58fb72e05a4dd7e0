#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (curl,
# redis-server), then runs formatting and lint checks and every test (unit,
# conformance, HTTP API against real servers on 127.0.0.1, Redis backends on
# private redis-servers, and the real binary under kill -9).
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outside the clone so repeated runs reuse compiled dependencies.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/openhqm-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need cargo; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
# The binary tests signal child processes with kill(1), probe with curl and
# count the server's fsyncs with strace; the TLS test makes certificates
# with openssl and serves HTTPS from python3.
if ! need kill || ! need curl || ! need openssl || ! need python3 || ! need strace; then
  export DEBIAN_FRONTEND=noninteractive
  pkgs="procps curl openssl python3 strace"
  apt-get install -y -q $pkgs >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q $pkgs; }
fi
# Tests that need Redis start their own redis-server on a free 127.0.0.1 port
# (crates/openhqm-redis-testkit) and fail, rather than skip, without it.
if ! need redis-server; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q redis-server >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q redis-server; }
fi
# The Debian package starts a system redis-server on 6379; the tests do not use it.
# Older distributions ship Redis 6, which lacks what OpenHQM relies on: SET
# ... NX GET (the idempotency claim), and XAUTOCLAIM dropping pending entries
# whose stream entry is gone. Its tests would fail far from the cause.
redis_version=$( (redis-server --version 2>/dev/null || true) | sed -n 's/.* v=\([0-9][0-9.]*\).*/\1/p')
if [ -z "$redis_version" ] || [ "${redis_version%%.*}" -lt 7 ]; then
  echo "OpenHQM needs redis-server 7.0 or later (SET ... NX GET, XAUTOCLAIM), found" \
    "${redis_version:-none whose version it could read}; see https://redis.io/docs/latest/operate/oss_and_stack/install/" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo clippy, without the redis feature"
cargo clippy -p openhqm --no-default-features --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
