//! A level's time series: every `step` (10 s by default), the target and
//! achieved rate, TTFT and E2E percentiles, errors and requests in
//! flight. Levels whose rate changes (ramps, traces, soak shapes) are
//! read this way: one set of percentiles over a ramp from 10 to 100 req/s
//! says nothing about where it broke.
//!
//! Requests are bucketed by their planned send time, so a bucket's
//! latencies are those of the requests its load sent.

use crate::analysis::stats::round;
use crate::client::record::RequestRecord;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The step results use unless told otherwise.
pub const DEFAULT_STEP: Duration = Duration::from_secs(10);
/// Most buckets kept: a week of 10 s steps. Later sends are not tracked.
const MAX_BUCKETS: usize = 60_480;

#[derive(Debug, Clone)]
struct Bucket {
    scheduled: u32,
    sent: u32,
    errors: u32,
    in_flight_sum: u64,
    in_flight_max: u32,
    /// Two significant digits: enough for a plotted percentile, and a
    /// bucket costs a few KB.
    ttft: Histogram<u64>,
    e2e: Histogram<u64>,
}

impl Bucket {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static bounds");
        Self {
            scheduled: 0,
            sent: 0,
            errors: 0,
            in_flight_sum: 0,
            in_flight_max: 0,
            ttft: h(),
            e2e: h(),
        }
    }
}

/// The buckets of one level, filled as requests finish.
#[derive(Debug, Clone)]
pub struct Series {
    step: Duration,
    buckets: Vec<Bucket>,
}

/// One step of the series, as written to the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Seconds from the level's start to the step's start.
    pub t_s: f64,
    /// Requests planned per second in the step.
    pub target_qps: f64,
    /// Requests sent per second in the step.
    pub achieved_qps: f64,
    /// Seconds, over the step's successful requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p50: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p95: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_p50: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_p95: Option<f64>,
    /// Failed or dropped requests planned in the step.
    pub errors: u64,
    /// Mean requests open when the step's requests were sent.
    pub in_flight: f64,
    pub in_flight_max: u64,
}

impl Series {
    pub fn new(step: Duration) -> Self {
        Self {
            step: step.max(Duration::from_millis(100)),
            buckets: Vec::new(),
        }
    }

    pub fn step(&self) -> Duration {
        self.step
    }

    pub fn record(&mut self, r: &RequestRecord) {
        let i = (r.scheduled_at.as_nanos() / self.step.as_nanos()) as usize;
        if i >= MAX_BUCKETS {
            return;
        }
        if self.buckets.len() <= i {
            self.buckets.resize_with(i + 1, Bucket::new);
        }
        let b = &mut self.buckets[i];
        b.scheduled += 1;
        if r.outcome == Err(crate::client::record::ErrorKind::Dropped) {
            b.errors += 1;
            return;
        }
        b.sent += 1;
        b.in_flight_sum += r.in_flight_at_send as u64;
        b.in_flight_max = b.in_flight_max.max(r.in_flight_at_send);
        if !r.is_ok() {
            b.errors += 1;
            return;
        }
        if let Some(t) = r.ttft() {
            b.ttft.saturating_record(t.as_micros().max(1) as u64);
        }
        b.e2e.saturating_record(r.e2e().as_micros().max(1) as u64);
    }

    pub fn merge(&mut self, o: &Series) {
        if o.step != self.step {
            return;
        }
        if self.buckets.len() < o.buckets.len() {
            self.buckets.resize_with(o.buckets.len(), Bucket::new);
        }
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            a.scheduled += b.scheduled;
            a.sent += b.sent;
            a.errors += b.errors;
            a.in_flight_sum += b.in_flight_sum;
            a.in_flight_max = a.in_flight_max.max(b.in_flight_max);
            let _ = a.ttft.add(&b.ttft);
            let _ = a.e2e.add(&b.e2e);
        }
    }

    /// The points, the last step's rates over the part of it inside
    /// `window` (the level's send window).
    pub fn points(&self, window: Duration) -> Vec<SeriesPoint> {
        let step = self.step.as_secs_f64();
        let w = window.as_secs_f64();
        let q = |h: &Histogram<u64>, p: f64| {
            (!h.is_empty()).then(|| round(h.value_at_quantile(p) as f64 * 1e-6, 4))
        };
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let t0 = i as f64 * step;
                let width = if w > t0 { (w - t0).min(step) } else { step };
                let width = width.max(1e-3);
                SeriesPoint {
                    t_s: round(t0, 3),
                    target_qps: round(b.scheduled as f64 / width, 3),
                    achieved_qps: round(b.sent as f64 / width, 3),
                    ttft_p50: q(&b.ttft, 0.5),
                    ttft_p95: q(&b.ttft, 0.95),
                    e2e_p50: q(&b.e2e, 0.5),
                    e2e_p95: q(&b.e2e, 0.95),
                    errors: b.errors as u64,
                    in_flight: if b.sent > 0 {
                        round(b.in_flight_sum as f64 / b.sent as f64, 2)
                    } else {
                        0.0
                    },
                    in_flight_max: b.in_flight_max as u64,
                }
            })
            .collect()
    }
}

/// Shards' points of one level, step by step: rates and errors add up;
/// a percentile is the highest shard's (an upper bound: the points do
/// not carry their histograms).
pub fn merge_points(shards: &[&[SeriesPoint]]) -> Vec<SeriesPoint> {
    let n = shards.iter().map(|s| s.len()).max().unwrap_or(0);
    let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    };
    (0..n)
        .map(|i| {
            let mut p: Option<SeriesPoint> = None;
            let mut sends = 0.0;
            for s in shards {
                let Some(x) = s.get(i) else { continue };
                sends += x.achieved_qps;
                p = Some(match p {
                    None => SeriesPoint {
                        in_flight: x.in_flight * x.achieved_qps,
                        ..x.clone()
                    },
                    Some(a) => SeriesPoint {
                        t_s: a.t_s,
                        target_qps: round(a.target_qps + x.target_qps, 3),
                        achieved_qps: round(a.achieved_qps + x.achieved_qps, 3),
                        ttft_p50: max(a.ttft_p50, x.ttft_p50),
                        ttft_p95: max(a.ttft_p95, x.ttft_p95),
                        e2e_p50: max(a.e2e_p50, x.e2e_p50),
                        e2e_p95: max(a.e2e_p95, x.e2e_p95),
                        errors: a.errors + x.errors,
                        in_flight: a.in_flight + x.in_flight * x.achieved_qps,
                        in_flight_max: a.in_flight_max + x.in_flight_max,
                    },
                });
            }
            let mut p = p.expect("at least one shard has step i");
            // Requests open add up across shards: the mean per shard
            // (weighted by sends) times the shards that sent.
            let shards_sending = shards
                .iter()
                .filter(|s| s.get(i).is_some_and(|x| x.achieved_qps > 0.0))
                .count();
            p.in_flight = if sends > 0.0 {
                round(p.in_flight / sends * shards_sending as f64, 2)
            } else {
                0.0
            };
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at_ms: u64, ttft_ms: u64, ok: bool, open: u32) -> RequestRecord {
        let at = Duration::from_millis(at_ms);
        let mut r = RequestRecord::new(0, at, at);
        r.first_token_at = Some(at + Duration::from_millis(ttft_ms));
        r.done_at = at + Duration::from_millis(2 * ttft_ms);
        r.in_flight_at_send = open;
        if !ok {
            r.outcome = Err(crate::client::record::ErrorKind::Http(503));
        }
        r
    }

    #[test]
    fn steps_hold_their_own_requests() {
        let mut s = Series::new(Duration::from_secs(1));
        for i in 0..10 {
            s.record(&rec(i * 100, 10, true, 1));
        }
        for i in 0..20 {
            s.record(&rec(1000 + i * 50, 100, i % 10 != 0, 4));
        }
        // The last step is half inside a 2.5 s window.
        for i in 0..5 {
            s.record(&rec(2000 + i * 100, 50, true, 2));
        }
        let p = s.points(Duration::from_millis(2500));
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].target_qps, p[1].target_qps, p[2].target_qps),
            (10.0, 20.0, 10.0)
        );
        assert_eq!(p[1].errors, 2);
        // Two significant digits: within 1 %.
        let near = |v: Option<f64>, want: f64| (v.unwrap() - want).abs() <= want * 0.01;
        assert!(near(p[0].ttft_p95, 0.01), "{:?}", p[0].ttft_p95);
        assert!(near(p[1].ttft_p50, 0.1), "{:?}", p[1].ttft_p50);
        assert_eq!((p[1].in_flight, p[1].in_flight_max), (4.0, 4));
        // Shards add up.
        let m = merge_points(&[&p, &p]);
        assert_eq!(m[1].target_qps, 40.0);
        assert_eq!(m[1].errors, 4);
        assert_eq!(m[1].in_flight, 8.0);
        assert_eq!(m[1].ttft_p50, p[1].ttft_p50);
        let mut t = s.clone();
        t.merge(&s);
        assert_eq!(t.points(Duration::from_millis(2500))[1].target_qps, 40.0);
    }
}
