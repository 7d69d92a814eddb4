#!/usr/bin/env bash
# Where llmload's CPU goes per request: nginx serves the recorded 64-token
# stream (the selftest's bulk server) and `llmload run` sends RATE req/s
# at it under `perf record`; the report splits the samples by thread
# (the runtime's workers, which run the pacer task too) and by where they
# ran (kernel, llmload, libc), then lists the hottest functions. Figures,
# not a test: the machine is shared.
#
#   scripts/profile.sh [RATE] [SECONDS]      defaults: 3000 req/s, 6 s
#
# Needs perf (linux-perf) and nginx (nginx-light); builds the release
# binary. The per-stage micro-benchmarks are `cargo bench --bench hot_path`.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-3000}
secs=${2:-6}
for tool in perf nginx python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 2; }
done
cargo build --release --quiet
dir=$(mktemp -d)
trap 'kill "$(cat "$dir/nginx.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir -p "$dir/www" "$dir/body"
python3 - "$dir" <<'PY'
import socket, sys
d = sys.argv[1]
head = '{"id":"chatcmpl-bulk","object":"chat.completion.chunk","created":1700000000,"model":"bulk","system_fingerprint":null,"choices":[{"index":0,'
ev = lambda body: 'data: ' + body + '\n\n'
s = ev(head + '"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}')
for i in range(64):
    s += ev(head + '"delta":{"content":" tok%d"},"logprobs":null,"finish_reason":null}]}' % (i % 100))
s += ev(head + '"delta":{},"logprobs":null,"finish_reason":"length"}]}')
s += ev('{"id":"chatcmpl-bulk","object":"chat.completion.chunk","created":1700000000,"model":"bulk","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":64,"total_tokens":84}}')
s += 'data: [DONE]\n\n'
open(d + '/www/stream64.sse', 'w').write(s)
sock = socket.socket(); sock.bind(('127.0.0.1', 0)); port = sock.getsockname()[1]; sock.close()
open(d + '/port', 'w').write(str(port))
open(d + "/nginx.conf", "w").write(f"""daemon on; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {d}/body;
  server {{ listen 127.0.0.1:{port}; root {d}/www;
    location / {{ default_type text/event-stream; error_page 405 =200 /stream64.sse; try_files /stream64.sse =404; }} }} }}
""")
PY
nginx -c "$dir/nginx.conf" -p "$dir"
port=$(cat "$dir/port")
sleep 0.5
echo "== perf record: llmload run at $rate req/s for $secs s against nginx on :$port"
perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -o "$dir/perf.data" -- \
  target/release/llmload run --endpoint "http://127.0.0.1:$port/v1/chat/completions" \
  --model bulk --dataset synthetic:input=20,output=64 --qps "$rate" --duration "$secs" \
  --results-dir "$dir/results" 2>&1 | grep -E "sent|QPS [0-9]|HTTP|error" || true
# head closes its pipe early: perf report then dies of SIGPIPE, which is fine.
set +o pipefail
samples=$(perf report -i "$dir/perf.data" --no-children --sort comm -n --stdio -g none 2>/dev/null \
  | awk '/^ +[0-9.]+%/ { n += $2 } END { print n + 0 }')
requests=$(python3 -c "print(int($rate*$secs))")
python3 -c "print(f'== {$samples} samples at 999 Hz: {$samples/999:.2f} CPU s, about {$samples/999/$requests*1e6:.0f} µs of CPU per request; a share below times that is the stage\'s µs per request')"
echo "== share of samples by thread and by where they ran"
perf report -i "$dir/perf.data" --no-children --sort comm,dso --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | head -12
echo "== hottest functions"
perf report -i "$dir/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | head -25
echo "== inclusive shares of the request's stages"
perf report -i "$dir/perf.data" --children --sort sym --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -v '(inlined)' \
  | grep -E '\] (llmload::client::LlmClient::exchange::\{\{closure\}\}|llmload::client::StreamState::on_event|llmload::engine::pacer::pace|tokio::runtime::scheduler::multi_thread::worker::Context::park_internal|__x64_sys_epoll_wait|__x64_sys_futex|__x64_sys_clock_nanosleep|llmload::engine::request::request_task::\{\{closure\}\})\s*$' | head -12
