#!/usr/bin/env bash
# `make run`: serve authd on 127.0.0.1:8000. With no database configured (no DATABASE_URL or
# DB_NAME in the environment or .env), a project-local PostgreSQL under .pg/ is used.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .env ]; then
  key=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
  printf '# Written by make run for local development. Never commit this file.\nDEBUG=true\nSECRET_KEY=%s\n' "$key" >.env
  echo "run: wrote .env (DEBUG=true, a random SECRET_KEY)"
fi
configured() { [ -n "${DATABASE_URL:-}${DB_NAME:-}" ] || grep -Eq '^[[:space:]]*(DATABASE_URL|DB_NAME)=' .env; }
if ! configured; then
  port=$(scripts/pg.sh start .pg authd)
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/authd"
  echo "run: local PostgreSQL on 127.0.0.1:$port (data in .pg/, stop it with make db-stop)"
fi
cargo build --release --quiet
exec target/release/authd
