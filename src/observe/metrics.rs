//! The daemon's Prometheus metrics: one registry (no globals), names with
//! base units, labels only from bounded sets.
//!
//! How to add a metric: 1) add the field and register it in
//! [`Metrics::new`]; 2) feed it; 3) list it between the markers of `docs/src/metrics.md`;
//! 4) `tests/daemon.rs` checks every documented series moved, and
//! `tests/dashboards.rs` checks dashboards only use registered names.

use crate::analysis::level::LevelResult;
use crate::analysis::stats::LATE_SEND;
use crate::client::record::{ErrorKind, RequestRecord};
use crate::engine::sweep::{LevelSpec, Observer, RequestHook};
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;

/// vLLM's `vllm:time_to_first_token_seconds` buckets, with finer ones
/// below 1 ms prepended for fast endpoints. Sharing vLLM's boundaries lets
/// PromQL subtract server from client quantiles bucket for bucket.
pub const TTFT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's `vllm:inter_token_latency_seconds` /
/// `vllm:request_time_per_output_token_seconds` buckets, plus finer ones.
pub const ITL_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
/// vLLM's `vllm:e2e_request_latency_seconds` buckets, plus finer ones.
pub const E2E_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
];
/// Schedule lag: healthy is well under 1 ms; 10 ms flags client-bound.
pub const LAG_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 5.0,
];
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

const BASE: &[&str] = &["target", "model", "job"];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub ttft: HistogramVec,
    pub e2e: HistogramVec,
    pub itl: HistogramVec,
    pub tpot: HistogramVec,
    pub lag: HistogramVec,
    pub output_tokens_per_request: HistogramVec,
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub input_tokens: IntCounterVec,
    pub output_tokens: IntCounterVec,
    pub late: IntCounterVec,
    pub connections: IntCounterVec,
    pub stale_retries: IntCounterVec,
    pub runs: IntCounterVec,
    pub fires: IntCounterVec,
    pub soak_pauses: IntCounterVec,
    pub write_errors: IntCounterVec,
    pub pruned: IntCounterVec,
    pub target_qps: GaugeVec,
    pub target_concurrency: IntGaugeVec,
    pub trace_position: GaugeVec,
    pub achieved_qps: GaugeVec,
    pub in_flight: IntGaugeVec,
    pub current_level: IntGaugeVec,
    pub max_qps: GaugeVec,
    pub saturation_qps: GaugeVec,
    pub saturation_reached: IntGaugeVec,
    pub recommended_qps: GaugeVec,
    pub level_success: GaugeVec,
    pub level_ttft_p95: GaugeVec,
    pub level_e2e_p95: GaugeVec,
    pub level_client_cores: GaugeVec,
    pub level_pacer_stall: GaugeVec,
    pub level_client_throttled: GaugeVec,
    pub last_success: GaugeVec,
    pub last_duration: GaugeVec,
    pub slo_capacity: GaugeVec,
    pub slo_capacity_low: GaugeVec,
    pub slo_capacity_high: GaugeVec,
    pub capacity_inconclusive: IntCounterVec,
    pub goodput: GaugeVec,
    pub level_slo_attainment: GaugeVec,
    pub up: IntGauge,
    pub start_time: Gauge,
    pub job_running: IntGaugeVec,
    pub schedule_interval: GaugeVec,
    /// Sessions and prefix caches (`session_metrics.rs`).
    pub sessions: super::session_metrics::SessionMetrics,
    /// Config reloads (`config_metrics.rs`).
    pub config: super::config_metrics::ConfigMetrics,
}

fn hist(name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        BASE,
    )
    .expect("valid histogram")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge")
}

fn igauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge")
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("llmload".into()), None).expect("static prefix is valid");
        let lvl = &["target", "model", "job", "level"];
        let m = Self {
            ttft: hist(
                "time_to_first_token_seconds",
                "Scheduled send to first token-carrying chunk (successful requests).",
                TTFT_BUCKETS,
            ),
            e2e: hist(
                "e2e_request_latency_seconds",
                "Scheduled send to end of stream (successful requests).",
                E2E_BUCKETS,
            ),
            itl: hist(
                "inter_token_latency_seconds",
                "Gap between consecutive token-carrying chunks.",
                ITL_BUCKETS,
            ),
            tpot: hist(
                "time_per_output_token_seconds",
                "(E2E - TTFT) / (output tokens - 1), per request.",
                ITL_BUCKETS,
            ),
            lag: hist(
                "schedule_lag_seconds",
                "How late each send was against the open-loop schedule.",
                LAG_BUCKETS,
            ),
            output_tokens_per_request: hist(
                "request_output_tokens",
                "Output tokens per successful request.",
                TOKEN_BUCKETS,
            ),
            requests: counter(
                "requests_total",
                "Requests by outcome (success, error, dropped).",
                &["target", "model", "job", "outcome"],
            ),
            errors: counter(
                "request_errors_total",
                "Failed requests by error kind and HTTP status (status 'none' for non-HTTP errors).",
                &["target", "model", "job", "kind", "status"],
            ),
            input_tokens: counter(
                "input_tokens_total",
                "Prompt tokens as reported by the server's usage.",
                BASE,
            ),
            output_tokens: counter(
                "output_tokens_total",
                "Output tokens of successful requests.",
                BASE,
            ),
            late: counter(
                "late_requests_total",
                "Sends more than 10 ms behind schedule (the client was the bottleneck).",
                BASE,
            ),
            connections: counter(
                "connections_opened_total",
                "Connections the client opened (TCP, plus TLS for https).",
                BASE,
            ),
            stale_retries: counter(
                "stale_connection_retries_total",
                "Requests sent again on a new connection because the server had closed the kept-alive one they were written on.",
                BASE,
            ),
            runs: counter(
                "runs_total",
                "Sweeps and soaks by event: started, completed, partial, failed.",
                &["target", "job", "kind", "event"],
            ),
            fires: counter(
                "job_fires_total",
                "Schedule fires: started, delayed (waited for the target), skipped (already running).",
                &["job", "result"],
            ),
            soak_pauses: counter(
                "soak_pauses_total",
                "Times a soak paused so a sweep could use its target.",
                &["job"],
            ),
            write_errors: counter(
                "results_write_errors_total",
                "Results files that could not be written.",
                &["target"],
            ),
            pruned: counter(
                "runs_pruned_total",
                "Run directories removed by retention.",
                &["target"],
            ),
            target_qps: gauge("target_qps", "Requests/s the running level aims at.", BASE),
            target_concurrency: igauge(
                "target_concurrency",
                "Users the running concurrency level holds (0 for rate levels).",
                BASE,
            ),
            trace_position: gauge(
                "trace_position_seconds",
                "Trace time of the last request a replay sent.",
                BASE,
            ),
            achieved_qps: gauge(
                "achieved_qps",
                "Requests/s actually sent over the last 5 s.",
                BASE,
            ),
            in_flight: igauge("in_flight_requests", "Requests open now.", BASE),
            current_level: igauge(
                "current_level",
                "1-based index of the running level (0 when idle).",
                &["target", "job"],
            ),
            max_qps: gauge(
                "capacity_max_qps_without_errors",
                "Last completed sweep: highest level with 100% success and >= 95% of target sent.",
                BASE,
            ),
            saturation_qps: gauge(
                "capacity_saturation_qps",
                "Last completed sweep: first saturated level (absent when not reached).",
                BASE,
            ),
            saturation_reached: igauge(
                "capacity_saturation_reached",
                "Last completed sweep: 1 if a level saturated, else 0.",
                BASE,
            ),
            recommended_qps: gauge(
                "capacity_recommended_qps",
                "Last completed sweep: 75% of max QPS without errors.",
                BASE,
            ),
            level_success: gauge(
                "sweep_level_success_ratio",
                "Last completed sweep: succeeded / scheduled per level (0..1).",
                lvl,
            ),
            level_ttft_p95: gauge(
                "sweep_level_ttft_p95_seconds",
                "Last completed sweep: p95 TTFT per level.",
                lvl,
            ),
            level_e2e_p95: gauge(
                "sweep_level_e2e_p95_seconds",
                "Last completed sweep: p95 E2E latency per level.",
                lvl,
            ),
            level_client_cores: gauge(
                "sweep_level_client_cpu_cores",
                "CPU cores llmload itself used during the level (CPU seconds over wall time), per level of the last complete sweep.",
                lvl,
            ),
            level_pacer_stall: gauge(
                "sweep_level_pacer_stall_seconds",
                "The pacer's longest wake-up past a send's due time during the level, per level of the last complete sweep.",
                lvl,
            ),
            level_client_throttled: gauge(
                "sweep_level_client_throttled_seconds",
                "Time the container's cgroup was CPU-throttled during the level (where cpu.stat is readable), per level of the last complete sweep.",
                lvl,
            ),
            last_success: gauge(
                "last_successful_sweep_timestamp_seconds",
                "Unix time the last complete sweep finished.",
                &["target", "job"],
            ),
            last_duration: gauge(
                "last_sweep_duration_seconds",
                "Wall time of the last complete sweep.",
                &["target", "job"],
            ),
            slo_capacity: gauge(
                "capacity_qps_under_slo",
                "Last conclusive capacity search: requests/s held under the job's SLO (0 if even min_qps failed; max_qps if it still passed); an inconclusive search leaves it unchanged.",
                BASE,
            ),
            slo_capacity_low: gauge(
                "capacity_qps_under_slo_low",
                "Last capacity search: the bracket's low end (last pass).",
                BASE,
            ),
            slo_capacity_high: gauge(
                "capacity_qps_under_slo_high",
                "Last capacity search: the bracket's high end (first fail).",
                BASE,
            ),
            capacity_inconclusive: counter(
                "capacity_inconclusive_total",
                "Capacity searches that ended inconclusive: the client, not the endpoint, was the limit; the capacity gauges kept their last value.",
                BASE,
            ),
            goodput: gauge(
                "goodput_qps",
                "Requests/s that succeeded within the job's SLO, over the last 5 s (jobs with an SLO).",
                BASE,
            ),
            level_slo_attainment: gauge(
                "level_slo_attainment",
                "Share of the level's scheduled requests that met the SLO (0..1), per level of the last run with an SLO.",
                lvl,
            ),
            up: IntGauge::new("daemon_up", "1 while the daemon runs.").expect("valid gauge"),
            start_time: Gauge::new("daemon_start_time_seconds", "Unix time the daemon started.")
                .expect("valid gauge"),
            job_running: igauge(
                "job_running",
                "1 while a run of the job is in progress (kind: sweep or soak).",
                &["target", "job", "kind"],
            ),
            schedule_interval: gauge(
                "job_schedule_interval_seconds",
                "Nominal time between fires of a scheduled job (absent for at_start).",
                &["target", "job"],
            ),
            sessions: super::session_metrics::SessionMetrics::new(TTFT_BUCKETS),
            config: super::config_metrics::ConfigMetrics::new(),
            registry,
        };
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.ttft.clone()),
            Box::new(m.e2e.clone()),
            Box::new(m.itl.clone()),
            Box::new(m.tpot.clone()),
            Box::new(m.lag.clone()),
            Box::new(m.output_tokens_per_request.clone()),
            Box::new(m.requests.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.input_tokens.clone()),
            Box::new(m.output_tokens.clone()),
            Box::new(m.late.clone()),
            Box::new(m.connections.clone()),
            Box::new(m.stale_retries.clone()),
            Box::new(m.runs.clone()),
            Box::new(m.fires.clone()),
            Box::new(m.soak_pauses.clone()),
            Box::new(m.write_errors.clone()),
            Box::new(m.pruned.clone()),
            Box::new(m.target_qps.clone()),
            Box::new(m.target_concurrency.clone()),
            Box::new(m.trace_position.clone()),
            Box::new(m.achieved_qps.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.current_level.clone()),
            Box::new(m.max_qps.clone()),
            Box::new(m.saturation_qps.clone()),
            Box::new(m.saturation_reached.clone()),
            Box::new(m.recommended_qps.clone()),
            Box::new(m.level_success.clone()),
            Box::new(m.level_ttft_p95.clone()),
            Box::new(m.level_e2e_p95.clone()),
            Box::new(m.level_client_cores.clone()),
            Box::new(m.level_pacer_stall.clone()),
            Box::new(m.level_client_throttled.clone()),
            Box::new(m.last_success.clone()),
            Box::new(m.last_duration.clone()),
            Box::new(m.slo_capacity.clone()),
            Box::new(m.capacity_inconclusive.clone()),
            Box::new(m.slo_capacity_low.clone()),
            Box::new(m.slo_capacity_high.clone()),
            Box::new(m.goodput.clone()),
            Box::new(m.level_slo_attainment.clone()),
            Box::new(m.up.clone()),
            Box::new(m.start_time.clone()),
            Box::new(m.job_running.clone()),
            Box::new(m.schedule_interval.clone()),
        ];
        for c in all
            .into_iter()
            .chain(m.sessions.collectors())
            .chain(m.config.collectors())
        {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    pub fn encode(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }

    /// `GET /metrics`: the text exposition with its content type (the
    /// daemon's route and `run --metrics-listen` serve the same).
    pub fn response(&self) -> axum::response::Response {
        use axum::response::IntoResponse;
        (
            [(
                http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            self.encode(),
        )
            .into_response()
    }

    /// Per-request handles for one job, resolved once.
    pub fn for_job(&self, target: &str, model: &str, job: &str) -> JobMetrics {
        let l = [target, model, job];
        JobMetrics {
            labels: [target.to_string(), model.to_string(), job.to_string()],
            ttft: self.ttft.with_label_values(&l),
            e2e: self.e2e.with_label_values(&l),
            itl: self.itl.with_label_values(&l),
            tpot: self.tpot.with_label_values(&l),
            lag: self.lag.with_label_values(&l),
            out_per_req: self.output_tokens_per_request.with_label_values(&l),
            ok: self
                .requests
                .with_label_values(&[target, model, job, "success"]),
            failed: self
                .requests
                .with_label_values(&[target, model, job, "error"]),
            dropped: self
                .requests
                .with_label_values(&[target, model, job, "dropped"]),
            input_tokens: self.input_tokens.with_label_values(&l),
            output_tokens: self.output_tokens.with_label_values(&l),
            late: self.late.with_label_values(&l),
            connections: self.connections.with_label_values(&l),
            stale_retries: self.stale_retries.with_label_values(&l),
            in_flight: self.in_flight.with_label_values(&l),
            target_qps: self.target_qps.with_label_values(&l),
            target_concurrency: self.target_concurrency.with_label_values(&l),
            trace_position: self.trace_position.with_label_values(&l),
            goodput: self.goodput.with_label_values(&l),
            achieved_qps: self.achieved_qps.with_label_values(&l),
            errors: self.errors.clone(),
            sessions: self.sessions.for_job(l),
        }
    }

    /// Publish a finished sweep's capacity numbers (the ones alerts read).
    pub fn publish_capacity(
        &self,
        [target, model, job]: [&str; 3],
        levels: &[LevelResult],
        analysis: &crate::analysis::saturation::Analysis,
        finished_unix: f64,
        wall_seconds: f64,
    ) {
        let l = [target, model, job];
        match analysis.max_qps_without_errors {
            Some(v) => self.max_qps.with_label_values(&l).set(v),
            // Nothing held because the client could not measure: no news
            // about the endpoint, and the gauge keeps its last value.
            None if levels.iter().any(|r| r.client_bound) => {}
            // Held nothing: 0 is the honest capacity, and alerts on a drop
            // must fire.
            None => self.max_qps.with_label_values(&l).set(0.0),
        }
        match analysis.saturation_qps {
            Some(v) => {
                self.saturation_qps.with_label_values(&l).set(v);
                self.saturation_reached.with_label_values(&l).set(1);
            }
            None => {
                let _ = self.saturation_qps.remove_label_values(&l);
                self.saturation_reached.with_label_values(&l).set(0);
            }
        }
        self.recommended_qps
            .with_label_values(&l)
            .set(analysis.recommended_qps.unwrap_or(0.0));
        for r in levels {
            let level = crate::analysis::saturation::fmt_qps(r.qps_target);
            let ll = [target, model, job, level.as_str()];
            self.level_success
                .with_label_values(&ll)
                .set(r.success_rate / 100.0);
            self.level_ttft_p95.with_label_values(&ll).set(r.ttft.p95);
            self.level_e2e_p95
                .with_label_values(&ll)
                .set(r.e2e_latency.p95);
            if let Some(u) = &r.client_usage {
                self.level_client_cores
                    .with_label_values(&ll)
                    .set(u.cores_used);
                self.level_pacer_stall
                    .with_label_values(&ll)
                    .set(u.pacer_stall_ms / 1e3);
                if let Some(t) = u.throttled_ms {
                    self.level_client_throttled
                        .with_label_values(&ll)
                        .set(t / 1e3);
                }
            }
        }
        self.last_success
            .with_label_values(&[target, job])
            .set(finished_unix);
        self.last_duration
            .with_label_values(&[target, job])
            .set(wall_seconds);
    }
}

impl Metrics {
    /// Publish a capacity search's answer (the numbers the alert reads).
    pub fn publish_slo_capacity(
        &self,
        labels: [&str; 3],
        outcome: crate::analysis::search::Outcome,
        search: &crate::analysis::search::SearchConfig,
    ) -> f64 {
        use crate::analysis::search::Outcome;
        let (qps, low, high) = match outcome {
            Outcome::Found { qps, bracket } => (qps, bracket[0], bracket[1]),
            // Holds nothing in range: 0 is the honest capacity, and alerts
            // on a drop must fire.
            Outcome::BelowRange => (0.0, 0.0, search.min_qps),
            // Holds at least max_qps: a lower bound.
            Outcome::AboveRange => (search.max_qps, search.max_qps, f64::INFINITY),
        };
        self.slo_capacity.with_label_values(&labels).set(qps);
        self.slo_capacity_low.with_label_values(&labels).set(low);
        self.slo_capacity_high.with_label_values(&labels).set(high);
        qps
    }

    /// Per-level SLO attainment of a finished run with an SLO.
    pub fn publish_levels(&self, [target, model, job]: [&str; 3], levels: &[LevelResult]) {
        for r in levels.iter().filter(|r| !r.client_bound) {
            if let Some(a) = r.slo_attainment {
                let level = crate::analysis::saturation::fmt_qps(r.qps_target);
                self.level_slo_attainment
                    .with_label_values(&[target, model, job, level.as_str()])
                    .set(a);
            }
        }
    }

    /// A finished run's timestamp and wall time (capacity runs, which do
    /// not publish the sweep's capacity numbers).
    pub fn publish_finished(&self, [target, job]: [&str; 2], finished_unix: f64, wall: f64) {
        self.last_success
            .with_label_values(&[target, job])
            .set(finished_unix);
        self.last_duration
            .with_label_values(&[target, job])
            .set(wall);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Label-resolved handles for one running job: recording a request is a
/// handful of atomic adds, no label lookups.
#[derive(Clone)]
pub struct JobMetrics {
    labels: [String; 3],
    ttft: Histogram,
    e2e: Histogram,
    itl: Histogram,
    tpot: Histogram,
    lag: Histogram,
    out_per_req: Histogram,
    ok: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
    input_tokens: IntCounter,
    output_tokens: IntCounter,
    late: IntCounter,
    connections: IntCounter,
    stale_retries: IntCounter,
    pub in_flight: IntGauge,
    pub target_qps: Gauge,
    pub target_concurrency: IntGauge,
    pub trace_position: Gauge,
    pub achieved_qps: Gauge,
    pub goodput: Gauge,
    errors: IntCounterVec,
    pub sessions: super::session_metrics::JobSessionMetrics,
}

impl JobMetrics {
    pub fn record(&self, r: &RequestRecord) {
        self.sessions.record(r);
        if r.outcome == Err(ErrorKind::Dropped) {
            self.dropped.inc();
            self.error(ErrorKind::Dropped);
            return;
        }
        let lag = r.lag();
        self.lag.observe(lag.as_secs_f64());
        if lag > LATE_SEND {
            self.late.inc();
        }
        if r.new_connection {
            self.connections.inc();
        }
        if r.retried_stale {
            self.stale_retries.inc();
        }
        if let Some(n) = r.usage_input_tokens {
            self.input_tokens.inc_by(n as u64);
        }
        match r.outcome {
            Err(kind) => {
                self.failed.inc();
                self.error(kind);
            }
            Ok(()) => {
                self.ok.inc();
                if let Some(t) = r.ttft() {
                    self.ttft.observe(t.as_secs_f64());
                }
                self.e2e.observe(r.e2e().as_secs_f64());
                // One flush of local bucket counts instead of an atomic
                // update per token gap.
                let local = self.itl.local();
                for gap in &r.itl_us {
                    local.observe(*gap as f64 * 1e-6);
                }
                local.flush();
                if let Some(t) = r.tpot() {
                    self.tpot.observe(t.as_secs_f64());
                }
                let (tokens, _) = r.output_tokens();
                self.output_tokens.inc_by(tokens as u64);
                self.out_per_req.observe(tokens as f64);
            }
        }
    }

    fn error(&self, kind: ErrorKind) {
        let status = match kind {
            ErrorKind::Http(code) => code.to_string(),
            _ => "none".to_string(),
        };
        let [t, m, j] = &self.labels;
        self.errors
            .with_label_values(&[t.as_str(), m.as_str(), j.as_str(), kind.kind(), &status])
            .inc();
    }
}

/// Feeds a job's live metrics from every request, then hands on to the
/// next observer (traces) if any.
pub struct MetricsObserver {
    pub job: JobMetrics,
    pub next: Option<Arc<dyn Observer>>,
}

impl Observer for MetricsObserver {
    fn request_start(
        &self,
        level: &LevelSpec,
        base: std::time::Instant,
        rec: &RequestRecord,
    ) -> Option<RequestHook> {
        self.next
            .as_ref()
            .and_then(|n| n.request_start(level, base, rec))
    }

    fn request_done(
        &self,
        level: &LevelSpec,
        base: std::time::Instant,
        rec: &RequestRecord,
        hook: Option<RequestHook>,
    ) {
        self.job.record(rec);
        if let Some(n) = &self.next {
            n.request_done(level, base, rec, hook);
        }
    }

    fn session_ended(&self, level: &LevelSpec, end: crate::analysis::sessions::SessionEnd) {
        self.job.sessions.session_ended(end);
        if let Some(n) = &self.next {
            n.session_ended(level, end);
        }
    }

    fn flush(&self) -> Vec<String> {
        self.next.as_ref().map(|n| n.flush()).unwrap_or_default()
    }
}

/// The achieved and good request rates of a running level, from its
/// cumulative counters sampled once a second, over the last
/// [`RateWindow::SECONDS`]: what the `achieved_qps` and `goodput_qps`
/// gauges show, for the daemon and for `run --metrics-listen` alike.
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: std::collections::VecDeque<(u64, u64)>,
}

impl RateWindow {
    pub const SECONDS: usize = 5;

    /// Start again (a new level restarts its counters).
    pub fn reset(&mut self) {
        self.samples.clear();
    }

    /// Add this second's (sent, good) totals; the rates per second once
    /// two samples are in.
    pub fn push(&mut self, sent: u64, good: u64) -> Option<(f64, f64)> {
        self.samples.push_back((sent, good));
        if self.samples.len() > Self::SECONDS + 1 {
            self.samples.pop_front();
        }
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        if self.samples.len() < 2 {
            return None;
        }
        let span = (self.samples.len() - 1) as f64;
        Some((
            (last.0 as f64 - first.0 as f64).max(0.0) / span,
            (last.1 as f64 - first.1 as f64).max(0.0) / span,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_sorted_and_include_vllms() {
        for b in [
            TTFT_BUCKETS,
            ITL_BUCKETS,
            E2E_BUCKETS,
            LAG_BUCKETS,
            TOKEN_BUCKETS,
        ] {
            assert!(b.windows(2).all(|w| w[0] < w[1]));
        }
        for v in [0.001, 0.005, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 2560.0] {
            assert!(TTFT_BUCKETS.contains(&v), "{v}");
        }
    }

    #[test]
    fn a_request_moves_its_series() {
        let m = Metrics::new();
        let j = m.for_job("t", "m", "j");
        let ms = std::time::Duration::from_millis;
        let mut r = RequestRecord::new(0, ms(0), ms(20));
        r.first_token_at = Some(ms(50));
        r.done_at = ms(150);
        r.token_chunks = 3;
        r.itl_us = vec![50_000, 50_000];
        j.record(&r);
        let mut e = RequestRecord::new(1, ms(0), ms(0));
        e.outcome = Err(ErrorKind::Http(503));
        j.record(&e);
        let text = m.encode();
        for needle in [
            r#"llmload_time_to_first_token_seconds_count{job="j",model="m",target="t"} 1"#,
            r#"llmload_inter_token_latency_seconds_count{job="j",model="m",target="t"} 2"#,
            r#"llmload_requests_total{job="j",model="m",outcome="success",target="t"} 1"#,
            r#"llmload_request_errors_total{job="j",kind="http",model="m",status="503",target="t"} 1"#,
            r#"llmload_late_requests_total{job="j",model="m",target="t"} 1"#,
            r#"llmload_output_tokens_total{job="j",model="m",target="t"} 3"#,
        ] {
            assert!(text.contains(needle), "missing {needle}\n{text}");
        }
    }

    #[test]
    fn rate_window_averages_the_last_seconds() {
        let mut w = RateWindow::default();
        assert_eq!(w.push(0, 0), None);
        assert_eq!(w.push(10, 8), Some((10.0, 8.0)));
        for t in 2..=20u64 {
            w.push(10 * t, 8 * t);
        }
        assert_eq!(w.push(210, 168), Some((10.0, 8.0)));
        w.reset();
        assert_eq!(w.push(500, 400), None);
    }
}
