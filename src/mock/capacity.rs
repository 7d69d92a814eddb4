//! The mock's capacity model, as pure arithmetic.
//!
//! A request waits in the queue for one of `slots` decode slots, then:
//!
//! ```text
//! TTFT        = queue wait + ttft + prefill_per_token × input_tokens
//! token gap   = tpot × (1 + tpot_growth × (running − 1))
//! service     = ttft + prefill_per_token × input + (output − 1) × token gap
//! capacity    = slots / service(at running = slots)      [requests/s]
//! ```
//!
//! Offered load above `capacity` makes the queue grow until it holds
//! `queue` requests; further arrivals are rejected at once. Because every
//! number is computable from the knobs, tests can check that a sweep finds
//! the saturation point the model predicts.

use std::time::Duration;

/// `--queue unbounded`: a server that queues everything and never refuses.
pub const UNBOUNDED: usize = usize::MAX;

#[derive(Debug, Clone, PartialEq)]
pub struct CapacityModel {
    pub slots: usize,
    /// Requests that may wait; [`UNBOUNDED`] never refuses.
    pub queue: usize,
    pub ttft: Duration,
    pub prefill_per_token: Duration,
    pub tpot: Duration,
    pub tpot_growth: f64,
}

impl CapacityModel {
    /// Gap between consecutive tokens when `running` sequences decode.
    pub fn token_gap(&self, running: usize) -> Duration {
        let factor = 1.0 + self.tpot_growth * (running.max(1) - 1) as f64;
        self.tpot.mul_f64(factor.max(0.0))
    }

    /// Time from getting a slot to the first token.
    pub fn prefill(&self, input_tokens: u32) -> Duration {
        self.ttft + self.prefill_per_token * input_tokens
    }

    /// Slot occupancy of one request at a steady batch of `running`.
    pub fn service_time(&self, input_tokens: u32, output_tokens: u32, running: usize) -> Duration {
        self.prefill(input_tokens) + self.token_gap(running) * output_tokens.saturating_sub(1)
    }

    /// Requests/s the server completes without the queue growing.
    pub fn capacity_rps(&self, input_tokens: u32, output_tokens: u32) -> f64 {
        let s = self
            .service_time(input_tokens, output_tokens, self.slots)
            .as_secs_f64();
        if s <= 0.0 {
            f64::INFINITY
        } else {
            self.slots as f64 / s
        }
    }
}

/// A multi-turn workload, for the capacity statement: sessions of `turns`
/// turns, the first of `first_input` prompt tokens, each later one adding
/// `turn_input` user tokens to the history (and the previous answer's
/// `output`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionShape {
    pub turns: u32,
    pub first_input: u32,
    pub turn_input: u32,
    pub output: f64,
}

/// Prompt tokens per request of a session workload, with and without a
/// prefix cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prefill {
    /// Mean prompt tokens a request carries (history included).
    pub mean_input: f64,
    /// Mean prompt tokens prefill computes: all of them without a cache;
    /// with one, the first turn's and each later turn's new tokens plus
    /// the half block (8 tokens) left uncached at the end of the history.
    pub mean_uncached: f64,
    /// The longest history a session reaches.
    pub longest: f64,
    /// The cache holds `slots` such histories at once: below that, the
    /// figure is optimistic (evictions cost prefill again).
    pub cache_holds: bool,
}

impl SessionShape {
    pub fn prefill(&self, cache_tokens: usize, slots: usize) -> Prefill {
        let t = self.turns.max(1) as f64;
        let step = self.turn_input as f64 + self.output;
        let mean_input = self.first_input as f64 + (t - 1.0) / 2.0 * step;
        let longest = self.first_input as f64 + (t - 1.0) * step;
        let block = super::prefix_cache::BLOCK_TOKENS as f64;
        let mean_uncached = if cache_tokens == 0 {
            mean_input
        } else {
            (self.first_input as f64 + (t - 1.0) * (self.turn_input as f64 + block / 2.0)) / t
        };
        Prefill {
            mean_input,
            mean_uncached: mean_uncached.min(mean_input),
            longest,
            cache_holds: cache_tokens as f64 >= slots as f64 * longest,
        }
    }
}

/// Rough input-token estimate from text: 4 characters a token, at least 1.
/// The same rule the mock uses for `prompt_tokens` and prefill time.
pub fn estimate_tokens(chars: usize) -> u32 {
    crate::workload::synthetic::estimate_tokens(chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn formulas() {
        let m = CapacityModel {
            slots: 4,
            queue: 4,
            ttft: ms(50),
            prefill_per_token: Duration::from_micros(100),
            tpot: ms(10),
            tpot_growth: 0.5,
        };
        assert_eq!(m.token_gap(1), ms(10));
        assert_eq!(m.token_gap(3), ms(20));
        assert_eq!(m.token_gap(0), ms(10));
        assert_eq!(m.prefill(100), ms(60));
        // At a full batch of 4 the gap is 25 ms: 60 + 9 × 25 = 285 ms.
        assert_eq!(m.service_time(100, 10, 4), ms(285));
        let cap = m.capacity_rps(100, 10);
        assert!((cap - 4.0 / 0.285).abs() < 1e-9, "{cap}");
        assert_eq!(estimate_tokens(0), 1);
        // 8 turns of 64 new tokens on a 512-token start, 32 out each.
        let s = SessionShape {
            turns: 8,
            first_input: 512,
            turn_input: 64,
            output: 32.0,
        };
        let off = s.prefill(0, 4);
        assert_eq!(off.mean_input, 512.0 + 3.5 * 96.0);
        assert_eq!(off.mean_uncached, off.mean_input);
        let on = s.prefill(1 << 20, 4);
        assert_eq!(on.mean_uncached, (512.0 + 7.0 * 72.0) / 8.0);
        assert!(on.cache_holds);
        assert!(!s.prefill(1000, 4).cache_holds);
        assert_eq!(estimate_tokens(9), 3);
    }
}
