#!/usr/bin/env bash
# Writes, on standard output, the Secrets and the trust ConfigMap the
# manifests reference, from a directory laid out as
# deploy/examples/dev-material.sh makes it (with your own PKI, put your
# files in the same places). Nothing secret is ever in the manifests.
#
#   deploy/examples/dev-material.sh material --namespace airlock
#   deploy/kubernetes/secrets.sh material | kubectl apply -n airlock -f -
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 MATERIAL_DIR" >&2; exit 2; }
m="$1"
[ -d "$m/tls" ] || { echo "$0: $m has no tls/: make it with deploy/examples/dev-material.sh" >&2; exit 1; }

b64() { base64 -w0 < "$1"; }
# secret NAME TYPE KEY=FILE...
secret() {
  local name="$1" type="$2" pair; shift 2
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  labels:\n    app.kubernetes.io/part-of: airlock\ntype: %s\ndata:\n' "$name" "$type"
  for pair in "$@"; do
    [ -f "${pair#*=}" ] || { echo "$0: ${pair#*=} is missing" >&2; exit 1; }
    printf '  %s: %s\n' "${pair%%=*}" "$(b64 "${pair#*=}")"
  done
}

secret airlock-ca Opaque ca.crt="$m/tls/ca.crt" db-ca.crt="$m/tls/db-ca.crt"
secret airlock-control-tls kubernetes.io/tls tls.crt="$m/tls/control.crt" tls.key="$m/tls/control.key"
secret airlock-proxy-tls kubernetes.io/tls tls.crt="$m/tls/proxy.crt" tls.key="$m/tls/proxy.key"
secret airlock-nats-tls Opaque tls.crt="$m/tls/nats.crt" tls.key="$m/tls/nats.key" ca.crt="$m/tls/ca.crt" \
  route.crt="$m/tls/nats-route.crt" route.key="$m/tls/nats-route.key" route-ca.crt="$m/tls/nats-route-ca.crt"
proxies=() controls=()
for dir in "$m"/identities/airlock-proxy-*; do
  id="$(basename "$dir")"
  proxies+=("$id.signing.key=$dir/proxy-signing.key" "$id.tls.crt=$dir/tls.crt" "$id.tls.key=$dir/tls.key")
done
for dir in "$m"/identities/airlock-control-*; do
  id="$(basename "$dir")"
  controls+=("$id.signing.key=$dir/control-signing.key")
done
secret airlock-proxy-identities Opaque "${proxies[@]}"
secret airlock-control-identities Opaque "${controls[@]}"
secret airlock-checkpoint Opaque checkpoint.key="$m/checkpoint/checkpoint.key"
secret airlock-nats-users Opaque proxy="$m/env/AIRLOCK_NATS_PASSWORD_PROXY" \
  control="$m/env/AIRLOCK_NATS_PASSWORD_CONTROL" auditor="$m/env/AIRLOCK_NATS_PASSWORD_AUDITOR" \
  reviewer="$m/env/AIRLOCK_NATS_PASSWORD_REVIEWER" forwarder="$m/env/AIRLOCK_NATS_PASSWORD_FORWARDER"
secret airlock-cancel-key Opaque key="$m/env/AIRLOCK_CANCEL_KEY"
secret airlock-db Opaque prod-orders="$m/db/prod-orders" reporting="$m/env/REPORTING_DB_PASSWORD"
# Public keys: not secret, but made with the private halves.
printf -- '---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: airlock-trust\n  labels:\n    app.kubernetes.io/part-of: airlock\ndata:\n'
for pub in "$m"/trust/*.pub; do
  printf '  %s: |\n' "$(basename "$pub")"
  sed 's/^/    /' "$pub"
done
