//! OpenTelemetry traces: a span per sweep, per level and per request,
//! exported over OTLP/HTTP (protobuf), batched on the SDK's own thread.
//!
//! * **Tree.** sweep (root) → level → `chat {model}` (CLIENT). Level and
//!   sweep spans are real spans started and ended as the run goes; request
//!   spans start at the request's *scheduled* instant (so traces agree with
//!   the histograms and schedule lag is visible) and end at end of stream.
//! * **Propagation.** Each request carries a W3C `traceparent` built from
//!   its own span, so a server with tracing (vLLM, a gateway) joins the
//!   trace. Its sampled flag is our ratio decision for that request.
//! * **Sampling.** Sweep and level spans are always exported. A request
//!   is sampled by a ratio draw when it starts: sampled ones get a live
//!   span; the others get no span at all unless they fail, in which case
//!   one is built at the end from the scheduled instant, so every failure
//!   is kept and unsampled successes cost nothing. [`KeepProcessor`] is
//!   the backstop that drops any unsampled success span that reaches it.
//! * **Content.** Prompt and completion text are never recorded; the API
//!   key never leaves the client's sensitive header.
//! * **Export.** The batch processor runs on its own OS thread; our hyper
//!   HTTP client needs a tokio reactor, so [`super::otlp_http::OnTokio`]
//!   runs each export on the runtime that created it (see notes: otherwise
//!   the SDK thread panics). Flush and shutdown are blocking: done in
//!   `spawn_blocking`, errors logged, never fatal.
//! * **Metrics.** The same pipeline pushes the GenAI client metrics and
//!   the level gauges ([`super::otlp_metrics`]) to the collector's
//!   `/v1/metrics`, fed by the request observer and the level hooks.

use crate::analysis::level::LevelResult;
use crate::client::record::RequestRecord;
use crate::engine::sweep::{LevelSpec, Observer, RequestHook};
use crate::results::Summary;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Settings from flags, config and the standard `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Full traces URL (…/v1/traces).
    pub endpoint: String,
    /// Fraction of successful request spans exported.
    pub sample_ratio: f64,
    pub propagate: bool,
    pub service_name: Option<String>,
    /// Full metrics URL (…/v1/metrics); `None`: no metrics pushed
    /// (`OTEL_METRICS_EXPORTER=none`, or only a traces endpoint named).
    pub metrics_endpoint: Option<String>,
    /// Proxies for the collector (the same as the endpoint's).
    pub proxies: crate::client::proxy::ProxySettings,
}

/// The `[telemetry]` table of the daemon's config file.
#[derive(Debug, serde::Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// OTLP/HTTP traces endpoint; the OTEL_* variables also apply.
    pub otlp_endpoint: Option<String>,
    /// Fraction of successful request spans kept (errors always kept).
    pub sample_ratio: Option<f64>,
    /// Send W3C traceparent with each request (default true).
    pub propagate: Option<bool>,
    pub service_name: Option<String>,
}

impl Settings {
    /// Resolve from (highest first) the flag, the config file, then
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (verbatim) and
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`). `None`: tracing off.
    pub fn resolve(
        flag: Option<&str>,
        config: Option<&FileConfig>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        let given = flag
            .or_else(|| config.and_then(|c| c.otlp_endpoint.as_deref()))
            .filter(|e| !e.trim().is_empty());
        let endpoint = given
            .map(base_or_full)
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| {
                env("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .map(|b| format!("{}/v1/traces", b.trim_end_matches('/')))
            });
        let Some(endpoint) = endpoint.filter(|e| !e.trim().is_empty()) else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "OTLP endpoint '{endpoint}' must be an http:// or https:// URL"
            ));
        }
        let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        if protocol != "http/protobuf" {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: llmload exports \
                 http/protobuf (collector port 4318)"
            ));
        }
        let env_ratio = sampler_ratio(
            env("OTEL_TRACES_SAMPLER").as_deref(),
            env("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )?;
        let sample_ratio = config.and_then(|c| c.sample_ratio).unwrap_or(env_ratio);
        // Metrics go beside the traces: the same collector's /v1/metrics,
        // unless the standard variables say otherwise.
        let beside = |traces: &str| match traces.strip_suffix("/v1/traces") {
            Some(base) => format!("{base}/v1/metrics"),
            None => format!("{}/v1/metrics", traces.trim_end_matches('/')),
        };
        let metrics_endpoint = match (given, env("OTEL_METRICS_EXPORTER").as_deref()) {
            (_, Some("none")) => None,
            (Some(_), _) => Some(beside(&endpoint)),
            // Only a traces endpoint (a Jaeger, say): no metrics guessed.
            (None, _) => env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
                .filter(|e| !e.trim().is_empty())
                .or_else(|| {
                    env("OTEL_EXPORTER_OTLP_ENDPOINT")
                        .filter(|e| !e.trim().is_empty())
                        .map(|b| format!("{}/v1/metrics", b.trim_end_matches('/')))
                }),
        };
        Ok(Some(Self {
            metrics_endpoint,
            proxies: crate::client::proxy::ProxySettings::direct(),
            endpoint,
            sample_ratio,
            propagate: config.and_then(|c| c.propagate).unwrap_or(true),
            service_name: config.and_then(|c| c.service_name.clone()),
        }))
    }
}

/// A URL with no path gets the standard `/v1/traces`.
fn base_or_full(url: &str) -> String {
    let url = url.trim();
    match url.find("://").map(|i| &url[i + 3..]) {
        Some(rest) if !rest.trim_end_matches('/').contains('/') => {
            format!("{}/v1/traces", url.trim_end_matches('/'))
        }
        _ => url.to_string(),
    }
}

/// `OTEL_TRACES_SAMPLER[_ARG]` as a ratio for request spans.
fn sampler_ratio(sampler: Option<&str>, arg: Option<&str>) -> Result<f64, String> {
    let ratio = || -> Result<f64, String> {
        match arg {
            None => Ok(1.0),
            Some(a) => a
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG={a} must be a ratio in 0..1")),
        }
    };
    match sampler.map(str::trim) {
        None | Some("") | Some("always_on") | Some("parentbased_always_on") => Ok(1.0),
        Some("always_off") | Some("parentbased_always_off") => Ok(0.0),
        Some("traceidratio") | Some("parentbased_traceidratio") => ratio(),
        Some(other) => Err(format!(
            "OTEL_TRACES_SAMPLER={other} is not supported (use always_on, always_off, traceidratio or parentbased_traceidratio)"
        )),
    }
}

/// Drops successful request spans whose ratio draw said no; keeps every
/// other span. Sits in front of the batch processor.
#[derive(Debug)]
struct KeepProcessor<P> {
    inner: P,
}

pub const SAMPLED_ATTR: &str = "llmload.sampled";

impl<P: SpanProcessor> SpanProcessor for KeepProcessor<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let unsampled = span
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == SAMPLED_ATTR && kv.value == Value::Bool(false));
        let failed = matches!(span.status, Status::Error { .. });
        if unsampled && !failed {
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The tracing pipeline. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SdkTracerProvider,
    metrics: Option<super::otlp_metrics::OtlpMetrics>,
    tracer: opentelemetry_sdk::trace::SdkTracer,
    settings: Settings,
    /// Converts monotonic instants to wall-clock span timestamps.
    anchor: (Instant, SystemTime),
}

/// Attributes of a sweep's root span.
pub struct SweepAttrs<'a> {
    pub target: &'a str,
    pub model: &'a str,
    pub qps: &'a [f64],
    pub run_id: &'a str,
    pub job: Option<&'a str>,
}

/// A running sweep's root span and its current level span.
#[derive(Clone)]
pub struct SweepSpan {
    cx: Context,
    level: Arc<Mutex<Option<Context>>>,
    /// The level gauges' attributes: target, model, job.
    attrs: Arc<Vec<KeyValue>>,
    /// The index of the level running now.
    index: Arc<std::sync::atomic::AtomicUsize>,
}

impl Telemetry {
    /// Build the pipeline; must run inside the tokio runtime.
    pub fn start(settings: Settings) -> Result<Self, String> {
        let client = super::otlp_http::client(&settings.proxies);
        let exporter = super::otlp_trace::TraceExporter::new(&settings.endpoint, client.clone())?;
        let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                opentelemetry_sdk::trace::BatchConfigBuilder::default()
                    .with_max_queue_size(65_536)
                    .with_max_export_batch_size(2048)
                    .with_scheduled_delay(Duration::from_millis(1000))
                    .build(),
            )
            .build();
        let mut resource = opentelemetry_sdk::Resource::builder();
        // OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES are read by the
        // builder's detectors; the config's name wins, then "llmload".
        if let Some(name) = &settings.service_name {
            resource = resource.with_service_name(name.clone());
        } else if std::env::var("OTEL_SERVICE_NAME").is_err()
            && !std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name"))
        {
            resource = resource.with_service_name("llmload");
        }
        let resource = resource
            .with_attributes([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))])
            .build();
        // Our own sampling (KeepProcessor) needs every span recorded; the
        // SDK would otherwise apply OTEL_TRACES_SAMPLER itself and drop the
        // sweep and level spans, and the failures, too.
        let metrics = match &settings.metrics_endpoint {
            Some(url) => Some(super::otlp_metrics::OtlpMetrics::start(
                url,
                client,
                resource.clone(),
            )?),
            None => None,
        };
        let provider = SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
            .with_span_processor(KeepProcessor { inner: batch })
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("llmload");
        Ok(Self {
            inner: Arc::new(Inner {
                provider,
                metrics,
                tracer,
                settings,
                anchor: (Instant::now(), SystemTime::now()),
            }),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    fn wall(&self, t: Instant) -> SystemTime {
        let (i, s) = self.inner.anchor;
        if t >= i { s + (t - i) } else { s - (i - t) }
    }

    pub fn sweep_started(&self, a: &SweepAttrs) -> SweepSpan {
        let mut attrs = vec![
            KeyValue::new("llmload.target", a.target.to_string()),
            KeyValue::new("gen_ai.request.model", a.model.to_string()),
            KeyValue::new("llmload.qps_levels", Value::Array(a.qps.to_vec().into())),
            KeyValue::new("llmload.run_id", a.run_id.to_string()),
        ];
        if let Some(j) = a.job {
            attrs.push(KeyValue::new("llmload.job", j.to_string()));
        }
        let mut gauge_attrs = vec![
            KeyValue::new("llmload.target", a.target.to_string()),
            KeyValue::new("gen_ai.request.model", a.model.to_string()),
        ];
        if let Some(j) = a.job {
            gauge_attrs.push(KeyValue::new("llmload.job", j.to_string()));
        }
        let span = self
            .inner
            .tracer
            .span_builder("llmload.sweep")
            .with_kind(SpanKind::Internal)
            .with_attributes(attrs)
            .start_with_context(&self.inner.tracer, &Context::new());
        SweepSpan {
            cx: Context::new().with_span(span),
            level: Arc::new(Mutex::new(None)),
            attrs: Arc::new(gauge_attrs),
            index: Default::default(),
        }
    }

    pub fn level_started(&self, sweep: &SweepSpan, spec: &LevelSpec) {
        let span = self
            .inner
            .tracer
            .span_builder("llmload.level")
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("llmload.level.index", spec.index as i64),
                KeyValue::new("llmload.qps.target", spec.qps),
                KeyValue::new("llmload.arrival", spec.arrival.to_string()),
            ])
            .start_with_context(&self.inner.tracer, &sweep.cx);
        *sweep.level.lock().expect("level lock") = Some(sweep.cx.with_span(span));
        sweep
            .index
            .store(spec.index, std::sync::atomic::Ordering::Relaxed);
        if let Some(m) = &self.inner.metrics {
            m.level_started(&level_attrs(&sweep.attrs, spec.index), spec.qps);
        }
    }

    pub fn level_finished(&self, sweep: &SweepSpan, r: &LevelResult) {
        let Some(cx) = sweep.level.lock().expect("level lock").take() else {
            return;
        };
        if let Some(m) = &self.inner.metrics {
            let index = sweep.index.load(std::sync::atomic::Ordering::Relaxed);
            m.level_finished(&level_attrs(&sweep.attrs, index), r);
        }
        let span = cx.span();
        span.set_attributes([
            KeyValue::new("llmload.qps.achieved", r.actual_qps),
            KeyValue::new("llmload.success_rate", r.success_rate),
            KeyValue::new("llmload.ttft.p95", r.ttft.p95),
            KeyValue::new("llmload.e2e.p95", r.e2e_latency.p95),
            KeyValue::new("llmload.sent", r.sent as i64),
            KeyValue::new("llmload.failed", r.failed as i64),
            KeyValue::new("llmload.client_bound", r.client_bound),
        ]);
        if r.failed > 0 {
            span.set_status(Status::error(format!(
                "{} of {} requests failed",
                r.failed, r.sent
            )));
        }
        span.end();
    }

    pub fn sweep_finished(&self, sweep: &SweepSpan, s: &Summary) {
        let span = sweep.cx.span();
        if let Some(v) = s.analysis.max_qps_without_errors {
            span.set_attribute(KeyValue::new("llmload.max_qps_without_errors", v));
        }
        if let Some(v) = s.analysis.saturation_qps {
            span.set_attribute(KeyValue::new("llmload.saturation_qps", v));
        }
        if let Some(v) = s.analysis.recommended_qps {
            span.set_attribute(KeyValue::new("llmload.recommended_qps", v));
        }
        span.set_attribute(KeyValue::new("llmload.status", s.status.clone()));
        span.end();
    }

    /// The per-request observer for one sweep.
    pub fn request_observer(
        &self,
        sweep: &SweepSpan,
        model: &str,
        uri: &http::Uri,
        max_tokens: u32,
        temperature: f64,
    ) -> TraceObserver {
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        // The GenAI operation: chat, or a base model's text completion.
        let path = uri.path();
        let operation = if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
            "text_completion"
        } else {
            "chat"
        };
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        TraceObserver {
            operation,
            metrics: self.inner.metrics.as_ref().map(|m| {
                m.operation(vec![
                    KeyValue::new("gen_ai.operation.name", operation),
                    KeyValue::new("gen_ai.provider.name", "openai"),
                    KeyValue::new("gen_ai.request.model", model.to_string()),
                    KeyValue::new("server.address", host.clone()),
                    KeyValue::new("server.port", port as i64),
                ])
            }),
            tel: self.clone(),
            level: sweep.level.clone(),
            name: format!("{operation} {model}"),
            // Shared strings: cloning an Arc per span, not the text.
            model: Value::String(opentelemetry::StringValue::from(Arc::<str>::from(model))),
            host: Value::String(opentelemetry::StringValue::from(Arc::<str>::from(
                host.as_str(),
            ))),
            port: uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                }),
            max_tokens,
            temperature,
            salt: mix(SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)),
        }
    }

    /// Flush and stop the exporters (the metrics' final push included).
    /// Blocking work runs off the runtime; a collector that is down costs a
    /// logged warning, not the run.
    pub async fn shutdown(&self) {
        if let Some(metrics) = self.inner.metrics.clone()
            && let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || metrics.shutdown_blocking()).await
        {
            tracing::warn!("metric export did not complete: {e}");
        }
        let provider = self.inner.provider.clone();
        let r = tokio::task::spawn_blocking(move || {
            let f = provider.force_flush();
            let s = provider.shutdown();
            (f, s)
        })
        .await;
        match r {
            Ok((Err(e), _)) | Ok((_, Err(e))) => {
                tracing::warn!("trace export did not complete: {e}")
            }
            Err(e) => tracing::warn!("trace shutdown failed: {e}"),
            _ => {}
        }
    }

    pub async fn flush(&self) {
        let provider = self.inner.provider.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || provider.force_flush()).await {
            tracing::warn!("trace flush failed: {e}");
        }
    }
}

/// The level gauges' attributes: the sweep's, and the level's index.
fn level_attrs(sweep: &[KeyValue], index: usize) -> Vec<KeyValue> {
    let mut a = sweep.to_vec();
    a.push(KeyValue::new("llmload.level.index", index as i64));
    a
}

/// Creates and ends the `chat {model}` CLIENT span of each request, and
/// records its GenAI metrics.
pub struct TraceObserver {
    /// `chat` or `text_completion`.
    operation: &'static str,
    /// The GenAI metrics of this operation, when they are pushed.
    metrics: Option<super::otlp_metrics::OperationMetrics>,
    tel: Telemetry,
    level: Arc<Mutex<Option<Context>>>,
    name: String,
    model: Value,
    host: Value,
    port: u16,
    max_tokens: u32,
    temperature: f64,
    /// Per-observer salt for the sampling draw (by request sequence).
    salt: u64,
}

/// A request's tracing state between start and done. It travels boxed in
/// the request hook, so the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum RequestSpan {
    /// Sampled: the span is live from the scheduled send.
    Live(opentelemetry_sdk::trace::Span),
    /// Not sampled: no span is built unless the request fails, in which
    /// case it is built at the end with its true start time. (Its span id
    /// then differs from the one in the `traceparent` we sent, which told
    /// the server not to sample, so no server span points at it.)
    Deferred(Context),
}

/// SplitMix64: a fast, well-mixed hash for the sampling draw and ids.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl TraceObserver {
    fn start_span(
        &self,
        parent: &Context,
        start: SystemTime,
        seq: u64,
    ) -> opentelemetry_sdk::trace::Span {
        let t = &self.tel.inner.tracer;
        // Room for the attributes `finish` adds, so the SDK's vector is
        // allocated once per span, not grown three times.
        let mut attributes = Vec::with_capacity(24);
        attributes.extend([
            KeyValue::new("gen_ai.operation.name", self.operation),
            KeyValue::new("gen_ai.provider.name", "openai"),
            KeyValue::new("gen_ai.request.model", self.model.clone()),
            KeyValue::new("gen_ai.request.max_tokens", self.max_tokens as i64),
            KeyValue::new("gen_ai.request.temperature", self.temperature),
            KeyValue::new("gen_ai.request.stream", true),
            KeyValue::new("server.address", self.host.clone()),
            KeyValue::new("server.port", self.port as i64),
            KeyValue::new("llmload.seq", seq as i64),
        ]);
        t.span_builder(self.name.clone())
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(t, parent)
    }

    fn finish(
        &self,
        mut span: opentelemetry_sdk::trace::Span,
        base: Instant,
        rec: &RequestRecord,
        sampled: bool,
    ) {
        span.set_attribute(KeyValue::new(SAMPLED_ATTR, sampled));
        span.set_attribute(KeyValue::new(
            "llmload.scheduled_offset_s",
            rec.scheduled_at.as_secs_f64(),
        ));
        span.set_attribute(KeyValue::new("llmload.send_lag_s", rec.lag().as_secs_f64()));
        if let Some(s) = rec.status {
            span.set_attribute(KeyValue::new("http.response.status_code", s as i64));
        }
        if let Some(id) = &rec.response_id {
            span.set_attribute(KeyValue::new("gen_ai.response.id", id.clone()));
        }
        if let Some(m) = &rec.response_model {
            span.set_attribute(KeyValue::new("gen_ai.response.model", m.clone()));
        }
        if let Some(f) = rec.finish {
            span.set_attribute(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(vec![opentelemetry::StringValue::from(f.as_str())].into()),
            ));
        }
        if let Some(ttft) = rec.ttft() {
            span.set_attribute(KeyValue::new(
                "gen_ai.response.time_to_first_chunk",
                ttft.as_secs_f64(),
            ));
            span.add_event_with_timestamp(
                "llmload.first_token",
                self.tel
                    .wall(base + rec.first_token_at.unwrap_or(rec.scheduled_at)),
                vec![KeyValue::new("llmload.ttft_s", ttft.as_secs_f64())],
            );
        }
        if let Some(n) = rec.usage_input_tokens {
            span.set_attribute(KeyValue::new("gen_ai.usage.input_tokens", n as i64));
        }
        if rec.is_ok() {
            let (n, _) = rec.output_tokens();
            span.set_attribute(KeyValue::new("gen_ai.usage.output_tokens", n as i64));
            if let Some(t) = rec.tpot() {
                span.set_attribute(KeyValue::new("llmload.tpot_s", t.as_secs_f64()));
            }
        }
        if rec.turn > 0 {
            span.set_attribute(KeyValue::new("llmload.session.turn", rec.turn as i64));
        }
        if let Some(c) = rec.cached_input_tokens {
            span.set_attribute(KeyValue::new("llmload.cached_input_tokens", c as i64));
        }
        if let Err(kind) = rec.outcome {
            span.set_attribute(KeyValue::new("error.type", kind.otel_type()));
            span.set_status(Status::error(kind.key()));
        }
        span.end_with_timestamp(self.tel.wall(base + rec.done_at));
    }
}

impl Observer for TraceObserver {
    fn request_start(
        &self,
        _level: &LevelSpec,
        base: Instant,
        rec: &RequestRecord,
    ) -> Option<RequestHook> {
        let parent = self.level.lock().expect("level lock").clone()?;
        let draw = mix(rec.seq ^ self.salt);
        let unit = (draw >> 11) as f64 / ((1u64 << 53) as f64);
        let sampled = unit < self.tel.inner.settings.sample_ratio;
        let (state, trace_id, span_id) = if sampled {
            let span = self.start_span(&parent, self.tel.wall(base + rec.scheduled_at), rec.seq);
            let sc: SpanContext = span.span_context().clone();
            (RequestSpan::Live(span), sc.trace_id(), sc.span_id())
        } else {
            let trace_id = parent.span().span_context().trace_id();
            let id = mix(draw).max(1);
            (
                RequestSpan::Deferred(parent),
                trace_id,
                opentelemetry::trace::SpanId::from_bytes(id.to_be_bytes()),
            )
        };
        let header = self.tel.inner.settings.propagate.then(|| {
            let v = format!(
                "00-{trace_id}-{span_id}-{}",
                if sampled { "01" } else { "00" }
            );
            (
                http::HeaderName::from_static("traceparent"),
                http::HeaderValue::from_str(&v).expect("hex and dashes are a valid header"),
            )
        });
        Some(RequestHook {
            header,
            state: Box::new(state),
        })
    }

    fn request_done(
        &self,
        _level: &LevelSpec,
        base: Instant,
        rec: &RequestRecord,
        hook: Option<RequestHook>,
    ) {
        if let Some(m) = &self.metrics {
            m.record(rec);
        }
        let Some(hook) = hook else { return };
        let Ok(state) = hook.state.downcast::<RequestSpan>() else {
            return;
        };
        match *state {
            RequestSpan::Live(span) => self.finish(span, base, rec, true),
            // Failures are always kept: build the span now, from the
            // scheduled instant, under the same level.
            RequestSpan::Deferred(parent) if !rec.is_ok() => {
                let span =
                    self.start_span(&parent, self.tel.wall(base + rec.scheduled_at), rec.seq);
                self.finish(span, base, rec, false);
            }
            RequestSpan::Deferred(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn endpoint_resolution() {
        let none = env_of(&[]);
        assert_eq!(Settings::resolve(None, None, &none).unwrap(), None);
        let s = Settings::resolve(Some("http://c:4318"), None, &none)
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint, "http://c:4318/v1/traces");
        let s = Settings::resolve(Some("http://c:4318/custom/path"), None, &none)
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint, "http://c:4318/custom/path");
        let e = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4318/")]);
        assert_eq!(
            Settings::resolve(None, None, &e).unwrap().unwrap().endpoint,
            "http://col:4318/v1/traces"
        );
        let e = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x"),
        ]);
        assert_eq!(
            Settings::resolve(None, None, &e).unwrap().unwrap().endpoint,
            "http://t:1/x"
        );
        let e = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert!(
            Settings::resolve(None, None, &e)
                .unwrap_err()
                .contains("grpc")
        );
    }

    #[test]
    fn metrics_go_beside_the_traces_unless_told_otherwise() {
        let none = env_of(&[]);
        let m = |flag: Option<&str>, e: &dyn Fn(&str) -> Option<String>| {
            Settings::resolve(flag, None, e)
                .unwrap()
                .unwrap()
                .metrics_endpoint
        };
        assert_eq!(
            m(Some("http://c:4318"), &none).as_deref(),
            Some("http://c:4318/v1/metrics")
        );
        let e = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4318/")]);
        assert_eq!(m(None, &e).as_deref(), Some("http://col:4318/v1/metrics"));
        let e = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9/push"),
        ]);
        assert_eq!(m(None, &e).as_deref(), Some("http://m:9/push"));
        // A traces-only endpoint (a Jaeger) gets no metrics guessed.
        let e = env_of(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://jaeger:4318/v1/traces",
        )]);
        assert_eq!(m(None, &e), None);
        let e = env_of(&[("OTEL_METRICS_EXPORTER", "none")]);
        assert_eq!(m(Some("http://c:4318"), &e), None);
    }

    #[test]
    fn sampler_variables() {
        assert_eq!(sampler_ratio(None, None), Ok(1.0));
        assert_eq!(sampler_ratio(Some("always_off"), None), Ok(0.0));
        assert_eq!(
            sampler_ratio(Some("parentbased_traceidratio"), Some("0.25")),
            Ok(0.25)
        );
        assert!(sampler_ratio(Some("traceidratio"), Some("2")).is_err());
        assert!(sampler_ratio(Some("jaeger_remote"), None).is_err());
    }
}
