//! Is the new run worse than the base run? A verdict a CI job can gate
//! on, that does not cry wolf when one endpoint is measured twice.
//!
//! Levels are matched by target QPS. For each chosen metric the change is
//! a **regression** when it is worse than `max_regression` (relative) *and*
//! beyond noise. Noise comes from the runs' own serialized histograms:
//!
//! * a percentile: the distribution-free 95 % confidence interval of a
//!   quantile from `n` samples. The rank of the sample quantile is
//!   binomial, so the interval runs between the values at ranks
//!   `n·q ∓ 1.96·√(n·q·(1−q))` of the histogram. The change is beyond noise
//!   when the two runs' intervals do not overlap;
//! * a mean: `1.96 · sd / √n` either side, likewise;
//! * capacity under an SLO: the search brackets `[last pass, first fail]`
//!   must not overlap; max QPS without errors (levels are discrete) has no
//!   noise model: any drop beyond the threshold counts;
//! * success rate: binomial intervals.
//!
//! Pure: runs come in as loaded data; the command and the daemon's API do
//! the reading.

use crate::analysis::level::LevelResult;
pub use crate::analysis::noise::Line;
use crate::analysis::noise::{
    Estimate, judge_estimates, mean_estimate, quantile_estimate, relative,
};
use crate::analysis::stats::decode;
use crate::analysis::summary::Summary;
use serde::{Deserialize, Serialize};

/// A run as read from its directory.
#[derive(Debug, Clone)]
pub struct Run {
    /// Where it came from (a path or a daemon run id), for messages.
    pub name: String,
    pub model: String,
    pub dataset: String,
    pub levels: Vec<LevelResult>,
    pub summary: Summary,
}

/// What to compare, and when a change is a regression.
#[derive(Debug, Clone)]
pub struct Options {
    /// Relative worsening beyond which a change counts (0.10 = 10 %).
    pub max_regression: f64,
    pub metrics: Vec<MetricSpec>,
}

/// `ttft.p95`, `e2e.p99`, `tokens_per_sec.p50`, `tpot.mean`, `capacity`…
#[derive(Debug, Clone, PartialEq)]
pub enum MetricSpec {
    Level {
        field: Field,
        stat: Stat,
    },
    /// SLO capacity if both runs have one, else max QPS without errors.
    Capacity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Ttft,
    Ttfc,
    E2e,
    Itl,
    Tpot,
    TokensPerSec,
    DecodeTokensPerSec,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    Quantile(f64),
    Mean,
}

pub const DEFAULT_METRICS: &str = "ttft.p95,e2e.p99,tokens_per_sec.p50,capacity";

impl Field {
    fn name(self) -> &'static str {
        match self {
            Self::Ttft => "ttft",
            Self::Ttfc => "ttfc",
            Self::E2e => "e2e",
            Self::Itl => "itl",
            Self::Tpot => "tpot",
            Self::TokensPerSec => "tokens_per_sec",
            Self::DecodeTokensPerSec => "decode_tokens_per_sec",
        }
    }

    /// Higher is worse for latencies, better for rates.
    fn higher_is_worse(self) -> bool {
        !matches!(self, Self::TokensPerSec | Self::DecodeTokensPerSec)
    }

    /// The serialized histogram and the scale to report units.
    fn histogram(self, l: &LevelResult) -> (&str, f64) {
        let h = &l.histograms;
        match self {
            Self::Ttft => (&h.ttft_us, 1e-6),
            Self::Ttfc => (&h.ttfc_us, 1e-6),
            Self::E2e => (&h.e2e_us, 1e-6),
            Self::Itl => (&h.itl_us, 1e-6),
            Self::Tpot => (&h.tpot_us, 1e-6),
            Self::TokensPerSec => (&h.tokens_per_sec_milli, 1e-3),
            Self::DecodeTokensPerSec => (&h.decode_tokens_per_sec_milli, 1e-3),
        }
    }
}

impl MetricSpec {
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Self::parse)
            .collect()
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "capacity" {
            return Ok(Self::Capacity);
        }
        let (f, st) = s
            .split_once('.')
            .ok_or_else(|| format!("'{s}': expected FIELD.STAT (ttft.p95) or capacity"))?;
        let field = match f {
            "ttft" => Field::Ttft,
            "ttfc" => Field::Ttfc,
            "e2e" | "e2e_latency" => Field::E2e,
            "itl" => Field::Itl,
            "tpot" => Field::Tpot,
            "tokens_per_sec" => Field::TokensPerSec,
            "decode_tokens_per_sec" => Field::DecodeTokensPerSec,
            other => {
                return Err(format!(
                    "'{s}': unknown field '{other}' (ttft, ttfc, e2e, itl, tpot, tokens_per_sec, decode_tokens_per_sec)"
                ));
            }
        };
        let stat = match st {
            "mean" => Stat::Mean,
            p if p.starts_with('p') => {
                let v: f64 = p[1..]
                    .parse()
                    .map_err(|_| format!("'{s}': '{p}' is not a percentile like p95"))?;
                if !(v > 0.0 && v < 100.0) {
                    return Err(format!("'{s}': the percentile must be between 0 and 100"));
                }
                Stat::Quantile(v / 100.0)
            }
            other => {
                return Err(format!(
                    "'{s}': unknown statistic '{other}' (p50, p95, p99.9, mean)"
                ));
            }
        };
        Ok(Self::Level { field, stat })
    }

    pub fn name(&self) -> String {
        match self {
            Self::Capacity => "capacity".into(),
            Self::Level { field, stat } => match stat {
                Stat::Mean => format!("{}.mean", field.name()),
                Stat::Quantile(q) => format!(
                    "{}.p{}",
                    field.name(),
                    crate::analysis::saturation::fmt_qps(q * 100.0)
                ),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub base: String,
    pub new: String,
    pub max_regression: f64,
    pub lines: Vec<Line>,
    pub regressions: Vec<String>,
    /// `ok`, `regression`, or `not comparable` (no regression among the
    /// figures that can be judged, and some that cannot).
    pub verdict: String,
}

/// `10%` or `0.1`: a threshold as users write it.
pub fn parse_share(s: &str) -> Result<f64, String> {
    let t = s.trim();
    match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .ok()
    .filter(|v| v.is_finite() && *v >= 0.0)
    .ok_or_else(|| format!("'{s}' is not a share like 10% or 0.1"))
}

/// Why two runs cannot be compared (exit 2).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the runs cannot be compared: {0}")]
pub struct Incomparable(pub String);

fn estimate(l: &LevelResult, field: Field, stat: Stat) -> Result<Option<Estimate>, String> {
    let (text, scale) = field.histogram(l);
    if text.is_empty() {
        return Ok(None);
    }
    let h = decode(text)?;
    Ok(match stat {
        Stat::Quantile(q) => quantile_estimate(&h, q, scale),
        Stat::Mean => mean_estimate(&h, scale),
    })
}

/// Check the runs describe the same experiment.
fn comparable(base: &Run, new: &Run) -> Result<(), Incomparable> {
    if base.model != new.model {
        return Err(Incomparable(format!(
            "different models ('{}' in {}, '{}' in {})",
            base.model, base.name, new.model, new.name
        )));
    }
    if base.dataset != new.dataset {
        return Err(Incomparable(format!(
            "different datasets ('{}' in {}, '{}' in {})",
            base.dataset, base.name, new.dataset, new.name
        )));
    }
    let both_capacity = base.summary.capacity.is_some() && new.summary.capacity.is_some();
    if both_capacity {
        if base.summary.slo != new.summary.slo {
            return Err(Incomparable(format!(
                "capacity searched under different SLOs ({:?} and {:?})",
                base.summary.slo, new.summary.slo
            )));
        }
        return Ok(());
    }
    // A level is its load: users, a replay's mean rate, or a target rate.
    let kind = |l: &LevelResult| match (l.concurrency, l.trace) {
        (Some(_), _) => "concurrency",
        (None, true) => "trace",
        (None, false) => "qps",
    };
    let kinds = |r: &Run| {
        let mut v: Vec<&str> = r.levels.iter().map(kind).collect();
        v.dedup();
        v
    };
    if kinds(base) != kinds(new) {
        return Err(Incomparable(format!(
            "different kinds of levels ({} in {}, {} in {})",
            kinds(base).join(","),
            base.name,
            kinds(new).join(","),
            new.name
        )));
    }
    let qps = |r: &Run| {
        let mut v: Vec<f64> = r.levels.iter().map(|l| l.load()).collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    };
    if qps(base) != qps(new) {
        return Err(Incomparable(format!(
            "different levels ({:?} in {}, {:?} in {})",
            qps(base),
            base.name,
            qps(new),
            new.name
        )));
    }
    Ok(())
}

/// Compare `new` against `base`.
pub fn compare(base: &Run, new: &Run, opts: &Options) -> Result<Verdict, Incomparable> {
    comparable(base, new)?;
    let mut lines = Vec::new();
    let both_capacity = base.summary.capacity.is_some() && new.summary.capacity.is_some();
    for m in &opts.metrics {
        let MetricSpec::Level { field, stat } = m else {
            continue;
        };
        if both_capacity {
            continue; // probes at different rates: per-level lines mean nothing
        }
        for b in &base.levels {
            let Some(n) = new.levels.iter().find(|l| l.load() == b.load()) else {
                continue;
            };
            let eb = estimate(b, *field, *stat).map_err(Incomparable)?;
            let en = estimate(n, *field, *stat).map_err(Incomparable)?;
            let mut line = judge_estimates(
                Some(b.load()),
                m.name(),
                eb,
                en,
                field.higher_is_worse(),
                opts.max_regression,
            );
            if let Some(why) = client_bound(&[(base, b), (new, n)]) {
                line.set_not_comparable(why);
            }
            lines.push(line);
        }
    }
    // Whole-run figures read every level: one client-bound level taints
    // them. A capacity search's client-bound probes were repeated and never
    // entered its answer, so only an inconclusive search taints its line.
    let any_client_bound = [base, new]
        .iter()
        .find_map(|r| r.levels.iter().find_map(|l| client_bound(&[(r, l)])));
    if opts.metrics.contains(&MetricSpec::Capacity) {
        let mut line = capacity_line(base, new, opts.max_regression);
        for r in [base, new] {
            if let Some(c) = r
                .summary
                .capacity
                .as_ref()
                .filter(|c| c.outcome == "inconclusive")
            {
                line.set_not_comparable(format!("{}: {}", r.name, c.message));
            }
        }
        if !both_capacity && let Some(why) = &any_client_bound {
            line.set_not_comparable(why.clone());
        }
        lines.push(line);
    }
    // Sessions and prefix caches: TTFT by turn bucket, and the share of
    // prompt tokens the server's cache served.
    lines.extend(crate::analysis::compare_cache::lines(
        (&base.name, &base.levels),
        (&new.name, &new.levels),
        opts.max_regression,
        !both_capacity,
        &|b, n| client_bound(&[(base, b), (new, n)]),
    ));
    for mut line in [
        saturation_line(base, new),
        success_line(base, new, opts.max_regression),
    ] {
        if !both_capacity && let Some(why) = &any_client_bound {
            line.set_not_comparable(why.clone());
        }
        lines.push(line);
    }
    let regressions: Vec<String> = lines
        .iter()
        .filter(|l| l.regression)
        .map(|l| {
            format!(
                "{}{}: {} -> {} ({:+.1}%)",
                l.qps
                    .map(|q| format!("{} QPS ", crate::analysis::saturation::fmt_qps(q)))
                    .unwrap_or_default(),
                l.metric,
                fmt(l.base),
                fmt(l.new),
                l.change.unwrap_or(0.0) * 100.0
            )
        })
        .collect();
    Ok(Verdict {
        base: base.name.clone(),
        new: new.name.clone(),
        max_regression: opts.max_regression,
        verdict: if !regressions.is_empty() {
            "regression".into()
        } else if lines.iter().any(|l| !l.not_comparable.is_empty()) {
            "not comparable".into()
        } else {
            "ok".into()
        },
        lines,
        regressions,
    })
}

/// Why a level of these runs measured the client rather than the
/// endpoint, if one did.
pub(crate) fn client_bound(levels: &[(&Run, &LevelResult)]) -> Option<String> {
    levels.iter().find(|(_, l)| l.client_bound).map(|(r, l)| {
        let at = match l.concurrency {
            Some(n) => format!("{n} users"),
            None => format!("{} QPS", crate::analysis::saturation::fmt_qps(l.qps_target)),
        };
        format!(
            "client-bound at {at} in {}: {}",
            r.name, l.client_bound_reason
        )
    })
}

fn fmt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}

fn capacity_line(base: &Run, new: &Run, max_regression: f64) -> Line {
    match (&base.summary.capacity, &new.summary.capacity) {
        (Some(b), Some(n)) => {
            let (bq, nq) = (b.qps.unwrap_or(0.0), n.qps.unwrap_or(0.0));
            let (bb, nb) = (b.bracket.unwrap_or([bq, bq]), n.bracket.unwrap_or([nq, nq]));
            let change = relative(bq, nq);
            // The capacity lies inside each bracket: brackets apart is a
            // real difference.
            let beyond = nb[1] < bb[0] || nb[0] > bb[1];
            Line {
                qps: None,
                metric: format!("capacity under SLO {}", b.slo),
                base: Some(bq),
                new: Some(nq),
                change,
                not_comparable: String::new(),
                beyond_noise: beyond,
                regression: beyond && change.is_some_and(|c| c < -max_regression),
                note: format!("brackets [{}, {}] and [{}, {}]", bb[0], bb[1], nb[0], nb[1]),
            }
        }
        _ => {
            let (b, n) = (
                base.summary.analysis.max_qps_without_errors,
                new.summary.analysis.max_qps_without_errors,
            );
            let change = match (b, n) {
                (Some(b), Some(n)) => relative(b, n),
                (Some(_), None) => Some(-1.0),
                _ => None,
            };
            Line {
                qps: None,
                metric: "max QPS without errors".into(),
                base: b,
                new: n,
                change,
                not_comparable: String::new(),
                beyond_noise: change.is_some_and(|c| c != 0.0),
                regression: change.is_some_and(|c| c < -max_regression),
                note: "levels are discrete: no noise model".into(),
            }
        }
    }
}

fn saturation_line(base: &Run, new: &Run) -> Line {
    let (b, n) = (
        base.summary.analysis.saturation_qps,
        new.summary.analysis.saturation_qps,
    );
    Line {
        qps: None,
        metric: "saturation point".into(),
        base: b,
        new: n,
        change: match (b, n) {
            (Some(b), Some(n)) => relative(b, n),
            _ => None,
        },
        not_comparable: String::new(),
        beyond_noise: b != n,
        regression: false,
        note: "shown, not judged (max QPS or capacity carries the verdict)".into(),
    }
}

fn success_line(base: &Run, new: &Run, max_regression: f64) -> Line {
    let rate = |r: &Run| {
        let (ok, all) = r
            .levels
            .iter()
            // A client-bound level measured the client (a capacity
            // search's repeated probes): its drops are not the endpoint's.
            .filter(|l| !l.client_bound)
            .fold((0u64, 0u64), |(o, a), l| (o + l.succeeded, a + l.scheduled));
        (all > 0).then(|| {
            let p = ok as f64 / all as f64;
            let half = 1.96 * (p * (1.0 - p) / all as f64).sqrt();
            Estimate {
                value: p,
                lo: p - half,
                hi: p + half,
            }
        })
    };
    // A drop in success rate counts in points, not relative: 100 % → 89 %
    // is an 11-point drop.
    let (b, n) = (rate(base), rate(new));
    let mut line = judge_estimates(None, "success rate".into(), b, n, false, max_regression);
    if let (Some(b), Some(n)) = (b, n) {
        line.change = Some(n.value - b.value);
        line.regression = line.beyond_noise && b.value - n.value > max_regression;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::level::LevelTiming;
    use crate::analysis::stats::LevelStats;
    use crate::client::record::RequestRecord;
    use std::time::Duration;

    /// A level of `n` requests with TTFT spread around `ttft_ms`.
    fn level(qps: f64, n: u64, ttft_ms: u64) -> LevelResult {
        let ms = Duration::from_millis;
        let mut s = LevelStats::new();
        for i in 0..n {
            let mut r = RequestRecord::new(i, ms(0), ms(0));
            let jitter = i * 7919 % 41; // 0..40 ms, deterministic
            r.first_token_at = Some(ms(ttft_ms + jitter));
            r.first_content_at = r.first_token_at;
            r.done_at = ms(ttft_ms + jitter + 500);
            r.token_chunks = 20;
            r.usage_output_tokens = Some(20);
            s.record(&r);
        }
        LevelResult::from_stats(
            &s,
            LevelTiming {
                qps_target: qps,
                duration: Duration::from_secs(10),
                send_window: Duration::from_secs(10),
                drain: Duration::ZERO,
                client: None,
                ..Default::default()
            },
        )
    }

    fn run(name: &str, levels: Vec<LevelResult>) -> Run {
        let summary = crate::analysis::summary::summarize(&levels, "complete");
        Run {
            name: name.into(),
            model: "m".into(),
            dataset: "d.json".into(),
            levels,
            summary,
        }
    }

    fn opts() -> Options {
        Options {
            max_regression: 0.10,
            metrics: MetricSpec::parse_list(DEFAULT_METRICS).unwrap(),
        }
    }

    #[test]
    fn the_same_numbers_are_no_regression() {
        let a = run("a", vec![level(5.0, 300, 100), level(10.0, 300, 120)]);
        let b = run("b", vec![level(5.0, 300, 102), level(10.0, 300, 119)]);
        let v = compare(&a, &b, &opts()).unwrap();
        assert_eq!(v.verdict, "ok", "{:#?}", v.lines);
    }

    #[test]
    fn a_slower_ttft_is_a_regression_and_a_faster_one_is_not() {
        let a = run("a", vec![level(5.0, 300, 100)]);
        let b = run("b", vec![level(5.0, 300, 130)]);
        let v = compare(&a, &b, &opts()).unwrap();
        assert_eq!(v.verdict, "regression");
        assert!(
            v.regressions.iter().any(|r| r.contains("ttft.p95")),
            "{:?}",
            v.regressions
        );
        let v = compare(&b, &a, &opts()).unwrap();
        assert_eq!(v.verdict, "ok");
    }

    #[test]
    fn a_change_within_noise_is_not_a_regression() {
        // 15 % slower, but from 8 requests each: the intervals overlap.
        let a = run("a", vec![level(5.0, 8, 100)]);
        let b = run("b", vec![level(5.0, 8, 115)]);
        let v = compare(&a, &b, &opts()).unwrap();
        let l = v.lines.iter().find(|l| l.metric == "ttft.p95").unwrap();
        assert!(!l.beyond_noise, "{l:?}");
        assert_eq!(v.verdict, "ok");
    }

    #[test]
    fn runs_that_differ_cannot_be_compared() {
        let a = run("a", vec![level(5.0, 10, 100)]);
        let mut b = run("b", vec![level(5.0, 10, 100)]);
        b.model = "other".into();
        assert!(
            compare(&a, &b, &opts())
                .unwrap_err()
                .0
                .contains("different models")
        );
        let c = run("c", vec![level(6.0, 10, 100)]);
        assert!(
            compare(&a, &c, &opts())
                .unwrap_err()
                .0
                .contains("different levels")
        );
        let mut d = run("d", vec![level(5.0, 10, 100)]);
        d.dataset = "other.json".into();
        assert!(
            compare(&a, &d, &opts())
                .unwrap_err()
                .0
                .contains("different datasets")
        );
    }

    #[test]
    fn metric_specs() {
        let MetricSpec::Level {
            field: Field::Ttft,
            stat: Stat::Quantile(q),
        } = MetricSpec::parse("ttft.p99.9").unwrap()
        else {
            panic!("ttft.p99.9")
        };
        assert!((q - 0.999).abs() < 1e-12);
        assert_eq!(MetricSpec::parse("e2e.p99").unwrap().name(), "e2e.p99");
        assert!(MetricSpec::parse("latency.p95").is_err());
        assert!(MetricSpec::parse("ttft.p150").is_err());
        assert!(MetricSpec::parse("ttft").is_err());
    }

    #[test]
    fn quantile_intervals_shrink_with_samples() {
        let small = level(5.0, 20, 100);
        let big = level(5.0, 2000, 100);
        let e = |l: &LevelResult| {
            estimate(l, Field::Ttft, Stat::Quantile(0.5))
                .unwrap()
                .unwrap()
        };
        let (s, b) = (e(&small), e(&big));
        assert!(s.lo <= s.value && s.value <= s.hi);
        assert!(b.hi - b.lo < s.hi - s.lo, "{s:?} {b:?}");
    }
}
