//! `llmload daemon`: load and check the config, start telemetry and any
//! embedded mocks, then hand over to [`crate::daemon::run`].

use crate::base::error::{EXIT_OK, UsageError};
use crate::cli::DaemonArgs;
use crate::daemon::{config, plan_report, run, state::State};
use tokio_util::sync::CancellationToken;

pub async fn command(args: DaemonArgs) -> anyhow::Result<u8> {
    // SIGHUP reloads the config: installed first, so that a SIGHUP while
    // the daemon starts (datasets, tokenizers) never kills it; one that
    // arrives meanwhile is a reload once it runs.
    let mut hangups = crate::base::signals::hangups();
    let mut cfg = config::load(&args.config).map_err(|errs| {
        UsageError::new(format!(
            "{} problem(s) in {}:\n  {}",
            errs.len(),
            args.config.display(),
            errs.join("\n  ")
        ))
    })?;
    cfg.proxies = if args.no_proxy {
        crate::client::proxy::ProxySettings::direct()
    } else {
        crate::client::proxy::ProxySettings::from_env(&|k| std::env::var(k).ok())
            .map_err(UsageError::new)?
    };
    for t in cfg.targets.iter_mut().filter(|t| !t.spec.is_mock()) {
        t.spec.client.proxies = cfg.proxies.clone();
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
        cfg.listen_from_flag = true;
    }
    for w in &cfg.warnings {
        crate::errln!("warning: {w}");
    }
    let env = |k: &str| std::env::var(k).ok();
    let tel_settings = crate::observe::telemetry::Settings::resolve(
        args.otlp_endpoint.as_deref(),
        Some(&cfg.telemetry),
        &env,
    )
    .map_err(UsageError::new)?
    .map(|mut s| {
        s.proxies = cfg.proxies.clone();
        s
    });
    if args.check {
        crate::out!("{}", plan_report(&cfg, tel_settings.as_ref()));
        return Ok(EXIT_OK);
    }
    let telemetry = match tel_settings {
        Some(s) => Some(crate::observe::telemetry::Telemetry::start(s).map_err(UsageError::new)?),
        None => None,
    };
    // `endpoint = "mock"`: an embedded mock per such target, for demos.
    let mut mocks = Vec::new();
    for t in cfg.targets.iter_mut().filter(|t| t.spec.is_mock()) {
        mocks.push(crate::daemon::state::embedded_mock(t).await?);
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| UsageError::new(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener.local_addr()?;
    let state = State::new(cfg, telemetry.clone()).map_err(UsageError::new)?;
    state.mocks.lock().expect("mocks lock").extend(mocks);
    state.metrics.config.loaded_now();
    let reloader = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    h = hangups.recv() => if h.is_none() { return },
                    _ = state.shutting_down.cancelled() => return,
                }
                crate::daemon::reload::reload(&state, "SIGHUP").await;
            }
        })
    };
    // Announce the real address (port 0 picks one): scripts and tests read it.
    crate::errln!("llmload daemon listening on http://{addr}");
    tracing::info!(%addr, jobs = state.config().jobs.len(), "daemon started");
    let shutdown = CancellationToken::new();
    let code = run(state.clone(), listener, shutdown.clone(), async {
        crate::base::signals::next_stop().await;
    })
    .await;
    reloader.abort();
    if let Some(t) = telemetry {
        t.shutdown().await;
    }
    let mocks = std::mem::take(&mut *state.mocks.lock().expect("mocks lock"));
    for m in mocks {
        m.shutdown().await;
    }
    Ok(code)
}
