//! What a level holds steady: a rate (flat or along a curve), a number of
//! concurrent users, or a trace's own timestamps.
//!
//! Open loop is the default because it is the only shape that cannot hide
//! a slow server: requests go out at their planned instants whatever the
//! earlier ones are doing. A closed loop (`Concurrency`) sends a worker's
//! next request only when its last one ends, so a server that slows down
//! receives fewer requests, and the delay it caused is never measured
//! (coordinated omission). It answers "how many users at once", the
//! question most published numbers are given for; capacity under an SLO
//! stays an open-loop rate.

use crate::plan::profile::Profile;
use crate::plan::replay::Replay;
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub enum Load {
    /// Open loop at the level's `qps`, the same rate throughout.
    #[default]
    Flat,
    /// Open loop along a curve (a `--qps 10..100` ramp, a soak's shape);
    /// the level's `qps` is the curve's mean over the level.
    Curve(Arc<Profile>),
    /// Closed loop: this many workers, each sending its next request as
    /// soon as its previous one ends.
    Concurrency(u32),
    /// Open loop at a trace's timestamps, with its lengths and prefixes.
    Trace(Arc<Replay>),
}

impl Load {
    /// The closed-loop worker count, if this is one.
    pub fn concurrency(&self) -> Option<u32> {
        match self {
            Self::Concurrency(n) => Some(*n),
            _ => None,
        }
    }

    /// The rate changes within the level: results get a time series.
    pub fn varies(&self) -> bool {
        matches!(self, Self::Curve(_) | Self::Trace(_))
    }

    /// `qps`, `ramp`, `concurrency` or `trace`: the level's kind in
    /// results, metrics and spans.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Flat => "qps",
            Self::Curve(_) => "ramp",
            Self::Concurrency(_) => "concurrency",
            Self::Trace(_) => "trace",
        }
    }
}

/// A sweep's levels: rates (each flat or a ramp), concurrencies, or the
/// one level of a trace replay.
#[derive(Debug, Clone)]
pub enum Levels {
    Rates(Vec<crate::plan::profile::RateLevel>),
    Concurrency(Vec<u32>),
    Trace(Arc<Replay>),
}

impl Levels {
    pub fn len(&self) -> usize {
        match self {
            Self::Rates(r) => r.len(),
            Self::Concurrency(c) => c.len(),
            Self::Trace(_) => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The seed's `qps_levels` (a ramp's mean; none for concurrency).
    pub fn nominal_qps(&self) -> Vec<f64> {
        match self {
            Self::Rates(r) => r.iter().map(|l| l.mean()).collect(),
            Self::Concurrency(_) => Vec::new(),
            Self::Trace(r) => vec![crate::analysis::stats::round(r.mean_qps(), 3)],
        }
    }

    /// `qps`, `concurrency` or `trace`: the metadata's `load`.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Rates(_) => "qps",
            Self::Concurrency(_) => "concurrency",
            Self::Trace(_) => "trace",
        }
    }
}

/// The items of a comma list, trimmed. An empty item (`5,,10`, a trailing
/// comma) is a typo, never skipped: the error names its position.
/// `what` names one item (`rate`), `example` a whole list.
pub fn list_items<'a>(s: &'a str, what: &str, example: &str) -> Result<Vec<&'a str>, String> {
    if s.trim().is_empty() {
        return Err(format!("give at least one {what}, e.g. {example}"));
    }
    let items: Vec<&str> = s.split(',').map(str::trim).collect();
    if let Some(i) = items.iter().position(|p| p.is_empty()) {
        return Err(format!(
            "item {} of '{s}' is empty (a stray comma?); expected e.g. {example}",
            i + 1
        ));
    }
    Ok(items)
}

/// A value listed twice is an error (it would run the same level twice and
/// its two results would share one label); `items` are the list's texts.
pub fn reject_duplicates<T: PartialEq>(values: &[T], items: &[&str]) -> Result<(), String> {
    for (j, v) in values.iter().enumerate() {
        if let Some(i) = values[..j].iter().position(|u| u == v) {
            return Err(format!(
                "'{}' is listed twice (items {} and {})",
                items[j],
                i + 1,
                j + 1
            ));
        }
    }
    Ok(())
}

/// A one-line note when a list of levels is not ascending: it runs in the
/// order given (a descending sweep is a legitimate test), but usually it
/// is a slip worth seeing.
pub fn order_note(flag: &str, keys: &[f64]) -> Option<String> {
    let sorted = keys.windows(2).all(|w| w[0] <= w[1]);
    (!sorted).then(|| {
        let shown: Vec<String> = keys
            .iter()
            .map(|k| crate::analysis::saturation::fmt_qps(*k))
            .collect();
        format!(
            "note: {flag} is not in ascending order; levels run as given: {}",
            shown.join(", ")
        )
    })
}

/// `1,4,16,64`: positive integers, no empty items, no duplicates.
pub fn parse_concurrency_list(s: &str) -> Result<Vec<u32>, String> {
    let items = list_items(s, "concurrency", "1,4,16,64")?;
    let mut out = Vec::new();
    for part in &items {
        let v: u32 = part.parse().map_err(|_| {
            format!("'{part}' is not a whole number of users (expected e.g. 1,4,16,64)")
        })?;
        if v == 0 {
            return Err(format!(
                "'{part}': a concurrency level needs at least 1 user"
            ));
        }
        out.push(v);
    }
    reject_duplicates(&out, &items)?;
    Ok(out)
}

/// `10,50..100`: rates above 0 and ramps, no empty items, no duplicates.
pub fn parse_rate_list(s: &str) -> Result<Vec<crate::plan::profile::RateLevel>, String> {
    let items = list_items(s, "rate", "1,5,10,20")?;
    let out: Vec<crate::plan::profile::RateLevel> = items
        .iter()
        .map(|p| crate::plan::profile::RateLevel::parse(p))
        .collect::<Result<_, _>>()?;
    let keys: Vec<(f64, f64)> = out.iter().map(|r| (r.from, r.to)).collect();
    reject_duplicates(&keys, &items)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        assert_eq!(
            parse_concurrency_list("1, 4,16,64").unwrap(),
            vec![1, 4, 16, 64]
        );
        assert!(
            parse_concurrency_list("0")
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(parse_concurrency_list("2.5").unwrap_err().contains("'2.5'"));
        assert!(parse_concurrency_list("").is_err());
        let r = parse_rate_list("5,10..100").unwrap();
        assert_eq!(r.len(), 2);
        assert!(r[1].is_ramp() && !r[0].is_ramp());
        assert_eq!(
            Levels::Rates(r.clone()).nominal_qps(),
            vec![5.0, 55.0],
            "a ramp's nominal rate is its mean"
        );
        assert!(parse_rate_list("x").unwrap_err().contains("'x'"));
    }

    #[test]
    fn lists_are_strict() {
        let e = parse_rate_list("5,,10").unwrap_err();
        assert!(e.contains("item 2") && e.contains("empty"), "{e}");
        assert!(parse_rate_list("5,10,").unwrap_err().contains("item 3"));
        assert!(parse_rate_list("").unwrap_err().contains("at least one"));
        let e = parse_rate_list("5,10,5").unwrap_err();
        assert!(e.contains("'5' is listed twice (items 1 and 3)"), "{e}");
        assert!(parse_rate_list("5,5..10").is_ok(), "a ramp from 5 is not 5");
        let e = parse_concurrency_list("4, ,8").unwrap_err();
        assert!(e.contains("item 2"), "{e}");
        assert!(
            parse_concurrency_list("4,8,4")
                .unwrap_err()
                .contains("twice")
        );
        assert_eq!(order_note("--qps", &[1.0, 5.0, 5.5]), None);
        let n = order_note("--qps", &[20.0, 5.0, 10.5]).unwrap();
        assert_eq!(
            n,
            "note: --qps is not in ascending order; levels run as given: 20, 5, 10.5"
        );
    }
}
