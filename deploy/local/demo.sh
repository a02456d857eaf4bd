#!/usr/bin/env bash
# Runs Airlock's local stack on loopback.
#
#   ./deploy/local/demo.sh         start (foreground; Ctrl-C stops everything)
#   ./deploy/local/demo.sh stop    stop a stack started from another terminal
#
# Today this starts the parts that exist: NATS with JetStream (the event log)
# and a throwaway PostgreSQL holding the demo `shop` database. The proxy,
# control plane, reviewer API and development identity provider are added
# here as they are built; the script says which ones it could not start.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
state="$repo/.airlock/demo"
NATS_PORT="${AIRLOCK_DEMO_NATS_PORT:-4222}"
PG_PORT="${AIRLOCK_DEMO_PG_PORT:-55432}"

say() { printf 'demo: %s\n' "$*" >&2; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else "$@"
  fi
}

pgbin() {
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 | sed "s|\$|/$1|"
}

stop_all() {
  local stopped=0
  if [ -f "$state/pg/data/postmaster.pid" ]; then
    as_postgres "$(pgbin pg_ctl)" -D "$state/pg/data" -m fast stop >/dev/null 2>&1 && stopped=1 || true
  fi
  if [ -f "$state/nats.pid" ]; then
    kill "$(cat "$state/nats.pid")" 2>/dev/null && stopped=1 || true
    rm -f "$state/nats.pid"
  fi
  [ "$stopped" = 1 ] && say "stopped" || say "nothing was running"
}

if [ "${1:-}" = "stop" ]; then
  stop_all
  exit 0
fi

"$repo/deploy/local/install-deps.sh"
export PATH="$repo/.airlock/bin:$PATH"
mkdir -p "$state"

# --- NATS with JetStream: the event log ---------------------------------------
if [ -f "$state/nats.pid" ] && kill -0 "$(cat "$state/nats.pid")" 2>/dev/null; then
  say "NATS already running (pid $(cat "$state/nats.pid"))"
else
  mkdir -p "$state/nats"
  nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$state/nats" -n airlock-demo \
    >"$state/nats.log" 2>&1 &
  echo $! >"$state/nats.pid"
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break
    sleep 0.1
  done
  say "NATS with JetStream on nats://127.0.0.1:$NATS_PORT (data in .airlock/demo/nats)"
fi

# --- PostgreSQL with the demo database -----------------------------------------
mkdir -p "$state/pg"
if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$state/pg"; fi
if [ ! -f "$state/pg/data/PG_VERSION" ]; then
  as_postgres "$(pgbin initdb)" -D "$state/pg/data" -U postgres -E UTF8 --locale=C --auth=trust >/dev/null
  cat >"$state/pg/data/pg_hba.conf" <<HBA
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
HBA
fi
if ! as_postgres "$(pgbin pg_ctl)" -D "$state/pg/data" status >/dev/null 2>&1; then
  as_postgres "$(pgbin pg_ctl)" -D "$state/pg/data" -l "$state/pg/postgres.log" -w \
    -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c log_statement=all" start >/dev/null
fi
psql_su() { psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
if [ ! -f "$state/maint.password" ]; then
  # A fresh credential for the connection; agents never see it.
  head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$state/maint.password"
  chmod 600 "$state/maint.password"
fi
if [ "$(psql_su -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'shop'")" != 1 ]; then
  psql_su -d postgres -c "CREATE DATABASE shop"
  psql_su -d shop -v ON_ERROR_STOP=1 <<SQL
CREATE TABLE orders (
  id         bigserial PRIMARY KEY,
  customer   text        NOT NULL,
  total_cents integer    NOT NULL,
  status     text        NOT NULL DEFAULT 'open',
  created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO orders (customer, total_cents, status, created_at)
SELECT 'customer-' || g, (g * 137) % 10000, CASE WHEN g % 5 = 0 THEN 'cancelled' ELSE 'open' END,
       now() - g * interval '1 day'
FROM generate_series(1, 50) AS g;
SQL
fi
password="$(cat "$state/maint.password")"
psql_su -d postgres -v ON_ERROR_STOP=1 -v pw="$password" >/dev/null <<'SQL'
SET password_encryption = 'scram-sha-256';
SELECT format('CREATE ROLE maint LOGIN PASSWORD %L', :'pw') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'maint')
\gexec
SELECT format('ALTER ROLE maint PASSWORD %L', :'pw')
\gexec
SQL
psql_su -d shop -c "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO maint; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO maint" >/dev/null
say "PostgreSQL on 127.0.0.1:$PG_PORT: database shop, table orders ($(psql_su -d shop -tAc 'SELECT count(*) FROM orders') rows)"

# --- Airlock -------------------------------------------------------------------
missing=()
for b in airlock-proxy airlock-control airlock-reviewer airlock-dev-idp; do
  [ -x "$repo/target/release/$b" ] || missing+=("$b")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "not started yet, not built yet: ${missing[*]}"
fi

cat >&2 <<INFO

  Event log   nats://127.0.0.1:$NATS_PORT   (stream AIRLOCK is created by the first writer)
  Database    psql "host=127.0.0.1 port=$PG_PORT dbname=shop user=postgres"   (direct, for checking)
  Stop        ./deploy/local/demo.sh stop   (or Ctrl-C here)

INFO

if [ "${AIRLOCK_DEMO_FOREGROUND:-1}" = 1 ]; then
  trap 'echo; stop_all; exit 0' INT TERM
  say "running; Ctrl-C stops everything"
  while kill -0 "$(cat "$state/nats.pid")" 2>/dev/null; do sleep 1; done
  say "NATS exited; see .airlock/demo/nats.log"
  stop_all
fi
