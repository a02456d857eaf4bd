#!/usr/bin/env bash
# The fault suite (not part of ./tests/run.sh): the stack from its binaries
# on a three-node JetStream cluster with R3 streams; the stream leader
# killed or cut off, quorum lost, the cluster restarted, the node holding
# the control plane's consumer killed, the proxy cut off from NATS, the
# control plane cut off from one node at a time. One scenario at a time;
# the recovery times are printed as FAULTS: lines. Needs root (network
# namespaces).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
if [ "$(id -u)" != 0 ]; then
  echo "faults/run.sh: needs root (network namespaces for the NATS nodes); run it with sudo" >&2
  exit 2
fi
./deploy/local/install-deps.sh
export PATH="$repo/.airlock/bin:$PATH"
exec cargo nextest run -p airlock-e2e --test faults --no-capture -j 1 "$@"
