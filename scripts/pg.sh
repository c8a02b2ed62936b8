#!/usr/bin/env bash
# A project-local PostgreSQL cluster, for `make run`, `make test` and `make bench`.
#   scripts/pg.sh start DIR [DB]   initdb on first use, start on a free 127.0.0.1 port, create DB;
#                                  prints the port (also kept in DIR/port)
#   scripts/pg.sh stop DIR         stop it (no error if it is not running)
# As root, initdb and pg_ctl run as the `postgres` user, as they refuse to run as root.
set -euo pipefail
cmd=${1:?usage: pg.sh start|stop DIR [DB]}
dir=$(realpath -m "${2:?usage: pg.sh start|stop DIR [DB]}")
db=${3:-}

find_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$d" ] && command -v pg_ctl >/dev/null 2>&1; then d=$(dirname "$(command -v pg_ctl)"); fi
  echo "$d"
}
bindir=$(find_bindir)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "pg.sh: PostgreSQL server binaries not found; installing them: apt-get install -y postgresql" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2
    bindir=$(find_bindir)
  fi
  if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "pg.sh: PostgreSQL server binaries (initdb, pg_ctl) not found. Install them with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y postgresql" >&2
    exit 1
  fi
fi

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

data="$dir/data"
case "$cmd" in
start)
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir"
    # postgres must be able to reach the folder; a home folder of root is not reachable.
    if ! runuser -u postgres -- test -w "$dir"; then
      echo "pg.sh: the postgres user cannot write $dir (is a parent folder private?)" >&2
      exit 1
    fi
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  port=""
  [ -f "$dir/port" ] && port=$(cat "$dir/port")
  if as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    :
  else
    if [ -z "$port" ] || ! python3 -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; then
      port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    fi
    echo "$port" >"$dir/port"
    opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=${PG_MAX_CONNECTIONS:-300}"
    if [ -n "${PG_FAST_UNSAFE:-}" ]; then opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"; fi
    as_pg "$bindir/pg_ctl" -D "$data" -l "$dir/postgres.log" -o "$opts" -w -t 30 start >/dev/null \
      || { tail -n 20 "$dir/postgres.log" >&2; exit 1; }
  fi
  if [ -n "$db" ]; then
    exists=$("$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'")
    [ "$exists" = 1 ] || "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE \"$db\"" >/dev/null
  fi
  echo "$port"
  ;;
stop)
  if [ -f "$data/PG_VERSION" ]; then
    as_pg "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  ;;
bindir)
  echo "$bindir"
  ;;
*)
  echo "pg.sh: unknown command $cmd" >&2
  exit 2
  ;;
esac
