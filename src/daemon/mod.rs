//! `llmload daemon`: scheduled and continuous sweeps, live Prometheus
//! metrics, a control API, and the same results directories as `run`.
//!
//! Layout: [`config`] (the TOML file), [`fire`] (when jobs fire),
//! [`jobs`] (running sweeps and soaks, target coordination), [`state`]
//! (what the daemon knows), [`crate::observe::metrics`] (`/metrics`), [`api`] (HTTP),
//! [`index`] (run history and retention), [`reload`] (SIGHUP and
//! `POST /-/reload`).

pub mod api;
pub mod config;
pub mod fire;
pub mod index;
pub mod jobs;
pub mod reload;
pub mod state;

use crate::base::error::EXIT_OK;
use state::State;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Serve until `stop` resolves (SIGTERM/SIGINT in production; tests pass
/// their own future), then shut down gracefully.
pub async fn run(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    http_stop: CancellationToken,
    stop: impl std::future::Future<Output = ()>,
) -> u8 {
    state.metrics.up.set(1);
    state
        .metrics
        .start_time
        .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    let config = state.config();
    for t in &config.targets {
        register_target(&state, t);
    }
    for job in &config.jobs {
        register_job(&state, job);
    }
    let server = tokio::spawn(crate::base::serve::serve(
        listener,
        api::router(state.clone()),
        http_stop.clone(),
    ));
    for job in config.jobs.clone() {
        let generation = state.generation(&job.name);
        start_scheduler(&state, job, &generation);
    }
    let ticker = tokio::spawn(gauge_ticker(state.clone()));
    state.ready.store(true, Ordering::Release);

    stop.await;
    tracing::info!(
        "stopping: no new runs; in-flight requests get {}",
        crate::base::duration::format(state.config().shutdown_grace)
    );
    state.shutting_down.cancel();
    for (_, s) in std::mem::take(&mut *state.schedulers.lock().expect("schedulers lock")) {
        s.abort();
    }
    for a in state.active() {
        a.stop.cancel();
    }
    let grace = state.config().shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    while !state.active().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for a in state.active() {
        a.cancel.cancel();
    }
    // Runs now write their partial results; give them a bounded moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !state.active().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ticker.abort();
    state.metrics.up.set(0);
    http_stop.cancel();
    let _ = server.await;
    tracing::info!("daemon stopped");
    EXIT_OK
}

/// Counters exist at 0 from the start, so rate() and increase() see
/// their first increment and dashboards show 0, not "no data".
pub(crate) fn register_target(state: &State, t: &config::Target) {
    state.metrics.write_errors.with_label_values(&[&t.name]);
    state.metrics.pruned.with_label_values(&[&t.name]);
}

/// A job's series at 0 (see [`register_target`]), and its schedule's
/// interval.
pub(crate) fn register_job(state: &State, job: &config::Job) {
    for r in ["started", "delayed", "skipped"] {
        state.metrics.fires.with_label_values(&[&job.name, r]);
    }
    for e in ["started", "completed", "partial"] {
        state
            .metrics
            .runs
            .with_label_values(&[&job.target, &job.name, job.kind.as_str(), e]);
    }
    if job.kind == config::JobKind::Soak {
        state.metrics.soak_pauses.with_label_values(&[&job.name]);
    }
    if let Some(slot) = state.slot(&job.target) {
        state
            .metrics
            .for_job(&job.target, slot.target.model(), &job.name);
    }
    state
        .metrics
        .job_running
        .with_label_values(&[&job.target, &job.name, job.kind.as_str()])
        .set(0);
    if let Some(i) = job.schedule.interval(chrono::Utc::now()) {
        state
            .metrics
            .schedule_interval
            .with_label_values(&[&job.target, &job.name])
            .set(i.as_secs_f64());
    }
}

/// Start (or restart) a job's scheduler, unless the daemon is stopping or
/// a reload has retired this `generation` of the job since. Checked and
/// done under the schedulers' lock, which a reload's retiring also takes.
pub(crate) fn start_scheduler(
    state: &Arc<State>,
    job: config::Job,
    generation: &tokio_util::sync::CancellationToken,
) {
    let mut schedulers = state.schedulers.lock().expect("schedulers lock");
    if state.shutting_down.is_cancelled() || generation.is_cancelled() {
        return;
    }
    let name = job.name.clone();
    let task = tokio::spawn(schedule_loop(state.clone(), job));
    if let Some(old) = schedulers.insert(name, task) {
        old.abort();
    }
}

/// Fire a job at each time its schedule names, until shutdown.
async fn schedule_loop(state: Arc<State>, job: config::Job) {
    let mut previous = None;
    loop {
        let now = chrono::Utc::now();
        let Some(next) = job.schedule.next(now, previous) else {
            state
                .next_fires
                .lock()
                .expect("fires lock")
                .remove(&job.name);
            return;
        };
        state
            .next_fires
            .lock()
            .expect("fires lock")
            .insert(job.name.clone(), next.to_rfc3339());
        let wait = (next - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.shutting_down.cancelled() => return,
        }
        previous = Some(next);
        let _ = jobs::fire(&state, &job);
    }
}

/// Once a second: in-flight, achieved-rate and goodput gauges from live
/// progress, over a [`crate::observe::metrics::RateWindow`].
async fn gauge_ticker(state: Arc<State>) {
    let mut windows: std::collections::HashMap<String, crate::observe::metrics::RateWindow> =
        Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let active = state.active();
        windows.retain(|id, _| active.iter().any(|a| &a.run_id == id));
        for a in active {
            let p = a.progress.lock().expect("progress lock").clone();
            let level = a.level.load(Ordering::Relaxed) as u64;
            let sent = p.scheduled.load(Ordering::Relaxed);
            let good = p.good.load(Ordering::Relaxed);
            let m = state.metrics.for_job(&a.target, &a.model, &a.job);
            m.in_flight.set(p.in_flight.load(Ordering::Relaxed) as i64);
            // Where a replay is in its trace; a changing rate's target now.
            let pos = p.trace_position_us.load(Ordering::Relaxed);
            if pos > 0 {
                m.trace_position.set(pos as f64 * 1e-6);
            }
            let rate = p.current_rate_milli.load(Ordering::Relaxed);
            if rate > 0 {
                m.target_qps.set(rate as f64 / 1000.0);
            }
            let w = windows.entry(a.run_id.clone()).or_default();
            // A new level restarts the count: start the window afresh.
            if a.last_sent.swap(level, Ordering::Relaxed) != level {
                w.reset();
            }
            if let Some((achieved, goodput)) = w.push(sent, good) {
                m.achieved_qps.set(achieved);
                if a.has_slo {
                    m.goodput.set(goodput);
                }
            }
        }
    }
}

/// `--check`: the resolved plan, without sending anything.
pub fn plan_report(
    cfg: &config::Config,
    tel: Option<&crate::observe::telemetry::Settings>,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: OK ({} target(s), {} job(s))",
        cfg.path.display(),
        cfg.targets.len(),
        cfg.jobs.len()
    );
    let _ = writeln!(
        out,
        "listen {}  results {}  control API {}",
        cfg.listen,
        cfg.results_dir.display(),
        if cfg.api_token.is_some() {
            "token required for POST"
        } else {
            "open (no token)"
        }
    );
    match tel {
        Some(t) => {
            let _ = writeln!(
                out,
                "traces -> {} (request sample ratio {})",
                t.endpoint, t.sample_ratio
            );
        }
        None => {
            let _ = writeln!(out, "traces off");
        }
    }
    for t in &cfg.targets {
        let _ = writeln!(
            out,
            "target {}: {} model {} dataset {}",
            t.name,
            crate::base::redact::redact_url(t.spec.endpoint()),
            t.model(),
            t.dataset.display()
        );
    }
    let now = chrono::Utc::now();
    for j in &cfg.jobs {
        let qps: Vec<String> = j
            .qps
            .iter()
            .map(|q| crate::analysis::saturation::fmt_qps(*q))
            .collect();
        let dur = j
            .duration
            .map(crate::base::duration::format)
            .unwrap_or_else(|| "forever".into());
        let _ = writeln!(
            out,
            "job {} ({}) on {}: qps [{}] x {dur}, {}",
            j.name,
            j.kind.as_str(),
            j.target,
            qps.join(", "),
            j.schedule.describe()
        );
        let mut prev = None;
        let mut at = now;
        let mut fires = Vec::new();
        for _ in 0..3 {
            match j.schedule.next(at, prev) {
                Some(n) => {
                    fires.push(n.to_rfc3339());
                    prev = Some(n);
                    at = n;
                }
                None => break,
            }
        }
        let _ = writeln!(
            out,
            "  next fires: {}",
            if fires.is_empty() {
                "none".into()
            } else {
                fires.join(", ")
            }
        );
    }
    out
}
