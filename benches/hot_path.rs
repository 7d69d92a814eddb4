//! The per-request hot path, stage by stage: what one 64-token streamed
//! response costs the client once its bytes are in memory. Each bench is
//! one request's worth of work, so its time is µs of CPU per request for
//! that stage, directly comparable with the selftest's and the ceiling's
//! per-request figures (`docs/src/performance.md` puts them side by side).
//!
//! `cargo bench --bench hot_path` (or `scripts/bench-hot-path.sh`). Figures,
//! not pass/fail: the machine is shared, so compare stages within one run.
//!
//! * `sse_decode`: the recorded stream through the SSE decoder, in the
//!   16 KiB reads a socket gives;
//! * `chunk_scan`: every event's JSON through the chunk scanner, each
//!   read alone;
//! * `chunk_scan_memo`: the same as the client reads them, each chunk
//!   skipping the envelope it shares with the one before;
//! * `stream_events`: decoding and scanning, as the client runs them per
//!   response;
//! * `level_record`: the finished request into the level's histograms;
//! * `histogram_record`: one value into one HDR histogram;
//! * `prometheus_observer`: the live `/metrics` update per request;
//! * `trace_observer`: a kept span and the GenAI OTLP metrics per request,
//!   export to a discard collector included (run on a tokio runtime).

use criterion::{Criterion, criterion_group, criterion_main};
use llmload::analysis::stats::LevelStats;
use llmload::client::chunk::{self, Payload};
use llmload::client::chunk_memo;
use llmload::client::sse::SseDecoder;
use llmload::engine::sweep::Observer;
use std::hint::black_box;
use std::time::Duration;

fn stream() -> Vec<u8> {
    llmload::selftest::servers::recorded_stream(64).into_bytes()
}

use llmload::selftest::overhead::{sample_level as level, sample_record as record};

fn parsing(c: &mut Criterion) {
    let bytes = stream();
    c.bench_function("sse_decode", |b| {
        b.iter(|| {
            let mut d = SseDecoder::default();
            let mut n = 0usize;
            for read in bytes.chunks(16 * 1024) {
                d.feed(black_box(read), |e| {
                    n += e.data.len();
                    true
                })
                .expect("a well-formed stream");
            }
            n
        })
    });
    let mut events: Vec<Vec<u8>> = Vec::new();
    SseDecoder::default()
        .feed(&bytes, |e| {
            events.push(e.data.to_vec());
            true
        })
        .expect("a well-formed stream");
    c.bench_function("chunk_scan", |b| {
        b.iter(|| {
            let mut tokens = 0usize;
            for data in &events {
                if let Ok(Payload::Chunk(info)) = chunk::parse_full(black_box(data), false, false)
                    && info.has_tokens()
                {
                    tokens += 1;
                }
            }
            tokens
        })
    });
    // As the client reads a stream: each chunk skips the envelope it
    // shares with the one before (chunk_memo::Memo).
    c.bench_function("chunk_scan_memo", |b| {
        b.iter(|| {
            let mut memo = chunk_memo::Memo::default();
            let mut tokens = 0usize;
            for data in &events {
                if let Ok(Payload::Chunk(info)) =
                    chunk_memo::parse_memo(black_box(data), false, false, &mut memo)
                    && info.has_tokens()
                {
                    tokens += 1;
                }
            }
            tokens
        })
    });
    c.bench_function("stream_events", |b| {
        b.iter(|| {
            let mut d = SseDecoder::default();
            let mut memo = chunk_memo::Memo::default();
            let mut tokens = 0usize;
            for read in bytes.chunks(16 * 1024) {
                d.feed(black_box(read), |e| {
                    if let Ok(Payload::Chunk(info)) =
                        chunk_memo::parse_memo(e.data, false, false, &mut memo)
                        && info.has_tokens()
                    {
                        tokens += 1;
                    }
                    true
                })
                .expect("a well-formed stream");
            }
            tokens
        })
    });
}

fn recording(c: &mut Criterion) {
    let rec = record(0);
    let mut stats = LevelStats::new();
    c.bench_function("level_record", |b| b.iter(|| stats.record(black_box(&rec))));
    let mut h =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1 << 40, 3).expect("valid bounds");
    let mut v = 1u64;
    c.bench_function("histogram_record", |b| {
        b.iter(|| {
            v = v.wrapping_mul(6364136223846793005).wrapping_add(1);
            h.saturating_record(black_box(1 + (v >> 40) % 10_000_000));
        })
    });
}

fn observers(c: &mut Criterion) {
    let spec = level();
    let base = std::time::Instant::now();
    let metrics = llmload::observe::metrics::Metrics::new();
    let prom = llmload::observe::metrics::MetricsObserver {
        job: metrics.for_job("bench", "bench", "bench"),
        next: None,
    };
    let rec = record(0);
    c.bench_function("prometheus_observer", |b| {
        b.iter(|| {
            let hook = prom.request_start(&spec, base, &rec);
            prom.request_done(&spec, base, black_box(&rec), hook);
        })
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let _in_rt = rt.enter();
    let otlp = rt.block_on(llmload::selftest::overhead::discard_collector());
    for (name, push_metrics) in [("trace_observer", true), ("trace_spans_only", false)] {
        trace_observer(c, name, &rt, &otlp, push_metrics);
    }
}

/// Spans (every one kept) and, with `push_metrics`, the GenAI OTLP
/// metrics. The batch exporter's encoding runs on its own thread and is
/// not in these figures; the selftest's "measured directly" line has it.
fn trace_observer(
    c: &mut Criterion,
    name: &str,
    rt: &tokio::runtime::Runtime,
    otlp: &str,
    push_metrics: bool,
) {
    let spec = level();
    let base = std::time::Instant::now();
    let rig =
        llmload::selftest::overhead::TraceRig::start(otlp, push_metrics).expect("telemetry starts");
    let mut seq = 0u64;
    let mut rec = record(0);
    c.bench_function(name, |b| {
        b.iter(|| {
            seq += 1;
            rec.seq = seq;
            let hook = rig.observer.request_start(&spec, base, &rec);
            rig.observer
                .request_done(&spec, base, black_box(&rec), hook);
        })
    });
    rt.block_on(rig.tel.shutdown());
}

criterion_group! {
    name = hot_path;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = parsing, recording, observers
}
criterion_main!(hot_path);
