//! Throughput: the highest rate the client holds against a server.

use super::rig::*;

use crate::engine::sweep::Engine;
use serde::Serialize;
use std::time::Duration;

/// A probe that missed only on schedule lag (it sent the whole rate, every
/// request succeeded, none was dropped), and by less than
/// [`HICCUP_LAG_MS`], is tried this many more times: on a shared machine
/// one descheduling of the client is a hiccup, not its limit.
const LAG_RETRIES: usize = 2;
/// A client past its limit falls further behind the longer it runs (lag
/// p99 of 60–500 ms in a 2 s probe); a descheduled one is late by a few
/// ms (7–14 ms seen on a busy CI runner). Only the latter is tried again.
const HICCUP_LAG_MS: f64 = 25.0;

/// One probe, repeated while it misses on lag alone (see [`LAG_RETRIES`]).
async fn steady_probe(
    e: &Engine,
    rate: f64,
    probe_for: Duration,
    server_pid: u32,
    log: &dyn Fn(&str),
) -> Probe {
    let mut tries = 0;
    loop {
        let p = probe_with_server(e, rate, probe_for, server_pid).await;
        log(&format!(
            "    {rate:>7.0} req/s: achieved {:.0}, lag p99 {:.2} ms, success {:.2}%, {}",
            p.achieved,
            p.lag_p99_ms,
            p.success * 100.0,
            if p.held { "held" } else { "NOT held" }
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lag_only = !p.held
            && p.lag_p99_ms < HICCUP_LAG_MS
            && p.achieved >= 0.99 * rate
            && p.success >= 0.999
            && p.dropped == 0;
        if !lag_only || tries == LAG_RETRIES {
            return p;
        }
        tries += 1;
        log("      (late on lag alone: tried again)");
    }
}

/// Highest rate held: double from 500 until a probe fails, then bisect.
pub(super) async fn find_max(
    e: &Engine,
    server_pid: u32,
    probe_for: Duration,
    bisect: usize,
    log: &dyn Fn(&str),
) -> Result<Probe, String> {
    // Warm the pool so the first probe does not pay for connections.
    let _ = probe(e, 200.0, Duration::from_secs(1)).await;
    let mut best: Option<Probe> = None;
    let mut fail: Option<f64> = None;
    let mut rate = 500.0;
    while rate <= 64_000.0 {
        let p = steady_probe(e, rate, probe_for, server_pid, log).await;
        if p.held {
            best = Some(p);
            rate *= 2.0;
        } else {
            fail = Some(rate);
            break;
        }
    }
    // Even the first rate failed: step down rather than report zeros.
    let mut last_fail: Option<Probe> = None;
    if best.is_none() {
        let mut down = 250.0;
        while down >= MIN_PROBE_RATE {
            let p = steady_probe(e, down, probe_for, server_pid, log).await;
            if p.held {
                fail = Some(down * 2.0);
                best = Some(p);
                break;
            }
            last_fail = Some(p);
            down /= 2.0;
        }
    }
    if let (Some(b), Some(f)) = (best.clone(), fail) {
        let (mut lo, mut hi) = (b.target, f);
        for _ in 0..bisect {
            let mid = ((lo + hi) / 2.0 / 250.0).round() * 250.0;
            if mid <= lo || mid >= hi {
                break;
            }
            let p = steady_probe(e, mid, probe_for, server_pid, log).await;
            if p.held {
                lo = mid;
                best = Some(p);
            } else {
                hi = mid;
            }
        }
    }
    if let Some(b) = best {
        return Ok(b);
    }
    Err(match last_fail {
        Some(p) => format!(
            "no rate down to {MIN_PROBE_RATE:.0} req/s was held (at {:.0}: achieved {:.0}, lag p99 {:.1} ms, {:.1}% ok, {} dropped)",
            p.target,
            p.achieved,
            p.lag_p99_ms,
            p.success * 100.0,
            p.dropped
        ),
        None => "no probe ran".into(),
    })
}

/// The lowest rate the throughput search tries before giving up.
pub const MIN_PROBE_RATE: f64 = 30.0;

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
    /// Why this row has no figures (nothing held), when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub(super) fn throughput_row(
    server: &str,
    stream: &str,
    p: &Result<Probe, String>,
    dur: Duration,
) -> Throughput {
    let p = match p {
        Ok(p) => p,
        Err(why) => {
            return Throughput {
                server: server.into(),
                stream: stream.into(),
                held_rps: 0.0,
                tokens_per_s: 0.0,
                lag_p99_ms: 0.0,
                client_cores: 0.0,
                cpu_s_per_1k_requests: 0.0,
                cpu_s_per_1m_tokens: 0.0,
                concurrent_streams: 0.0,
                server_cpu_s_per_1m_tokens: 0.0,
                server_cores: 0.0,
                note: Some(why.clone()),
            };
        }
    };
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
        note: None,
    }
}
