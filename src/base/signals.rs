//! Ctrl-C and SIGTERM, the two ways users and supervisors ask us to stop.

/// Resolves at the next SIGINT or SIGTERM.
pub async fn next() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
