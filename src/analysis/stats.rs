//! Per-level statistics: HDR histograms in, the seed's JSON object out.
//!
//! Memory is bounded by the histograms (about 2.5 MB a level: a dozen of
//! ~190 KB each) whatever the duration or rate; nothing per request is
//! kept. Every histogram is
//! also serialized (HDR V2, deflate, base64: the format every HdrHistogram
//! library reads) so two runs can be merged exactly later.

pub use crate::analysis::dist::{Dist, decode, encode, round};
use crate::analysis::dist::{latency_histogram, micros};
use crate::analysis::slo::SloTarget;
use crate::analysis::stability::Window;
use crate::client::chunk::FinishReason;
use crate::client::record::{ErrorKind, RequestRecord, TokenSource};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A send later than this behind its schedule is late.
pub const LATE_SEND: Duration = Duration::from_millis(10);
/// Rates are recorded in milli-units per second (0.001 token/s resolution).
pub const RATE_SCALE: f64 = 1000.0;

fn count_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1 << 40, 3).expect("static bounds are valid")
}

/// Everything measured in one level.
#[derive(Debug, Clone)]
pub struct LevelStats {
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dropped: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
    pub finish_reasons: BTreeMap<&'static str, u64>,
    pub ttft: Histogram<u64>,
    pub ttfc: Histogram<u64>,
    pub e2e: Histogram<u64>,
    pub itl: Histogram<u64>,
    pub tpot: Histogram<u64>,
    pub lag: Histogram<u64>,
    /// Seed definition: output tokens / E2E, milli-tokens/s.
    pub tokens_per_sec: Histogram<u64>,
    /// 1 / TPOT: decode speed once the first token is out, milli-tokens/s.
    pub decode_tokens_per_sec: Histogram<u64>,
    pub output_tokens: Histogram<u64>,
    /// Scheduled send → failure, over failed requests.
    pub time_to_error: Histogram<u64>,
    /// Scheduled send → end, over every request sent, good or not.
    pub e2e_all: Histogram<u64>,
    /// DNS + TCP + TLS, over requests that opened a connection.
    pub connect: Histogram<u64>,
    pub new_connections: u64,
    pub retried_stale: u64,
    /// Sends more than [`LATE_SEND`] behind schedule.
    pub late_sends: u64,
    /// Sums over successful requests, microseconds: the share of TTFT
    /// spent inside the client opening or waiting for a connection.
    pub setup_us_total: u64,
    pub ttft_us_total: u64,
    pub output_tokens_total: u64,
    pub input_tokens_total: u64,
    pub input_tokens_reported: u64,
    /// Requests with both the server's and our prompt token count.
    pub input_counted: u64,
    pub input_mismatch: u64,
    /// Sum of (server's count - ours) over those.
    pub input_excess: i64,
    pub usage_reported: u64,
    pub usage_chunk_mismatch: u64,
    /// Latest completion, as an offset from level start.
    pub last_done_at: Duration,
    /// The SLO requests are judged against, if any.
    pub slo: Option<Arc<SloTarget>>,
    /// Requests that succeeded and met every SLO threshold.
    pub good: u64,
    /// Requests that were not good (failed, dropped or too slow): the
    /// early-stop count of a capacity probe.
    pub bad: u64,
    /// Backlog and TTFT per time window, for the stability check.
    pub timeline: Option<Timeline>,
    /// Under `--max-concurrency`: each send's wait for a slot.
    pub client_queue: Histogram<u64>,
    /// Sends that waited for a `--max-concurrency` slot at all.
    pub queued: u64,
    /// The level's time series (levels whose rate changes).
    pub series: Option<crate::analysis::series::Series>,
    /// Successful requests whose server reported cached prompt tokens,
    /// and sums over them: the level's cache hit ratio.
    pub cached_reported: u64,
    pub cached_tokens_total: u64,
    pub cached_input_total: u64,
    /// Multi-turn sessions, when the level ran them.
    pub sessions: Option<crate::analysis::sessions::SessionStats>,
}

/// Most windows a timeline keeps: a level is judged on about
/// [`TIMELINE_WINDOWS`] of them, and later sends past the cap are not
/// tracked (soaks have none).
pub const TIMELINE_WINDOWS: usize = 20;
const TIMELINE_CAP: usize = 4 * TIMELINE_WINDOWS;

/// Per-window sums by scheduled send time.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub window: Duration,
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bucket {
    pub sends: u32,
    pub in_flight_sum: u64,
    pub ttft_n: u32,
    pub ttft_sum_us: u64,
}

impl Timeline {
    /// About [`TIMELINE_WINDOWS`] windows over `duration`, none shorter
    /// than 200 ms.
    pub fn for_duration(duration: Duration) -> Self {
        let window = (duration / TIMELINE_WINDOWS as u32).max(Duration::from_millis(200));
        Self {
            window,
            buckets: Vec::new(),
        }
    }

    fn record(&mut self, r: &RequestRecord) {
        let i = (r.scheduled_at.as_nanos() / self.window.as_nanos().max(1)) as usize;
        if i >= TIMELINE_CAP {
            return;
        }
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, Bucket::default());
        }
        let b = &mut self.buckets[i];
        b.sends += 1;
        b.in_flight_sum += r.in_flight_at_send as u64;
        if r.is_ok()
            && let Some(t) = r.ttft()
        {
            b.ttft_n += 1;
            b.ttft_sum_us += micros(t);
        }
    }

    fn merge(&mut self, o: &Timeline) {
        if o.window != self.window {
            return;
        }
        if self.buckets.len() < o.buckets.len() {
            self.buckets.resize(o.buckets.len(), Bucket::default());
        }
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            a.sends += b.sends;
            a.in_flight_sum += b.in_flight_sum;
            a.ttft_n += b.ttft_n;
            a.ttft_sum_us += b.ttft_sum_us;
        }
    }

    /// The windows the stability check reads.
    pub fn windows(&self) -> Vec<Window> {
        let w = self.window.as_secs_f64();
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, b)| Window {
                t: (i as f64 + 0.5) * w,
                sends: b.sends,
                in_flight: if b.sends > 0 {
                    b.in_flight_sum as f64 / b.sends as f64
                } else {
                    0.0
                },
                ttft: (b.ttft_n > 0).then(|| b.ttft_sum_us as f64 / b.ttft_n as f64 * 1e-6),
            })
            .collect()
    }
}

impl Default for LevelStats {
    fn default() -> Self {
        Self::new()
    }
}

impl LevelStats {
    pub fn new() -> Self {
        Self {
            sent: 0,
            succeeded: 0,
            failed: 0,
            dropped: 0,
            errors: BTreeMap::new(),
            finish_reasons: BTreeMap::new(),
            ttft: latency_histogram(),
            ttfc: latency_histogram(),
            e2e: latency_histogram(),
            itl: latency_histogram(),
            tpot: latency_histogram(),
            lag: latency_histogram(),
            tokens_per_sec: count_histogram(),
            decode_tokens_per_sec: count_histogram(),
            output_tokens: count_histogram(),
            time_to_error: latency_histogram(),
            e2e_all: latency_histogram(),
            connect: latency_histogram(),
            new_connections: 0,
            retried_stale: 0,
            late_sends: 0,
            setup_us_total: 0,
            ttft_us_total: 0,
            output_tokens_total: 0,
            slo: None,
            good: 0,
            bad: 0,
            timeline: None,
            client_queue: latency_histogram(),
            queued: 0,
            series: None,
            cached_reported: 0,
            cached_tokens_total: 0,
            cached_input_total: 0,
            sessions: None,
            input_tokens_total: 0,
            input_tokens_reported: 0,
            input_counted: 0,
            input_mismatch: 0,
            input_excess: 0,
            usage_reported: 0,
            usage_chunk_mismatch: 0,
            last_done_at: Duration::ZERO,
        }
    }

    /// Track backlog and TTFT per window over a level of `duration`.
    pub fn start_timeline(&mut self, duration: Duration) {
        if self.timeline.is_none() {
            self.timeline = Some(Timeline::for_duration(duration));
        }
    }

    /// Add one finished (or dropped) request.
    pub fn record(&mut self, r: &RequestRecord) {
        if let Some(s) = &mut self.series {
            s.record(r);
        }
        if r.turn > 0 {
            self.sessions.get_or_insert_with(Default::default).record(r);
        }
        if let Some(q) = r.client_queue {
            self.client_queue.saturating_record(micros(q));
            self.queued += u64::from(!q.is_zero());
        }
        if let Some(slo) = &self.slo {
            if slo.slo.is_good(r) {
                self.good += 1;
            } else {
                self.bad += 1;
            }
        }
        if r.outcome == Err(ErrorKind::Dropped) {
            self.dropped += 1;
            *self.errors.entry(ErrorKind::Dropped).or_default() += 1;
            return;
        }
        if let Some(t) = &mut self.timeline {
            t.record(r);
        }
        self.sent += 1;
        self.last_done_at = self.last_done_at.max(r.done_at);
        self.lag.saturating_record(micros(r.lag()));
        if r.lag() > LATE_SEND {
            self.late_sends += 1;
        }
        self.e2e_all.saturating_record(micros(r.e2e()));
        if r.new_connection {
            self.new_connections += 1;
        }
        if let Some(c) = r.connect {
            self.connect.saturating_record(micros(c));
        }
        if r.retried_stale {
            self.retried_stale += 1;
        }
        if let Some(n) = r.usage_input_tokens {
            self.input_tokens_total += n as u64;
            self.input_tokens_reported += 1;
            if let Some(ours) = r.client_input_tokens {
                self.input_counted += 1;
                self.input_mismatch += u64::from(n != ours);
                self.input_excess += n as i64 - ours as i64;
            }
        }
        if let Err(kind) = r.outcome {
            self.failed += 1;
            *self.errors.entry(kind).or_default() += 1;
            self.time_to_error.saturating_record(micros(r.e2e()));
            return;
        }
        self.succeeded += 1;
        if let Some(c) = r.cached_input_tokens {
            self.cached_reported += 1;
            self.cached_tokens_total += c as u64;
            self.cached_input_total += r.prompt_tokens() as u64;
        }
        if let Some(t) = r.ttft() {
            self.ttft_us_total += micros(t);
            self.setup_us_total += r.client_setup().as_micros() as u64;
        }
        if let Some(f) = r.finish {
            *self.finish_reasons.entry(f.as_str()).or_default() += 1;
        }
        if let Some(t) = r.ttft() {
            self.ttft.saturating_record(micros(t));
        }
        if let Some(t) = r.ttfc() {
            self.ttfc.saturating_record(micros(t));
        }
        self.e2e.saturating_record(micros(r.e2e()));
        for &gap in &r.itl_us {
            self.itl.saturating_record(gap.max(1) as u64);
        }
        if let Some(t) = r.tpot() {
            let us = micros(t);
            self.tpot.saturating_record(us);
            self.decode_tokens_per_sec
                .saturating_record((1e6 / us as f64 * RATE_SCALE) as u64);
        }
        if let Some(tps) = r.tokens_per_sec() {
            self.tokens_per_sec
                .saturating_record((tps * RATE_SCALE).round() as u64);
        }
        let (tokens, source) = r.output_tokens();
        self.output_tokens_total += tokens as u64;
        self.output_tokens.saturating_record(tokens as u64);
        if source == TokenSource::Usage {
            self.usage_reported += 1;
            if tokens != r.token_chunks {
                self.usage_chunk_mismatch += 1;
            }
        }
    }

    /// Fold another level's (or shard's) numbers into this one. Exact:
    /// HDR histograms add bucket by bucket.
    pub fn merge(&mut self, o: &LevelStats) {
        self.sent += o.sent;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.dropped += o.dropped;
        for (k, v) in &o.errors {
            *self.errors.entry(*k).or_default() += v;
        }
        for (k, v) in &o.finish_reasons {
            *self.finish_reasons.entry(k).or_default() += v;
        }
        for (a, b) in [
            (&mut self.ttft, &o.ttft),
            (&mut self.ttfc, &o.ttfc),
            (&mut self.e2e, &o.e2e),
            (&mut self.itl, &o.itl),
            (&mut self.tpot, &o.tpot),
            (&mut self.lag, &o.lag),
            (&mut self.tokens_per_sec, &o.tokens_per_sec),
            (&mut self.decode_tokens_per_sec, &o.decode_tokens_per_sec),
            (&mut self.output_tokens, &o.output_tokens),
            (&mut self.time_to_error, &o.time_to_error),
            (&mut self.e2e_all, &o.e2e_all),
            (&mut self.connect, &o.connect),
            (&mut self.client_queue, &o.client_queue),
        ] {
            a.add(b).expect("histograms share bounds");
        }
        self.new_connections += o.new_connections;
        self.retried_stale += o.retried_stale;
        self.late_sends += o.late_sends;
        self.setup_us_total += o.setup_us_total;
        self.ttft_us_total += o.ttft_us_total;
        self.output_tokens_total += o.output_tokens_total;
        self.input_tokens_total += o.input_tokens_total;
        self.input_tokens_reported += o.input_tokens_reported;
        self.input_counted += o.input_counted;
        self.input_mismatch += o.input_mismatch;
        self.input_excess += o.input_excess;
        self.usage_reported += o.usage_reported;
        self.usage_chunk_mismatch += o.usage_chunk_mismatch;
        self.last_done_at = self.last_done_at.max(o.last_done_at);
        self.good += o.good;
        self.bad += o.bad;
        self.queued += o.queued;
        self.cached_reported += o.cached_reported;
        self.cached_tokens_total += o.cached_tokens_total;
        self.cached_input_total += o.cached_input_total;
        match (&mut self.sessions, &o.sessions) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.sessions = Some(b.clone()),
            _ => {}
        }
        match (&mut self.series, &o.series) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.series = Some(b.clone()),
            _ => {}
        }
        match (&mut self.timeline, &o.timeline) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.timeline = Some(b.clone()),
            _ => {}
        }
    }
}

/// The finish reason as reported, for tests and sinks.
pub fn finish_label(f: Option<FinishReason>) -> &'static str {
    f.map(FinishReason::as_str).unwrap_or("none")
}
