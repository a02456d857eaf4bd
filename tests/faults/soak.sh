#!/usr/bin/env bash
# The soak (not part of CI): the stack from its binaries on a three-node
# JetStream cluster with R3 streams, mixed agents, and one fault at a time
# (a NATS node killed or cut off from the network, a control-plane replica
# killed, the proxy killed) for AIRLOCK_SOAK_MINUTES (default 30), every
# AIRLOCK_SOAK_FAULT_EVERY seconds (default 45). It stops by itself, checks
# the invariants (no unapproved execution, every acknowledged statement
# recorded once, every request ended, verify passes) and writes
# target/soak-report.md. Needs root: nodes live in network namespaces.
# The stack runs from a release build (AIRLOCK_TEST_PROFILE=release).
#
#   ./tests/faults/soak.sh                 # 30 minutes
#   AIRLOCK_SOAK_MINUTES=5 ./tests/faults/soak.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
if [ "$(id -u)" != 0 ]; then
  echo "soak.sh: needs root (network namespaces for the NATS nodes); run it with sudo" >&2
  exit 2
fi
./deploy/local/install-deps.sh
export PATH="$repo/.airlock/bin:$PATH"
# Optimised binaries: a debug control plane spends its time checking
# signatures and lags behind the log under the soak's load.
export AIRLOCK_TEST_PROFILE=release
cargo test -p airlock-e2e --test faults -- --ignored --exact soak::soak --nocapture
echo "soak.sh: report in target/soak-report.md" >&2
