//! Rates that change with time: a ramp within a level (`--qps 10..100`),
//! a soak's stages, or its daily curve.
//!
//! Every shape is one thing underneath: a piecewise-linear rate r(t). Its
//! integral Λ(t), the number of requests due by t, is piecewise
//! quadratic and can be inverted segment by segment, which is all a
//! schedule needs: request k of a constant-gap schedule is due at
//! Λ⁻¹(k), and a Poisson process with rate r(t) is a unit-rate one seen
//! through Λ⁻¹ (time change), so both keep the pacer's precision and a
//! seeded, reproducible pattern. Pure: no clock, no I/O.

use std::time::Duration;

/// Seconds in a day, the period of a daily curve.
pub const DAY: f64 = 86_400.0;
/// Linear pieces a daily curve is drawn with (every 15 minutes): the
/// cosine between two knots is within 0.2 % of the chord.
const DAILY_PIECES: usize = 96;

/// One linear piece: the rate goes from `r0` to `r1` over `len` seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Piece {
    t0: f64,
    len: f64,
    r0: f64,
    r1: f64,
    /// Λ(t0): requests due before the piece starts.
    c0: f64,
}

impl Piece {
    fn slope(&self) -> f64 {
        if self.len > 0.0 {
            (self.r1 - self.r0) / self.len
        } else {
            0.0
        }
    }

    /// Requests due in the first `dt` seconds of the piece.
    fn count(&self, dt: f64) -> f64 {
        self.r0 * dt + 0.5 * self.slope() * dt * dt
    }

    /// The `dt` at which `count(dt) == n` (0 <= n <= count(len)).
    fn time_of(&self, n: f64) -> f64 {
        let (a, b) = (self.r0, self.slope());
        // The root of b/2·t² + a·t − n = 0 written so that it neither
        // cancels nor divides by b: 2n / (a + √(a² + 2bn)).
        let d = a + (a * a + 2.0 * b * n).max(0.0).sqrt();
        if d > 0.0 {
            (2.0 * n / d).min(self.len)
        } else {
            0.0
        }
    }
}

/// A piecewise-linear rate over time. Past its last piece the rate stays
/// at the last piece's end rate, or the whole curve repeats when it is
/// periodic (a daily curve).
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pieces: Vec<Piece>,
    /// Repeat every `length()` seconds instead of holding the last rate.
    periodic: bool,
}

/// What is wrong with a curve's numbers (the faces add the setting name).
pub type ProfileError = String;

impl Profile {
    /// One rate, for ever.
    pub fn flat(qps: f64) -> Self {
        Self::from_knots(&[(0.0, qps), (1.0, qps)], false).expect("a flat rate is a curve")
    }

    /// From `from` to `to` requests/s linearly over `over`, then `to`.
    pub fn ramp(from: f64, to: f64, over: Duration) -> Result<Self, ProfileError> {
        if over.is_zero() {
            return Err("a ramp needs a duration above zero".into());
        }
        Self::from_knots(&[(0.0, from), (over.as_secs_f64(), to)], false)
    }

    /// Stages: each `(length, qps)` held for its length, in order; the
    /// last one is held after. A stage may be a ramp: `(length, from, to)`
    /// is given as two rates.
    pub fn stages(stages: &[(Duration, f64, f64)]) -> Result<Self, ProfileError> {
        if stages.is_empty() {
            return Err("give at least one stage".into());
        }
        let mut pieces = Vec::new();
        let mut t = 0.0;
        for (i, &(len, from, to)) in stages.iter().enumerate() {
            if len.is_zero() {
                return Err(format!("stage {i}: its duration must be above zero"));
            }
            check_rate(from).map_err(|e| format!("stage {i}: {e}"))?;
            check_rate(to).map_err(|e| format!("stage {i}: {e}"))?;
            pieces.push((t, len.as_secs_f64(), from, to));
            t += len.as_secs_f64();
        }
        Self::from_pieces(&pieces, false)
    }

    /// A day: `min` at the trough, `max` at `peak` seconds after
    /// midnight, a cosine between, repeating every 24 h. `now` is the
    /// time of day (seconds after midnight) at which offset 0 falls.
    pub fn daily(min: f64, max: f64, peak: f64, now: f64) -> Result<Self, ProfileError> {
        check_rate(min)?;
        check_rate(max)?;
        if max < min {
            return Err(format!("max_qps {max} is below min_qps {min}"));
        }
        if max <= 0.0 {
            return Err("max_qps must be above 0".into());
        }
        let rate = |t: f64| {
            let phase = 2.0 * std::f64::consts::PI * (now + t - peak) / DAY;
            min + (max - min) * 0.5 * (1.0 + phase.cos())
        };
        let step = DAY / DAILY_PIECES as f64;
        let knots: Vec<(f64, f64)> = (0..=DAILY_PIECES)
            .map(|i| (i as f64 * step, rate(i as f64 * step)))
            .collect();
        Self::from_knots(&knots, true)
    }

    /// Straight lines between `(t, qps)` knots, `t` increasing from 0.
    fn from_knots(knots: &[(f64, f64)], periodic: bool) -> Result<Self, ProfileError> {
        let pieces: Vec<(f64, f64, f64, f64)> = knots
            .windows(2)
            .map(|w| (w[0].0, w[1].0 - w[0].0, w[0].1, w[1].1))
            .collect();
        for &(_, _, a, b) in &pieces {
            check_rate(a)?;
            check_rate(b)?;
        }
        Self::from_pieces(&pieces, periodic)
    }

    fn from_pieces(p: &[(f64, f64, f64, f64)], periodic: bool) -> Result<Self, ProfileError> {
        let mut pieces = Vec::with_capacity(p.len());
        let mut c = 0.0;
        for &(t0, len, r0, r1) in p {
            let piece = Piece {
                t0,
                len,
                r0,
                r1,
                c0: c,
            };
            c += piece.count(len);
            pieces.push(piece);
        }
        let last = pieces.last().expect("at least one piece");
        if !periodic && last.r1 <= 0.0 && c <= 0.0 {
            return Err("the rate is zero throughout: nothing would be sent".into());
        }
        if periodic && c <= 0.0 {
            return Err("the rate is zero throughout: nothing would be sent".into());
        }
        Ok(Self { pieces, periodic })
    }

    /// Seconds the pieces span (the period of a periodic curve).
    pub fn length(&self) -> f64 {
        let l = self.pieces.last().expect("at least one piece");
        l.t0 + l.len
    }

    /// Requests due over one span of the pieces.
    fn span_count(&self) -> f64 {
        let l = self.pieces.last().expect("at least one piece");
        l.c0 + l.count(l.len)
    }

    /// The same rate everywhere (a plain `--qps` level).
    pub fn is_flat(&self) -> bool {
        let r = self.pieces[0].r0;
        self.pieces.iter().all(|p| p.r0 == r && p.r1 == r)
    }

    /// The rate at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        let (t, _) = self.fold(t);
        let p = self.piece_at(t);
        match p {
            Some(p) => p.r0 + p.slope() * (t - p.t0).min(p.len),
            None => self.pieces.last().expect("a piece").r1,
        }
    }

    /// Λ(t): requests due in `[0, t)`.
    pub fn cumulative(&self, t: f64) -> f64 {
        let t = t.max(0.0);
        let (tt, periods) = self.fold(t);
        let base = periods * self.span_count();
        match self.piece_at(tt) {
            Some(p) => base + p.c0 + p.count(tt - p.t0),
            None => {
                let l = self.pieces.last().expect("a piece");
                base + self.span_count() + l.r1 * (tt - l.t0 - l.len)
            }
        }
    }

    /// The mean rate over `[0, window)`.
    pub fn mean(&self, window: Duration) -> f64 {
        let w = window.as_secs_f64();
        if w <= 0.0 {
            return self.rate_at(0.0);
        }
        self.cumulative(w) / w
    }

    /// Λ⁻¹(n): the instant by which `n` requests are due, or `None` if
    /// the rate drops to zero for ever before that.
    pub fn time_of(&self, n: f64) -> Option<f64> {
        let n = n.max(0.0);
        let span = self.span_count();
        let (n, base_t) = if self.periodic {
            let k = (n / span).floor();
            (n - k * span, k * self.length())
        } else {
            (n, 0.0)
        };
        if n >= span && !self.periodic {
            let l = self.pieces.last().expect("a piece");
            if l.r1 <= 0.0 {
                return None;
            }
            return Some(l.t0 + l.len + (n - span) / l.r1);
        }
        // The last piece whose start is due no later than n: after any
        // zero-rate piece that ends where n is (nothing is due in it).
        let i = self.pieces.partition_point(|p| p.c0 <= n).saturating_sub(1);
        let p = &self.pieces[i];
        Some(base_t + p.t0 + p.time_of(n - p.c0))
    }

    /// `(t within one period, whole periods before it)`.
    fn fold(&self, t: f64) -> (f64, f64) {
        if self.periodic {
            let len = self.length();
            let k = (t / len).floor();
            (t - k * len, k)
        } else {
            (t, 0.0)
        }
    }

    fn piece_at(&self, t: f64) -> Option<&Piece> {
        let i = self.pieces.partition_point(|p| p.t0 <= t).checked_sub(1)?;
        let p = &self.pieces[i];
        (t < p.t0 + p.len).then_some(p)
    }

    /// The lowest and highest rate anywhere on the curve.
    pub fn range(&self) -> (f64, f64) {
        self.pieces
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
                (lo.min(p.r0).min(p.r1), hi.max(p.r0).max(p.r1))
            })
    }
}

fn check_rate(r: f64) -> Result<(), ProfileError> {
    if r.is_finite() && r >= 0.0 {
        Ok(())
    } else {
        Err(format!("{r} is not a rate (requests/s >= 0)"))
    }
}

/// One `--qps` entry: a rate, or a ramp `FROM..TO` across the level.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RateLevel {
    pub from: f64,
    /// Equal to `from` for a flat level.
    pub to: f64,
}

impl RateLevel {
    pub fn flat(qps: f64) -> Self {
        Self { from: qps, to: qps }
    }

    pub fn is_ramp(&self) -> bool {
        self.from != self.to
    }

    /// The mean rate across the level: what the seed's `qps_target` shows.
    pub fn mean(&self) -> f64 {
        (self.from + self.to) / 2.0
    }

    /// `10`, or `10..100` (either end may be 0 for a ramp, not both).
    pub fn parse(s: &str) -> Result<Self, String> {
        let num = |p: &str| -> Result<f64, String> {
            p.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    format!(
                        "'{}' is not a number (expected a rate, e.g. 10, or a ramp, 10..100)",
                        p.trim()
                    )
                })
        };
        match s.split_once("..") {
            None => {
                let v = num(s)?;
                if v <= 0.0 {
                    return Err(format!("'{}' must be a rate above 0", s.trim()));
                }
                Ok(Self::flat(v))
            }
            Some((a, b)) => {
                let (from, to) = (num(a)?, num(b)?);
                if from == to {
                    return Err(format!(
                        "'{}': a ramp needs two different rates (give {from} alone for a flat level)",
                        s.trim()
                    ));
                }
                Ok(Self { from, to })
            }
        }
    }

    /// The curve of a level of `duration`.
    pub fn profile(&self, duration: Option<Duration>) -> Profile {
        match duration {
            Some(d) if self.is_ramp() => {
                Profile::ramp(self.from, self.to, d).expect("a validated ramp")
            }
            _ => Profile::flat(self.to),
        }
    }
}

impl std::fmt::Display for RateLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = crate::analysis::saturation::fmt_qps;
        if self.is_ramp() {
            write!(f, "{}..{}", n(self.from), n(self.to))
        } else {
            f.write_str(&n(self.from))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, eps: f64) -> bool {
        (a - b).abs() <= eps
    }

    #[test]
    fn a_ramp_integrates_and_inverts() {
        let p = Profile::ramp(10.0, 100.0, Duration::from_secs(60)).unwrap();
        assert!(close(p.cumulative(60.0), 55.0 * 60.0, 1e-9));
        assert!(close(p.rate_at(30.0), 55.0, 1e-9));
        assert!(close(p.mean(Duration::from_secs(60)), 55.0, 1e-9));
        // Past the ramp the end rate holds.
        assert!(close(p.rate_at(120.0), 100.0, 1e-9));
        assert!(close(p.cumulative(70.0), 3300.0 + 1000.0, 1e-9));
        for n in [0.0, 1.0, 17.5, 1000.0, 3299.0, 3300.0, 4000.0] {
            let t = p.time_of(n).unwrap();
            assert!(close(p.cumulative(t), n, 1e-6), "{n} -> {t}");
        }
        // Down-ramps and ramps from zero invert too.
        let down = Profile::ramp(100.0, 0.0, Duration::from_secs(10)).unwrap();
        assert!(close(down.cumulative(10.0), 500.0, 1e-9));
        assert!(close(
            down.cumulative(down.time_of(250.0).unwrap()),
            250.0,
            1e-6
        ));
        assert_eq!(down.time_of(500.5), None, "the rate stays zero after");
        let up = Profile::ramp(0.0, 10.0, Duration::from_secs(10)).unwrap();
        assert!(close(up.time_of(0.0).unwrap(), 0.0, 1e-12));
        assert!(close(up.cumulative(up.time_of(3.0).unwrap()), 3.0, 1e-9));
    }

    #[test]
    fn stages_hold_each_rate() {
        let s = Duration::from_secs;
        let p =
            Profile::stages(&[(s(10), 5.0, 5.0), (s(10), 0.0, 0.0), (s(10), 20.0, 20.0)]).unwrap();
        assert!(close(p.cumulative(10.0), 50.0, 1e-9));
        assert!(close(p.cumulative(20.0), 50.0, 1e-9));
        assert!(close(p.cumulative(30.0), 250.0, 1e-9));
        // Nothing is due in the silent stage: request 50 is at its end.
        let t = p.time_of(50.0).unwrap();
        assert!(close(t, 20.0, 1e-9), "{t}");
        assert!(close(p.time_of(49.0).unwrap(), 9.8, 1e-9));
        assert!(Profile::stages(&[(s(10), 0.0, 0.0)]).is_err());
        assert!(Profile::stages(&[]).is_err());
        assert!(
            Profile::stages(&[(s(0), 1.0, 1.0)])
                .unwrap_err()
                .contains("stage 0")
        );
        assert!(Profile::stages(&[(s(1), -1.0, 1.0)]).is_err());
    }

    #[test]
    fn a_daily_curve_peaks_where_asked_and_repeats() {
        let peak = 14.0 * 3600.0;
        // Offset 0 at 08:00.
        let p = Profile::daily(2.0, 20.0, peak, 8.0 * 3600.0).unwrap();
        assert!(
            close(p.rate_at(6.0 * 3600.0), 20.0, 1e-9),
            "14:00 is the peak"
        );
        assert!(
            close(p.rate_at(18.0 * 3600.0), 2.0, 1e-9),
            "02:00 is the trough"
        );
        assert!(close(p.rate_at(6.0 * 3600.0 + DAY), 20.0, 1e-9));
        // The mean over a day is the midpoint, within the chords' error.
        let mean = p.cumulative(DAY) / DAY;
        assert!(close(mean, 11.0, 0.05), "{mean}");
        let n = p.cumulative(DAY) * 2.5;
        assert!(close(p.cumulative(p.time_of(n).unwrap()), n, 1e-4));
        assert!(Profile::daily(5.0, 1.0, 0.0, 0.0).is_err());
    }

    #[test]
    fn rate_levels_parse() {
        assert_eq!(RateLevel::parse("10").unwrap(), RateLevel::flat(10.0));
        let r = RateLevel::parse(" 10..100 ").unwrap();
        assert_eq!((r.from, r.to, r.mean()), (10.0, 100.0, 55.0));
        assert_eq!(r.to_string(), "10..100");
        assert!(RateLevel::parse("0..5").is_ok());
        assert!(
            RateLevel::parse("5..5")
                .unwrap_err()
                .contains("two different")
        );
        assert!(RateLevel::parse("0").unwrap_err().contains("above 0"));
        assert!(
            RateLevel::parse("a..5")
                .unwrap_err()
                .contains("'a' is not a number")
        );
        assert!(RateLevel::parse("-1..5").is_err());
    }
}
