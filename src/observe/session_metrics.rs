//! Live metrics of sessions and prefix caches: TTFT by turn bucket, the
//! prompt tokens the server said it served from its cache, and how
//! sessions ended. Labels stay bounded: a turn bucket (`1`, `2-4`, `5+`),
//! never a session id or a raw turn number.

use crate::analysis::sessions::SessionEnd;
use crate::client::record::RequestRecord;
use crate::workload::session::{TURN_BUCKETS, turn_bucket};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

/// The families, registered with the daemon's other metrics.
#[derive(Clone)]
pub struct SessionMetrics {
    pub turn_ttft: HistogramVec,
    pub cached_tokens: IntCounterVec,
    pub cache_lookup_tokens: IntCounterVec,
    pub sessions: IntCounterVec,
}

const BASE: &[&str] = &["target", "model", "job"];

impl SessionMetrics {
    /// `ttft_buckets`: the TTFT histogram's buckets, shared with the
    /// level-wide TTFT so the two compare bucket for bucket.
    pub fn new(ttft_buckets: &[f64]) -> Self {
        Self {
            turn_ttft: HistogramVec::new(
                HistogramOpts::new(
                    "turn_time_to_first_token_seconds",
                    "Time to first token of successful session turns, by turn bucket (1, 2-4, 5+).",
                )
                .buckets(ttft_buckets.to_vec()),
                &["target", "model", "job", "turn"],
            )
            .expect("valid histogram"),
            cached_tokens: IntCounterVec::new(
                Opts::new(
                    "cached_prompt_tokens_total",
                    "Prompt tokens the server reported serving from its prefix cache (usage.prompt_tokens_details.cached_tokens).",
                ),
                BASE,
            )
            .expect("valid counter"),
            cache_lookup_tokens: IntCounterVec::new(
                Opts::new(
                    "cache_lookup_prompt_tokens_total",
                    "Prompt tokens of the successful requests whose server reported cached tokens: the cache hit ratio's denominator.",
                ),
                BASE,
            )
            .expect("valid counter"),
            sessions: IntCounterVec::new(
                Opts::new(
                    "sessions_total",
                    "Sessions ended, by outcome (completed, aborted, open_at_end).",
                ),
                &["target", "model", "job", "outcome"],
            )
            .expect("valid counter"),
        }
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.turn_ttft.clone()),
            Box::new(self.cached_tokens.clone()),
            Box::new(self.cache_lookup_tokens.clone()),
            Box::new(self.sessions.clone()),
        ]
    }

    /// Handles for one job, resolved once.
    pub fn for_job(&self, l: [&str; 3]) -> JobSessionMetrics {
        let [t, m, j] = l;
        JobSessionMetrics {
            turn_ttft: TURN_BUCKETS.map(|b| self.turn_ttft.with_label_values(&[t, m, j, b])),
            cached: self.cached_tokens.with_label_values(&l),
            lookup: self.cache_lookup_tokens.with_label_values(&l),
            ended: ["completed", "aborted", "open_at_end"]
                .map(|o| self.sessions.with_label_values(&[t, m, j, o])),
        }
    }
}

/// One job's handles.
#[derive(Clone)]
pub struct JobSessionMetrics {
    turn_ttft: [Histogram; 3],
    cached: IntCounter,
    lookup: IntCounter,
    ended: [IntCounter; 3],
}

impl JobSessionMetrics {
    /// A finished request (successful ones only carry these figures).
    pub fn record(&self, r: &RequestRecord) {
        if !r.is_ok() {
            return;
        }
        if r.turn > 0
            && let Some(t) = r.ttft()
        {
            self.turn_ttft[turn_bucket(r.turn)].observe(t.as_secs_f64());
        }
        if let Some(c) = r.cached_input_tokens {
            let input = r.prompt_tokens();
            self.cached.inc_by(c as u64);
            self.lookup.inc_by(input as u64);
        }
    }

    pub fn session_ended(&self, end: SessionEnd) {
        let i = match end {
            SessionEnd::Completed => 0,
            SessionEnd::Aborted(_) => 1,
            SessionEnd::OpenAtEnd => 2,
        };
        self.ended[i].inc();
    }
}
