#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS (default 30), one after
# the other; fails on the first crash, leak, timeout or out-of-memory
# (libFuzzer leaves the input in fuzz/artifacts/<target>/).
#   fuzz/run.sh            every target, 30 s each (what .ci/run does)
#   fuzz/run.sh 600 head   one target for 10 minutes
# No nightly toolchain: RUSTC_BOOTSTRAP=1 lets stable take cargo fuzz's
# flags. `-s none`: no sanitizer (safe Rust; panics and overflows are what
# the targets look for), and a faster build. Each target's corpus grows in
# fuzz/corpus/<target>/ (only seed-* files are committed).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
shift || true
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -s none
mkdir -p target/logs
for t in "${targets[@]}"; do
  echo "== fuzz $t: ${seconds} s"
  log="target/logs/$t.log"
  rc=0
  cargo fuzz run -s none "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  # The last status line (executions, cov, ft, corpus) and the stats.
  grep -E '^#[0-9]+' "$log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$log"
    echo "fuzz $t failed (exit $rc): the input is in fuzz/artifacts/$t/"
    exit 1
  fi
done
