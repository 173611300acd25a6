#!/usr/bin/env bash
# Builds both images FROM scratch, without a registry or network: the binaries and exactly
# the shared libraries `ldd` lists for them (plus the CA bundle the controller's TLS reads).
#
#   bash deploy/images/build.sh                  # release binaries (cargo build --release)
#   bash deploy/images/build.sh --profile debug  # the binaries `cargo build` already made
#
# Tags: localhost/ebpf-agent/privileged-loader:<version> and .../controller:<version>.
# podman reads deploy/podman/containers.conf (runc, ulimits this machine allows) unless
# CONTAINERS_CONF is already set.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    *) echo "build.sh: unknown argument $1 (use --profile release|debug)" >&2; exit 2 ;;
  esac
done
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
target="${CARGO_TARGET_DIR:-$PWD/target}/$profile"

if [ "$profile" = release ]; then
  cargo build --release --locked -p privileged-loader -p loaderctl -p controller
fi

# stage ROOTFS FILE...: copies each file to the same path under ROOTFS, following symlinks.
stage() {
  local root="$1"; shift
  for f in "$@"; do
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
  done
}

# image NAME BINARY...: a rootfs with the binaries in / and their libraries, then the image.
image() {
  local name="$1"; shift
  local root; root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  local libs=()
  for bin in "$@"; do
    [ -x "$target/$bin" ] || { echo "build.sh: $target/$bin is missing: build it first" >&2; exit 1; }
    cp "$target/$bin" "$root/$bin"
    # Lines are "name => /path (addr)" or "/path (addr)"; the vdso has no file.
    mapfile -t -O "${#libs[@]}" libs < <(ldd "$target/$bin" | awk '/=>/ {print $3; next} $1 ~ /^\// {print $1}')
  done
  stage "$root" "${libs[@]}"
  if [ "$name" = controller ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    stage "$root" /etc/ssl/certs/ca-certificates.crt
  fi
  # /tmp for the runtime's own use; the root filesystem is mounted read-only in the pod.
  mkdir -p "$root/tmp"
  podman build --quiet --network=none -f "deploy/images/$name.Containerfile" \
    -t "localhost/ebpf-agent/$name:$version" "$root"
}

image privileged-loader privileged-loader loaderctl
image controller controller
echo "built localhost/ebpf-agent/privileged-loader:$version and localhost/ebpf-agent/controller:$version ($profile binaries)"
