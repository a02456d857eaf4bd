#!/usr/bin/env bash
# Compares two builds of Airlock at one client, interleaved, on one machine:
# each worktree's own stack (./tests/bench/run.sh --stack) runs at once, and
# pgbench's select-only script alternates between them, so a change in the
# machine's load hits both alike. For each round and target it prints the
# average latency pgbench reports and the CPU time per transaction of the
# proxy, nats-server, the control plane and PostgreSQL (from /proc).
#
#   ./tests/bench/ab.sh WORKTREE_A WORKTREE_B
#
# Each worktree is a checkout of the repository (git worktree add) whose
# ./tests/bench/run.sh has --stack; its release binaries are built by it.
#   AB_ROUNDS=5       rounds (each runs A, then B, each direct and through Airlock)
#   AB_SECONDS=10     seconds per pgbench run
#   AB_PROTOCOL=simple   pgbench -M
set -euo pipefail
[ $# = 2 ] || { sed -n 2,16p "$0" >&2; exit 2; }
ROUNDS="${AB_ROUNDS:-5}"
SECONDS_PER_RUN="${AB_SECONDS:-10}"
PROTOCOL="${AB_PROTOCOL:-simple}"
say() { printf 'ab: %s\n' "$*" >&2; }

starters=()
stop() {
  set +e
  # run.sh stops its stack on SIGTERM (SIGINT is ignored by a script
  # started in the background).
  local p
  for p in "${starters[@]}"; do
    pkill -TERM -P "$p" -f "tests/bench/run.sh --stack"
    kill -TERM "$p" 2>/dev/null
  done
  wait 2>/dev/null
}
trap stop EXIT

# One stack per worktree, one after the other (each builds, then starts).
for wt in "$1" "$2"; do
  rm -f "$wt/.airlock/bench/env.sh"
  mkdir -p "$wt/.airlock"
  say "starting the stack of $wt"
  (cd "$wt" && BENCH_IDLE=100 BENCH_SCALE="${BENCH_SCALE:-10}" ./tests/bench/run.sh --stack \
    >"$wt/.airlock/ab-stack.log" 2>&1) &
  starters+=($!)
  for _ in $(seq 1800); do
    [ -f "$wt/.airlock/bench/env.sh" ] && break
    kill -0 "${starters[-1]}" 2>/dev/null || { say "the stack of $wt failed: $wt/.airlock/ab-stack.log"; exit 1; }
    sleep 1
  done
done

# CPU seconds (user + system) of a process and its children that ended.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15 + $16 + $17) / hz}' "/proc/$1/stat"; }
# The pids of a stack's processes: proxy, nats-server, control, postmaster.
pids_of() { # worktree
  local state="$1/.airlock/bench"
  # shellcheck disable=SC1091
  . "$state/env.sh"
  local nats control postmaster
  nats="$(pgrep -f "nats-server .*-p $NATS_PORT" | head -n1)"
  control="$(pgrep -f "airlock-control serve --config $state/airlock.yaml" | head -n1)"
  postmaster="$(head -n1 "$state/pg/data/postmaster.pid")"
  echo "$PROXY_PID $nats $control $postmaster"
}
# PostgreSQL's CPU: the postmaster and every backend alive now.
pg_cpu() { # postmaster
  local total=0 p
  for p in "$1" $(pgrep -P "$1"); do total="$(echo "$total + $(cpu "$p" 2>/dev/null || echo 0)" | bc -l)"; done
  echo "$total"
}

run() { # label worktree target(direct|airlock)
  local wt="$2" state="$2/.airlock/bench" port user db password
  # shellcheck disable=SC1091
  . "$state/env.sh"
  case "$3" in
    direct) port=$PG_PORT user=bench db=pgbench password=$DB_PASSWORD ;;
    airlock) port=$PROXY_PORT user=bench-agent db=bench password=$AGENT_TOKEN ;;
  esac
  read -r proxy nats control postmaster <<<"$(pids_of "$wt")"
  local b_proxy b_nats b_control b_pg
  b_proxy="$(cpu "$proxy")" b_nats="$(cpu "$nats")" b_control="$(cpu "$control")" b_pg="$(pg_cpu "$postmaster")"
  local out
  out="$(PGPASSWORD="$password" "$PGBENCH" -n -S -M "$PROTOCOL" -c 1 -j 1 -T "$SECONDS_PER_RUN" \
    -h 127.0.0.1 -p "$port" -U "$user" "$db" 2>&1)"
  local txns latency
  txns="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")"
  latency="$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")"
  [ -n "$txns" ] && [ "$txns" -gt 0 ] || { say "pgbench failed: $out"; exit 1; }
  per() { echo "scale=1; ($1 - $2) * 1000000 / $txns" | bc -l; }
  printf '%s\t%s\t%s\t%.1f\t%s\t%s\t%s\t%s\n' "$1" "$3" "$txns" "$(echo "$latency * 1000" | bc -l)" \
    "$(per "$(cpu "$proxy")" "$b_proxy")" "$(per "$(cpu "$nats")" "$b_nats")" \
    "$(per "$(cpu "$control")" "$b_control")" "$(per "$(pg_cpu "$postmaster")" "$b_pg")"
}

printf 'build\ttarget\ttxns\tlatency_us\tproxy_us\tnats_us\tcontrol_us\tpostgres_us\n'
for round in $(seq "$ROUNDS"); do
  say "round $round of $ROUNDS"
  for pair in "A $1" "B $2"; do
    read -r label wt <<<"$pair"
    run "$label" "$wt" direct
    run "$label" "$wt" airlock
  done
done
