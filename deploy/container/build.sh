#!/usr/bin/env bash
# Builds the Airlock image with Podman and checks it: the Containerfile's
# test stage (each binary's --version, `config check` of the production
# example), then the image itself (user, entry point, labels, the binaries
# run from it).
#
#   deploy/container/build.sh [--local-bases] [--tag NAME]
#
#   --local-bases  no registry needed: make both base images here first
#                  (Debian bookworm with debootstrap, `podman import`): a
#                  builder with this machine's Rust toolchain, gcc and
#                  openssl, and a runtime root with only glibc, CA
#                  certificates and a non-root user (no shell). Without it,
#                  BUILDER_IMAGE and RUNTIME_IMAGE (environment, else the
#                  Containerfile's defaults) are pulled.
#   --tag NAME     the image's name (default airlock:<workspace version>)
#
# Needs podman (apt-get install podman) and, with --local-bases, debootstrap
# and root. DEBIAN_MIRROR picks the mirror debootstrap uses. Takes a while
# (a release build of the workspace inside the image: about 15 minutes on
# two cores), so it is its own command, not part of ./tests/run.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)"
tag="airlock:$version"
local_bases=0
while [ $# -gt 0 ]; do
  case "$1" in
    --local-bases) local_bases=1; shift ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "usage: $0 [--local-bases] [--tag NAME]" >&2; exit 2 ;;
  esac
done
say() { printf 'build.sh: %s\n' "$*" >&2; }
command -v podman >/dev/null || { say "podman is needed (apt-get install podman)"; exit 1; }
build=(podman build --isolation chroot)

work="$repo/.airlock/container"
mkdir -p "$work"
builder_image="${BUILDER_IMAGE:-}"
runtime_image="${RUNTIME_IMAGE:-}"

make_bases() {
  command -v debootstrap >/dev/null || { say "debootstrap is needed (apt-get install debootstrap)"; exit 1; }
  [ "$(id -u)" = 0 ] || { say "--local-bases needs root (debootstrap)"; exit 1; }
  local root="$work/bookworm" triplet
  triplet="$(uname -m)-linux-gnu"
  if [ ! -x "$root/usr/bin/gcc" ]; then
    say "debootstrap: a Debian bookworm root with gcc and openssl (a few minutes)"
    rm -rf "$root"
    mkdir -p "$work"
    debootstrap --variant=minbase --include=ca-certificates,openssl,gcc,libc6-dev \
      bookworm "$root" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >&2
  fi

  # Debian's own CA certificates in the root, whatever an earlier run left.
  chroot "$root" update-ca-certificates --fresh >/dev/null

  # The builder: the root, and this machine's Rust toolchain in it.
  local sysroot
  sysroot="$(rustc --print sysroot)"
  say "builder base: bookworm + $(rustc --version)"
  rm -rf "$root/usr/local/rust"
  mkdir -p "$root/usr/local/rust" "$root/usr/local/cargo"
  cp -a "$sysroot/bin" "$sysroot/lib" "$root/usr/local/rust/"
  # Cargo in the builder trusts what this machine trusts (a TLS-inspecting
  # proxy's CA included), to reach the registry as it does here: a bundle
  # of its own, named by CARGO_HTTP_CAINFO. The system's bundle stays
  # Debian's, and the image never carries this one.
  mkdir -p "$root/usr/local/share/airlock-build"
  if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/airlock-build/ca.crt"
  else
    cp "$root/etc/ssl/certs/ca-certificates.crt" "$root/usr/local/share/airlock-build/ca.crt"
  fi
  tar -C "$root" -c . | podman import \
    --change 'ENV CARGO_HTTP_CAINFO=/usr/local/share/airlock-build/ca.crt' \
    --change 'ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    - localhost/airlock-build-base:bookworm >/dev/null
  rm -rf "$root/usr/local/rust" "$root/usr/local/share/airlock-build"

  # The runtime: what the binaries load (glibc's loader, libc, libm,
  # libgcc_s), CA certificates, passwd entries for root and nonroot
  # (65532, as distroless), a /tmp; nothing else, no shell.
  local rt="$work/runtime-root" lib
  say "runtime base: glibc, CA certificates, user 65532, no shell"
  rm -rf "$rt"
  mkdir -p "$rt/usr/lib/$triplet" "$rt/usr/lib64" "$rt/etc/ssl/certs" "$rt/tmp" "$rt/home/nonroot"
  ln -s usr/lib "$rt/lib"
  ln -s usr/lib64 "$rt/lib64"
  for lib in libc.so.6 libm.so.6 libgcc_s.so.1 ld-linux-x86-64.so.2 ld-linux-aarch64.so.1; do
    if [ -e "$root/usr/lib/$triplet/$lib" ]; then
      cp -L "$root/usr/lib/$triplet/$lib" "$rt/usr/lib/$triplet/$lib"
    fi
  done
  if [ -e "$root/usr/lib64/ld-linux-x86-64.so.2" ]; then
    ln -s "../lib/$triplet/ld-linux-x86-64.so.2" "$rt/usr/lib64/ld-linux-x86-64.so.2"
  fi
  cp -L "$root/etc/ssl/certs/ca-certificates.crt" "$rt/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$rt/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$rt/etc/group"
  chmod 1777 "$rt/tmp"
  chown 65532:65532 "$rt/home/nonroot"
  tar -C "$rt" -c . | podman import --change 'USER 65532:65532' \
    - localhost/airlock-runtime-base:bookworm >/dev/null
  builder_image=localhost/airlock-build-base:bookworm
  runtime_image=localhost/airlock-runtime-base:bookworm
}

[ "$local_bases" = 0 ] || make_bases
args=(-f "$repo/deploy/container/Containerfile"
  --build-arg "VERSION=$version"
  --build-arg "REVISION=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)")
[ -z "$builder_image" ] || args+=(--build-arg "BUILDER_IMAGE=$builder_image")
[ -z "$runtime_image" ] || args+=(--build-arg "RUNTIME_IMAGE=$runtime_image")

start=$(date +%s)
# One build: the final stage copies from the test stage, so the test stage
# always runs, and a failing check fails the build.
say "building $tag (test stage included)"
"${build[@]}" "${args[@]}" -t "$tag" "$repo" >&2
say "built in $(( $(date +%s) - start ))s"

# The image as an operator gets it.
fail() { say "FAILED: $*"; exit 1; }
user="$(podman image inspect "$tag" --format '{{.Config.User}}')"
[ "$user" = "65532:65532" ] || fail "the image runs as '$user', not 65532:65532"
stop="$(podman image inspect "$tag" --format '{{.Config.StopSignal}}')"
[ "$stop" = "SIGTERM" ] || fail "STOPSIGNAL is '$stop'"
title="$(podman image inspect "$tag" --format '{{index .Config.Labels "org.opencontainers.image.title"}}')"
[ "$title" = "Airlock" ] || fail "no OCI title label"
# Its files, without running it: the three production binaries (intact:
# they run here), no development issuer, and the runtime base's CA
# certificates, never the builder's.
cid="$(podman create "$tag")"
trap 'podman rm "$cid" >/dev/null 2>&1 || true' EXIT
mkdir -p "$work/image"
for b in airlock-proxy airlock-control airlock-reviewer; do
  podman cp "$cid:/usr/local/bin/$b" "$work/image/$b"
  "$work/image/$b" --version | grep -qx "$b $version" || fail "$b --version from the image"
done
if podman cp "$cid:/usr/local/bin/airlock-dev-idp" "$work/image/airlock-dev-idp" 2>/dev/null; then
  fail "airlock-dev-idp is in the production image"
fi
if [ "$local_bases" = 1 ]; then
  podman cp "$cid:/etc/ssl/certs/ca-certificates.crt" "$work/image/ca-certificates.crt"
  cmp -s "$work/image/ca-certificates.crt" "$work/runtime-root/etc/ssl/certs/ca-certificates.crt" \
    || fail "the image's CA certificates are not the runtime base's"
  if podman cp "$cid:/bin/sh" "$work/image/sh" 2>/dev/null; then
    fail "a shell is in the image"
  fi
fi
# And run, where this machine can run containers.
if podman run --rm --network none "$tag" --version >"$work/run.out" 2>&1; then
  grep -qx "airlock-proxy $version" "$work/run.out" || fail "airlock-proxy --version said: $(cat "$work/run.out")"
  say "ran the image"
else
  say "podman run is not available here ($(tail -n1 "$work/run.out")); its binaries ran from a copy"
fi
say "ok: $tag ($(podman image inspect "$tag" --format '{{.Size}}') bytes)"
