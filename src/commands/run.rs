//! `llmload run`: the seed's one-shot sweep.

use crate::cli::RunArgs;
use crate::client::{ClientConfig, LlmClient};
use crate::error::{EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, UsageError};
use crate::mock::{MockConfig, MockServer};
use crate::request::{BodyParams, prepare_all};
use crate::results::{self, Metadata, RunDir, json_number};
use crate::runner::{self, Outputs, RunStatus, SweepHooks, SweepPlan};
use crate::secret::ApiKey;
use crate::stats::LevelResult;
use crate::sweep::{Engine, LevelRun, LevelSpec, NoObserver, Observer};
use crate::table;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long in-flight requests may finish after Ctrl-C before they are
/// abandoned (a second Ctrl-C abandons them at once).
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// After in-flight requests are abandoned, the most the process may take
/// to finish writing before it exits regardless.
const STOP_BACKSTOP: Duration = Duration::from_secs(5);

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let api_key = resolve_api_key(&args)?;
    validate(&args)?;
    if args.show_tokens {
        crate::errln!("note: --show-tokens is deprecated: tokens/sec is always shown");
    }
    if args.insecure {
        crate::errln!(
            "WARNING: --insecure: TLS certificates are NOT verified; anyone on the path can \
             read the API key and the traffic. Use --ca-cert for private CAs instead."
        );
    }
    let convs = crate::dataset::load(&args.dataset)?;

    let mut mock = None;
    let endpoint = if args.endpoint == "mock" {
        let cfg = MockConfig {
            seed: args.seed,
            ..MockConfig::default()
        };
        let m = MockServer::start(cfg, "127.0.0.1:0".parse().expect("valid address"))
            .await
            .context("starting the built-in mock")?;
        crate::errln!("using the built-in mock endpoint at {}", m.chat_url());
        let url = m.chat_url();
        mock = Some(m);
        url
    } else {
        args.endpoint.clone()
    };

    let env = |k: &str| std::env::var(k).ok();
    let telemetry =
        match crate::telemetry::Settings::resolve(args.otlp_endpoint.as_deref(), None, &env)
            .map_err(UsageError::new)?
        {
            Some(mut s) => {
                s.propagate = !args.no_trace_propagation;
                Some(crate::telemetry::Telemetry::start(s).map_err(UsageError::new)?)
            }
            None => None,
        };
    let mut client_cfg = ClientConfig::new(&endpoint).with_max_tokens(args.max_tokens);
    client_cfg.api_key = api_key;
    client_cfg.headers = parse_headers(&args.headers)?;
    client_cfg.ca_cert = args.ca_cert.clone();
    client_cfg.insecure = args.insecure;
    client_cfg.connect_timeout = args.connect_timeout;
    client_cfg.first_token_timeout = args.first_token_timeout;
    client_cfg.idle_timeout = args.idle_timeout;
    client_cfg.request_timeout = args.request_timeout;
    client_cfg.pool_idle_timeout = args.pool_idle_timeout;
    client_cfg.keep_response_ids = telemetry.is_some();
    let client = Arc::new(LlmClient::new(client_cfg)?);

    let params = BodyParams {
        model: args.model.clone(),
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        stream_usage: !args.no_stream_usage,
    };
    let requests = Arc::new(prepare_all(&convs, &params));

    let now = chrono::Local::now();
    let dir = RunDir::create(&args.results_dir, &results::stamp(&now)).with_context(|| {
        format!(
            "cannot create a run directory under {}",
            args.results_dir.display()
        )
    })?;
    let results_file = results::file_name_only(&args.output, results::DEFAULT_RESULTS_FILE);
    let plot_file = args
        .plot
        .then(|| results::file_name_only(&args.plot_output, results::DEFAULT_PLOT_FILE));
    let meta = metadata(
        &args,
        &endpoint,
        &dir,
        &now,
        &results_file,
        plot_file.clone(),
    );

    let sweep_span = telemetry.as_ref().map(|t| {
        t.sweep_started(&crate::telemetry::SweepAttrs {
            target: &results::redact_url(&endpoint),
            model: &args.model,
            qps: &args.qps,
            run_id: &dir.id,
            job: None,
        })
    });
    let observer: Arc<dyn Observer> = match (&telemetry, &sweep_span) {
        (Some(t), Some(s)) => Arc::new(t.request_observer(
            s,
            &args.model,
            client.uri(),
            args.max_tokens,
            args.temperature,
        )),
        _ => Arc::new(NoObserver),
    };
    let records = if args.record_requests {
        Some(Arc::new(
            crate::records::RecordsObserver::create(&dir.path, Some(observer.clone()))
                .with_context(|| {
                    format!(
                        "creating {}",
                        dir.file(crate::records::RECORDS_FILE).display()
                    )
                })?,
        ))
    } else {
        None
    };
    let observer: Arc<dyn Observer> = match &records {
        Some(r) => r.clone(),
        None => observer,
    };
    let engine = Engine {
        client,
        requests,
        max_in_flight: args.max_in_flight,
        observer,
    };
    let plan = SweepPlan {
        levels: args.qps.clone(),
        duration: args.duration,
        arrival: args.arrival,
        seed: args.seed,
    };
    let outputs = Outputs {
        dir: dir.clone(),
        results_file,
        plot_file,
        plot_title: crate::commands::plot::title_for(&meta),
    };

    let stop = CancellationToken::new();
    let cancel = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(stop.clone(), cancel.clone()));
    crate::errln!(
        "llmload: {} level(s) x {} against {} -> {}",
        plan.levels.len(),
        crate::duration::format(plan.duration),
        results::redact_url(&endpoint),
        dir.path.display()
    );
    let console = ConsoleHooks::new(telemetry.clone().zip(sweep_span.clone()));
    let mut report =
        runner::execute(&engine, &plan, &outputs, meta, &console, &stop, &cancel).await;
    signals.abort();
    if let Some(e) = records.as_ref().and_then(|r| r.flush_records()) {
        report.write_errors.push(e);
    }
    if let (Some(t), Some(s)) = (&telemetry, &sweep_span) {
        t.sweep_finished(s, &report.summary);
        t.shutdown().await;
    }

    crate::out!(
        "\n{}",
        table::render_table(&report.levels, &args.percentiles)
    );
    crate::out!(
        "{}",
        table::render_analysis(
            &report.levels,
            &report.summary.analysis,
            report.status == RunStatus::Partial
        )
    );
    for n in &report.notices {
        crate::outln!("note: {n}");
    }
    crate::outln!("\nResults saved to {}/", report.dir.path.display());
    for e in &report.write_errors {
        crate::errln!("error: {e}");
    }
    if let Some(m) = mock {
        m.shutdown().await;
    }
    Ok(if !report.write_errors.is_empty() {
        EXIT_FAILURE
    } else if report.status == RunStatus::Partial {
        EXIT_INTERRUPTED
    } else {
        EXIT_OK
    })
}

/// What the client noticed about the endpoint, as recorded in metadata.
/// First signal: stop sending, give in-flight requests a short grace;
/// second signal (or the grace running out): abandon them.
async fn watch_signals(stop: CancellationToken, cancel: CancellationToken) {
    crate::signals::next().await;
    crate::errln!(
        "\nstopping: waiting up to {}s for in-flight requests (Ctrl-C again to abandon them); \
         results so far are kept and marked partial",
        INTERRUPT_GRACE.as_secs()
    );
    stop.cancel();
    tokio::select! {
        _ = crate::signals::next() => {}
        _ = tokio::time::sleep(INTERRUPT_GRACE) => {}
    }
    cancel.cancel();
    // Abandoned requests end at once and the runner writes the partial
    // results in milliseconds. Should anything still hold the process up,
    // do not hang: finished levels are already on disk, marked partial.
    tokio::select! {
        _ = crate::signals::next() => {}
        _ = tokio::time::sleep(STOP_BACKSTOP) => {}
    }
    crate::errln!(
        "stopping took too long: exiting now; finished levels are in the results directory"
    );
    std::process::exit(EXIT_INTERRUPTED.into());
}

fn validate(args: &RunArgs) -> Result<(), UsageError> {
    let mut problems = Vec::new();
    if args.max_tokens == 0 {
        problems.push("--max-tokens must be at least 1".to_string());
    }
    if !args.temperature.is_finite() || args.temperature < 0.0 {
        problems.push(format!(
            "--temperature {} must be a number >= 0",
            args.temperature
        ));
    }
    if args.max_in_flight == 0 {
        problems.push("--max-in-flight must be at least 1".into());
    }
    if args.model.trim().is_empty() {
        problems.push("--model must not be empty".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(UsageError::new(problems.join("; ")))
    }
}

/// The key from, in order: --api-key (warned: visible in `ps`),
/// --api-key-file, LLMLOAD_API_KEY, OPENAI_API_KEY. None is fine: some
/// endpoints need no key.
pub fn resolve_api_key(args: &RunArgs) -> Result<Option<ApiKey>, UsageError> {
    if let Some(k) = &args.api_key {
        crate::errln!(
            "warning: --api-key on the command line is visible to other users (ps, shell history); \
             prefer LLMLOAD_API_KEY=... in the environment or --api-key-file PATH"
        );
        return Ok(Some(ApiKey::new(k.clone())));
    }
    if let Some(path) = &args.api_key_file {
        return read_key_file(path).map(Some);
    }
    for var in ["LLMLOAD_API_KEY", "OPENAI_API_KEY"] {
        if let Ok(v) = std::env::var(var)
            && !v.trim().is_empty()
        {
            return Ok(Some(ApiKey::new(v.trim().to_string())));
        }
    }
    Ok(None)
}

/// First non-empty line of a key file.
pub fn read_key_file(path: &Path) -> Result<ApiKey, UsageError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError::new(format!("{}: cannot read API key file: {e}", path.display()))
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| ApiKey::new(l.to_string()))
        .ok_or_else(|| UsageError::new(format!("{}: API key file is empty", path.display())))
}

/// `'Name: value'` pairs.
pub fn parse_headers(raw: &[String]) -> Result<Vec<(String, String)>, UsageError> {
    raw.iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| UsageError::new(format!("--header '{h}': expected 'Name: value'")))
        })
        .collect()
}

fn metadata(
    args: &RunArgs,
    endpoint: &str,
    dir: &RunDir,
    now: &chrono::DateTime<chrono::Local>,
    results_file: &str,
    plot_file: Option<String>,
) -> Metadata {
    Metadata {
        timestamp: results::seed_timestamp(now),
        endpoint: results::redact_url(endpoint),
        model: args.model.clone(),
        dataset: args.dataset.display().to_string(),
        qps_levels: args.qps.clone(),
        duration: json_number(args.duration.as_secs_f64()),
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        percentiles: args.percentiles.iter().map(|p| json_number(*p)).collect(),
        show_tokens: true,
        schema_version: results::SCHEMA_VERSION,
        tool: "llmload".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        run_id: dir.id.clone(),
        status: "running".into(),
        partial: true,
        levels_completed: 0,
        arrival: args.arrival.to_string(),
        seed: args.seed,
        request_timeout_s: args.request_timeout.as_secs_f64(),
        stream_usage: !args.no_stream_usage,
        max_in_flight: args.max_in_flight,
        host: hostname(),
        extra_headers: parse_headers(&args.headers)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, _)| k)
            .collect(),
        results_file: results_file.into(),
        plot_file,
        started_at: now.to_rfc3339(),
        finished_at: None,
        job: None,
        target: None,
        kind: Some("sweep".into()),
        error: None,
        connection_reuse: true,
        notices: Vec::new(),
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Progress on stderr: a bar per level on a terminal, one line per level
/// otherwise (logs stay readable in CI).
struct ConsoleHooks {
    tty: bool,
    current: Mutex<Option<(ProgressBar, tokio::task::JoinHandle<()>)>>,
    traces: Option<(crate::telemetry::Telemetry, crate::telemetry::SweepSpan)>,
}

impl ConsoleHooks {
    fn new(traces: Option<(crate::telemetry::Telemetry, crate::telemetry::SweepSpan)>) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            current: Mutex::new(None),
            traces,
        }
    }
}

impl SweepHooks for ConsoleHooks {
    fn level_started(&self, spec: &LevelSpec, levels: usize, planned: u64, run: &LevelRun) {
        if let Some((t, s)) = &self.traces {
            t.level_started(s, spec);
        }
        let label = format!(
            "level {}/{levels}: {} QPS",
            spec.index + 1,
            crate::saturation::fmt_qps(spec.qps)
        );
        if !self.tty {
            crate::errln!("{label}: sending {planned} requests");
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(planned), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} sent {msg}",
            )
            .expect("static template"),
        );
        bar.set_prefix(label);
        let progress = run.progress.clone();
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                let sched = progress.scheduled.load(Ordering::Relaxed);
                let done = progress.completed.load(Ordering::Relaxed);
                let failed = progress.failed.load(Ordering::Relaxed);
                let open = progress.in_flight.load(Ordering::Relaxed);
                b.set_position(sched);
                b.set_message(format!("| {done} done, {failed} failed, {open} in flight"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        *self.current.lock().expect("console lock") = Some((bar, ticker));
    }

    fn level_finished(&self, _spec: &LevelSpec, r: &LevelResult) {
        if let Some((t, s)) = &self.traces {
            t.level_finished(s, r);
        }
        if let Some((bar, ticker)) = self.current.lock().expect("console lock").take() {
            ticker.abort();
            bar.finish_and_clear();
        }
        let retries = if r.retried_stale_connection > 0 {
            format!(", {} stale-connection retries", r.retried_stale_connection)
        } else {
            String::new()
        };
        crate::errln!(
            "  QPS {}: {} sent, {:.1}% ok, TTFT p95 {:.3}s, E2E p95 {:.3}s, {} new connections{retries}{}{}",
            crate::saturation::fmt_qps(r.qps_target),
            r.sent,
            r.success_rate,
            r.ttft.p95,
            r.e2e_latency.p95,
            r.new_connections,
            if r.client_bound { ", CLIENT-BOUND" } else { "" },
            if r.interrupted { ", interrupted" } else { "" }
        );
    }
}
