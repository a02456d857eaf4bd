#!/usr/bin/env bash
# Makes the keys, certificates and secrets the shipped examples name, for
# trying them out and for their tests: DEVELOPMENT MATERIAL, NOT FOR
# PRODUCTION (a CA whose key sits next to it; use your own PKI and secret
# store there). Needs openssl and `airlock-control` (on PATH, or
# AIRLOCK_CONTROL=path).
#
#   deploy/examples/dev-material.sh OUT [--proxies N] [--controls N] [--namespace NS]
#
# Writes, under OUT:
#   ca/ca.key, ca/nats-route-ca.key the CAs' keys (never mounted anywhere)
#   tls/ca.crt                      the CA: NATS servers, control plane, proxies' client certificates
#   tls/control.{crt,key}           the control plane's server certificate (airlock-control)
#   tls/proxy.{crt,key}             the proxies' certificate for agents (airlock-proxy)
#   tls/nats.{crt,key}              the NATS servers' certificate (nats-0.nats ... and nats)
#   tls/nats-route-ca.crt, tls/nats-route.{crt,key}
#                                   routes between NATS nodes: a CA of their own
#   tls/db-ca.crt                   the CA the databases' certificates are checked against
#   identities/airlock-proxy-<i>/   proxy-signing.key, tls.{crt,key} (a client certificate naming the proxy)
#   identities/airlock-control-<i>/ control-signing.key
#   trust/<name>.pub                every writer's public key, for signing.trust
#   checkpoint/checkpoint.{key,pub} the checkpoint key pair
#   db/prod-orders                  the orders database's password (a file)
#   env/<NAME>                      one file per secret read from the environment:
#                                   AIRLOCK_NATS_PASSWORD_<ROLE>, AIRLOCK_CANCEL_KEY,
#                                   REPORTING_DB_PASSWORD
# Servers' certificates also name localhost and 127.0.0.1, so the same files
# serve a stack on one host; each certificate is for serving or for client
# authentication, not both (but the routes'). Run again into an empty OUT
# for new material.
set -euo pipefail

usage() { echo "usage: $0 OUT [--proxies N] [--controls N] [--namespace NS]" >&2; exit 2; }
[ $# -ge 1 ] || usage
out="$1"; shift
proxies=3 controls=2 namespace=airlock
while [ $# -gt 0 ]; do
  case "$1" in
    --proxies) proxies="$2"; shift 2 ;;
    --controls) controls="$2"; shift 2 ;;
    --namespace) namespace="$2"; shift 2 ;;
    *) usage ;;
  esac
done
control_bin="${AIRLOCK_CONTROL:-airlock-control}"
command -v openssl >/dev/null || { echo "$0: openssl is needed (apt-get install openssl)" >&2; exit 1; }
command -v "$control_bin" >/dev/null || {
  echo "$0: airlock-control is needed: put it on PATH or set AIRLOCK_CONTROL (cargo build --bin airlock-control)" >&2
  exit 1
}
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  echo "$0: $out is not empty: choose an empty directory" >&2
  exit 1
fi
umask 077
mkdir -p "$out"/{ca,tls,identities,trust,checkpoint,db,env}

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
  -subj "/CN=Airlock development CA" -keyout "$out/ca/ca.key" -out "$out/tls/ca.crt" 2>/dev/null

# cert CA PATH USAGE CN SAN... : a certificate CA signs, into PATH.crt and
# PATH.key, for USAGE (serverAuth, clientAuth, or both comma-separated).
# Servers' certificates also name localhost and 127.0.0.1, so the same files
# serve a stack on one host.
cert() {
  local ca="$1" path="$2" usage="$3" cn="$4"; shift 4
  local sans="" san
  for san in "$@"; do sans="${sans:+$sans,}$san"; done
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$cn" \
    -keyout "$path.key" -out "$path.csr" 2>/dev/null
  openssl x509 -req -in "$path.csr" -CA "$out/tls/$ca.crt" -CAkey "$out/ca/$ca.key" -CAcreateserial \
    -days 365 -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$sans" "$usage") \
    -out "$path.crt" 2>/dev/null
  rm -f "$path.csr"
}
here="DNS:localhost IP:127.0.0.1"

svc() { printf 'DNS:%s DNS:%s.%s DNS:%s.%s.svc' "$1" "$1" "$namespace" "$1" "$namespace"; }
# shellcheck disable=SC2046
cert ca "$out/tls/control" serverAuth airlock-control $(svc airlock-control) $here
# shellcheck disable=SC2046
cert ca "$out/tls/proxy" serverAuth airlock-proxy $(svc airlock-proxy) $here
nats_names=($(svc nats))
for i in 0 1 2; do nats_names+=("DNS:nats-$i.nats" "DNS:nats-$i.nats.$namespace.svc"); done
# shellcheck disable=SC2086
cert ca "$out/tls/nats" serverAuth nats "${nats_names[@]}" $here
# Routes between NATS nodes: a CA of their own, so that no client
# certificate of the fleet (a proxy's, say) can join the cluster as a node.
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
  -subj "/CN=Airlock development NATS route CA" -keyout "$out/ca/nats-route-ca.key" \
  -out "$out/tls/nats-route-ca.crt" 2>/dev/null
# shellcheck disable=SC2086
cert nats-route-ca "$out/tls/nats-route" serverAuth,clientAuth nats-route "${nats_names[@]}" $here
# The databases' CA: here the same development CA (a test database's
# certificate is signed by it). In production, your databases' own CA.
cp "$out/tls/ca.crt" "$out/tls/db-ca.crt"

for ((i = 0; i < proxies; i++)); do
  name="airlock-proxy-$i"
  mkdir -p "$out/identities/$name"
  "$control_bin" signing-key --private "$out/identities/$name/proxy-signing.key" \
    --public "$out/trust/$name.pub" >/dev/null
  # A client certificate naming the proxy's id, and nothing else.
  cert ca "$out/identities/$name/tls" clientAuth "$name" "DNS:$name"
done
for ((i = 0; i < controls; i++)); do
  name="airlock-control-$i"
  mkdir -p "$out/identities/$name"
  "$control_bin" signing-key --private "$out/identities/$name/control-signing.key" \
    --public "$out/trust/$name.pub" >/dev/null
done
"$control_bin" signing-key --private "$out/checkpoint/checkpoint.key" \
  --public "$out/checkpoint/checkpoint.pub" >/dev/null

# Without a final newline: a Secret's value becomes an environment
# variable as it is.
secret() { openssl rand -hex "${1:-24}" | tr -d '\n'; }
secret > "$out/db/prod-orders"
secret > "$out/env/REPORTING_DB_PASSWORD"
secret 32 > "$out/env/AIRLOCK_CANCEL_KEY"
for role in PROXY CONTROL AUDITOR REVIEWER FORWARDER; do
  secret > "$out/env/AIRLOCK_NATS_PASSWORD_$role"
done
rm -f "$out"/tls/*.srl "$out"/ca/*.srl
chmod -R go-rwx "$out"
echo "$out: development material for $proxies proxies and $controls control-plane replicas" >&2
