//! `llmload run`: the seed's one-shot sweep. Glue only: flags → target →
//! engine → runner → console.

use super::setup::Session;
use crate::analysis::slo::{Slo, SloTarget};
use crate::base::error::{EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, UsageError};
use crate::cli::RunArgs;
use crate::cli::progress::ConsoleHooks;
use crate::engine::runner::{self, Outputs, RunStatus, RunWriter, SweepPlan};
use crate::observe::metrics::{JobMetrics, Metrics, MetricsObserver};
use crate::plan::load::Levels;
use crate::plan::schedule::Shard;
use crate::results::table;
use crate::results::{self, Metadata, RunInfo};
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
    let shard = shard_from(args.shard, &|k| std::env::var(k).ok()).map_err(UsageError::new)?;
    // Shards of one run share its id: the stamp of their common start.
    let stamp = match (args.start_at, shard) {
        (None, None) => None,
        (start, _) => {
            let at = start.map_or_else(chrono::Local::now, chrono::DateTime::<chrono::Local>::from);
            let stamp = crate::results::stamp(&at);
            Some(match shard {
                Some(s) => format!("{stamp}.shard-{}-of-{}", s.index, s.count),
                None => stamp,
            })
        }
    };
    if args.trace.is_none() {
        a.require_dataset()?;
    } else if a.dataset.is_some() {
        crate::errln!("note: --dataset is not used with --trace: the prompts come from the trace");
    }
    let order = match (&args.trace, &args.concurrency) {
        (Some(_), _) => None,
        (None, Some(c)) => crate::plan::load::order_note(
            "--concurrency",
            &c.iter().map(|u| f64::from(*u)).collect::<Vec<_>>(),
        ),
        (None, None) => crate::plan::load::order_note(
            "--qps",
            &args.qps.iter().map(|r| r.mean()).collect::<Vec<_>>(),
        ),
    };
    if let Some(note) = order {
        crate::errln!("{note}");
    }
    let nominal: Vec<f64> = match &args.concurrency {
        Some(_) => Vec::new(),
        None => args.qps.iter().map(|r| r.mean()).collect(),
    };
    let mut session = Session::start(a, &nominal, stamp.as_deref()).await?;
    session.engine.shard = shard;
    let levels = match (&args.trace, &args.concurrency) {
        (Some(path), _) => {
            let options = crate::plan::replay::ReplayOptions {
                speed: args.trace_speed,
                start: args.trace_start,
                duration: args.trace_duration,
                looping: args.trace_loop,
            };
            let replay = crate::plan::prompts::load_trace(
                path,
                args.trace_format,
                a.tokenizer.as_deref(),
                a.seed,
                &session.target,
                options,
            )
            .map_err(UsageError::new)?;
            Levels::Trace(Arc::new(replay))
        }
        (None, Some(c)) => Levels::Concurrency(c.clone()),
        (None, None) => Levels::Rates(args.qps.clone()),
    };
    let nominal = levels.nominal_qps();
    // The shards of one run share its id: the directory name without the
    // shard suffix.
    let run_id = match session.dir.id.split_once(".shard-") {
        Some((id, _)) => id.to_string(),
        None => session.dir.id.clone(),
    };
    let mut meta = Metadata::new(&RunInfo {
        target: &session.target,
        // A replay's "dataset" is its trace: replays of different traces
        // are not compared.
        dataset: &match (&args.trace, &a.dataset) {
            (Some(t), _) => t.display().to_string(),
            (None, Some(d)) => d.display().to_string(),
            (None, None) => String::new(),
        },
        qps: &nominal,
        duration: Some(args.duration),
        arrival: args.arrival,
        seed: a.seed,
        run_id,
        percentiles: &args.percentiles,
        now: session.now,
        job: None,
        kind: "sweep",
    });
    meta.shard = shard;
    meta.workload = session.workload.clone();
    meta.sessions = session
        .engine
        .sessions
        .as_ref()
        .filter(|_| args.trace.is_none())
        .map(|s| crate::results::SessionsMeta::new(&s.think));
    meta.describe_load(&levels, args.trace.as_deref(), args.max_concurrency);
    meta.start_at = args
        .start_at
        .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339());
    let plan = SweepPlan {
        levels,
        duration: args.duration,
        arrival: args.arrival,
        seed: a.seed,
        slo,
        timeline: args.start_at.map(|t| (t, args.level_gap)),
        max_concurrency: args.max_concurrency,
        warmup: args.warmup,
        series_step: args.series_interval,
    };
    if let Levels::Trace(r) = &plan.levels {
        let s = r.summary();
        crate::errln!(
            "trace: {} requests over {:.1}s ({} req/s mean, input {:.0} / output {:.0} tokens mean{}){}",
            s.requests,
            s.pass_s,
            crate::analysis::saturation::fmt_qps(s.mean_qps),
            s.input_tokens_mean,
            s.output_tokens_mean,
            s.prefix_reuse
                .map(|p| format!(", {:.1}% of input tokens in blocks seen before", p * 100.0))
                .unwrap_or_default(),
            if r.options.looping { ", looping" } else { "" }
        );
    }
    if let (Levels::Concurrency(c), Some(s)) = (&plan.levels, shard) {
        crate::errln!(
            "shard {}/{}: runs {} of each level's users ({})",
            s.index,
            s.count,
            if c.iter().all(|n| n % s.count == 0) {
                format!("1/{}", s.count)
            } else {
                "its share".to_string()
            },
            c.iter()
                .map(|n| crate::engine::workers_of(*n, Some(s)).to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    let live = match args.metrics_listen {
        Some(addr) => Some(
            LiveMetrics::serve(
                addr,
                &session.target,
                &mut session.engine,
                plan.slo.is_some(),
            )
            .await
            .map_err(|e| UsageError::new(format!("--metrics-listen {addr}: {e}")))?,
        ),
        None => None,
    };
    if let (Some(s), Some(t)) = (shard, args.start_at) {
        match std::time::SystemTime::now().duration_since(t) {
            Ok(late) if late > std::time::Duration::from_millis(1) => crate::errln!(
                "shard {}/{}: starting {:.3}s after --start-at; its late sends count as schedule lag",
                s.index,
                s.count,
                late.as_secs_f64()
            ),
            _ => crate::errln!("shard {}/{}: waiting for --start-at", s.index, s.count),
        }
    } else if let (Some(s), None) = (shard, args.start_at) {
        crate::errln!(
            "warning: shard {}/{} without --start-at: each shard starts when its process does, \
             so the shards' levels are not aligned (give every shard the same --start-at)",
            s.index,
            s.count
        );
    }
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
    let length = match &plan.levels {
        Levels::Trace(r) if !r.options.looping => crate::base::duration::format(r.pass()),
        _ => crate::base::duration::format(plan.duration),
    };
    crate::errln!(
        "llmload: {} {} x {length} against {} -> {}",
        plan.levels.len(),
        match &plan.levels {
            Levels::Concurrency(_) => "concurrency level(s)",
            Levels::Trace(_) => "trace replay",
            Levels::Rates(_) => "level(s)",
        },
        results::redact_url(session.target.endpoint()),
        session.dir.path.display()
    );
    let console = ConsoleHooks::new(session.telemetry.clone().zip(session.sweep_span.clone()));
    let hooks = LiveHooks {
        console: &console,
        live: live.as_ref(),
    };
    let report = runner::execute(&session.engine, &plan, &mut writer, &hooks, &stop, &cancel).await;
    signals.abort();
    if let Some(l) = &live {
        l.publish(&report);
    }

    crate::out!(
        "\n{}",
        table::render_table(&report.levels, &args.percentiles)
    );
    let partial = report.status == RunStatus::Partial;
    match &report.summary.concurrency {
        Some(c) => crate::out!("{}", table::render_concurrency(&report.levels, c, partial)),
        None => crate::out!(
            "{}",
            table::render_analysis(&report.levels, &report.summary.analysis, partial)
        ),
    }
    if let Some(s) = table::render_sessions(&report.levels) {
        crate::out!("{s}");
    }
    if let Some(q) = table::render_queue(&report.levels) {
        crate::out!("{q}");
    }
    if let Some(slo) = &plan.slo {
        crate::out!("{}", table::render_slo(&report.levels, slo));
    }
    for n in &report.notices {
        crate::outln!("note: {n}");
    }
    if let Some(n) = table::render_input_check(&report.levels) {
        crate::outln!("note: {n}");
    }
    super::report_saved(&report.dir.path, &report.write_errors);
    if let (Some(l), Some(d)) = (&live, args.metrics_linger) {
        l.linger(d, report.status == RunStatus::Partial).await;
    }
    session.finish(&report.summary).await;
    Ok(if !report.write_errors.is_empty() {
        EXIT_FAILURE
    } else if report.status == RunStatus::Partial {
        interrupted_exit()
    } else {
        EXIT_OK
    })
}

/// First signal: stop sending, give in-flight requests a short grace;
/// second signal (or the grace running out): abandon them.
pub async fn watch_signals(stop: CancellationToken, cancel: CancellationToken) {
    let signal = crate::base::signals::next().await;
    crate::errln!(
        "\n{}: stopping: waiting up to {}s for in-flight requests (Ctrl-C again to abandon them); \
         results so far are kept and marked partial",
        signal.name(),
        INTERRUPT_GRACE.as_secs()
    );
    stop.cancel();
    tokio::select! {
        _ = crate::base::signals::next() => {}
        _ = tokio::time::sleep(INTERRUPT_GRACE) => {}
    }
    cancel.cancel();
    // Abandoned requests end at once and the runner writes the partial
    // results in milliseconds. Should anything still hold the process up,
    // do not hang: finished levels are already on disk, marked partial.
    tokio::select! {
        _ = crate::base::signals::next() => {}
        _ = tokio::time::sleep(STOP_BACKSTOP) => {}
    }
    crate::errln!(
        "stopping took too long: exiting now; finished levels are in the results directory"
    );
    std::process::exit(interrupted_exit().into());
}

/// The exit code of a run a signal stopped: 129 for SIGHUP, 130 for
/// SIGINT and SIGTERM.
pub fn interrupted_exit() -> u8 {
    crate::base::signals::received().map_or(EXIT_INTERRUPTED, |s| s.exit_code())
}

/// The shard from `--shard`, else `LLMLOAD_SHARD=I/N`, else a Kubernetes
/// Indexed Job's `JOB_COMPLETION_INDEX` with `LLMLOAD_SHARDS=N`.
pub fn shard_from(
    flag: Option<Shard>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Shard>, String> {
    if flag.is_some() {
        return Ok(flag);
    }
    if let Some(v) = env("LLMLOAD_SHARD") {
        return Shard::parse(&v)
            .map(Some)
            .map_err(|e| format!("LLMLOAD_SHARD={v}: {e}"));
    }
    match (env("JOB_COMPLETION_INDEX"), env("LLMLOAD_SHARDS")) {
        (Some(i), Some(n)) => Shard::parse(&format!("{i}/{n}"))
            .map(Some)
            .map_err(|e| format!("JOB_COMPLETION_INDEX={i} with LLMLOAD_SHARDS={n}: {e}")),
        _ => Ok(None),
    }
}

/// `--metrics-listen`: the daemon's metrics for the length of one run, so
/// that Prometheus can scrape every shard.
pub struct LiveMetrics {
    metrics: Arc<Metrics>,
    job: JobMetrics,
    labels: [String; 3],
    /// This process's share of every level's rate: 1/N for shard I/N, so
    /// that the shards' target rates sum to the level's.
    share: f64,
    /// The run judges an SLO: goodput is published.
    has_slo: bool,
    started: std::time::Instant,
    stop: CancellationToken,
}

impl LiveMetrics {
    async fn serve(
        addr: std::net::SocketAddr,
        target: &crate::plan::target::Target,
        engine: &mut crate::engine::sweep::Engine,
        has_slo: bool,
    ) -> std::io::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        // Labels: the endpoint's host and port, the model, job "run".
        let host = target
            .endpoint()
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| {
                u.authority()
                    .map(|a| a.as_str().rsplit('@').next().unwrap_or("").to_string())
            })
            .unwrap_or_else(|| "endpoint".into());
        let labels = [host, target.model.clone(), "run".to_string()];
        let job = metrics.for_job(&labels[0], &labels[1], &labels[2]);
        metrics.up.set(1);
        metrics
            .start_time
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        crate::errln!(
            "serving metrics on http://{}/metrics",
            listener.local_addr()?
        );
        let m = metrics.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move { m.response() }
            }),
        );
        let stop = CancellationToken::new();
        tokio::spawn(crate::base::serve::serve(listener, app, stop.clone()));
        engine.observer = Arc::new(MetricsObserver {
            job: job.clone(),
            next: Some(engine.observer.clone()),
        });
        let share = engine.shard.map_or(1.0, |s| 1.0 / s.count as f64);
        Ok(Self {
            metrics,
            job,
            labels,
            share,
            has_slo,
            started: std::time::Instant::now(),
            stop,
        })
    }

    /// The capacity gauges, from a whole run only: a shard's levels hold
    /// its share of the requests at the run's target rates, so its own
    /// analysis would call every level saturated. A sharded run's
    /// capacity is the merged run's (`llmload merge`).
    fn publish(&self, report: &runner::SweepReport) {
        let [t, m, j] = &self.labels;
        if report.status == RunStatus::Complete && self.share == 1.0 {
            self.metrics.publish_capacity(
                [t.as_str(), m.as_str(), j.as_str()],
                &report.levels,
                &report.summary.analysis,
                chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
                self.started.elapsed().as_secs_f64(),
            );
        }
    }
}

impl LiveMetrics {
    /// `--metrics-linger`: serve the final figures a while longer, so that
    /// the next scrape sees the last level. Not after a signal (the user
    /// asked to stop), and a signal cuts it short.
    async fn linger(&self, d: Duration, interrupted: bool) {
        if interrupted {
            return;
        }
        crate::errln!(
            "serving metrics for another {} (--metrics-linger)",
            crate::base::duration::format(d)
        );
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = crate::base::signals::next() => {}
        }
    }
}

impl Drop for LiveMetrics {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Console progress, plus the live gauges when metrics are served.
struct LiveHooks<'a> {
    console: &'a ConsoleHooks,
    live: Option<&'a LiveMetrics>,
}

impl runner::SweepHooks for LiveHooks<'_> {
    fn warmed_up(&self, w: &crate::results::WarmupReport) {
        self.console.warmed_up(w);
    }

    fn level_started(
        &self,
        spec: &crate::engine::sweep::LevelSpec,
        levels: usize,
        planned: u64,
        run: &crate::engine::sweep::LevelRun,
    ) {
        self.console.level_started(spec, levels, planned, run);
        let Some(l) = self.live else {
            return;
        };
        l.job.target_qps.set(spec.qps * l.share);
        l.job.target_concurrency.set(
            spec.load
                .concurrency()
                .map_or(0, |n| i64::from(crate::engine::workers_of(n, None))),
        );
        let [t, _, j] = &l.labels;
        l.metrics
            .current_level
            .with_label_values(&[t.as_str(), j.as_str()])
            .set(spec.index as i64 + 1);
        // In flight, the achieved rate and goodput, once a second while the
        // level runs (the progress is dropped with the level), over the
        // same window as the daemon's.
        let (progress, job, stop) = (run.progress.clone(), l.job.clone(), l.stop.clone());
        let has_slo = l.has_slo;
        let share = l.share;
        tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            let mut window = crate::observe::metrics::RateWindow::default();
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                if Arc::strong_count(&progress) == 1 {
                    return;
                }
                job.in_flight
                    .set(progress.in_flight.load(Ordering::Relaxed) as i64);
                let pos = progress.trace_position_us.load(Ordering::Relaxed);
                if pos > 0 {
                    job.trace_position.set(pos as f64 * 1e-6);
                }
                let rate = progress.current_rate_milli.load(Ordering::Relaxed);
                if rate > 0 {
                    job.target_qps.set(rate as f64 / 1000.0 * share);
                }
                let sent = progress.scheduled.load(Ordering::Relaxed);
                let good = progress.good.load(Ordering::Relaxed);
                if let Some((achieved, goodput)) = window.push(sent, good) {
                    job.achieved_qps.set(achieved);
                    if has_slo {
                        job.goodput.set(goodput);
                    }
                }
            }
        });
    }

    fn level_finished(
        &self,
        spec: &crate::engine::sweep::LevelSpec,
        r: &crate::analysis::level::LevelResult,
    ) {
        self.console.level_finished(spec, r);
        if let Some(l) = self.live {
            l.job.in_flight.set(0);
            l.job.achieved_qps.set(0.0);
            l.job.goodput.set(0.0);
        }
    }
}
