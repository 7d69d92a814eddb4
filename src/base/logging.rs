//! Log lines to stderr, filtered by `LLMLOAD_LOG` (or `RUST_LOG`).

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init(default_level: &str) {
    let filter = std::env::var("LLMLOAD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| {
            EnvFilter::new(format!("{default_level},hyper=warn,h2=warn,rustls=warn"))
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        // On a failed write (stderr closed) tracing-subscriber would report
        // the failure with eprintln!, which panics in whatever task logged:
        // a request task's panic used to hang the drain. Drop the line.
        .log_internal_errors(false)
        .try_init();
}
