#!/usr/bin/env bash
# `make browser-test`: authd's cookies, CORS and Origin check as a real browser sees them.
# Headless Debian Chromium, driven by playwright-core (tests/browser/test.mjs), against a
# debug authd on its own throwaway PostgreSQL, with two static pages on other ports of the
# same host: an allowed front end (in ALLOWED_ORIGINS) and an evil one (not).
# Installs what it needs when it is missing: Debian's chromium (as root, with apt-get) and
# playwright-core into tests/browser/node_modules (gitignored; playwright never downloads a
# browser here). Everything it starts is stopped on the way out, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "browser-test: $CHROMIUM not found; installing it: apt-get install -y chromium" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) >&2
  fi
  if [ ! -x "$CHROMIUM" ]; then
    echo "browser-test: $CHROMIUM not found. Install it with: sudo apt-get install -y chromium" >&2
    exit 1
  fi
fi
command -v node >/dev/null 2>&1 || { echo "browser-test: node not found (Node.js 20 or newer)" >&2; exit 1; }
want=$(node -p 'require("./tests/browser/package.json").dependencies["playwright-core"]')
have=$(node -p 'try { require("./tests/browser/node_modules/playwright-core/package.json").version } catch { "" }')
if [ "$have" != "$want" ]; then
  echo "browser-test: installing playwright-core $want into tests/browser/node_modules" >&2
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

tmp=$(mktemp -d /tmp/authd-browser-XXXXXX)
chmod 755 "$tmp"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  scripts/pg.sh stop "$tmp/pg" || true
  rm -rf "$tmp"
}
trap cleanup EXIT
export PG_FAST_UNSAFE=1
pgport=$(scripts/pg.sh start "$tmp/pg" browser)
cargo build --quiet --bins

# Three distinct free ports: A for authd, B for the allowed page, C for the evil one.
read -r port_a port_b port_c < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
authd="http://127.0.0.1:$port_a"
allowed="http://127.0.0.1:$port_b"
evil="http://127.0.0.1:$port_c"

# DEBUG=true: cookies without Secure, so that the browser keeps them over plain http.
env -i PATH="$PATH" DATABASE_URL="postgres://postgres@127.0.0.1:$pgport/browser" \
  SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" \
  DEBUG=true BIND="127.0.0.1:$port_a" BCRYPT_COST=4 ALLOWED_ORIGINS="$allowed" \
  RUST_LOG=info "${CARGO_TARGET_DIR:-target}/debug/authd" 2>"$tmp/authd.log" &
pids+=($!)
for port in "$port_b" "$port_c"; do
  python3 -m http.server --bind 127.0.0.1 --directory tests/browser/pages "$port" \
    >>"$tmp/pages.log" 2>&1 &
  pids+=($!)
done
for url in "$authd/healthz" "$allowed/allowed.html" "$evil/evil.html"; do
  for _ in $(seq 100); do curl -fs "$url" >/dev/null 2>&1 && break; sleep 0.1; done
  if ! curl -fs "$url" >/dev/null; then
    echo "browser-test: $url does not answer" >&2
    cat "$tmp/authd.log" "$tmp/pages.log" >&2
    exit 1
  fi
done

status=0
AUTHD_URL="$authd" ALLOWED_URL="$allowed" EVIL_URL="$evil" CHROMIUM="$CHROMIUM" \
  AUTHD_LOG="$tmp/authd.log" timeout 150 node tests/browser/test.mjs || status=$?
if ! kill -0 "${pids[0]}" 2>/dev/null; then
  echo "browser-test: authd died during the run" >&2
  status=1
fi
if grep -q "panicked" "$tmp/authd.log"; then
  echo "browser-test: a handler panicked:" >&2
  grep -A3 panicked "$tmp/authd.log" >&2
  status=1
fi
if [ "$status" != 0 ]; then
  echo "browser-test: authd's log:" >&2
  tail -n 60 "$tmp/authd.log" >&2
fi
exit $status
