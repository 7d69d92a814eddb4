//! OpenTelemetry traces: a real OTLP/HTTP receiver written here decodes
//! the exported protobuf (`opentelemetry-proto` + prost) and the tests
//! check the tree, the attributes, error spans, sampling and propagation.

mod common;

use axum::body::Bytes;
use common::*;
use llmload::mock::capacity::CapacityModel;
use llmload::mock::{MockConfig, OutputTokens};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric::Data};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An in-process OTLP/HTTP receiver (traces and metrics) on 127.0.0.1:0.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    resources: Arc<Mutex<Vec<HashMap<String, String>>>>,
    /// Every metrics export, in arrival order, with its headers.
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    metric_headers: Arc<Mutex<Vec<axum::http::HeaderMap>>>,
    /// The headers of every traces export.
    trace_headers: Arc<Mutex<Vec<axum::http::HeaderMap>>>,
}

async fn receiver() -> Receiver {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let resources = Arc::new(Mutex::new(Vec::new()));
    let metrics = Arc::new(Mutex::new(Vec::new()));
    let trace_headers = Arc::new(Mutex::new(Vec::new()));
    let metric_headers = Arc::new(Mutex::new(Vec::new()));
    let mh = metric_headers.clone();
    let (s2, r2, m2, h2) = (
        spans.clone(),
        resources.clone(),
        metrics.clone(),
        trace_headers.clone(),
    );
    let app = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let metrics = m2.clone();
            mh.lock().unwrap().push(headers);
            async move {
                let req = ExportMetricsServiceRequest::decode(body).expect("valid OTLP protobuf");
                metrics.lock().unwrap().push(req);
                (
                    [("content-type", "application/x-protobuf")],
                    ExportMetricsServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let app = app.route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let (spans, resources) = (s2.clone(), r2.clone());
            h2.lock().unwrap().push(headers);
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
                for rs in req.resource_spans {
                    if let Some(r) = rs.resource {
                        resources.lock().unwrap().push(attrs_of(&r.attributes));
                    }
                    for ss in rs.scope_spans {
                        spans.lock().unwrap().extend(ss.spans);
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        url: format!("http://{addr}"),
        spans,
        resources,
        metrics,
        metric_headers,
        trace_headers,
    }
}

fn value_str(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|a| a.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::ArrayValue(a)) => format!(
            "[{}]",
            a.values
                .iter()
                .map(|x| value_str(&Some(x.clone())))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => format!("{other:?}"),
    }
}

fn attrs_of(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_str(&kv.value)))
        .collect()
}

/// The last export of the metric `name`, with its resource attributes.
fn last_metric(rx: &Receiver, name: &str) -> Option<(Metric, HashMap<String, String>)> {
    let all = rx.metrics.lock().unwrap();
    all.iter().rev().find_map(|req| {
        req.resource_metrics.iter().find_map(|rm| {
            let res = rm
                .resource
                .as_ref()
                .map(|r| attrs_of(&r.attributes))
                .unwrap_or_default();
            rm.scope_metrics
                .iter()
                .flat_map(|s| &s.metrics)
                .find(|m| m.name == name)
                .map(|m| (m.clone(), res.clone()))
        })
    })
}

/// A histogram's points: (attributes, count, bounds).
fn histogram_points(m: &Metric) -> Vec<(HashMap<String, String>, u64, Vec<f64>)> {
    match &m.data {
        Some(Data::Histogram(h)) => h
            .data_points
            .iter()
            .map(|p| (attrs_of(&p.attributes), p.count, p.explicit_bounds.clone()))
            .collect(),
        other => panic!("{} is not a histogram: {other:?}", m.name),
    }
}

/// A gauge's points: (attributes, value).
fn gauge_points(m: &Metric) -> Vec<(HashMap<String, String>, f64)> {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as N;
    match &m.data {
        Some(Data::Gauge(g)) => g
            .data_points
            .iter()
            .map(|p| {
                let v = match p.value {
                    Some(N::AsDouble(d)) => d,
                    Some(N::AsInt(i)) => i as f64,
                    None => f64::NAN,
                };
                (attrs_of(&p.attributes), v)
            })
            .collect(),
        other => panic!("{} is not a gauge: {other:?}", m.name),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mock_cfg(error_fraction: f64) -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots: 16,
            queue: 16,
            ttft: Duration::from_millis(15),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(2),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(8)),
        faults: vec![llmload::mock::faults::FaultSpec {
            kind: llmload::mock::faults::FaultKind::Http503,
            fraction: error_fraction,
        }],
        seed: 3,
        ..MockConfig::default()
    }
}

async fn run_with_traces(mock: &llmload::mock::MockServer, otlp: &str, envs: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args([
        "run",
        "--endpoint",
        &mock.chat_url(),
        "--model",
        "m",
        "--dataset",
        dataset.to_str().unwrap(),
        "--qps",
        "10,20",
        "--duration",
        "1",
        "--results-dir",
        tmp.path().join("r").to_str().unwrap(),
        "--otlp-endpoint",
        otlp,
    ])
    .kill_on_drop(true);
    for k in LLMLOAD_ENV {
        cmd.env_remove(k);
    }
    cmd.env("LLMLOAD_API_KEY", "sk-otel-SECRET-42");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_level_request_tree_with_genai_attributes_and_propagation() {
    let _serial = serial();
    let mock = start_mock(mock_cfg(0.2)).await;
    let rx = receiver().await;
    run_with_traces(
        &mock,
        &rx.url,
        &[
            ("OTEL_SERVICE_NAME", "capacity-tests"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "X-Scope-OrgID=capacity, authorization=Bearer%20tok-1",
            ),
        ],
    )
    .await;
    let spans = rx.spans.lock().unwrap().clone();
    // Every export carried the headers of OTEL_EXPORTER_OTLP_HEADERS,
    // the value percent-decoded.
    let headers = rx.trace_headers.lock().unwrap().clone();
    assert!(!headers.is_empty());
    for h in &headers {
        assert_eq!(h["x-scope-orgid"], "capacity");
        assert_eq!(h["authorization"], "Bearer tok-1");
        assert_eq!(h["content-type"], "application/x-protobuf");
    }

    let roots: Vec<&Span> = spans.iter().filter(|s| s.name == "llmload.sweep").collect();
    assert_eq!(roots.len(), 1, "one sweep span");
    let root = roots[0];
    assert!(root.parent_span_id.is_empty());
    let ra = attrs_of(&root.attributes);
    assert_eq!(ra["gen_ai.request.model"], "m");
    assert_eq!(ra["llmload.qps_levels"], "[10,20]");
    assert!(
        ra.contains_key("llmload.max_qps_without_errors")
            || ra.contains_key("llmload.saturation_qps")
    );

    let levels: Vec<&Span> = spans.iter().filter(|s| s.name == "llmload.level").collect();
    assert_eq!(levels.len(), 2);
    for l in &levels {
        assert_eq!(l.parent_span_id, root.span_id);
        assert_eq!(l.trace_id, root.trace_id);
        let a = attrs_of(&l.attributes);
        for k in [
            "llmload.qps.target",
            "llmload.qps.achieved",
            "llmload.success_rate",
            "llmload.ttft.p95",
            "llmload.e2e.p95",
        ] {
            assert!(a.contains_key(k), "level span lacks {k}");
        }
    }
    let level_ids: Vec<&Vec<u8>> = levels.iter().map(|l| &l.span_id).collect();

    let requests: Vec<&Span> = spans.iter().filter(|s| s.name == "chat m").collect();
    assert_eq!(requests.len(), 30, "every request has a span (ratio 1)");
    let mut errors = 0;
    for r in &requests {
        assert_eq!(r.kind, 3, "SPAN_KIND_CLIENT");
        assert!(
            level_ids.contains(&&r.parent_span_id),
            "request under a level"
        );
        assert_eq!(r.trace_id, root.trace_id);
        let a = attrs_of(&r.attributes);
        for (k, v) in [
            ("gen_ai.operation.name", "chat"),
            ("gen_ai.provider.name", "openai"),
            ("gen_ai.request.model", "m"),
            ("gen_ai.request.max_tokens", "512"),
            ("gen_ai.request.temperature", "0.7"),
            ("gen_ai.request.stream", "true"),
            ("server.address", "127.0.0.1"),
        ] {
            assert_eq!(a.get(k).map(String::as_str), Some(v), "{k} in {a:?}");
        }
        assert_eq!(a["server.port"], mock.addr.port().to_string());
        assert!(a.contains_key("llmload.scheduled_offset_s"));
        assert!(a.contains_key("llmload.send_lag_s"));
        let status = r.status.as_ref().map(|s| s.code).unwrap_or(0);
        if a.get("http.response.status_code").map(String::as_str) == Some("503") {
            errors += 1;
            assert_eq!(a["error.type"], "503");
            assert_eq!(status, 2, "STATUS_CODE_ERROR");
        } else {
            assert_eq!(a["http.response.status_code"], "200");
            assert!(a["gen_ai.response.id"].starts_with("chatcmpl-mock-"));
            assert_eq!(a["gen_ai.response.model"], "m");
            assert_eq!(a["gen_ai.response.finish_reasons"], "[stop]");
            assert_eq!(a["gen_ai.usage.output_tokens"], "8");
            assert!(a["gen_ai.usage.input_tokens"].parse::<u32>().unwrap() > 0);
            let ttft: f64 = a["gen_ai.response.time_to_first_chunk"].parse().unwrap();
            assert!((0.014..0.05).contains(&ttft), "{ttft}");
            assert!(a.contains_key("llmload.tpot_s"));
            assert!(!a.contains_key("error.type"));
            assert!(r.events.iter().any(|e| e.name == "llmload.first_token"));
            // The span starts at the scheduled send and lasts the E2E.
            let dur = (r.end_time_unix_nano - r.start_time_unix_nano) as f64 / 1e9;
            assert!((0.02..0.2).contains(&dur), "duration {dur}");
        }
    }
    assert!(errors >= 2, "20% injected 503s: {errors}");

    // The mock received a traceparent on every request, naming our trace
    // and the exported span.
    let (_, truth) = get(&format!("{}/debug/requests", mock.base_url())).await;
    let truth: Vec<serde_json::Value> = serde_json::from_str(&truth).unwrap();
    assert_eq!(truth.len(), 30);
    let span_ids: std::collections::HashSet<String> =
        requests.iter().map(|r| hex(&r.span_id)).collect();
    for t in &truth {
        let tp = t["traceparent"].as_str().expect("traceparent sent");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], hex(&root.trace_id));
        assert!(
            span_ids.contains(parts[2]),
            "traceparent span {} was exported",
            parts[2]
        );
        assert_eq!(parts[3], "01");
    }

    // Resource: the service name from OTEL_SERVICE_NAME; no key anywhere.
    let res = rx.resources.lock().unwrap().clone();
    assert!(res.iter().all(|r| r["service.name"] == "capacity-tests"));
    for s in &spans {
        for kv in &s.attributes {
            assert!(!value_str(&kv.value).contains("SECRET"));
        }
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratio_sampling_keeps_every_failure_and_all_structure() {
    let _serial = serial();
    let mock = start_mock(mock_cfg(0.2)).await;
    let rx = receiver().await;
    run_with_traces(
        &mock,
        &rx.url,
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ],
    )
    .await;
    let spans = rx.spans.lock().unwrap().clone();
    assert_eq!(
        spans.iter().filter(|s| s.name == "llmload.sweep").count(),
        1
    );
    assert_eq!(
        spans.iter().filter(|s| s.name == "llmload.level").count(),
        2
    );
    let requests: Vec<&Span> = spans.iter().filter(|s| s.name == "chat m").collect();
    let (_, truth) = get(&format!("{}/debug/requests", mock.base_url())).await;
    let truth: Vec<serde_json::Value> = serde_json::from_str(&truth).unwrap();
    let failed = truth.iter().filter(|t| t["status"] == 503).count();
    assert!(failed >= 2);
    assert_eq!(
        requests.len(),
        failed,
        "ratio 0: only the failures are exported"
    );
    assert!(
        requests
            .iter()
            .all(|r| attrs_of(&r.attributes)["error.type"] == "503")
    );
    // The server was told not to sample.
    assert!(
        truth
            .iter()
            .all(|t| t["traceparent"].as_str().unwrap().ends_with("-00"))
    );
    // Each kept failure has the span id its traceparent named, so a
    // server or gateway log of that request points at it.
    let sent: std::collections::HashSet<String> = truth
        .iter()
        .filter(|t| t["status"] == 503)
        .map(|t| {
            t["traceparent"]
                .as_str()
                .unwrap()
                .split('-')
                .nth(2)
                .unwrap()
                .to_string()
        })
        .collect();
    let exported: std::collections::HashSet<String> =
        requests.iter().map(|r| hex(&r.span_id)).collect();
    assert_eq!(exported, sent);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_export_and_no_header_unless_asked() {
    let _serial = serial();
    let mock = start_mock(mock_cfg(0.0)).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let out = tokio::process::Command::new(bin())
        .args(base_run(&mock.chat_url(), &dataset))
        .args([
            "--qps",
            "5",
            "--duration",
            "0.6",
            "--results-dir",
            tmp.path().join("r").to_str().unwrap(),
        ])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let (_, truth) = get(&format!("{}/debug/requests", mock.base_url())).await;
    let truth: Vec<serde_json::Value> = serde_json::from_str(&truth).unwrap();
    assert_eq!(truth.len(), 3);
    assert!(truth.iter().all(|t| t.get("traceparent").is_none()));

    // With traces on but propagation off: spans, no header.
    let rx = receiver().await;
    let out = tokio::process::Command::new(bin())
        .args(base_run(&mock.chat_url(), &dataset))
        .args([
            "--qps",
            "5",
            "--duration",
            "0.6",
            "--results-dir",
            tmp.path().join("r").to_str().unwrap(),
            "--no-trace-propagation",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        rx.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == "chat m")
            .count(),
        3
    );
    let (_, truth) = get(&format!("{}/debug/requests?since=3", mock.base_url())).await;
    let truth: Vec<serde_json::Value> = serde_json::from_str(&truth).unwrap();
    assert_eq!(truth.len(), 3);
    assert!(truth.iter().all(|t| t.get("traceparent").is_none()));

    // grpc is refused with a clear message, before any load.
    let out = tokio::process::Command::new(bin())
        .args(base_run(&mock.chat_url(), &dataset))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http/protobuf"));
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_sweeps_are_traced_and_a_dead_collector_is_harmless() {
    let _serial = serial();
    let mock = start_mock(mock_cfg(0.0)).await;
    let rx = receiver().await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let cfg = tmp.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nresults_dir = \"{}\"\n[telemetry]\notlp_endpoint = \"{}\"\n\
             [[target]]\nname = \"t\"\nendpoint = \"{}\"\nmodel = \"m\"\ndataset = \"{}\"\n\
             [[job]]\nname = \"traced\"\ntarget = \"t\"\nkind = \"sweep\"\nqps = [10]\nduration = \"1s\"\nschedule = \"at_start\"\n",
            tmp.path().join("results").display(),
            rx.url,
            mock.chat_url(),
            dataset.display()
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&cfg, &[]).await;
    d.wait_json("/api/v1/runs", 20, |v| v["runs"][0]["status"] == "complete")
        .await;
    d.signal(libc::SIGTERM);
    tokio::time::timeout(Duration::from_secs(20), d.child.wait())
        .await
        .unwrap()
        .unwrap();
    let spans = rx.spans.lock().unwrap().clone();
    let root = spans
        .iter()
        .find(|s| s.name == "llmload.sweep")
        .expect("sweep span");
    assert_eq!(attrs_of(&root.attributes)["llmload.job"], "traced");
    assert_eq!(spans.iter().filter(|s| s.name == "chat m").count(), 10);
    // Its metrics are pushed too, the job named on the level gauges.
    let (m, _) = last_metric(&rx, "gen_ai.client.operation.duration").expect("metrics pushed");
    let total: u64 = histogram_points(&m).iter().map(|p| p.1).sum();
    assert_eq!(total, 10);
    let (g, _) = last_metric(&rx, "llmload.level.achieved_qps").expect("level gauges");
    assert_eq!(gauge_points(&g)[0].0["llmload.job"], "traced");

    // A collector that is down: the run completes, the failure is logged.
    let port = free_port();
    let out = tokio::process::Command::new(bin())
        .args(base_run(&mock.chat_url(), &dataset))
        .args([
            "--qps",
            "5",
            "--duration",
            "0.6",
            "--results-dir",
            tmp.path().join("r").to_str().unwrap(),
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{port}"),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    mock.shutdown().await;
}

/// The GenAI client metrics and the level gauges reach the receiver over
/// OTLP/HTTP with the semantic conventions' names, units, attributes and
/// bucket boundaries. The run is over in about 3 s, before the first 10 s
/// push: everything here came with the push at exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genai_client_metrics_are_pushed_with_semantic_convention_names() {
    let _serial = serial();
    let mock = start_mock(mock_cfg(0.2)).await;
    let rx = receiver().await;
    run_with_traces(
        &mock,
        &rx.url,
        &[
            ("OTEL_SERVICE_NAME", "capacity-tests"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                "x-tenant=capacity%20team",
            ),
        ],
    )
    .await;
    // Both pushes (the SDK's, and llmload's per-chunk histogram beside
    // it) carry the metrics headers.
    let headers = rx.metric_headers.lock().unwrap().clone();
    assert!(headers.len() >= 2, "{} pushes", headers.len());
    for h in &headers {
        assert_eq!(
            h.get("x-tenant").map(|v| v.as_bytes()),
            Some(&b"capacity team"[..])
        );
    }
    let spans = rx.spans.lock().unwrap().clone();
    let failed = spans
        .iter()
        .filter(|s| s.name == "chat m" && attrs_of(&s.attributes).contains_key("error.type"))
        .count() as u64;
    assert!(failed > 0 && failed < 30, "{failed} of 30 failed");
    let ok = 30 - failed;
    let seconds: Vec<f64> = vec![
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    ];

    let (m, resource) = last_metric(&rx, "gen_ai.client.operation.duration").expect("pushed");
    assert_eq!(m.unit, "s");
    assert_eq!(resource["service.name"], "capacity-tests");
    let points = histogram_points(&m);
    assert_eq!(points.iter().map(|p| p.1).sum::<u64>(), 30, "every request");
    for (a, _, bounds) in &points {
        assert_eq!(bounds, &seconds);
        for (k, v) in [
            ("gen_ai.operation.name", "chat"),
            ("gen_ai.provider.name", "openai"),
            ("gen_ai.request.model", "m"),
            ("server.address", "127.0.0.1"),
        ] {
            assert_eq!(a[k], v, "{a:?}");
        }
        assert!(a["server.port"].parse::<u16>().is_ok());
    }
    let errored: u64 = points
        .iter()
        .filter(|p| p.0.get("error.type").map(String::as_str) == Some("503"))
        .map(|p| p.1)
        .sum();
    assert_eq!(errored, failed, "failures carry error.type");

    let (m, _) = last_metric(&rx, "gen_ai.client.token.usage").expect("pushed");
    assert_eq!(m.unit, "{token}");
    let points = histogram_points(&m);
    for t in ["input", "output"] {
        let n: u64 = points
            .iter()
            .filter(|p| p.0["gen_ai.token.type"] == t)
            .map(|p| p.1)
            .sum();
        assert_eq!(n, ok, "{t} tokens of each successful request");
    }
    assert_eq!(points[0].2[..3], [1.0, 4.0, 16.0]);

    let (m, _) = last_metric(&rx, "gen_ai.client.operation.time_to_first_chunk").expect("pushed");
    assert_eq!(m.unit, "s");
    let points = histogram_points(&m);
    assert_eq!(points.iter().map(|p| p.1).sum::<u64>(), ok);
    assert_eq!(points[0].2, seconds);
    // Aggregated by llmload, not the SDK: the same conventions.
    let (m, resource) =
        last_metric(&rx, "gen_ai.client.operation.time_per_output_chunk").expect("pushed");
    assert_eq!(m.unit, "s");
    assert_eq!(resource["service.name"], "capacity-tests");
    let points = histogram_points(&m);
    for (a, _, bounds) in &points {
        assert_eq!(bounds, &seconds);
        assert_eq!(a["gen_ai.request.model"], "m", "{a:?}");
        assert_eq!(a["gen_ai.operation.name"], "chat", "{a:?}");
        assert!(!a.contains_key("error.type"), "{a:?}");
    }
    let chunks: u64 = points.iter().map(|p| p.1).sum();
    assert_eq!(
        chunks,
        ok * 7,
        "8 tokens a request: 7 chunks after the first"
    );

    // The level gauges: one series per level.
    let (g, _) = last_metric(&rx, "llmload.level.target_qps").expect("pushed");
    let mut targets: Vec<(String, f64)> = gauge_points(&g)
        .into_iter()
        .map(|(a, v)| (a["llmload.level.index"].clone(), v))
        .collect();
    targets.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(targets, [("0".to_string(), 10.0), ("1".to_string(), 20.0)]);
    for name in [
        "llmload.level.achieved_qps",
        "llmload.level.success_rate",
        "llmload.level.ttft.p95",
        "llmload.level.e2e.p95",
    ] {
        let (g, _) = last_metric(&rx, name).unwrap_or_else(|| panic!("{name} not pushed"));
        assert_eq!(gauge_points(&g).len(), 2, "{name}");
    }
    mock.shutdown().await;
}

/// The mock takes OTLP too, and keeps only a byte count: a collector for
/// demos, and the one the selftest's overhead section exports to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_is_an_otlp_sink() {
    let _serial = serial();
    let mock = start_mock(mock_cfg(0.0)).await;
    run_with_traces(&mock, &mock.base_url(), &[]).await;
    let (_, metrics) = get(&format!("{}/metrics", mock.base_url())).await;
    let bytes = |signal: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "llmload_mock_otlp_received_bytes_total{{signal=\"{signal}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    // 30 request spans, two levels and a sweep: well over a kilobyte.
    assert!(bytes("traces") > 1000.0, "{metrics}");
    assert!(bytes("metrics") > 0.0, "{metrics}");
    mock.shutdown().await;
}

/// A collector that takes the connection and never answers: the run
/// still ends, each export giving up at its timeout (4 s for the metrics
/// pushes at exit, 10 s for the request spans), and says the spans were
/// not exported. Nothing waits on it forever. The run outlasts the span
/// sink's 1 s tick, so an export is in flight when the run ends: the exit
/// waits for it, then tries what is left once, and counts every span
/// (about 21 s: two span timeouts). The unit test
/// `a_shutdown_waits_for_the_export_in_flight` holds the waiting itself
/// deterministically; here the end-of-run timing decides which path runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_the_exit_its_timeouts_only() {
    let _serial = serial();
    let mock = start_mock(mock_cfg(0.0)).await;
    // Accepts, reads, never writes; holds every connection open.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = silent.accept().await {
            h.lock().unwrap().push(s);
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(bin())
            .args(base_run(&mock.chat_url(), &dataset))
            .args([
                "--qps",
                "4",
                "--duration",
                "1.5",
                "--results-dir",
                tmp.path().join("r").to_str().unwrap(),
                "--otlp-endpoint",
                &format!("http://127.0.0.1:{port}"),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the run ends although the collector never answers")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("request spans not exported") && stderr.contains("metric export"),
        "both exports gave up and said so: {stderr}"
    );
    // Every span is accounted for, the batch in flight at the end too.
    assert!(
        stderr.contains("6 request spans were dropped"),
        "all 6 spans counted as dropped: {stderr}"
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the exports reached the silent collector"
    );
    // Bounded by the exports' timeouts, not by the collector.
    assert!(started.elapsed() < std::time::Duration::from_secs(45));
    mock.shutdown().await;
}
