//! `llmload mock`: an OpenAI-compatible endpoint that saturates like a real
//! inference server.
//!
//! Requests wait for one of `slots` decode slots in a queue of `queue`;
//! beyond that they are rejected at once (503, or 429 with `Retry-After`).
//! Decode slows as the batch grows. See [`capacity`] for the formulas. The
//! mock also injects faults on demand ([`faults`]) and records server-side
//! ground truth ([`truth`]) so the client's own timing can be checked.
//!
//! Layout: [`server`] accepts connections and routes; [`generate`] turns
//! one admitted request into its SSE byte stream; [`metrics`] is the mock's
//! own `/metrics`.

pub mod capacity;
pub mod faults;
pub mod generate;
pub mod metrics;
pub mod prefix_cache;
pub mod server;
pub mod state;
pub mod truth;

pub use server::MockServer;
pub use state::MockState;

use capacity::CapacityModel;
use faults::FaultSpec;
use std::time::Duration;

/// How many output tokens a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputTokens {
    /// The request's `max_tokens`, capped at N.
    Cap(u32),
    /// Uniform in A..=B (seeded), then capped by `max_tokens`.
    Range(u32, u32),
}

impl std::str::FromStr for OutputTokens {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("'{v}' is not a whole number of tokens"))
        };
        match s.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a == 0 || a > b {
                    return Err(format!(
                        "output-tokens range '{s}' must be A..B with 1 <= A <= B"
                    ));
                }
                Ok(Self::Range(a, b))
            }
            None => match num(s)? {
                0 => Err("output-tokens must be at least 1".into()),
                n => Ok(Self::Cap(n)),
            },
        }
    }
}

/// Everything that shapes the mock's behaviour.
#[derive(Debug, Clone)]
pub struct MockConfig {
    pub capacity: CapacityModel,
    /// Status for requests beyond slots + queue: 503 or 429.
    pub reject_status: u16,
    /// `Retry-After` seconds sent with 429.
    pub retry_after_s: u64,
    pub output_tokens: Option<OutputTokens>,
    /// Output tokens when the request sets no `max_tokens` and no cap is set.
    pub default_max_tokens: u32,
    pub chunk_tokens: u32,
    pub seed: u64,
    pub faults: Vec<FaultSpec>,
    pub stall_for: Duration,
    /// The model id listed by `/v1/models`; requests may name any model.
    pub model_name: String,
    /// How many recent requests `/debug/requests` keeps.
    pub truth_capacity: usize,
    /// Prefix cache size in tokens (0: no cache, every prompt token is
    /// prefilled and no `cached_tokens` is reported).
    pub prefix_cache_tokens: usize,
}

impl Default for MockConfig {
    /// The demo endpoint: about 24 requests/s of capacity with the bundled
    /// dataset, so the README's sweep shows a real saturation point.
    fn default() -> Self {
        Self {
            capacity: CapacityModel {
                slots: 32,
                queue: 32,
                ttft: Duration::from_millis(60),
                prefill_per_token: Duration::from_micros(50),
                tpot: Duration::from_millis(10),
                tpot_growth: 0.02,
            },
            reject_status: 503,
            retry_after_s: 1,
            output_tokens: Some(OutputTokens::Range(32, 128)),
            default_max_tokens: 128,
            chunk_tokens: 1,
            seed: 0,
            faults: Vec::new(),
            stall_for: Duration::from_secs(5),
            model_name: "mock".into(),
            truth_capacity: 100_000,
            prefix_cache_tokens: 0,
        }
    }
}

impl MockConfig {
    /// Mean output tokens a request with `max_tokens` gets.
    pub fn mean_output_tokens(&self, max_tokens: u32) -> f64 {
        match self.output_tokens {
            None => max_tokens as f64,
            Some(OutputTokens::Cap(n)) => n.min(max_tokens) as f64,
            Some(OutputTokens::Range(a, b)) => {
                // Mean of min(U(a..=b), max): exact for the discrete uniform.
                let n = (b - a + 1) as f64;
                (a..=b).map(|v| v.min(max_tokens) as f64).sum::<f64>() / n
            }
        }
    }

    /// Check knobs that clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        let total: f64 = self.faults.iter().map(|f| f.fraction).sum();
        if total > 1.0 + 1e-9 {
            return Err(format!("fault fractions add up to {total}, more than 1"));
        }
        if self.capacity.slots == 0 {
            return Err("--slots must be at least 1".into());
        }
        if self.chunk_tokens == 0 {
            return Err("--chunk-tokens must be at least 1".into());
        }
        if !matches!(self.reject_status, 429 | 503) {
            return Err(format!(
                "--reject-status {} is not supported: use 503 or 429",
                self.reject_status
            ));
        }
        if !self.capacity.tpot_growth.is_finite() || self.capacity.tpot_growth < 0.0 {
            return Err("--tpot-growth must be >= 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_tokens_parse() {
        assert_eq!("64".parse::<OutputTokens>(), Ok(OutputTokens::Cap(64)));
        assert_eq!(
            "32..128".parse::<OutputTokens>(),
            Ok(OutputTokens::Range(32, 128))
        );
        assert!("0".parse::<OutputTokens>().is_err());
        assert!("9..3".parse::<OutputTokens>().is_err());
        assert!("x".parse::<OutputTokens>().is_err());
    }

    #[test]
    fn mean_output() {
        let mut c = MockConfig {
            output_tokens: Some(OutputTokens::Range(10, 20)),
            ..Default::default()
        };
        assert_eq!(c.mean_output_tokens(512), 15.0);
        assert_eq!(c.mean_output_tokens(10), 10.0);
        c.output_tokens = None;
        assert_eq!(c.mean_output_tokens(7), 7.0);
    }
}
