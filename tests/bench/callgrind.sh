#!/usr/bin/env bash
# Instructions the proxy executes per pgbench select-only transaction at one
# client, counted by callgrind (stable where wall-clock figures are not),
# with the inclusive counts of the parts that matter: judging, signing,
# recording, relaying answers. Compare two builds by running it on each
# checkout (a git worktree), one after the other.
#
#   ./tests/bench/callgrind.sh [WORKTREE]     default: this checkout
#   CG_TRANSACTIONS=2000   transactions counted (after 200 to warm up)
#   CG_PROTOCOL=simple     pgbench -M
#
# It starts the worktree's stack (./tests/bench/run.sh --stack, which builds
# the release binaries), replaces its proxy with the same binary under
# callgrind, and stops everything when done. Needs valgrind (Debian package
# `valgrind`). Under callgrind a transaction takes milliseconds, so every
# statement is recorded in an event of its own: recording and signing count
# here as they would for a slow client, more than under load, where a busy
# session's statements share an event.
set -euo pipefail
wt="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/../..}" && pwd)"
N="${CG_TRANSACTIONS:-2000}"
PROTOCOL="${CG_PROTOCOL:-simple}"
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
out="$(mktemp -d)"
stack=""
stop() {
  set +e
  [ -n "${VG:-}" ] && kill -TERM "$VG" 2>/dev/null
  [ -n "$stack" ] && { pkill -TERM -P "$stack" -f "tests/bench/run.sh --stack"; kill -TERM "$stack" 2>/dev/null; }
  wait 2>/dev/null
}
trap stop EXIT
cd "$wt"
rm -f .airlock/bench/env.sh
mkdir -p .airlock
(BENCH_IDLE=10 BENCH_SCALE=10 ./tests/bench/run.sh --stack >"$out/stack.log" 2>&1) &
stack=$!
for _ in $(seq 1800); do
  [ -f .airlock/bench/env.sh ] && break
  kill -0 "$stack" 2>/dev/null || { echo "callgrind.sh: the stack failed: $(tail -5 "$out/stack.log")" >&2; exit 1; }
  sleep 1
done
# shellcheck disable=SC1091
. .airlock/bench/env.sh
kill "$PROXY_PID"
sleep 2
AIRLOCK_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" \
  target/release/airlock-proxy --config .airlock/bench/airlock.yaml >"$out/proxy.log" 2>&1 &
VG=$!
for _ in $(seq 120); do (exec 3<>"/dev/tcp/127.0.0.1/$PROXY_PORT") 2>/dev/null && break; sleep 1; done
sleep 5
bench() { PGPASSWORD="$AGENT_TOKEN" "$PGBENCH" -n -S -M "$PROTOCOL" -c 1 -j 1 -t "$1" -h 127.0.0.1 -p "$PROXY_PORT" -U bench-agent bench; }
bench 200 >/dev/null
sleep 2
callgrind_control -z "$VG" >/dev/null 2>&1
bench "$N" | grep -q "processed: $N/$N" || { echo "callgrind.sh: pgbench did not finish" >&2; exit 1; }
sleep 3
callgrind_control -d "$VG" >/dev/null 2>&1
sleep 2
dump="$(ls "$out"/cg.out.* | head -n1)"
annotated="$(callgrind_annotate --inclusive=yes "$dump" 2>/dev/null)"
per() { awk -v n="$N" '{gsub(",", "", $1); printf "%.0f", $1 / n}'; }
first() {
  local line
  line="$(grep -F -- "$1" <<<"$annotated" | head -n1)"
  if [ -n "$line" ]; then per <<<"$line"; else printf -- '-'; fi
}
total="$(grep "PROGRAM TOTALS" <<<"$annotated" | per)"
printf 'commit\t%s\n' "$(git rev-parse --short HEAD)"
printf 'instructions per transaction\t%s\n' "$total"
printf '  judging (PolicyGate::judge)\t%s\n' "$(first 'PolicyGate as airlock_proxy::gate::Gate>::judge')"
printf '  recording (record::writer)\t%s\n' "$(first 'airlock_proxy::record::writer::{{closure}}')"
printf '    of which signing (signing::seal)\t%s\n' "$(first 'airlock_eventlog::signing::seal')"
printf '  answers to the client (upstream_to_client)\t%s\n' "$(first 'upstream_to_client::{{closure}}')"
printf '  upstream login per connection, amortised (Auth::step)\t%s\n' "$(first 'Auth::step')"
