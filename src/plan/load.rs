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

/// `1,4,16,64`: positive integers.
pub fn parse_concurrency_list(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
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
    if out.is_empty() {
        return Err("give at least one concurrency, e.g. 1,4,16,64".into());
    }
    Ok(out)
}

/// `10,50..100`: rates above 0 and ramps.
pub fn parse_rate_list(s: &str) -> Result<Vec<crate::plan::profile::RateLevel>, String> {
    let out: Vec<_> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(crate::plan::profile::RateLevel::parse)
        .collect::<Result<_, _>>()?;
    if out.is_empty() {
        return Err("give at least one rate, e.g. 1,5,10,20".into());
    }
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
}
