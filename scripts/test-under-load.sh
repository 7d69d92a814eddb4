#!/usr/bin/env bash
# The test command on a busy machine: the whole suite (./scripts/test.sh)
# while two CPU-burning processes at normal priority run beside it, as a
# shared CI runner or a noisy neighbour would. The suite must stay green:
# its tests assert relations and verdicts, and a level the busy machine
# starved is detected as client-bound, never failed.
#
#   scripts/test-under-load.sh            one run
#   RUNS=3 scripts/test-under-load.sh     three runs in a row, stopping at
#                                         the first red one
#
# The build happens first, without the burners (it is not under test).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-1}
burners=${BURNERS:-2}

echo "== building the tests (no load yet)"
cargo nextest run --no-run >/dev/null 2>&1 || cargo nextest run --no-run
cargo clippy --all-targets --quiet -- -D warnings

pids=()
stop_burners() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_burners EXIT INT TERM
for _ in $(seq "$burners"); do
  # A busy loop of the shell itself: one core's worth each, nice 0.
  bash -c 'while :; do :; done' &
  pids+=($!)
done
echo "== $burners CPU burners running (pids ${pids[*]})"

for i in $(seq "$runs"); do
  t0=$(date +%s)
  echo "== run $i of $runs under load"
  ./scripts/test.sh "$@"
  echo "== run $i green in $(( $(date +%s) - t0 )) s"
done
