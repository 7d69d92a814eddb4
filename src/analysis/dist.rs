//! A distribution as the results files write it ([`Dist`]: percentiles,
//! mean, extremes, count), numbers rounded as they are written, and HDR
//! histograms serialized for exact merging later. Pure.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Latencies are recorded in microseconds from 1 µs to 1 hour, 3
/// significant digits (0.1 % relative error).
const MAX_MICROS: u64 = 3_600_000_000;

/// A latency histogram as every level records them.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static bounds are valid")
}

/// A latency in recorded units (µs, at least 1).
pub(crate) fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// Percentiles of one quantity. Seconds for latencies, tokens/s for rates.
/// With no samples every figure is 0 and `count` says so.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Dist {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub count: u64,
}

impl Dist {
    /// `scale` converts recorded units to reported ones (1e-6 for µs → s).
    pub fn from_histogram(h: &Histogram<u64>, scale: f64, decimals: i32) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let r = |v: f64| {
            let m = 10f64.powi(decimals);
            (v * scale * m).round() / m
        };
        Dist {
            p50: r(h.value_at_quantile(0.50) as f64),
            p90: r(h.value_at_quantile(0.90) as f64),
            p95: r(h.value_at_quantile(0.95) as f64),
            p99: r(h.value_at_quantile(0.99) as f64),
            mean: r(h.mean()),
            min: r(h.min() as f64),
            max: r(h.max() as f64),
            count: h.len(),
        }
    }

    /// The value at a percentile the console asked for (50, 95, 99, or
    /// any other, read from the histogram).
    pub fn at(&self, p: f64) -> Option<f64> {
        match p {
            50.0 => Some(self.p50),
            90.0 => Some(self.p90),
            95.0 => Some(self.p95),
            99.0 => Some(self.p99),
            _ => None,
        }
    }
}

/// `v` to `decimals` places, as the results files write numbers.
pub fn round(v: f64, decimals: i32) -> f64 {
    let m = 10f64.powi(decimals);
    (v * m).round() / m
}

/// HDR V2 + deflate + base64.
pub fn encode(h: &Histogram<u64>) -> String {
    use base64::Engine;
    use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .expect("serializing to memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Inverse of [`encode`].
pub fn decode(s: &str) -> Result<Histogram<u64>, String> {
    use base64::Engine;
    use hdrhistogram::serialization::Deserializer;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("bad base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("bad HDR histogram: {e:?}"))
}
