#!/usr/bin/env bash
# Runs Airlock's local stack on loopback.
#
#   ./deploy/local/demo.sh         start (foreground; Ctrl-C stops everything)
#   ./deploy/local/demo.sh stop    stop a stack started from another terminal
#
# Starts on loopback: NATS with JetStream (the event log, data in
# .airlock/demo/nats), a throwaway PostgreSQL with the demo `shop` database,
# airlock-dev-idp (a development token issuer), airlock-control and
# airlock-proxy (with a self-signed certificate made here), all configured by
# .airlock/demo/airlock.yaml. It prints the command an agent uses.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
state="$repo/.airlock/demo"
NATS_PORT="${AIRLOCK_DEMO_NATS_PORT:-4222}"
PG_PORT="${AIRLOCK_DEMO_PG_PORT:-55432}"
IDP_PORT="${AIRLOCK_DEMO_IDP_PORT:-9400}"
CONTROL_PORT="${AIRLOCK_DEMO_CONTROL_PORT:-7070}"
PROXY_PORT="${AIRLOCK_DEMO_PROXY_PORT:-6432}"
REVIEWER_PORT="${AIRLOCK_DEMO_REVIEWER_PORT:-8080}"
# Group object ids of the demo tenant (any ids work with the dev issuer).
AGENTS_GROUP=6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11
REVIEWERS_GROUP=0b7e2f4c-8a5d-4c1e-9f3a-7d2c6b1e4a90

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
  for svc in reviewer proxy control idp; do
    if [ -f "$state/$svc.pid" ]; then
      kill "$(cat "$state/$svc.pid")" 2>/dev/null && stopped=1 || true
      rm -f "$state/$svc.pid"
    fi
  done
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

# --- Airlock ---------------------------------------------------------------------
say "building the Airlock binaries (release; the first build takes a few minutes)"
(cd "$repo" && cargo build --release --locked -q -p airlock-proxy -p airlock-control -p airlock-dev-idp -p airlock-reviewer)
bin="$repo/target/release"

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  say "$2 did not start; see .airlock/demo/$2.log"
  return 1
}

start() { # name, then the command
  local name="$1"; shift
  if [ -f "$state/$name.pid" ] && kill -0 "$(cat "$state/$name.pid")" 2>/dev/null; then
    return 0
  fi
  "$@" >"$state/$name.log" 2>&1 &
  echo $! >"$state/$name.pid"
}

# A self-signed certificate for the proxy (agents use sslmode=require).
if [ ! -f "$state/proxy.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$state/proxy.key" -out "$state/proxy.crt" >/dev/null 2>&1
  chmod 600 "$state/proxy.key"
fi

# Signing keys: every event the control plane or the proxy appends is signed
# by its writer (signing.trust below lists the public halves), and the
# control plane signs checkpoints; auditors get the public keys.
if [ ! -f "$state/checkpoint.key" ]; then
  "$bin/airlock-control" signing-key --private "$state/checkpoint.key" --public "$state/checkpoint.pub" >/dev/null
fi
for writer in control proxy; do
  if [ ! -f "$state/$writer-signing.key" ]; then
    "$bin/airlock-control" signing-key --private "$state/$writer-signing.key" --public "$state/$writer-signing.pub" >/dev/null
  fi
done

cat >"$state/airlock.yaml" <<YAML
# Airlock local demo. Every binary reads its own sections of this file.
nats:
  url: nats://127.0.0.1:$NATS_PORT
  stream: AIRLOCK
  replicas: 1
identity:
  issuer: http://127.0.0.1:$IDP_PORT          # airlock-dev-idp: development only
  audience: api://airlock
  groups_claim: groups
  group_names:
    db-maintenance-agents: $AGENTS_GROUP
    db-reviewers: $REVIEWERS_GROUP
approvals:
  reviewers: [db-reviewers]
  timeout: 15m
control:
  listen: 127.0.0.1:$CONTROL_PORT
  signing_key: $state/control-signing.key
  checkpoints: { signing_key: $state/checkpoint.key, interval: 30s }
  # The proxy attaches over loopback without a client certificate: development only.
  allow_insecure_attach_loopback: true
reviewer:
  listen: 127.0.0.1:$REVIEWER_PORT
  control: http://127.0.0.1:$CONTROL_PORT
  public_url: http://127.0.0.1:$REVIEWER_PORT
  oidc:
    client_id: airlock-reviewer-demo      # registered in .airlock/demo/login.yaml
proxy:
  listen: 127.0.0.1:$PROXY_PORT
  control: http://127.0.0.1:$CONTROL_PORT
  tls: { cert: $state/proxy.crt, key: $state/proxy.key }
  reviewer_url: http://127.0.0.1:$REVIEWER_PORT
  proxy_id: proxy-1
  signing_key: $state/proxy-signing.key
connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:$PG_PORT/shop
    password_file: $state/maint.password
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules:
      - match: SELECT
        action: allow
      - match: DELETE|DROP|UPDATE
        action: require-approval
    record: true
shadow_policies:
  # Tried on live traffic, never enforced: what holding every INSERT too
  # would do (airlock-control replay shows where it disagrees).
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules:
      - match: SELECT
        action: allow
      - match: DELETE|DROP|UPDATE|INSERT
        action: require-approval
    record: true
signing:
  # Who may write the log: the control plane's decisions and the proxy's
  # facts are accepted only under these keys.
  trust:
    - { role: control, key: $state/control-signing.pub }
    - { role: proxy, key: $state/proxy-signing.pub, id: proxy-1 }
YAML

# Browser sign-in for the reviewer UI: test users the dev issuer offers.
cat >"$state/login.yaml" <<LOGIN
# airlock-dev-idp browser sign-in: development only.
audience: api://airlock
ttl: 8h
clients:
  - client_id: airlock-reviewer-demo
    redirect_uris: [http://127.0.0.1:$REVIEWER_PORT/auth/callback]
  - client_id: airlock-cli        # airlock-control login (device sign-in)
    device: true
users:
  - { sub: 3a9e5b11-alice, name: Alice Reviewer, groups: [$REVIEWERS_GROUP] }
  - { sub: 8c4d2f70-bob, name: Bob Reviewer, groups: [$REVIEWERS_GROUP] }
  - { sub: 1e6b9a33-erin, name: Erin (not a reviewer), groups: [$AGENTS_GROUP] }
LOGIN

# Every binary's part of the file, its files and its secrets, checked at once.
"$bin/airlock-control" config check --config "$state/airlock.yaml"

start idp "$bin/airlock-dev-idp" serve --listen "127.0.0.1:$IDP_PORT" \
  --issuer "http://127.0.0.1:$IDP_PORT" --key-file "$state/idp.key" --login-config "$state/login.yaml"
wait_port "$IDP_PORT" idp
start control "$bin/airlock-control" serve --config "$state/airlock.yaml"
wait_port "$CONTROL_PORT" control
start proxy "$bin/airlock-proxy" --config "$state/airlock.yaml"
wait_port "$PROXY_PORT" proxy
start reviewer "$bin/airlock-reviewer" --config "$state/airlock.yaml"
wait_port "$REVIEWER_PORT" reviewer

mint() {
  "$bin/airlock-dev-idp" token --key-file "$state/idp.key" --issuer "http://127.0.0.1:$IDP_PORT" \
    --audience api://airlock "$@"
}
agent_token="$(mint --sub 7d0c1f2e-agent-7 --name agent-7 --app --group "$AGENTS_GROUP" --ttl 8h)"
reviewer_token="$(mint --sub 3a9e5b11-alice --name "Alice Reviewer" --group "$REVIEWERS_GROUP" --ttl 8h)"
echo "$agent_token" >"$state/agent.token"
echo "$reviewer_token" >"$state/reviewer.token"
chmod 600 "$state/agent.token" "$state/reviewer.token"

cat >&2 <<INFO

  Airlock is running (config: .airlock/demo/airlock.yaml).

  Agent (identity agent-7, group db-maintenance-agents):
    PGPASSWORD="\$(cat .airlock/demo/agent.token)" psql "host=127.0.0.1 port=$PROXY_PORT dbname=prod-maintenance user=agent-7 sslmode=require"
    SELECT runs at once; DELETE, DROP and UPDATE wait for a reviewer.

  Reviewer web UI: http://127.0.0.1:$REVIEWER_PORT/
    Sign in as "Alice Reviewer" (or "Bob Reviewer"; both in db-reviewers) on the
    development issuer's page, then approve or deny held statements in the inbox.
  Reviewer REST API (token of Alice Reviewer in .airlock/demo/reviewer.token):
      curl -s -H "authorization: Bearer \$(cat .airlock/demo/reviewer.token)" \\
        'http://127.0.0.1:$REVIEWER_PORT/api/v1/requests?state=pending'
      curl -s -H "authorization: Bearer \$(cat .airlock/demo/reviewer.token)" -H 'content-type: application/json' \\
        -d '{"reason":"ok"}' http://127.0.0.1:$REVIEWER_PORT/api/v1/requests/<id from the NOTICE>/approve
      curl -sN -H "authorization: Bearer \$(cat .airlock/demo/reviewer.token)" http://127.0.0.1:$REVIEWER_PORT/api/v1/events
    (gRPC on 127.0.0.1:$CONTROL_PORT with reflection works too, e.g. grpcurl airlock.v1.ReviewerService/ListRequests.)

  Audit        ./target/release/airlock-control verify --config .airlock/demo/airlock.yaml --checkpoint-key .airlock/demo/checkpoint.pub
               ./target/release/airlock-control replay --config .airlock/demo/airlock.yaml
               ./target/release/airlock-control export --config .airlock/demo/airlock.yaml --from 1
  Database     psql "host=127.0.0.1 port=$PG_PORT dbname=shop user=postgres"   (direct, for checking)
  Logs         .airlock/demo/*.log
  Stop         ./deploy/local/demo.sh stop   (or Ctrl-C here)

INFO

if [ "${AIRLOCK_DEMO_FOREGROUND:-1}" = 1 ]; then
  trap 'echo; stop_all; exit 0' INT TERM
  say "running; Ctrl-C stops everything"
  while true; do
    for svc in nats idp control proxy reviewer; do
      if ! kill -0 "$(cat "$state/$svc.pid" 2>/dev/null)" 2>/dev/null; then
        say "$svc exited; see .airlock/demo/$svc.log"
        stop_all
        exit 1
      fi
    done
    sleep 1
  done
fi
