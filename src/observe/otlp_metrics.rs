//! Pushed metrics: the OpenTelemetry GenAI client metrics, and llmload's
//! level gauges, over OTLP/HTTP every 10 s and once more at exit.
//!
//! Pulling (`/metrics`) misses what a short-lived process did in its last
//! seconds; a push does not (k6 remote-writes, AIPerf exports OTLP, for the
//! same reason). Names, units, attributes and bucket boundaries are the
//! GenAI semantic conventions' (v1.41), so a collector's GenAI dashboards
//! read llmload as any instrumented client:
//!
//! | instrument | unit | per |
//! |---|---|---|
//! | `gen_ai.client.operation.duration` | s | request (with `error.type` when it failed) |
//! | `gen_ai.client.token.usage` | {token} | request, `gen_ai.token.type` input / output |
//! | `gen_ai.client.operation.time_to_first_chunk` | s | streamed request with a first token |
//! | `gen_ai.client.operation.time_per_output_chunk` | s | token chunk after the first |
//!
//! The last is aggregated by llmload itself ([`super::chunk_gaps`]) and
//! posted beside the SDK's export, at the same moments.
//!
//! Times are llmload's own: from the request's *scheduled* instant (no
//! coordinated omission), as its histograms and traces. Requests never
//! sent (`dropped`) are no operation and are not recorded.

use super::chunk_gaps::{ChunkGaps, Describe, SECONDS_BUCKETS, metric_message};
use super::otlp_http::{Poster, Signal};
use crate::analysis::level::LevelResult;
use crate::client::record::{ErrorKind, RequestRecord};
use opentelemetry::metrics::{BoundHistogram, Gauge, Histogram, MeterProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The semantic conventions' boundaries for GenAI token counts.
pub const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// How often the reader pushes.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(10);
/// The meter's name: the instrumentation scope of every metric pushed.
const SCOPE: &str = "llmload";
/// Longest one push may take: the final push at exit must fit the
/// reader's fixed 5 s.
const PUSH_TIMEOUT: Duration = Duration::from_secs(4);
/// The per-chunk metric ([`super::chunk_gaps`]).
const PER_CHUNK: Describe = Describe {
    name: "gen_ai.client.operation.time_per_output_chunk",
    description: "Time between consecutive output chunks, for each chunk after the first.",
    unit: "s",
};

/// The instruments and the provider that pushes them.
#[derive(Clone)]
pub struct OtlpMetrics {
    provider: SdkMeterProvider,
    duration: Histogram<f64>,
    tokens: Histogram<u64>,
    first_chunk: Histogram<f64>,
    per_chunk: Arc<GapSeries>,
    level_target: Gauge<f64>,
    level_achieved: Gauge<f64>,
    level_success: Gauge<f64>,
    level_ttft_p95: Gauge<f64>,
    level_e2e_p95: Gauge<f64>,
}

impl OtlpMetrics {
    /// Build the pipeline (inside the tokio runtime): `url` is the full
    /// `…/v1/metrics` URL.
    pub fn start(
        url: &str,
        client: super::otlp_http::OnTokio,
        resource: opentelemetry_sdk::Resource,
    ) -> Result<Self, String> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let poster = Poster::new(url, client.clone(), Signal::Metrics)?.with_timeout(PUSH_TIMEOUT);
        let sdk = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url.to_string())
            .with_http_client(client)
            .with_timeout(PUSH_TIMEOUT)
            .with_temporality(Temporality::Cumulative)
            .build()
            .map_err(|e| format!("OTLP metric exporter for {url}: {e}"))?;
        let per_chunk = Arc::new(GapSeries::default());
        let exporter = Exporter {
            sdk,
            per_chunk: per_chunk.clone(),
            poster,
            start_unix_ns: unix_ns(SystemTime::now()),
        };
        let reader = PeriodicReader::builder(exporter)
            .with_interval(EXPORT_INTERVAL)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        let meter = provider.meter(SCOPE);
        let seconds = |name: &'static str, what: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(what)
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build()
        };
        let gauge = |name: &'static str, unit: &'static str, what: &'static str| {
            meter
                .f64_gauge(name)
                .with_unit(unit)
                .with_description(what)
                .build()
        };
        Ok(Self {
            duration: seconds(
                "gen_ai.client.operation.duration",
                "GenAI operation duration.",
            ),
            tokens: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Number of input and output tokens used.")
                .with_boundaries(TOKEN_BUCKETS.to_vec())
                .build(),
            first_chunk: seconds(
                "gen_ai.client.operation.time_to_first_chunk",
                "Time to receive the first chunk in the response stream.",
            ),
            per_chunk,
            level_target: gauge(
                "llmload.level.target_qps",
                "{request}/s",
                "The level's target rate (mean, for a ramp).",
            ),
            level_achieved: gauge(
                "llmload.level.achieved_qps",
                "{request}/s",
                "Requests/s the level actually sent.",
            ),
            level_success: gauge(
                "llmload.level.success_rate",
                "%",
                "Percent of the level's scheduled requests that succeeded (the seed's success_rate).",
            ),
            level_ttft_p95: gauge(
                "llmload.level.ttft.p95",
                "s",
                "The level's 95th percentile time to first token.",
            ),
            level_e2e_p95: gauge(
                "llmload.level.e2e.p95",
                "s",
                "The level's 95th percentile end-to-end latency.",
            ),
            provider,
        })
    }

    /// The instruments of one operation (`base`: its attributes, as for
    /// [`Self::record`]), bound to them: see [`OperationMetrics`].
    pub fn operation(&self, base: Vec<KeyValue>) -> OperationMetrics {
        OperationMetrics {
            metrics: self.clone(),
            base,
            bound: Mutex::new(Vec::new()),
        }
    }

    /// One finished request; `base` holds the operation's attributes
    /// (`gen_ai.operation.name`, `gen_ai.provider.name`,
    /// `gen_ai.request.model`, `server.address`, `server.port`).
    pub fn record(&self, base: &[KeyValue], rec: &RequestRecord) {
        if rec.outcome == Err(ErrorKind::Dropped) {
            return;
        }
        let mut attrs = base.to_vec();
        if let Some(m) = &rec.response_model {
            attrs.push(KeyValue::new("gen_ai.response.model", m.clone()));
        }
        match rec.outcome {
            Ok(()) => self.duration.record(rec.e2e().as_secs_f64(), &attrs),
            Err(kind) => {
                let mut failed = attrs.clone();
                failed.push(KeyValue::new("error.type", kind.otel_type()));
                self.duration.record(rec.e2e().as_secs_f64(), &failed);
            }
        }
        if let Some(t) = rec.ttft() {
            self.first_chunk.record(t.as_secs_f64(), &attrs);
        }
        if !rec.itl_us.is_empty() {
            let series = self.per_chunk.series(attrs.clone());
            series
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(&rec.itl_us);
        }
        if rec.is_ok() {
            let typed = |t: &'static str| {
                let mut a = attrs.clone();
                a.push(KeyValue::new("gen_ai.token.type", t));
                a
            };
            self.tokens
                .record(u64::from(rec.prompt_tokens()), &typed("input"));
            self.tokens
                .record(u64::from(rec.output_tokens().0), &typed("output"));
        }
    }

    /// A level started: its target rate.
    pub fn level_started(&self, attrs: &[KeyValue], target_qps: f64) {
        self.level_target.record(target_qps, attrs);
    }

    /// A level ended: what it achieved.
    pub fn level_finished(&self, attrs: &[KeyValue], r: &LevelResult) {
        self.level_achieved.record(r.actual_qps, attrs);
        self.level_success.record(r.success_rate, attrs);
        if r.succeeded > 0 {
            self.level_ttft_p95.record(r.ttft.p95, attrs);
            self.level_e2e_p95.record(r.e2e_latency.p95, attrs);
        }
    }

    /// The final push, then stop (blocking: call from `spawn_blocking`).
    pub fn shutdown_blocking(&self) -> Result<(), String> {
        self.provider.shutdown().map_err(|e| e.to_string())
    }
}

/// Response models bound per operation; a server that names more models
/// than this (a router) has the rest recorded unbound, which is correct,
/// only slower.
const MAX_BOUND_MODELS: usize = 8;

/// One operation's instruments, bound to its attribute sets. An unbound
/// record sorts, hashes and looks up its attributes on every call (per
/// token, for the per-chunk histogram, that was 14 of the trace
/// observer's 16 µs a request in `benches/hot_path.rs`). Bound, a record
/// is one update; the per-chunk series takes a whole request's gaps at
/// once.
pub struct OperationMetrics {
    metrics: OtlpMetrics,
    base: Vec<KeyValue>,
    /// By `gen_ai.response.model` (None: the server named none).
    bound: Mutex<Vec<(Option<String>, Arc<Bound>)>>,
}

/// The success-path instruments for one attribute set.
struct Bound {
    duration: BoundHistogram<f64>,
    first_chunk: BoundHistogram<f64>,
    per_chunk: Series,
    input: BoundHistogram<u64>,
    output: BoundHistogram<u64>,
}

impl OperationMetrics {
    fn bound_for(&self, model: Option<&str>) -> Option<Arc<Bound>> {
        let mut all = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, b)) = all.iter().find(|(m, _)| m.as_deref() == model) {
            return Some(b.clone());
        }
        if all.len() >= MAX_BOUND_MODELS {
            return None;
        }
        let mut attrs = self.base.clone();
        if let Some(m) = model {
            attrs.push(KeyValue::new("gen_ai.response.model", m.to_string()));
        }
        let typed = |t: &'static str| {
            let mut a = attrs.clone();
            a.push(KeyValue::new("gen_ai.token.type", t));
            a
        };
        let m = &self.metrics;
        let b = Arc::new(Bound {
            duration: m.duration.bind(&attrs),
            first_chunk: m.first_chunk.bind(&attrs),
            per_chunk: m.per_chunk.series(attrs.clone()),
            input: m.tokens.bind(&typed("input")),
            output: m.tokens.bind(&typed("output")),
        });
        all.push((model.map(str::to_owned), b.clone()));
        Some(b)
    }

    /// One finished request: the same measurements as
    /// [`OtlpMetrics::record`], through the bound instruments (a failure,
    /// whose `error.type` makes its own set, is recorded unbound).
    pub fn record(&self, rec: &RequestRecord) {
        if !rec.is_ok() {
            return self.metrics.record(&self.base, rec);
        }
        let Some(b) = self.bound_for(rec.response_model.as_deref()) else {
            return self.metrics.record(&self.base, rec);
        };
        b.duration.record(rec.e2e().as_secs_f64());
        if let Some(t) = rec.ttft() {
            b.first_chunk.record(t.as_secs_f64());
        }
        if !rec.itl_us.is_empty() {
            let mut gaps = b.per_chunk.lock().unwrap_or_else(|e| e.into_inner());
            gaps.record(&rec.itl_us);
        }
        b.input.record(u64::from(rec.prompt_tokens()));
        b.output.record(u64::from(rec.output_tokens().0));
    }
}

/// Most per-chunk series kept; past this, as the SDK does, values go to
/// one series marked `otel.metric.overflow`.
const MAX_GAP_SERIES: usize = 2000;

/// One per-chunk series: its values so far, shared by the requests that
/// record into it.
type Series = Arc<Mutex<ChunkGaps>>;

/// The per-chunk histogram's series, by attribute set.
#[derive(Default)]
struct GapSeries {
    all: Mutex<Vec<(Vec<KeyValue>, Series)>>,
}

impl GapSeries {
    /// The series of these attributes, made at its first use.
    fn series(&self, mut attrs: Vec<KeyValue>) -> Series {
        // The SDK's order (by key, one value a key), so a point looks the
        // same to a collector as when the SDK aggregated it.
        attrs.sort_by(|a, b| a.key.cmp(&b.key));
        attrs.dedup_by(|a, b| a.key == b.key);
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() >= MAX_GAP_SERIES && !all.iter().any(|(a, _)| *a == attrs) {
            attrs = vec![KeyValue::new("otel.metric.overflow", true)];
        }
        if let Some((_, g)) = all.iter().find(|(a, _)| *a == attrs) {
            return g.clone();
        }
        let g = Arc::new(Mutex::new(ChunkGaps::default()));
        all.push((attrs, g.clone()));
        g
    }

    /// The export request for every series so far (cumulative); None
    /// when no request has had a chunk after its first.
    fn request(
        &self,
        resource: &Resource,
        start_unix_ns: u64,
        now_unix_ns: u64,
    ) -> Option<Vec<u8>> {
        let snapshot: Vec<(Vec<KeyValue>, ChunkGaps)> = {
            let all = self.all.lock().unwrap_or_else(|e| e.into_inner());
            all.iter()
                .map(|(a, g)| {
                    (
                        a.clone(),
                        g.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    )
                })
                .collect()
        };
        let mut metrics = Vec::new();
        metric_message(
            &mut metrics,
            PER_CHUNK,
            start_unix_ns,
            now_unix_ns,
            snapshot.iter().map(|(a, g)| (&a[..], g)),
        );
        if metrics.is_empty() {
            return None;
        }
        let scope = InstrumentationScope::builder(SCOPE).build();
        Some(super::otlp_encode::Envelope::new(resource, &scope).request(&metrics))
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The SDK's OTLP exporter, and beside it, at each of its pushes, the
/// per-chunk histogram llmload aggregates itself.
struct Exporter {
    sdk: opentelemetry_otlp::MetricExporter,
    per_chunk: Arc<GapSeries>,
    poster: Poster,
    start_unix_ns: u64,
}

impl PushMetricExporter for Exporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let ours = self.per_chunk.request(
            metrics.resource(),
            self.start_unix_ns,
            unix_ns(SystemTime::now()),
        );
        let post = async {
            match ours {
                Some(body) => self
                    .poster
                    .post(body)
                    .await
                    .map_err(OTelSdkError::InternalFailure),
                None => Ok(()),
            }
        };
        // Side by side: both must fit the reader's 5 s at exit.
        let (sdk, ours) = tokio::join!(self.sdk.export(metrics), post);
        sdk.and(ours)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.sdk.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.sdk.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}
