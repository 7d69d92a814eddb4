//! `llmload.toml`: parsed strictly, validated all at once.
//!
//! Parsing (`RawConfig`) only checks shapes; [`validate`] then checks
//! meaning and reports **every** problem with its key path
//! (`job[1].schedule: …`), k6-style, so one `--check` fixes a file.

use crate::daemon::fire::FireSchedule;
use crate::plan::schedule::Arrival;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod job;
mod raw;
mod server;
mod target;
#[cfg(test)]
mod tests;

pub use raw::*;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub results_dir: PathBuf,
    pub api_token: Option<String>,
    pub shutdown_grace: Duration,
    pub telemetry: RawTelemetry,
    pub targets: Vec<Target>,
    pub jobs: Vec<Job>,
    /// Problems that do not stop `--check` (a secret not set here).
    pub warnings: Vec<String>,
    /// `listen` was set by `--listen`, not by the file.
    pub listen_from_flag: bool,
    /// The environment's proxies (`HTTPS_PROXY`…), unless `--no-proxy`:
    /// set by the command, kept across reloads.
    pub proxies: crate::client::proxy::ProxySettings,
}

/// A `[[target]]`: a name for the shared [`crate::plan::target::Target`], its
/// dataset, and how long its runs are kept.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// Endpoint, key source, headers, TLS, timeouts, request shape.
    pub spec: crate::plan::target::Target,
    /// A file (relative paths resolved against the config's directory), or
    /// `synthetic:…`.
    pub dataset: PathBuf,
    pub dataset_format: Option<crate::workload::Format>,
    pub tokenizer: Option<PathBuf>,
    /// ShareGPT entries as sessions (`sessions = true`).
    pub sessions: bool,
    pub think_time: crate::plan::think::ThinkTime,
    pub keep_runs: Option<usize>,
    pub keep_days: Option<f64>,
    /// The section as written (its parsed form, printed): a reload keeps a
    /// target whose definition is unchanged, and everything running on it.
    pub definition: String,
}

impl Target {
    pub fn model(&self) -> &str {
        &self.spec.model
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Sweep,
    Soak,
    /// Search the highest rate the target holds under an SLO.
    Capacity,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sweep => "sweep",
            Self::Soak => "soak",
            Self::Capacity => "capacity",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub target: String,
    pub kind: JobKind,
    pub qps: Vec<f64>,
    /// Per level for sweeps; the whole soak (None = forever) for soaks.
    pub duration: Option<Duration>,
    pub schedule: FireSchedule,
    pub arrival: Arrival,
    pub seed: u64,
    pub snapshot_every: Duration,
    pub plot: bool,
    pub record_requests: bool,
    /// The SLO requests are judged against, if any.
    pub slo: Option<std::sync::Arc<crate::analysis::slo::SloTarget>>,
    /// Capacity jobs: what to search and how.
    pub capacity: Option<CapacityJob>,
    /// Closed-loop users per level (sweeps), or of the soak; empty for
    /// rate jobs.
    pub concurrency: Vec<u32>,
    /// Open-loop jobs: sends beyond this many open requests wait.
    pub max_concurrency: Option<usize>,
    pub warmup: Option<crate::engine::runner::Warmup>,
    /// A trace replay instead of rates.
    pub trace: Option<TraceJob>,
    /// A soak's changing rate.
    pub shape: Option<Shape>,
    pub series_step: Duration,
    /// The section as written (see [`Target::definition`]).
    pub definition: String,
}

/// A job's trace: read (and checked) when the configuration is.
#[derive(Debug, Clone)]
pub struct TraceJob {
    pub path: PathBuf,
    pub trace: std::sync::Arc<crate::workload::trace::Trace>,
    pub options: crate::plan::replay::ReplayOptions,
}

/// A soak's `shape`.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Stages `(length, from, to)`; a ramp is one stage, the last rate
    /// held after.
    Stages(Vec<(Duration, f64, f64)>),
    /// Cosine from `min` to `max` (at `peak` seconds after midnight in `tz`).
    Daily {
        min: f64,
        max: f64,
        peak: f64,
        tz: chrono_tz::Tz,
    },
}

impl Shape {
    /// The curve of a soak starting at `now`.
    pub fn profile(&self, now: chrono::DateTime<chrono::Utc>) -> crate::plan::profile::Profile {
        use chrono::Timelike;
        match self {
            Self::Stages(s) => crate::plan::profile::Profile::stages(s).expect("validated"),
            Self::Daily { min, max, peak, tz } => {
                let local = now.with_timezone(tz);
                let secs =
                    local.num_seconds_from_midnight() as f64 + local.nanosecond() as f64 * 1e-9;
                crate::plan::profile::Profile::daily(*min, *max, *peak, secs).expect("validated")
            }
        }
    }
}

/// A `kind = "capacity"` job's search.
#[derive(Debug, Clone)]
pub struct CapacityJob {
    pub search: crate::analysis::search::SearchConfig,
    pub probe_duration: Duration,
    pub confirm_duration: Duration,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// Read, parse and validate. Errors: one line per problem.
pub fn load(path: &Path) -> Result<Config, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<String>> {
    let de = toml::Deserializer::parse(text).map_err(|e| vec![toml_error(path, text, &e)])?;
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let msg = toml_error(path, text, &inner);
        vec![if key == "." || msg.contains(&key) {
            msg
        } else {
            format!("{msg} (at `{key}`)")
        }]
    })?;
    validate(path, raw)
}

/// `file:line:col: message` from a toml error with a span.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("{}:{line}:{col}: {msg}", path.display())
        }
        None => format!("{}: {msg}", path.display()),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn duration_of(v: &DurationValue) -> Result<Option<Duration>, String> {
    match v {
        DurationValue::Seconds(s) if s.is_finite() && *s >= 0.0 => {
            Ok(Some(Duration::from_secs_f64(*s)))
        }
        DurationValue::Seconds(s) => Err(format!("{s} is not a duration")),
        DurationValue::Text(t) if t.trim() == "forever" => Ok(None),
        DurationValue::Text(t) => crate::base::duration::parse(t).map(Some),
    }
}

fn finite_duration(v: &DurationValue) -> Result<Duration, String> {
    match duration_of(v)? {
        Some(d) if !d.is_zero() => Ok(d),
        Some(_) => Err("must be longer than zero".into()),
        None => Err("'forever' is only allowed for a soak's duration".into()),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// Resolve relative paths against the config file's directory.
fn rel(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() { p } else { base.join(p) }
}

/// Every problem found, each naming the file and the key path.
pub(super) struct Problems {
    pub file: String,
    errs: Vec<String>,
    warnings: Vec<String>,
}

impl Problems {
    pub fn err(&mut self, key: &str, msg: String) {
        self.errs.push(format!("{}: {key}: {msg}", self.file));
    }
    /// A warning is already worded in full (`file: key: message`).
    pub fn warn(&mut self, msg: String) {
        self.warnings.push(msg);
    }
}

pub fn validate(path: &Path, raw: RawConfig) -> Result<Config, Vec<String>> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut p = Problems {
        file: path.display().to_string(),
        errs: Vec::new(),
        warnings: Vec::new(),
    };
    let server::Server {
        listen,
        results_dir,
        api_token,
        shutdown_grace,
    } = server::server(&raw, &base, &mut p);
    let (targets, names) = target::targets(&raw, &base, &mut p);
    let jobs = job::jobs(&raw, &names, &base, &mut p);
    let Problems { errs, warnings, .. } = p;
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Config {
        path: path.to_owned(),
        listen,
        results_dir,
        api_token,
        shutdown_grace,
        telemetry: raw.telemetry,
        targets,
        jobs,
        warnings,
        listen_from_flag: false,
        proxies: crate::client::proxy::ProxySettings::direct(),
    })
}

impl Config {
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }
}
