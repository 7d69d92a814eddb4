//! The test rig shared by every section: process counters (CPU, RSS,
//! fds), the one-message workload, engines, mock processes and probes.

use super::servers;
use crate::client::{ClientConfig, LlmClient};
use crate::engine::sweep::{Engine, LevelRun, LevelSpec, Observer};
use crate::plan::schedule::Arrival;
use crate::workload::dataset::{Conversation, Message, Role};
use crate::workload::request::{BodyParams, prepare_all};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

pub(super) fn conversation() -> Vec<Conversation> {
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
        max_tokens: None,
    }]
}

pub(super) fn engine(
    client: Arc<LlmClient>,
    observer: Arc<dyn Observer>,
    max_tokens: u32,
) -> Engine {
    Engine {
        client,
        requests: Arc::new(prepare_all(
            &conversation(),
            &BodyParams {
                model: "selftest".into(),
                max_tokens,
                temperature: 0.0,
                stream_usage: true,
                ..Default::default()
            },
        )),
        max_in_flight: 200_000,
        server_metrics: None,
        shard: None,
        observer,
        sessions: None,
    }
}

pub(super) fn client(url: &str, keep_ids: bool) -> Arc<LlmClient> {
    let mut c = ClientConfig::new(url);
    c.request_timeout = Duration::from_secs(30);
    c.keep_response_ids = keep_ids;
    Arc::new(LlmClient::new(c).expect("a loopback URL is valid"))
}

/// The mock knobs the sections vary; prefill and TPOT growth are off.
pub(super) struct MockKnobs<'a> {
    pub(super) slots: &'a str,
    pub(super) queue: &'a str,
    pub(super) ttft: &'a str,
    pub(super) tpot: &'a str,
    pub(super) tokens: &'a str,
    pub(super) truth: &'a str,
}

pub(super) fn mock_with(k: &MockKnobs) -> Result<servers::ServerProcess, String> {
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
    /// Connections the client opened during the probe.
    pub connections: u64,
    pub held: bool,
}

pub(super) async fn probe(e: &Engine, qps: f64, dur: Duration) -> Probe {
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
                load: Default::default(),
                limit: None,
                max_concurrency: None,
                sessions: false,
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
        connections: s.new_connections,
        held: achieved >= 0.99 * qps && lag_p99_ms < 5.0 && success >= 0.999 && s.dropped == 0,
    }
}

/// CPU seconds (user + system) another process has used.
pub(super) fn process_cpu(pid: u32) -> f64 {
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
pub(super) async fn probe_with_server(
    e: &Engine,
    qps: f64,
    dur: Duration,
    server_pid: u32,
) -> Probe {
    let s0 = process_cpu(server_pid);
    let mut p = probe(e, qps, dur).await;
    p.server_cpu_s = process_cpu(server_pid) - s0;
    p
}
