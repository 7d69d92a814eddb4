//! `llmload.toml`: parsed strictly, validated all at once.
//!
//! Parsing (`RawConfig`) only checks shapes; [`validate`] then checks
//! meaning and reports **every** problem with its key path
//! (`job[1].schedule: …`), k6-style, so one `--check` fixes a file.

use crate::daemon::fire::FireSchedule;
use crate::schedule::Arrival;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub target: Vec<RawTarget>,
    #[serde(default)]
    pub job: Vec<RawJob>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub results_dir: Option<String>,
    /// Bearer token for the control API's POSTs, from this env var…
    pub api_token_env: Option<String>,
    /// …or this file.
    pub api_token_file: Option<String>,
    /// In-flight requests get this long after SIGTERM before abandonment.
    pub shutdown_grace: Option<String>,
}

/// The `[telemetry]` table is telemetry's own settings type.
pub use crate::telemetry::FileConfig as RawTelemetry;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: String,
    pub endpoint: String,
    pub model: String,
    pub dataset: String,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub request_timeout: Option<DurationValue>,
    pub connect_timeout: Option<DurationValue>,
    pub first_token_timeout: Option<DurationValue>,
    pub idle_timeout: Option<DurationValue>,
    pub pool_idle_timeout: Option<DurationValue>,
    /// The server's own metrics URL (or "auto"), scraped during runs.
    pub server_metrics: Option<String>,
    pub server_metrics_interval: Option<DurationValue>,
    pub ca_cert: Option<String>,
    #[serde(default)]
    pub insecure: bool,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub stream_usage: Option<bool>,
    pub max_in_flight: Option<usize>,
    /// `seed`, `sharegpt` or `jsonl` (detected when omitted).
    pub dataset_format: Option<String>,
    /// A Hugging Face tokenizer.json for exact lengths and counts.
    pub tokenizer: Option<String>,
    /// Send `ignore_eos` and `min_tokens`: exact output lengths.
    #[serde(default)]
    pub ignore_eos: bool,
    /// `chat` (default) or `completions`.
    pub api: Option<String>,
    /// A table merged into every request body.
    pub extra_body: Option<toml::Table>,
    #[serde(default)]
    pub force_extra_body: bool,
    /// Retention: keep at most this many runs of this target…
    pub keep_runs: Option<usize>,
    /// …and none older than this many days. Default: keep everything.
    pub keep_days: Option<f64>,
}

/// `"60s"`, `"forever"`, or a number of seconds.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(f64),
    Text(String),
}

/// `qps = 5` or `qps = [1, 5, 10]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum QpsValue {
    One(f64),
    Many(Vec<f64>),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    pub name: String,
    pub target: String,
    pub kind: String,
    /// Sweeps and soaks: the rate(s). Capacity jobs search instead.
    pub qps: Option<QpsValue>,
    /// Sweeps: per level; soaks: the whole soak.
    pub duration: Option<DurationValue>,
    pub schedule: String,
    /// IANA zone for cron schedules (default UTC).
    pub timezone: Option<String>,
    pub arrival: Option<String>,
    pub seed: Option<u64>,
    /// Soak: write a results snapshot this often.
    pub snapshot_every: Option<DurationValue>,
    /// Draw the PNG (default true).
    pub plot: Option<bool>,
    /// Also write requests.jsonl, a line per request (default false).
    pub record_requests: Option<bool>,
    /// Judge requests against this SLO (sweeps: goodput and attainment
    /// per level; capacity jobs: required).
    pub slo: Option<Vec<String>>,
    pub slo_attainment: Option<f64>,
    /// Capacity jobs: the search range, precision and probe lengths.
    pub min_qps: Option<f64>,
    pub max_qps: Option<f64>,
    pub precision: Option<f64>,
    pub probe_duration: Option<DurationValue>,
    pub confirm_duration: Option<DurationValue>,
}

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
}

/// A `[[target]]`: a name for the shared [`crate::target::Target`], its
/// dataset, and how long its runs are kept.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// Endpoint, key source, headers, TLS, timeouts, request shape.
    pub spec: crate::target::Target,
    /// A file (relative paths resolved against the config's directory), or
    /// `synthetic:…`.
    pub dataset: PathBuf,
    pub dataset_format: Option<crate::workload::Format>,
    pub tokenizer: Option<PathBuf>,
    pub keep_runs: Option<usize>,
    pub keep_days: Option<f64>,
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
    pub slo: Option<std::sync::Arc<crate::slo::SloTarget>>,
    /// Capacity jobs: what to search and how.
    pub capacity: Option<CapacityJob>,
}

/// A `kind = "capacity"` job's search.
#[derive(Debug, Clone)]
pub struct CapacityJob {
    pub search: crate::search::SearchConfig,
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
        DurationValue::Text(t) => crate::duration::parse(t).map(Some),
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

pub fn validate(path: &Path, raw: RawConfig) -> Result<Config, Vec<String>> {
    let mut errs: Vec<String> = Vec::new();
    let mut warnings = Vec::new();
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let file = path.display().to_string();
    let mut err = |key: &str, msg: String| errs.push(format!("{file}: {key}: {msg}"));

    let listen = raw
        .server
        .listen
        .clone()
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(_) => {
            err(
                "server.listen",
                format!("'{listen}' is not an address like 127.0.0.1:9464"),
            );
            DEFAULT_LISTEN.parse().expect("valid default")
        }
    };
    let results_dir = rel(
        &base,
        raw.server.results_dir.as_deref().unwrap_or("results"),
    );
    let shutdown_grace = match &raw.server.shutdown_grace {
        None => Duration::from_secs(10),
        Some(s) => crate::duration::parse(s).unwrap_or_else(|e| {
            err("server.shutdown_grace", e);
            Duration::from_secs(10)
        }),
    };
    let mut api_token = None;
    match (&raw.server.api_token_env, &raw.server.api_token_file) {
        (Some(_), Some(_)) => err(
            "server",
            "set api_token_env or api_token_file, not both".into(),
        ),
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => api_token = Some(v.trim().to_string()),
            _ => warnings.push(format!(
                "{file}: server.api_token_env: environment variable {var} is not set: the control API would refuse every POST"
            )),
        },
        (None, Some(f)) => match std::fs::read_to_string(rel(&base, f)) {
            Ok(v) if !v.trim().is_empty() => api_token = Some(v.trim().to_string()),
            Ok(_) => err("server.api_token_file", format!("{f} is empty")),
            Err(e) => err("server.api_token_file", format!("cannot read {f}: {e}")),
        },
        (None, None) => {}
    }
    if let Some(r) = raw.telemetry.sample_ratio
        && !(0.0..=1.0).contains(&r)
    {
        err(
            "telemetry.sample_ratio",
            format!("{r} must be between 0 and 1"),
        );
    }

    let mut targets = Vec::new();
    let mut names = HashSet::new();
    for (i, t) in raw.target.iter().enumerate() {
        let key = |k: &str| format!("target[{i}].{k}");
        if !valid_name(&t.name) {
            err(
                &key("name"),
                format!(
                    "'{}' must be 1-64 letters, digits, '-' or '_' (it names directories and metric labels)",
                    t.name
                ),
            );
        }
        if !names.insert(t.name.clone()) {
            err(&key("name"), format!("duplicate target name '{}'", t.name));
        }
        let dataset = if t.dataset.starts_with(crate::workload::SYNTHETIC) {
            PathBuf::from(&t.dataset)
        } else {
            rel(&base, &t.dataset)
        };
        let dataset_format = match t.dataset_format.as_deref().map(str::parse) {
            None => None,
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => {
                err(&key("dataset_format"), e);
                None
            }
        };
        let tokenizer = t.tokenizer.as_deref().map(|p| rel(&base, p));
        if t.api_key_env.is_some() && t.api_key_file.is_some() {
            err(
                &key("api_key_env"),
                "set api_key_env or api_key_file, not both".into(),
            );
        }
        if let Some(var) = &t.api_key_env
            && std::env::var(var)
                .map(|v| v.trim().is_empty())
                .unwrap_or(true)
        {
            warnings.push(format!(
                "{file}: {}: environment variable {var} is not set: requests will carry no key",
                key("api_key_env")
            ));
        }
        let api_key_file = t.api_key_file.as_deref().map(|f| rel(&base, f));
        let mut dur = |k: &str, v: &Option<DurationValue>, default: Option<Duration>| match v {
            None => default,
            Some(v) => match finite_duration(v) {
                Ok(d) => Some(d),
                Err(e) => {
                    err(&key(k), e);
                    default
                }
            },
        };
        let request_timeout = dur(
            "request_timeout",
            &t.request_timeout,
            Some(Duration::from_secs(300)),
        )
        .expect("default set");
        let connect_timeout = dur(
            "connect_timeout",
            &t.connect_timeout,
            Some(Duration::from_secs(10)),
        )
        .expect("default set");
        let first_token_timeout = dur("first_token_timeout", &t.first_token_timeout, None);
        let server_metrics_interval =
            dur("server_metrics_interval", &t.server_metrics_interval, None);
        let idle_timeout = dur("idle_timeout", &t.idle_timeout, None);
        let pool_idle_timeout = dur(
            "pool_idle_timeout",
            &t.pool_idle_timeout,
            Some(crate::client::DEFAULT_POOL_IDLE_TIMEOUT),
        )
        .expect("default set");
        if let Some(d) = t.keep_days
            && !(d.is_finite() && d > 0.0)
        {
            err(&key("keep_days"), format!("{d} must be > 0"));
        }
        if t.keep_runs == Some(0) {
            err(
                &key("keep_runs"),
                "must be at least 1 (omit it to keep everything)".into(),
            );
        }
        if t.insecure {
            warnings.push(format!(
                "{file}: {}: TLS verification is OFF for target '{}'",
                key("insecure"),
                t.name
            ));
        }
        let mut spec = crate::target::Target::new(t.endpoint.clone(), t.model.clone());
        spec.key = match (&t.api_key_env, api_key_file) {
            (Some(var), _) => crate::target::KeySource::Env(var.clone()),
            (None, Some(f)) => crate::target::KeySource::File(f),
            (None, None) => crate::target::KeySource::None,
        };
        spec.client.headers = t
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        spec.client.request_timeout = request_timeout;
        spec.client.connect_timeout = connect_timeout;
        spec.client.first_token_timeout = first_token_timeout;
        spec.client.idle_timeout = idle_timeout;
        spec.client.pool_idle_timeout = pool_idle_timeout;
        spec.client.ca_cert = t.ca_cert.as_deref().map(|c| rel(&base, c));
        spec.client.insecure = t.insecure;
        spec.server_metrics = t.server_metrics.clone();
        if let Some(v) = server_metrics_interval {
            spec.server_metrics_interval = v;
        }
        if let Some(m) = t.max_tokens {
            spec.max_tokens = m;
        }
        if let Some(v) = t.temperature {
            spec.temperature = v;
        }
        if let Some(v) = t.stream_usage {
            spec.stream_usage = v;
        }
        if let Some(v) = t.max_in_flight {
            spec.max_in_flight = v;
        }
        match t.api.as_deref().map(str::parse) {
            None => {}
            Some(Ok(a)) => spec.api = a,
            Some(Err(e)) => err(&key("api"), e),
        }
        spec.ignore_eos = t.ignore_eos;
        spec.force_extra_body = t.force_extra_body;
        if let Some(table) = &t.extra_body {
            match serde_json::to_value(table) {
                Ok(serde_json::Value::Object(m)) => spec.extra_body = m,
                _ => err(&key("extra_body"), "must be a table".into()),
            }
        }
        if let Err(e) = crate::prompts::load(
            &dataset.to_string_lossy(),
            dataset_format,
            tokenizer.as_deref(),
            0,
            &spec,
        ) {
            err(&key("dataset"), e.to_string());
        }
        for p in spec.validate() {
            // A key file that is missing now may appear before the daemon
            // starts (a mounted secret): a warning, as before.
            if p.setting == crate::target::Setting::ApiKey {
                warnings.push(format!("{file}: {}: {}", key(p.setting.key()), p.message));
            } else {
                err(&key(p.setting.key()), p.message);
            }
        }
        targets.push(Target {
            name: t.name.clone(),
            spec,
            dataset,
            dataset_format,
            tokenizer,
            keep_runs: t.keep_runs,
            keep_days: t.keep_days,
        });
    }
    if raw.target.is_empty() {
        err("target", "define at least one [[target]]".into());
    }

    let mut jobs = Vec::new();
    let mut job_names = HashSet::new();
    for (i, j) in raw.job.iter().enumerate() {
        let key = |k: &str| format!("job[{i}].{k}");
        if !valid_name(&j.name) {
            err(
                &key("name"),
                format!("'{}' must be 1-64 letters, digits, '-' or '_'", j.name),
            );
        }
        if !job_names.insert(j.name.clone()) {
            err(&key("name"), format!("duplicate job name '{}'", j.name));
        }
        if !names.contains(&j.target) {
            let known: Vec<&str> = raw.target.iter().map(|t| t.name.as_str()).collect();
            err(
                &key("target"),
                format!(
                    "no target named '{}' (targets: {})",
                    j.target,
                    known.join(", ")
                ),
            );
        }
        let kind = match j.kind.as_str() {
            "sweep" => JobKind::Sweep,
            "soak" => JobKind::Soak,
            "capacity" => JobKind::Capacity,
            other => {
                err(
                    &key("kind"),
                    format!("'{other}' must be \"sweep\", \"soak\" or \"capacity\""),
                );
                JobKind::Sweep
            }
        };
        let qps = match (&j.qps, kind) {
            (Some(QpsValue::One(q)), _) => vec![*q],
            (Some(QpsValue::Many(v)), _) => v.clone(),
            (None, JobKind::Capacity) => Vec::new(),
            (None, _) => {
                err(&key("qps"), "missing: the rate(s) to send".into());
                Vec::new()
            }
        };
        if kind == JobKind::Capacity && j.qps.is_some() {
            err(
                &key("qps"),
                "a capacity job searches its rates: use min_qps and max_qps".into(),
            );
        }
        if kind != JobKind::Capacity && qps.is_empty() && j.qps.is_some() {
            err(&key("qps"), "give at least one rate".into());
        }
        for q in &qps {
            if !(q.is_finite() && *q > 0.0) {
                err(&key("qps"), format!("{q} must be a rate above 0"));
            }
        }
        if kind == JobKind::Soak && qps.len() > 1 {
            err(
                &key("qps"),
                "a soak runs one rate: give a single number".into(),
            );
        }
        let duration = match (&j.duration, kind) {
            (None, JobKind::Capacity) => None,
            (None, _) => {
                err(&key("duration"), "missing: how long to send".into());
                None
            }
            (Some(_), JobKind::Capacity) => {
                err(
                    &key("duration"),
                    "a capacity job's probes use probe_duration and confirm_duration".into(),
                );
                None
            }
            (Some(d), _) => match duration_of(d) {
                Ok(None) if kind == JobKind::Sweep => {
                    err(
                        &key("duration"),
                        "'forever' is only allowed for kind = \"soak\"".into(),
                    );
                    None
                }
                Ok(Some(d)) if d.is_zero() => {
                    err(&key("duration"), "must be longer than zero".into());
                    None
                }
                Ok(d) => d,
                Err(e) => {
                    err(&key("duration"), e);
                    None
                }
            },
        };
        let attainment = match j.slo_attainment {
            None => crate::slo::DEFAULT_ATTAINMENT,
            Some(a) => crate::slo::SloTarget::validate_attainment(a).unwrap_or_else(|e| {
                err(&key("slo_attainment"), e);
                crate::slo::DEFAULT_ATTAINMENT
            }),
        };
        let slo = match &j.slo {
            None => None,
            Some(specs) => match crate::slo::Slo::parse(specs) {
                Ok(slo) => Some(std::sync::Arc::new(crate::slo::SloTarget {
                    slo,
                    attainment,
                })),
                Err(e) => {
                    err(&key("slo"), e);
                    None
                }
            },
        };
        if kind == JobKind::Capacity && j.slo.is_none() {
            err(
                &key("slo"),
                "a capacity job needs an SLO, e.g. slo = [\"ttft<=2s\"]".into(),
            );
        }
        if kind == JobKind::Soak && j.slo.is_some() {
            warnings.push(format!(
                "{file}: {}: soaks are judged by the alert rules, not a job SLO; ignored",
                key("slo")
            ));
        }
        let capacity_only = [
            ("min_qps", j.min_qps.is_some()),
            ("max_qps", j.max_qps.is_some()),
            ("precision", j.precision.is_some()),
            ("probe_duration", j.probe_duration.is_some()),
            ("confirm_duration", j.confirm_duration.is_some()),
        ];
        if kind != JobKind::Capacity {
            for (k, set) in capacity_only {
                if set {
                    err(&key(k), "only capacity jobs take it".into());
                }
            }
        }
        let capacity = (kind == JobKind::Capacity).then(|| {
            let rate = |k: &str,
                        v: Option<f64>,
                        default: f64,
                        err: &mut dyn FnMut(&str, String)| match v {
                None => default,
                Some(r) if r.is_finite() && r > 0.0 => r,
                Some(r) => {
                    err(&key(k), format!("{r} must be a rate above 0"));
                    default
                }
            };
            let min_qps = rate("min_qps", j.min_qps, 0.5, &mut err);
            let max_qps = rate("max_qps", j.max_qps, 1000.0, &mut err);
            if min_qps >= max_qps {
                err(
                    &key("min_qps"),
                    format!("{min_qps} must be below max_qps {max_qps}"),
                );
            }
            let precision = match j.precision {
                None => 0.05,
                Some(p) if p > 0.0 && p < 1.0 => p,
                Some(p) => {
                    err(&key("precision"), format!("{p} must be between 0 and 1"));
                    0.05
                }
            };
            let mut probe_len = |k: &str, v: &Option<DurationValue>, default: u64| match v {
                None => Duration::from_secs(default),
                Some(v) => finite_duration(v).unwrap_or_else(|e| {
                    err(&key(k), e);
                    Duration::from_secs(default)
                }),
            };
            CapacityJob {
                search: crate::search::SearchConfig {
                    min_qps,
                    max_qps,
                    precision,
                },
                probe_duration: probe_len("probe_duration", &j.probe_duration, 30),
                confirm_duration: probe_len("confirm_duration", &j.confirm_duration, 60),
            }
        });
        let schedule = match FireSchedule::parse(&j.schedule, j.timezone.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                err(&key("schedule"), e);
                FireSchedule::AtStart
            }
        };
        let arrival = match j.arrival.as_deref().map(str::parse::<Arrival>) {
            // Capacity searches probe with Poisson arrivals, as MLPerf does.
            None if kind == JobKind::Capacity => Arrival::Poisson,
            None => Arrival::Constant,
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                err(&key("arrival"), e);
                Arrival::Constant
            }
        };
        let snapshot_every = match &j.snapshot_every {
            None => Duration::from_secs(600),
            Some(v) => finite_duration(v).unwrap_or_else(|e| {
                err(&key("snapshot_every"), e);
                Duration::from_secs(600)
            }),
        };
        if kind == JobKind::Sweep && j.snapshot_every.is_some() {
            warnings.push(format!(
                "{file}: {}: only soaks take snapshots; ignored for a sweep",
                key("snapshot_every")
            ));
        }
        jobs.push(Job {
            name: j.name.clone(),
            target: j.target.clone(),
            kind,
            qps,
            duration,
            schedule,
            arrival,
            seed: j.seed.unwrap_or(0),
            snapshot_every,
            plot: j.plot.unwrap_or(true),
            record_requests: j.record_requests.unwrap_or(false),
            slo,
            capacity,
        });
    }

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
    })
}

impl Config {
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn targets_take_workload_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = parse(
            &tmp.path().join("c.toml"),
            r#"
[[target]]
name = "base"
endpoint = "http://127.0.0.1:8000/v1/completions"
model = "m"
dataset = "synthetic:input=256,output=64,prefix=32"
api = "completions"
ignore_eos = true
extra_body = { top_k = 20, chat_template_kwargs = { enable_thinking = false } }
"#,
        )
        .unwrap();
        let t = &cfg.targets[0];
        assert_eq!(
            t.dataset,
            PathBuf::from("synthetic:input=256,output=64,prefix=32")
        );
        assert_eq!(t.spec.api, crate::workload::Api::Completions);
        assert!(t.spec.ignore_eos);
        assert_eq!(t.spec.extra_body["top_k"], 20);
        assert_eq!(
            t.spec.extra_body["chat_template_kwargs"]["enable_thinking"],
            false
        );
        let errs = parse(
            &tmp.path().join("c.toml"),
            r#"
[[target]]
name = "t"
endpoint = "http://127.0.0.1:8000/v1/chat/completions"
model = "m"
dataset = "synthetic:input=8,output=0"
api = "telepathy"
dataset_format = "csv"
extra_body = { stream = false }
"#,
        )
        .unwrap_err()
        .join("\n");
        for want in [
            "target[0].api",
            "telepathy",
            "target[0].dataset_format",
            "csv",
            "target[0].dataset",
            "output=0",
            "target[0].extra_body",
            "'stream'",
        ] {
            assert!(errs.contains(want), "{want} in {errs}");
        }
    }

    fn dataset(dir: &Path) {
        write(
            dir,
            "conversations.json",
            r#"[{"prompt_content":"s","cut_chat_history":[{"role":"user","content":"hi"}]}]"#,
        );
    }

    /// The issue's example file, verbatim.
    pub const EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:9464"
results_dir = "results"

[[target]]
name = "staging-llama"
endpoint = "http://127.0.0.1:8000/v1/chat/completions"
model = "meta-llama/Llama-3.1-8B-Instruct"
dataset = "conversations.json"
api_key_env = "STAGING_API_KEY"     # or api_key_file = "/run/secrets/key"

[[job]]
name = "nightly-sweep"
target = "staging-llama"
kind = "sweep"
qps = [1, 5, 10, 20]
duration = "60s"
schedule = "0 3 * * *"              # cron; or "every 6h"; or "at_start"

[[job]]
name = "soak"
target = "staging-llama"
kind = "soak"
qps = 5
duration = "forever"                # or "24h"
snapshot_every = "10m"
schedule = "at_start"
"#;

    #[test]
    fn the_documented_example_works_as_written() {
        let tmp = tempfile::tempdir().unwrap();
        dataset(tmp.path());
        let p = write(tmp.path(), "llmload.toml", EXAMPLE);
        let c = load(&p).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.results_dir, tmp.path().join("results"));
        assert_eq!(
            c.targets[0].spec.key,
            crate::target::KeySource::Env("STAGING_API_KEY".into())
        );
        assert_eq!(c.jobs[0].qps, vec![1.0, 5.0, 10.0, 20.0]);
        assert_eq!(c.jobs[0].duration, Some(Duration::from_secs(60)));
        assert!(matches!(c.jobs[0].schedule, FireSchedule::Cron { .. }));
        assert_eq!(c.jobs[1].kind, JobKind::Soak);
        assert_eq!(c.jobs[1].duration, None);
        assert_eq!(c.jobs[1].snapshot_every, Duration::from_secs(600));
        assert_eq!(c.jobs[1].schedule, FireSchedule::AtStart);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(
            tmp.path(),
            "bad.toml",
            r#"
[server]
listen = "nowhere"

[[target]]
name = "a b"
endpoint = "ftp://x"
model = "m"
dataset = "missing.json"

[[job]]
name = "j"
target = "nope"
kind = "burst"
qps = [0, 5]
duration = "forever"
schedule = "every banana"
arrival = "bursty"
"#,
        );
        let errs = load(&p).unwrap_err();
        let all = errs.join("\n");
        for needle in [
            "server.listen: 'nowhere'",
            "target[0].name: 'a b'",
            "target[0].endpoint: 'ftp://x'",
            "target[0].dataset:",
            "missing.json: cannot read dataset",
            "job[0].target: no target named 'nope'",
            "job[0].kind: 'burst'",
            "job[0].qps: 0 must be a rate above 0",
            "job[0].schedule:",
            "job[0].arrival: unknown arrival 'bursty'",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(errs.iter().all(|e| e.starts_with(&p.display().to_string())));
        assert!(errs.len() >= 10, "{all}");
    }

    #[test]
    fn syntax_and_unknown_keys_name_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(tmp.path(), "a.toml", "[server]\nlisten = \n");
        let e = load(&p).unwrap_err().join("\n");
        assert!(e.contains("a.toml:2:"), "{e}");
        let p = write(tmp.path(), "b.toml", "[server]\nlistn = \"x\"\n");
        let e = load(&p).unwrap_err().join("\n");
        assert!(
            e.contains("b.toml:2:1") && e.contains("unknown field `listn`"),
            "{e}"
        );
        let p = write(
            tmp.path(),
            "c.toml",
            "[[target]]\nname = \"t\"\nendpoint = \"http://h/v1\"\nmodel = 5\ndataset = \"d\"\n",
        );
        let e = load(&p).unwrap_err().join("\n");
        assert!(e.contains("c.toml:4:9"), "{e}");
    }

    proptest::proptest! {
        /// Fuzz: any text either parses or fails with messages that each
        /// name the file; never a panic.
        #[test]
        fn any_text_parses_or_explains(text in "[\\[\\]a-z_=\" 0-9.\n#{}]{0,200}") {
            if let Err(errs) = parse(Path::new("c.toml"), &text) {
                proptest::prop_assert!(!errs.is_empty());
                for e in errs {
                    proptest::prop_assert!(e.starts_with("c.toml"), "{}", e);
                }
            }
        }
    }

    #[test]
    fn soak_rules() {
        let tmp = tempfile::tempdir().unwrap();
        dataset(tmp.path());
        let p = write(
            tmp.path(),
            "s.toml",
            r#"
[[target]]
name = "t"
endpoint = "http://127.0.0.1:1/v1/chat/completions"
model = "m"
dataset = "conversations.json"
[[job]]
name = "s"
target = "t"
kind = "soak"
qps = [1, 2]
duration = "24h"
schedule = "at_start"
[[job]]
name = "w"
target = "t"
kind = "sweep"
qps = 3
duration = "forever"
schedule = "at_start"
"#,
        );
        let e = load(&p).unwrap_err().join("\n");
        assert!(e.contains("job[0].qps: a soak runs one rate"), "{e}");
        assert!(
            e.contains("job[1].duration: 'forever' is only allowed"),
            "{e}"
        );
    }
}
