//! The subcommands: thin glue from parsed flags to the library.

pub mod alert_rules;
pub mod capacity;
pub mod compare;
pub mod daemon;
pub mod merge;
pub mod mock;
pub mod plot;
pub mod run;
pub mod selftest;
pub mod setup;

use crate::cli::{Cli, Command};

/// Run the chosen subcommand; the result is the process exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => run::run(*args).await,
        Command::Capacity(args) => capacity::capacity(*args).await,
        Command::Compare(args) => compare::compare(args),
        Command::Merge(args) => merge::merge(args),
        Command::Mock(args) => mock::mock(*args).await,
        Command::Daemon(args) => daemon::command(args).await,
        Command::Plot(args) => plot::plot(args),
        Command::AlertRules(args) => alert_rules::alert_rules(args),
        Command::Selftest(args) => selftest::selftest(args).await,
    }
}

/// Exit code for an error that reached `main`: 2 for what the user gave
/// us (flags, files), 1 for everything else.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    use crate::base::error::{EXIT_FAILURE, EXIT_USAGE, UsageError};
    let usage = err.chain().any(|e| {
        e.is::<UsageError>()
            || e.is::<crate::workload::dataset::DatasetError>()
            || e.is::<crate::client::ClientBuildError>()
    });
    if usage { EXIT_USAGE } else { EXIT_FAILURE }
}

/// The last word on a run's files: "Results saved to DIR/" only when every
/// file was written; otherwise which were not (the errors name them), so
/// that nobody archives a directory that is missing its figure.
pub fn report_saved(dir: &std::path::Path, errors: &[String]) {
    if errors.is_empty() {
        crate::outln!("\nResults saved to {}/", dir.display());
        return;
    }
    crate::outln!(
        "\nResults NOT fully saved in {}/: {} write(s) failed (what was written is complete; nothing is half-written):",
        dir.display(),
        errors.len()
    );
    for e in errors {
        crate::errln!("error: {e}");
    }
}
