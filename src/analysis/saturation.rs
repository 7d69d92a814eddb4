//! Saturation analysis: from per-level results to the three numbers a
//! capacity engineer acts on, each with the reason it was chosen.
//!
//! * **saturation point**: the first level with errors (the seed's rule),
//!   a send rate below 90 % of its schedule, a growing backlog (the
//!   stability test `capacity` uses), or a server queue that grew by
//!   [`SERVER_QUEUE_GROWTH`] requests (its own metrics); with an SLO, the
//!   first level that missed it. A TTFT that grows as batches fill is not
//!   saturation: a queueing server at 12 of its 17 req/s triples its TTFT
//!   and still keeps up; a backlog that grows does not;
//! * client-bound levels measured the client: they are never the
//!   saturation point and never count as held;
//! * **max QPS without errors**: the highest level *below the saturation
//!   point* with 100 % success whose send rate reached ≥ 95 % of target
//!   and whose backlog did not grow; with an SLO, the highest level below
//!   it that met its SLO (attainment and stability);
//! * **recommended production limit**: 70–80 % of the max (the seed's
//!   "leave headroom" advice); we report 75 % and the range.
//!
//! Levels are considered in ascending target order whatever order they ran.

use serde::{Deserialize, Serialize};

/// The inputs the analysis needs from one level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelFacts {
    pub qps_target: f64,
    pub actual_qps: f64,
    /// The rate the level's own schedule asked for: its scheduled count
    /// over its duration. Equal to the target for constant arrivals; a
    /// seeded Poisson schedule draws more or fewer, and sending exactly
    /// what was drawn is not falling short.
    pub planned_qps: f64,
    pub success_rate: f64,
    pub ttft_p95: f64,
    pub client_bound: bool,
    /// `Some(false)` when the backlog grew through the level.
    pub stable: Option<bool>,
    /// With an SLO: whether the level met it.
    pub slo_met: Option<bool>,
    /// The server's waiting queue at the level's start and its peak, when
    /// it grew (from its own metrics).
    pub server_waiting: Option<(f64, f64)>,
    /// The server's mean waiting queue over the level's scrapes.
    pub server_waiting_mean: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub max_qps_without_errors: Option<f64>,
    pub max_qps_reason: String,
    pub saturation_qps: Option<f64>,
    pub saturation_reason: String,
    pub recommended_qps: Option<f64>,
    /// `[70 %, 80 %]` of the max.
    pub recommended_range: Option<[f64; 2]>,
    pub recommendation: String,
    /// Targets of levels where the client, not the endpoint, was the limit:
    /// their numbers say little about the endpoint.
    pub client_bound_levels: Vec<f64>,
    /// What decided the saturation point: `errors`, `send rate`,
    /// `backlog`, `server queue` or `slo`; empty when not reached.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub saturation_evidence: String,
}

impl Analysis {
    /// A concurrency sweep sets no rate: its rates are left empty, and
    /// its knee is in `summary.concurrency`.
    pub fn for_concurrency() -> Self {
        let why = "a concurrency sweep sets no rate: see the concurrency analysis (knee, recommended users)";
        Self {
            max_qps_without_errors: None,
            max_qps_reason: why.into(),
            saturation_qps: None,
            saturation_reason: why.into(),
            recommended_qps: None,
            recommended_range: None,
            recommendation: why.into(),
            client_bound_levels: Vec::new(),
            saturation_evidence: String::new(),
        }
    }
}

pub const HELD_FRACTION: f64 = 0.95;
pub const SATURATED_FRACTION: f64 = 0.90;
/// A server waiting queue that grew by at least this many requests through
/// a level, and stayed high ([`SERVER_QUEUE_HELD`]), is a backlog the
/// server itself reports. A continuous-batching server's queue fills to a
/// few requests (its slots' worth) below capacity; past capacity it grows
/// by hundreds.
pub const SERVER_QUEUE_GROWTH: f64 = 32.0;
/// The queue's mean over the level must be at least this share of its
/// peak: a queue that grows steadily averages half its peak, while a
/// Poisson burst that drains again (llama-server at 28 of its ~30 req/s:
/// peak 36, mean 7.8) averages far less.
pub const SERVER_QUEUE_HELD: f64 = 1.0 / 3.0;
pub const RECOMMENDED_FRACTION: f64 = 0.75;

/// Sent less than the level's own schedule asked for: the load never
/// reached the endpoint as planned.
fn fell_short(l: &LevelFacts) -> Option<String> {
    (l.actual_qps < SATURATED_FRACTION * l.planned_qps).then(|| {
        format!(
            "achieved {:.2} of the {:.2} scheduled for a {} target (< {:.0}%)",
            l.actual_qps,
            l.planned_qps,
            fmt_qps(l.qps_target),
            SATURATED_FRACTION * 100.0
        )
    })
}

pub fn analyze(levels: &[LevelFacts]) -> Analysis {
    let mut sorted: Vec<LevelFacts> = levels.to_vec();
    sorted.sort_by(|a, b| a.qps_target.total_cmp(&b.qps_target));

    let client_bound_levels: Vec<f64> = sorted
        .iter()
        .filter(|l| l.client_bound)
        .map(|l| l.qps_target)
        .collect();

    let with_slo = sorted.iter().any(|l| l.slo_met.is_some());
    let saturated = sorted.iter().find_map(|l| {
        // The client was the limit (late sends): nothing here is the
        // endpoint's. Drops at --max-in-flight are errors, the endpoint's:
        // a slow endpoint is what fills the cap.
        if l.client_bound && l.success_rate >= 100.0 {
            return None;
        }
        // With an SLO, the SLO says what is acceptable (errors within its
        // attainment, TTFT within its limits).
        if with_slo {
            if l.slo_met == Some(false) {
                return Some((
                    l,
                    "slo",
                    "first level that missed the SLO (attainment or a growing backlog)".to_string(),
                ));
            }
            if let Some(why) = fell_short(l) {
                return Some((l, "send rate", why));
            }
            return None;
        }
        if l.success_rate < 100.0 {
            return Some((
                l,
                "errors",
                format!("first level with errors ({:.1}% success)", l.success_rate),
            ));
        }
        if let Some(why) = fell_short(l) {
            return Some((l, "send rate", why));
        }
        if l.stable == Some(false) {
            return Some((
                l,
                "backlog",
                "the backlog grew through the level (requests queue faster than they are served)"
                    .to_string(),
            ));
        }
        if let Some((start, peak)) = l.server_waiting
            && peak - start >= SERVER_QUEUE_GROWTH
            && l.server_waiting_mean.unwrap_or(peak) >= SERVER_QUEUE_HELD * peak
        {
            return Some((
                l,
                "server queue",
                "the server's own queue grew through the level".to_string(),
            ));
        }
        None
    });
    let saturation_evidence = saturated
        .as_ref()
        .map(|(_, e, _)| e.to_string())
        .unwrap_or_default();
    let saturated = saturated.map(|(l, _, why)| (l, why));
    let (saturation_qps, saturation_reason) = match saturated {
        Some((l, why)) => (
            Some(l.qps_target),
            match l.server_waiting {
                Some((a, b)) => {
                    format!("{why}; the server's waiting requests grew from {a:.0} to {b:.0}")
                }
                None => why,
            },
        ),
        None => (
            None,
            if client_bound_levels.is_empty() {
                "not reached: every level held; test higher QPS to find it".into()
            } else {
                "not reached: every level the client could measure held (client-bound levels are left out); test higher QPS to find it".into()
            },
        ),
    };

    // A level at or past the saturation point never counts as held: a
    // queueing server serves every request of an overloaded level, late.
    let below = |l: &LevelFacts| saturation_qps.is_none_or(|s| l.qps_target < s);
    let held = |l: &LevelFacts| {
        below(l)
            && !l.client_bound
            && if with_slo {
                l.slo_met == Some(true)
            } else {
                l.success_rate >= 100.0
                    && l.actual_qps >= HELD_FRACTION * l.planned_qps
                    && l.stable != Some(false)
            }
    };
    let max = sorted.iter().rev().find(|l| held(l));
    let (max_qps, max_reason) = match max {
        Some(l) if with_slo => (
            Some(l.qps_target),
            format!(
                "highest level below the saturation point that met the SLO ({:.2} achieved of {} target)",
                l.actual_qps,
                fmt_qps(l.qps_target)
            ),
        ),
        Some(l) => (
            Some(l.qps_target),
            format!(
                "highest level below the saturation point with 100% success and {:.2} achieved of {} target (>= {:.0}%)",
                l.actual_qps,
                fmt_qps(l.qps_target),
                HELD_FRACTION * 100.0
            ),
        ),
        None if sorted.is_empty() => (None, "no level completed".into()),
        None => (
            None,
            "no level below the saturation point held: test lower QPS".into(),
        ),
    };

    let (recommended_qps, recommended_range, recommendation) = match max_qps {
        Some(m) => {
            let rec = round2(m * RECOMMENDED_FRACTION);
            (
                Some(rec),
                Some([round2(m * 0.70), round2(m * 0.80)]),
                format!(
                    "run production at up to {} QPS (70-80% of the {} QPS that held, leaving headroom)",
                    fmt_qps(rec),
                    fmt_qps(m)
                ),
            )
        }
        None => (
            None,
            None,
            if sorted.iter().all(|l| l.client_bound) && !sorted.is_empty() {
                "no safe limit found: every level was client-bound (the load generator, not the endpoint, was the limit); rerun with more CPU for llmload".into()
            } else {
                "no safe limit found: every level had errors or fell short; rerun with lower --qps"
                    .into()
            },
        ),
    };

    Analysis {
        max_qps_without_errors: max_qps,
        max_qps_reason: max_reason,
        saturation_qps,
        saturation_reason,
        recommended_qps,
        recommended_range,
        recommendation,
        client_bound_levels,
        saturation_evidence,
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// `10` for 10.0, `0.5` for 0.5.
pub fn fmt_qps(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(target: f64, actual: f64, success: f64, ttft: f64) -> LevelFacts {
        LevelFacts {
            qps_target: target,
            actual_qps: actual,
            planned_qps: target,
            success_rate: success,
            ttft_p95: ttft,
            client_bound: false,
            stable: None,
            slo_met: None,
            server_waiting: None,
            server_waiting_mean: None,
        }
    }

    fn unstable(mut f: LevelFacts) -> LevelFacts {
        f.stable = Some(false);
        f
    }

    #[test]
    fn the_server_queue_decides_when_it_grows_by_a_backlog() {
        let mut filled = l(16.0, 16.0, 100.0, 0.345);
        filled.server_waiting = Some((0.0, 8.0)); // its slots' worth
        // A burst that drained again: peak 36, mean 7.8.
        let mut burst = l(18.0, 18.0, 100.0, 0.4);
        burst.server_waiting = Some((0.0, 36.0));
        burst.server_waiting_mean = Some(7.8);
        let mut growing = l(20.0, 20.0, 100.0, 0.5);
        growing.server_waiting = Some((0.0, 293.0));
        growing.server_waiting_mean = Some(119.0);
        let a = analyze(&[l(8.0, 8.0, 100.0, 0.05), filled, burst, growing]);
        assert_eq!(a.saturation_qps, Some(20.0));
        assert_eq!(a.saturation_evidence, "server queue");
        assert!(
            a.saturation_reason.contains("grew from 0 to 293"),
            "{}",
            a.saturation_reason
        );
        assert_eq!(a.max_qps_without_errors, Some(18.0));
    }

    #[test]
    fn a_client_bound_level_is_neither_saturation_nor_held() {
        let mut starved = l(16.0, 12.0, 100.0, 0.9);
        starved.client_bound = true;
        let a = analyze(&[
            l(8.0, 8.0, 100.0, 0.05),
            starved,
            l(12.0, 12.0, 100.0, 0.06),
        ]);
        assert_eq!(a.saturation_qps, None, "{a:?}");
        assert_eq!(a.max_qps_without_errors, Some(12.0));
        assert_eq!(a.client_bound_levels, vec![16.0]);
        // Even the top level: held is the highest level the client measured.
        let mut top = l(24.0, 24.0, 100.0, 0.05);
        top.client_bound = true;
        let a = analyze(&[l(8.0, 8.0, 100.0, 0.05), top]);
        assert_eq!(a.max_qps_without_errors, Some(8.0));
        assert_eq!(a.saturation_evidence, "");
    }

    #[test]
    fn a_poisson_draw_below_the_target_is_not_saturation() {
        // 8 req/s for 15 s drew 102 arrivals, all sent: 6.8/s.
        let mut short = l(8.0, 6.8, 100.0, 0.07);
        short.planned_qps = 6.8;
        let a = analyze(&[l(4.0, 4.0, 100.0, 0.07), short, l(16.0, 16.0, 90.0, 0.07)]);
        assert_eq!(a.saturation_qps, Some(16.0));
        assert_eq!(a.max_qps_without_errors, Some(8.0));
        // Sending less than was scheduled still is.
        short.actual_qps = 5.0;
        let a = analyze(&[l(4.0, 4.0, 100.0, 0.07), short]);
        assert_eq!(a.saturation_qps, Some(8.0));
        assert!(
            a.saturation_reason.contains("of the 6.80 scheduled"),
            "{}",
            a.saturation_reason
        );
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            levels: Vec<LevelFacts>,
            max: Option<f64>,
            sat: Option<f64>,
            sat_reason: &'static str,
            rec: Option<f64>,
        }
        let cases = vec![
            Case {
                name: "the seed's example",
                levels: vec![
                    l(1.0, 1.0, 100.0, 0.15),
                    l(5.0, 4.98, 100.0, 0.25),
                    l(10.0, 9.95, 98.5, 0.40),
                    l(20.0, 19.82, 85.2, 1.2),
                ],
                max: Some(5.0),
                sat: Some(10.0),
                sat_reason: "errors",
                rec: Some(3.75),
            },
            Case {
                name: "all hold",
                levels: vec![l(1.0, 1.0, 100.0, 0.1), l(2.0, 2.0, 100.0, 0.1)],
                max: Some(2.0),
                sat: None,
                sat_reason: "not reached",
                rec: Some(1.5),
            },
            Case {
                name: "all fail",
                levels: vec![l(1.0, 1.0, 50.0, 0.1), l(2.0, 2.0, 10.0, 0.1)],
                max: None,
                sat: Some(1.0),
                sat_reason: "errors",
                rec: None,
            },
            Case {
                // llama-server, 8 slots: TTFT grows as batches fill, the
                // backlog only past capacity (16.7 req/s).
                name: "a growing TTFT is not saturation; a growing backlog is",
                levels: vec![
                    l(8.0, 8.0, 100.0, 0.054),
                    l(12.0, 12.0, 100.0, 0.219),
                    l(16.0, 16.0, 100.0, 0.345),
                    unstable(l(20.0, 20.0, 100.0, 23.9)),
                ],
                max: Some(16.0),
                sat: Some(20.0),
                sat_reason: "the backlog grew",
                rec: Some(12.0),
            },
            Case {
                name: "send rate collapse",
                levels: vec![l(10.0, 10.0, 100.0, 0.1), l(100.0, 80.0, 100.0, 0.1)],
                max: Some(10.0),
                sat: Some(100.0),
                sat_reason: "achieved 80.00",
                rec: Some(7.5),
            },
            Case {
                name: "unsorted input, 94% achieved does not hold",
                levels: vec![l(20.0, 18.8, 100.0, 0.1), l(10.0, 10.0, 100.0, 0.1)],
                max: Some(10.0),
                sat: None,
                sat_reason: "not reached",
                rec: Some(7.5),
            },
            Case {
                name: "empty",
                levels: vec![],
                max: None,
                sat: None,
                sat_reason: "not reached",
                rec: None,
            },
        ];
        for c in cases {
            let a = analyze(&c.levels);
            assert_eq!(a.max_qps_without_errors, c.max, "{}", c.name);
            assert_eq!(a.saturation_qps, c.sat, "{}", c.name);
            assert!(
                a.saturation_reason.contains(c.sat_reason),
                "{}: {}",
                c.name,
                a.saturation_reason
            );
            assert_eq!(a.recommended_qps, c.rec, "{}", c.name);
        }
    }

    #[test]
    fn a_queueing_server_is_never_held_past_its_knee() {
        // 40 QPS on a 21 req/s queueing server: every request succeeds,
        // late, and the backlog grows. It must not be "held".
        let mut over = l(40.0, 40.0, 100.0, 6.8);
        over.stable = Some(false);
        let a = analyze(&[
            l(5.0, 5.0, 100.0, 0.03),
            l(10.0, 10.0, 100.0, 0.03),
            l(20.0, 20.0, 100.0, 0.05),
            over,
        ]);
        assert_eq!(a.saturation_qps, Some(40.0));
        assert_eq!(a.max_qps_without_errors, Some(20.0));
        assert_eq!(a.recommended_qps, Some(15.0));
        // Unstable alone (percentiles not yet blown up) saturates too.
        let mut quiet = l(25.0, 25.0, 100.0, 0.06);
        quiet.stable = Some(false);
        let a = analyze(&[l(20.0, 20.0, 100.0, 0.05), quiet]);
        assert_eq!(a.saturation_qps, Some(25.0));
        assert!(
            a.saturation_reason.contains("backlog grew"),
            "{}",
            a.saturation_reason
        );
        assert_eq!(a.max_qps_without_errors, Some(20.0));
    }

    #[test]
    fn with_an_slo_held_means_the_slo_was_met() {
        let mut a1 = l(5.0, 5.0, 100.0, 0.5);
        a1.slo_met = Some(true);
        let mut a2 = l(10.0, 10.0, 99.5, 1.0);
        a2.slo_met = Some(true); // 99.5 % good >= 99 %: met despite errors
        let mut a3 = l(20.0, 20.0, 100.0, 3.0);
        a3.slo_met = Some(false);
        let a = analyze(&[a1, a2, a3]);
        // Errors within the attainment are what the SLO allows.
        assert_eq!(a.saturation_qps, Some(20.0));
        assert_eq!(a.max_qps_without_errors, Some(10.0));
        let mut b2 = l(10.0, 10.0, 100.0, 1.0);
        b2.slo_met = Some(true);
        let mut b3 = l(20.0, 20.0, 100.0, 3.0);
        b3.slo_met = Some(false);
        let a = analyze(&[b2, b3]);
        assert_eq!(a.saturation_qps, Some(20.0));
        assert!(a.saturation_reason.contains("SLO"));
        assert_eq!(a.max_qps_without_errors, Some(10.0));
        assert!(a.max_qps_reason.contains("met the SLO"));
    }

    #[test]
    fn recommended_range_is_70_to_80_percent() {
        let a = analyze(&[l(40.0, 40.0, 100.0, 0.1)]);
        assert_eq!(a.recommended_range, Some([28.0, 32.0]));
        assert!(a.recommendation.contains("30 QPS"));
    }

    #[test]
    fn client_bound_levels_are_listed() {
        let mut x = l(1000.0, 990.0, 100.0, 0.1);
        x.client_bound = true;
        let a = analyze(&[l(1.0, 1.0, 100.0, 0.1), x]);
        assert_eq!(a.client_bound_levels, vec![1000.0]);
    }
}
