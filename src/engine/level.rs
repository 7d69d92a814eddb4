//! What a level is: its [`LevelSpec`], its live [`Progress`], and the
//! [`Observer`] hooks live sinks (metrics, traces, `requests.jsonl`) get
//! for each request.

use crate::client::record::RequestRecord;
use crate::plan::load::Load;
use crate::plan::schedule::Arrival;
use http::{HeaderName, HeaderValue};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::Duration;

/// What one level should do.
#[derive(Debug, Clone)]
pub struct LevelSpec {
    pub index: usize,
    /// The nominal rate: the flat rate, a curve's or a trace's mean over
    /// the level; 0 for a concurrency level.
    pub qps: f64,
    /// `None`: until cancelled (soak forever).
    pub duration: Option<Duration>,
    pub arrival: Arrival,
    pub seed: u64,
    /// What the level holds steady.
    pub load: Load,
    /// Stop after this many sends (a warm-up of N requests).
    pub limit: Option<u64>,
    /// Open loop only: at most this many requests open at once; a send
    /// due beyond them waits for a slot (`--max-concurrency`).
    pub max_concurrency: Option<usize>,
    /// Each send starts a multi-turn session: the rate counts sessions.
    pub sessions: bool,
}

impl LevelSpec {
    /// `5 QPS`, `10..100 QPS`, `concurrency 16`, `trace (4.2 QPS mean)`.
    pub fn describe(&self) -> String {
        let f = crate::analysis::saturation::fmt_qps;
        match &self.load {
            Load::Flat if self.sessions => format!("{} sessions/s", f(self.qps)),
            Load::Flat => format!("{} QPS", f(self.qps)),
            Load::Curve(c) => format!(
                "{}..{} QPS",
                f(c.rate_at(0.0)),
                f(c.rate_at(self.duration.map_or(0.0, |d| d.as_secs_f64())))
            ),
            Load::Concurrency(n) => format!("concurrency {n}"),
            Load::Trace(r) => format!(
                "trace ({} QPS mean)",
                f(crate::analysis::stats::round(r.mean_qps(), 2))
            ),
        }
    }

    /// A flat open-loop level.
    pub fn flat(
        index: usize,
        qps: f64,
        duration: Option<Duration>,
        arrival: Arrival,
        seed: u64,
    ) -> Self {
        Self {
            index,
            qps,
            duration,
            arrival,
            seed,
            load: Load::Flat,
            limit: None,
            max_concurrency: None,
            sessions: false,
        }
    }
}

/// Live counters of the running level, read by progress bars, the daemon
/// status endpoint and gauges. All monotonic except `in_flight`.
#[derive(Debug, Default)]
pub struct Progress {
    pub scheduled: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Requests that met the level's SLO (when it has one).
    pub good: AtomicU64,
    pub in_flight: AtomicUsize,
    /// Sessions started and not ended (thinking between turns included).
    pub sessions_active: AtomicUsize,
    /// Set while a soak is paused for a sweep on the same target.
    pub paused: AtomicBool,
    /// Total time spent paused, nanoseconds.
    pub paused_ns: AtomicU64,
    /// A pause is being timed by one of a closed loop's workers or
    /// sessions (the others only wait it out).
    pub pause_counted: AtomicBool,
    /// The pacer's longest wake-up past a send's due time, nanoseconds.
    pub pacer_stall_ns: AtomicU64,
    /// Trace replays: the trace-time offset (µs) of the last request sent,
    /// for "where in the trace" gauges.
    pub trace_position_us: AtomicU64,
    /// A level whose rate changes: the rate at the last send, milli-req/s
    /// (0 for flat levels), for the live target gauge.
    pub current_rate_milli: AtomicU64,
}

/// Hooks for live sinks (Prometheus, traces). Called from request tasks:
/// keep them cheap and non-blocking.
pub trait Observer: Send + Sync {
    /// Extra header for this request (W3C `traceparent`), and a token the
    /// observer gets back in `request_done`.
    /// `base` is the level start: record times are offsets from it.
    fn request_start(
        &self,
        _level: &LevelSpec,
        _base: std::time::Instant,
        _rec: &RequestRecord,
    ) -> Option<RequestHook> {
        None
    }
    fn request_done(
        &self,
        _level: &LevelSpec,
        _base: std::time::Instant,
        _rec: &RequestRecord,
        _hook: Option<RequestHook>,
    ) {
    }
    /// A session ended (completed, aborted by a failed turn, or left open
    /// at the level's end).
    fn session_ended(&self, _level: &LevelSpec, _end: crate::analysis::sessions::SessionEnd) {}
    /// Called after each level: push buffered output out, and say what
    /// could not be written since the last call (one line per problem).
    fn flush(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Per-request state an observer carries from start to done.
pub struct RequestHook {
    pub header: Option<(HeaderName, HeaderValue)>,
    pub state: Box<dyn std::any::Any + Send>,
}

/// An observer that does nothing.
pub struct NoObserver;
impl Observer for NoObserver {}
