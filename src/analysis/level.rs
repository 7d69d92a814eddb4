//! One level as written to `benchmark_qps_results.json`: the seed's
//! fields, llmload's beside them, and the rules that flag a level whose
//! client, not the endpoint, was the limit.

use crate::analysis::stability::Stability;
use crate::analysis::stats::{Dist, LATE_SEND, LevelStats, RATE_SCALE, encode, round};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Token accounting for a level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCounts {
    /// Output tokens of successful requests.
    pub output_total: u64,
    pub output_per_request: Dist,
    /// `usage` (exact, from the server), `chunks` (counted, an estimate),
    /// `mixed`, or `none` when nothing succeeded.
    pub output_source: String,
    /// Successful requests whose usage count differed from the number of
    /// token-carrying chunks (servers that batch tokens per event).
    pub usage_chunk_mismatch: u64,
    /// Prompt tokens as reported by the server's usage (0 when not reported).
    pub input_total: u64,
    /// With a tokenizer: requests whose prompt tokens both we and the
    /// server counted, how many of those counts differed, and by how much
    /// the server's exceeded ours on average (a chat template adds tokens
    /// the prompt text does not have).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub input_counted: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub input_mismatch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_excess_mean: Option<f64>,
    /// Successful requests whose server reported cached prompt tokens
    /// (`usage.prompt_tokens_details.cached_tokens`), the cached tokens
    /// and the prompt tokens of those requests.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_reported: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_total: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_input_total: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Serialized histograms for exact merging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SerializedHistograms {
    /// `hdr-v2-deflate-base64`, latencies in microseconds, rates in
    /// milli-units per second.
    pub encoding: String,
    pub ttft_us: String,
    pub e2e_us: String,
    pub itl_us: String,
    pub tpot_us: String,
    pub schedule_lag_us: String,
    pub tokens_per_sec_milli: String,
    pub output_tokens: String,
    #[serde(default)]
    pub ttfc_us: String,
    #[serde(default)]
    pub decode_tokens_per_sec_milli: String,
    #[serde(default)]
    pub time_to_error_us: String,
    #[serde(default)]
    pub e2e_all_us: String,
    #[serde(default)]
    pub connect_us: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_queue_us: String,
}

/// One level as written to `benchmark_qps_results.json`. The first seven
/// fields are the seed's, with its names and units; the rest are ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelResult {
    pub qps_target: f64,
    /// Requests sent per second of the send window.
    pub actual_qps: f64,
    /// Succeeded ÷ scheduled, percent.
    pub success_rate: f64,
    pub ttft: Dist,
    pub e2e_latency: Dist,
    /// The seed's definition: output tokens ÷ E2E, per request.
    pub tokens_per_sec: Dist,
    /// Error key → count, including dropped sends.
    pub errors: BTreeMap<String, u64>,

    /// Successful requests per second of the send window (goodput).
    pub completed_qps: f64,
    pub scheduled: u64,
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Configured seconds of sending.
    pub duration: f64,
    /// Seconds spent sending: the configured duration, or longer when the
    /// pacer fell behind, or shorter when the level was stopped.
    pub send_window_s: f64,
    /// Seconds waited after the send window for in-flight requests.
    pub drain_s: f64,
    /// Time to first answer content, after any reasoning tokens.
    pub ttfc: Dist,
    /// Inter-token latency: every gap between token-carrying chunks.
    pub itl: Dist,
    /// Time per output token after the first, per request.
    pub tpot: Dist,
    /// 1/TPOT: decode speed after the first token, per request.
    pub decode_tokens_per_sec: Dist,
    /// All output tokens of the level ÷ level wall time (send + drain).
    pub output_throughput_tokens_per_sec: f64,
    pub tokens: TokenCounts,
    /// How late sends were against the schedule, seconds.
    pub schedule_lag: Dist,
    /// The client, not the endpoint, limited this level: see
    /// [`client_bound_reason`] for the rule, and `client_bound_reason` below
    /// for which part of it fired.
    pub client_bound: bool,
    pub finish_reasons: BTreeMap<String, u64>,
    /// The level was cut short (Ctrl-C, SIGTERM, stop request).
    #[serde(default)]
    pub interrupted: bool,
    /// Why the level is client-bound (empty when it is not).
    #[serde(default)]
    pub client_bound_reason: String,
    /// What the client used during the level (CPU, throttling, pacer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_usage: Option<ClientUsage>,
    /// Scheduled send → failure, over failed requests: how long users
    /// waited for an error.
    #[serde(default)]
    pub time_to_error: Dist,
    /// Scheduled send → end over every request sent, successful or not:
    /// under overload, the latency users actually see.
    #[serde(default)]
    pub e2e_latency_all: Dist,
    /// Connections opened during the level.
    #[serde(default)]
    pub new_connections: u64,
    /// Requests sent again on a new connection because the kept-alive one
    /// they were written on had been closed by the server.
    #[serde(default)]
    pub retried_stale_connection: u64,
    /// DNS + TCP + TLS time of the requests that opened a connection.
    #[serde(default)]
    pub connect: Dist,
    /// Share of the successful requests' summed TTFT spent inside the
    /// client opening (or waiting for) a connection.
    #[serde(default)]
    pub connection_setup_share: f64,
    /// `connection_setup_share` above [`SETUP_BOUND_SHARE`]: TTFT here is
    /// largely connection set-up (a connect storm), not the model.
    #[serde(default)]
    pub connection_bound: bool,
    /// Whether the backlog grew through the level, with the evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stability: Option<Stability>,
    /// With an SLO: good requests (succeeded within every threshold) per
    /// second of the send window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goodput: Option<f64>,
    /// With an SLO: good requests ÷ scheduled requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_attainment: Option<f64>,
    /// With an SLO: attainment reached the target and the level was
    /// stable (an unstable level fails its SLO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_met: Option<bool>,
    /// With a capacity search: what this level was to the search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeInfo>,
    /// With `--server-metrics`: what the server's own metrics said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<crate::server::view::ServerLevel>,
    /// A closed-loop level: the users (workers) it held. `qps_target` is
    /// 0 then, and `actual_qps` is what those users managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// A trace replay's level (`qps_target` is the trace's mean rate).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trace: bool,
    /// A level whose rate changed: `[start, end]` requests/s
    /// (`qps_target` is the mean over the level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qps_ramp: Option<[f64; 2]>,
    /// With `--max-concurrency`: how long sends waited for a slot, seconds
    /// (latencies still count from the planned instant, so include it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_queue: Option<Dist>,
    /// Levels whose rate changes: every step (10 s by default), target and
    /// achieved rate, TTFT and E2E p50/p95, errors and requests in flight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeseries: Vec<crate::analysis::series::SeriesPoint>,
    /// Cached ÷ prompt tokens over the requests whose server reported
    /// cached tokens: how much prefill the server's prefix cache saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit_ratio: Option<f64>,
    /// Multi-turn sessions: counts, lags and figures by turn bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<crate::analysis::sessions::SessionsResult>,
    pub histograms: SerializedHistograms,
}

impl LevelResult {
    /// `QPS 5`, `QPS 10..100`, `concurrency 16`: the level in a line.
    pub fn describe(&self) -> String {
        let f = crate::analysis::saturation::fmt_qps;
        if self.trace {
            return format!("trace ({} QPS mean)", f(self.qps_target));
        }
        match (self.concurrency, self.qps_ramp) {
            (Some(n), _) => format!("concurrency {n}"),
            (None, Some([a, b])) => format!("QPS {}..{}", f(a), f(b)),
            (None, None) => format!("QPS {}", f(self.qps_target)),
        }
    }

    /// The level's place on a sweep's x-axis: its concurrency for a
    /// closed-loop level, else its target rate.
    pub fn load(&self) -> f64 {
        self.concurrency.map_or(self.qps_target, f64::from)
    }
}

/// A level's role in a capacity search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeInfo {
    /// 1-based, in the order run.
    pub index: usize,
    /// `grow`, `bisect` or `confirm`.
    pub phase: String,
    /// `pass` or `fail`.
    pub verdict: String,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Ended before its planned duration because it could no longer pass.
    pub stopped_early: bool,
}

/// What a level was asked to do and how long it took.
#[derive(Debug, Clone, Copy, Default)]
pub struct LevelTiming {
    pub qps_target: f64,
    /// A closed-loop level's users.
    pub concurrency: Option<u32>,
    /// A trace replay.
    pub trace: bool,
    /// A level whose rate changed: its start and end rates.
    pub qps_ramp: Option<[f64; 2]>,
    pub duration: Duration,
    pub send_window: Duration,
    pub drain: Duration,
    /// What the client itself used during the level, when measured.
    pub client: Option<ClientUsage>,
}

/// What the client used while a level ran: the figures that say why a
/// client-bound level was so, and the CPU a given rate needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClientUsage {
    /// User + system CPU seconds of the llmload process.
    pub cpu_seconds: f64,
    /// CPU seconds over the level's wall time.
    pub cores_used: f64,
    /// The cgroup's quota, or the CPUs the process may run on.
    pub cores_available: f64,
    /// CPU microseconds per request sent (the whole process's: pacing,
    /// streaming, parsing, recording, metrics).
    pub cpu_us_per_request: f64,
    /// Time the container's cgroup was CPU-throttled, when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nr_throttled: Option<u64>,
    /// The pacer's longest wake-up past a send's due time: how long it
    /// was not scheduled.
    pub pacer_stall_ms: f64,
    /// Requests that waited for a busy connection to come back instead of
    /// opening one: the client was behind its schedule, or every connect
    /// slot was taken. A client past its limit reuses what it has rather
    /// than storming the server with connects.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_back: u64,
    /// The send quantum of the level's pacer, µs (absent: every send at
    /// its own instant): sends wait for the end of their quantum, and the
    /// schedule lag includes that wait (see `plan::send_quantum`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub send_quantum_us: u64,
}

/// Throttling above this during a level is named as the cause.
const THROTTLED_CAUSE_MS: f64 = 100.0;
/// A process using this share of its cores had none to spare.
const CORES_BUSY_SHARE: f64 = 0.9;
/// A pacer wake-up this late is named as the cause.
const PACER_STALL_CAUSE_MS: f64 = 50.0;

impl ClientUsage {
    /// Why the client was slow, in a few words, from its own figures.
    pub fn cause(&self) -> String {
        if let Some(t) = self.throttled_ms.filter(|t| *t >= THROTTLED_CAUSE_MS) {
            return format!("the container was CPU-throttled for {t:.0} ms");
        }
        if self.cores_used >= CORES_BUSY_SHARE * self.cores_available {
            return format!(
                "the process used {:.2} of {} cores",
                self.cores_used,
                crate::analysis::saturation::fmt_qps(round(self.cores_available, 2))
            );
        }
        if self.pacer_stall_ms >= PACER_STALL_CAUSE_MS {
            return format!(
                "the pacer was not scheduled for {:.0} ms",
                self.pacer_stall_ms
            );
        }
        format!(
            "the process used {:.2} of {} cores, was not throttled and its pacer waited at most {:.0} ms: another process may have held the CPU",
            self.cores_used,
            crate::analysis::saturation::fmt_qps(round(self.cores_available, 2)),
            self.pacer_stall_ms
        )
    }
}

/// More than this share of sends late (and at least [`LATE_MIN`]) marks
/// a level client-bound: one late send in a short level is noise.
pub const LATE_SHARE: f64 = 0.01;
pub const LATE_MIN: u64 = 3;
/// A level that sent less than this share of its own schedule's rate
/// over the configured duration is client-bound.
pub const ACHIEVED_SHARE: f64 = 0.99;
/// Connection set-up above this share of TTFT marks `connection_bound`.
pub const SETUP_BOUND_SHARE: f64 = 0.2;

/// Why the client, not the endpoint, limited a level; `None` when it
/// did not. The evidence must be in proportion to the level's size.
pub fn client_bound_reason(s: &LevelStats, t: &LevelTiming) -> Option<String> {
    if s.dropped > 0 {
        return Some(format!("{} send(s) dropped at --max-in-flight", s.dropped));
    }
    let late_allowed = ((s.sent as f64 * LATE_SHARE).floor() as u64).max(LATE_MIN - 1);
    if s.late_sends > late_allowed {
        return Some(format!(
            "{} of {} sends more than {} ms behind schedule",
            s.late_sends,
            s.sent,
            LATE_SEND.as_millis()
        ));
    }
    // Against the schedule's own count, so that a Poisson level that
    // happened to draw fewer arrivals is not blamed on the client.
    let planned = s.sent + s.dropped;
    let dur = t.duration.as_secs_f64();
    let window = t.send_window.as_secs_f64().max(dur);
    // A closed loop has no rate to keep up with.
    if t.concurrency.is_none() && planned >= 10 && dur > 0.0 && window > dur / ACHIEVED_SHARE {
        return Some(format!(
            "sending took {window:.2}s for a {dur:.2}s schedule (< {:.0}% of the rate)",
            ACHIEVED_SHARE * 100.0
        ));
    }
    None
}

impl LevelResult {
    pub fn from_stats(s: &LevelStats, t: LevelTiming) -> Self {
        let scheduled = s.sent + s.dropped;
        // A zero-length window (one request) would divide by zero; the
        // configured duration is the honest denominator then.
        let window = if t.send_window.is_zero() {
            t.duration.as_secs_f64()
        } else {
            t.duration.as_secs_f64().max(t.send_window.as_secs_f64())
        };
        let per_sec = |n: u64| {
            if window > 0.0 {
                round(n as f64 / window, 4)
            } else {
                0.0
            }
        };
        let lag = Dist::from_histogram(&s.lag, 1e-6, 6);
        let client_bound = client_bound_reason(s, &t);
        // A ramp moves the backlog with its rate (in flight = rate ×
        // latency): the constant-rate test would call every ramp-up
        // unstable, so a ramp is read by its time series instead. A trace
        // is judged: over a level its rate is roughly steady, and a
        // backlog that grows through it is the replay's own verdict.
        let varies = t.qps_ramp.is_some();
        let stability = s
            .timeline
            .as_ref()
            .filter(|_| !varies)
            .map(|tl| crate::analysis::stability::judge(&tl.windows()));
        let setup_share = if s.ttft_us_total > 0 {
            round(s.setup_us_total as f64 / s.ttft_us_total as f64, 4)
        } else {
            0.0
        };
        let wall = (window + t.drain.as_secs_f64()).max(1e-9);
        let output_source = match (s.usage_reported, s.succeeded) {
            (_, 0) => "none",
            (u, n) if u == n => "usage",
            (0, _) => "chunks",
            _ => "mixed",
        };
        Self {
            qps_target: t.qps_target,
            actual_qps: per_sec(s.sent),
            success_rate: if scheduled == 0 {
                0.0
            } else {
                round(100.0 * s.succeeded as f64 / scheduled as f64, 3)
            },
            ttft: Dist::from_histogram(&s.ttft, 1e-6, 6),
            e2e_latency: Dist::from_histogram(&s.e2e, 1e-6, 6),
            tokens_per_sec: Dist::from_histogram(&s.tokens_per_sec, 1.0 / RATE_SCALE, 3),
            errors: s.errors.iter().map(|(k, v)| (k.key(), *v)).collect(),
            completed_qps: per_sec(s.succeeded),
            scheduled,
            sent: s.sent,
            succeeded: s.succeeded,
            failed: s.failed,
            dropped: s.dropped,
            duration: t.duration.as_secs_f64(),
            send_window_s: round(t.send_window.as_secs_f64(), 6),
            drain_s: round(t.drain.as_secs_f64(), 6),
            ttfc: Dist::from_histogram(&s.ttfc, 1e-6, 6),
            itl: Dist::from_histogram(&s.itl, 1e-6, 6),
            tpot: Dist::from_histogram(&s.tpot, 1e-6, 6),
            decode_tokens_per_sec: Dist::from_histogram(
                &s.decode_tokens_per_sec,
                1.0 / RATE_SCALE,
                3,
            ),
            output_throughput_tokens_per_sec: round(s.output_tokens_total as f64 / wall, 3),
            tokens: TokenCounts {
                output_total: s.output_tokens_total,
                output_per_request: Dist::from_histogram(&s.output_tokens, 1.0, 3),
                output_source: output_source.into(),
                usage_chunk_mismatch: s.usage_chunk_mismatch,
                input_total: s.input_tokens_total,
                input_counted: s.input_counted,
                input_mismatch: s.input_mismatch,
                input_excess_mean: (s.input_counted > 0)
                    .then(|| round(s.input_excess as f64 / s.input_counted as f64, 2)),
                cached_reported: s.cached_reported,
                cached_total: s.cached_tokens_total,
                cached_input_total: s.cached_input_total,
            },
            cache_hit_ratio: crate::analysis::sessions::ratio(
                s.cached_tokens_total,
                s.cached_input_total,
            ),
            sessions: s.sessions.as_ref().map(|x| {
                x.result(if t.send_window.is_zero() {
                    t.duration
                } else {
                    t.duration.max(t.send_window)
                })
            }),
            client_bound: client_bound.is_some(),
            client_bound_reason: client_bound
                .map(|why| match &t.client {
                    Some(u) => format!("{why}: {}", u.cause()),
                    None => why,
                })
                .unwrap_or_default(),
            client_usage: t.client,
            schedule_lag: lag,
            time_to_error: Dist::from_histogram(&s.time_to_error, 1e-6, 6),
            e2e_latency_all: Dist::from_histogram(&s.e2e_all, 1e-6, 6),
            new_connections: s.new_connections,
            retried_stale_connection: s.retried_stale,
            connect: Dist::from_histogram(&s.connect, 1e-6, 6),
            connection_setup_share: setup_share,
            connection_bound: setup_share > SETUP_BOUND_SHARE,
            stability: stability.clone(),
            goodput: s.slo.as_ref().map(|_| per_sec(s.good)),
            slo_attainment: s.slo.as_ref().map(|_| {
                if scheduled == 0 {
                    0.0
                } else {
                    round(s.good as f64 / scheduled as f64, 5)
                }
            }),
            slo_met: s.slo.as_ref().map(|slo| {
                let attained =
                    scheduled > 0 && s.good as f64 >= slo.attainment * scheduled as f64 - 1e-9;
                attained && stability.as_ref().is_none_or(|st| st.stable)
            }),
            probe: None,
            server: None,
            concurrency: t.concurrency,
            trace: t.trace,
            qps_ramp: t.qps_ramp,
            client_queue: (!s.client_queue.is_empty())
                .then(|| Dist::from_histogram(&s.client_queue, 1e-6, 6)),
            timeseries: s
                .series
                .as_ref()
                .map(|x| x.points(t.send_window.max(t.duration)))
                .unwrap_or_default(),
            finish_reasons: s
                .finish_reasons
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            interrupted: false,
            histograms: SerializedHistograms {
                encoding: "hdr-v2-deflate-base64".into(),
                ttft_us: encode(&s.ttft),
                e2e_us: encode(&s.e2e),
                itl_us: encode(&s.itl),
                tpot_us: encode(&s.tpot),
                schedule_lag_us: encode(&s.lag),
                tokens_per_sec_milli: encode(&s.tokens_per_sec),
                output_tokens: encode(&s.output_tokens),
                ttfc_us: encode(&s.ttfc),
                decode_tokens_per_sec_milli: encode(&s.decode_tokens_per_sec),
                time_to_error_us: encode(&s.time_to_error),
                e2e_all_us: encode(&s.e2e_all),
                connect_us: encode(&s.connect),
                client_queue_us: if s.client_queue.is_empty() {
                    String::new()
                } else {
                    encode(&s.client_queue)
                },
            },
        }
    }
}

impl LevelResult {
    /// The level was stopped early: say so, and count its rates over the
    /// time it actually sent, not over the configured duration.
    pub fn mark_interrupted(&mut self) {
        self.interrupted = true;
        if self.send_window_s > 0.0 {
            self.actual_qps = round(self.sent as f64 / self.send_window_s, 4);
            self.completed_qps = round(self.succeeded as f64 / self.send_window_s, 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::stats::decode;
    use crate::client::chunk::FinishReason;
    use crate::client::record::{ErrorKind, RequestRecord};

    fn ok(seq: u64, sched_ms: u64, ttft_ms: u64, e2e_ms: u64, tokens: u32) -> RequestRecord {
        let ms = Duration::from_millis;
        let mut r = RequestRecord::new(seq, ms(sched_ms), ms(sched_ms));
        r.first_token_at = Some(ms(sched_ms + ttft_ms));
        r.first_content_at = r.first_token_at;
        r.done_at = ms(sched_ms + e2e_ms);
        r.token_chunks = tokens;
        r.usage_output_tokens = Some(tokens);
        r.itl_us =
            vec![((e2e_ms - ttft_ms) * 1000 / (tokens as u64 - 1)) as u32; tokens as usize - 1];
        r.finish = Some(FinishReason::Length);
        r
    }

    fn timing(qps: f64, secs: u64) -> LevelTiming {
        LevelTiming {
            qps_target: qps,
            duration: Duration::from_secs(secs),
            send_window: Duration::from_secs(secs),
            drain: Duration::from_secs(1),
            client: None,
            ..Default::default()
        }
    }

    #[test]
    fn a_ramps_growing_backlog_is_not_called_unstable() {
        // In flight grows with the rate through a ramp-up: a flat level
        // with that backlog is unstable, the ramp is read by its series.
        let mut s = LevelStats::new();
        s.start_timeline(Duration::from_secs(10));
        for i in 0..400u64 {
            let mut r = ok(i, i * 25, 20, 200, 4);
            r.in_flight_at_send = (1 + i / 10) as u32;
            s.record(&r);
        }
        let flat = LevelResult::from_stats(&s, timing(40.0, 10));
        assert_eq!(flat.stability.map(|st| st.stable), Some(false));
        let ramp = LevelResult::from_stats(
            &s,
            LevelTiming {
                qps_ramp: Some([10.0, 70.0]),
                ..timing(40.0, 10)
            },
        );
        assert_eq!(ramp.stability, None);
    }

    #[test]
    fn summary_of_a_clean_level() {
        let mut s = LevelStats::new();
        for i in 0..100 {
            s.record(&ok(i, i * 100, 50 + i, 1050 + i, 11));
        }
        let r = LevelResult::from_stats(&s, timing(10.0, 10));
        assert_eq!(r.sent, 100);
        assert_eq!(r.succeeded, 100);
        assert_eq!(r.success_rate, 100.0);
        assert_eq!(r.actual_qps, 10.0);
        assert!((r.ttft.p50 - 0.099).abs() < 0.001, "{:?}", r.ttft);
        assert!((r.ttft.p99 - 0.148).abs() < 0.001, "{:?}", r.ttft);
        assert!((r.ttft.min - 0.050).abs() < 0.0001);
        assert!((r.e2e_latency.max - 1.149).abs() < 0.002);
        assert!((r.tpot.p50 - 0.1).abs() < 0.001);
        assert!((r.itl.mean - 0.1).abs() < 0.001);
        assert!((r.decode_tokens_per_sec.p50 - 10.0).abs() < 0.02);
        assert!(r.tokens_per_sec.p50 > 9.0 && r.tokens_per_sec.p50 < 11.0);
        assert_eq!(r.tokens.output_total, 1100);
        assert_eq!(r.tokens.output_source, "usage");
        assert_eq!(r.finish_reasons["length"], 100);
        assert!(r.errors.is_empty());
        assert!(!r.client_bound);
        assert!((r.output_throughput_tokens_per_sec - 100.0).abs() < 0.01);
    }

    #[test]
    fn errors_drops_and_the_books_balance() {
        let mut s = LevelStats::new();
        for i in 0..10 {
            s.record(&ok(i, i * 10, 5, 50, 4));
        }
        for i in 10..13 {
            let mut r = RequestRecord::new(i, Duration::ZERO, Duration::ZERO);
            r.outcome = Err(ErrorKind::Http(503));
            s.record(&r);
        }
        let mut d = RequestRecord::new(13, Duration::ZERO, Duration::ZERO);
        d.outcome = Err(ErrorKind::Dropped);
        s.record(&d);
        let r = LevelResult::from_stats(&s, timing(14.0, 1));
        assert_eq!(
            (r.scheduled, r.sent, r.succeeded, r.failed, r.dropped),
            (14, 13, 10, 3, 1)
        );
        assert_eq!(r.sent, r.succeeded + r.failed);
        assert_eq!(r.errors["HTTP 503"], 3);
        assert_eq!(r.errors["dropped (max in-flight)"], 1);
        assert_eq!(r.errors.values().sum::<u64>(), r.failed + r.dropped);
        assert!((r.success_rate - 71.429).abs() < 0.001);
        assert!(
            r.client_bound,
            "a dropped send means the client was the limit"
        );
    }

    #[test]
    fn lag_marks_client_bound() {
        let mut s = LevelStats::new();
        for i in 0..100 {
            let mut r = ok(i, 0, 5, 50, 4);
            r.sent_at = Duration::from_millis(if i < 95 { 0 } else { 30 });
            s.record(&r);
        }
        let r = LevelResult::from_stats(&s, timing(100.0, 1));
        assert!(r.client_bound);
        assert!(r.schedule_lag.p99 >= 0.029);
    }

    #[test]
    fn one_late_send_in_a_short_level_is_not_client_bound() {
        // 10 requests, one 12 ms late: noise on a busy machine, not a
        // client that cannot keep up.
        let mut s = LevelStats::new();
        for i in 0..10 {
            let mut r = ok(i, i * 200, 5, 50, 4);
            r.sent_at = r.scheduled_at + Duration::from_millis(if i == 3 { 12 } else { 0 });
            s.record(&r);
        }
        let r = LevelResult::from_stats(&s, timing(5.0, 2));
        assert!(!r.client_bound, "{}", r.client_bound_reason);
        // Three late sends in ten is a pattern.
        let mut s = LevelStats::new();
        for i in 0..10 {
            let mut r = ok(i, i * 200, 5, 50, 4);
            r.sent_at = r.scheduled_at + Duration::from_millis(if i < 3 { 12 } else { 0 });
            s.record(&r);
        }
        let r = LevelResult::from_stats(&s, timing(5.0, 2));
        assert!(r.client_bound);
        assert!(
            r.client_bound_reason.contains("3 of 10 sends"),
            "{}",
            r.client_bound_reason
        );
    }

    #[test]
    fn a_pacer_that_finished_late_is_client_bound() {
        // 100 sends planned over 10 s that took 10.5 s to go out.
        let mut s = LevelStats::new();
        for i in 0..100 {
            s.record(&ok(i, i * 100, 5, 50, 4));
        }
        let mut t = timing(10.0, 10);
        t.send_window = Duration::from_millis(10_500);
        let r = LevelResult::from_stats(&s, t);
        assert!(r.client_bound);
        assert!(
            r.client_bound_reason.contains("sending took"),
            "{}",
            r.client_bound_reason
        );
        t.send_window = Duration::from_millis(10_050);
        assert!(!LevelResult::from_stats(&s, t).client_bound, "within 1 %");
    }

    #[test]
    fn serialized_histograms_merge_exactly() {
        let mut a = LevelStats::new();
        let mut b = LevelStats::new();
        for i in 0..500 {
            a.record(&ok(i, 0, 10 + i % 37, 200, 8));
            b.record(&ok(i, 0, 300 + i % 11, 900, 8));
        }
        let ra = LevelResult::from_stats(&a, timing(1.0, 1));
        let rb = LevelResult::from_stats(&b, timing(1.0, 1));
        let mut merged = decode(&ra.histograms.ttft_us).unwrap();
        merged.add(decode(&rb.histograms.ttft_us).unwrap()).unwrap();
        let mut direct = a.clone();
        direct.merge(&b);
        assert_eq!(merged, direct.ttft);
        assert_eq!(merged.len(), 1000);
    }

    #[test]
    fn chunk_estimates_are_labelled() {
        let mut s = LevelStats::new();
        let mut r = ok(0, 0, 5, 50, 4);
        r.usage_output_tokens = None;
        s.record(&r);
        let mut r2 = ok(1, 0, 5, 50, 4);
        r2.usage_output_tokens = Some(16);
        s.record(&r2);
        let res = LevelResult::from_stats(&s, timing(2.0, 1));
        assert_eq!(res.tokens.output_source, "mixed");
        assert_eq!(res.tokens.usage_chunk_mismatch, 1);
        assert_eq!(res.tokens.output_total, 20);
    }
}
