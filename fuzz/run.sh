#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS (default 30), JOBS
# (default 2, one a core here) at a time; fails when any target finds a
# crash, a timeout or runs out of memory (libFuzzer leaves the input in
# fuzz/artifacts/<target>/, the log in fuzz/target/logs/<target>.log).
#   fuzz/run.sh                 every target, 30 s each (what .ci/run does)
#   fuzz/run.sh 600 head        one target for 10 minutes
#   JOBS=1 fuzz/run.sh 60       one after the other
# No nightly toolchain: RUSTC_BOOTSTRAP=1 lets stable take cargo fuzz's
# flags. `-s none`: no sanitizer (safe Rust; panics and overflows are what
# the targets look for), and a faster build. Each target's corpus grows in
# fuzz/corpus/<target>/ (only the seed-* files are committed).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
shift || true
jobs="${JOBS:-2}"
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -s none
mkdir -p target/logs

# One target: its log, then the last status line (executions, cov, ft,
# corpus) and the speed, printed when it ends.
one() {
  local t="$1" log="target/logs/$1.log" rc=0
  cargo fuzz run -s none "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  {
    echo "== fuzz $t (${seconds} s): exit $rc"
    grep -E '^#[0-9]+' "$log" | tail -n 1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
    if [ "$rc" -ne 0 ]; then
      tail -n 40 "$log"
      echo "fuzz $t failed: the input is in fuzz/artifacts/$t/"
    fi
  }
  return "$rc"
}

failed=0
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
  one "$t" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
exit "$failed"
