//! The `[server]` and `[telemetry]` sections: where the daemon listens, where
//! results go, the API token and the shutdown grace.

use super::Problems;
use super::{DEFAULT_LISTEN, RawConfig, rel};
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

/// The `[server]` settings, validated.
pub(super) struct Server {
    pub listen: SocketAddr,
    pub results_dir: PathBuf,
    pub api_token: Option<String>,
    pub shutdown_grace: Duration,
}

pub(super) fn server(raw: &RawConfig, base: &Path, pr: &mut Problems) -> Server {
    let file = pr.file.clone();

    let listen = raw
        .server
        .listen
        .clone()
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(_) => {
            pr.err(
                "server.listen",
                format!("'{listen}' is not an address like 127.0.0.1:9464"),
            );
            DEFAULT_LISTEN.parse().expect("valid default")
        }
    };
    let results_dir = rel(base, raw.server.results_dir.as_deref().unwrap_or("results"));
    let shutdown_grace = match &raw.server.shutdown_grace {
        None => Duration::from_secs(10),
        Some(s) => crate::base::duration::parse(s).unwrap_or_else(|e| {
            pr.err("server.shutdown_grace", e);
            Duration::from_secs(10)
        }),
    };
    let mut api_token = None;
    match (&raw.server.api_token_env, &raw.server.api_token_file) {
        (Some(_), Some(_)) => pr.err(
            "server",
            "set api_token_env or api_token_file, not both".into(),
        ),
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => api_token = Some(v.trim().to_string()),
            _ => pr.warn(format!(
                "{file}: server.api_token_env: environment variable {var} is not set: the control API would refuse every POST"
            )),
        },
        (None, Some(f)) => match std::fs::read_to_string(rel(base, f)) {
            Ok(v) if !v.trim().is_empty() => api_token = Some(v.trim().to_string()),
            Ok(_) => pr.err("server.api_token_file", format!("{f} is empty")),
            Err(e) => pr.err("server.api_token_file", format!("cannot read {f}: {e}")),
        },
        (None, None) => {}
    }
    if let Some(r) = raw.telemetry.sample_ratio
        && !(0.0..=1.0).contains(&r)
    {
        pr.err(
            "telemetry.sample_ratio",
            format!("{r} must be between 0 and 1"),
        );
    }
    Server {
        listen,
        results_dir,
        api_token,
        shutdown_grace,
    }
}
