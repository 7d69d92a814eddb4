//! `llmload daemon`: scheduled and continuous sweeps.

use crate::cli::DaemonArgs;

pub async fn command(_args: DaemonArgs) -> anyhow::Result<u8> {
    Err(crate::error::UsageError::new("the daemon is not built yet").into())
}
