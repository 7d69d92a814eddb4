//! `compare`'s figures for sessions and prefix caches.
//!
//! A server whose prefix cache broke answers a first turn as fast as
//! before and every later turn as slowly as a first one: the level-wide
//! TTFT moves with the turn mix and can hide it. So later turns are
//! judged on their own (TTFT p95 by turn bucket, per matched level), and
//! so is the share of prompt tokens the server said it served from its
//! cache, over the whole run. Pure.

use crate::analysis::dist::decode;
use crate::analysis::level::LevelResult;
use crate::analysis::noise::{Estimate, Line, judge_estimates, quantile_estimate};

/// A run as this needs it: its name (for notes) and its levels.
pub type RunLevels<'a> = (&'a str, &'a [LevelResult]);

/// The lines for `base` against `new`; `per_level`: also judge TTFT by
/// turn bucket at each matched level (not for capacity searches, whose
/// probes ran at different rates). `client_bound`: why a pair of matched
/// levels cannot be judged, if it cannot.
pub fn lines(
    base: RunLevels<'_>,
    new: RunLevels<'_>,
    max_regression: f64,
    per_level: bool,
    client_bound: &dyn Fn(&LevelResult, &LevelResult) -> Option<String>,
) -> Vec<Line> {
    let mut out = Vec::new();
    if per_level {
        for b in base.1 {
            let Some(n) = new.1.iter().find(|l| l.load() == b.load()) else {
                continue;
            };
            let (Some(bs), Some(ns)) = (&b.sessions, &n.sessions) else {
                continue;
            };
            for bt in &bs.turns {
                let Some(nt) = ns.turns.iter().find(|t| t.turn == bt.turn) else {
                    continue;
                };
                let est = |s: &str| {
                    decode(s)
                        .ok()
                        .and_then(|h| quantile_estimate(&h, 0.95, 1e-6))
                };
                let mut line = judge_estimates(
                    Some(b.load()),
                    format!("ttft.p95 (turn {})", bt.turn),
                    est(&bt.ttft_us),
                    est(&nt.ttft_us),
                    true,
                    max_regression,
                );
                if let Some(why) = client_bound(b, n) {
                    line.regression = false;
                    line.not_comparable = why;
                }
                out.push(line);
            }
        }
    }
    if let Some(line) = cache_line(base, new, max_regression) {
        out.push(line);
    }
    out
}

/// Cached ÷ prompt tokens over the run's levels, with a binomial
/// interval over the requests that reported cached tokens (tokens of one
/// request hit or miss together, so requests are the samples).
fn ratio(levels: &[LevelResult]) -> Option<(Estimate, u64)> {
    let (mut cached, mut input, mut n) = (0u64, 0u64, 0u64);
    for l in levels.iter().filter(|l| !l.client_bound) {
        cached += l.tokens.cached_total;
        input += l.tokens.cached_input_total;
        n += l.tokens.cached_reported;
    }
    (input > 0 && n > 0).then(|| {
        let p = (cached as f64 / input as f64).min(1.0);
        let half = 1.96 * (p * (1.0 - p) / n as f64).sqrt();
        (
            Estimate {
                value: p,
                lo: p - half,
                hi: p + half,
            },
            n,
        )
    })
}

fn cache_line(base: RunLevels<'_>, new: RunLevels<'_>, max_regression: f64) -> Option<Line> {
    let (b, n) = (ratio(base.1), ratio(new.1));
    if b.is_none() && n.is_none() {
        return None;
    }
    let mut line = judge_estimates(
        None,
        "cache hit ratio".into(),
        b.map(|x| x.0),
        n.map(|x| x.0),
        false,
        max_regression,
    );
    match (b, n) {
        // A cache that served nothing before cannot fall.
        (Some((b, _)), Some(_)) if b.value == 0.0 => {
            line.regression = false;
            line.note = "the base run's cache served nothing".into();
        }
        (Some((b, bn)), Some((n, nn))) => {
            line.note = format!(
                "{} and {} requests reported cached tokens; {}",
                bn, nn, line.note
            );
            // A ratio far below a small base is still small in points:
            // judged relative, like latencies, and beyond noise.
            line.regression = line.beyond_noise && (b.value - n.value) / b.value > max_regression;
        }
        (Some(_), None) => line.note = format!("{} reported no cached tokens", new.0),
        (None, Some(_)) => line.note = format!("{} reported no cached tokens", base.0),
        (None, None) => {}
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::level::{LevelResult, LevelTiming};
    use crate::analysis::stats::LevelStats;
    use crate::client::record::RequestRecord;
    use std::time::Duration;

    /// A session level: 300 turns, later turns with TTFT `later_ms` and a
    /// cache serving `cached` of every 1000 prompt tokens after turn 1.
    fn level(later_ms: u64, cached: u32) -> LevelResult {
        let ms = Duration::from_millis;
        let mut s = LevelStats::new();
        for i in 0..300u64 {
            let turn = (i % 6) as u32 + 1;
            let ttft = if turn == 1 { 400 } else { later_ms } + i % 7;
            let mut r = RequestRecord::new(i, ms(i * 50), ms(i * 50));
            r.turn = turn;
            r.first_token_at = Some(ms(i * 50 + ttft));
            r.done_at = ms(i * 50 + ttft + 100);
            r.token_chunks = 8;
            r.usage_input_tokens = Some(1000);
            r.cached_input_tokens = Some(if turn == 1 { 0 } else { cached });
            s.record(&r);
        }
        LevelResult::from_stats(
            &s,
            LevelTiming {
                qps_target: 2.0,
                duration: Duration::from_secs(15),
                send_window: Duration::from_secs(15),
                ..LevelTiming::default()
            },
        )
    }

    fn run(name: &str, l: LevelResult) -> (String, Vec<LevelResult>) {
        (name.to_string(), vec![l])
    }

    fn lines(
        base: &(String, Vec<LevelResult>),
        new: &(String, Vec<LevelResult>),
        max: f64,
        per_level: bool,
    ) -> Vec<Line> {
        super::lines(
            (&base.0, &base.1),
            (&new.0, &new.1),
            max,
            per_level,
            &|_, _| None,
        )
    }

    #[test]
    fn a_broken_cache_is_a_regression_and_the_same_run_is_not() {
        let good = run("good", level(40, 900));
        let broken = run("broken", level(400, 0));
        let l = lines(&good, &broken, 0.1, true);
        let cache = l.iter().find(|l| l.metric == "cache hit ratio").unwrap();
        assert!(cache.regression, "{cache:?}");
        let later = l
            .iter()
            .find(|l| l.metric == "ttft.p95 (turn 2-4)")
            .unwrap();
        assert!(later.regression, "{later:?}");
        let first = l.iter().find(|l| l.metric == "ttft.p95 (turn 1)").unwrap();
        assert!(!first.regression, "first turns are as before: {first:?}");
        let again = run("again", level(40, 900));
        assert!(
            lines(&good, &again, 0.1, true)
                .iter()
                .all(|l| !l.regression)
        );
        // The other way round is an improvement, not a regression.
        assert!(
            lines(&broken, &good, 0.1, true)
                .iter()
                .all(|l| !l.regression)
        );
    }
}
