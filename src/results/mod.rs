//! The results directory: `results/<YYYY-MM-DD_HH-MM-SS>/` with the seed's
//! three files, plus `summary.json`.
//!
//! * A directory is created with `create_dir` (not `_all`) so two runs
//!   starting in the same second cannot share one: the loser takes a
//!   `-2`, `-3`… suffix.
//! * Every file is written to a temporary name, fsynced and renamed, so a
//!   reader (or a crash) only ever sees a whole file.
//! * `metadata.json` is written first with `"status": "running"` and
//!   `"partial": true`, and only rewritten as complete at the end: a run
//!   killed with `kill -9` is therefore marked partial, and the levels it
//!   finished are already in `benchmark_qps_results.json`.

pub mod plot;
pub mod sessions_plot;
pub mod table;
pub mod timeline;
pub mod writer;

use crate::analysis::level::LevelResult;
pub use crate::analysis::summary::{CapacitySummary, ProbeSummary, Summary, facts, summarize};
pub use crate::base::redact::redact_url;
use crate::plan::schedule::Arrival;
use crate::plan::target::Target;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::analysis::summary::SCHEMA_VERSION;

pub const METADATA_FILE: &str = "metadata.json";
pub const SUMMARY_FILE: &str = "summary.json";
pub const DEFAULT_RESULTS_FILE: &str = "benchmark_qps_results.json";
pub const DEFAULT_PLOT_FILE: &str = "benchmark_qps.png";

/// `metadata.json`: the seed's fields first, then ours. Never the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metadata {
    /// Local time the run started, `2024-11-14T10:30:45.123456`.
    pub timestamp: String,
    pub endpoint: String,
    pub model: String,
    pub dataset: String,
    pub qps_levels: Vec<f64>,
    /// Seconds per level (an integer when whole, as the seed writes it).
    pub duration: serde_json::Value,
    pub max_tokens: u32,
    pub temperature: f64,
    pub percentiles: Vec<serde_json::Value>,
    pub show_tokens: bool,

    pub schema_version: u32,
    pub tool: String,
    pub version: String,
    pub run_id: String,
    /// `running`, `complete`, `partial` (stopped early) or `failed`.
    pub status: String,
    pub partial: bool,
    pub levels_completed: usize,
    pub arrival: String,
    pub seed: u64,
    pub request_timeout_s: f64,
    pub stream_usage: bool,
    pub max_in_flight: usize,
    pub host: String,
    /// Names only: header values may hold credentials.
    pub extra_headers: Vec<String>,
    pub results_file: String,
    pub plot_file: Option<String>,
    /// RFC 3339 with offset, for machines.
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Daemon runs: which job and target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// False once the endpoint was seen to close connections after every
    /// response, so that each request opened its own.
    #[serde(default = "yes")]
    pub connection_reuse: bool,
    /// What the run noticed about the endpoint (connection reuse turned
    /// off, TLS failure reasons), each said once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
    /// A shard of a sharded run: which of how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::plan::schedule::Shard>,
    /// The common start of a sharded run, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// A merged run: the shard directories it was made from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
    /// What was sent: format, API, tokenizer, lengths, seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<crate::workload::Workload>,
    /// `qps` (open-loop rates, the default), `concurrency` (closed loop)
    /// or `trace` (a replay).
    #[serde(default = "qps_mode")]
    pub load: String,
    /// Concurrency sweeps: the users of each level (`qps_levels` is empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concurrency_levels: Vec<u32>,
    /// Levels given as ramps, as written (`10..100`); `qps_levels` holds
    /// their means.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qps_ramps: Vec<String>,
    /// `--max-concurrency`: sends beyond this many open requests waited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    /// A trace replay: what the slice held, its speed and prefix reuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::plan::replay::ReplaySummary>,
    /// The trace file as the user named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_file: Option<String>,
    /// Requests sent before the first level and left out of every figure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupReport>,
    /// Multi-turn sessions: what a level's rate counts and the think time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionsMeta>,
    /// The endpoint was reached through this proxy (`host:port` only:
    /// never its credentials), from `HTTPS_PROXY`/`HTTP_PROXY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// The client's runtime worker threads (`--workers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// `--send-quantum` as given (`auto`, `0`, `1000us`); each level's
    /// `client_usage.send_quantum_us` says what it came to there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_quantum: Option<String>,
}

/// `metadata.json`'s `sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionsMeta {
    /// `qps_levels` (and each level's `qps_target`) count new sessions
    /// per second; every turn is a request in `actual_qps`.
    pub rate: String,
    /// `0`, `2s`, or `exp:2s`.
    pub think_time: String,
}

impl SessionsMeta {
    pub fn new(think: &crate::plan::think::ThinkTime) -> Self {
        Self {
            rate: "new sessions per second".into(),
            think_time: think.describe(),
        }
    }
}

fn qps_mode() -> String {
    "qps".into()
}

/// What the warm-up did: it is in no statistic, so it is said here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WarmupReport {
    /// As asked: `30s` or `200` (requests).
    pub asked: String,
    pub requests: u64,
    pub succeeded: u64,
    pub errors: u64,
    pub duration_s: f64,
}

fn yes() -> bool {
    true
}

/// What a run is, for [`Metadata::new`]: the one place metadata is built.
pub struct RunInfo<'a> {
    pub target: &'a Target,
    /// The dataset as the user named it.
    pub dataset: &'a str,
    pub qps: &'a [f64],
    /// Per level; `None` for a soak that runs until stopped.
    pub duration: Option<Duration>,
    pub arrival: Arrival,
    pub seed: u64,
    pub run_id: String,
    pub percentiles: &'a [f64],
    pub now: chrono::DateTime<chrono::Local>,
    /// Daemon runs: (job, target name).
    pub job: Option<(&'a str, &'a str)>,
    /// `sweep`, `soak` or `capacity`.
    pub kind: &'a str,
}

impl Metadata {
    pub fn new(r: &RunInfo<'_>) -> Self {
        let t = r.target;
        Self {
            timestamp: seed_timestamp(&r.now),
            endpoint: redact_url(t.endpoint()),
            model: t.model.clone(),
            dataset: r.dataset.to_string(),
            qps_levels: r.qps.to_vec(),
            duration: match r.duration {
                Some(d) => json_number(d.as_secs_f64()),
                None => serde_json::Value::from("forever"),
            },
            max_tokens: t.max_tokens,
            temperature: t.temperature,
            percentiles: r.percentiles.iter().map(|p| json_number(*p)).collect(),
            show_tokens: true,
            schema_version: SCHEMA_VERSION,
            tool: "llmload".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            run_id: r.run_id.clone(),
            status: "running".into(),
            partial: true,
            levels_completed: 0,
            arrival: r.arrival.to_string(),
            seed: r.seed,
            request_timeout_s: t.client.request_timeout.as_secs_f64(),
            stream_usage: t.stream_usage,
            max_in_flight: t.max_in_flight,
            host: hostname(),
            extra_headers: t.client.headers.iter().map(|(k, _)| k.clone()).collect(),
            results_file: DEFAULT_RESULTS_FILE.into(),
            plot_file: None,
            started_at: r.now.to_rfc3339(),
            finished_at: None,
            job: r.job.map(|(j, _)| j.to_string()),
            target: r.job.map(|(_, t)| t.to_string()),
            kind: Some(r.kind.to_string()),
            error: None,
            connection_reuse: true,
            notices: Vec::new(),
            shard: None,
            start_at: None,
            merged_from: Vec::new(),
            workload: None,
            load: qps_mode(),
            concurrency_levels: Vec::new(),
            qps_ramps: Vec::new(),
            max_concurrency: None,
            trace: None,
            trace_file: None,
            warmup: None,
            sessions: None,
            proxy: t
                .client
                .proxies
                .for_uri(&t.endpoint().parse().unwrap_or_default())
                .map(|p| p.authority()),
            workers: Some(crate::base::workers::get()),
            send_quantum: Some(crate::plan::send_quantum::get().to_string()),
        }
    }
}

impl Metadata {
    /// Say what the levels are: rates, ramps, users or a replay (and its
    /// trace), and the queueing cap.
    pub fn describe_load(
        &mut self,
        levels: &crate::plan::load::Levels,
        trace_file: Option<&Path>,
        max_concurrency: Option<usize>,
    ) {
        use crate::plan::load::Levels;
        self.load = levels.mode().to_string();
        self.max_concurrency = max_concurrency;
        match levels {
            Levels::Concurrency(c) => {
                self.concurrency_levels = c.clone();
                self.qps_levels.clear();
            }
            Levels::Rates(r) if r.iter().any(|l| l.is_ramp()) => {
                self.qps_ramps = r.iter().map(|l| l.to_string()).collect()
            }
            Levels::Rates(_) => {}
            Levels::Trace(r) => {
                self.trace = Some(r.summary());
                self.trace_file = trace_file.map(|p| p.display().to_string());
                if !r.options.looping {
                    self.duration = json_number(r.pass().as_secs_f64());
                }
            }
        }
    }

    /// How many levels the run planned: its rates, its users, or the one
    /// level of a replay.
    pub fn planned_levels(&self) -> usize {
        match self.load.as_str() {
            "concurrency" => self.concurrency_levels.len(),
            "trace" => 1,
            _ => self.qps_levels.len(),
        }
    }

    /// The PNG's title: model, where, which run.
    pub fn plot_title(&self) -> String {
        match (&self.job, &self.target) {
            (Some(job), Some(target)) => {
                format!("{} @ {target} ({job}): run {}", self.model, self.run_id)
            }
            _ => format!("{} @ {}: run {}", self.model, self.endpoint, self.run_id),
        }
    }
}

/// This machine's name, for metadata.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A run directory read back for [`crate::analysis::compare`]: its metadata, levels
/// and summary (recomputed from the levels when missing). Errors name the
/// file and what is wrong.
pub fn load_run(path: &Path, name: &str) -> Result<crate::analysis::compare::Run, String> {
    let dir = RunDir::open(path);
    let meta: Metadata = dir.read_json(METADATA_FILE)?;
    let levels: Vec<LevelResult> = dir.read_json(&meta.results_file)?;
    let summary = dir
        .read_json::<Summary>(SUMMARY_FILE)
        .unwrap_or_else(|_| summarize(&levels, &meta.status));
    Ok(crate::analysis::compare::Run {
        name: name.to_string(),
        model: meta.model,
        dataset: meta.dataset,
        levels,
        summary,
    })
}

/// One run's directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
    pub id: String,
}

impl RunDir {
    /// Create `root/<stamp>` (or `root/<stamp>-N` when taken).
    pub fn create(root: &Path, stamp: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        for n in 1..10_000 {
            let id = if n == 1 {
                stamp.to_string()
            } else {
                format!("{stamp}-{n}")
            };
            let path = root.join(&id);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path, id }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("10,000 runs in one second"))
    }

    pub fn open(path: &Path) -> Self {
        Self {
            id: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_owned(),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        write_atomic(&self.file(name), &bytes)
    }

    pub fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, String> {
        let path = self.file(name);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Write via a temporary file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself; best effort (not all filesystems
        // allow fsync on a directory).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `YYYY-MM-DD_HH-MM-SS` in local time, the seed's directory name.
pub fn stamp(now: &chrono::DateTime<chrono::Local>) -> String {
    now.format("%Y-%m-%d_%H-%M-%S").to_string()
}

/// The seed's `timestamp`: local, microseconds, no offset.
pub fn seed_timestamp(now: &chrono::DateTime<chrono::Local>) -> String {
    now.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// A number as JSON, an integer when whole (`60`, not `60.0`).
pub fn json_number(v: f64) -> serde_json::Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        serde_json::Value::from(v as i64)
    } else {
        serde_json::Value::from(v)
    }
}

/// Only the file name of a user-given `--output` / `--plot-output`: files
/// always land in the run directory, as the seed promises.
pub fn file_name_only(given: &str, default: &str) -> String {
    Path::new(given)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| default.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_second_runs_get_distinct_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let a = RunDir::create(tmp.path(), "2024-11-14_10-30-45").unwrap();
        let b = RunDir::create(tmp.path(), "2024-11-14_10-30-45").unwrap();
        let c = RunDir::create(tmp.path(), "2024-11-14_10-30-45").unwrap();
        assert_eq!(a.id, "2024-11-14_10-30-45");
        assert_eq!(b.id, "2024-11-14_10-30-45-2");
        assert_eq!(c.id, "2024-11-14_10-30-45-3");
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = RunDir::create(tmp.path(), "x").unwrap();
        d.write_json("a.json", &serde_json::json!({"k": 1}))
            .unwrap();
        d.write_json("a.json", &serde_json::json!({"k": 2}))
            .unwrap();
        let names: Vec<_> = std::fs::read_dir(&d.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["a.json"]);
        let v: serde_json::Value = d.read_json("a.json").unwrap();
        assert_eq!(v["k"], 2);
    }

    #[test]
    fn helpers() {
        assert_eq!(json_number(60.0).to_string(), "60");
        assert_eq!(json_number(0.5).to_string(), "0.5");
        assert_eq!(file_name_only("out/r.json", "d.json"), "r.json");
        assert_eq!(file_name_only("", "d.json"), "d.json");
    }
}
