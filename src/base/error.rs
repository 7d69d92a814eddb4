//! Exit codes and the error that means "the user asked for something
//! impossible" (exit 2), as opposed to "something failed" (exit 1).

use thiserror::Error;

/// Success.
pub const EXIT_OK: u8 = 0;
/// The run could not do its job (results not written, daemon failed).
pub const EXIT_FAILURE: u8 = 1;
/// Bad flags, config or dataset: nothing was sent.
pub const EXIT_USAGE: u8 = 2;
/// `llmload capacity`: even `--min-qps` misses the SLO.
pub const EXIT_CAPACITY_BELOW: u8 = 3;
/// `llmload capacity`: `--max-qps` still meets the SLO.
pub const EXIT_CAPACITY_ABOVE: u8 = 4;
/// `llmload capacity`: the client, not the endpoint, was the limit in every
/// repeat of a probe; no capacity is claimed.
pub const EXIT_CAPACITY_INCONCLUSIVE: u8 = 5;
/// Stopped by Ctrl-C / SIGTERM; results are written and marked partial.
pub const EXIT_INTERRUPTED: u8 = 130;
/// Stopped by SIGHUP (a dropped ssh session); results are written and
/// marked partial, as for SIGTERM.
pub const EXIT_HANGUP: u8 = 129;

/// A mistake in what the user gave us. The message names the flag, file
/// or key and what is wrong with it.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}
