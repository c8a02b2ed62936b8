#!/usr/bin/env bash
# `make test`: unit tests and black-box integration tests against a throwaway PostgreSQL
# (never the `make run` one), torn down afterwards whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d /tmp/authd-test-XXXXXX)
chmod 755 "$tmp"
cleanup() { scripts/pg.sh stop "$tmp/pg" || true; rm -rf "$tmp"; }
trap cleanup EXIT
export PG_FAST_UNSAFE=1
port=$(scripts/pg.sh start "$tmp/pg")
export AUTHD_TEST_PG="host=127.0.0.1 port=$port user=postgres"
export AUTHD_TEST_TMP="$tmp"
cargo build --quiet --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast --status-level fail "$@"
else
  cargo test --no-fail-fast "$@"
fi
