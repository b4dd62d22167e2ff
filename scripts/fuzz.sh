#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/, cargo fuzz + libFuzzer, nightly toolchain) for a bounded time
# each and reports executions and crashes per target. Not part of CI's critical path.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   default: 60 s for each of every target
#
# The corpus each run grows is kept in fuzz/corpus/<target>/ (not committed); the seeds in
# fuzz/seeds/<target>/ are. A crash leaves its input in fuzz/artifacts/<target>/: turn it
# into a regression test beside the code it broke, fix it, then delete the artifact.
# A single allocation over 64 MB counts as a crash: no record we read is larger than a few
# MB, so such an allocation is an input making us allocate what it does not contain.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(decode_commands decode_events decode_changelogs command_json snapshot definitions)
fi

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# `cargo fuzz run` builds first: release, with debug assertions (overflow checks on).
status=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  mkdir -p logs
  log="logs/$t.log"
  before=$(find "artifacts/$t" -type f | wc -l)
  set +e
  cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=64 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  # The final stats, or (a run that crashed prints none) the last progress line's count.
  runs=$(awk '/stat::number_of_executed_units/ {n = $NF} END {print n}' "$log")
  [ -n "$runs" ] || runs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
  after=$(find "artifacts/$t" -type f | wc -l)
  crashes=$((after - before))
  corpus=$(find "corpus/$t" -type f | wc -l)
  summary+=("$(printf '%-18s %12s executions  %4s in corpus  %s new crash(es)  exit %s' \
    "$t" "${runs:-?}" "$corpus" "$crashes" "$rc")")
  if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
    status=1
    echo "== $t failed; its output: fuzz/$log" >&2
    grep -m 20 -E 'panicked|ERROR|SUMMARY|artifact' "$log" >&2 || true
  fi
done
echo "== fuzzing, ${seconds}s per target"
printf '%s\n' "${summary[@]}"
exit $status
