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
        held: achieved >= 0.99 * qps && lag_p99_ms < 5.0 && success >= 0.999 && s.dropped == 0,
    }
}

/// Highest rate held: double from 1,000 until a probe fails, then bisect.
async fn find_max(e: &Engine, probe_for: Duration, bisect: usize, log: &dyn Fn(&str)) -> Probe {
    // Warm the pool so the first probe does not pay for connections.
    let _ = probe(e, 200.0, Duration::from_secs(1)).await;
    let mut best: Option<Probe> = None;
    let mut fail: Option<f64> = None;
    let mut rate = 500.0;
    while rate <= 64_000.0 {
        let p = probe(e, rate, probe_for).await;
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
            let p = probe(e, mid, probe_for).await;
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
}

async fn memory(e: &Engine, server: &str, rate: f64, total: u64) -> Memory {
    let run = LevelRun::new();
    let progress = run.progress.clone();
    let sampler = tokio::spawn(async move {
        loop {
            if progress.completed.load(Ordering::Relaxed) >= 10_000 {
                return (rss(), open_fds());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let dur = Duration::from_secs_f64(total as f64 / rate);
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
    let (at_1e4, fds_1e4) = sampler.await.unwrap_or((0, 0));
    let end = rss();
    Memory {
        server: server.into(),
        rate,
        rss_at_1e4_mb: at_1e4 as f64 / 1e6,
        rss_at_end_mb: end as f64 / 1e6,
        requests_at_end: out.stats.sent,
        growth_mb: (end as f64 - at_1e4 as f64) / 1e6,
        fds_at_1e4: fds_1e4,
        fds_at_end: open_fds(),
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
    const VARIANTS: [&str; 4] = ["off", "metrics", "traces", "metrics+traces"];
    let otlp = discard_collector().await;
    let tel = crate::telemetry::Telemetry::start(crate::telemetry::Settings {
        endpoint: otlp,
        sample_ratio: 1.0,
        propagate: true,
        service_name: Some("llmload-selftest".into()),
    })
    .ok();
    let mut out = Vec::new();
    for &rate in rates {
        let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); VARIANTS.len()];
        for _ in 0..rounds {
            for (vi, variant) in VARIANTS.iter().enumerate() {
                let traced = variant.contains("traces");
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
                let trace_obs: Option<Arc<dyn Observer>> = match (&tel, &span) {
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
                if let (Some(t), Some(s)) = (&tel, &span) {
                    t.level_started(s, &spec);
                }
                let _ = probe(&e, rate.min(200.0), Duration::from_millis(300)).await;
                let p = probe(&e, rate, dur).await;
                if let Some(t) = &tel
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
    if let Some(t) = tel {
        t.shutdown().await;
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    pub throughput: Vec<Throughput>,
    pub accuracy: Vec<Accuracy>,
    pub memory: Option<Memory>,
    pub overhead: Vec<Overhead>,
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
    let total: u64 = if opts.quick { 200_000 } else { 1_000_000 };
    let memory = if use_nginx {
        let srv = servers::nginx(64)?;
        let rate = 8000.0;
        log(&format!(
            "memory: {total} requests at {rate:.0} req/s against nginx"
        ));
        let e = engine(client(&srv.url, false), Arc::new(NoObserver), 512);
        Some(memory(&e, "nginx (bulk)", rate, total).await)
    } else {
        let srv = servers::mock(
            "llmload mock",
            &[
                "--slots",
                "1000000",
                "--queue",
                "0",
                "--ttft",
                "0",
                "--prefill-per-token",
                "0",
                "--tpot",
                "0",
                "--tpot-growth",
                "0",
                "--output-tokens",
                "64",
                "--truth-capacity",
                "0",
            ],
        )?;
        let rate = 2500.0;
        log(&format!(
            "memory: {total} requests at {rate:.0} req/s against the mock"
        ));
        let e = engine(client(&srv.url, false), Arc::new(NoObserver), 512);
        Some(memory(&e, "llmload mock", rate, total).await)
    };
    let peak_after_memory = peak_rss();

    if use_nginx {
        for tokens in [64usize, 512] {
            let srv = servers::nginx(tokens)?;
            log(&format!(
                "throughput: {} (every POST answered with a {tokens}-token stream)",
                srv.name
            ));
            let e = engine(client(&srv.url, false), Arc::new(NoObserver), 512);
            let p = find_max(&e, probe_for, bisect, log).await;
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
        let t = tokens.to_string();
        let srv = servers::mock(
            "llmload mock",
            &[
                "--slots",
                "1000000",
                "--queue",
                "0",
                "--ttft",
                "0",
                "--prefill-per-token",
                "0",
                "--tpot",
                tpot,
                "--tpot-growth",
                "0",
                "--output-tokens",
                &t,
                "--truth-capacity",
                "0",
            ],
        )?;
        log(&format!("throughput: llmload mock, {label}"));
        let e = engine(client(&srv.url, false), Arc::new(NoObserver), 512);
        let p = find_max(&e, probe_for, bisect, log).await;
        throughput.push(throughput_row("llmload mock", label, &p, probe_for));
    }

    log("accuracy: client vs the mock's own stamps (TTFT 20 ms, 16 tokens 2 ms apart)");
    let acc_mock = servers::mock(
        "llmload mock",
        &[
            "--slots",
            "100000",
            "--queue",
            "0",
            "--ttft",
            "20ms",
            "--prefill-per-token",
            "0",
            "--tpot",
            "2ms",
            "--tpot-growth",
            "0",
            "--output-tokens",
            "16",
            "--truth-capacity",
            "200000",
        ],
    )?;
    let mut acc = Vec::new();
    for (rate, secs) in [(10.0, 5.0), (100.0, 5.0), (1000.0, 3.0)] {
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
    let ov_mock = servers::mock(
        "llmload mock",
        &[
            "--slots",
            "100000",
            "--queue",
            "0",
            "--ttft",
            "5ms",
            "--prefill-per-token",
            "0",
            "--tpot",
            "0",
            "--tpot-growth",
            "0",
            "--output-tokens",
            "64",
            "--truth-capacity",
            "0",
        ],
    )?;
    let ov_dur = if opts.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(5)
    };
    let overhead = overheads(
        &ov_mock,
        &[100.0, 1000.0],
        ov_dur,
        if opts.quick { 2 } else { 3 },
    )
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
    let worst = overhead
        .iter()
        .filter(|o| o.rate >= 1000.0 && o.variant != "off")
        .map(|o| o.cpu_overhead_pct)
        .fold(f64::MIN, f64::max);
    if worst > f64::MIN {
        targets.push((
            "metrics + traces CPU overhead <= 5 % (1,000 req/s)".to_string(),
            worst <= 5.0,
            format!("{worst:+.1} %"),
        ));
    }

    Ok(Report {
        machine: machine(),
        throughput,
        accuracy: acc,
        memory,
        overhead,
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
        "  {:<14} {:<22} {:>10} {:>12} {:>9} {:>7} {:>12} {:>12}",
        "server", "stream", "req/s", "tokens/s", "lag p99", "cores", "CPU s/1k req", "CPU s/1M tok"
    );
    for t in &r.throughput {
        let _ = writeln!(
            o,
            "  {:<14} {:<22} {:>10.0} {:>12.0} {:>6.2} ms {:>7.2} {:>12.4} {:>12.2}",
            t.server,
            t.stream,
            t.held_rps,
            t.tokens_per_s,
            t.lag_p99_ms,
            t.client_cores,
            t.cpu_s_per_1k_requests,
            t.cpu_s_per_1m_tokens
        );
    }
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
    }
    let _ = writeln!(
        o,
        "\nOVERHEAD (mock, 64 tokens; CPU per 1,000 requests, vs off)"
    );
    for ov in &r.overhead {
        let _ = writeln!(
            o,
            "  {:>6.0} req/s  {:<15} {:>8.4} s  {:>+7.1} %   TTFT p50 {:.2} ms",
            ov.rate, ov.variant, ov.cpu_s_per_1k_requests, ov.cpu_overhead_pct, ov.ttft_p50_ms
        );
    }
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
