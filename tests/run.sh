#!/usr/bin/env bash
# The test command: installs what is missing (nats-server, PostgreSQL), then
# runs every test of the workspace against real servers. Extra arguments go
# to `cargo test` (e.g. ./tests/run.sh -p airlock-eventlog).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
./deploy/local/install-deps.sh
export PATH="$repo/.airlock/bin:$PATH"
exec cargo test --workspace "$@"
