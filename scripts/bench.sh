#!/usr/bin/env bash
# `make bench`: a release authd (BCRYPT_COST=12) on its own throwaway PostgreSQL, loaded by
# wrk on this machine; prints the table BENCHMARKS.md holds. Arguments go to bench.py
# (--sweep: also compare WORKERS/DB_POOL_SIZE; --quick: shorter runs).
set -euo pipefail
cd "$(dirname "$0")/.."
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: installing $2 (apt-get install -y $2)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null) >&2
  fi
  command -v "$1" >/dev/null 2>&1 || { echo "bench: $1 is missing; install it: sudo apt-get install -y $2" >&2; exit 1; }
}
need wrk wrk
need ss iproute2
tmp=$(mktemp -d /tmp/authd-bench-XXXXXX)
chmod 755 "$tmp"
cleanup() { scripts/pg.sh stop "$tmp/pg" || true; rm -rf "$tmp"; }
trap cleanup EXIT
port=$(PG_MAX_CONNECTIONS=300 scripts/pg.sh start "$tmp/pg")
cargo build --release --quiet
cargo build --release --quiet --manifest-path bench/bare/Cargo.toml --target-dir target/bare
PATH="$(scripts/pg.sh bindir "$tmp/pg"):$PATH" python3 scripts/bench.py "$port" "$@"
