//! The `llmload` binary: parse, set up logging, run, exit with a code
//! that says what happened (0 ok, 1 failed, 2 bad input, 130 interrupted).

use clap::Parser;
use llmload::cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Exactly one rustls crypto provider, chosen explicitly (see
    // notes: two enabled providers make rustls panic at first use).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Daemon(_) | Command::Mock(_) => "info",
        _ => "warn",
    };
    llmload::base::logging::init(default_level);
    let workers = llmload::base::workers::init(cli.workers);
    llmload::plan::send_quantum::init(cli.send_quantum);
    // New requests arrive through the global queue (spawned by the pacer
    // thread): the runtime looks there often, or they would wait behind a
    // busy worker's local queue and show up as schedule lag.
    let runtime = match llmload::engine::sweep::runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            llmload::errln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(llmload::base::error::EXIT_FAILURE);
        }
    };
    llmload::base::limits::raise_nofile();
    llmload::base::limits::spawn_memory_trimmer(std::time::Duration::from_secs(5));
    let result = runtime.block_on(llmload::cli::commands::dispatch(cli));
    // Do not wait for stragglers (pooled connections, timers) to wind down.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            llmload::errln!("error: {e:#}");
            ExitCode::from(llmload::cli::commands::exit_code_for(&e))
        }
    }
}
