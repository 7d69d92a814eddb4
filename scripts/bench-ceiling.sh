#!/usr/bin/env bash
# The side-by-side ceiling: nginx serving the recorded 64-token stream to
# every POST, wrk against it (the ceiling: it parses nothing), then
# llmload's held rate, its CPU per request at a quarter of wrk's rate, and
# what it does at 1.5x its own held rate, all in one run on this machine.
# Prints the machine, the figures and the verdicts against issue 25's
# targets. Only ratios within one run compare across machines.
#
#   scripts/bench-ceiling.sh           release build, 3 s probes
#   scripts/bench-ceiling.sh --quick   shorter probes (what the test runs)
#   LLMLOAD=target/debug/llmload scripts/bench-ceiling.sh --quick
#
# Installs nginx-light and wrk (apt) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=()
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

bin=${LLMLOAD:-}
if [ -z "$bin" ]; then
  echo "== cargo build --release"
  cargo build --release --quiet
  bin=target/release/llmload
fi
echo "== $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
exec "$bin" selftest --only ceiling "$@"
