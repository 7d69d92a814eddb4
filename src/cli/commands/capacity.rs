//! `llmload capacity`: the highest rate the endpoint holds under an SLO.
//! Glue only: flags → plan → [`crate::engine::capacity::search`] → console.

use super::run::watch_signals;
use super::setup::Session;
use crate::analysis::level::LevelResult;
use crate::analysis::search::{Outcome, SearchConfig};
use crate::analysis::slo::{Slo, SloTarget};
use crate::base::error::{
    EXIT_CAPACITY_ABOVE, EXIT_CAPACITY_BELOW, EXIT_CAPACITY_INCONCLUSIVE, EXIT_FAILURE, EXIT_OK,
    UsageError,
};
use crate::cli::CapacityArgs;
use crate::cli::progress::ConsoleHooks;
use crate::engine::capacity::{self, CapacityHooks, CapacityPlan};
use crate::engine::runner::{Outputs, RunWriter, SweepHooks};
use crate::engine::sweep::{LevelRun, LevelSpec};
use crate::results::{self, Metadata, ProbeSummary, RunInfo};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub async fn capacity(args: CapacityArgs) -> anyhow::Result<u8> {
    let slo = Slo::parse(&args.slo).map_err(|e| UsageError::new(format!("--slo {e}")))?;
    if args.min_qps >= args.max_qps {
        return Err(UsageError::new(format!(
            "--min-qps {} must be below --max-qps {}",
            args.min_qps, args.max_qps
        ))
        .into());
    }
    if args.concurrency && args.min_users >= args.max_users {
        return Err(UsageError::new(format!(
            "--min-users {} must be below --max-users {}",
            args.min_users, args.max_users
        ))
        .into());
    }
    let (min, max) = if args.concurrency {
        (args.min_users as f64, args.max_users as f64)
    } else {
        (args.min_qps, args.max_qps)
    };
    let plan = CapacityPlan {
        slo: Arc::new(SloTarget {
            slo,
            attainment: args.slo_attainment,
        }),
        search: SearchConfig {
            min_qps: min,
            max_qps: max,
            precision: args.precision,
            integer: args.concurrency,
        },
        concurrency: args.concurrency,
        probe_duration: args.probe_duration,
        confirm_duration: args.confirm_duration,
        arrival: args.arrival,
        seed: args.common.seed,
    };
    let a = &args.common;
    let dataset = a.require_dataset()?;
    let session = Session::start(a, &[args.min_qps, args.max_qps], None).await?;
    let mut meta = Metadata::new(&RunInfo {
        target: &session.target,
        dataset: &dataset.display().to_string(),
        qps: &[],
        duration: Some(args.probe_duration),
        arrival: args.arrival,
        seed: a.seed,
        run_id: session.dir.id.clone(),
        percentiles: &[50.0, 95.0, 99.0],
        now: session.now,
        job: None,
        kind: "capacity",
    });
    meta.workload = session.workload.clone();
    meta.sessions = session
        .engine
        .sessions
        .as_ref()
        .map(|s| crate::results::SessionsMeta::new(&s.think));
    let outputs = Outputs {
        dir: session.dir.clone(),
        results_file: results::DEFAULT_RESULTS_FILE.into(),
        plot_file: (!args.no_plot).then(|| results::DEFAULT_PLOT_FILE.into()),
        plot_title: format!("{} (capacity under {})", meta.plot_title(), plan.slo.slo),
    };
    let mut writer = RunWriter::start(outputs, meta);
    let stop = CancellationToken::new();
    let cancel = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(stop.clone(), cancel.clone()));
    crate::errln!(
        "llmload capacity: SLO {} ({}% of requests) against {}, {}..{} {}, precision {}% -> {}",
        plan.slo.slo,
        crate::analysis::saturation::fmt_qps(plan.slo.attainment * 100.0),
        results::redact_url(session.target.endpoint()),
        crate::analysis::saturation::fmt_qps(min),
        crate::analysis::saturation::fmt_qps(max),
        if args.concurrency {
            "concurrent users"
        } else if session.engine.sessions.is_some() {
            "new sessions/s"
        } else {
            "req/s"
        },
        crate::analysis::saturation::fmt_qps(args.precision * 100.0),
        session.dir.path.display()
    );
    let console = Console(
        ConsoleHooks::new(session.telemetry.clone().zip(session.sweep_span.clone())),
        args.concurrency,
        session.engine.sessions.is_some(),
    );
    let report = capacity::search(
        &session.engine,
        &plan,
        &mut writer,
        &console,
        &stop,
        &cancel,
    )
    .await;
    signals.abort();
    if let Some(c) = &report.summary.capacity {
        crate::out!("\n{}", crate::results::table::render_capacity(c));
    }
    for n in &report.notices {
        crate::outln!("note: {n}");
    }
    super::report_saved(&session.dir.path, &report.write_errors);
    session.finish(&report.summary).await;
    Ok(if !report.write_errors.is_empty() {
        EXIT_FAILURE
    } else {
        match report.outcome {
            None if report.inconclusive.is_some() => EXIT_CAPACITY_INCONCLUSIVE,
            None => super::run::interrupted_exit(),
            Some(Outcome::Found { .. }) => EXIT_OK,
            Some(Outcome::BelowRange) => EXIT_CAPACITY_BELOW,
            Some(Outcome::AboveRange) => EXIT_CAPACITY_ABOVE,
        }
    })
}

/// Progress per probe on stderr.
/// The console hooks; whether probes are users; whether they are sessions.
struct Console(ConsoleHooks, bool, bool);

impl SweepHooks for Console {
    fn level_started(&self, spec: &LevelSpec, _levels: usize, planned: u64, run: &LevelRun) {
        self.0.level_started(spec, 0, planned, run);
    }
    fn level_finished(&self, spec: &LevelSpec, r: &LevelResult) {
        self.0.level_finished(spec, r);
    }
}

impl CapacityHooks for Console {
    fn probe_finished(&self, p: &ProbeSummary) {
        crate::errln!(
            "  probe {} ({}) at {}: {}{}{}",
            p.index,
            p.phase,
            if self.1 {
                format!("{} users", p.qps)
            } else if self.2 {
                format!("{} sessions/s", crate::analysis::saturation::fmt_qps(p.qps))
            } else {
                format!("{} req/s", crate::analysis::saturation::fmt_qps(p.qps))
            },
            p.verdict,
            if p.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", p.reason)
            },
            if p.cooldown_s > 0.0 {
                format!("; cooled down {:.1}s", p.cooldown_s)
            } else {
                String::new()
            }
        );
    }
}
