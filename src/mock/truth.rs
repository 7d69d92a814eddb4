//! Server-side ground truth: when the mock really wrote each request's
//! first token and last byte, on the shared monotonic clock.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;

/// One request as the server saw it. Times are `CLOCK_MONOTONIC` ns
/// (see [`crate::base::clock`]); 0 means "did not happen".
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Truth {
    /// The mock's request sequence number (also in the response id).
    pub seq: u64,
    pub received_ns: u64,
    /// When the first token-carrying event was handed to the connection.
    pub first_token_ns: u64,
    /// When the last byte of the body was handed to the connection.
    pub last_byte_ns: u64,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub status: u16,
    /// The fault injected, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<&'static str>,
    /// W3C trace context received, so tests can check propagation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Prompt tokens served from the prefix cache (with `--prefix-cache`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u32>,
    /// [`fnv1a`](super::prefix_cache::fnv1a) of each assistant message
    /// received, in order, and of the answer text streamed: a session's
    /// turn k carries the hashes of the answers to turns 1…k−1.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assistant_hashes: Vec<u64>,
    pub reply_hash: u64,
}

/// A bounded ring of the most recent requests: memory stays flat however
/// long the mock runs.
#[derive(Debug)]
pub struct TruthLog {
    ring: Mutex<VecDeque<Truth>>,
    capacity: usize,
}

impl TruthLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity,
        }
    }

    pub fn push(&self, t: Truth) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.ring.lock().expect("truth log poisoned");
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(t);
    }

    /// Records with `seq >= since`, oldest first; `clear` empties the log.
    pub fn snapshot(&self, since: u64, clear: bool) -> Vec<Truth> {
        let mut ring = self.ring.lock().expect("truth log poisoned");
        let out = ring.iter().filter(|t| t.seq >= since).cloned().collect();
        if clear {
            ring.clear();
        }
        out
    }
}
