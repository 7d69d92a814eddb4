//! Whether a change between two runs is beyond noise: a figure's value
//! and its 95 % interval from the run's own histogram (a quantile's
//! distribution-free interval from the binomial rank, a mean's
//! `1.96 sd/sqrt(n)`), and the judged line `compare` prints. Pure.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// One compared figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Target QPS; `None` for whole-run lines.
    pub qps: Option<f64>,
    pub metric: String,
    pub base: Option<f64>,
    pub new: Option<f64>,
    /// (new − base) / base; positive means higher.
    pub change: Option<f64>,
    /// The runs' own intervals do not overlap.
    pub beyond_noise: bool,
    /// Worse by more than the threshold and beyond noise.
    pub regression: bool,
    /// How the noise was judged, or why there is no figure.
    pub note: String,
    /// Why this figure cannot be judged (a client-bound level measured the
    /// client, not the endpoint); empty when it can. Never a regression.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub not_comparable: String,
}

/// A value and its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// The value at 0-based rank `r` of a histogram's samples.
fn value_at_rank(h: &Histogram<u64>, r: f64) -> u64 {
    let n = h.len();
    if n == 0 {
        return 0;
    }
    let r = r.clamp(0.0, (n - 1) as f64) as u64;
    let mut seen = 0u64;
    for v in h.iter_recorded() {
        seen += v.count_at_value();
        if seen > r {
            return h.highest_equivalent(v.value_iterated_to());
        }
    }
    h.max()
}

pub fn quantile_estimate(h: &Histogram<u64>, q: f64, scale: f64) -> Option<Estimate> {
    let n = h.len() as f64;
    if n == 0.0 {
        return None;
    }
    let half = 1.96 * (n * q * (1.0 - q)).sqrt();
    let rank = n * q;
    let (lo_rank, hi_rank) = ((rank - half).floor(), (rank + half).ceil());
    // A rank interval running off either end of the sample leaves that
    // side unbounded: 8 samples cannot pin a p95 from above.
    Some(Estimate {
        value: h.value_at_quantile(q) as f64 * scale,
        lo: if lo_rank < 0.0 {
            f64::NEG_INFINITY
        } else {
            value_at_rank(h, lo_rank) as f64 * scale
        },
        hi: if hi_rank > n - 1.0 {
            f64::INFINITY
        } else {
            value_at_rank(h, hi_rank) as f64 * scale
        },
    })
}

pub fn mean_estimate(h: &Histogram<u64>, scale: f64) -> Option<Estimate> {
    let n = h.len() as f64;
    if n == 0.0 {
        return None;
    }
    let half = 1.96 * h.stdev() / n.sqrt();
    Some(Estimate {
        value: h.mean() * scale,
        lo: (h.mean() - half) * scale,
        hi: (h.mean() + half) * scale,
    })
}

pub fn relative(base: f64, new: f64) -> Option<f64> {
    (base.abs() > 0.0).then(|| (new - base) / base)
}

impl Line {
    pub fn set_not_comparable(&mut self, why: String) {
        self.regression = false;
        self.not_comparable = why;
    }
}

pub fn judge_estimates(
    qps: Option<f64>,
    metric: String,
    b: Option<Estimate>,
    n: Option<Estimate>,
    higher_is_worse: bool,
    max_regression: f64,
) -> Line {
    let (Some(b), Some(n)) = (b, n) else {
        return Line {
            qps,
            metric,
            base: b.map(|e| e.value),
            new: n.map(|e| e.value),
            change: None,
            not_comparable: String::new(),
            beyond_noise: false,
            regression: false,
            note: "no samples in one run".into(),
        };
    };
    let change = relative(b.value, n.value);
    let beyond = n.lo > b.hi || n.hi < b.lo;
    let worse = match change {
        Some(c) if higher_is_worse => c > max_regression,
        Some(c) => c < -max_regression,
        None => false,
    };
    Line {
        qps,
        metric,
        base: Some(b.value),
        new: Some(n.value),
        change,
        not_comparable: String::new(),
        beyond_noise: beyond,
        regression: worse && beyond,
        note: format!(
            "95% intervals [{:.4}, {:.4}] and [{:.4}, {:.4}]",
            b.lo, b.hi, n.lo, n.hi
        ),
    }
}
