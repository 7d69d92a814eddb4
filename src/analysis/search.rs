//! The capacity search, as a pure state machine: given what each probe
//! showed, which rate to probe next and when to stop.
//!
//! 1. **Grow** geometrically (×2) from `min_qps` until a probe fails
//!    (or `max_qps` passes: capacity lies above the range).
//! 2. **Bisect** between the last pass and the first fail, at their
//!    geometric mean, until they are within `precision` of each other.
//! 3. **Confirm** the last pass with one longer probe. If it fails, that
//!    rate becomes the first fail: the next rate down that passed is
//!    confirmed instead when it is within `precision`, else the gap is
//!    bisected again; a few times at most.
//!
//! MLPerf's server scenario searches the same way (a pass is the highest
//! Poisson rate whose latency constraints hold); the growth phase saves
//! probing a wide range at full length.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchConfig {
    pub min_qps: f64,
    pub max_qps: f64,
    /// Relative width the bracket must shrink to (0.05 = 5 %).
    pub precision: f64,
    /// Whole numbers only (a concurrency): probes are integers, and a
    /// bracket of neighbours `[n, n+1]` is as narrow as it gets.
    pub integer: bool,
}

/// Confirmations that may fail before the search gives up stepping down.
pub const MAX_CONFIRM_STEPS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Grow,
    Bisect,
    Confirm,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grow => "grow",
            Self::Bisect => "bisect",
            Self::Confirm => "confirm",
        }
    }
}

/// How the search ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Capacity `qps`: the last confirmed pass; the first fail above it.
    Found { qps: f64, bracket: [f64; 2] },
    /// Even `min_qps` failed.
    BelowRange,
    /// `max_qps` still passed.
    AboveRange,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Probe { qps: f64, phase: Phase },
    Done(Outcome),
}

#[derive(Debug, Clone)]
pub struct Search {
    cfg: SearchConfig,
    phase: Phase,
    /// Highest rate that passed (and, in `Confirm`, the one being confirmed).
    pass: Option<f64>,
    /// Lowest rate that failed.
    fail: Option<f64>,
    /// Every rate that passed, for stepping back after a failed
    /// confirmation.
    passes: Vec<f64>,
    /// Next growth rate.
    grow: f64,
    confirm_fails: u32,
    done: Option<Outcome>,
}

/// Round to 3 significant digits, for rates people read.
pub fn round3(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return v;
    }
    let decimals = (2.0 - v.log10().floor()).max(0.0) as usize;
    let mag = 10f64.powf(v.log10().floor() - 2.0);
    let r = (v / mag).round() * mag;
    // Through text, so that 22.6 is 22.6 and not 22.600000000000001.
    format!("{r:.decimals$}").parse().unwrap_or(r)
}

impl Search {
    pub fn new(cfg: SearchConfig) -> Self {
        Self {
            cfg,
            phase: Phase::Grow,
            pass: None,
            fail: None,
            passes: Vec::new(),
            grow: cfg.min_qps,
            confirm_fails: 0,
            done: None,
        }
    }

    pub fn config(&self) -> SearchConfig {
        self.cfg
    }

    /// The current bracket `[last pass, first fail]`, as far as known.
    pub fn bracket(&self) -> (Option<f64>, Option<f64>) {
        (self.pass, self.fail)
    }

    fn narrow_enough(&self, lo: f64, hi: f64) -> bool {
        hi <= lo * (1.0 + self.cfg.precision) + 1e-12 || (self.cfg.integer && hi - lo <= 1.0)
    }

    /// A rate as probed: rounded to 3 significant digits, or to a whole
    /// number for an integer search.
    fn round(&self, v: f64) -> f64 {
        if self.cfg.integer {
            v.round().max(1.0)
        } else {
            round3(v)
        }
    }

    pub fn next(&self) -> Next {
        if let Some(o) = self.done {
            return Next::Done(o);
        }
        match self.phase {
            Phase::Grow => Next::Probe {
                qps: self.grow,
                phase: Phase::Grow,
            },
            Phase::Bisect => {
                let (lo, hi) = (
                    self.pass.expect("bisect has a pass"),
                    self.fail.expect("and a fail"),
                );
                let mut mid = self.round((lo * hi).sqrt());
                if mid <= lo || mid >= hi {
                    mid = (lo + hi) / 2.0;
                    if self.cfg.integer {
                        mid = mid.floor().max(lo + 1.0);
                    }
                }
                Next::Probe {
                    qps: mid,
                    phase: Phase::Bisect,
                }
            }
            Phase::Confirm => Next::Probe {
                qps: self.pass.expect("confirm has a pass"),
                phase: Phase::Confirm,
            },
        }
    }

    /// What the probe at `qps` showed.
    pub fn record(&mut self, qps: f64, passed: bool) {
        if self.done.is_some() {
            return;
        }
        match self.phase {
            Phase::Grow => {
                if passed {
                    self.passes.push(qps);
                    self.pass = Some(qps);
                    if qps >= self.cfg.max_qps {
                        self.done = Some(Outcome::AboveRange);
                        return;
                    }
                    self.grow = self.round((qps * 2.0).min(self.cfg.max_qps));
                } else {
                    self.fail = Some(qps);
                    match self.pass {
                        None => self.done = Some(Outcome::BelowRange),
                        Some(p) => self.after_bracket_change(p, qps),
                    }
                }
            }
            Phase::Bisect => {
                if passed {
                    self.passes.push(qps);
                    self.pass = Some(qps);
                } else {
                    self.fail = Some(qps);
                }
                let (lo, hi) = (self.pass.expect("pass"), self.fail.expect("fail"));
                self.after_bracket_change(lo, hi);
            }
            Phase::Confirm => {
                let hi = self.fail.expect("confirm follows a fail");
                if passed {
                    self.done = Some(Outcome::Found {
                        qps,
                        bracket: [qps, hi],
                    });
                    return;
                }
                self.confirm_fails += 1;
                self.fail = Some(qps);
                // The longer probe knows better: everything from here up
                // fails. Go back to the highest rate that passed below it.
                self.passes.retain(|&p| p < qps);
                let lower = self
                    .passes
                    .iter()
                    .copied()
                    .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))));
                match lower {
                    // Close below: confirm it directly. Far below (a short
                    // probe passed too high): bisect the gap again.
                    Some(lo) if self.confirm_fails <= MAX_CONFIRM_STEPS => {
                        self.pass = Some(lo);
                        self.after_bracket_change(lo, qps);
                    }
                    Some(lo) => {
                        // Out of confirmations: the highest rate that
                        // passed a probe, unconfirmed.
                        self.done = Some(Outcome::Found {
                            qps: lo,
                            bracket: [lo, qps],
                        });
                    }
                    None => self.done = Some(Outcome::BelowRange),
                }
            }
        }
    }

    fn after_bracket_change(&mut self, lo: f64, hi: f64) {
        self.phase = if self.narrow_enough(lo, hi) {
            Phase::Confirm
        } else {
            Phase::Bisect
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run a search against a server of capacity `c` whose probes pass
    /// exactly below it; returns the outcome and the probes made.
    fn against(c: f64, cfg: SearchConfig, confirm_ok: bool) -> (Outcome, Vec<(f64, Phase)>) {
        let mut s = Search::new(cfg);
        let mut probes = Vec::new();
        loop {
            match s.next() {
                Next::Done(o) => return (o, probes),
                Next::Probe { qps, phase } => {
                    probes.push((qps, phase));
                    let pass = qps <= c && (phase != Phase::Confirm || confirm_ok);
                    s.record(qps, pass);
                    assert!(probes.len() < 60, "the search must end");
                }
            }
        }
    }

    fn cfg() -> SearchConfig {
        SearchConfig {
            min_qps: 0.5,
            max_qps: 1000.0,
            precision: 0.05,
            integer: false,
        }
    }

    #[test]
    fn an_integer_search_probes_whole_numbers_and_ends_on_neighbours() {
        for c in [1.0, 2.0, 7.0, 12.0, 16.0, 17.0, 100.0, 511.0] {
            let cfg = SearchConfig {
                min_qps: 1.0,
                max_qps: 512.0,
                precision: 0.05,
                integer: true,
            };
            let (o, probes) = against(c, cfg, true);
            assert!(probes.iter().all(|(q, _)| q.fract() == 0.0), "{probes:?}");
            let Outcome::Found { qps, bracket } = o else {
                panic!("{c}: {o:?} via {probes:?}")
            };
            // Exact below 20 (neighbours), within 5 % above.
            assert!(
                qps <= c && (qps >= c / 1.05 || c - qps < 1.0),
                "{c}: {qps} via {probes:?}"
            );
            assert!(bracket[1] - bracket[0] <= 1.0 || bracket[1] <= bracket[0] * 1.05 + 1e-9);
            assert!(probes.len() <= 20, "{c}: {probes:?}");
        }
    }

    #[test]
    fn finds_capacity_within_precision_for_any_c() {
        for c in [0.7, 5.0, 21.0, 25.0, 120.0, 333.0, 999.0] {
            let (o, probes) = against(c, cfg(), true);
            let Outcome::Found { qps, bracket } = o else {
                panic!("{c}: {o:?}")
            };
            assert!(
                qps <= c && qps >= c / 1.05,
                "{c}: found {qps} via {probes:?}"
            );
            assert_eq!(bracket[0], qps);
            assert!(bracket[1] <= bracket[0] * 1.05 + 1e-9, "{bracket:?}");
            assert!(probes.len() <= 20, "{c}: {} probes", probes.len());
            assert_eq!(probes.last().unwrap().1, Phase::Confirm);
        }
    }

    #[test]
    fn out_of_range_both_ways() {
        assert_eq!(against(0.2, cfg(), true).0, Outcome::BelowRange);
        let (o, probes) = against(5000.0, cfg(), true);
        assert_eq!(o, Outcome::AboveRange);
        assert_eq!(
            probes.last().unwrap().0,
            1000.0,
            "max_qps itself was probed"
        );
    }

    #[test]
    fn a_failed_confirmation_steps_down() {
        // Short probes pass up to 25, the long confirmation only to 23.
        let mut s = Search::new(cfg());
        let mut confirms = Vec::new();
        let outcome = loop {
            match s.next() {
                Next::Done(o) => break o,
                Next::Probe { qps, phase } => {
                    let pass = if phase == Phase::Confirm {
                        confirms.push(qps);
                        qps <= 23.0
                    } else {
                        qps <= 25.0
                    };
                    s.record(qps, pass);
                }
            }
        };
        let Outcome::Found { qps, bracket } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(qps <= 23.0 && qps > 21.0, "{qps} via confirms {confirms:?}");
        assert!(confirms.len() >= 2);
        assert!(bracket[1] > qps);
    }

    #[test]
    fn a_failed_confirmation_far_above_the_last_pass_bisects_again() {
        // Growth probes are short: one passes 128 on a server of 120, the
        // confirmation fails it, and the rate that passed before is 64.
        let mut s = Search::new(cfg());
        let mut probes = Vec::new();
        let outcome = loop {
            match s.next() {
                Next::Done(o) => break o,
                Next::Probe { qps, phase } => {
                    probes.push((qps, phase));
                    let limit = match phase {
                        Phase::Grow => 130.0,
                        _ => 120.0,
                    };
                    s.record(qps, qps <= limit);
                }
            }
        };
        let Outcome::Found { qps, .. } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            (120.0 / 1.05..=120.0).contains(&qps),
            "{qps} via {probes:?}"
        );
    }

    #[test]
    fn rounding() {
        assert_eq!(round3(22.627), 22.6);
        assert_eq!(round3(0.6543), 0.654);
        assert_eq!(round3(1234.5), 1230.0);
    }
}
