//! The subcommands: thin glue from parsed flags to the library.

pub mod alert_rules;
pub mod mock;
pub mod plot;
pub mod run;
pub mod selftest;

use crate::cli::{Cli, Command};

/// Run the chosen subcommand; the result is the process exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => run::run(*args).await,
        Command::Mock(args) => mock::mock(*args).await,
        Command::Daemon(args) => crate::daemon::command(args).await,
        Command::Plot(args) => plot::plot(args),
        Command::AlertRules(args) => alert_rules::alert_rules(args),
        Command::Selftest(args) => selftest::selftest(args).await,
    }
}
