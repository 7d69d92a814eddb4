//! `llmload selftest`: proves the load generator is not the bottleneck.
//!
//! In one run, against servers in separate processes ([`servers`]):
//! * **throughput**: the highest rate the client holds (achieved ≥ 99 % of
//!   target, schedule-lag p99 < 5 ms, ≥ 99.9 % success, nothing dropped),
//!   for 64- and 512-token streams with no token gap, and with a 10 ms gap;
//! * **cost**: client CPU seconds per 1,000 requests and per 1,000,000
//!   tokens (getrusage of this process, which is only the client), peak RSS;
//! * **accuracy**: client TTFT / ITL / E2E against the mock's server-side
//!   stamps on the shared monotonic clock, at 10, 100 and 1,000 req/s;
//! * **memory over time**: RSS after 10⁴ and after 10⁶ requests;
//! * **overheads**: Prometheus metrics and tracing on vs off.
//!
//! Prints a table and one JSON line. Ratios and figures come from one run
//! on one machine; compare them within a run, not across machines.

pub mod servers;

use crate::client::{ClientConfig, LlmClient};
use crate::dataset::{Conversation, Message, Role};
use crate::record::RequestRecord;
use crate::request::{BodyParams, prepare_all};
use crate::schedule::Arrival;
use crate::sweep::{Engine, LevelRun, LevelSpec, NoObserver, Observer, RequestHook};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Options {
    /// Shorter probes and 2×10⁵ instead of 10⁶ requests for memory.
    pub quick: bool,
    /// Do not use nginx even if installed.
    pub skip_nginx: bool,
    /// Run only these sections (memory, throughput, accuracy, overhead);
    /// empty runs all.
    pub only: Vec<String>,
}

/// CPU seconds (user + system) this process has used.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Peak resident set size, bytes.
pub fn peak_rss() -> u64 {
    // SAFETY: as above.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as u64 * 1024
}

/// Current resident set size, bytes (from /proc/self/statm).
pub fn rss() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf with a valid name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn conversation() -> Vec<Conversation> {
    vec![Conversation {
        messages: vec![
            Message {
                role: Role::System,
                content: "You are a helpful assistant.".into(),
            },
            Message {
                role: Role::User,
                content: "Tell me about load testing.".into(),
            },
        ],
    }]
}

fn engine(client: Arc<LlmClient>, observer: Arc<dyn Observer>, max_tokens: u32) -> Engine {
    Engine {
        client,
        requests: Arc::new(prepare_all(
            &conversation(),
            &BodyParams {
                model: "selftest".into(),
                max_tokens,
                temperature: 0.0,
                stream_usage: true,
            },
        )),
        max_in_flight: 200_000,
        observer,
    }
}

fn client(url: &str, keep_ids: bool) -> Arc<LlmClient> {
    let mut c = ClientConfig::new(url);
    c.request_timeout = Duration::from_secs(30);
    c.keep_response_ids = keep_ids;
    Arc::new(LlmClient::new(c).expect("a loopback URL is valid"))
}

/// The mock knobs the sections vary; prefill and TPOT growth are off.
struct MockKnobs<'a> {
    slots: &'a str,
    queue: &'a str,
    ttft: &'a str,
    tpot: &'a str,
    tokens: &'a str,
    truth: &'a str,
}

fn mock_with(k: &MockKnobs) -> Result<servers::ServerProcess, String> {
    servers::mock(
        "llmload mock",
        &[
            "--slots",
            k.slots,
            "--queue",
            k.queue,
            "--ttft",
            k.ttft,
            "--prefill-per-token",
            "0",
            "--tpot",
            k.tpot,
            "--tpot-growth",
            "0",
            "--output-tokens",
            k.tokens,
            "--truth-capacity",
            k.truth,
        ],
    )
}

/// One fixed-rate probe's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub target: f64,
    pub achieved: f64,
    pub lag_p99_ms: f64,
    pub success: f64,
    pub dropped: u64,
    pub sent: u64,
    pub tokens: u64,
    pub cpu_s: f64,
    pub ttft_p50_ms: f64,
    /// Mean E2E: with the rate it gives the streams open at once (Little).
    pub e2e_mean_s: f64,
    /// CPU seconds the server process used during the probe.
    pub server_cpu_s: f64,
    pub held: bool,
}

async fn probe(e: &Engine, qps: f64, dur: Duration) -> Probe {
    let run = LevelRun::new();
    let cpu0 = cpu_seconds();
    let out = e
        .run_level(
            LevelSpec {
                index: 0,
                qps,
                duration: Some(dur),
                arrival: Arrival::Constant,
                seed: 0,
            },
            &run,
            CancellationToken::new(),
            CancellationToken::new(),
            0,
        )
        .await;
    let cpu_s = cpu_seconds() - cpu0;
    let s = &out.stats;
    let achieved = s.sent as f64 / dur.as_secs_f64();
    let lag_p99_ms = s.lag.value_at_quantile(0.99) as f64 / 1000.0;
    let scheduled = (s.sent + s.dropped).max(1);
    let success = s.succeeded as f64 / scheduled as f64;
    Probe {
        target: qps,
        achieved,
        lag_p99_ms,
        success,
        dropped: s.dropped,
        sent: s.sent,
        tokens: s.output_tokens_total,
        cpu_s,
        ttft_p50_ms: s.ttft.value_at_quantile(0.5) as f64 / 1000.0,
        e2e_mean_s: s.e2e.mean() / 1e6,
        server_cpu_s: 0.0,
        held: achieved >= 0.99 * qps && lag_p99_ms < 5.0 && success >= 0.999 && s.dropped == 0,
    }
}

/// CPU seconds (user + system) another process has used.
fn process_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// A probe with the server's CPU time measured too.
async fn probe_with_server(e: &Engine, qps: f64, dur: Duration, server_pid: u32) -> Probe {
    let s0 = process_cpu(server_pid);
    let mut p = probe(e, qps, dur).await;
    p.server_cpu_s = process_cpu(server_pid) - s0;
    p
}

/// Highest rate held: double from 500 until a probe fails, then bisect.
async fn find_max(
    e: &Engine,
    server_pid: u32,
    probe_for: Duration,
    bisect: usize,
    log: &dyn Fn(&str),
) -> Probe {
    // Warm the pool so the first probe does not pay for connections.
    let _ = probe(e, 200.0, Duration::from_secs(1)).await;
    let mut best: Option<Probe> = None;
    let mut fail: Option<f64> = None;
    let mut rate = 500.0;
    while rate <= 64_000.0 {
        let p = probe_with_server(e, rate, probe_for, server_pid).await;
        log(&format!(
            "    {rate:>7.0} req/s: achieved {:.0}, lag p99 {:.2} ms, success {:.2}%, {}",
            p.achieved,
            p.lag_p99_ms,
            p.success * 100.0,
            if p.held { "held" } else { "NOT held" }
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        if p.held {
            best = Some(p);
            rate *= 2.0;
        } else {
            fail = Some(rate);
            break;
        }
    }
    if let (Some(b), Some(f)) = (best.clone(), fail) {
        let (mut lo, mut hi) = (b.target, f);
        for _ in 0..bisect {
            let mid = ((lo + hi) / 2.0 / 250.0).round() * 250.0;
            if mid <= lo || mid >= hi {
                break;
            }
            let p = probe_with_server(e, mid, probe_for, server_pid).await;
            log(&format!(
                "    {mid:>7.0} req/s: achieved {:.0}, lag p99 {:.2} ms, success {:.2}%, {}",
                p.achieved,
                p.lag_p99_ms,
                p.success * 100.0,
                if p.held { "held" } else { "NOT held" }
            ));
            tokio::time::sleep(Duration::from_millis(500)).await;
            if p.held {
                lo = mid;
                best = Some(p);
            } else {
                hi = mid;
            }
        }
    }
    best.unwrap_or(Probe {
        target: 0.0,
        achieved: 0.0,
        lag_p99_ms: 0.0,
        success: 0.0,
        dropped: 0,
        sent: 0,
        tokens: 0,
        cpu_s: 0.0,
        ttft_p50_ms: 0.0,
        e2e_mean_s: 0.0,
        server_cpu_s: 0.0,
        held: false,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub server: String,
    pub stream: String,
    pub held_rps: f64,
    pub tokens_per_s: f64,
    pub lag_p99_ms: f64,
    pub client_cores: f64,
    pub cpu_s_per_1k_requests: f64,
    pub cpu_s_per_1m_tokens: f64,
    /// Streams open at once on average (rate x mean E2E).
    pub concurrent_streams: f64,
    /// Server CPU per 1M tokens, to compare with the client's.
    pub server_cpu_s_per_1m_tokens: f64,
    pub server_cores: f64,
}

fn throughput_row(server: &str, stream: &str, p: &Probe, dur: Duration) -> Throughput {
    Throughput {
        server: server.into(),
        stream: stream.into(),
        held_rps: p.target,
        tokens_per_s: p.tokens as f64 / dur.as_secs_f64(),
        lag_p99_ms: p.lag_p99_ms,
        client_cores: p.cpu_s / dur.as_secs_f64(),
        cpu_s_per_1k_requests: p.cpu_s / p.sent.max(1) as f64 * 1000.0,
        cpu_s_per_1m_tokens: p.cpu_s / p.tokens.max(1) as f64 * 1e6,
        concurrent_streams: p.achieved * p.e2e_mean_s,
        server_cpu_s_per_1m_tokens: p.server_cpu_s / p.tokens.max(1) as f64 * 1e6,
        server_cores: p.server_cpu_s / dur.as_secs_f64(),
    }
}

/// Client stamps of one request on the shared monotonic clock.
#[derive(Debug, Clone)]
struct ClientRow {
    seq: u64,
    sent_ns: u64,
    first_ns: u64,
    done_ns: u64,
    tokens: u32,
}

/// Records each successful request's client-side stamps.
struct Capture {
    anchor: crate::clock::Anchor,
    rows: Mutex<Vec<ClientRow>>,
}

impl Observer for Capture {
    fn request_done(
        &self,
        _l: &LevelSpec,
        base: std::time::Instant,
        r: &RequestRecord,
        _h: Option<RequestHook>,
    ) {
        let (Ok(()), Some(id), Some(first)) = (r.outcome, &r.response_id, r.first_token_at) else {
            return;
        };
        let Some(seq) = id.rsplit('-').next().and_then(|s| s.parse().ok()) else {
            return;
        };
        let base_ns = self.anchor.mono_ns
            + base
                .saturating_duration_since(self.anchor.instant)
                .as_nanos() as u64;
        self.rows.lock().expect("capture lock").push(ClientRow {
            seq,
            sent_ns: base_ns + r.sent_at.as_nanos() as u64,
            first_ns: base_ns + first.as_nanos() as u64,
            done_ns: base_ns + r.done_at.as_nanos() as u64,
            tokens: r.output_tokens().0,
        });
    }
}

/// p50 / p99 / max of |client − server| differences, microseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ErrStats {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

fn err_stats(mut v: Vec<f64>) -> ErrStats {
    if v.is_empty() {
        return ErrStats::default();
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    ErrStats {
        p50_us: q(0.5),
        p99_us: q(0.99),
        max_us: *v.last().expect("non-empty"),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    pub rate: f64,
    pub requests: usize,
    /// Client TTFT (from its send) minus server TTFT (from receipt).
    pub ttft_error: ErrStats,
    /// Per-gap difference of the decode span (first → last token).
    pub itl_error: ErrStats,
    /// Client E2E (from its send) minus server E2E (from receipt).
    pub e2e_error: ErrStats,
    pub lag_p99_ms: f64,
}

#[derive(serde::Deserialize)]
struct TruthRow {
    seq: u64,
    received_ns: u64,
    first_token_ns: u64,
    last_byte_ns: u64,
    status: u16,
}

async fn fetch_truth(base: &str) -> Vec<TruthRow> {
    use http_body_util::BodyExt;
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let Ok(uri) = format!("{base}/debug/requests?clear=true").parse::<http::Uri>() else {
        return Vec::new();
    };
    let Ok(resp) = c.get(uri).await else {
        return Vec::new();
    };
    let Ok(body) = resp.into_body().collect().await else {
        return Vec::new();
    };
    serde_json::from_slice(&body.to_bytes()).unwrap_or_default()
}

async fn accuracy(mock: &servers::ServerProcess, rate: f64, dur: Duration) -> Accuracy {
    let cap = Arc::new(Capture {
        anchor: crate::clock::Anchor::now(),
        rows: Mutex::new(Vec::new()),
    });
    let e = engine(client(&mock.url, true), cap.clone(), 512);
    let _ = fetch_truth(&mock.base).await;
    let p = probe(&e, rate, dur).await;
    let truth = fetch_truth(&mock.base).await;
    let by_seq: std::collections::HashMap<u64, &TruthRow> = truth
        .iter()
        .filter(|t| t.status == 200 && t.first_token_ns > 0)
        .map(|t| (t.seq, t))
        .collect();
    let rows = cap.rows.lock().expect("capture lock").clone();
    let (mut ttft, mut itl, mut e2e) = (Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        let Some(t) = by_seq.get(&r.seq) else {
            continue;
        };
        let c_ttft = r.first_ns as f64 - r.sent_ns as f64;
        let s_ttft = t.first_token_ns as f64 - t.received_ns as f64;
        ttft.push((c_ttft - s_ttft).abs() / 1000.0);
        let c_e2e = r.done_ns as f64 - r.sent_ns as f64;
        let s_e2e = t.last_byte_ns as f64 - t.received_ns as f64;
        e2e.push((c_e2e - s_e2e).abs() / 1000.0);
        if r.tokens > 1 {
            let c_dec = r.done_ns as f64 - r.first_ns as f64;
            let s_dec = t.last_byte_ns as f64 - t.first_token_ns as f64;
            itl.push((c_dec - s_dec).abs() / (r.tokens - 1) as f64 / 1000.0);
        }
    }
    Accuracy {
        rate,
        requests: ttft.len(),
        ttft_error: err_stats(ttft),
        itl_error: err_stats(itl),
        e2e_error: err_stats(e2e),
        lag_p99_ms: p.lag_p99_ms,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub server: String,
    pub rate: f64,
    pub rss_at_1e4_mb: f64,
    pub rss_at_end_mb: f64,
    pub requests_at_end: u64,
    pub growth_mb: f64,
    pub fds_at_1e4: usize,
    pub fds_at_end: usize,
    /// (requests completed, RSS MB, open fds) through the run.
    pub series_mb: Vec<(u64, f64, usize)>,
}

async fn memory(e: &Engine, server: &str, rate: f64, total: u64) -> Memory {
    let run = LevelRun::new();
    let progress = run.progress.clone();
    // RSS at 10^4, then at each further 10 % of the run.
    let marks: Vec<u64> = std::iter::once(10_000)
        .chain((1..=10).map(|i| total * i / 10))
        .filter(|&m| m >= 10_000)
        .collect();
    let sampler = tokio::spawn(async move {
        let mut series = Vec::new();
        let mut next = 0;
        while next < marks.len() {
            let done = progress.completed.load(Ordering::Relaxed);
            if done >= marks[next] {
                series.push((marks[next], rss(), open_fds()));
                next += 1;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        series
    });
    // Run 5 % past the last mark so it is sampled mid-run, not while the
    // level's results are being assembled.
    let dur = Duration::from_secs_f64(total as f64 * 1.05 / rate);
    let out = e
        .run_level(
            LevelSpec {
                index: 0,
                qps: rate,
                duration: Some(dur),
                arrival: Arrival::Constant,
                seed: 0,
            },
            &run,
            CancellationToken::new(),
            CancellationToken::new(),
            0,
        )
        .await;
    let mut series = tokio::time::timeout(Duration::from_secs(2), sampler)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if series.is_empty() {
        series.push((out.stats.sent, rss(), open_fds()));
    }
    let (_, at_1e4, fds_1e4) = series[0];
    let (at_n, end, fds_end) = *series.last().expect("non-empty");
    let _ = out;
    Memory {
        server: server.into(),
        rate,
        rss_at_1e4_mb: at_1e4 as f64 / 1e6,
        rss_at_end_mb: end as f64 / 1e6,
        requests_at_end: at_n,
        growth_mb: (end as f64 - at_1e4 as f64) / 1e6,
        fds_at_1e4: fds_1e4,
        fds_at_end: fds_end,
        series_mb: series
            .iter()
            .map(|(n, r, f)| (*n, *r as f64 / 1e6, *f))
            .collect(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    pub rate: f64,
    pub variant: String,
    pub cpu_s_per_1k_requests: f64,
    pub cpu_overhead_pct: f64,
    pub ttft_p50_ms: f64,
}

/// A discard OTLP/HTTP receiver, so tracing pays its real export cost.
async fn discard_collector() -> String {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(|_b: axum::body::Bytes| async { "" }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = l.local_addr().expect("bound");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    format!("http://{addr}/v1/traces")
}

/// Metrics and traces on vs off. Variants are interleaved over several
/// rounds and the median taken, so a noisy neighbour does not land on one
/// variant only.
async fn overheads(
    mock: &servers::ServerProcess,
    rates: &[f64],
    dur: Duration,
    rounds: usize,
) -> Vec<Overhead> {
    // "off again" is a second, independent baseline: how far it lands from
    // "off" is the noise floor of this end-to-end comparison.
    const VARIANTS: [&str; 6] = [
        "off",
        "metrics",
        "traces",
        "traces 10%",
        "metrics+traces",
        "off again",
    ];
    let otlp = discard_collector().await;
    let start = |ratio: f64| {
        crate::telemetry::Telemetry::start(crate::telemetry::Settings {
            endpoint: otlp.clone(),
            sample_ratio: ratio,
            propagate: true,
            service_name: Some("llmload-selftest".into()),
        })
        .ok()
    };
    let tel_all = start(1.0);
    let tel_tenth = start(0.1);
    let mut out = Vec::new();
    for &rate in rates {
        let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); VARIANTS.len()];
        for round in 0..rounds {
            // Rotate the order each round so no variant always runs first
            // or last (drift within a round would otherwise bias them).
            for step in 0..VARIANTS.len() {
                let vi = (step + round) % VARIANTS.len();
                let variant = &VARIANTS[vi];
                let traced = variant.contains("traces");
                let tel = if variant.contains("10%") {
                    &tel_tenth
                } else {
                    &tel_all
                };
                let c = client(&mock.url, traced);
                let metrics = crate::daemon::metrics::Metrics::new();
                let span = tel.as_ref().filter(|_| traced).map(|t| {
                    t.sweep_started(&crate::telemetry::SweepAttrs {
                        target: "selftest",
                        model: "selftest",
                        qps: &[rate],
                        run_id: "selftest",
                        job: None,
                    })
                });
                let trace_obs: Option<Arc<dyn Observer>> = match (tel, &span) {
                    (Some(t), Some(s)) => Some(Arc::new(t.request_observer(
                        s,
                        "selftest",
                        c.uri(),
                        512,
                        0.0,
                    ))),
                    _ => None,
                };
                let observer: Arc<dyn Observer> = if variant.contains("metrics") {
                    Arc::new(crate::daemon::metrics::MetricsObserver {
                        job: metrics.for_job("selftest", "selftest", "selftest"),
                        next: trace_obs,
                    })
                } else {
                    trace_obs.unwrap_or_else(|| Arc::new(NoObserver))
                };
                let e = engine(c, observer, 512);
                let spec = LevelSpec {
                    index: 0,
                    qps: rate,
                    duration: Some(dur),
                    arrival: Arrival::Constant,
                    seed: 0,
                };
                if let (Some(t), Some(s)) = (tel, &span) {
                    t.level_started(s, &spec);
                }
                let _ = probe(&e, rate.min(200.0), Duration::from_millis(300)).await;
                let p = probe(&e, rate, dur).await;
                if let Some(t) = tel
                    && traced
                {
                    // Export inside the measured process, outside the
                    // measured window: the batch processor's work is paid
                    // by the client either way; flush makes it land in
                    // this variant's round, not the next one's.
                    let cpu0 = cpu_seconds();
                    t.flush().await;
                    let flush_cpu = cpu_seconds() - cpu0;
                    samples[vi].push((
                        (p.cpu_s + flush_cpu) / p.sent.max(1) as f64 * 1000.0,
                        p.ttft_p50_ms,
                    ));
                } else {
                    samples[vi].push((p.cpu_s / p.sent.max(1) as f64 * 1000.0, p.ttft_p50_ms));
                }
            }
        }
        let median = |v: &[(f64, f64)], k: usize| {
            let mut x: Vec<f64> = v.iter().map(|s| if k == 0 { s.0 } else { s.1 }).collect();
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
        let base = median(&samples[0], 0);
        for (vi, variant) in VARIANTS.iter().enumerate() {
            let per_1k = median(&samples[vi], 0);
            out.push(Overhead {
                rate,
                variant: (*variant).into(),
                cpu_s_per_1k_requests: per_1k,
                cpu_overhead_pct: (per_1k / base - 1.0) * 100.0,
                ttft_p50_ms: median(&samples[vi], 1),
            });
        }
    }
    for t in [tel_all, tel_tenth].into_iter().flatten() {
        t.shutdown().await;
    }
    out
}

/// The observers' own cost, measured directly: synthetic 64-token
/// records pushed through each observer (export flushed and included),
/// CPU time per request. Free of the run-to-run noise of the on/off runs.
#[derive(Debug, Clone, Serialize)]
pub struct ObserverCost {
    pub metrics_us_per_request: f64,
    pub traces_us_per_request: f64,
    /// Client CPU per request with both off, at 1,000 req/s (the "off" runs).
    pub baseline_us_per_request: f64,
    pub metrics_pct: f64,
    pub traces_pct: f64,
    pub both_pct: f64,
}

async fn observer_cost(baseline_us: f64) -> ObserverCost {
    const N: u32 = 20_000;
    let ms = Duration::from_millis;
    let mut rec = RequestRecord::new(0, ms(0), ms(0));
    rec.first_token_at = Some(ms(5));
    rec.first_content_at = rec.first_token_at;
    rec.done_at = ms(6);
    rec.token_chunks = 64;
    rec.itl_us = vec![15; 63];
    rec.usage_output_tokens = Some(64);
    rec.usage_input_tokens = Some(20);
    rec.status = Some(200);
    rec.finish = Some(crate::chunk::FinishReason::Length);
    rec.response_id = Some("chatcmpl-selftest".into());
    rec.response_model = Some("selftest".into());
    let spec = LevelSpec {
        index: 0,
        qps: 1000.0,
        duration: None,
        arrival: Arrival::Constant,
        seed: 0,
    };
    let base = std::time::Instant::now();

    let metrics = crate::daemon::metrics::Metrics::new();
    let m_obs = crate::daemon::metrics::MetricsObserver {
        job: metrics.for_job("selftest", "selftest", "selftest"),
        next: None,
    };
    let c0 = cpu_seconds();
    for i in 0..N {
        rec.seq = i as u64;
        m_obs.request_done(&spec, base, &rec, None);
    }
    let metrics_us = (cpu_seconds() - c0) / N as f64 * 1e6;

    let otlp = discard_collector().await;
    let mut traces_us = 0.0;
    if let Ok(tel) = crate::telemetry::Telemetry::start(crate::telemetry::Settings {
        endpoint: otlp,
        sample_ratio: 1.0,
        propagate: true,
        service_name: Some("llmload-selftest".into()),
    }) {
        let span = tel.sweep_started(&crate::telemetry::SweepAttrs {
            target: "selftest",
            model: "selftest",
            qps: &[1000.0],
            run_id: "selftest",
            job: None,
        });
        tel.level_started(&span, &spec);
        let uri: http::Uri = "http://127.0.0.1:1/v1/chat/completions"
            .parse()
            .expect("static URI");
        let t_obs = tel.request_observer(&span, "selftest", &uri, 512, 0.0);
        let c0 = cpu_seconds();
        for i in 0..N {
            rec.seq = i as u64;
            let hook = t_obs.request_start(&spec, base, &rec);
            t_obs.request_done(&spec, base, &rec, hook);
            // Let the batch thread keep up, as it does under real load.
            if i % 2000 == 1999 {
                tokio::task::yield_now().await;
            }
        }
        tel.flush().await;
        traces_us = (cpu_seconds() - c0) / N as f64 * 1e6;
        tel.shutdown().await;
    }
    let pct = |us: f64| us / baseline_us.max(1e-9) * 100.0;
    ObserverCost {
        metrics_us_per_request: metrics_us,
        traces_us_per_request: traces_us,
        baseline_us_per_request: baseline_us,
        metrics_pct: pct(metrics_us),
        traces_pct: pct(traces_us),
        both_pct: pct(metrics_us + traces_us),
    }
}

/// One minute of the fault soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakMinute {
    pub minute: u64,
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub balanced: bool,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub rss_mb: f64,
    pub fds: usize,
}

/// A bounded soak against the mock with every fault kind mixed in, one
/// level per minute; RSS and fds after each.
pub async fn soak(minutes: u64, rate: f64, log: &dyn Fn(&str)) -> Result<Vec<SoakMinute>, String> {
    let srv = servers::mock(
        "llmload mock",
        &[
            "--slots",
            "256",
            "--queue",
            "256",
            "--ttft",
            "50ms",
            "--prefill-per-token",
            "0",
            "--tpot",
            "10ms",
            "--tpot-growth",
            "0",
            "--output-tokens",
            "32",
            "--stall-for",
            "2s",
            "--truth-capacity",
            "1000",
            "--fault",
            "http500=0.01",
            "--fault",
            "http503=0.01",
            "--fault",
            "http429=0.01",
            "--fault",
            "reset=0.01",
            "--fault",
            "truncate=0.01",
            "--fault",
            "malformed=0.01",
            "--fault",
            "stall=0.01",
            "--fault",
            "slow-first-byte=0.01",
        ],
    )?;
    let mut c = ClientConfig::new(&srv.url);
    c.first_token_timeout = Some(Duration::from_secs(1));
    c.idle_timeout = Some(Duration::from_secs(1));
    c.request_timeout = Duration::from_secs(10);
    let e = engine(
        Arc::new(LlmClient::new(c).map_err(|e| e.to_string())?),
        Arc::new(NoObserver),
        512,
    );
    let mut out = Vec::new();
    let mut seq = 0;
    for minute in 1..=minutes {
        let run = LevelRun::new();
        let o = e
            .run_level(
                LevelSpec {
                    index: minute as usize,
                    qps: rate,
                    duration: Some(Duration::from_secs(60)),
                    arrival: Arrival::Poisson,
                    seed: minute,
                },
                &run,
                CancellationToken::new(),
                CancellationToken::new(),
                seq,
            )
            .await;
        seq += o.stats.sent;
        let m = SoakMinute {
            minute,
            sent: o.stats.sent,
            succeeded: o.stats.succeeded,
            failed: o.stats.failed,
            balanced: o.stats.sent == o.stats.succeeded + o.stats.failed,
            errors: o.stats.errors.iter().map(|(k, v)| (k.key(), *v)).collect(),
            rss_mb: rss() as f64 / 1e6,
            fds: open_fds(),
        };
        log(&format!(
            "  minute {minute:>2}: sent {} ok {} failed {} balanced {} RSS {:.1} MB fds {} errors {:?}",
            m.sent, m.succeeded, m.failed, m.balanced, m.rss_mb, m.fds, m.errors
        ));
        out.push(m);
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    pub throughput: Vec<Throughput>,
    pub accuracy: Vec<Accuracy>,
    pub memory: Option<Memory>,
    pub overhead: Vec<Overhead>,
    pub observer_cost: ObserverCost,
    /// Peak RSS after the memory run alone (steady load, before the
    /// throughput search overloads the client on purpose).
    pub peak_rss_steady_mb: f64,
    pub peak_rss_mb: f64,
    pub targets: Vec<(String, bool, String)>,
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {cpu}, loopback")
}

/// Run everything. `log` receives progress lines.
pub async fn run(opts: &Options, log: &dyn Fn(&str)) -> Result<Report, String> {
    let probe_for = if opts.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(3)
    };
    let bisect = if opts.quick { 1 } else { 2 };
    let mut throughput = Vec::new();

    let use_nginx = !opts.skip_nginx && servers::nginx_path().is_some();
    if !use_nginx {
        log("nginx not found or skipped: bulk-server rows omitted (apt-get install nginx-light)");
    }
    // Memory first, in a fresh process state: later probes that overload
    // the client on purpose leave freed heap that glibc keeps, which would
    // hide the steady-state figure.
    let want = |section: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == section);
    let total: u64 = if opts.quick { 200_000 } else { 1_000_000 };
    let memory = if !want("memory") {
        None
    } else if use_nginx {
        let srv = servers::nginx(64)?;
        let rate = 8000.0;
        log(&format!(
            "memory: {total} requests at {rate:.0} req/s against nginx"
        ));
        let e = engine(client(&srv.url, false), Arc::new(NoObserver), 512);
        Some(memory(&e, "nginx (bulk)", rate, total).await)
    } else {
        let srv = mock_with(&MockKnobs {
            slots: "1000000",
            queue: "0",
            ttft: "0",
            tpot: "0",
            tokens: "64",
            truth: "0",
        })?;
        let rate = 2500.0;
        log(&format!(
            "memory: {total} requests at {rate:.0} req/s against the mock"
        ));
        let e = engine(client(&srv.url, false), Arc::new(NoObserver), 512);
        Some(memory(&e, "llmload mock", rate, total).await)
    };
    let peak_after_memory = peak_rss();

    if use_nginx && want("throughput") {
        for tokens in [64usize, 512] {
            let srv = servers::nginx(tokens)?;
            log(&format!(
                "throughput: {} (every POST answered with a {tokens}-token stream)",
                srv.name
            ));
            let e = engine(client(&srv.url, false), Arc::new(NoObserver), 512);
            let p = find_max(&e, srv.pid(), probe_for, bisect, log).await;
            throughput.push(throughput_row(
                "nginx (bulk)",
                &format!("{tokens} tokens, no gap"),
                &p,
                probe_for,
            ));
        }
    }
    for (tokens, tpot, label) in [
        (64u32, "0", "64 tokens, no gap"),
        (512, "0", "512 tokens, no gap"),
        (64, "10ms", "64 tokens, 10 ms gap"),
    ] {
        if !want("throughput") {
            break;
        }
        let t = tokens.to_string();
        let srv = mock_with(&MockKnobs {
            slots: "1000000",
            queue: "0",
            ttft: "0",
            tpot,
            tokens: &t,
            truth: "0",
        })?;
        log(&format!("throughput: llmload mock, {label}"));
        let e = engine(client(&srv.url, false), Arc::new(NoObserver), 512);
        let p = find_max(&e, srv.pid(), probe_for, bisect, log).await;
        throughput.push(throughput_row("llmload mock", label, &p, probe_for));
    }

    log("accuracy: client vs the mock's own stamps (TTFT 20 ms, 16 tokens 2 ms apart)");
    let acc_mock = mock_with(&MockKnobs {
        slots: "100000",
        queue: "0",
        ttft: "20ms",
        tpot: "2ms",
        tokens: "16",
        truth: "200000",
    })?;
    let mut acc = Vec::new();
    for (rate, secs) in [(10.0, 5.0), (100.0, 5.0), (1000.0, 3.0)] {
        if !want("accuracy") {
            break;
        }
        let secs = if opts.quick { secs * 0.6 } else { secs };
        let a = accuracy(&acc_mock, rate, Duration::from_secs_f64(secs)).await;
        log(&format!(
            "    {rate:>5.0} req/s: TTFT error p50 {:.0} µs p99 {:.0} µs max {:.0} µs ({} requests)",
            a.ttft_error.p50_us, a.ttft_error.p99_us, a.ttft_error.max_us, a.requests
        ));
        acc.push(a);
    }

    drop(acc_mock);

    log("overheads: metrics and traces on vs off (mock, 64 tokens, TTFT 5 ms)");
    let ov_mock = mock_with(&MockKnobs {
        slots: "100000",
        queue: "0",
        ttft: "5ms",
        tpot: "0",
        tokens: "64",
        truth: "0",
    })?;
    let ov_dur = if opts.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(5)
    };
    let overhead = if want("overhead") {
        overheads(
            &ov_mock,
            &[100.0, 1000.0],
            ov_dur,
            if opts.quick { 2 } else { 5 },
        )
        .await
    } else {
        Vec::new()
    };

    let baseline_us = overhead
        .iter()
        .find(|o| o.rate == 1000.0 && o.variant == "off")
        .map_or(0.0, |o| o.cpu_s_per_1k_requests * 1000.0);
    let observer_cost = observer_cost(if baseline_us > 0.0 {
        baseline_us
    } else {
        300.0
    })
    .await;

    let mut targets = Vec::new();
    if let Some(t) = throughput
        .iter()
        .find(|t| t.server == "nginx (bulk)" && t.stream.starts_with("64"))
    {
        targets.push((
            ">= 10,000 req/s held against the bulk server (64 tokens)".to_string(),
            t.held_rps >= 10_000.0,
            format!("{:.0} req/s", t.held_rps),
        ));
    }
    if let Some(t) = throughput
        .iter()
        .find(|t| t.server == "llmload mock" && t.stream == "64 tokens, no gap")
    {
        targets.push((
            ">= 2,000 req/s held against the mock (64 tokens)".to_string(),
            t.held_rps >= 2000.0,
            format!("{:.0} req/s", t.held_rps),
        ));
    }
    if let Some(a) = acc.iter().find(|a| a.rate == 100.0) {
        targets.push((
            "TTFT error p99 <= 1 ms at 100 req/s".to_string(),
            a.ttft_error.p99_us <= 1000.0,
            format!("{:.0} µs", a.ttft_error.p99_us),
        ));
    }
    if let Some(m) = &memory {
        targets.push((
            format!(
                "RSS growth <= 5 MB from 10^4 to {} requests",
                m.requests_at_end
            ),
            m.growth_mb <= 5.0,
            format!("{:+.1} MB", m.growth_mb),
        ));
    }
    let e2e = |v: &str| {
        overhead
            .iter()
            .find(|o| o.rate == 1000.0 && o.variant == v)
            .map(|o| o.cpu_overhead_pct)
    };
    if let (Some(both), Some(metrics), Some(traces), Some(noise)) = (
        e2e("metrics+traces"),
        e2e("metrics"),
        e2e("traces"),
        e2e("off again"),
    ) {
        targets.push((
            "metrics CPU overhead <= 5 % at 1,000 req/s (end to end)".to_string(),
            metrics <= 5.0,
            format!("{metrics:+.1} % (noise floor {noise:+.1} %)"),
        ));
        targets.push((
            "metrics + traces CPU overhead <= 5 % at 1,000 req/s (end to end, every request span kept)"
                .to_string(),
            both <= 5.0,
            format!(
                "{both:+.1} % (traces alone {traces:+.1} %; in isolation the observers cost {:.1} + {:.1} µs of {:.0} µs per request = {:.1} %)",
                observer_cost.metrics_us_per_request,
                observer_cost.traces_us_per_request,
                observer_cost.baseline_us_per_request,
                observer_cost.both_pct
            ),
        ));
    }

    Ok(Report {
        machine: machine(),
        throughput,
        accuracy: acc,
        memory,
        overhead,
        observer_cost,
        peak_rss_mb: peak_rss() as f64 / 1e6,
        peak_rss_steady_mb: peak_after_memory as f64 / 1e6,
        targets,
    })
}

/// The human-readable table.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "llmload selftest — {}", r.machine);
    let _ = writeln!(
        o,
        "\nTHROUGHPUT (highest rate held: achieved >= 99% of target, lag p99 < 5 ms, >= 99.9% ok, none dropped)"
    );
    let _ = writeln!(
        o,
        "  {:<14} {:<22} {:>7} {:>9} {:>8} {:>8} {:>6} {:>11} {:>11} {:>8} {:>11}",
        "server",
        "stream",
        "req/s",
        "tokens/s",
        "streams",
        "lag p99",
        "cores",
        "s/1k req",
        "s/1M tok",
        "srv cores",
        "srv s/1M tok"
    );
    for t in &r.throughput {
        let _ = writeln!(
            o,
            "  {:<14} {:<22} {:>7.0} {:>9.0} {:>8.0} {:>5.2} ms {:>6.2} {:>11.4} {:>11.2} {:>9.2} {:>11.2}",
            t.server,
            t.stream,
            t.held_rps,
            t.tokens_per_s,
            t.concurrent_streams,
            t.lag_p99_ms,
            t.client_cores,
            t.cpu_s_per_1k_requests,
            t.cpu_s_per_1m_tokens,
            t.server_cores,
            t.server_cpu_s_per_1m_tokens
        );
    }
    let _ = writeln!(
        o,
        "  (client columns: cores used, CPU seconds per 1,000 requests and per 1,000,000 tokens; srv: the server process)"
    );
    let _ = writeln!(
        o,
        "\nACCURACY (|client − server| on the shared monotonic clock; µs)"
    );
    let _ = writeln!(
        o,
        "  {:>8} {:>6}   {:>22}   {:>22}   {:>22}  {:>8}",
        "req/s", "n", "TTFT p50/p99/max", "ITL p50/p99/max", "E2E p50/p99/max", "lag p99"
    );
    for a in &r.accuracy {
        let f = |e: &ErrStats| format!("{:.0}/{:.0}/{:.0}", e.p50_us, e.p99_us, e.max_us);
        let _ = writeln!(
            o,
            "  {:>8.0} {:>6}   {:>22}   {:>22}   {:>22}  {:>5.2} ms",
            a.rate,
            a.requests,
            f(&a.ttft_error),
            f(&a.itl_error),
            f(&a.e2e_error),
            a.lag_p99_ms
        );
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(
            o,
            "\nMEMORY ({} at {:.0} req/s): RSS {:.1} MB after 10^4 requests, {:.1} MB after {} ({:+.1} MB); fds {} -> {}",
            m.server,
            m.rate,
            m.rss_at_1e4_mb,
            m.rss_at_end_mb,
            m.requests_at_end,
            m.growth_mb,
            m.fds_at_1e4,
            m.fds_at_end
        );
        let pts: Vec<String> = m
            .series_mb
            .iter()
            .map(|(n, r, f)| format!("{n}: {r:.1} MB/{f} fds"))
            .collect();
        let _ = writeln!(o, "  RSS through the run: {}", pts.join(", "));
    }
    let _ = writeln!(
        o,
        "\nOVERHEAD (mock, 64 tokens; end to end: process CPU per 1,000 requests vs off, median of interleaved runs; noisy at these rates)"
    );
    for ov in &r.overhead {
        let _ = writeln!(
            o,
            "  {:>6.0} req/s  {:<15} {:>8.4} s  {:>+7.1} %   TTFT p50 {:.2} ms",
            ov.rate, ov.variant, ov.cpu_s_per_1k_requests, ov.cpu_overhead_pct, ov.ttft_p50_ms
        );
    }
    let c = &r.observer_cost;
    let _ = writeln!(
        o,
        "  measured directly (20,000 synthetic 64-token requests through each observer, export included):\n    metrics {:.1} µs/request ({:.1} %), traces {:.1} µs/request ({:.1} %), both {:.1} % of the client's {:.0} µs/request at 1,000 req/s",
        c.metrics_us_per_request,
        c.metrics_pct,
        c.traces_us_per_request,
        c.traces_pct,
        c.both_pct,
        c.baseline_us_per_request
    );
    let _ = writeln!(
        o,
        "\npeak RSS {:.1} MB under steady load; {:.1} MB after the throughput search (which overloads the client on purpose)",
        r.peak_rss_steady_mb, r.peak_rss_mb
    );
    let _ = writeln!(o, "\nTARGETS");
    for (what, ok, value) in &r.targets {
        let _ = writeln!(
            o,
            "  [{}] {what}: {value}",
            if *ok { "met" } else { "MISSED" }
        );
    }
    o
}
