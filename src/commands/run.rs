//! `llmload run`: the seed's one-shot sweep. Glue only: flags → target →
//! engine → runner → console.

use super::setup::Session;
use crate::cli::RunArgs;
use crate::error::{EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, UsageError};
use crate::progress::ConsoleHooks;
use crate::results::{self, Metadata, RunInfo};
use crate::runner::{self, Outputs, RunStatus, RunWriter, SweepPlan};
use crate::slo::{Slo, SloTarget};
use crate::table;
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
    let slo = if args.slo.is_empty() {
        None
    } else {
        Some(Arc::new(SloTarget {
            slo: Slo::parse(&args.slo).map_err(|e| UsageError::new(format!("--slo {e}")))?,
            attainment: args.slo_attainment,
        }))
    };
    if args.show_tokens {
        crate::errln!("note: --show-tokens is deprecated: tokens/sec is always shown");
    }
    let a = &args.common;
    let session = Session::start(a, &args.qps).await?;
    let meta = Metadata::new(&RunInfo {
        target: &session.target,
        dataset: &a.dataset.display().to_string(),
        qps: &args.qps,
        duration: Some(args.duration),
        arrival: args.arrival,
        seed: a.seed,
        run_id: session.dir.id.clone(),
        percentiles: &args.percentiles,
        now: session.now,
        job: None,
        kind: "sweep",
    });
    let plan = SweepPlan {
        levels: args.qps.clone(),
        duration: args.duration,
        arrival: args.arrival,
        seed: a.seed,
        slo,
    };
    let outputs = Outputs {
        dir: session.dir.clone(),
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
        results::redact_url(session.target.endpoint()),
        session.dir.path.display()
    );
    let console = ConsoleHooks::new(session.telemetry.clone().zip(session.sweep_span.clone()));
    let report = runner::execute(
        &session.engine,
        &plan,
        &mut writer,
        &console,
        &stop,
        &cancel,
    )
    .await;
    signals.abort();

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
    if let Some(slo) = &plan.slo {
        crate::out!("{}", table::render_slo(&report.levels, slo));
    }
    for n in &report.notices {
        crate::outln!("note: {n}");
    }
    crate::outln!("\nResults saved to {}/", report.dir.path.display());
    for e in &report.write_errors {
        crate::errln!("error: {e}");
    }
    session.finish(&report.summary).await;
    Ok(if !report.write_errors.is_empty() {
        EXIT_FAILURE
    } else if report.status == RunStatus::Partial {
        EXIT_INTERRUPTED
    } else {
        EXIT_OK
    })
}

/// First signal: stop sending, give in-flight requests a short grace;
/// second signal (or the grace running out): abandon them.
pub async fn watch_signals(stop: CancellationToken, cancel: CancellationToken) {
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
