//! The file as written: shapes only, checked by serde (`deny_unknown_fields`).
//! Meaning is checked by [`super::validate`].

use serde::Deserialize;
use std::collections::BTreeMap;

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
pub use crate::observe::telemetry::FileConfig as RawTelemetry;

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
    /// A ShareGPT dataset's entries as multi-turn sessions.
    #[serde(default)]
    pub sessions: bool,
    /// Sessions: the pause between a reply and the next turn (`2s`,
    /// `exp:2s`).
    pub think_time: Option<String>,
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
    /// Sweeps: closed-loop levels (users) instead of `qps`; soaks: one
    /// number of users.
    pub concurrency: Option<ConcurrencyValue>,
    /// Open-loop jobs: sends beyond this many open requests wait.
    pub max_concurrency: Option<usize>,
    /// Before the first level: `"30s"` or a number of requests.
    pub warmup: Option<WarmupValue>,
    /// Replay this trace instead of `qps` (a path, relative to the file).
    pub trace: Option<String>,
    /// `mooncake` or `azure` (detected when omitted).
    pub trace_format: Option<String>,
    pub trace_speed: Option<f64>,
    pub trace_start: Option<DurationValue>,
    pub trace_duration: Option<DurationValue>,
    /// Repeat the slice (soaks: default true).
    pub trace_loop: Option<bool>,
    /// Soaks: a rate that changes (a ramp, stages, or a daily curve).
    pub shape: Option<RawShape>,
    /// The time series' step for levels whose rate changes (default 10 s).
    pub series_interval: Option<DurationValue>,
}

/// `concurrency = 16` or `concurrency = [1, 4, 16, 64]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum ConcurrencyValue {
    One(u32),
    Many(Vec<u32>),
}

/// `warmup = "30s"` or `warmup = 200` (requests).
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum WarmupValue {
    Requests(u64),
    Text(String),
}

/// A soak's `shape`: `{ kind = "ramp", from = 1, to = 20, over = "10m" }`,
/// `{ kind = "stages", stages = [{ duration = "5m", qps = 5 }, ...] }` or
/// `{ kind = "daily", min_qps = 2, max_qps = 20, peak = "14:00" }`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawShape {
    pub kind: String,
    pub from: Option<f64>,
    pub to: Option<f64>,
    pub over: Option<DurationValue>,
    pub stages: Option<Vec<RawStage>>,
    pub min_qps: Option<f64>,
    pub max_qps: Option<f64>,
    /// `HH:MM`, in the job's `timezone` (default UTC).
    pub peak: Option<String>,
}

/// One stage: `qps` held for `duration`, or a ramp `from`..`to` over it.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    pub duration: DurationValue,
    pub qps: Option<f64>,
    pub from: Option<f64>,
    pub to: Option<f64>,
}
