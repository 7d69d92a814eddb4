//! What the server itself said during a level: its scrapes (see
//! [`crate::server::metrics`]) reduced to the `server` object of the level's
//! results. Pure: the scrapes come in with their times.
//!
//! * running and waiting requests: max, mean (over the scrapes) and the
//!   value at the level's end;
//! * KV-cache use: max;
//! * counters (preemptions, prompt and generated tokens): the increase
//!   from the first scrape to the last;
//! * the server's TTFT: p50 and p95 of its histogram's increase over the
//!   level, by linear interpolation within buckets (as PromQL's
//!   `histogram_quantile` does), beside ours.

use crate::server::metrics::{Family, Reading};
use serde::{Deserialize, Serialize};

/// Max, mean and end value of a gauge over a level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GaugeStats {
    pub max: f64,
    pub mean: f64,
    pub start: f64,
    pub end: f64,
}

/// A level's `server` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerLevel {
    /// `ok`, or `unavailable` (with `reason`) when no scrape succeeded.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    /// Scrapes that succeeded, and that failed.
    pub scrapes: u32,
    #[serde(default)]
    pub failed_scrapes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<GaugeStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<GaugeStats>,
    /// 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptions: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_tokens: Option<f64>,
    /// The server's own prefix-cache hit ratio over the level: prompt
    /// tokens found in its cache ÷ prompt tokens looked up (vLLM,
    /// llama.cpp, the mock; `None` where the server exports no counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache_hit_ratio: Option<f64>,
    /// The server's TTFT over the level, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p50: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p95: Option<f64>,
    /// Ours minus the server's p95: the network and everything in front
    /// of the engine (gateway, tokenizer, queueing outside its metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p95_gap: Option<f64>,
    /// Our own counts, beside the server's token counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub our_output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub our_input_tokens: Option<u64>,
}

impl ServerLevel {
    pub fn unavailable(reason: String, failed: u32) -> Self {
        Self {
            status: "unavailable".into(),
            reason,
            family: None,
            scrapes: 0,
            failed_scrapes: failed,
            running: None,
            waiting: None,
            kv_cache_max: None,
            preemptions: None,
            prompt_tokens: None,
            generation_tokens: None,
            prefix_cache_hit_ratio: None,
            ttft_p50: None,
            ttft_p95: None,
            ttft_p95_gap: None,
            our_output_tokens: None,
            our_input_tokens: None,
        }
    }

    /// One line for the console.
    pub fn describe(&self) -> String {
        if self.status != "ok" {
            return format!("server metrics unavailable: {}", self.reason);
        }
        let mut parts = Vec::new();
        let g = |name: &str, s: &Option<GaugeStats>| {
            s.map(|s| {
                format!(
                    "{name} {:.0}->{:.0} (max {:.0}, mean {:.1})",
                    s.start, s.end, s.max, s.mean
                )
            })
        };
        parts.extend(g("running", &self.running));
        parts.extend(g("waiting", &self.waiting));
        if let Some(k) = self.kv_cache_max {
            parts.push(format!("KV cache max {:.0}%", k * 100.0));
        }
        if let Some(p) = self.preemptions
            && p > 0.0
        {
            parts.push(format!("{p:.0} preemptions"));
        }
        if let (Some(p95), Some(gap)) = (self.ttft_p95, self.ttft_p95_gap) {
            parts.push(format!("server TTFT p95 {p95:.3}s (ours {gap:+.3}s)"));
        }
        if let Some(r) = self.prefix_cache_hit_ratio {
            parts.push(format!("prefix cache hit {:.0}%", r * 100.0));
        }
        if let Some(t) = self.generation_tokens {
            parts.push(match self.our_output_tokens {
                Some(o) => format!("{t:.0} tokens generated (we counted {o})"),
                None => format!("{t:.0} tokens generated"),
            });
        }
        if parts.is_empty() {
            "server metrics: nothing recognised".into()
        } else {
            format!("server: {}", parts.join(", "))
        }
    }

    /// The waiting queue's start and peak, when it grew: for the
    /// saturation analysis ("waiting requests grew from 0 to 212").
    pub fn waiting_growth(&self) -> Option<(f64, f64)> {
        self.waiting
            .filter(|w| w.max > w.start)
            .map(|w| (w.start, w.max))
    }
}

/// The value of quantile `q` of the histogram increase `buckets` (sorted
/// cumulative `(le, count)`, `+Inf` last), interpolating within a bucket
/// as `histogram_quantile` does.
pub fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0); // beyond the last finite bound
            }
            let inside = count - prev.1;
            let frac = if inside > 0.0 {
                (rank - prev.1) / inside
            } else {
                0.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

/// Bucket-wise `last - first` (a counter reset gives `last`).
fn bucket_delta(first: &[(f64, f64)], last: &[(f64, f64)]) -> Vec<(f64, f64)> {
    last.iter()
        .map(|&(le, c)| {
            let before = first
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |(_, c)| *c);
            (le, if c >= before { c - before } else { c })
        })
        .collect()
}

fn counter_delta(first: Option<f64>, last: Option<f64>) -> Option<f64> {
    match (first, last) {
        (Some(a), Some(b)) if b >= a => Some(b - a),
        (_, Some(b)) => Some(b), // reset (or no first): what was counted
        _ => None,
    }
}

fn gauge(readings: &[&Reading], get: impl Fn(&Reading) -> Option<f64>) -> Option<GaugeStats> {
    let vals: Vec<f64> = readings.iter().filter_map(|r| get(r)).collect();
    if vals.is_empty() {
        return None;
    }
    Some(GaugeStats {
        max: vals.iter().copied().fold(f64::MIN, f64::max),
        mean: vals.iter().sum::<f64>() / vals.len() as f64,
        start: vals[0],
        end: *vals.last().expect("not empty"),
    })
}

/// Reduce a level's scrapes (in time order; `Err` for failed ones).
/// `ours_ttft_p95`, tokens: our own figures for the comparison lines.
pub fn reduce(
    scrapes: &[Result<Reading, String>],
    ours_ttft_p95: Option<f64>,
    our_output_tokens: u64,
    our_input_tokens: u64,
) -> ServerLevel {
    let ok: Vec<&Reading> = scrapes.iter().filter_map(|s| s.as_ref().ok()).collect();
    let failed = (scrapes.len() - ok.len()) as u32;
    let Some(first) = ok.first() else {
        let reason = scrapes
            .iter()
            .rev()
            .find_map(|s| s.as_ref().err().cloned())
            .unwrap_or_else(|| "no scrape was made".into());
        return ServerLevel::unavailable(reason, failed);
    };
    let last = ok.last().expect("not empty");
    let ttft = match (&first.ttft_buckets, &last.ttft_buckets) {
        (Some(a), Some(b)) if ok.len() >= 2 => Some(bucket_delta(a, b)),
        _ => None,
    };
    let p = |q| ttft.as_ref().and_then(|t| bucket_quantile(t, q));
    let ttft_p95 = p(0.95);
    ServerLevel {
        status: "ok".into(),
        reason: String::new(),
        family: last.family,
        scrapes: ok.len() as u32,
        failed_scrapes: failed,
        running: gauge(&ok, |r| r.running),
        waiting: gauge(&ok, |r| r.waiting),
        kv_cache_max: gauge(&ok, |r| r.kv_cache).map(|g| g.max),
        preemptions: counter_delta(first.preemptions, last.preemptions),
        prompt_tokens: counter_delta(first.prompt_tokens, last.prompt_tokens),
        generation_tokens: counter_delta(first.generation_tokens, last.generation_tokens),
        prefix_cache_hit_ratio: counter_delta(
            first.prefix_cache_queries,
            last.prefix_cache_queries,
        )
        .zip(counter_delta(
            first.prefix_cache_hits,
            last.prefix_cache_hits,
        ))
        .filter(|(q, _)| *q > 0.0)
        .map(|(q, h)| ((h / q).min(1.0) * 1e4).round() / 1e4),
        ttft_p50: p(0.5),
        ttft_p95,
        ttft_p95_gap: ours_ttft_p95.zip(ttft_p95).map(|(o, s)| o - s),
        our_output_tokens: Some(our_output_tokens),
        our_input_tokens: Some(our_input_tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(running: f64, waiting: f64, gen_tokens: f64, buckets: Vec<(f64, f64)>) -> Reading {
        Reading {
            family: Some(Family::Vllm),
            running: Some(running),
            waiting: Some(waiting),
            kv_cache: Some(waiting / 400.0),
            preemptions: Some(3.0),
            prompt_tokens: Some(1000.0),
            generation_tokens: Some(gen_tokens),
            prefix_cache_queries: Some(gen_tokens),
            prefix_cache_hits: Some(gen_tokens / 2.0),
            ttft_buckets: Some(buckets),
        }
    }

    #[test]
    fn a_level_reduces_to_its_server_object() {
        let inf = f64::INFINITY;
        let s = vec![
            Ok(reading(
                0.0,
                0.0,
                100.0,
                vec![(0.1, 10.0), (1.0, 10.0), (inf, 10.0)],
            )),
            Ok(reading(
                8.0,
                50.0,
                900.0,
                vec![(0.1, 30.0), (1.0, 60.0), (inf, 60.0)],
            )),
            Err("timed out".into()),
            Ok(reading(
                8.0,
                212.0,
                2100.0,
                vec![(0.1, 50.0), (1.0, 110.0), (inf, 110.0)],
            )),
        ];
        let v = reduce(&s, Some(0.95), 2000, 0);
        assert_eq!(v.status, "ok");
        assert_eq!((v.scrapes, v.failed_scrapes), (3, 1));
        let w = v.waiting.unwrap();
        assert_eq!((w.start, w.max, w.end), (0.0, 212.0, 212.0));
        assert!((w.mean - 87.333).abs() < 0.01);
        assert_eq!(v.running.unwrap().max, 8.0);
        assert_eq!(v.kv_cache_max, Some(0.53));
        assert_eq!(v.preemptions, Some(0.0));
        assert_eq!(v.generation_tokens, Some(2000.0));
        // 2000 looked up, 1000 found over the level.
        assert_eq!(v.prefix_cache_hit_ratio, Some(0.5));
        // Increase: 40 in (0, 0.1], 60 in (0.1, 1]: p50 at rank 50 is 10
        // into the second bucket of 60: 0.1 + 0.9 × 10/60 = 0.25.
        assert!(
            (v.ttft_p50.unwrap() - 0.25).abs() < 1e-9,
            "{:?}",
            v.ttft_p50
        );
        assert!((v.ttft_p95.unwrap() - 0.925).abs() < 1e-9);
        assert!((v.ttft_p95_gap.unwrap() - 0.025).abs() < 1e-9);
        assert_eq!(v.waiting_growth(), Some((0.0, 212.0)));
        assert!(v.describe().contains("waiting 0->212"), "{}", v.describe());
    }

    #[test]
    fn no_scrape_is_unavailable_with_the_reason() {
        let v = reduce(&[Err("connection refused".into())], None, 0, 0);
        assert_eq!(v.status, "unavailable");
        assert_eq!(v.reason, "connection refused");
        assert!(v.describe().contains("unavailable"));
    }

    #[test]
    fn quantiles_of_buckets() {
        let inf = f64::INFINITY;
        assert_eq!(bucket_quantile(&[(1.0, 0.0), (inf, 0.0)], 0.5), None);
        assert_eq!(bucket_quantile(&[(1.0, 10.0), (inf, 10.0)], 0.5), Some(0.5));
        // Everything beyond the last finite bound: that bound.
        assert_eq!(bucket_quantile(&[(1.0, 0.0), (inf, 10.0)], 0.5), Some(1.0));
    }
}
