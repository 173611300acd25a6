#!/usr/bin/env bash
# Fuzzes every target for a bounded time (FUZZ_SECS each, default 20): the short run
# tests/run.sh (hence CI) makes. Installs its pinned cargo-fuzz if missing;
# `RUSTC_BOOTSTRAP=1` lets the stable toolchain take any unstable flag cargo-fuzz passes.
# Built once for all targets, without a sanitizer (`-s none`: the targets are safe Rust,
# where AddressSanitizer adds little and costs build time and speed), into the
# workspace's target dir: cargo-fuzz builds for an explicit --target, so its instrumented
# artifacts sit in target/x86_64-unknown-linux-gnu/release/, apart from the workspace's
# own builds, which it never invalidates. Seeds come from make_seeds.py; a crash fails
# the run and leaves its input in artifacts/<target>/ (keep it as a seed in seeds/ once
# fixed). Long runs, one target at a time, in the background:
#   FUZZ_SECS=3600 FUZZ_RUNS=10000000 nice -n 19 bash tests/fuzz/run.sh <target>
# (a run ends at FUZZ_RUNS executions or FUZZ_SECS, whichever comes first).
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECS:-20}
runs=${FUZZ_RUNS:--1}
target_dir=$(cd ../.. && pwd)/target
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
python3 make_seeds.py
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
build_start=$(date +%s)
cargo fuzz build -O -s none --target-dir "$target_dir"
echo "fuzz: the build took $(($(date +%s) - build_start)) s"
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${secs} s"
  cargo fuzz run -O -s none --target-dir "$target_dir" "$target" "corpus/$target" -- \
    -max_total_time="$secs" -runs="$runs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E "^(stat::|#[0-9]+[[:space:]]+DONE|==[0-9]+==|SUMMARY|Done )" || true
  if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz target $target found a crash: tests/fuzz/artifacts/$target" >&2
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets, ${secs} s each, no crash"
