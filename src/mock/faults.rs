//! Fault injection: a fraction of requests misbehave in a chosen way.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// Answer 500 at once.
    Http500,
    /// Answer 503 at once (without going through admission).
    Http503,
    /// Answer 429 with `Retry-After`.
    Http429,
    /// Abort the connection mid-stream.
    Reset,
    /// End the stream cleanly but without a finish chunk or `[DONE]`.
    Truncate,
    /// Send one event whose data is not JSON, then carry on.
    Malformed,
    /// Go silent for `--stall-for` mid-stream, then carry on.
    Stall,
    /// Wait `--stall-for` before sending response headers.
    SlowFirstByte,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        Self::Http500,
        Self::Http503,
        Self::Http429,
        Self::Reset,
        Self::Truncate,
        Self::Malformed,
        Self::Stall,
        Self::SlowFirstByte,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Http500 => "http500",
            Self::Http503 => "http503",
            Self::Http429 => "http429",
            Self::Reset => "reset",
            Self::Truncate => "truncate",
            Self::Malformed => "malformed",
            Self::Stall => "stall",
            Self::SlowFirstByte => "slow-first-byte",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `--fault kind=fraction` flag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultSpec {
    pub kind: FaultKind,
    pub fraction: f64,
}

impl FromStr for FaultSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, frac) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}': expected KIND=FRACTION, e.g. http503=0.05"))?;
        let kind = FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == name.trim())
            .ok_or_else(|| {
                let names: Vec<_> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown fault '{name}': expected one of {}",
                    names.join(", ")
                )
            })?;
        let fraction: f64 = frac
            .trim()
            .parse()
            .map_err(|_| format!("'{frac}' in '{s}' is not a number"))?;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(format!(
                "fault fraction {fraction} in '{s}' must be within 0..1"
            ));
        }
        Ok(FaultSpec { kind, fraction })
    }
}

/// Pick the fault for a request from a uniform draw `u` in [0, 1): the
/// fractions are laid end to end, so they must sum to at most 1.
pub fn pick(specs: &[FaultSpec], u: f64) -> Option<FaultKind> {
    let mut acc = 0.0;
    for s in specs {
        acc += s.fraction;
        if u < acc {
            return Some(s.kind);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_pick() {
        let a: FaultSpec = "http503=0.25".parse().unwrap();
        let b: FaultSpec = "slow-first-byte=0.5".parse().unwrap();
        assert_eq!(a.kind, FaultKind::Http503);
        assert_eq!(pick(&[a, b], 0.1), Some(FaultKind::Http503));
        assert_eq!(pick(&[a, b], 0.3), Some(FaultKind::SlowFirstByte));
        assert_eq!(pick(&[a, b], 0.8), None);
        assert!(
            "nope=0.1"
                .parse::<FaultSpec>()
                .unwrap_err()
                .contains("http500")
        );
        assert!("reset=2".parse::<FaultSpec>().is_err());
        assert!("reset".parse::<FaultSpec>().is_err());
    }
}
