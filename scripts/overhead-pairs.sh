#!/usr/bin/env bash
# The observers' cost end to end, measured in pairs: each variant's
# `llmload run` goes at the same time as an `llmload run` with every
# observer off, against the same mock, and the pair's CPU per request is
# compared. Both runs of a pair share the machine's state (a neighbour, a
# frequency, where the scheduler put threads), which on a shared VM moves
# one run's cost by ±15 %; compared one after the other, a 5 % overhead
# drowns in that. "noise" pairs two identical "off" runs: how far it lands
# from zero is what the other lines can resolve.
#
# Variants: noise (off beside off), prometheus (--metrics-listen),
# traceparent (telemetry on, no span kept but failures', no metrics
# pushed: the header and the ids), genai-metrics (the pushed GenAI
# metrics, no request spans), spans (every request span, no metrics
# pushed), all (both). VARIANTS="noise spans" runs a subset.
#
#   scripts/overhead-pairs.sh [RATE] [SECONDS] [ROUNDS]   defaults: 1000 req/s, 5 s, 8 rounds
#   LLMLOAD=target/debug/llmload scripts/overhead-pairs.sh 200 1 1   (what the test runs)
#
# Figures, not a verdict: the selftest's overhead section gives those.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-1000}
secs=${2:-5}
rounds=${3:-8}
bin=${LLMLOAD:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=target/release/llmload
fi
dir=$(mktemp -d)
mock_pid=""
trap 'if [ -n "$mock_pid" ]; then kill "$mock_pid" 2>/dev/null || true; fi; rm -rf "$dir"' EXIT

echo '[{"prompt_content":"You are helpful.","cut_chat_history":[{"role":"user","content":"Hello"}]}]' >"$dir/data.json"

# One run into $dir/$1; the rest of the arguments are its extra flags.
run() {
  local out=$1
  shift
  "$bin" run --endpoint "http://127.0.0.1:$port/v1/chat/completions" --model m \
    --dataset "$dir/data.json" --qps "$rate" --duration "$secs" \
    --results-dir "$dir/$out" "$@" >/dev/null 2>"$dir/$out.err" || {
    echo "error: llmload run failed ($out):" >&2
    cat "$dir/$out.err" >&2
    exit 1
  }
}

# The variant's environment and flags: the extra run's, beside "off".
variant() {
  local otlp="--otlp-endpoint http://127.0.0.1:$port"
  case $1 in
    noise) echo "env|" ;;
    prometheus) echo "env|--metrics-listen 127.0.0.1:0" ;;
    traceparent) echo "env OTEL_TRACES_SAMPLER=always_off OTEL_METRICS_EXPORTER=none|$otlp" ;;
    genai-metrics) echo "env OTEL_TRACES_SAMPLER=always_off|$otlp" ;;
    spans) echo "env OTEL_METRICS_EXPORTER=none|$otlp" ;;
    all) echo "env|$otlp" ;;
  esac
}
# shellcheck disable=SC2206
variants=(${VARIANTS:-noise prometheus traceparent genai-metrics spans all})

: >"$dir/pairs"
for round in $(seq 1 "$rounds"); do
  for v in "${variants[@]}"; do
    # A fresh mock per pair (it is also the OTLP collector: receiving the
    # spans is another process's work, as in production).
    # Port 0, read back from its first line: no race for a port.
    "$bin" mock --listen 127.0.0.1:0 --slots 1000000 --queue 0 --ttft 5ms \
      --prefill-per-token 0 --tpot 0 --tpot-growth 0 --output-tokens 64 \
      --truth-capacity 0 >"$dir/mock.out" 2>&1 &
    mock_pid=$!
    port=""
    for _ in $(seq 1 100); do
      port=$(sed -n 's|^llmload mock listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$dir/mock.out")
      [ -n "$port" ] && break
      sleep 0.05
    done
    if [ -z "$port" ]; then
      echo "error: the mock did not start:" >&2
      cat "$dir/mock.out" >&2
      exit 1
    fi
    IFS='|' read -r envs flags <<<"$(variant "$v")"
    rm -rf "$dir/off" "$dir/on"
    # Which run starts first alternates with the round.
    if [ $((round % 2)) = 1 ]; then
      run off & a=$!
      # shellcheck disable=SC2086
      $envs bash -c "$(declare -f run); bin=$bin port=$port rate=$rate secs=$secs dir=$dir; run on $flags" & b=$!
    else
      # shellcheck disable=SC2086
      $envs bash -c "$(declare -f run); bin=$bin port=$port rate=$rate secs=$secs dir=$dir; run on $flags" & b=$!
      run off & a=$!
    fi
    wait "$a" && wait "$b"
    kill "$mock_pid" 2>/dev/null || true
    wait "$mock_pid" 2>/dev/null || true
    mock_pid=""
    python3 - "$dir" "$v" >>"$dir/pairs" <<'PY'
import glob, json, sys
d, v = sys.argv[1], sys.argv[2]
def us(run):
    f = glob.glob(f"{d}/{run}/*/benchmark_qps_results.json")[0]
    return json.load(open(f))[0]["client_usage"]["cpu_us_per_request"]
print(v, us("off"), us("on"))
PY
  done
done

machine="$(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
python3 - "$dir/pairs" "$rate" "$secs" "$rounds" "$machine" <<'PY'
import statistics, sys
path, rate, secs, rounds, machine = sys.argv[1:]
pairs = {}
for line in open(path):
    v, off, on = line.split()
    pairs.setdefault(v, []).append((float(off), float(on)))
print(f"OVERHEAD PAIRS  {machine}; {rate} req/s, {secs} s a run, {rounds} rounds")
print("  each: the variant's CPU per request against an 'off' run beside it")
for v in ["noise", "prometheus", "traceparent", "genai-metrics", "spans", "all"]:
    ps = pairs.get(v, [])
    if not ps:
        continue
    pct = [(on / off - 1) * 100 for off, on in ps]
    off = statistics.median(o for o, _ in ps)
    # The standard error of the mean: how far the next run's mean may land.
    se = statistics.stdev(pct) / len(pct) ** 0.5 if len(pct) > 1 else float("nan")
    print(f"  {v:<14} mean {statistics.mean(pct):+6.1f} ± {se:.1f} %  median {statistics.median(pct):+6.1f} %"
          f"  (off {off:.1f} µs/request; pairs: {' '.join(f'{p:+.1f}' for p in pct)})")
PY
