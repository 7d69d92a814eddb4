//! Service-level objectives: what makes one request *good*.
//!
//! `--slo ttft<=2s --slo tpot<=100ms` (or `--slo "ttft<=2s,tpot<=100ms"`):
//! a request is good when it succeeded and met every threshold. A level
//! meets its SLO when the good requests are at least `attainment` (0.99 by
//! default, MLPerf's p99) of the requests it *scheduled*: dropped and
//! failed requests count as not good, so shedding load cannot pass.

use crate::client::record::RequestRecord;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// MLPerf Inference's server scenario: 99 % of requests within bounds.
pub const DEFAULT_ATTAINMENT: f64 = 0.99;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// First token (reasoning counts).
    Ttft,
    /// First answer content.
    Ttfc,
    /// Time per output token after the first.
    Tpot,
    /// Scheduled send to end of stream.
    E2e,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Self::Ttft => "ttft",
            Self::Ttfc => "ttfc",
            Self::Tpot => "tpot",
            Self::E2e => "e2e",
        }
    }
}

/// One `metric<=limit`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub metric: Metric,
    #[serde(with = "secs")]
    pub limit: Duration,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Ok(Duration::from_secs_f64(v.max(0.0)))
    }
}

/// Every threshold a request must meet.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Slo {
    pub thresholds: Vec<Threshold>,
}

impl Slo {
    /// Parse `--slo` values; each may hold several comma-separated
    /// thresholds. A metric given twice keeps the stricter limit.
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Self, String> {
        let mut out = Slo::default();
        for spec in specs {
            for part in spec
                .as_ref()
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                let (name, limit) = part.split_once("<=").ok_or_else(|| {
                    format!("'{part}': expected METRIC<=DURATION, e.g. ttft<=2s or tpot<=100ms")
                })?;
                let metric = match name.trim().to_ascii_lowercase().as_str() {
                    "ttft" => Metric::Ttft,
                    "ttfc" => Metric::Ttfc,
                    "tpot" => Metric::Tpot,
                    "e2e" => Metric::E2e,
                    other => {
                        return Err(format!(
                            "'{part}': unknown metric '{other}' (use ttft, ttfc, tpot or e2e)"
                        ));
                    }
                };
                let limit =
                    crate::base::duration::parse(limit).map_err(|e| format!("'{part}': {e}"))?;
                if limit.is_zero() {
                    return Err(format!("'{part}': the limit must be above zero"));
                }
                match out.thresholds.iter_mut().find(|t| t.metric == metric) {
                    Some(t) => t.limit = t.limit.min(limit),
                    None => out.thresholds.push(Threshold { metric, limit }),
                }
            }
        }
        if out.thresholds.is_empty() {
            return Err("give at least one threshold, e.g. --slo ttft<=2s".into());
        }
        Ok(out)
    }

    pub fn limit(&self, metric: Metric) -> Option<Duration> {
        self.thresholds
            .iter()
            .find(|t| t.metric == metric)
            .map(|t| t.limit)
    }

    /// Succeeded and within every threshold. A threshold on a quantity
    /// the request does not have (TPOT of a one-token answer) is met.
    pub fn is_good(&self, r: &RequestRecord) -> bool {
        if !r.is_ok() {
            return false;
        }
        self.thresholds.iter().all(|t| {
            let v = match t.metric {
                Metric::Ttft => r.ttft(),
                Metric::Ttfc => r.ttfc(),
                Metric::Tpot => r.tpot(),
                Metric::E2e => Some(r.e2e()),
            };
            v.is_none_or(|v| v <= t.limit)
        })
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .thresholds
            .iter()
            .map(|t| format!("{}<={}", t.metric.name(), short(t.limit)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `1.5s`, `100ms`, `2s`: as users write limits.
fn short(d: Duration) -> String {
    let trim = |v: f64| {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    let secs = d.as_secs_f64();
    if secs >= 1.0 {
        format!("{}s", trim(secs))
    } else {
        format!("{}ms", trim(secs * 1000.0))
    }
}

/// The SLO and the share of scheduled requests that must meet it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloTarget {
    pub slo: Slo,
    pub attainment: f64,
}

impl SloTarget {
    pub fn validate_attainment(a: f64) -> Result<f64, String> {
        if a.is_finite() && a > 0.0 && a <= 1.0 {
            Ok(a)
        } else {
            Err(format!("{a} must be a share between 0 (excluded) and 1"))
        }
    }

    /// Bad requests a level of `planned` may have and still pass: the
    /// early-stop budget of a probe.
    pub fn allowed_bad(&self, planned: u64) -> u64 {
        ((1.0 - self.attainment) * planned as f64 + 1e-9).floor() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ttft_ms: u64, e2e_ms: u64, tokens: u32) -> RequestRecord {
        let ms = Duration::from_millis;
        let mut r = RequestRecord::new(0, ms(0), ms(0));
        r.first_token_at = Some(ms(ttft_ms));
        r.first_content_at = Some(ms(ttft_ms));
        r.done_at = ms(e2e_ms);
        r.token_chunks = tokens;
        r
    }

    #[test]
    fn specs_parse_into_thresholds() {
        let s = Slo::parse(&["ttft<=2s", "tpot<=100ms,e2e<=30s", " TTFT <= 1.5s"]).unwrap();
        assert_eq!(
            s.limit(Metric::Ttft),
            Some(Duration::from_millis(1500)),
            "stricter kept"
        );
        assert_eq!(s.limit(Metric::Tpot), Some(Duration::from_millis(100)));
        assert_eq!(s.limit(Metric::E2e), Some(Duration::from_secs(30)));
        assert_eq!(s.limit(Metric::Ttfc), None);
        assert_eq!(s.to_string(), "ttft<=1.5s,tpot<=100ms,e2e<=30s");
        for bad in ["ttft=2s", "latency<=1s", "ttft<=soon", "ttft<=0", ""] {
            assert!(Slo::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn good_means_succeeded_and_within_every_threshold() {
        let s = Slo::parse(&["ttft<=100ms,tpot<=10ms"]).unwrap();
        assert!(s.is_good(&rec(50, 140, 10)));
        assert!(!s.is_good(&rec(150, 240, 10)), "TTFT too slow");
        assert!(!s.is_good(&rec(50, 500, 10)), "TPOT too slow");
        assert!(s.is_good(&rec(50, 500, 1)), "no TPOT for one token");
        let mut failed = rec(10, 20, 3);
        failed.outcome = Err(crate::client::record::ErrorKind::Http(503));
        assert!(!s.is_good(&failed));
    }

    #[test]
    fn early_stop_budget() {
        let t = SloTarget {
            slo: Slo::parse(&["ttft<=1s"]).unwrap(),
            attainment: 0.99,
        };
        assert_eq!(t.allowed_bad(1000), 10);
        assert_eq!(t.allowed_bad(99), 0);
        assert_eq!(t.allowed_bad(100), 1);
        assert!(SloTarget::validate_attainment(1.2).is_err());
        assert!(SloTarget::validate_attainment(0.0).is_err());
    }
}
