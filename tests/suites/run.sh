#!/usr/bin/env bash
# The drivers' own test suites, directly against PostgreSQL and through
# Airlock (a record-only policy), compared test by test: asyncpg, pg8000,
# psycopg2, pgx and node-postgres's pg-cursor and pg-pool packages, whose
# tests their packages carry; then Django's migrations, a pg_dump restore and
# psql's describe commands through Airlock; with AIRLOCK_SUITES_CHECKOUTS
# set, also psycopg 3 and node-postgres's core package, whose tests only
# their repositories carry (docs/drivers.md). Any test that passes directly and fails through Airlock
# fails the run, unless tests/suites/differences/<suite>.txt lists it with
# its reason; then every statement PostgreSQL ran for the suite must be in
# the event log, and the log must verify. About 40 minutes on two cores; not
# part of ./tests/run.sh.
#
#   ./tests/suites/run.sh              every suite
#   ./tests/suites/run.sh asyncpg      the suites whose test name matches
#   AIRLOCK_SUITES_CHECKOUTS=DIR ./tests/suites/run.sh
#                                      also the suites checked out in DIR
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
./deploy/local/install-deps.sh --suites
export PATH="$repo/.airlock/bin:$PATH"
checkouts=()
[ -z "${AIRLOCK_SUITES_CHECKOUTS:-}" ] || checkouts=(--include-ignored)
exec cargo test -p airlock-e2e --test suites -- --nocapture "${checkouts[@]}" "$@"
