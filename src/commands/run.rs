//! `llmload run`: the seed's one-shot sweep. Glue only: flags → target →
//! engine → runner → console.

use crate::cli::RunArgs;
use crate::error::{EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, UsageError};
use crate::mock::{MockConfig, MockServer};
use crate::progress::ConsoleHooks;
use crate::request::prepare_all;
use crate::results::{self, Metadata, RunDir, RunInfo};
use crate::runner::{self, Outputs, RunStatus, RunWriter, SweepPlan};
use crate::sweep::{Engine, NoObserver, Observer};
use crate::table;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long in-flight requests may finish after Ctrl-C before they are
/// abandoned (a second Ctrl-C abandons them at once).
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// After in-flight requests are abandoned, the most the process may take
/// to finish writing before it exits regardless.
const STOP_BACKSTOP: Duration = Duration::from_secs(5);

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let mut target = args.target().map_err(UsageError::new)?;
    let problems: Vec<String> = target
        .validate()
        .into_iter()
        .map(|p| format!("{} {}", p.setting.flag(), p.message))
        .collect();
    if !problems.is_empty() {
        return Err(UsageError::new(problems.join("; ")).into());
    }
    warn_about_flags(&args);
    let convs = crate::dataset::load(&args.dataset)?;

    let mock = if target.is_mock() {
        let cfg = MockConfig {
            seed: args.seed,
            ..MockConfig::default()
        };
        let m = MockServer::start(cfg, "127.0.0.1:0".parse().expect("valid address"))
            .await
            .context("starting the built-in mock")?;
        crate::errln!("using the built-in mock endpoint at {}", m.chat_url());
        target.client.endpoint = m.chat_url();
        Some(m)
    } else {
        None
    };

    let env = |k: &str| std::env::var(k).ok();
    let telemetry =
        match crate::telemetry::Settings::resolve(args.otlp_endpoint.as_deref(), None, &env)
            .map_err(UsageError::new)?
        {
            Some(mut s) => {
                s.propagate = !args.no_trace_propagation;
                Some(crate::telemetry::Telemetry::start(s).map_err(UsageError::new)?)
            }
            None => None,
        };
    let client = Arc::new(
        target
            .build_client(telemetry.is_some())
            .map_err(|e| UsageError::new(e.to_string()))?,
    );
    let requests = Arc::new(prepare_all(&convs, &target.body_params()));

    let now = chrono::Local::now();
    let dir = RunDir::create(&args.results_dir, &results::stamp(&now)).with_context(|| {
        format!(
            "cannot create a run directory under {}",
            args.results_dir.display()
        )
    })?;
    let meta = Metadata::new(&RunInfo {
        target: &target,
        dataset: &args.dataset.display().to_string(),
        qps: &args.qps,
        duration: Some(args.duration),
        arrival: args.arrival,
        seed: args.seed,
        run_id: dir.id.clone(),
        percentiles: &args.percentiles,
        now,
        job: None,
        kind: "sweep",
    });

    let sweep_span = telemetry.as_ref().map(|t| {
        t.sweep_started(&crate::telemetry::SweepAttrs {
            target: &results::redact_url(target.endpoint()),
            model: &target.model,
            qps: &args.qps,
            run_id: &dir.id,
            job: None,
        })
    });
    let observer: Arc<dyn Observer> = match (&telemetry, &sweep_span) {
        (Some(t), Some(s)) => Arc::new(t.request_observer(
            s,
            &target.model,
            client.uri(),
            target.max_tokens,
            target.temperature,
        )),
        _ => Arc::new(NoObserver),
    };
    let observer: Arc<dyn Observer> = if args.record_requests {
        Arc::new(
            crate::requests_jsonl::RecordsObserver::create(&dir.path, Some(observer))
                .with_context(|| {
                    format!(
                        "creating {}",
                        dir.file(crate::requests_jsonl::RECORDS_FILE).display()
                    )
                })?,
        )
    } else {
        observer
    };
    let engine = Engine {
        client,
        requests,
        max_in_flight: target.max_in_flight,
        observer,
    };
    let plan = SweepPlan {
        levels: args.qps.clone(),
        duration: args.duration,
        arrival: args.arrival,
        seed: args.seed,
    };
    let outputs = Outputs {
        dir: dir.clone(),
        results_file: results::file_name_only(&args.output, results::DEFAULT_RESULTS_FILE),
        plot_file: args
            .plot
            .then(|| results::file_name_only(&args.plot_output, results::DEFAULT_PLOT_FILE)),
        plot_title: meta.plot_title(),
    };
    let mut writer = RunWriter::start(outputs, meta);

    let stop = CancellationToken::new();
    let cancel = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(stop.clone(), cancel.clone()));
    crate::errln!(
        "llmload: {} level(s) x {} against {} -> {}",
        plan.levels.len(),
        crate::duration::format(plan.duration),
        results::redact_url(target.endpoint()),
        dir.path.display()
    );
    let console = ConsoleHooks::new(telemetry.clone().zip(sweep_span.clone()));
    let report = runner::execute(&engine, &plan, &mut writer, &console, &stop, &cancel).await;
    signals.abort();
    if let (Some(t), Some(s)) = (&telemetry, &sweep_span) {
        t.sweep_finished(s, &report.summary);
        t.shutdown().await;
    }

    crate::out!(
        "\n{}",
        table::render_table(&report.levels, &args.percentiles)
    );
    crate::out!(
        "{}",
        table::render_analysis(
            &report.levels,
            &report.summary.analysis,
            report.status == RunStatus::Partial
        )
    );
    for n in &report.notices {
        crate::outln!("note: {n}");
    }
    crate::outln!("\nResults saved to {}/", report.dir.path.display());
    for e in &report.write_errors {
        crate::errln!("error: {e}");
    }
    if let Some(m) = mock {
        m.shutdown().await;
    }
    Ok(if !report.write_errors.is_empty() {
        EXIT_FAILURE
    } else if report.status == RunStatus::Partial {
        EXIT_INTERRUPTED
    } else {
        EXIT_OK
    })
}

fn warn_about_flags(args: &RunArgs) {
    if args.api_key.is_some() {
        crate::errln!(
            "warning: --api-key on the command line is visible to other users (ps, shell history); \
             prefer LLMLOAD_API_KEY=... in the environment or --api-key-file PATH"
        );
    }
    if args.show_tokens {
        crate::errln!("note: --show-tokens is deprecated: tokens/sec is always shown");
    }
    if args.insecure {
        crate::errln!(
            "WARNING: --insecure: TLS certificates are NOT verified; anyone on the path can \
             read the API key and the traffic. Use --ca-cert for private CAs instead."
        );
    }
}

/// First signal: stop sending, give in-flight requests a short grace;
/// second signal (or the grace running out): abandon them.
async fn watch_signals(stop: CancellationToken, cancel: CancellationToken) {
    crate::signals::next().await;
    crate::errln!(
        "\nstopping: waiting up to {}s for in-flight requests (Ctrl-C again to abandon them); \
         results so far are kept and marked partial",
        INTERRUPT_GRACE.as_secs()
    );
    stop.cancel();
    tokio::select! {
        _ = crate::signals::next() => {}
        _ = tokio::time::sleep(INTERRUPT_GRACE) => {}
    }
    cancel.cancel();
    // Abandoned requests end at once and the runner writes the partial
    // results in milliseconds. Should anything still hold the process up,
    // do not hang: finished levels are already on disk, marked partial.
    tokio::select! {
        _ = crate::signals::next() => {}
        _ = tokio::time::sleep(STOP_BACKSTOP) => {}
    }
    crate::errln!(
        "stopping took too long: exiting now; finished levels are in the results directory"
    );
    std::process::exit(EXIT_INTERRUPTED.into());
}
