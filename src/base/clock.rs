//! A monotonic clock shared between processes.
//!
//! `std::time::Instant` cannot be compared across processes, but on Linux
//! it reads `CLOCK_MONOTONIC`, which every process on the machine shares.
//! Reading that clock directly lets the mock (one process) and the client
//! (another) stamp events on one time line, which is how the self-test
//! measures the client's timing error against the server's ground truth.

use std::time::{Duration, Instant};

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC is
    // always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An `Instant` paired with the same moment on the shared clock, so
/// offsets from the `Instant` can be turned into shared-clock stamps.
#[derive(Debug, Clone, Copy)]
pub struct Anchor {
    pub instant: Instant,
    pub mono_ns: u64,
}

impl Anchor {
    pub fn now() -> Self {
        // Both read CLOCK_MONOTONIC back to back: the skew is one clock
        // read (~20 ns on vDSO).
        let a = Instant::now();
        let m = mono_ns();
        Self {
            instant: a,
            mono_ns: m,
        }
    }

    /// Shared-clock nanoseconds of `instant + offset`.
    pub fn ns_at(&self, offset: Duration) -> u64 {
        self.mono_ns + offset.as_nanos() as u64
    }
}
