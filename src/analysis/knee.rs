//! The knee of a concurrency sweep: the number of users past which
//! throughput stops growing while latency keeps growing.
//!
//! In a closed loop every added user adds load only while the server has
//! room: below the knee, more users give more tokens/s; past it, the extra
//! users only queue, so tokens/s stays flat and TTFT grows with them
//! (Little's law). The knee is the last level before the first step whose
//! throughput grew by less than [`KNEE_GAIN`] while TTFT p95 or E2E p50
//! grew by at least [`LATENCY_GROWTH`]; or the last level before the first
//! one with errors. Client-bound levels without errors measured the client
//! and are left out. Pure.
//!
//! The gain is absolute, not a share of the ideal: a CPU-bound server
//! batches sublinearly (llama-server on 2 cores: 1 → 4 users +47 %
//! tokens/s, 4 → 8 +11 %, 8 → 16 +1 % while TTFT p95 grew 18×, at its 8
//! slots), and it is the flat step with the jump in latency that is its
//! knee, not the first step below ideal scaling.

use serde::{Deserialize, Serialize};

/// A step whose throughput grew by less than this (10 %) is flat…
pub const KNEE_GAIN: f64 = 0.10;
/// …provided latency grew by at least this factor over the step.
pub const LATENCY_GROWTH: f64 = 1.25;
/// The recommendation: this share of the knee's users, rounded down.
pub const RECOMMENDED_SHARE: f64 = 0.75;

/// What the knee needs from one concurrency level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsersFacts {
    pub concurrency: u32,
    /// Output tokens/s of the level (all requests' tokens over its time).
    pub tokens_per_sec: f64,
    /// Requests/s completed, for servers that report no tokens.
    pub completed_qps: f64,
    pub ttft_p95: f64,
    pub e2e_p50: f64,
    pub success_rate: f64,
    pub client_bound: bool,
}

/// `summary.json`'s `concurrency`: the knee and what to run at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConcurrencyAnalysis {
    /// The last level before throughput stopped growing.
    pub knee: Option<u32>,
    pub knee_reason: String,
    /// The highest output tokens/s any level reached, and at how many users.
    pub peak_tokens_per_sec: f64,
    pub peak_at: Option<u32>,
    pub recommended_concurrency: Option<u32>,
    pub recommendation: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_bound_levels: Vec<u32>,
}

/// Throughput of a level: tokens/s, or completed requests/s when the
/// server reported no tokens at all.
fn throughput(l: &UsersFacts, by_tokens: bool) -> f64 {
    if by_tokens {
        l.tokens_per_sec
    } else {
        l.completed_qps
    }
}

pub fn analyze(levels: &[UsersFacts]) -> ConcurrencyAnalysis {
    let mut sorted = levels.to_vec();
    sorted.sort_by_key(|l| l.concurrency);
    let client_bound_levels: Vec<u32> = sorted
        .iter()
        .filter(|l| l.client_bound)
        .map(|l| l.concurrency)
        .collect();
    let usable: Vec<UsersFacts> = sorted
        .into_iter()
        .filter(|l| !(l.client_bound && l.success_rate >= 100.0))
        .collect();
    let by_tokens = usable.iter().all(|l| l.tokens_per_sec > 0.0);
    let unit = if by_tokens {
        "tokens/s"
    } else {
        "completed req/s"
    };
    let peak = usable
        .iter()
        .max_by(|a, b| throughput(a, by_tokens).total_cmp(&throughput(b, by_tokens)));

    let mut knee: Option<(u32, String)> = None;
    if let Some(first_bad) = usable.iter().position(|l| l.success_rate < 100.0) {
        let bad = &usable[first_bad];
        let why = format!(
            "{} users had errors ({:.1}% success)",
            bad.concurrency, bad.success_rate
        );
        knee = Some(match first_bad {
            0 => (0, why),
            i => (
                usable[i - 1].concurrency,
                format!("the last level before errors: {why}"),
            ),
        });
    }
    for w in usable.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if knee.as_ref().is_some_and(|(k, _)| *k <= a.concurrency) {
            break;
        }
        let (ta, tb) = (throughput(a, by_tokens), throughput(b, by_tokens));
        if ta <= 0.0 || b.success_rate < 100.0 {
            continue;
        }
        let gain = tb / ta;
        let ttft_growth = ratio(b.ttft_p95, a.ttft_p95);
        let e2e_growth = ratio(b.e2e_p50, a.e2e_p50);
        if gain - 1.0 < KNEE_GAIN && ttft_growth.max(e2e_growth) >= LATENCY_GROWTH {
            let (what, growth) = if ttft_growth >= e2e_growth {
                ("TTFT p95", ttft_growth)
            } else {
                ("E2E p50", e2e_growth)
            };
            knee = Some((
                a.concurrency,
                format!(
                    "{unit} {:+.0}% from {} to {} users while {what} grew {growth:.1}x",
                    (gain - 1.0) * 100.0,
                    a.concurrency,
                    b.concurrency
                ),
            ));
            break;
        }
    }

    let (knee, knee_reason) = match knee {
        Some((0, why)) => (None, format!("{why}: test fewer users")),
        Some((k, why)) => (Some(k), why),
        None if usable.len() < 2 => (
            None,
            "not found: it takes two levels the client could measure".into(),
        ),
        None => (
            None,
            format!(
                "not reached: {unit} still grew with the users at the highest level; test more users"
            ),
        ),
    };
    let recommended = knee.map(|k| ((k as f64 * RECOMMENDED_SHARE).floor() as u32).max(1));
    let recommendation = match (knee, recommended) {
        (Some(k), Some(r)) => format!(
            "run up to {r} concurrent users ({:.0}% of the knee at {k}, leaving headroom)",
            RECOMMENDED_SHARE * 100.0
        ),
        _ => "no knee found, so no recommendation".into(),
    };
    ConcurrencyAnalysis {
        knee,
        knee_reason,
        peak_tokens_per_sec: peak
            .map_or(0.0, |p| crate::analysis::stats::round(p.tokens_per_sec, 1)),
        peak_at: peak.map(|p| p.concurrency),
        recommended_concurrency: recommended,
        recommendation,
        client_bound_levels,
    }
}

fn ratio(b: f64, a: f64) -> f64 {
    if a > 0.0 { b / a } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server with `slots` slots, each request 64 tokens in 1 s: tokens/s
    /// grows with the users up to the slots, then users queue.
    fn slots_model(users: &[u32], slots: u32) -> Vec<UsersFacts> {
        users
            .iter()
            .map(|&c| {
                let served = c.min(slots) as f64;
                let wait = (c as f64 / slots as f64).max(1.0);
                UsersFacts {
                    concurrency: c,
                    tokens_per_sec: served * 64.0,
                    completed_qps: served,
                    ttft_p95: 0.05 * wait + if c > slots { 1.0 * (wait - 1.0) } else { 0.0 },
                    e2e_p50: wait,
                    success_rate: 100.0,
                    client_bound: false,
                }
            })
            .collect()
    }

    #[test]
    fn the_knee_is_the_slots() {
        let a = analyze(&slots_model(&[1, 4, 16, 64], 16));
        assert_eq!(a.knee, Some(16), "{}", a.knee_reason);
        assert!(
            a.knee_reason.contains("from 16 to 64 users"),
            "{}",
            a.knee_reason
        );
        assert_eq!(a.recommended_concurrency, Some(12));
        let a = analyze(&slots_model(&[8, 12, 16, 20, 24], 16));
        assert_eq!(a.knee, Some(16), "{}", a.knee_reason);
        // Past the highest level: not reached.
        let a = analyze(&slots_model(&[1, 2, 4], 16));
        assert_eq!(a.knee, None);
        assert!(a.knee_reason.contains("not reached"));
        assert_eq!(a.peak_at, Some(4));
    }

    #[test]
    fn a_server_that_batches_sublinearly_has_its_knee_where_it_goes_flat() {
        // llama-server, 8 slots, 2 CPU cores: the measured figures.
        let l: Vec<UsersFacts> = [
            (1, 1101.0, 0.022, 0.059),
            (4, 1619.0, 0.011, 0.157),
            (8, 1798.0, 0.019, 0.288),
            (16, 1818.0, 0.345, 0.571),
            (32, 1845.0, 0.956, 1.103),
        ]
        .iter()
        .map(|&(c, tps, ttft, e2e)| UsersFacts {
            concurrency: c,
            tokens_per_sec: tps,
            completed_qps: tps / 64.0,
            ttft_p95: ttft,
            e2e_p50: e2e,
            success_rate: 100.0,
            client_bound: false,
        })
        .collect();
        let a = analyze(&l);
        assert_eq!(a.knee, Some(8), "{}", a.knee_reason);
        assert_eq!(a.recommended_concurrency, Some(6));
    }

    #[test]
    fn errors_and_the_client_decide_too() {
        let mut l = slots_model(&[1, 4, 16, 64], 64);
        l[3].success_rate = 90.0;
        let a = analyze(&l);
        assert_eq!(a.knee, Some(16));
        assert!(
            a.knee_reason.contains("64 users had errors"),
            "{}",
            a.knee_reason
        );
        // A client-bound level is left out: its flat throughput is ours.
        let mut l = slots_model(&[1, 4, 16, 64], 64);
        l[3].client_bound = true;
        l[3].tokens_per_sec = l[2].tokens_per_sec;
        l[3].ttft_p95 = 10.0;
        let a = analyze(&l);
        assert_eq!(a.knee, None, "{}", a.knee_reason);
        assert_eq!(a.client_bound_levels, vec![64]);
        // Flat throughput with flat latency is not a knee.
        let mut l = slots_model(&[1, 4], 64);
        l[1].tokens_per_sec = l[0].tokens_per_sec;
        assert_eq!(analyze(&l).knee, None);
    }
}
