//! Running jobs: firing, target coordination, sweeps and soaks.
//!
//! One target never carries two jobs' load at once:
//! * a sweep holds its target's `sweep_lock` for its whole run, so a sweep
//!   that fires while another sweep runs there waits ("delayed");
//! * a sweep that starts while a soak runs on its target pauses the soak's
//!   pacer and resumes it afterwards ("soak pause");
//! * a soak only starts when no sweep holds the target;
//! * a job that fires while it is still running is skipped.
//!
//! Each is logged and counted in `llmload_job_fires_total` /
//! `llmload_soak_pauses_total`.

use super::config::{Job, JobKind};
use super::index::RunEntry;
use super::state::{ActiveRun, State, TargetSlot};
use crate::analysis::level::{LevelResult, LevelTiming};
use crate::engine::capacity::CapacityPlan;
use crate::engine::runner::{self, Outputs, RunStatus, RunWriter, SweepHooks, SweepPlan};
use crate::engine::sweep::{Engine, LevelRun, LevelSpec, Observer, Progress};
use crate::observe::metrics::{JobMetrics, MetricsObserver};
use crate::plan::load::{Levels, Load};
use crate::plan::profile::RateLevel;
use crate::results::{self, Metadata, RunDir, RunInfo};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `llmload_job_fires_total{job, result}`.
fn count_fire(state: &State, job: &Job, result: &str) {
    state
        .metrics
        .fires
        .with_label_values(&[&job.name, result])
        .inc();
}

/// Why a fire did not start a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireRefusal {
    AlreadyRunning,
    ShuttingDown,
}

/// Fire `job` now (from the schedule or the API). The run proceeds in
/// the background; this only decides whether it starts.
pub fn fire(state: &Arc<State>, job: &Job) -> Result<(), FireRefusal> {
    if state.shutting_down.is_cancelled() {
        return Err(FireRefusal::ShuttingDown);
    }
    if !state
        .busy_jobs
        .lock()
        .expect("busy lock")
        .insert(job.name.clone())
    {
        count_fire(state, job, "skipped");
        tracing::warn!(job = %job.name, "fire skipped: the previous run of this job is still going");
        return Err(FireRefusal::AlreadyRunning);
    }
    let state = state.clone();
    let job = job.clone();
    let generation = state.generation(&job.name);
    tokio::spawn(async move {
        let Some(slot) = state.slot(&job.target) else {
            tracing::error!(job = %job.name, target = %job.target, "fire dropped: the target is no longer configured");
            state.busy_jobs.lock().expect("busy lock").remove(&job.name);
            return;
        };
        match job.kind {
            JobKind::Sweep | JobKind::Capacity => run_sweep(&state, &job, &slot, &generation).await,
            JobKind::Soak => run_soak(&state, &job, &slot, &generation).await,
        }
        state.busy_jobs.lock().expect("busy lock").remove(&job.name);
    });
    Ok(())
}

/// A fire that waited for its target is still what the config says: a
/// reload may have changed or removed the job, or its target, meanwhile
/// (the new definition is scheduled afresh).
fn current(
    state: &State,
    job: &Job,
    slot: &Arc<TargetSlot>,
    generation: &CancellationToken,
) -> bool {
    let same = !generation.is_cancelled()
        && state
            .job(&job.name)
            .is_some_and(|j| j.definition == job.definition)
        && state
            .slot(&job.target)
            .is_some_and(|s| Arc::ptr_eq(&s, slot));
    if !same {
        tracing::info!(job = %job.name, "fire dropped: a reload changed or removed the job while it waited");
    }
    same
}

/// Everything a run of either kind needs, created when it starts.
struct Started {
    active: Arc<ActiveRun>,
    writer: RunWriter,
    entry: RunEntry,
    engine: Engine,
    job_metrics: JobMetrics,
    sweep_span: Option<crate::observe::telemetry::SweepSpan>,
    /// What it sends (none for a capacity search).
    levels: Option<Levels>,
}

/// What a sweep or soak job sends (`None` for a capacity search).
fn job_levels(job: &Job, slot: &TargetSlot) -> Result<Option<Levels>, String> {
    if job.capacity.is_some() {
        return Ok(None);
    }
    let t = &slot.target;
    Ok(Some(match (&job.trace, job.concurrency.is_empty()) {
        (Some(tr), _) => Levels::Trace(Arc::new(crate::plan::prompts::replay_of(
            tr.trace.clone(),
            t.tokenizer.as_deref(),
            job.seed,
            &t.spec,
            tr.options.clone(),
        )?)),
        (None, false) => Levels::Concurrency(job.concurrency.clone()),
        (None, true) => Levels::Rates(job.qps.iter().map(|q| RateLevel::flat(*q)).collect()),
    }))
}

fn start_run(state: &Arc<State>, job: &Job, slot: &TargetSlot) -> Result<Started, String> {
    let t = &slot.target;
    let levels = job_levels(job, slot)?;
    let now = chrono::Local::now();
    let root = state.config().results_dir.join(&t.name);
    let dir = RunDir::create(&root, &results::stamp(&now)).map_err(|e| {
        format!(
            "cannot create a run directory under {}: {e}",
            root.display()
        )
    })?;
    let run_id = format!("{}.{}", t.name, dir.id);
    let mut meta = Metadata::new(&RunInfo {
        target: &t.spec,
        dataset: &t.dataset.display().to_string(),
        qps: &job.qps,
        duration: job.duration,
        arrival: job.arrival,
        seed: job.seed,
        run_id: run_id.clone(),
        percentiles: &[50.0, 95.0, 99.0],
        now,
        job: Some((&job.name, &t.name)),
        kind: job.kind.as_str(),
    });
    meta.workload = Some(slot.workload.clone());
    meta.sessions = slot
        .sessions
        .as_ref()
        .map(|s| crate::results::SessionsMeta::new(&s.think));
    if let Some(levels) = &levels {
        meta.describe_load(
            levels,
            job.trace.as_ref().map(|t| t.path.as_path()),
            job.max_concurrency,
        );
        if let Some(t) = &job.trace {
            meta.workload = None;
            meta.sessions = None;
            meta.dataset = t.path.display().to_string();
        }
    }
    let writer = RunWriter::start(
        Outputs {
            dir: dir.clone(),
            results_file: results::DEFAULT_RESULTS_FILE.into(),
            plot_file: job.plot.then(|| results::DEFAULT_PLOT_FILE.into()),
            plot_title: meta.plot_title(),
        },
        meta,
    );
    let entry = RunEntry {
        id: run_id.clone(),
        target: t.name.clone(),
        job: job.name.clone(),
        kind: job.kind.as_str().into(),
        dir: format!("{}/{}", t.name, dir.id),
        started_at: now.to_rfc3339(),
        finished_at: None,
        status: "running".into(),
        max_qps_without_errors: None,
        saturation_qps: None,
        recommended_qps: None,
        error: None,
    };
    if let Err(e) = state.index.put(entry.clone()) {
        state.record_write_errors(&t.name, &[format!("run index: {e}")]);
    }
    let job_metrics = state.metrics.for_job(&t.name, t.model(), &job.name);
    let sweep_span = state.telemetry.as_ref().map(|tel| {
        tel.sweep_started(&crate::observe::telemetry::SweepAttrs {
            target: &t.name,
            model: t.model(),
            qps: &job.qps,
            run_id: &run_id,
            job: Some(&job.name),
        })
    });
    let next: Option<Arc<dyn Observer>> = match (&state.telemetry, &sweep_span) {
        (Some(tel), Some(span)) => Some(Arc::new(tel.request_observer(
            span,
            t.model(),
            slot.client.uri(),
            t.spec.max_tokens,
            t.spec.temperature,
        ))),
        _ => None,
    };
    let next: Option<Arc<dyn Observer>> = if job.record_requests {
        match crate::observe::requests_jsonl::RecordsObserver::create(&dir.path, next.clone()) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                state.record_write_errors(
                    &t.name,
                    &[format!(
                        "cannot write {}: {e}",
                        dir.file(crate::observe::requests_jsonl::RECORDS_FILE)
                            .display()
                    )],
                );
                next
            }
        }
    } else {
        next
    };
    let engine = Engine {
        client: slot.client.clone(),
        requests: slot.requests.clone(),
        max_in_flight: t.spec.max_in_flight,
        server_metrics: slot.scraper.clone(),
        shard: None,
        observer: Arc::new(MetricsObserver {
            job: job_metrics.clone(),
            next,
        }),
        sessions: slot.sessions.clone(),
    };
    let active = Arc::new(ActiveRun {
        run_id,
        job: job.name.clone(),
        target: t.name.clone(),
        model: t.model().to_string(),
        kind: job.kind,
        levels: job.qps.clone(),
        started_at: now.to_rfc3339(),
        level: Default::default(),
        progress: std::sync::Mutex::new(Arc::new(Progress::default())),
        stop: CancellationToken::new(),
        cancel: CancellationToken::new(),
        last_sent: Default::default(),
        has_slo: job.slo.is_some(),
    });
    state
        .active
        .lock()
        .expect("active lock")
        .push(active.clone());
    state
        .metrics
        .runs
        .with_label_values(&[&t.name, &job.name, job.kind.as_str(), "started"])
        .inc();
    state
        .metrics
        .job_running
        .with_label_values(&[&t.name, &job.name, job.kind.as_str()])
        .set(1);
    tracing::info!(job = %job.name, target = %t.name, run = %active.run_id, "run started");
    Ok(Started {
        active,
        writer,
        entry,
        engine,
        job_metrics,
        sweep_span,
        levels,
    })
}

/// How a run ended, for [`finish_run`].
struct Ended<'a> {
    status: RunStatus,
    levels: &'a [LevelResult],
    summary: &'a results::Summary,
    write_errors: &'a [String],
}

fn finish_run(state: &Arc<State>, job: &Job, slot: &TargetSlot, s: &Started, end: Ended<'_>) {
    let Ended {
        status,
        levels,
        summary,
        write_errors,
    } = end;
    let t = &slot.target;
    state
        .active
        .lock()
        .expect("active lock")
        .retain(|a| !Arc::ptr_eq(a, &s.active));
    state.record_write_errors(&t.name, write_errors);
    let event = match status {
        RunStatus::Complete => "completed",
        RunStatus::Partial => "partial",
    };
    state
        .metrics
        .runs
        .with_label_values(&[&t.name, &job.name, job.kind.as_str(), event])
        .inc();
    state
        .metrics
        .current_level
        .with_label_values(&[&t.name, &job.name])
        .set(0);
    state
        .metrics
        .job_running
        .with_label_values(&[&t.name, &job.name, job.kind.as_str()])
        .set(0);
    s.job_metrics.target_qps.set(0.0);
    s.job_metrics.achieved_qps.set(0.0);
    s.job_metrics.target_concurrency.set(0);
    s.job_metrics.goodput.set(0.0);
    s.job_metrics.in_flight.set(0);
    let mut entry = s.entry.clone();
    entry.status = status.as_str().into();
    entry.finished_at = Some(chrono::Local::now().to_rfc3339());
    entry.max_qps_without_errors = summary.analysis.max_qps_without_errors;
    entry.saturation_qps = summary.analysis.saturation_qps;
    entry.recommended_qps = summary.analysis.recommended_qps;
    entry.error = (!write_errors.is_empty()).then(|| write_errors.join("; "));
    if let Err(e) = state.index.put(entry) {
        state.record_write_errors(&t.name, &[format!("run index: {e}")]);
    }
    if let (Some(tel), Some(span)) = (&state.telemetry, &s.sweep_span) {
        tel.sweep_finished(span, summary);
    }
    tracing::info!(
        job = %job.name, target = %t.name, run = %s.active.run_id,
        status = status.as_str(), levels = levels.len(),
        max_qps = ?summary.analysis.max_qps_without_errors,
        saturation = ?summary.analysis.saturation_qps,
        "run finished"
    );
    match state
        .index
        .prune(&t.name, t.keep_runs, t.keep_days, chrono::Utc::now())
    {
        Ok(gone) if !gone.is_empty() => {
            state
                .metrics
                .pruned
                .with_label_values(&[&t.name])
                .inc_by(gone.len() as u64);
            tracing::info!(target = %t.name, pruned = ?gone, "retention removed old runs");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(target = %t.name, "retention failed: {e}");
            state.record_write_errors(&t.name, &[format!("retention: {e}")]);
        }
    }
}

/// Live status and gauges as levels change.
struct DaemonHooks<'a> {
    state: &'a State,
    active: Arc<ActiveRun>,
    job: &'a Job,
    metrics: JobMetrics,
    span: Option<crate::observe::telemetry::SweepSpan>,
}

impl crate::engine::capacity::CapacityHooks for DaemonHooks<'_> {
    fn probe_finished(&self, p: &crate::results::ProbeSummary) {
        tracing::info!(
            job = %self.job.name, probe = p.index, phase = %p.phase, qps = p.qps,
            verdict = %p.verdict, reason = %p.reason, "capacity probe finished"
        );
    }
}

impl SweepHooks for DaemonHooks<'_> {
    fn level_started(&self, spec: &LevelSpec, _levels: usize, _planned: u64, run: &LevelRun) {
        self.active.level.store(spec.index, Ordering::Relaxed);
        *self.active.progress.lock().expect("progress lock") = run.progress.clone();
        self.active.last_sent.store(0, Ordering::Relaxed);
        self.state
            .metrics
            .current_level
            .with_label_values(&[&self.job.target, &self.job.name])
            .set(spec.index as i64 + 1);
        self.metrics.target_qps.set(spec.qps);
        self.metrics
            .target_concurrency
            .set(spec.load.concurrency().map_or(0, i64::from));
        if let (Some(tel), Some(span)) = (&self.state.telemetry, &self.span) {
            tel.level_started(span, spec);
        }
        tracing::info!(job = %self.job.name, level = spec.index + 1, qps = spec.qps, "level started");
    }

    fn level_finished(&self, _spec: &LevelSpec, r: &LevelResult) {
        if let (Some(tel), Some(span)) = (&self.state.telemetry, &self.span) {
            tel.level_finished(span, r);
        }
        tracing::info!(
            job = %self.job.name, qps = r.qps_target, sent = r.sent,
            success = r.success_rate, ttft_p95 = r.ttft.p95, client_bound = r.client_bound,
            "level finished"
        );
    }
}

async fn run_sweep(
    state: &Arc<State>,
    job: &Job,
    slot: &Arc<TargetSlot>,
    generation: &CancellationToken,
) {
    let _guard = match slot.sweep_lock.try_lock() {
        Ok(g) => g,
        Err(_) => {
            count_fire(state, job, "delayed");
            tracing::info!(job = %job.name, target = %job.target, "sweep waits: another sweep is using the target");
            tokio::select! {
                g = slot.sweep_lock.lock() => g,
                _ = state.shutting_down.cancelled() => return,
                _ = generation.cancelled() => return,
            }
        }
    };
    if !current(state, job, slot, generation) {
        return;
    }
    count_fire(state, job, "started");
    // Pause a soak on this target for the sweep's duration.
    let paused = slot.soak.lock().expect("soak lock").clone();
    if let Some(p) = &paused {
        p.paused.store(true, Ordering::Release);
        if let Some(soak) = state
            .config()
            .jobs
            .iter()
            .find(|j| j.kind == JobKind::Soak && j.target == job.target)
        {
            state
                .metrics
                .soak_pauses
                .with_label_values(&[&soak.name])
                .inc();
        }
        tracing::info!(job = %job.name, target = %job.target, "soak paused for the sweep");
    }
    let mut started = match start_run(state, job, slot) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(job = %job.name, "{e}");
            state.record_write_errors(&job.target, &[e]);
            if let Some(p) = &paused {
                p.paused.store(false, Ordering::Release);
            }
            return;
        }
    };
    let hooks = DaemonHooks {
        state,
        active: started.active.clone(),
        job,
        metrics: started.job_metrics.clone(),
        span: started.sweep_span.clone(),
    };
    let t0 = Instant::now();
    let labels = [
        slot.target.name.as_str(),
        slot.target.model(),
        job.name.as_str(),
    ];
    // An inconclusive capacity search is no measurement: it does not count
    // as the job's last successful run.
    let mut inconclusive = false;
    let report = match &job.capacity {
        Some(c) => {
            let plan = CapacityPlan {
                slo: job
                    .slo
                    .clone()
                    .expect("validated: capacity jobs have an SLO"),
                search: c.search,
                probe_duration: c.probe_duration,
                confirm_duration: c.confirm_duration,
                arrival: job.arrival,
                seed: job.seed,
                concurrency: false,
            };
            let r = crate::engine::capacity::search(
                &started.engine,
                &plan,
                &mut started.writer,
                &hooks,
                &started.active.stop,
                &started.active.cancel,
            )
            .await;
            {
                let mut caps = state.capacity.lock().expect("capacity lock");
                let status = caps.entry(job.name.clone()).or_default();
                if let Some(c) = &r.summary.capacity {
                    status.outcome = c.outcome.clone();
                    status.message = c.message.clone();
                }
                if let Some(outcome) = r.outcome {
                    let qps = state
                        .metrics
                        .publish_slo_capacity(labels, outcome, &plan.search);
                    status.published_qps = Some(qps);
                } else if let Some(i) = &r.inconclusive {
                    inconclusive = true;
                    // The client was the limit: nothing is said about the
                    // endpoint, and the gauges keep their last answer.
                    state
                        .metrics
                        .capacity_inconclusive
                        .with_label_values(&labels)
                        .inc();
                    status.inconclusive_runs += 1;
                    tracing::warn!(
                        target = %job.target, job = %job.name, qps = i.qps,
                        reason = %i.reason, "capacity search inconclusive: the client was the limit; capacity not published"
                    );
                }
            }
            state.metrics.publish_levels(labels, &r.levels);
            runner::SweepReport {
                levels: r.levels,
                summary: r.summary,
                status: r.status,
                write_errors: r.write_errors,
                dir: started.writer.dir().clone(),
                notices: r.notices,
            }
        }
        None => {
            let plan = SweepPlan {
                levels: started.levels.clone().unwrap_or_else(|| {
                    Levels::Rates(job.qps.iter().map(|q| RateLevel::flat(*q)).collect())
                }),
                max_concurrency: job.max_concurrency,
                warmup: job.warmup,
                series_step: job.series_step,
                duration: job.duration.unwrap_or(Duration::from_secs(60)),
                arrival: job.arrival,
                seed: job.seed,
                slo: job.slo.clone(),
                timeline: None,
            };
            runner::execute(
                &started.engine,
                &plan,
                &mut started.writer,
                &hooks,
                &started.active.stop,
                &started.active.cancel,
            )
            .await
        }
    };
    if job.slo.is_some() && job.capacity.is_none() {
        state.metrics.publish_levels(labels, &report.levels);
    }
    if report.status == RunStatus::Complete && job.capacity.is_none() {
        state.metrics.publish_capacity(
            labels,
            &report.levels,
            &report.summary.analysis,
            chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
            t0.elapsed().as_secs_f64(),
        );
    } else if report.status == RunStatus::Complete && !inconclusive {
        state.metrics.publish_finished(
            [labels[0], labels[2]],
            chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
            t0.elapsed().as_secs_f64(),
        );
    }
    finish_run(
        state,
        job,
        slot,
        &started,
        Ended {
            status: report.status,
            levels: &report.levels,
            summary: &report.summary,
            write_errors: &report.write_errors,
        },
    );
    if let Some(p) = &paused {
        p.paused.store(false, Ordering::Release);
        tracing::info!(target = %job.target, "soak resumed");
    }
}

async fn run_soak(
    state: &Arc<State>,
    job: &Job,
    slot: &Arc<TargetSlot>,
    generation: &CancellationToken,
) {
    if slot.soak.lock().expect("soak lock").is_some() {
        count_fire(state, job, "skipped");
        tracing::warn!(job = %job.name, target = %job.target, "soak skipped: another soak runs on this target");
        return;
    }
    // Do not start in the middle of a sweep on this target.
    if slot.sweep_lock.try_lock().is_err() {
        count_fire(state, job, "delayed");
        tokio::select! {
            g = slot.sweep_lock.lock() => drop(g),
            _ = state.shutting_down.cancelled() => return,
            _ = generation.cancelled() => return,
        }
    }
    if !current(state, job, slot, generation) {
        return;
    }
    count_fire(state, job, "started");
    let mut started = match start_run(state, job, slot) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(job = %job.name, "{e}");
            state.record_write_errors(&job.target, &[e]);
            return;
        }
    };
    let run = LevelRun::new();
    *slot.soak.lock().expect("soak lock") = Some(run.progress.clone());
    let mut spec = LevelSpec::flat(
        0,
        job.qps.first().copied().unwrap_or(0.0),
        job.duration,
        job.arrival,
        job.seed,
    );
    spec.max_concurrency = job.max_concurrency;
    match (&job.shape, &started.levels) {
        (Some(shape), _) => {
            // A daily curve is placed by the time of day the soak starts.
            let curve = shape.profile(chrono::Utc::now());
            let span = job
                .duration
                .unwrap_or(Duration::from_secs_f64(curve.length()));
            spec.qps = crate::analysis::stats::round(curve.mean(span), 3);
            spec.load = Load::Curve(Arc::new(curve));
        }
        (None, Some(Levels::Concurrency(c))) => {
            spec.qps = 0.0;
            spec.load = Load::Concurrency(c[0]);
            spec.max_concurrency = None;
        }
        (None, Some(Levels::Trace(r))) => {
            spec.qps = crate::analysis::stats::round(r.mean_qps(), 3);
            spec.load = Load::Trace(r.clone());
        }
        _ => {}
    }
    spec.sessions = started.engine.sessions.is_some() && !matches!(spec.load, Load::Trace(_));
    let qps = spec.qps;
    if spec.load.varies() {
        run.stats.lock().unwrap_or_else(|e| e.into_inner()).series =
            Some(crate::analysis::series::Series::new(job.series_step));
    }
    let hooks = DaemonHooks {
        state,
        active: started.active.clone(),
        job,
        metrics: started.job_metrics.clone(),
        span: started.sweep_span.clone(),
    };
    hooks.level_started(&spec, 1, 0, &run);
    let t0 = Instant::now();
    let snapshot = |run: &LevelRun, interrupted: bool| {
        let stats = run.snapshot();
        let paused = Duration::from_nanos(run.progress.paused_ns.load(Ordering::Relaxed));
        let window = t0.elapsed().saturating_sub(paused);
        let mut r = LevelResult::from_stats(
            &stats,
            LevelTiming {
                qps_target: qps,
                duration: window,
                send_window: window,
                drain: Duration::ZERO,
                client: None,
                ..Default::default()
            },
        );
        r.interrupted = interrupted;
        r
    };
    let level = started.engine.run_level(
        spec.clone(),
        &run,
        started.active.stop.clone(),
        started.active.cancel.clone(),
        0,
    );
    tokio::pin!(level);
    let outcome = loop {
        tokio::select! {
            o = &mut level => break o,
            _ = tokio::time::sleep(job.snapshot_every) => {
                // A snapshot is a results directory of exactly a sweep's
                // shape, through the same writer.
                let levels = vec![snapshot(&run, false)];
                runner::note_connections(&started.engine, &mut started.writer);
                started.writer.checkpoint(&levels, &results::summarize(&levels, "running"));
                tracing::info!(job = %job.name, sent = levels[0].sent, success = levels[0].success_rate, "soak snapshot written");
            }
        }
    };
    *slot.soak.lock().expect("soak lock") = None;
    let status = if outcome.interrupted {
        RunStatus::Partial
    } else {
        RunStatus::Complete
    };
    let mut r = LevelResult::from_stats(&outcome.stats, outcome.timing);
    r.interrupted = outcome.interrupted;
    r.server = outcome.server.clone();
    // The pacer paused for sweeps: rates count the time actually sending.
    let paused = Duration::from_nanos(run.progress.paused_ns.load(Ordering::Relaxed));
    if !paused.is_zero() {
        let window = t0.elapsed().saturating_sub(paused);
        r = LevelResult::from_stats(
            &outcome.stats,
            LevelTiming {
                qps_target: qps,
                duration: window,
                send_window: window,
                drain: outcome.timing.drain,
                client: None,
                ..outcome.timing
            },
        );
        r.interrupted = outcome.interrupted;
        r.server = outcome.server;
    }
    hooks.level_finished(&spec, &r);
    let levels = vec![r];
    let summary = results::summarize(&levels, status.as_str());
    for e in started.engine.observer.flush() {
        started.writer.add_error(e);
    }
    runner::note_connections(&started.engine, &mut started.writer);
    started.writer.finish(&levels, &summary, status);
    let errors = started.writer.errors().to_vec();
    finish_run(
        state,
        job,
        slot,
        &started,
        Ended {
            status,
            levels: &levels,
            summary: &summary,
            write_errors: &errors,
        },
    );
}
