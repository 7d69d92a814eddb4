//! Is the backlog growing? A level sent faster than the endpoint serves
//! is over capacity even when its window was too short for the
//! percentiles to show it: the queue, and with it the number of requests
//! open at each send, keeps growing for as long as the level runs.
//!
//! The evidence is the level's own timeline: the mean number of requests
//! in flight at each send, per time window. After a warm-up (the first
//! quarter, while the pipeline fills), a least-squares line through the
//! windows gives the growth in requests per second. A level is unstable
//! when that growth is both significant (t ≥ [`T_MIN`], with the standard
//! error widened for autocorrelation between windows) and material: over
//! the judged span it adds at least [`GROWTH_MIN`] requests, a quarter of
//! the backlog the level started with, and three times the backlog's own
//! wander about the line. Stationary noise (a busy but
//! stable server) has no trend and does not fire; a rejecting server's
//! backlog is capped by its queue and does not either (its errors fail the
//! SLO instead).
//!
//! TTFT per window is fitted the same way and reported (seconds of TTFT
//! gained per second of sending) as the user-facing face of the same
//! backlog.

use serde::{Deserialize, Serialize};

/// Significance of the trend (slope / standard error).
pub const T_MIN: f64 = 5.0;
/// Requests the backlog must gain over the judged span.
pub const GROWTH_MIN: f64 = 2.0;
/// Windows needed after the warm-up to judge at all.
pub const MIN_WINDOWS: usize = 4;

/// One time window of a level, by scheduled send time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Window {
    /// Middle of the window, seconds from the level start.
    pub t: f64,
    pub sends: u32,
    /// Mean requests in flight at this window's sends.
    pub in_flight: f64,
    /// Mean TTFT of this window's successful requests (None if none).
    pub ttft: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stability {
    pub stable: bool,
    /// Backlog growth, requests in flight per second of sending.
    pub backlog_slope: f64,
    /// Significance of that growth (slope / its standard error).
    pub backlog_t: f64,
    /// TTFT growth, seconds per second of sending.
    pub ttft_slope: f64,
    /// Windows judged (after the warm-up).
    pub windows: usize,
    /// In words, with the figures.
    pub evidence: String,
}

/// A least-squares line through the windows.
struct Fit {
    slope: f64,
    /// Standard error of the slope, widened for autocorrelated residuals.
    se: f64,
    /// Scatter of the points about the line: the stationary wander.
    resid_sd: f64,
}

/// Least squares, with the slope's standard error corrected for lag-1
/// autocorrelation of the residuals (a backlog sampled more often than it
/// turns over is correlated from window to window, and a plain t-test
/// would then see trends in noise): `se × sqrt((1 + ρ) / (1 − ρ))`.
fn fit(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let resid: Vec<f64> = points
        .iter()
        .map(|p| p.1 - (my + slope * (p.0 - mx)))
        .collect();
    let ss: f64 = resid.iter().map(|r| r * r).sum();
    // The lag-1 estimate is biased low on short series by about
    // (1 + 3ρ) / n: add it back.
    let rho = if ss > 0.0 {
        let r = resid.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / ss;
        (r + (1.0 + 3.0 * r.max(0.0)) / n).clamp(0.0, 0.95)
    } else {
        0.0
    };
    let se = (ss / (n - 2.0) / sxx).sqrt() * ((1.0 + rho) / (1.0 - rho)).sqrt();
    Some(Fit {
        slope,
        se,
        resid_sd: (ss / (n - 2.0)).sqrt(),
    })
}

/// Judge a level from its windows (in time order).
pub fn judge(windows: &[Window]) -> Stability {
    let used: Vec<&Window> = windows.iter().filter(|w| w.sends > 0).collect();
    let skip = used.len() / 5;
    let judged = &used[skip..];
    if judged.len() < MIN_WINDOWS {
        return Stability {
            stable: true,
            backlog_slope: 0.0,
            backlog_t: 0.0,
            ttft_slope: 0.0,
            windows: judged.len(),
            evidence: format!(
                "too short to judge ({} windows after warm-up, {MIN_WINDOWS} needed)",
                judged.len()
            ),
        };
    }
    let backlog: Vec<(f64, f64)> = judged.iter().map(|w| (w.t, w.in_flight)).collect();
    let ttft: Vec<(f64, f64)> = judged
        .iter()
        .filter_map(|w| w.ttft.map(|v| (w.t, v)))
        .collect();
    let f = fit(&backlog).unwrap_or(Fit {
        slope: 0.0,
        se: 0.0,
        resid_sd: 0.0,
    });
    let slope = f.slope;
    let t = if f.se > 0.0 {
        slope / f.se
    } else if slope > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    let ttft_slope = fit(&ttft).map_or(0.0, |f| f.slope);
    let span = judged.last().map_or(0.0, |w| w.t) - judged.first().map_or(0.0, |w| w.t);
    let growth = slope * span;
    // Growth must clear the backlog's own wander about its trend, and be
    // a material part of the backlog the level started with.
    let start = judged
        .iter()
        .take(judged.len() / 2)
        .map(|w| w.in_flight)
        .sum::<f64>()
        / (judged.len() / 2).max(1) as f64;
    let needed = GROWTH_MIN.max(0.25 * start).max(3.0 * f.resid_sd);
    let stable = !(t >= T_MIN && growth >= needed);
    let evidence = format!(
        "requests in flight {} by {:.1} over {:.1}s ({:+.2}/s, t={:.1}; unstable when >= {:.1} and t >= {T_MIN}); TTFT {:+.3} s/s",
        if growth >= 0.0 { "grew" } else { "fell" },
        growth.abs(),
        span,
        slope,
        if t.is_finite() { t } else { 99.0 },
        needed,
        ttft_slope
    );
    Stability {
        stable,
        backlog_slope: slope,
        backlog_t: if t.is_finite() { t } else { 99.0 },
        ttft_slope,
        windows: judged.len(),
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence in [-1, 1).
    fn noise(seed: u64) -> impl FnMut() -> f64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 52) as f64 * 2.0 - 1.0
        }
    }

    fn windows(n: usize, f: impl Fn(f64) -> f64) -> Vec<Window> {
        (0..n)
            .map(|i| {
                let t = i as f64 + 0.5;
                Window {
                    t,
                    sends: 10,
                    in_flight: f(t),
                    ttft: Some(0.05 + f(t) * 0.01),
                }
            })
            .collect()
    }

    #[test]
    fn a_growing_backlog_is_unstable() {
        // 5 % over a 25 req/s capacity: +1.25 requests in flight a second.
        let w = windows(30, |t| 8.0 + 1.25 * t);
        let s = judge(&w);
        assert!(!s.stable, "{s:?}");
        assert!((s.backlog_slope - 1.25).abs() < 0.01);
        assert!(s.ttft_slope > 0.0);
        let mut n = noise(3);
        let w: Vec<Window> = windows(30, |t| 8.0 + 1.25 * t)
            .into_iter()
            .map(|mut w| {
                w.in_flight += 3.0 * n();
                w
            })
            .collect();
        assert!(!judge(&w).stable, "noisy but growing");
    }

    #[test]
    fn stationary_noise_does_not_fire() {
        // A busy, stable server: in flight wanders around 20 (±6), for
        // many seeds; and a full-queue rejecting server sits at its cap.
        for seed in 1..200 {
            let mut n = noise(seed);
            let w: Vec<Window> = windows(30, |_| 20.0)
                .into_iter()
                .map(|mut w| {
                    w.in_flight += 6.0 * n();
                    w
                })
                .collect();
            let s = judge(&w);
            assert!(s.stable, "seed {seed}: {s:?}");
        }
        assert!(judge(&windows(30, |_| 64.0)).stable);
    }

    #[test]
    fn a_wandering_backlog_rarely_fires() {
        // A busy queue's backlog is autocorrelated: it drifts up and down
        // over several windows (AR(1) about 20). Short series of such
        // noise can look like a trend, and the autocorrelation estimate
        // from 24 points is rough. Measured with these seeds: 0 of 400
        // fire at phi 0.5 and 10 of 400 (2.5 %) at phi 0.8, an extreme
        // for windows of a twentieth of a probe. A false "unstable" near
        // capacity lowers a capacity estimate by one bisection step.
        for (phi, most) in [(0.5, 2), (0.8, 12)] {
            let fired = (1..=400u64)
                .filter(|&seed| {
                    let mut n = noise(seed);
                    let mut x = 0.0;
                    let w: Vec<Window> = windows(24, |_| 20.0)
                        .into_iter()
                        .map(|mut w| {
                            x = phi * x + 2.0 * n();
                            w.in_flight += x;
                            w
                        })
                        .collect();
                    !judge(&w).stable
                })
                .count();
            assert!(fired <= most, "phi {phi}: {fired} of 400 fired");
        }
    }

    #[test]
    fn warm_up_and_short_levels() {
        // The pipeline fills in the first second, then stays level.
        let w = windows(20, |t| if t < 1.0 { 2.0 } else { 12.0 });
        assert!(judge(&w).stable, "{:?}", judge(&w));
        let s = judge(&windows(3, |t| t * 10.0));
        assert!(s.stable);
        assert!(s.evidence.contains("too short"), "{}", s.evidence);
    }

    #[test]
    fn a_small_growth_is_not_material() {
        // Significant but tiny: +2 requests over the level.
        let w = windows(40, |t| 30.0 + 0.07 * t);
        assert!(judge(&w).stable);
    }
}
