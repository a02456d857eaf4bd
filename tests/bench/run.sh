#!/usr/bin/env bash
# Airlock's benchmarks, in one run, written to BENCHMARKS.md at the repo root.
#
#   ./tests/bench/run.sh            the full run (about 15 minutes once built)
#   ./tests/bench/run.sh --quick    every part, short and once (a few minutes)
#   ./tests/bench/run.sh --stack    only start the stack and keep it up (for profiling)
#
# What it does: installs what is missing (nats-server, PostgreSQL with
# pgbench, Debian's pgbouncer), builds the release binaries, starts a
# throwaway stack on loopback (NATS JetStream, PostgreSQL, PgBouncer,
# airlock-dev-idp, airlock-control, airlock-proxy) under .airlock/bench/, and
# measures:
#   1. proxy overhead: pgbench -S against PostgreSQL, PgBouncer and Airlock,
#      interleaved (direct, pgbouncer, airlock, direct, ...), several rounds;
#   2. approval round trip (tests/benches/approval.rs), and grant uses
#      (tests/benches/grants.rs, with a second proxy);
#   3. the event log: append throughput, fold rate, start-up with and
#      without a snapshot over 1,000,000 events, decision delivery;
#   4. proxy memory per idle connection (tests/benches/idle.rs);
#   5. the policy crate's criterion bench (cached and uncached verdicts).
# Everything it starts is stopped when it exits, however it exits.
#
# Knobs (environment), with the full run's defaults:
#   BENCH_DURATION=5        seconds per pgbench run
#   BENCH_ROUNDS=3          interleaved rounds (the median is reported)
#   BENCH_CLIENTS="1 8 32"  pgbench client counts
#   BENCH_PROTOCOLS="simple extended prepared"
#   BENCH_SCALE=10          pgbench scale factor (100,000 accounts per unit)
#   BENCH_APPROVALS=500     statements held and approved
#   BENCH_APPROVAL_AGENTS=8 agent sessions holding statements at once
#   BENCH_GRANT_USES=1000   grant uses timed one after another
#   BENCH_IDLE=1000         idle connections for the memory figure
#   BENCH_LOG_EVENTS=1000000  events in the log for part 3
#   BENCH_DECISIONS=1000    decisions timed for part 3
#   BENCH_CRITERION="--warm-up-time 1 --measurement-time 2"   criterion flags
#   BENCH_OUT=BENCHMARKS.md where the report goes (relative to the repo)
#   BENCH_NOTE="..."        a sentence added to the report (say, about load)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
quick=0
stack_only=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --stack) stack_only=1 ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
if [ "$quick" = 1 ]; then
  : "${BENCH_DURATION:=2}" "${BENCH_ROUNDS:=1}" "${BENCH_SCALE:=1}" "${BENCH_APPROVALS:=50}"
  : "${BENCH_IDLE:=100}" "${BENCH_CRITERION:=--warm-up-time 0.2 --measurement-time 0.5}"
  : "${BENCH_LOG_EVENTS:=100000}" "${BENCH_DECISIONS:=200}" "${BENCH_GRANT_USES:=200}"
  : "${BENCH_OUT:=.airlock/bench/BENCHMARKS-quick.md}"
fi
BENCH_DURATION="${BENCH_DURATION:-5}"
BENCH_ROUNDS="${BENCH_ROUNDS:-3}"
BENCH_CLIENTS="${BENCH_CLIENTS:-1 8 32}"
BENCH_PROTOCOLS="${BENCH_PROTOCOLS:-simple extended prepared}"
BENCH_SCALE="${BENCH_SCALE:-10}"
BENCH_GRANT_USES="${BENCH_GRANT_USES:-1000}"
BENCH_APPROVALS="${BENCH_APPROVALS:-500}"
BENCH_APPROVAL_AGENTS="${BENCH_APPROVAL_AGENTS:-8}"
BENCH_IDLE="${BENCH_IDLE:-1000}"
BENCH_LOG_EVENTS="${BENCH_LOG_EVENTS:-1000000}"
BENCH_DECISIONS="${BENCH_DECISIONS:-1000}"
BENCH_CRITERION="${BENCH_CRITERION:---warm-up-time 1 --measurement-time 2}"
BENCH_OUT="${BENCH_OUT:-BENCHMARKS.md}"
BENCH_NOTE="${BENCH_NOTE:-}"

started_at=$(date +%s)
state="$repo/.airlock/bench"
results="$state/results"
say() { printf 'bench: [%4ss] %s\n' "$(($(date +%s) - started_at))" "$*" >&2; }

# --- dependencies ---------------------------------------------------------------
./deploy/local/install-deps.sh
export PATH="$repo/.airlock/bin:$PATH"
# PgBouncer, and GNU time for pgbench's own CPU time (Debian packages).
wanted=()
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || wanted+=(pgbouncer)
[ -x /usr/bin/time ] || wanted+=(time)
if [ "${#wanted[@]}" -gt 0 ]; then
  say "installing ${wanted[*]} (Debian packages)"
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${wanted[@]}" >&2
fi
PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"

# The PostgreSQL server programs, found as the test harness finds them: on
# PATH (or .airlock/bin), else the newest /usr/lib/postgresql/<v>/bin.
# pgbench is taken from beside the server, so the versions match.
pg_bindir() {
  local p
  if p="$(command -v postgres 2>/dev/null)"; then dirname "$(readlink -f "$p")"; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1
}
PGBIN="$(pg_bindir)"
for b in postgres initdb pg_ctl pgbench psql; do
  [ -x "$PGBIN/$b" ] || { echo "run.sh: $b not found in $PGBIN" >&2; exit 1; }
done
PSQL="$PGBIN/psql"
PGBENCH="$PGBIN/pgbench"

# --- build ----------------------------------------------------------------------
say "building release binaries and the bench programs"
cargo build --release -q -p airlock-proxy -p airlock-control -p airlock-dev-idp
cargo bench -q -p airlock-control --no-run --bench log --bench decision 2>&1 | grep -v "^ *Executable" >&2 || true
cargo bench -q -p airlock-e2e --no-run --bench approval --bench idle --bench grants 2>&1 | grep -v '^ *Executable' >&2 || true
bin="$repo/target/release"

# --- the stack ------------------------------------------------------------------
as_postgres() {
  if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else "$@"
  fi
}
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port, name
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "run.sh: $2 did not start; see $state/$2.log" >&2
  return 1
}
pids=()
stop_pid() { # pid: SIGTERM, then SIGKILL after 10 s
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null
}
cleanup() {
  set +e
  # Newest first: the proxy before the log it records to.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
  [ -f "$state/pgbouncer/pgbouncer.pid" ] && stop_pid "$(cat "$state/pgbouncer/pgbouncer.pid")"
  if [ -f "$state/pg/data/postmaster.pid" ]; then
    as_postgres "$PGBIN/pg_ctl" -D "$state/pg/data" -m immediate stop >/dev/null 2>&1
  fi
  [ -n "${NATS_PID:-}" ] && stop_pid "$NATS_PID"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$state"
mkdir -p "$state" "$results"
# 1,000 idle connections need two descriptors each in the proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((BENCH_IDLE * 2 + 200)) ]; then
  echo "run.sh: ulimit -n is $(ulimit -n); $((BENCH_IDLE * 2 + 200)) descriptors are needed for BENCH_IDLE=$BENCH_IDLE" >&2
  exit 1
fi

NATS_PORT=$(free_port); PG_PORT=$(free_port); BOUNCER_PORT=$(free_port)
IDP_PORT=$(free_port); CONTROL_PORT=$(free_port); PROXY_PORT=$(free_port); METRICS_PORT=$(free_port)
PROXY2_PORT=$(free_port); METRICS2_PORT=$(free_port)
AGENTS_GROUP=3c4f8a10-5b2e-4d7a-9c61-0e8f2b7d4a01
REVIEWERS_GROUP=8e2d6b90-1f4c-4a3e-b7d5-6c9a0f1e2b02
DB_PASSWORD="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"

say "starting NATS JetStream, PostgreSQL and PgBouncer"
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$state/nats" -n airlock-bench >"$state/nats.log" 2>&1 &
NATS_PID=$!
wait_port "$NATS_PORT" nats

mkdir -p "$state/pg"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$state/pg"
as_postgres "$PGBIN/initdb" -D "$state/pg/data" -U postgres -E UTF8 --locale=C --no-sync --auth=trust >/dev/null
cat >"$state/pg/data/pg_hba.conf" <<HBA
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
HBA
# Room for BENCH_IDLE proxied sessions (each holds one upstream connection).
as_postgres "$PGBIN/pg_ctl" -D "$state/pg/data" -l "$state/pg/postgres.log" -w -o \
  "-p $PG_PORT -k $state/pg -c listen_addresses=127.0.0.1 -c max_connections=$((BENCH_IDLE + 100))" start >/dev/null
psql_su() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
psql_su -d postgres -v pw="$DB_PASSWORD" >/dev/null <<'SQL'
SET password_encryption = 'scram-sha-256';
SELECT format('CREATE ROLE bench LOGIN PASSWORD %L', :'pw')
\gexec
CREATE DATABASE pgbench OWNER bench;
SQL
say "pgbench -i -s $BENCH_SCALE (directly against PostgreSQL)"
PGPASSWORD="$DB_PASSWORD" "$PGBENCH" -i -q -s "$BENCH_SCALE" -h 127.0.0.1 -p "$PG_PORT" -U bench pgbench \
  >"$state/pgbench-init.log" 2>&1
# The approval bench holds DELETEs on this (empty) table.
PGPASSWORD="$DB_PASSWORD" "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U bench -d pgbench \
  -c "CREATE TABLE airlock_bench_held (id bigint PRIMARY KEY)"

mkdir -p "$state/pgbouncer"
cat >"$state/pgbouncer/pgbouncer.ini" <<INI
[databases]
pgbench = host=127.0.0.1 port=$PG_PORT dbname=pgbench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = plain
auth_file = $state/pgbouncer/userlist.txt
pool_mode = session
max_client_conn = $((BENCH_IDLE + 100))
default_pool_size = $((BENCH_IDLE + 50))
max_db_connections = 0
logfile = $state/pgbouncer/pgbouncer.log
pidfile = $state/pgbouncer/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
INI
printf '"bench" "%s"\n' "$DB_PASSWORD" >"$state/pgbouncer/userlist.txt"
chmod 600 "$state/pgbouncer/userlist.txt"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$state/pgbouncer"
as_postgres "$PGBOUNCER" "$state/pgbouncer/pgbouncer.ini" >"$state/pgbouncer.log" 2>&1 &
wait_port "$BOUNCER_PORT" pgbouncer

say "starting airlock-dev-idp, airlock-control and airlock-proxy"
printf '%s' "$DB_PASSWORD" >"$state/bench.password"
chmod 600 "$state/bench.password"
for writer in control proxy proxy2; do
  rm -f "$state/$writer-signing.key" "$state/$writer-signing.pub"
  "$bin/airlock-control" signing-key --private "$state/$writer-signing.key" --public "$state/$writer-signing.pub" >/dev/null
done
cat >"$state/airlock.yaml" <<YAML
# Written by tests/bench/run.sh for one benchmark run.
nats:
  url: nats://127.0.0.1:$NATS_PORT
  stream: AIRLOCK
  replicas: 1
identity:
  issuer: http://127.0.0.1:$IDP_PORT
  audience: api://airlock
  groups_claim: groups
  group_names:
    bench-agents: $AGENTS_GROUP
    bench-reviewers: $REVIEWERS_GROUP
approvals:
  reviewers: [bench-reviewers]
  timeout: 15m
control:
  listen: 127.0.0.1:$CONTROL_PORT
  replica_id: bench-control
  signing_key: $state/control-signing.key
  # One host, no certificates: the proxy attaches over loopback.
  allow_insecure_attach_loopback: true
proxy:
  listen: 127.0.0.1:$PROXY_PORT
  control: http://127.0.0.1:$CONTROL_PORT
  allow_plaintext_loopback: true
  max_connections: $((BENCH_IDLE + 100))
  proxy_id: bench-proxy
  drain_timeout: 1s
  metrics_listen: 127.0.0.1:$METRICS_PORT
  signing_key: $state/proxy-signing.key
connections:
  - name: bench
    upstream: postgres://bench@127.0.0.1:$PG_PORT/pgbench
    password_file: $state/bench.password
policies:
  - policy: bench-agents
    connection: bench
    rules:
      - match: SELECT
        action: allow
      - match: DELETE
        action: require-approval
    record: true
signing:
  trust:
    - { role: control, key: $state/control-signing.pub }
    - { role: proxy, key: $state/proxy-signing.pub, id: bench-proxy }
    - { role: proxy, key: $state/proxy2-signing.pub, id: bench-proxy-2 }
YAML
export AIRLOCK_LOG=warn
"$bin/airlock-dev-idp" serve --listen "127.0.0.1:$IDP_PORT" --issuer "http://127.0.0.1:$IDP_PORT" \
  --key-file "$state/idp.key" >"$state/idp.log" 2>&1 &
pids+=($!)
wait_port "$IDP_PORT" idp
"$bin/airlock-control" serve --config "$state/airlock.yaml" >"$state/control.log" 2>&1 &
CONTROL_PID=$!
pids+=($!)
wait_port "$CONTROL_PORT" control
"$bin/airlock-proxy" --config "$state/airlock.yaml" >"$state/proxy.log" 2>&1 &
PROXY_PID=$!
pids+=($!)
wait_port "$PROXY_PORT" proxy

mint() {
  "$bin/airlock-dev-idp" token --key-file "$state/idp.key" --issuer "http://127.0.0.1:$IDP_PORT" \
    --audience api://airlock --ttl 4h "$@"
}
AGENT_TOKEN="$(mint --sub bench-agent-oid --name bench-agent --app --group "$AGENTS_GROUP")"
REVIEWER_TOKEN="$(mint --sub bench-reviewer-oid --name "Bench Reviewer" --group "$REVIEWERS_GROUP")"

# The three targets pgbench runs against: name, port, user, database, password.
target_args() {
  case "$1" in
    direct)    echo "$PG_PORT bench pgbench $DB_PASSWORD" ;;
    pgbouncer) echo "$BOUNCER_PORT bench pgbench $DB_PASSWORD" ;;
    airlock)   echo "$PROXY_PORT bench-agent bench $AGENT_TOKEN" ;;
  esac
}
# A login through the proxy works before anything is measured.
PGPASSWORD="$AGENT_TOKEN" "$PSQL" -X -q -h 127.0.0.1 -p "$PROXY_PORT" -U bench-agent -d bench \
  -tAc "SELECT count(*) FROM pgbench_branches" >/dev/null

if [ "$stack_only" = 1 ]; then
  # For profiling by hand: the stack stays up until Ctrl-C.
  {
    echo "export PROXY_PID=$PROXY_PID PROXY_PORT=$PROXY_PORT PG_PORT=$PG_PORT BOUNCER_PORT=$BOUNCER_PORT"
    echo "export CONTROL_PORT=$CONTROL_PORT NATS_PORT=$NATS_PORT METRICS_PORT=$METRICS_PORT PGBENCH=$PGBENCH"
    echo "export AGENT_TOKEN='$AGENT_TOKEN' REVIEWER_TOKEN='$REVIEWER_TOKEN' DB_PASSWORD='$DB_PASSWORD'"
  } >"$state/env.sh"
  say "stack running; its settings are in $state/env.sh; Ctrl-C stops it"
  while true; do sleep 3600 & wait $!; done
fi

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
echo "start $(date -u +%FT%TZ) $(loadavg)" >"$results/load.txt"

# --- part 4 of the issue: memory per idle connection ----------------------------
# Measured first, on a proxy that has served only the login above, so freed
# memory from the throughput runs cannot hide the growth. PgBouncer is
# measured the same way for comparison.
say "memory: $BENCH_IDLE idle connections through airlock-proxy, then PgBouncer"
run_idle() { # label pid port user db password
  AIRLOCK_BENCH_PID="$2" AIRLOCK_BENCH_ADDR="127.0.0.1:$3" AIRLOCK_BENCH_USER="$4" \
  AIRLOCK_BENCH_DB="$5" AIRLOCK_BENCH_PASSWORD="$6" AIRLOCK_BENCH_CONNECTIONS="$BENCH_IDLE" \
  AIRLOCK_BENCH_OUT="$results/idle-$1.json" \
    cargo bench -q -p airlock-e2e --bench idle >"$state/idle-$1.log" 2>&1 \
    || { echo "run.sh: the idle-connection bench failed; see $state/idle-$1.log" >&2; exit 1; }
}
run_idle airlock "$PROXY_PID" "$PROXY_PORT" bench-agent bench "$AGENT_TOKEN"
BOUNCER_PID="$(cat "$state/pgbouncer/pgbouncer.pid")"
run_idle pgbouncer "$BOUNCER_PID" "$BOUNCER_PORT" bench pgbench "$DB_PASSWORD"
echo "memory $(loadavg)" >>"$results/load.txt"

# --- part 1: proxy overhead -----------------------------------------------------
# For each round, for each client count and protocol, the three targets run
# back to back (direct, pgbouncer, airlock), so drift hits all three alike.
ncpu=$(nproc)
runs=0
for _ in $(seq "$BENCH_ROUNDS"); do for c in $BENCH_CLIENTS; do for p in $BENCH_PROTOCOLS; do
  runs=$((runs + 3)); done; done; done
say "pgbench -S: $runs runs of ${BENCH_DURATION}s ($BENCH_ROUNDS rounds x clients {$BENCH_CLIENTS} x {$BENCH_PROTOCOLS} x 3 targets)"
echo "round,clients,protocol,target,tps,latency_ms,failed,median_latency_us" >"$results/pgbench.csv"
# CPU time (user + system, clock ticks) of each server process, cumulative;
# PostgreSQL's is the postmaster's plus its exited backends'.
PG_MASTER_PID="$(head -n1 "$state/pg/data/postmaster.pid")"
ticks() { # pid -> utime+stime+cutime+cstime
  awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat" 2>/dev/null || echo 0
}
cpu_now() { echo "$(ticks "$PROXY_PID") $(ticks "$NATS_PID") $(ticks "$CONTROL_PID") $(ticks "$BOUNCER_PID") $(ticks "$PG_MASTER_PID")"; }
echo "round,clients,protocol,target,transactions,proxy,nats,control,pgbouncer,postgres,pgbench" >"$results/cpu.csv"
HZ="$(getconf CLK_TCK)"
for round in $(seq "$BENCH_ROUNDS"); do
  for c in $BENCH_CLIENTS; do
    for p in $BENCH_PROTOCOLS; do
      for t in direct pgbouncer airlock; do
        read -r port user db password <<<"$(target_args "$t")"
        j=$(( c < ncpu ? c : ncpu ))
        log="$state/pgbench/r$round-c$c-$p-$t"
        mkdir -p "$log"
        # One client: keep every transaction's latency for a true median.
        txlog=()
        [ "$c" = 1 ] && txlog=(-l --log-prefix "$log/tx")
        read -r -a cpu_before <<<"$(cpu_now)"
        if ! PGPASSWORD="$password" /usr/bin/time -f "%U %S" -o "$log/time.txt" "$PGBENCH" -n -S -M "$p" -c "$c" -j "$j" -T "$BENCH_DURATION" \
             "${txlog[@]}" -h 127.0.0.1 -p "$port" -U "$user" "$db" >"$log/out.txt" 2>&1; then
          echo "run.sh: pgbench against $t failed (clients $c, $p); its output:" >&2
          cat "$log/out.txt" >&2
          exit 1
        fi
        tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$log/out.txt" | tail -n1)
        lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$log/out.txt")
        failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$log/out.txt")
        sleep 0.2 # the backends exit and are counted in the postmaster's total
        read -r -a cpu_after <<<"$(cpu_now)"
        tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log/out.txt")
        cpu_line="$round,$c,$p,$t,$tx"
        for k in 0 1 2 3 4; do cpu_line="$cpu_line,$(( cpu_after[k] - cpu_before[k] ))"; done
        pgbench_cpu=$(awk -v hz="$HZ" '{printf "%d", ($1 + $2) * hz}' "$log/time.txt" 2>/dev/null || echo 0)
        echo "$cpu_line,$pgbench_cpu" >>"$results/cpu.csv"
        median=""
        if [ "$c" = 1 ]; then
          # Column 3 of pgbench's transaction log is the latency in us.
          median=$(cat "$log"/tx* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}')
          rm -f "$log"/tx*
        fi
        echo "$round,$c,$p,$t,$tps,$lat,${failed:-0},$median" >>"$results/pgbench.csv"
      done
    done
  done
  say "round $round of $BENCH_ROUNDS done (load $(loadavg))"
  echo "round$round $(loadavg)" >>"$results/load.txt"
done

# Every statement pgbench ran through Airlock is in the log exactly once: the
# recorder has written what it gathered (its linger is milliseconds), then
# the log is read back and counted against pgbench's own transaction count.
sleep 2
if ! "$bin/airlock-control" export --config "$state/airlock.yaml" --from 1 2>"$state/export.err" \
     | python3 "$repo/tests/bench/recorded.py" "$results" >"$state/recorded.txt"; then
  echo "run.sh: the log does not hold every statement pgbench ran through Airlock exactly once: $(cat "$state/recorded.txt") $(tail -3 "$state/export.err")" >&2
  exit 1
fi
say "recorded exactly once: $(cat "$state/recorded.txt")"

# --- part 2: approval round trip ------------------------------------------------
say "approval round trip: $BENCH_APPROVALS held statements, $BENCH_APPROVAL_AGENTS agents at once"
AIRLOCK_BENCH_ADDR="127.0.0.1:$PROXY_PORT" AIRLOCK_BENCH_USER=bench-agent AIRLOCK_BENCH_DB=bench \
AIRLOCK_BENCH_PASSWORD="$AGENT_TOKEN" AIRLOCK_BENCH_REVIEWER_TOKEN="$REVIEWER_TOKEN" \
AIRLOCK_BENCH_CONTROL="http://127.0.0.1:$CONTROL_PORT" AIRLOCK_BENCH_NATS="nats://127.0.0.1:$NATS_PORT" \
AIRLOCK_BENCH_STATEMENTS="$BENCH_APPROVALS" AIRLOCK_BENCH_AGENTS="$BENCH_APPROVAL_AGENTS" \
AIRLOCK_BENCH_OUT="$results/approval.json" \
  cargo bench -q -p airlock-e2e --bench approval >"$state/approval.log" 2>&1 \
  || { echo "run.sh: the approval bench failed; see $state/approval.log" >&2; exit 1; }
echo "approval $(loadavg)" >>"$results/load.txt"
# The same, with statements EXPLAIN cannot take: no estimate, no bounds
# (what bounded execution adds to the release is the difference).
say "approval round trip, unbounded: $BENCH_APPROVALS held statements"
AIRLOCK_BENCH_ADDR="127.0.0.1:$PROXY_PORT" AIRLOCK_BENCH_USER=bench-agent AIRLOCK_BENCH_DB=bench \
AIRLOCK_BENCH_PASSWORD="$AGENT_TOKEN" AIRLOCK_BENCH_REVIEWER_TOKEN="$REVIEWER_TOKEN" \
AIRLOCK_BENCH_CONTROL="http://127.0.0.1:$CONTROL_PORT" AIRLOCK_BENCH_NATS="nats://127.0.0.1:$NATS_PORT" \
AIRLOCK_BENCH_STATEMENTS="$BENCH_APPROVALS" AIRLOCK_BENCH_AGENTS="$BENCH_APPROVAL_AGENTS" \
AIRLOCK_BENCH_APPROVAL_FORM=unbounded AIRLOCK_BENCH_OUT="$results/approval-unbounded.json" \
  cargo bench -q -p airlock-e2e --bench approval >"$state/approval-unbounded.log" 2>&1 \
  || { echo "run.sh: the unbounded approval bench failed; see $state/approval-unbounded.log" >&2; exit 1; }

# --- part 2b: grants ------------------------------------------------------------
# A second proxy on the same control plane and log, for uses of one grant
# racing from two proxies; stopped after.
say "grants: uses at one client, and two proxies racing on one grant"
sed -e "s/^  listen: 127.0.0.1:$PROXY_PORT\$/  listen: 127.0.0.1:$PROXY2_PORT/" \
    -e "s/^  proxy_id: bench-proxy\$/  proxy_id: bench-proxy-2/" \
    -e "s/^  metrics_listen: 127.0.0.1:$METRICS_PORT\$/  metrics_listen: 127.0.0.1:$METRICS2_PORT/" \
    -e "s#^  signing_key: $state/proxy-signing.key\$#  signing_key: $state/proxy2-signing.key#" \
    "$state/airlock.yaml" >"$state/airlock-2.yaml"
"$bin/airlock-proxy" --config "$state/airlock-2.yaml" >"$state/proxy2.log" 2>&1 &
PROXY2_PID=$!
pids+=($!)
wait_port "$PROXY2_PORT" proxy2
AIRLOCK_BENCH_ADDR="127.0.0.1:$PROXY_PORT" AIRLOCK_BENCH_ADDRS="127.0.0.1:$PROXY_PORT,127.0.0.1:$PROXY2_PORT" \
AIRLOCK_BENCH_USER=bench-agent AIRLOCK_BENCH_DB=bench \
AIRLOCK_BENCH_PASSWORD="$AGENT_TOKEN" AIRLOCK_BENCH_REVIEWER_TOKEN="$REVIEWER_TOKEN" \
AIRLOCK_BENCH_CONTROL="http://127.0.0.1:$CONTROL_PORT" \
AIRLOCK_BENCH_GRANT_USES="$BENCH_GRANT_USES" AIRLOCK_BENCH_OUT="$results/grants.json" \
  cargo bench -q -p airlock-e2e --bench grants >"$state/grants.log" 2>&1 \
  || { echo "run.sh: the grants bench failed; see $state/grants.log" >&2; exit 1; }
kill "$PROXY2_PID" 2>/dev/null || true
wait "$PROXY2_PID" 2>/dev/null || true
echo "grants $(loadavg)" >>"$results/load.txt"

# --- part 3: the event log ------------------------------------------------------
# Its own throwaway nats-server (the harness's): appends from many concurrent
# recorded sessions, the fold over the whole log, start-up with and without
# a snapshot (control-plane/benches/log.rs); and decision delivery from a
# vote to the proxy's Attach stream (control-plane/benches/decision.rs).
say "event log: $BENCH_LOG_EVENTS events (append, fold, start-up), decision delivery"
AIRLOCK_BENCH_EVENTS="$BENCH_LOG_EVENTS" cargo bench -q -p airlock-control --bench log \
  >"$state/log.txt" 2>"$state/log.err" \
  || { echo "run.sh: the log bench failed; see $state/log.err" >&2; exit 1; }
AIRLOCK_BENCH_DECISIONS="$BENCH_DECISIONS" cargo bench -q -p airlock-control --bench decision \
  >"$state/decision.txt" 2>"$state/decision.err" \
  || { echo "run.sh: the decision bench failed; see $state/decision.err" >&2; exit 1; }
tail -n 1 "$state/log.txt" >"$results/log.json"
tail -n 1 "$state/decision.txt" >"$results/decision.json"
python3 - "$results" <<'PY'
import json, os, sys
results = sys.argv[1]
log = json.load(open(os.path.join(results, "log.json")))
dec = json.load(open(os.path.join(results, "decision.json")))
events = int(log["events"])
lines = [
    f"One nats-server (JetStream, file storage, R1) on loopback; {events:,} events written as "
    f"{int(log['sessions']):,} recorded sessions of 9 events each (opened, a read, three reads "
    f"recorded together in one event, a held DELETE requested, voted, granted and run, a refused DROP, closed), {log['concurrency']} sessions at once, "
    "each on its own hash chains (every append acknowledged, with optimistic concurrency on its subject).",
    "",
    "| measure | figure |",
    "|---|---|",
    f"| append throughput, {log['concurrency']} concurrent sessions | {log['append_events_per_second']:,.0f} events/s |",
    f"| fold (read from JetStream, decode, fold), whole log | {log['fold_events_per_second']:,.0f} events/s |",
    f"| start-up without a snapshot ({events:,} events) | {log['startup_without_snapshot_seconds']:.2f} s |",
    f"| snapshot size / time to store | {log['snapshot_bytes'] / 1e6:.1f} MB / {log['snapshot_save_seconds']:.2f} s |",
    f"| start-up with a snapshot (load it, then fold {int(log['events_after_snapshot']):,} newer events) | "
    f"{log['startup_with_snapshot_seconds']:.2f} s |",
    "",
    f"Decision delivery ({dec['decisions']} requests, one control-plane replica, a proxy's Attach stream "
    "and a reviewer's Watch stream over gRPC on loopback):",
    "",
    "| measure | p50 | p99 |",
    "|---|---|---|",
    f"| `Decide` called -> decision on the proxy's Attach stream | {dec['call_to_proxy']['p50_ms']:.2f} ms | {dec['call_to_proxy']['p99_ms']:.2f} ms |",
    f"| vote acknowledged -> decision on the Attach stream | {dec['ack_to_proxy']['p50_ms']:.3f} ms | {dec['ack_to_proxy']['p99_ms']:.3f} ms |",
    f"| `ApprovalRequested` stored -> on reviewers' Watch stream | {dec['requested_to_watch']['p50_ms']:.2f} ms | {dec['requested_to_watch']['p99_ms']:.2f} ms |",
    "",
    "`Decide` returns once the replica has folded the outcome it appended, and the Attach stream is fed "
    "from the same fold, so the decision is usually on its way to the proxy before the vote's "
    "acknowledgement reaches the reviewer: the second row is near zero by construction, and the first is "
    "the figure to read. Reproduce: `cargo bench -p airlock-control --bench log` "
    "(`AIRLOCK_BENCH_EVENTS`) and `--bench decision` (`AIRLOCK_BENCH_DECISIONS`).",
]
open(os.path.join(results, "log.md"), "w").write("\n".join(lines) + "\n")
PY
echo "log $(loadavg)" >>"$results/load.txt"

# --- part 5: classification -----------------------------------------------------
say "policy crate criterion bench ($BENCH_CRITERION)"
# shellcheck disable=SC2086
cargo bench -q -p airlock-policy --bench verdict -- $BENCH_CRITERION \
  >"$results/criterion.txt" 2>"$state/criterion.log" \
  || { echo "run.sh: the criterion bench failed; see $state/criterion.log" >&2; exit 1; }
echo "end $(date -u +%FT%TZ) $(loadavg)" >>"$results/load.txt"

# --- the report -----------------------------------------------------------------
elapsed=$(($(date +%s) - started_at))
command_line="./tests/bench/run.sh"
[ "$quick" = 1 ] && command_line="./tests/bench/run.sh --quick"
{
  echo "cores=$(nproc)"
  echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
  echo "memory_kib=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
  echo "kernel=$(uname -r)"
  echo "postgres=$("$PGBIN/postgres" --version)"
  echo "pgbench=$("$PGBENCH" --version)"
  echo "pgbouncer=$("$PGBOUNCER" --version | head -n1)"
  echo "nats=$(nats-server --version)"
  echo "rustc=$(rustc --version)"
  echo "commit=$(git rev-parse HEAD)$(git diff --quiet HEAD -- data-plane tests/bench tests/benches crates/policy || echo ' (with uncommitted changes)')"
  echo "date=$(date -u +%F)"
  echo "command=$command_line"
  echo "elapsed_s=$elapsed"
  echo "duration=$BENCH_DURATION"
  echo "rounds=$BENCH_ROUNDS"
  echo "scale=$BENCH_SCALE"
  echo "criterion=$BENCH_CRITERION"
  echo "note=$BENCH_NOTE"
  echo "hz=$HZ"
} >"$results/meta.txt"
python3 "$repo/tests/bench/report.py" "$results" "$repo/$BENCH_OUT"
say "done in ${elapsed}s; wrote $BENCH_OUT"
