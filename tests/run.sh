#!/usr/bin/env bash
# The test command (README): installs what the tests need on a fresh Debian machine, then
# runs the formatting and lint gates and every test, unit and end-to-end, against the real
# kernel. Needs root (eBPF, network namespaces, conntrack).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/run.sh: the tests load eBPF and create network namespaces: run as root" >&2
  exit 2
fi

bash deploy/install-deps.sh

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== manifests: yamllint, Kubernetes schemas, the DaemonSet's template is pod.yaml's"
python3 tests/python/check_manifests.py

echo "== build the binaries the end-to-end tests start"
cargo build --workspace --bins --locked

echo "== tests (tests/tests/pod.rs builds both images from these binaries and plays the pod)"
cargo test --workspace --locked -- --test-threads=2

echo "== fuzz: every target of tests/fuzz, built once, 20 s each (long runs: docs/benchmarks.md)"
FUZZ_SECS=20 bash tests/fuzz/run.sh
