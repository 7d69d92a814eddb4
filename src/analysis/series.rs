//! A level's time series: every `step` (10 s by default), the target and
//! achieved rate, TTFT and E2E percentiles, errors and requests in
//! flight. Levels whose rate changes (ramps, traces, soak shapes) are
//! read this way: one set of percentiles over a ramp from 10 to 100 req/s
//! says nothing about where it broke.
//!
//! Requests are bucketed by their planned send time, so a bucket's
//! latencies are those of the requests its load sent.

use crate::client::record::RequestRecord;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `v` to `decimals` places (stats' own helper would make a circle:
/// stats keeps a series).
fn round(v: f64, decimals: i32) -> f64 {
    let m = 10f64.powi(decimals);
    (v * m).round() / m
}

/// The step results use unless told otherwise.
pub const DEFAULT_STEP: Duration = Duration::from_secs(10);
/// Most steps kept. A longer level (a soak) doubles its step and merges
/// neighbours instead of growing: memory stays bounded (about 2 KB a
/// step) however long it runs.
const MAX_BUCKETS: usize = 2048;

/// Latencies by 8 % log buckets from 10 µs to an hour: a percentile read
/// from it is within 4 % of the true one, in 1 KB (an HDR histogram of
/// the same range is 30 times that, too much for thousands of steps).
#[derive(Debug, Clone, Default)]
struct Sketch {
    /// Empty until the first sample.
    counts: Vec<u32>,
    n: u64,
}

const SKETCH_MIN_US: f64 = 10.0;
const SKETCH_RATIO: f64 = 1.08;
const SKETCH_BUCKETS: usize = 256;

impl Sketch {
    fn record(&mut self, us: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; SKETCH_BUCKETS];
        }
        let i = ((us.max(1) as f64 / SKETCH_MIN_US).ln() / SKETCH_RATIO.ln()).floor();
        let i = (i.max(0.0) as usize).min(SKETCH_BUCKETS - 1);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.n += 1;
    }

    fn merge(&mut self, o: &Sketch) {
        if o.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; SKETCH_BUCKETS];
        }
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a = a.saturating_add(*b);
        }
        self.n += o.n;
    }

    /// The `q` quantile in seconds: the geometric middle of its bucket.
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c as u64;
            if seen >= rank {
                let lo = SKETCH_MIN_US * SKETCH_RATIO.powi(i as i32);
                return Some(lo * SKETCH_RATIO.sqrt() * 1e-6);
            }
        }
        None
    }
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    scheduled: u32,
    sent: u32,
    errors: u32,
    in_flight_sum: u64,
    in_flight_max: u32,
    ttft: Sketch,
    e2e: Sketch,
}

impl Bucket {
    fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, b: &Bucket) {
        self.scheduled += b.scheduled;
        self.sent += b.sent;
        self.errors += b.errors;
        self.in_flight_sum += b.in_flight_sum;
        self.in_flight_max = self.in_flight_max.max(b.in_flight_max);
        self.ttft.merge(&b.ttft);
        self.e2e.merge(&b.e2e);
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
        let mut i = (r.scheduled_at.as_nanos() / self.step.as_nanos()) as usize;
        while i >= MAX_BUCKETS {
            self.coarsen();
            i = (r.scheduled_at.as_nanos() / self.step.as_nanos()) as usize;
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
            b.ttft.record(t.as_micros() as u64);
        }
        b.e2e.record(r.e2e().as_micros() as u64);
    }

    /// Twice the step, neighbours merged.
    fn coarsen(&mut self) {
        let old = std::mem::take(&mut self.buckets);
        self.buckets = old
            .chunks(2)
            .map(|pair| {
                let mut b = pair[0].clone();
                if let Some(n) = pair.get(1) {
                    b.add(n);
                }
                b
            })
            .collect();
        self.step *= 2;
    }

    pub fn merge(&mut self, o: &Series) {
        let mut o = o.clone();
        while o.step < self.step {
            o.coarsen();
        }
        while self.step < o.step {
            self.coarsen();
        }
        if self.buckets.len() < o.buckets.len() {
            self.buckets.resize_with(o.buckets.len(), Bucket::new);
        }
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            a.add(b);
        }
    }

    /// The points, the last step's rates over the part of it inside
    /// `window` (the level's send window).
    pub fn points(&self, window: Duration) -> Vec<SeriesPoint> {
        let step = self.step.as_secs_f64();
        let w = window.as_secs_f64();
        let q = |h: &Sketch, p: f64| h.quantile(p).map(|v| round(v, 4));
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
        // Within the sketch's 4 %.
        let near = |v: Option<f64>, want: f64| (v.unwrap() - want).abs() <= want * 0.04;
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

    #[test]
    fn a_long_level_coarsens_its_steps_instead_of_growing() {
        let mut s = Series::new(Duration::from_secs(10));
        // A week of one request every 10 s.
        for i in 0..60_480u64 {
            s.record(&rec(i * 10_000, 10, true, 1));
        }
        assert!(s.buckets.len() <= MAX_BUCKETS);
        assert_eq!(s.step(), Duration::from_secs(320));
        let p = s.points(Duration::from_secs(604_800));
        let total: f64 = p.iter().map(|x| x.target_qps * 320.0).sum();
        assert!(
            (total - 60_480.0).abs() < 1.0,
            "every request kept: {total}"
        );
        // Quantiles within 4 % across the range.
        let mut k = Sketch::default();
        for us in [15u64, 900, 47_000, 2_000_000, 3_000_000_000] {
            k.record(us);
            let got = k.quantile(1.0).unwrap() * 1e6;
            assert!((got / us as f64 - 1.0).abs() < 0.04, "{us}: {got}");
        }
    }
}
