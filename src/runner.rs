//! Runs a sweep plan level by level and keeps the results directory up to
//! date after every level. Shared by `llmload run` and the daemon, so both
//! write exactly the same files.

use crate::plot;
use crate::results::{METADATA_FILE, Metadata, RunDir, SUMMARY_FILE, Summary, summarize};
use crate::schedule::{Arrival, Schedule};
use crate::stats::LevelResult;
use crate::sweep::{Engine, LevelRun, LevelSpec};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The levels to run.
#[derive(Debug, Clone)]
pub struct SweepPlan {
    pub levels: Vec<f64>,
    pub duration: Duration,
    pub arrival: Arrival,
    pub seed: u64,
}

impl SweepPlan {
    /// The spec of level `index`. Each level gets its own seed so Poisson
    /// levels are not the same pattern scaled.
    pub fn spec(&self, index: usize) -> LevelSpec {
        LevelSpec {
            index,
            qps: self.levels[index],
            duration: Some(self.duration),
            arrival: self.arrival,
            seed: self.seed.wrapping_add(index as u64),
        }
    }

    /// Requests a level is expected to send (exact for constant arrivals).
    pub fn planned(&self, index: usize) -> u64 {
        let qps = self.levels[index];
        match self.arrival {
            Arrival::Constant => Schedule::constant_count(qps, self.duration),
            Arrival::Poisson => (qps * self.duration.as_secs_f64()).round() as u64,
        }
    }
}

/// Where and what to write.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub dir: RunDir,
    pub results_file: String,
    /// Draw the PNG under this name, if set.
    pub plot_file: Option<String>,
    pub plot_title: String,
}

/// Callbacks for progress display, live status and spans.
pub trait SweepHooks: Send + Sync {
    fn level_started(&self, _spec: &LevelSpec, _levels: usize, _planned: u64, _run: &LevelRun) {}
    fn level_finished(&self, _spec: &LevelSpec, _result: &LevelResult) {}
}

pub struct NoHooks;
impl SweepHooks for NoHooks {}

/// How a sweep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Complete,
    /// Stopped before the last level finished.
    Partial,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Partial => "partial",
        }
    }
}

#[derive(Debug)]
pub struct SweepReport {
    pub levels: Vec<LevelResult>,
    pub summary: Summary,
    pub status: RunStatus,
    /// Files that could not be written; the run still measured.
    pub write_errors: Vec<String>,
    pub dir: RunDir,
    /// What the client noticed about the endpoint (see `Metadata::notices`).
    pub notices: Vec<String>,
}

/// Record write failures instead of aborting: a full disk must not throw
/// away the measurement in memory (the console report is still printed).
struct Writer<'a> {
    out: &'a Outputs,
    errors: Vec<String>,
}

impl Writer<'_> {
    fn json<T: serde::Serialize>(&mut self, name: &str, v: &T) {
        if let Err(e) = self.out.dir.write_json(name, v) {
            let msg = format!("cannot write {}: {e}", self.out.dir.file(name).display());
            tracing::error!("{msg}");
            if !self.errors.contains(&msg) {
                self.errors.push(msg);
            }
        }
    }
}

/// Run every level of `plan`. `stop` ends sending (in-flight requests
/// finish); `cancel` also abandons in-flight requests.
pub async fn execute(
    engine: &Engine,
    plan: &SweepPlan,
    out: &Outputs,
    mut meta: Metadata,
    hooks: &dyn SweepHooks,
    stop: &CancellationToken,
    cancel: &CancellationToken,
) -> SweepReport {
    let mut w = Writer {
        out,
        errors: Vec::new(),
    };
    meta.status = "running".into();
    meta.partial = true;
    w.json(METADATA_FILE, &meta);

    let mut levels: Vec<LevelResult> = Vec::new();
    let mut seq = 0u64;
    let mut interrupted = false;
    for index in 0..plan.levels.len() {
        if stop.is_cancelled() || cancel.is_cancelled() {
            interrupted = true;
            break;
        }
        let spec = plan.spec(index);
        let run = LevelRun::new();
        hooks.level_started(&spec, plan.levels.len(), plan.planned(index), &run);
        let outcome = engine
            .run_level(spec, &run, stop.child_token(), cancel.clone(), seq)
            .await;
        seq += outcome.stats.sent + outcome.stats.dropped;
        let mut result = LevelResult::from_stats(&outcome.stats, outcome.timing);
        result.interrupted = outcome.interrupted;
        for e in engine.observer.flush() {
            tracing::error!("{e}");
            if !w.errors.contains(&e) {
                w.errors.push(e);
            }
        }
        hooks.level_finished(&spec, &result);
        levels.push(result);
        w.json(&out.results_file, &levels);
        meta.levels_completed = levels.len();
        meta.connection_reuse = engine.client.reusing_connections();
        meta.notices = engine.client.notices();
        w.json(METADATA_FILE, &meta);
        w.json(SUMMARY_FILE, &summarize(&levels, "running"));
        if outcome.interrupted {
            interrupted = true;
            break;
        }
    }

    let status = if interrupted || levels.len() < plan.levels.len() {
        RunStatus::Partial
    } else {
        RunStatus::Complete
    };
    let summary = summarize(&levels, status.as_str());
    w.json(SUMMARY_FILE, &summary);
    if levels.is_empty() {
        // The seed's file exists even for a run stopped before level one.
        w.json(&out.results_file, &levels);
    }
    if let Some(png) = &out.plot_file {
        let path = out.dir.file(png);
        let title = match status {
            RunStatus::Complete => out.plot_title.clone(),
            RunStatus::Partial => format!("{} (partial)", out.plot_title),
        };
        if let Err(e) = plot::render(&path, &levels, &summary.analysis, &title) {
            tracing::error!("{e}");
            w.errors.push(e.to_string());
        }
    }
    meta.status = status.as_str().into();
    meta.partial = status == RunStatus::Partial;
    meta.finished_at = Some(chrono::Local::now().to_rfc3339());
    if !w.errors.is_empty() {
        meta.error = Some(w.errors.join("; "));
    }
    w.json(METADATA_FILE, &meta);
    SweepReport {
        levels,
        summary,
        status,
        write_errors: w.errors,
        dir: out.dir.clone(),
        notices: engine.client.notices(),
    }
}
