#!/usr/bin/env bash
# `make conformance`: schemathesis (every check, every phase) against a running authd with
# openapi.yaml, on its own throwaway PostgreSQL. Installs schemathesis into .venv-conformance.
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5
PROMETHEUS_CLIENT_VERSION=0.26.0
venv=.venv-conformance
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION" ||
  ! "$venv/bin/python" -c "import prometheus_client" 2>/dev/null; then
  echo "conformance: installing schemathesis $SCHEMATHESIS_VERSION into $venv" >&2
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian splits venv out of python3; install it when we can.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null) >&2
    fi
    rm -rf "$venv"
    python3 -m venv "$venv" || { echo "conformance: python3 -m venv failed (install python3-venv)" >&2; exit 1; }
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
    "prometheus-client==$PROMETHEUS_CLIENT_VERSION"
fi
tmp=$(mktemp -d /tmp/authd-conformance-XXXXXX)
chmod 755 "$tmp"
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  scripts/pg.sh stop "$tmp/pg" || true
  rm -rf "$tmp"
}
trap cleanup EXIT
export PG_FAST_UNSAFE=1
pgport=$(scripts/pg.sh start "$tmp/pg" conformance)
cargo build --quiet --bins
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
# Throttle limits high enough for a fuzzer's failed logins; everything else as shipped.
env -i PATH="$PATH" DATABASE_URL="postgres://postgres@127.0.0.1:$pgport/conformance" \
  SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" \
  BIND="127.0.0.1:$port" BCRYPT_COST=4 LOGIN_MAX_FAILURES=100000 LOGIN_MAX_FAILURES_PER_IP=1000000 REGISTER_MAX_PER_IP=1000000 \
  RESET_MAX_PER_EMAIL=1000000 RESET_MAX_PER_IP=1000000 \
  RUST_LOG=warn target/debug/authd 2>"$tmp/authd.log" &
pid=$!
for _ in $(seq 100); do curl -fs "$base/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$base/healthz" >/dev/null || { cat "$tmp/authd.log"; exit 1; }
status=0
AUTHD_BASE="$base" AUTHD_DSN="postgres://postgres@127.0.0.1:$pgport/conformance" \
  PATH="$(scripts/pg.sh bindir "$tmp/pg"):$PATH" SCHEMATHESIS_HOOKS=tests.conformance.hooks PYTHONPATH=. \
  "$venv/bin/schemathesis" run openapi.yaml --url "$base" --checks all --max-examples "${CONFORMANCE_EXAMPLES:-40}" \
  --generation-codec ascii --seed "${CONFORMANCE_SEED:-1}" --no-color \
  --report-dir "$tmp/report" "$@" || status=$?
# /metrics, read by the Prometheus project's own Python parser of the text format.
if ! curl -fs "$base/metrics" | "$venv/bin/python" -c '
import sys
from prometheus_client.parser import text_string_to_metric_families
families = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
for name in ("authd_http_requests", "authd_http_request_duration_seconds", "authd_logins",
             "authd_registrations", "authd_db_pool_connections", "authd_queue_depth", "authd_build_info"):
    assert name in families, name
print("conformance: /metrics parsed by prometheus_client: %d families" % len(families))
'; then
  echo "conformance: /metrics does not parse as the Prometheus text format" >&2
  status=1
fi
if ! kill -0 "$pid" 2>/dev/null; then
  echo "conformance: authd died during the run" >&2
  cat "$tmp/authd.log" >&2
  status=1
fi
if grep -q "panicked" "$tmp/authd.log"; then
  echo "conformance: a handler panicked:" >&2
  grep -A3 panicked "$tmp/authd.log" >&2
  status=1
fi
exit $status
