//! What the daemon knows while it runs: config, per-target resources, the
//! runs in progress, history, metrics. Shared behind one `Arc` by the
//! scheduler, the job runners and the HTTP API.

use super::config::{Config, Job, JobKind, Target};
use super::index::RunIndex;
use crate::client::LlmClient;
use crate::engine::sweep::Progress;
use crate::observe::metrics::Metrics;
use crate::workload::request::PreparedRequest;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;

/// Resources shared by every job on one target.
pub struct TargetSlot {
    pub target: Target,
    pub client: Arc<LlmClient>,
    pub requests: Arc<Vec<PreparedRequest>>,
    /// The dataset's multi-turn sessions, when it has them.
    pub sessions: Option<Arc<crate::engine::session::SessionPlan>>,
    /// What the requests are, for each run's metadata.
    pub workload: crate::workload::Workload,
    /// The server's own metrics, when the target names them.
    pub scraper: Option<Arc<crate::server::scrape::ServerScraper>>,
    /// Held by a sweep for its whole run: sweeps on one target queue up.
    pub sweep_lock: tokio::sync::Mutex<()>,
    /// The soak running on this target, if any, so a sweep can pause it.
    pub soak: Mutex<Option<Arc<Progress>>>,
}

/// `endpoint = "mock"`: start a built-in mock for the target and point
/// the target at it (demos, and the daemon's own tests).
pub async fn embedded_mock(t: &mut Target) -> std::io::Result<crate::mock::MockServer> {
    let m = crate::mock::MockServer::start(
        crate::mock::MockConfig::default(),
        "127.0.0.1:0".parse().expect("valid address"),
    )
    .await?;
    t.spec.client.endpoint = m.url_for(t.spec.api);
    tracing::info!(target = %t.name, url = %t.spec.client.endpoint, "built-in mock started");
    Ok(m)
}

impl TargetSlot {
    /// Load the target's prompts and build its client. Errors name the
    /// target and what is wrong.
    pub fn new(t: &Target, traced: bool) -> Result<Self, String> {
        // Daemon prompts are seeded with 0: every run of a target sends
        // the same workload, so its runs compare.
        let prompts = crate::plan::prompts::load_with(
            &t.dataset.to_string_lossy(),
            t.dataset_format,
            t.tokenizer.as_deref(),
            0,
            &t.spec,
            t.sessions,
        )
        .map_err(|e| format!("target '{}': {e}", t.name))?;
        let client = t
            .spec
            .build_client(traced)
            .map_err(|e| format!("target '{}': {e}", t.name))?;
        Ok(TargetSlot {
            target: t.clone(),
            client: Arc::new(client),
            requests: Arc::new(prompts.requests),
            sessions: prompts.sessions.map(|s| {
                Arc::new(crate::engine::session::SessionPlan {
                    sessions: s,
                    params: t.spec.body_params(),
                    think: t.think_time,
                    seed: 0,
                })
            }),
            workload: prompts.workload,
            scraper: t
                .spec
                .server_scraper()
                .map_err(|e| format!("target '{}': server_metrics {e}", t.name))?
                .map(Arc::new),
            sweep_lock: tokio::sync::Mutex::new(()),
            soak: Mutex::new(None),
        })
    }
}

/// What the last reload did, for `/api/v1/status` and `POST /-/reload`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub at: String,
    /// `success` or `failure`.
    pub result: &'static str,
    /// `SIGHUP` or `api`.
    pub trigger: String,
    /// Why the file was refused (failure only).
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub jobs: JobChanges,
}

/// Jobs by what the reload did to them (names).
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobChanges {
    pub unchanged: Vec<String>,
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Changed or removed jobs that were running and were stopped.
    pub stopped: Vec<String>,
}

/// A run in progress, for `/api/v1/status` and the gauges.
pub struct ActiveRun {
    pub run_id: String,
    pub job: String,
    pub target: String,
    pub model: String,
    pub kind: JobKind,
    pub levels: Vec<f64>,
    pub started_at: String,
    /// 0-based index of the level running now.
    pub level: AtomicUsize,
    pub progress: Mutex<Arc<Progress>>,
    pub stop: CancellationToken,
    pub cancel: CancellationToken,
    /// Sends seen at the last gauge tick, for the achieved-rate gauge.
    pub last_sent: AtomicU64,
    /// The job judges requests against an SLO (goodput gauge).
    pub has_slo: bool,
}

#[derive(Debug, Serialize)]
pub struct ActiveStatus {
    pub run_id: String,
    pub job: String,
    pub target: String,
    pub kind: &'static str,
    pub started_at: String,
    pub level: usize,
    pub levels: usize,
    pub qps: f64,
    pub paused: bool,
    pub scheduled: u64,
    pub completed: u64,
    pub failed: u64,
    pub in_flight: usize,
}

impl ActiveRun {
    pub fn status(&self) -> ActiveStatus {
        let p = self.progress.lock().expect("progress lock").clone();
        let level = self.level.load(Ordering::Relaxed);
        ActiveStatus {
            run_id: self.run_id.clone(),
            job: self.job.clone(),
            target: self.target.clone(),
            kind: self.kind.as_str(),
            started_at: self.started_at.clone(),
            level: level + 1,
            levels: self.levels.len(),
            qps: self.levels.get(level).copied().unwrap_or(0.0),
            paused: p.paused.load(Ordering::Relaxed),
            scheduled: p.scheduled.load(Ordering::Relaxed),
            completed: p.completed.load(Ordering::Relaxed),
            failed: p.failed.load(Ordering::Relaxed),
            in_flight: p.in_flight.load(Ordering::Relaxed),
        }
    }
}

pub struct State {
    /// The configuration in force; replaced as a whole by a reload.
    config: RwLock<Arc<Config>>,
    pub metrics: Metrics,
    pub index: RunIndex,
    /// Per-target resources, by target name; a reload keeps the slots of
    /// unchanged targets (the same `Arc`, so their runs go on untouched).
    slots: RwLock<BTreeMap<String, Arc<TargetSlot>>>,
    /// Each job's scheduler task, by job name (a reload replaces those of
    /// changed jobs).
    pub schedulers: Mutex<BTreeMap<String, tokio::task::JoinHandle<()>>>,
    /// Each job's generation, cancelled when a reload changes or removes
    /// the job: a fire of the old definition still waiting for its target
    /// drops at once.
    pub generations: Mutex<BTreeMap<String, CancellationToken>>,
    /// One reload at a time (SIGHUP and the API may race).
    pub reload_lock: tokio::sync::Mutex<()>,
    /// The last reload, for `/api/v1/status`.
    pub last_reload: Mutex<Option<ReloadStatus>>,
    /// Built-in mocks (`endpoint = "mock"`) started for targets, stopped
    /// at exit.
    pub mocks: Mutex<Vec<crate::mock::MockServer>>,
    pub active: Mutex<Vec<Arc<ActiveRun>>>,
    /// Jobs fired and not finished (including those waiting for a target).
    pub busy_jobs: Mutex<HashSet<String>>,
    /// Set by SIGTERM: no new fires.
    pub shutting_down: CancellationToken,
    pub ready: AtomicBool,
    pub write_errors: AtomicU64,
    pub last_write_error: Mutex<Option<String>>,
    pub next_fires: Mutex<BTreeMap<String, String>>,
    /// The last capacity search of each capacity job, by job name, as the
    /// status API shows it.
    pub capacity: Mutex<BTreeMap<String, CapacityStatus>>,
    pub telemetry: Option<crate::observe::telemetry::Telemetry>,
}

/// What a capacity job's last search concluded, and what the gauges say.
/// An inconclusive search publishes nothing: `published_qps` is still the
/// last conclusive answer, so alerts on it see no drop.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CapacityStatus {
    /// `found`, `below_range`, `above_range` or `inconclusive`.
    pub outcome: String,
    pub message: String,
    /// What `llmload_capacity_qps_under_slo` holds now (None before any
    /// conclusive search).
    pub published_qps: Option<f64>,
    pub inconclusive_runs: u64,
}

impl State {
    /// Build per-target clients and prepared requests. Errors name the
    /// target and what is wrong.
    pub fn new(
        config: Config,
        telemetry: Option<crate::observe::telemetry::Telemetry>,
    ) -> Result<Arc<Self>, String> {
        let index = RunIndex::open(&config.results_dir)
            .map_err(|e| format!("results directory {}: {e}", config.results_dir.display()))?;
        let mut slots = BTreeMap::new();
        for t in &config.targets {
            slots.insert(
                t.name.clone(),
                Arc::new(TargetSlot::new(t, telemetry.is_some())?),
            );
        }
        Ok(Arc::new(Self {
            config: RwLock::new(Arc::new(config)),
            metrics: Metrics::new(),
            index,
            slots: RwLock::new(slots),
            schedulers: Mutex::new(BTreeMap::new()),
            generations: Mutex::new(BTreeMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            last_reload: Mutex::new(None),
            mocks: Mutex::new(Vec::new()),
            active: Mutex::new(Vec::new()),
            busy_jobs: Mutex::new(HashSet::new()),
            shutting_down: CancellationToken::new(),
            ready: AtomicBool::new(false),
            write_errors: AtomicU64::new(0),
            last_write_error: Mutex::new(None),
            next_fires: Mutex::new(BTreeMap::new()),
            capacity: Mutex::new(BTreeMap::new()),
            telemetry,
        }))
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    /// A target's resources, under the configuration in force now.
    pub fn slot(&self, target: &str) -> Option<Arc<TargetSlot>> {
        self.slots.read().expect("slots lock").get(target).cloned()
    }

    /// A reload's commit: the new configuration and its targets' slots,
    /// swapped in together.
    pub fn replace(&self, config: Config, slots: BTreeMap<String, Arc<TargetSlot>>) {
        let mut c = self.config.write().expect("config lock");
        let mut s = self.slots.write().expect("slots lock");
        *c = Arc::new(config);
        *s = slots;
    }

    pub fn job(&self, name: &str) -> Option<Job> {
        self.config().jobs.iter().find(|j| j.name == name).cloned()
    }

    /// The current generation of job `name` (see [`State::generations`]).
    pub fn generation(&self, name: &str) -> CancellationToken {
        self.generations
            .lock()
            .expect("generations lock")
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// A reload changed or removed job `name`: its pending fires drop.
    pub fn retire(&self, name: &str) {
        if let Some(g) = self
            .generations
            .lock()
            .expect("generations lock")
            .remove(name)
        {
            g.cancel();
        }
    }

    pub fn active(&self) -> Vec<Arc<ActiveRun>> {
        self.active.lock().expect("active lock").clone()
    }

    pub fn record_write_errors(&self, target: &str, errors: &[String]) {
        if errors.is_empty() {
            return;
        }
        self.write_errors
            .fetch_add(errors.len() as u64, Ordering::Relaxed);
        self.metrics
            .write_errors
            .with_label_values(&[target])
            .inc_by(errors.len() as u64);
        *self.last_write_error.lock().expect("error lock") = errors.last().cloned();
    }
}
