#!/usr/bin/env bash
# Installs the system packages the build, the demo and the tests need (Debian 12).
set -euo pipefail
packages=(
  clang llvm libbpf-dev bpftool   # building the eBPF objects
  nftables conntrack iproute2     # NAT in throwaway network namespaces; conntrack -L oracle
  curl jq openssl python3-pip     # demo, TLS test certificates, interop tests
  podman runc catatonit           # the pod test: images FROM scratch, `podman kube play`
)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Python clients used by the interop tests (grpcio for the health check; python-tuf for
# TUF metadata made and checked by the reference implementation).
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --break-system-packages -r tests/python/requirements.txt
# A Rust toolchain is expected on PATH (rustup); say so clearly if it is not.
command -v cargo >/dev/null || { echo "install-deps: cargo not found: install Rust 1.95 with rustup" >&2; exit 1; }
