//! Sessions as measured: how many started, finished, broke off (by
//! cause) or were still open when the level ended; how late their first
//! turns and their later turns went out; and TTFT, E2E, prompt tokens and
//! cached tokens by turn bucket (1, 2–4, 5+), since on a server that
//! caches prefixes a later turn pays prefill only for its new tokens.
//! Pure: records in, the `sessions` object of a level out, and the exact
//! merge of shards' objects.

use crate::analysis::dist::{Dist, decode, encode, latency_histogram, micros, round};
use crate::client::record::{ErrorKind, RequestRecord};
use crate::workload::session::{TURN_BUCKETS, turn_bucket};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Every turn answered.
    Completed,
    /// A turn failed: the session ends there (a user whose chat broke
    /// does not send the next turn).
    Aborted(ErrorKind),
    /// The level ended with turns still to send.
    OpenAtEnd,
}

/// One turn bucket's sums.
#[derive(Debug, Clone)]
pub struct BucketStats {
    pub requests: u64,
    pub succeeded: u64,
    pub ttft: Histogram<u64>,
    pub e2e: Histogram<u64>,
    /// Prompt tokens of successful turns: the server's count, else ours.
    pub input_tokens: u64,
    /// Over successful turns whose server reported cached tokens.
    pub cached_reported: u64,
    pub cached_tokens: u64,
    pub cached_input: u64,
}

impl BucketStats {
    fn new() -> Self {
        Self {
            requests: 0,
            succeeded: 0,
            ttft: latency_histogram(),
            e2e: latency_histogram(),
            input_tokens: 0,
            cached_reported: 0,
            cached_tokens: 0,
            cached_input: 0,
        }
    }
}

/// Everything counted about a level's sessions.
#[derive(Debug, Clone)]
pub struct SessionStats {
    pub started: u64,
    pub completed: u64,
    pub aborted: BTreeMap<ErrorKind, u64>,
    pub open_at_end: u64,
    /// First turns: how late they went out against the session schedule.
    pub start_lag: Histogram<u64>,
    /// Later turns: how late against the end of the reply plus think time.
    pub turn_lag: Histogram<u64>,
    pub buckets: [BucketStats; 3],
}

impl Default for SessionStats {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionStats {
    pub fn new() -> Self {
        Self {
            started: 0,
            completed: 0,
            aborted: BTreeMap::new(),
            open_at_end: 0,
            start_lag: latency_histogram(),
            turn_lag: latency_histogram(),
            buckets: [BucketStats::new(), BucketStats::new(), BucketStats::new()],
        }
    }

    /// A turn's request, finished (`rec.turn` ≥ 1).
    pub fn record(&mut self, r: &RequestRecord) {
        if r.outcome == Err(ErrorKind::Dropped) {
            self.buckets[turn_bucket(r.turn)].requests += 1;
            return;
        }
        let lag = micros(r.lag());
        if r.turn <= 1 {
            self.start_lag.saturating_record(lag);
        } else {
            self.turn_lag.saturating_record(lag);
        }
        let b = &mut self.buckets[turn_bucket(r.turn)];
        b.requests += 1;
        if r.is_ok() {
            b.succeeded += 1;
            if let Some(t) = r.ttft() {
                b.ttft.saturating_record(micros(t));
            }
            b.e2e.saturating_record(micros(r.e2e()));
            let input = r.prompt_tokens();
            b.input_tokens += input as u64;
            if let Some(c) = r.cached_input_tokens {
                b.cached_reported += 1;
                b.cached_tokens += c as u64;
                b.cached_input += input as u64;
            }
        }
    }

    pub fn started(&mut self) {
        self.started += 1;
    }

    pub fn ended(&mut self, end: SessionEnd) {
        match end {
            SessionEnd::Completed => self.completed += 1,
            SessionEnd::Aborted(kind) => *self.aborted.entry(kind).or_default() += 1,
            SessionEnd::OpenAtEnd => self.open_at_end += 1,
        }
    }

    pub fn merge(&mut self, o: &SessionStats) {
        self.started += o.started;
        self.completed += o.completed;
        self.open_at_end += o.open_at_end;
        for (k, v) in &o.aborted {
            *self.aborted.entry(*k).or_default() += v;
        }
        add(&mut self.start_lag, &o.start_lag);
        add(&mut self.turn_lag, &o.turn_lag);
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            a.requests += b.requests;
            a.succeeded += b.succeeded;
            add(&mut a.ttft, &b.ttft);
            add(&mut a.e2e, &b.e2e);
            a.input_tokens += b.input_tokens;
            a.cached_reported += b.cached_reported;
            a.cached_tokens += b.cached_tokens;
            a.cached_input += b.cached_input;
        }
    }

    /// The level's `sessions` object; `window` is the send window
    /// (sessions/s are started sessions over it).
    pub fn result(&self, window: Duration) -> SessionsResult {
        let secs = window.as_secs_f64().max(1e-9);
        let turns = self
            .buckets
            .iter()
            .zip(TURN_BUCKETS)
            .filter(|(b, _)| b.requests > 0)
            .map(|(b, name)| TurnResult {
                turn: name.to_string(),
                requests: b.requests,
                succeeded: b.succeeded,
                ttft: Dist::from_histogram(&b.ttft, 1e-6, 4),
                e2e_latency: Dist::from_histogram(&b.e2e, 1e-6, 4),
                input_tokens_mean: if b.succeeded > 0 {
                    round(b.input_tokens as f64 / b.succeeded as f64, 1)
                } else {
                    0.0
                },
                input_tokens_total: b.input_tokens,
                cached_reported: b.cached_reported,
                cached_tokens_total: b.cached_tokens,
                cached_input_total: b.cached_input,
                cached_tokens_mean: (b.cached_reported > 0)
                    .then(|| round(b.cached_tokens as f64 / b.cached_reported as f64, 1)),
                cache_hit_ratio: ratio(b.cached_tokens, b.cached_input),
                ttft_us: encode(&b.ttft),
                e2e_us: encode(&b.e2e),
            })
            .collect();
        SessionsResult {
            started: self.started,
            completed: self.completed,
            aborted: self.aborted.iter().map(|(k, v)| (k.key(), *v)).collect(),
            open_at_end: self.open_at_end,
            // Sessions that started sending: one dropped at
            // --max-in-flight never did.
            sessions_per_sec: round(
                self.started
                    .saturating_sub(self.aborted.get(&ErrorKind::Dropped).copied().unwrap_or(0))
                    as f64
                    / secs,
                3,
            ),
            start_lag: Dist::from_histogram(&self.start_lag, 1e-6, 6),
            turn_lag: Dist::from_histogram(&self.turn_lag, 1e-6, 6),
            turns,
            start_lag_us: encode(&self.start_lag),
            turn_lag_us: encode(&self.turn_lag),
        }
    }
}

fn add(a: &mut Histogram<u64>, b: &Histogram<u64>) {
    a.add(b).expect("histograms share bounds");
}

/// Cached ÷ looked-up tokens, when any were looked up.
pub fn ratio(cached: u64, input: u64) -> Option<f64> {
    (input > 0).then(|| round((cached as f64 / input as f64).min(1.0), 4))
}

/// A level's `sessions` object in `benchmark_qps_results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionsResult {
    pub started: u64,
    pub completed: u64,
    /// Sessions a failed turn ended, by the error's key.
    pub aborted: BTreeMap<String, u64>,
    /// Sessions with turns still to send when the level ended.
    pub open_at_end: u64,
    /// Sessions started per second of the send window (the rate an
    /// open-loop level's `qps_target` names).
    pub sessions_per_sec: f64,
    /// How late first turns went out against the session schedule, and
    /// later turns against the end of the previous reply plus think time.
    pub start_lag: Dist,
    pub turn_lag: Dist,
    /// By turn bucket (`1`, `2-4`, `5+`), buckets with requests only.
    pub turns: Vec<TurnResult>,
    #[serde(default)]
    pub start_lag_us: String,
    #[serde(default)]
    pub turn_lag_us: String,
}

/// One turn bucket of a level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnResult {
    pub turn: String,
    pub requests: u64,
    pub succeeded: u64,
    pub ttft: Dist,
    pub e2e_latency: Dist,
    /// Prompt tokens per successful turn (the server's count when it
    /// reported one), history included.
    pub input_tokens_mean: f64,
    pub input_tokens_total: u64,
    /// Successful turns whose server reported `cached_tokens`, and sums
    /// over them.
    pub cached_reported: u64,
    pub cached_tokens_total: u64,
    pub cached_input_total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens_mean: Option<f64>,
    /// Cached ÷ prompt tokens over the turns that reported cached tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit_ratio: Option<f64>,
    /// HDR histograms (as in `histograms`), for exact merging.
    pub ttft_us: String,
    pub e2e_us: String,
}

/// The shards' `sessions` objects of one level, merged exactly.
pub fn merge(parts: &[&SessionsResult], window: Duration) -> Result<SessionsResult, String> {
    let mut stats = SessionStats::new();
    for p in parts {
        stats.started += p.started;
        stats.completed += p.completed;
        stats.open_at_end += p.open_at_end;
        let into = |h: &mut Histogram<u64>, s: &str| -> Result<(), String> {
            if !s.is_empty() {
                h.add(decode(s)?)
                    .map_err(|e| format!("histograms do not add: {e:?}"))?;
            }
            Ok(())
        };
        into(&mut stats.start_lag, &p.start_lag_us)?;
        into(&mut stats.turn_lag, &p.turn_lag_us)?;
        for t in &p.turns {
            let i = TURN_BUCKETS
                .iter()
                .position(|b| *b == t.turn)
                .ok_or_else(|| format!("unknown turn bucket '{}'", t.turn))?;
            let b = &mut stats.buckets[i];
            b.requests += t.requests;
            b.succeeded += t.succeeded;
            b.input_tokens += t.input_tokens_total;
            b.cached_reported += t.cached_reported;
            b.cached_tokens += t.cached_tokens_total;
            b.cached_input += t.cached_input_total;
            into(&mut b.ttft, &t.ttft_us)?;
            into(&mut b.e2e, &t.e2e_us)?;
        }
    }
    let mut out = stats.result(window);
    // Abort causes keep their keys as written.
    let mut aborted = BTreeMap::new();
    for p in parts {
        for (k, v) in &p.aborted {
            *aborted.entry(k.clone()).or_default() += v;
        }
    }
    out.aborted = aborted;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(turn: u32, ttft_ms: u64, input: u32, cached: Option<u32>) -> RequestRecord {
        let ms = Duration::from_millis;
        let mut r = RequestRecord::new(0, ms(100), ms(101));
        r.turn = turn;
        r.first_token_at = Some(ms(100 + ttft_ms));
        r.done_at = ms(100 + ttft_ms + 50);
        r.token_chunks = 5;
        r.usage_input_tokens = Some(input);
        r.cached_input_tokens = cached;
        r
    }

    #[test]
    fn turns_are_bucketed_and_the_cache_ratio_is_cached_over_input() {
        let mut s = SessionStats::new();
        s.started();
        s.record(&turn(1, 400, 1000, Some(0)));
        for t in 2..=6 {
            s.record(&turn(t, 40, 1000 + 100 * t, Some(900 + 100 * t)));
        }
        s.ended(SessionEnd::Completed);
        s.started();
        let mut failed = turn(1, 0, 10, None);
        failed.outcome = Err(ErrorKind::Http(503));
        s.record(&failed);
        s.ended(SessionEnd::Aborted(ErrorKind::Http(503)));
        let r = s.result(Duration::from_secs(2));
        assert_eq!((r.started, r.completed), (2, 1));
        assert_eq!(r.aborted.get("HTTP 503"), Some(&1));
        assert_eq!(r.sessions_per_sec, 1.0);
        let names: Vec<&str> = r.turns.iter().map(|t| t.turn.as_str()).collect();
        assert_eq!(names, ["1", "2-4", "5+"]);
        assert_eq!((r.turns[0].requests, r.turns[0].succeeded), (2, 1));
        assert_eq!(r.turns[0].cache_hit_ratio, Some(0.0));
        assert!(r.turns[1].ttft.p50 < r.turns[0].ttft.p50);
        // Turns 2-4: 1200+1300+1400 looked up, 1100+1200+1300 cached.
        assert_eq!(r.turns[1].cache_hit_ratio, ratio(3600, 3900));
        assert_eq!(r.turns[1].input_tokens_mean, 1300.0);
        assert_eq!(r.start_lag.count, 2);
        assert_eq!(r.turn_lag.count, 5);
    }

    #[test]
    fn shards_merge_to_the_whole() {
        let mut a = SessionStats::new();
        let mut b = SessionStats::new();
        let mut whole = SessionStats::new();
        for (i, t) in [1, 2, 3, 5, 1, 2].into_iter().enumerate() {
            let r = turn(t, 10 * (i as u64 + 1), 100, Some(50));
            if i % 2 == 0 { &mut a } else { &mut b }.record(&r);
            whole.record(&r);
        }
        a.ended(SessionEnd::OpenAtEnd);
        whole.ended(SessionEnd::OpenAtEnd);
        let w = Duration::from_secs(1);
        let merged = merge(&[&a.result(w), &b.result(w)], w).unwrap();
        assert_eq!(merged, whole.result(w));
    }
}
