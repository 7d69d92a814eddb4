//! The signals users and supervisors send: Ctrl-C (SIGINT), SIGTERM and
//! SIGHUP (a dropped ssh session, `systemctl reload`, log rotation).
//!
//! A one-shot command treats all three as "stop, keep what was measured".
//! The daemon stops on SIGINT/SIGTERM and reloads its config on SIGHUP.

use std::sync::OnceLock;

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
    Hangup,
}

impl Signal {
    /// The exit code of a command this signal stopped (after it wrote its
    /// partial results). SIGHUP gets the shell's 128+1; SIGINT and SIGTERM
    /// keep the 130 they have always had.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Hangup => crate::base::error::EXIT_HANGUP,
            Self::Interrupt | Self::Terminate => crate::base::error::EXIT_INTERRUPTED,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
            Self::Hangup => "SIGHUP",
        }
    }
}

static FIRST: OnceLock<Signal> = OnceLock::new();

/// The first stop signal this process received, if any.
pub fn received() -> Option<Signal> {
    FIRST.get().copied()
}

/// Resolves at the next SIGINT or SIGTERM (the daemon's stop signals).
pub async fn next_stop() -> Signal {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let s = tokio::select! {
        _ = term.recv() => Signal::Terminate,
        _ = int.recv() => Signal::Interrupt,
    };
    let _ = FIRST.set(s);
    s
}

/// Resolves at the next SIGINT, SIGTERM or SIGHUP: any of them stops a
/// one-shot command.
pub async fn next() -> Signal {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    let s = tokio::select! {
        s = next_stop() => s,
        _ = hup.recv() => Signal::Hangup,
    };
    let _ = FIRST.set(s);
    s
}

/// SIGHUPs, one item each, for the daemon's reload. Installed once, at
/// start, so that a SIGHUP between two reloads is never the default
/// (terminating) action.
pub fn hangups() -> tokio::signal::unix::Signal {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).expect("installing a SIGHUP handler")
}
