//! Arrival schedules: when each request of a level is due, computed ahead.
//!
//! Open-loop load testing sends request *i* at its planned instant whether
//! or not earlier requests have finished; latency is then measured from
//! that planned instant, so a slow client or a stalled connection pool
//! shows up as latency instead of silently lowering the load (coordinated
//! omission). This module is pure: it yields offsets from the level start.

use crate::plan::profile::Profile;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};
use std::time::Duration;

/// How inter-arrival gaps are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Evenly spaced, `1/qps` apart, the first at offset 0.
    #[default]
    Constant,
    /// A Poisson process: exponential gaps with mean `1/qps`, seeded.
    Poisson,
    /// A Poisson process conditioned on its count: exactly
    /// `round(qps × window)` arrivals at seeded uniform times. Bursty like
    /// Poisson, but a short level sends its full rate (capacity probes
    /// use it, so that a probe that passed really carried its load).
    PoissonExact,
}

impl std::str::FromStr for Arrival {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Self::Constant),
            "poisson" => Ok(Self::Poisson),
            "poisson-exact" | "poisson_exact" => Ok(Self::PoissonExact),
            other => Err(format!(
                "unknown arrival '{other}': expected 'constant', 'poisson' or 'poisson-exact'"
            )),
        }
    }
}

impl std::fmt::Display for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Constant => "constant",
            Self::Poisson => "poisson",
            Self::PoissonExact => "poisson-exact",
        })
    }
}

/// One of `count` processes that share a schedule: it sends exactly the
/// requests whose index in the global schedule is `index` modulo `count`,
/// so the union of the shards is what one process would have sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// `I/N`, with `0 <= I < N`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("'{s}': expected INDEX/COUNT, e.g. 0/4"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("'{s}': '{i}' is not a shard index"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("'{s}': '{n}' is not a shard count"))?;
        if count == 0 || index >= count {
            return Err(format!(
                "'{s}': the index must be below the count (0/{count} to {}/{count})",
                count.max(1) - 1
            ));
        }
        Ok(Self { index, count })
    }

    /// Whether request `i` of the global schedule is this shard's.
    pub fn owns(&self, i: u64) -> bool {
        i % self.count as u64 == self.index as u64
    }
}

/// Iterator over the offsets (from level start) at which requests are due,
/// all strictly below `window`. `window = None` runs forever (soak).
#[derive(Debug)]
pub struct Schedule {
    qps: f64,
    window: Option<Duration>,
    arrival: Arrival,
    index: u64,
    /// Poisson only: the running sum of gaps, in seconds.
    next_poisson: f64,
    /// Poisson-exact: every offset, sorted, in seconds.
    fixed: Vec<f64>,
    rng: StdRng,
    /// A rate that changes: offsets are Λ⁻¹ of a flat schedule's counts
    /// (see [`crate::plan::profile`]); `None` for a flat rate, whose
    /// arithmetic stays the exact `index / qps`.
    curve: Option<Profile>,
}

impl Schedule {
    /// `qps` must be finite and > 0 (validated at the edge).
    pub fn new(qps: f64, window: Option<Duration>, arrival: Arrival, seed: u64) -> Self {
        assert!(qps.is_finite() && qps > 0.0, "qps must be > 0");
        let mut s = Self::blank(qps, window, arrival, seed, None);
        match (arrival, window) {
            (Arrival::PoissonExact, Some(w)) => {
                use rand::RngExt;
                let n = (qps * w.as_secs_f64()).round().max(1.0) as usize;
                let span = w.as_secs_f64();
                let mut v: Vec<f64> = (0..n).map(|_| s.rng.random::<f64>() * span).collect();
                v.sort_by(f64::total_cmp);
                s.fixed = v;
            }
            // Without a window there is no count to fix: plain Poisson.
            (Arrival::PoissonExact, None) => {
                s.arrival = Arrival::Poisson;
                s.next_poisson = s.draw_gap();
            }
            (Arrival::Poisson, _) => s.next_poisson = s.draw_gap(),
            (Arrival::Constant, _) => {}
        }
        s
    }

    /// A schedule whose rate follows `curve`. A flat curve is the plain
    /// schedule at its rate, draw for draw.
    pub fn with_curve(
        curve: &Profile,
        window: Option<Duration>,
        arrival: Arrival,
        seed: u64,
    ) -> Self {
        if curve.is_flat() {
            return Self::new(curve.rate_at(0.0), window, arrival, seed);
        }
        let mut s = Self::blank(1.0, window, arrival, seed, Some(curve.clone()));
        // In "count space" every schedule is the unit-rate one.
        match (arrival, window) {
            (Arrival::PoissonExact, Some(w)) => {
                use rand::RngExt;
                let total = curve.cumulative(w.as_secs_f64());
                let n = total.round().max(1.0) as usize;
                let mut v: Vec<f64> = (0..n).map(|_| s.rng.random::<f64>() * total).collect();
                v.sort_by(f64::total_cmp);
                s.fixed = v;
            }
            (Arrival::PoissonExact, None) | (Arrival::Poisson, _) => {
                s.arrival = Arrival::Poisson;
                s.next_poisson = s.draw_gap();
            }
            (Arrival::Constant, _) => {}
        }
        s
    }

    /// A schedule before its first draw.
    fn blank(
        qps: f64,
        window: Option<Duration>,
        arrival: Arrival,
        seed: u64,
        curve: Option<Profile>,
    ) -> Self {
        Self {
            qps,
            window,
            arrival,
            index: 0,
            next_poisson: 0.0,
            fixed: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            curve,
        }
    }

    /// The number of requests a constant schedule plans: `ceil(qps × window)`.
    /// `--qps 0.1 --duration 10` plans exactly one.
    pub fn constant_count(qps: f64, window: Duration) -> u64 {
        let exact = qps * window.as_secs_f64();
        // Shave a relative epsilon so float error (0.1 × 30 = 3.0000000000000004)
        // does not plan an extra request. Offsets below use index / qps, the
        // same arithmetic, so the count and the offsets agree.
        (exact - exact * 1e-12).ceil().max(0.0) as u64
    }

    fn draw_gap(&mut self) -> f64 {
        Exp::new(self.qps).expect("qps > 0").sample(&mut self.rng)
    }
}

impl Schedule {
    /// The next offset of a curved schedule: the instant its count is due.
    fn next_curved(&mut self, curve: &Profile) -> Option<Duration> {
        let n = match self.arrival {
            Arrival::Constant => self.index as f64,
            Arrival::PoissonExact => *self.fixed.get(self.index as usize)?,
            Arrival::Poisson => {
                let n = self.next_poisson;
                self.next_poisson += self.draw_gap();
                n
            }
        };
        let at = curve.time_of(n)?;
        if self.window.is_some_and(|w| at >= w.as_secs_f64()) {
            return None;
        }
        self.index += 1;
        Some(Duration::from_secs_f64(at))
    }
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if let Some(curve) = self.curve.take() {
            let at = self.next_curved(&curve);
            self.curve = Some(curve);
            return at;
        }
        let at = match self.arrival {
            Arrival::Constant => {
                if let Some(w) = self.window
                    && self.index >= Self::constant_count(self.qps, w)
                {
                    return None;
                }
                Duration::from_secs_f64(self.index as f64 / self.qps)
            }
            Arrival::PoissonExact => {
                let at = *self.fixed.get(self.index as usize)?;
                Duration::from_secs_f64(at)
            }
            Arrival::Poisson => {
                let at = Duration::from_secs_f64(self.next_poisson);
                if self.window.is_some_and(|w| at >= w) {
                    return None;
                }
                self.next_poisson += self.draw_gap();
                at
            }
        };
        self.index += 1;
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn shards_split_the_schedule_exactly() {
        let all: Vec<Duration> =
            Schedule::new(37.0, Some(ms(3_000)), Arrival::Poisson, 9).collect();
        let mut union = Vec::new();
        for i in 0..4 {
            let sh = Shard::parse(&format!("{i}/4")).unwrap();
            union.extend(
                Schedule::new(37.0, Some(ms(3_000)), Arrival::Poisson, 9)
                    .enumerate()
                    .filter(|(k, _)| sh.owns(*k as u64))
                    .map(|(_, t)| t),
            );
        }
        union.sort();
        assert_eq!(union, all);
        for bad in ["4/4", "1", "a/2", "0/0", "-1/3"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn constant_table() {
        // (qps, window seconds, expected count, expected last offset ms)
        let cases: &[(f64, f64, usize, u64)] = &[
            (1.0, 60.0, 60, 59_000),
            (5.0, 2.0, 10, 1_800),
            (0.1, 10.0, 1, 0),
            (0.3, 10.0, 3, 6_666),
            (3.0, 1.0, 3, 666),
            (1000.0, 0.5, 500, 499),
            (0.5, 1.0, 1, 0),
        ];
        for &(qps, secs, count, last_ms) in cases {
            let offs: Vec<_> = Schedule::new(
                qps,
                Some(Duration::from_secs_f64(secs)),
                Arrival::Constant,
                0,
            )
            .collect();
            assert_eq!(offs.len(), count, "qps {qps} window {secs}");
            assert_eq!(
                offs.last().unwrap().as_millis() as u64,
                last_ms,
                "qps {qps} window {secs}"
            );
            assert_eq!(
                Schedule::constant_count(qps, Duration::from_secs_f64(secs)),
                count as u64
            );
            assert!(offs.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn constant_has_no_drift_over_long_runs() {
        // Offsets are computed from the index, not summed, so error does
        // not accumulate: request 3,600,000 at 1000 qps is due at 3600 s.
        let mut s = Schedule::new(1000.0, None, Arrival::Constant, 0);
        let at = s.nth(3_600_000).unwrap();
        assert_eq!(at, Duration::from_secs(3600));
    }

    #[test]
    fn poisson_exact_sends_exactly_its_rate_and_is_bursty() {
        for (qps, secs) in [(8.0, 4.0), (0.5, 5.0), (25.0, 30.0), (0.1, 3.0)] {
            let w = Duration::from_secs_f64(secs);
            let a: Vec<_> = Schedule::new(qps, Some(w), Arrival::PoissonExact, 3).collect();
            let b: Vec<_> = Schedule::new(qps, Some(w), Arrival::PoissonExact, 3).collect();
            assert_eq!(a, b, "seeded");
            let want = ((qps * secs).round() as usize).max(1);
            assert_eq!(a.len(), want, "{qps} x {secs}");
            assert!(a.windows(2).all(|p| p[0] <= p[1]));
            assert!(a.iter().all(|&t| t < w));
        }
        // Gaps of uniform order statistics are nearly exponential: CV ~ 1.
        let a: Vec<f64> = Schedule::new(100.0, Some(ms(100_000)), Arrival::PoissonExact, 5)
            .map(|d| d.as_secs_f64())
            .collect();
        let gaps: Vec<f64> = a.windows(2).map(|p| p[1] - p[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!((sd / mean - 1.0).abs() < 0.05, "cv {}", sd / mean);
        // Without a window it is plain Poisson.
        let mut s = Schedule::new(10.0, None, Arrival::PoissonExact, 1);
        assert!(s.nth(1000).is_some());
        assert_eq!(
            "poisson-exact".parse::<Arrival>().unwrap(),
            Arrival::PoissonExact
        );
    }

    #[test]
    fn poisson_is_seeded_and_has_the_right_rate() {
        let a: Vec<_> = Schedule::new(50.0, Some(ms(200_000)), Arrival::Poisson, 7).collect();
        let b: Vec<_> = Schedule::new(50.0, Some(ms(200_000)), Arrival::Poisson, 7).collect();
        let c: Vec<_> = Schedule::new(50.0, Some(ms(200_000)), Arrival::Poisson, 8).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // 10,000 expected arrivals; a Poisson count has sd 100, so ±4 sd.
        assert!((9_600..=10_400).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!(a.iter().all(|&t| t < ms(200_000)));
        // The gaps' coefficient of variation is ~1 for exponential gaps.
        let gaps: Vec<f64> = a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        let cv = var.sqrt() / mean;
        assert!((0.9..1.1).contains(&cv), "cv {cv}");
    }

    #[test]
    fn a_ramp_schedule_follows_its_rate() {
        let w = ms(60_000);
        let curve = Profile::ramp(10.0, 100.0, w).unwrap();
        // Constant gaps: exactly Λ(60 s) = 3300 sends, each due at Λ⁻¹(k),
        // so a 10 s window anywhere holds the curve's integral over it.
        let c: Vec<f64> = Schedule::with_curve(&curve, Some(w), Arrival::Constant, 0)
            .map(|d| d.as_secs_f64())
            .collect();
        assert_eq!(c.len(), 3300);
        assert!(c.windows(2).all(|p| p[0] < p[1]));
        let first_10s = c.iter().filter(|&&t| t < 10.0).count() as f64;
        let last_10s = c.iter().filter(|&&t| t >= 50.0).count() as f64;
        assert!(
            (first_10s - curve.cumulative(10.0)).abs() <= 1.0,
            "{first_10s}"
        );
        let want = curve.cumulative(60.0) - curve.cumulative(50.0);
        assert!((last_10s - want).abs() <= 1.0, "{last_10s} vs {want}");
        // Poisson: seeded, the same count within 4 sd, and exact with
        // poisson-exact.
        let a: Vec<_> = Schedule::with_curve(&curve, Some(w), Arrival::Poisson, 4).collect();
        let b: Vec<_> = Schedule::with_curve(&curve, Some(w), Arrival::Poisson, 4).collect();
        assert_eq!(a, b);
        assert!(
            (a.len() as f64 - 3300.0).abs() < 4.0 * 3300f64.sqrt(),
            "{}",
            a.len()
        );
        let late = a.iter().filter(|d| d.as_secs_f64() >= 50.0).count() as f64;
        assert!((late - want).abs() < 4.0 * want.sqrt(), "{late}");
        let e: Vec<_> = Schedule::with_curve(&curve, Some(w), Arrival::PoissonExact, 4).collect();
        assert_eq!(e.len(), 3300);
        assert!(e.windows(2).all(|p| p[0] <= p[1]) && e.iter().all(|&t| t < w));
        // A flat curve is the flat schedule, draw for draw.
        let flat: Vec<_> =
            Schedule::with_curve(&Profile::flat(7.0), Some(w), Arrival::Poisson, 2).collect();
        let plain: Vec<_> = Schedule::new(7.0, Some(w), Arrival::Poisson, 2).collect();
        assert_eq!(flat, plain);
    }

    #[test]
    fn unbounded_schedule_keeps_going() {
        let s = Schedule::new(2.0, None, Arrival::Poisson, 1);
        assert_eq!(s.take(1000).count(), 1000);
    }

    #[test]
    fn arrival_parses() {
        assert_eq!("poisson".parse::<Arrival>().unwrap(), Arrival::Poisson);
        assert!("burst".parse::<Arrival>().unwrap_err().contains("burst"));
    }
}
