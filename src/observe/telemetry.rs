//! OpenTelemetry traces: a span per sweep, per level and per request,
//! exported over OTLP/HTTP (protobuf).
//!
//! * **Tree.** sweep (root) → level → `chat {model}` (CLIENT). Level and
//!   sweep spans are SDK spans started and ended as the run goes; request
//!   spans ([`super::request_spans`]) start at the request's *scheduled*
//!   instant (so traces agree with the histograms and schedule lag is
//!   visible) and end at end of stream.
//! * **Propagation.** Each request carries a W3C `traceparent` built from
//!   its own span, so a server with tracing (vLLM, a gateway) joins the
//!   trace. Its sampled flag is our ratio decision for that request.
//! * **Sampling.** Sweep and level spans are always exported. A request
//!   is sampled by a ratio draw when it starts; an unsampled one is
//!   exported only if it fails, so every failure is kept and unsampled
//!   successes cost nothing.
//! * **Content.** Prompt and completion text are never recorded; the API
//!   key never leaves the client's sensitive header.
//! * **Export.** The SDK's batch processor runs on its own OS thread; our
//!   hyper HTTP client needs a tokio reactor, so
//!   [`super::otlp_http::OnTokio`] runs each export on the runtime that
//!   created it (see notes: otherwise the SDK thread panics). Request spans
//!   are batched by [`super::otlp_trace::SpanSink`], a task on the runtime.
//!   Flush and shutdown never fail the run: errors are logged.
//! * **Metrics.** The same pipeline pushes the GenAI client metrics and
//!   the level gauges ([`super::otlp_metrics`]) to the collector's
//!   `/v1/metrics`, fed by the request observer and the level hooks.

use super::otlp_trace::SpanSink;
use super::request_spans::Pipeline;
pub use super::request_spans::{SAMPLED_ATTR, TraceObserver};
use crate::analysis::level::LevelResult;
use crate::engine::sweep::LevelSpec;
use crate::results::Summary;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::SdkTracerProvider;
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

/// The instrumentation scope of every span.
const SCOPE: &str = "llmload";

/// The tracing pipeline. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SdkTracerProvider,
    metrics: Option<super::otlp_metrics::OtlpMetrics>,
    tracer: opentelemetry_sdk::trace::SdkTracer,
    /// Request spans, written as they end.
    sink: Arc<SpanSink>,
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
        let poster = super::otlp_http::Poster::new(
            &settings.endpoint,
            client.clone(),
            super::otlp_http::Signal::Traces,
        )?;
        let exporter = super::otlp_trace::TraceExporter::new(poster.clone());
        let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                opentelemetry_sdk::trace::BatchConfigBuilder::default()
                    .with_max_queue_size(4096)
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
        // Request spans do their own sampling (see `request_spans`); the
        // SDK would otherwise apply OTEL_TRACES_SAMPLER to the sweep and
        // level spans, which are always kept.
        let sink = SpanSink::start(
            poster,
            super::otlp_encode::Envelope::new(
                &resource,
                &opentelemetry::InstrumentationScope::builder(SCOPE).build(),
            ),
        );
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
            .with_span_processor(batch)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(SCOPE);
        Ok(Self {
            inner: Arc::new(Inner {
                provider,
                metrics,
                tracer,
                sink,
                settings,
                anchor: (Instant::now(), SystemTime::now()),
            }),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
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
        TraceObserver::new(
            Pipeline {
                sink: self.inner.sink.clone(),
                level: sweep.level.clone(),
                metrics: self.inner.metrics.as_ref(),
                anchor: self.inner.anchor,
                sample_ratio: self.inner.settings.sample_ratio,
                propagate: self.inner.settings.propagate,
            },
            model,
            uri,
            max_tokens,
            temperature,
        )
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
        self.inner.sink.shutdown().await;
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
        self.inner.sink.ship().await;
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
