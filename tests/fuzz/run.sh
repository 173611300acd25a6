#!/usr/bin/env bash
# Fuzzes every target for a bounded time (FUZZ_SECS each, default 30): the short run CI
# is meant to make (not wired into .ci/run yet). Installs cargo-fuzz if missing;
# `RUSTC_BOOTSTRAP=1` lets the stable toolchain take the flags cargo-fuzz passes. Built
# without a sanitizer (`-s none`): the targets are safe Rust, where AddressSanitizer adds
# little and costs build time and execution speed. Seeds come from
# make_seeds.py; a crash fails the run and leaves its input in artifacts/<target>/.
# Long runs: FUZZ_SECS=1200 nice -n 19 bash tests/fuzz/run.sh <target>
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECS:-30}
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
python3 make_seeds.py
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -O -s none
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${secs} s"
  cargo fuzz run -O -s none "$target" "corpus/$target" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E "^(stat::|#[0-9]+ +DONE|==[0-9]+==|SUMMARY|Done )" || true
  if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz target $target found a crash: tests/fuzz/artifacts/$target" >&2
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets, ${secs} s each, no crash"
