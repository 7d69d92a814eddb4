//! Command-line definitions. Validation that clap cannot express lives in
//! the commands themselves, which report every problem with the flag name.

pub mod commands;
pub mod progress;

use crate::base::secret::ApiKey;
use crate::mock::OutputTokens;
use crate::mock::faults::FaultSpec;
use crate::plan::schedule::Arrival;
use crate::plan::target::{KeySource, Target};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "llmload",
    version,
    about = "Find how much traffic an LLM endpoint really holds",
    long_about = "Open-loop QPS sweeps against OpenAI-compatible streaming endpoints, \
with TTFT/ITL/E2E histograms, saturation analysis, a results directory and PNG per run, \
and a daemon mode with Prometheus metrics and OpenTelemetry traces."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Runtime worker threads: default, the cores this process may use
    /// (its cgroup CPU quota and affinity included).
    #[arg(long, global = true, env = "LLMLOAD_WORKERS", value_name = "N", value_parser = crate::base::workers::parse)]
    pub workers: Option<usize>,
    /// How finely a fast level's sends are timed: each waits for the end
    /// of its quantum, so the pacer wakes once per quantum, not once per
    /// send. `auto`: 1ms from 2000 req/s, exact below and for trace
    /// replays; `0`: every send at its own instant; at most 5ms.
    #[arg(long, global = true, env = "LLMLOAD_SEND_QUANTUM", value_name = "DURATION", value_parser = crate::plan::send_quantum::parse)]
    pub send_quantum: Option<crate::plan::send_quantum::SendQuantum>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One QPS sweep, the seed benchmark's flags and outputs.
    Run(Box<RunArgs>),
    /// Find the highest rate the endpoint holds under an SLO.
    Capacity(Box<CapacityArgs>),
    /// Is NEW worse than BASE? A regression verdict with an exit code.
    Compare(CompareArgs),
    /// Merge the run directories of N shards into one run.
    Merge(MergeArgs),
    /// Serve the built-in OpenAI-compatible mock endpoint.
    Mock(Box<MockArgs>),
    /// Scheduled and continuous sweeps with /metrics and a control API.
    Daemon(DaemonArgs),
    /// Re-draw benchmark_qps.png from a results directory.
    Plot(PlotArgs),
    /// Print the Prometheus alert rules, thresholds filled in.
    AlertRules(AlertRulesArgs),
    /// Measure the load generator itself: throughput, cost, accuracy, memory.
    Selftest(SelftestArgs),
}

fn parse_users(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "'{s}' must be a whole number of requests, at least 1"
        )),
    }
}

fn parse_percentiles(s: &str) -> Result<Vec<f64>, String> {
    let items = crate::plan::load::list_items(s, "percentile", "50,95,99")?;
    let mut out = Vec::new();
    for part in &items {
        let v: f64 = part
            .parse()
            .map_err(|_| format!("'{part}' is not a number (expected e.g. 50,95,99)"))?;
        if !(v > 0.0 && v < 100.0) {
            return Err(format!("percentile '{part}' must be between 0 and 100"));
        }
        out.push(v);
    }
    crate::plan::load::reject_duplicates(&out, &items)?;
    Ok(out)
}

fn parse_queue(s: &str) -> Result<usize, String> {
    match s.trim() {
        "unbounded" => Ok(crate::mock::capacity::UNBOUNDED),
        n => n
            .parse()
            .map_err(|_| format!("'{s}' is not a queue length (a number, or 'unbounded')")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "'{s}' must be a rate above 0 (requests per second)"
        )),
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    crate::analysis::slo::SloTarget::validate_attainment(v)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::base::duration::parse(s)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = crate::base::duration::parse(s)?;
    if d.is_zero() {
        return Err(format!("'{s}' must be longer than zero"));
    }
    Ok(d)
}

/// What every command that sends requests shares: where they go, how
/// they are shaped, how long they may take, and where results go.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// API endpoint URL (…/v1/chat/completions), or `mock` for the built-in mock.
    #[arg(long)]
    pub endpoint: String,
    /// Authentication key. Visible in `ps`: prefer LLMLOAD_API_KEY or --api-key-file.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Read the key from this file (its first non-empty line).
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// Model name sent in every request.
    #[arg(long)]
    pub model: String,
    /// Dataset: a file (the seed's JSON array, ShareGPT, or JSONL), or
    /// synthetic:input=N,output=M[,input_stddev=,output_stddev=,prefix=,samples=].
    /// Required, except with `run --trace`.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// The dataset file's format (detected when omitted).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub dataset_format: Option<crate::workload::Format>,
    /// A Hugging Face tokenizer.json (read locally): exact synthetic prompt
    /// lengths and client-side input token counts.
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// Replay a ShareGPT file's entries as multi-turn sessions: each human
    /// turn is sent with the history and the server's own replies. (JSONL
    /// with `session_id`/`turn` or `turns`, and synthetic specs with
    /// `turns=`, are sessions without it.)
    #[arg(long)]
    pub sessions: bool,
    /// Sessions: the pause between the end of a reply and the next turn:
    /// a duration (`2s`), or `exp:2s` for exponential pauses of that mean.
    #[arg(long, value_name = "DUR", default_value = "0", value_parser = crate::plan::think::ThinkTime::parse)]
    pub think_time: crate::plan::think::ThinkTime,
    /// Send ignore_eos and min_tokens (vLLM, llama.cpp) so that every request
    /// generates exactly its max_tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Which API: chat (/v1/chat/completions) or completions (/v1/completions, prompt).
    #[arg(long, value_enum, default_value = "chat")]
    pub api: crate::workload::Api,
    /// JSON object merged into every request body, e.g.
    /// '{"chat_template_kwargs": {"enable_thinking": false}}'.
    #[arg(long, value_name = "JSON")]
    pub extra_body: Option<String>,
    /// Let --extra-body change keys llmload sets itself (model, stream, max_tokens...).
    #[arg(long)]
    pub force_extra_body: bool,
    /// Max tokens per request.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: u32,
    /// Generation temperature.
    #[arg(long, default_value_t = 0.7, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Where timestamped run directories are created.
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Seed for Poisson arrivals (and the embedded mock).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longest a request may take, send to end of stream (seconds or 90s).
    #[arg(long, default_value = "300", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,
    /// TCP+TLS connect timeout.
    #[arg(long, default_value = "10", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,
    /// Longest wait from send to the first token (default: request timeout).
    #[arg(long, value_parser = parse_positive_duration)]
    pub first_token_timeout: Option<Duration>,
    /// Longest silence between stream frames (default: none).
    #[arg(long, value_parser = parse_positive_duration)]
    pub idle_timeout: Option<Duration>,
    /// Close connections idle this long (keep below the server's
    /// keep-alive timeout: uvicorn and llama.cpp use 5 s).
    #[arg(long, default_value = "4s", value_parser = parse_positive_duration)]
    pub pool_idle_timeout: Duration,
    /// Extra request header, 'Name: value'. Repeatable.
    #[arg(long = "header", value_name = "'K: V'")]
    pub headers: Vec<String>,
    /// PEM file of extra CA certificates to trust.
    #[arg(long, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Skip TLS certificate verification (dangerous).
    #[arg(long)]
    pub insecure: bool,
    /// Ignore HTTPS_PROXY, HTTP_PROXY and NO_PROXY: connect directly.
    #[arg(long)]
    pub no_proxy: bool,
    /// Do not send stream_options.include_usage (for servers that reject it).
    #[arg(long)]
    pub no_stream_usage: bool,
    /// Open requests allowed at once; sends beyond are dropped and counted.
    #[arg(long, default_value_t = 20_000)]
    pub max_in_flight: usize,
    /// Export OpenTelemetry traces to this OTLP endpoint.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Do not send a W3C traceparent header with each request.
    #[arg(long)]
    pub no_trace_propagation: bool,
    /// Also write requests.jsonl: one line per request (timings, status, error).
    #[arg(long)]
    pub record_requests: bool,
    /// Scrape the server's own Prometheus metrics while levels run (a URL,
    /// or `auto` for the endpoint's origin + /metrics).
    #[arg(long, value_name = "URL")]
    pub server_metrics: Option<String>,
    /// Time between server-metrics scrapes within a level.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub server_metrics_interval: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: TargetArgs,
    /// QPS levels to test, comma-separated; FROM..TO ramps the rate
    /// linearly across the level (e.g. 10..100).
    // `std::vec::Vec` (not `Vec`) makes clap take one value and hand the
    // whole comma list to the parser.
    #[arg(long, default_value = "1,5,10,20", value_parser = crate::plan::load::parse_rate_list)]
    pub qps: std::vec::Vec<crate::plan::profile::RateLevel>,
    /// Closed-loop levels instead of rates: N users, each sending its next
    /// request as soon as its last one ends, comma-separated (e.g. 1,4,16,64).
    #[arg(long, value_name = "N,...", value_parser = crate::plan::load::parse_concurrency_list, conflicts_with = "qps")]
    pub concurrency: Option<std::vec::Vec<u32>>,
    /// Open-loop levels: at most N requests open; a send due beyond them
    /// waits for a slot (reported as client_queue). Unlike --max-in-flight,
    /// nothing is dropped.
    #[arg(long, value_name = "N", value_parser = parse_users, conflicts_with = "concurrency")]
    pub max_concurrency: Option<usize>,
    /// Before the first level, send at its load for this long (30s) or this
    /// many requests (200); excluded from every figure, noted in metadata.
    #[arg(long, value_name = "TIME|N", value_parser = crate::engine::runner::Warmup::parse)]
    pub warmup: Option<crate::engine::runner::Warmup>,
    /// Replay a timestamped trace (Mooncake JSONL or Azure CSV) instead of
    /// rate levels: each request at its time, with its lengths.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["qps", "concurrency"])]
    pub trace: Option<PathBuf>,
    /// The trace's format (detected when omitted).
    #[arg(long, value_enum, value_name = "FORMAT", requires = "trace")]
    pub trace_format: Option<crate::workload::trace::TraceFormat>,
    /// Replay speed: 2 sends twice as fast as recorded.
    #[arg(long, default_value_t = 1.0, value_parser = parse_rate, requires = "trace")]
    pub trace_speed: f64,
    /// Skip the trace's first TIME (trace time).
    #[arg(long, default_value = "0s", value_parser = parse_duration, requires = "trace")]
    pub trace_start: Duration,
    /// Replay only TIME of the trace after --trace-start.
    #[arg(long, value_parser = parse_positive_duration, requires = "trace")]
    pub trace_duration: Option<Duration>,
    /// Repeat the slice until --duration has passed.
    #[arg(long, requires = "trace")]
    pub trace_loop: bool,
    /// Step of the time series of levels whose rate changes (ramps, traces).
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub series_interval: Duration,
    /// Seconds per level (or 90s, 2m…).
    #[arg(long, default_value = "60", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Percentiles shown in the console table.
    #[arg(long, default_value = "50,95,99", value_parser = parse_percentiles)]
    pub percentiles: std::vec::Vec<f64>,
    /// Deprecated: tokens/sec is always shown.
    #[arg(long)]
    pub show_tokens: bool,
    /// Draw benchmark_qps.png.
    #[arg(long)]
    pub plot: bool,
    /// Results JSON file name (inside the run directory).
    #[arg(long, default_value = "benchmark_qps_results.json")]
    pub output: String,
    /// PNG file name (inside the run directory).
    #[arg(long, default_value = "benchmark_qps.png")]
    pub plot_output: String,
    /// Inter-arrival pattern: constant (1/qps apart) or poisson.
    #[arg(long, default_value = "constant")]
    pub arrival: Arrival,
    /// Judge every request against an SLO: METRIC<=DURATION, comma-separated
    /// or repeated (ttft, ttfc, tpot, e2e), e.g. --slo ttft<=2s,tpot<=100ms.
    #[arg(long, value_name = "SPEC")]
    pub slo: Vec<String>,
    /// Share of a level's scheduled requests that must meet the SLO.
    #[arg(long, default_value_t = crate::analysis::slo::DEFAULT_ATTAINMENT, value_parser = parse_share)]
    pub slo_attainment: f64,
    /// Run shard I of N: send exactly the requests of the global schedule
    /// whose index is I modulo N (also LLMLOAD_SHARD=I/N, or a Kubernetes
    /// Indexed Job's JOB_COMPLETION_INDEX with LLMLOAD_SHARDS=N).
    #[arg(long, value_name = "I/N", value_parser = crate::plan::schedule::Shard::parse)]
    pub shard: Option<crate::plan::schedule::Shard>,
    /// Begin the first level at this instant (RFC 3339, or Unix seconds),
    /// so that every shard starts together.
    #[arg(long, value_name = "TIME", value_parser = parse_time, env = "LLMLOAD_START_AT")]
    pub start_at: Option<std::time::SystemTime>,
    /// With --start-at: time between a level's end and the next's start,
    /// for the drain. Levels run on a fixed timeline so shards stay aligned.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub level_gap: Duration,
    /// Serve live Prometheus metrics on this address while the run lasts
    /// (as the daemon's /metrics).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// With --metrics-listen: keep serving /metrics this long after the
    /// last level, so that a scrape every 15-30 s still sees its end (a
    /// shard pod would otherwise exit first). A signal ends it early.
    #[arg(long, value_name = "DUR", value_parser = parse_positive_duration, requires = "metrics_listen")]
    pub metrics_linger: Option<Duration>,
}

fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Ok(std::time::UNIX_EPOCH + Duration::from_secs_f64(secs));
    }
    chrono::DateTime::parse_from_rfc3339(t)
        .map(std::time::SystemTime::from)
        .map_err(|e| format!("'{s}' is not an RFC 3339 time or Unix seconds ({e})"))
}

/// `llmload capacity`: the highest rate the endpoint holds under an SLO.
#[derive(Debug, Clone, Args)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub common: TargetArgs,
    /// The SLO: METRIC<=DURATION, comma-separated or repeated (ttft, ttfc,
    /// tpot, e2e), e.g. --slo ttft<=2s --slo tpot<=100ms.
    #[arg(long, value_name = "SPEC", required = true)]
    pub slo: Vec<String>,
    /// Share of a probe's scheduled requests that must meet the SLO.
    #[arg(long, default_value_t = crate::analysis::slo::DEFAULT_ATTAINMENT, value_parser = parse_share)]
    pub slo_attainment: f64,
    /// Lowest rate to try (req/s).
    #[arg(long, default_value_t = 0.5, value_parser = parse_rate)]
    pub min_qps: f64,
    /// Highest rate to try (req/s).
    #[arg(long, default_value_t = 1000.0, value_parser = parse_rate)]
    pub max_qps: f64,
    /// Stop when the bracket [last pass, first fail] is this narrow (relative).
    #[arg(long, default_value_t = 0.05, value_parser = parse_share)]
    pub precision: f64,
    /// Length of a bisection probe (growth probes are a third of it, at least 5 s).
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub probe_duration: Duration,
    /// Length of the confirmation probe at the answer.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration)]
    pub confirm_duration: Duration,
    /// Inter-arrival pattern: poisson (as MLPerf's server scenario) or constant.
    #[arg(long, default_value = "poisson")]
    pub arrival: Arrival,
    /// Do not draw benchmark_qps.png.
    #[arg(long)]
    pub no_plot: bool,
    /// Search the most concurrent users (closed loop, a whole number)
    /// that hold the SLO, between --min-users and --max-users, instead of
    /// a rate.
    #[arg(long)]
    pub concurrency: bool,
    /// With --concurrency: the fewest users to try.
    #[arg(long, default_value_t = 1, value_parser = parse_users, requires = "concurrency")]
    pub min_users: usize,
    /// With --concurrency: the most users to try.
    #[arg(long, default_value_t = 512, value_parser = parse_users, requires = "concurrency")]
    pub max_users: usize,
}

impl TargetArgs {
    /// The target these flags describe (not yet validated: see
    /// [`Target::validate`]). Only header syntax is checked here, as it is
    /// a flag-format matter.
    /// `--dataset`, which every command but `run --trace` needs.
    pub fn require_dataset(&self) -> Result<&std::path::Path, crate::base::error::UsageError> {
        self.dataset.as_deref().ok_or_else(|| {
            crate::base::error::UsageError::new(
                "--dataset is required: a dataset file or synthetic:input=N,output=M (or, for run, --trace FILE)",
            )
        })
    }

    /// The proxies of `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, unless
    /// `--no-proxy`.
    pub fn proxies(&self) -> Result<crate::client::proxy::ProxySettings, String> {
        if self.no_proxy {
            return Ok(crate::client::proxy::ProxySettings::direct());
        }
        crate::client::proxy::ProxySettings::from_env(&|k| std::env::var(k).ok())
    }

    pub fn target(&self) -> Result<Target, String> {
        let mut t = Target::new(self.endpoint.clone(), self.model.clone());
        t.client.proxies = self.proxies()?;
        t.key = match (&self.api_key, &self.api_key_file) {
            (Some(k), _) => KeySource::Value(ApiKey::new(k.clone())),
            (None, Some(f)) => KeySource::File(f.clone()),
            (None, None) => KeySource::StandardEnv,
        };
        t.client.headers = parse_headers(&self.headers)?;
        t.client.ca_cert = self.ca_cert.clone();
        t.client.insecure = self.insecure;
        t.client.connect_timeout = self.connect_timeout;
        t.client.first_token_timeout = self.first_token_timeout;
        t.client.idle_timeout = self.idle_timeout;
        t.client.request_timeout = self.request_timeout;
        t.client.pool_idle_timeout = self.pool_idle_timeout;
        t.max_tokens = self.max_tokens;
        t.temperature = self.temperature;
        t.stream_usage = !self.no_stream_usage;
        t.max_in_flight = self.max_in_flight;
        t.server_metrics = self.server_metrics.clone();
        t.server_metrics_interval = self.server_metrics_interval;
        t.api = self.api;
        t.ignore_eos = self.ignore_eos;
        t.force_extra_body = self.force_extra_body;
        if let Some(json) = &self.extra_body {
            // Clashes with our own keys are judged by Target::validate.
            t.extra_body = crate::workload::parse_extra_body(json, true)
                .map_err(|e| format!("--extra-body {e}"))?;
        }
        Ok(t)
    }
}

/// `'Name: value'` pairs from repeated `--header` flags.
pub fn parse_headers(raw: &[String]) -> Result<Vec<(String, String)>, String> {
    raw.iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("--header '{h}': expected 'Name: value'"))
        })
        .collect()
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The base run: a results directory, or a daemon run id with --results-dir.
    pub base: String,
    /// The run to judge against it.
    pub new: String,
    /// Worsening beyond which a change is a regression: 10% or 0.1.
    #[arg(long, default_value = "10%", value_parser = crate::analysis::compare::parse_share)]
    pub max_regression: f64,
    /// What to compare (FIELD.STAT, or capacity).
    #[arg(long, default_value = crate::analysis::compare::DEFAULT_METRICS)]
    pub metric: String,
    /// Resolve daemon run ids (`target.stamp`) in this results directory.
    #[arg(long)]
    pub results_dir: Option<PathBuf>,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// The shards' run directories (all N of them).
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Write the merged run here (created; must be new or empty). Default:
    /// the run id's directory beside the first shard's.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Sequences decoding at once.
    #[arg(long, default_value_t = 32)]
    pub slots: usize,
    /// Requests that may wait for a slot; beyond that they are rejected.
    /// `unbounded`: never refuse, queue everything (as vLLM, TGI and
    /// llama.cpp's server do).
    #[arg(long, default_value = "32", value_parser = parse_queue)]
    pub queue: usize,
    /// Status for rejected requests: 503, or 429 with Retry-After.
    #[arg(long, default_value_t = 503)]
    pub reject_status: u16,
    /// Retry-After seconds sent with 429.
    #[arg(long, default_value_t = 1)]
    pub retry_after: u64,
    /// Base time to first token once a slot is free.
    #[arg(long, default_value = "60ms", value_parser = parse_duration)]
    pub ttft: Duration,
    /// Extra prefill time per input token (4 characters a token).
    #[arg(long, default_value = "50us", value_parser = parse_duration)]
    pub prefill_per_token: Duration,
    /// Gap between output tokens with one sequence running.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub tpot: Duration,
    /// Decode slow-down per extra running sequence: gap = tpot × (1 + g × (running − 1)).
    #[arg(long, default_value_t = 0.02)]
    pub tpot_growth: f64,
    /// Output length: N caps max_tokens, A..B draws uniformly, `max` uses max_tokens.
    #[arg(long, default_value = "32..128")]
    pub output_tokens: String,
    /// Tokens per SSE event.
    #[arg(long, default_value_t = 1)]
    pub chunk_tokens: u32,
    /// Seed for every random draw (lengths, text, faults).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Inject a fault in a fraction of requests: KIND=FRACTION. Repeatable.
    /// Kinds: http500 http503 http429 reset truncate malformed stall slow-first-byte.
    #[arg(long = "fault", value_name = "KIND=FRACTION")]
    pub faults: Vec<FaultSpec>,
    /// How long `stall` and `slow-first-byte` faults last.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub stall_for: Duration,
    /// Model id listed by /v1/models.
    #[arg(long, default_value = "mock")]
    pub model_name: String,
    /// Recent requests kept for GET /debug/requests.
    #[arg(long, default_value_t = 100_000)]
    pub truth_capacity: usize,
    /// Print the steady-state capacity implied by the knobs and exit.
    #[arg(long)]
    pub print_capacity: bool,
    /// Input tokens assumed by --print-capacity.
    #[arg(long, default_value_t = 50)]
    pub assume_input_tokens: u32,
    /// max_tokens assumed by --print-capacity (the run default).
    #[arg(long, default_value_t = 512)]
    pub assume_max_tokens: u32,
    /// Prefix cache of TOKENS tokens (0: off): blocks of 16 tokens keyed
    /// by the whole prefix, least recently used evicted; prefill is
    /// charged for uncached tokens only, and `cached_tokens` reported.
    #[arg(long, value_name = "TOKENS", default_value_t = 0)]
    pub prefix_cache: usize,
    /// Turns per session assumed by --print-capacity (1: single requests).
    #[arg(long, default_value_t = 1)]
    pub assume_turns: u32,
    /// New user tokens per later turn assumed by --print-capacity.
    #[arg(long, default_value_t = 0)]
    pub assume_turn_input: u32,
}

impl MockArgs {
    pub fn to_config(&self) -> Result<crate::mock::MockConfig, String> {
        let output_tokens = if self.output_tokens.trim() == "max" {
            None
        } else {
            Some(
                self.output_tokens
                    .parse::<OutputTokens>()
                    .map_err(|e| format!("--output-tokens: {e}"))?,
            )
        };
        let cfg = crate::mock::MockConfig {
            capacity: crate::mock::capacity::CapacityModel {
                slots: self.slots,
                queue: self.queue,
                ttft: self.ttft,
                prefill_per_token: self.prefill_per_token,
                tpot: self.tpot,
                tpot_growth: self.tpot_growth,
            },
            reject_status: self.reject_status,
            retry_after_s: self.retry_after,
            output_tokens,
            default_max_tokens: 128,
            chunk_tokens: self.chunk_tokens,
            seed: self.seed,
            faults: self.faults.clone(),
            stall_for: self.stall_for,
            model_name: self.model_name.clone(),
            truth_capacity: self.truth_capacity,
            prefix_cache_tokens: self.prefix_cache,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// TOML configuration file.
    #[arg(long)]
    pub config: PathBuf,
    /// Validate the configuration, print the plan, send nothing.
    #[arg(long)]
    pub check: bool,
    /// Override [server].listen.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Export OpenTelemetry traces to this OTLP endpoint.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Ignore HTTPS_PROXY, HTTP_PROXY and NO_PROXY: connect directly.
    #[arg(long)]
    pub no_proxy: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PlotArgs {
    /// A run directory (results/<timestamp>).
    pub run_dir: PathBuf,
    /// Results JSON file name inside the directory.
    #[arg(long, default_value = "benchmark_qps_results.json")]
    pub input: String,
    /// PNG file name inside the directory.
    #[arg(long, default_value = "benchmark_qps.png")]
    pub output: String,
}

#[derive(Debug, Clone, Args)]
pub struct AlertRulesArgs {
    /// Override a threshold or window: NAME=VALUE. Repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Render this template instead of the built-in one.
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// List the parameters and their defaults.
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SelftestArgs {
    /// Shorter probes, 2x10^5 requests for the memory check (about 2 minutes).
    #[arg(long)]
    pub quick: bool,
    /// Do not use nginx as the bulk server even if it is installed.
    #[arg(long)]
    pub skip_nginx: bool,
    /// Exit 1 when a target is missed, or could not be measured or run.
    #[arg(long)]
    pub strict: bool,
    /// Run only some sections: memory, throughput, accuracy, overhead
    /// (comma-separated); `soak` runs the fault soak alone; `ceiling`
    /// runs llmload beside wrk against nginx (scripts/bench-ceiling.sh).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Length of `--only soak`.
    #[arg(long, default_value_t = 15)]
    pub soak_minutes: u64,
    /// Request rate of `--only soak`.
    #[arg(long, default_value_t = 50.0)]
    pub soak_rate: f64,
}
