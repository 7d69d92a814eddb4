//! A trace replay: which slice of the trace, how fast, and whether it
//! repeats. Yields each request's offset from the replay's start and its
//! line, in order; the pacer sends them as it sends any schedule. Pure.

use crate::workload::dataset::{Conversation, Message, Role};
use crate::workload::request::{BodyParams, PreparedRequest, build_body};
use crate::workload::trace::{Trace, TracePrompts};
use std::sync::Arc;
use std::time::Duration;

/// How a trace is replayed (`--trace-speed`, `--trace-start`,
/// `--trace-duration`, `--trace-loop`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayOptions {
    /// 2.0 sends twice as fast as recorded.
    pub speed: f64,
    /// Skip the trace's first `start` (trace time).
    pub start: Duration,
    /// Replay only this much trace time after `start`.
    pub duration: Option<Duration>,
    /// Start the slice again when it ends (daemon soaks).
    pub looping: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            speed: 1.0,
            start: Duration::ZERO,
            duration: None,
            looping: false,
        }
    }
}

/// A trace, the slice of it to send and the prompts to send it with.
#[derive(Debug, Clone)]
pub struct Replay {
    pub trace: Arc<Trace>,
    pub options: ReplayOptions,
    pub prompts: TracePrompts,
    /// The body every request shares (model, temperature, ignore_eos…).
    pub params: BodyParams,
    /// The slice: `trace.entries[first..end]`.
    first: usize,
    end: usize,
    /// Replay seconds from one pass's start to the next's.
    period: f64,
}

/// What the slice holds, for the metadata and the console.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplaySummary {
    pub format: String,
    /// Requests in one pass of the slice.
    pub requests: u64,
    /// Replay seconds of one pass (trace seconds ÷ speed).
    pub pass_s: f64,
    pub speed: f64,
    pub start_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    pub looping: bool,
    /// Mean requests/s of a pass.
    pub mean_qps: f64,
    pub input_tokens_mean: f64,
    pub output_tokens_mean: f64,
    /// Share of input tokens in hash blocks an earlier request of the
    /// slice named: the prefix reuse a cache can exploit (none without
    /// hash ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_reuse: Option<f64>,
}

impl Replay {
    /// The slice of `trace` that `options` selects; an error when it is
    /// empty or the options make no sense.
    pub fn new(
        trace: Arc<Trace>,
        options: ReplayOptions,
        prompts: TracePrompts,
        params: BodyParams,
    ) -> Result<Self, String> {
        if !(options.speed.is_finite() && (1e-3..=1e6).contains(&options.speed)) {
            return Err(format!(
                "--trace-speed {}: must be between 0.001 and 1000000",
                options.speed
            ));
        }
        let from = options.start.as_micros() as u64;
        let to = options
            .duration
            .map_or(u64::MAX, |d| from.saturating_add(d.as_micros() as u64));
        let e = &trace.entries;
        let first = e.partition_point(|x| x.at_us < from);
        let end = e.partition_point(|x| x.at_us < to);
        if first >= end {
            return Err(format!(
                "the slice --trace-start {} --trace-duration {} holds no request (the trace spans {:.1} s)",
                crate::base::duration::format(options.start),
                options
                    .duration
                    .map_or("(rest)".to_string(), crate::base::duration::format),
                trace.span_s()
            ));
        }
        // A pass lasts its slice; without a duration, from the start to the
        // last request plus one mean gap, so the next pass does not send
        // its first request on top of this one's last.
        let span_us = match options.duration {
            Some(d) => d.as_micros() as f64,
            None => {
                let n = (end - first) as f64;
                let last = (e[end - 1].at_us - from) as f64;
                let gap = if n > 1.0 {
                    (e[end - 1].at_us - e[first].at_us) as f64 / (n - 1.0)
                } else {
                    1e6
                };
                last + gap.max(1.0)
            }
        };
        let period = span_us * 1e-6 / options.speed;
        Ok(Self {
            trace,
            options,
            prompts,
            params,
            first,
            end,
            period,
        })
    }

    /// The same slice with other words in every prompt (a warm-up that
    /// must not warm the replay's own prefixes).
    pub fn reseeded(&self, seed: u64) -> Self {
        Self {
            prompts: self.prompts.with_seed(seed),
            ..self.clone()
        }
    }

    /// Requests in one pass.
    pub fn len(&self) -> usize {
        self.end - self.first
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One pass, in replay time.
    pub fn pass(&self) -> Duration {
        Duration::from_secs_f64(self.period)
    }

    /// The level's send window: one pass, or `None` (for ever) when looping.
    pub fn window(&self) -> Option<Duration> {
        (!self.options.looping).then(|| self.pass())
    }

    /// The most requests of a pass due within any `window` of one another:
    /// the connections its bursts need at once.
    pub fn largest_burst(&self, window: Duration) -> usize {
        let w = window.as_micros() as f64 * self.options.speed;
        let e = &self.trace.entries[self.first..self.end];
        let (mut lo, mut best) = (0, 0);
        for hi in 0..e.len() {
            while (e[hi].at_us - e[lo].at_us) as f64 > w {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    /// Mean requests/s over a pass.
    pub fn mean_qps(&self) -> f64 {
        self.len() as f64 / self.period.max(1e-9)
    }

    /// `(offset from the replay's start, trace line index)` of every
    /// request, in order; for ever when looping.
    pub fn arrivals(&self) -> impl Iterator<Item = (Duration, usize)> + '_ {
        let from = self.options.start.as_micros() as f64;
        let speed = self.options.speed;
        let passes = if self.options.looping { u64::MAX } else { 1 };
        (0..passes).flat_map(move |pass| {
            let base = pass as f64 * self.period;
            (self.first..self.end).map(move |i| {
                let at = (self.trace.entries[i].at_us as f64 - from) * 1e-6 / speed;
                (Duration::from_secs_f64(base + at), i)
            })
        })
    }

    /// The request of trace line `i`: its prompt of exactly its input
    /// length (approximately, without a tokenizer) and `max_tokens` its
    /// output length.
    pub fn request(&self, i: usize) -> PreparedRequest {
        let params = &self.params;
        let e = &self.trace.entries[i];
        let text = self
            .prompts
            .prompt(i as u64, e.input, self.trace.hash_ids(e));
        let conv = Conversation {
            messages: vec![Message {
                role: Role::User,
                content: text,
            }],
            max_tokens: Some(e.output),
        };
        PreparedRequest {
            body: build_body(&conv, params),
            input_chars: conv.text_chars(),
            input_tokens: self.prompts.exact().then_some(e.input),
        }
    }

    pub fn summary(&self) -> ReplaySummary {
        let slice = &self.trace.entries[self.first..self.end];
        let n = slice.len() as f64;
        let round = crate::analysis::stats::round;
        ReplaySummary {
            format: self.trace.format.as_str().into(),
            requests: slice.len() as u64,
            pass_s: round(self.period, 3),
            speed: self.options.speed,
            start_s: self.options.start.as_secs_f64(),
            duration_s: self.options.duration.map(|d| d.as_secs_f64()),
            looping: self.options.looping,
            mean_qps: round(self.mean_qps(), 3),
            input_tokens_mean: round(slice.iter().map(|e| e.input as f64).sum::<f64>() / n, 1),
            output_tokens_mean: round(slice.iter().map(|e| e.output as f64).sum::<f64>() / n, 1),
            prefix_reuse: crate::workload::trace::reuse_share(&self.trace, slice)
                .map(|r| round(r, 4)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::trace::TraceParser;

    fn trace(ms: &[u64]) -> Arc<Trace> {
        let mut p = TraceParser::new(None);
        for (i, t) in ms.iter().enumerate() {
            p.line(
                i + 1,
                &format!("{{\"timestamp\": {t}, \"input_length\": 10, \"output_length\": 2}}"),
            )
            .unwrap();
        }
        Arc::new(p.finish(ms.len()).unwrap())
    }

    fn replay(ms: &[u64], o: ReplayOptions) -> Result<Replay, String> {
        Replay::new(
            trace(ms),
            o,
            TracePrompts::new(None, 0),
            BodyParams::default(),
        )
    }

    fn offsets(r: &Replay, n: usize) -> Vec<(u64, usize)> {
        r.arrivals()
            .take(n)
            .map(|(d, i)| (d.as_millis() as u64, i))
            .collect()
    }

    #[test]
    fn slices_speed_and_loops() {
        let ms = [1000, 1100, 1500, 3000, 4000];
        let all = replay(&ms, ReplayOptions::default()).unwrap();
        assert_eq!(
            offsets(&all, 10),
            vec![(0, 0), (100, 1), (500, 2), (2000, 3), (3000, 4)]
        );
        // A pass is the span plus one mean gap (750 ms).
        assert_eq!(all.pass(), Duration::from_millis(3750));
        assert_eq!(all.window(), Some(all.pass()));
        let fast = replay(
            &ms,
            ReplayOptions {
                speed: 2.0,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            offsets(&fast, 10),
            vec![(0, 0), (50, 1), (250, 2), (1000, 3), (1500, 4)]
        );
        let slice = replay(
            &ms,
            ReplayOptions {
                start: Duration::from_millis(100),
                duration: Some(Duration::from_millis(2000)),
                looping: true,
                ..Default::default()
            },
        )
        .unwrap();
        // Lines 1..=3 (100 ms to 2000 ms of trace time), offsets from the
        // slice start, repeating every 2 s.
        assert_eq!(
            offsets(&slice, 6),
            vec![(0, 1), (400, 2), (1900, 3), (2000, 1), (2400, 2), (3900, 3)]
        );
        assert_eq!(slice.window(), None, "a loop runs until stopped");
        assert_eq!(slice.summary().requests, 3);
        let e = replay(
            &ms,
            ReplayOptions {
                start: Duration::from_secs(10),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.contains("holds no request"), "{e}");
        assert!(
            replay(
                &ms,
                ReplayOptions {
                    speed: 0.0,
                    ..Default::default()
                }
            )
            .is_err()
        );
        let slow = ReplayOptions {
            speed: 1e-9,
            ..Default::default()
        };
        assert!(replay(&ms, slow).is_err());
        // A warm-up's replay: the same lines and times, other words.
        let w = all.reseeded(99);
        assert_eq!(offsets(&w, 5), offsets(&all, 5));
        assert_ne!(w.request(0).body, all.request(0).body);
        assert_eq!(w.request(0).input_chars, all.request(0).input_chars);
    }
}
