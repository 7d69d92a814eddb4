//! What is observed live while a run goes on: Prometheus metrics,
//! OpenTelemetry traces, the shipped alert rules and the optional
//! per-request log. Each is an observer plugged into the sweep.

pub mod alerts;
pub mod chunk_gaps;
pub mod config_metrics;
pub mod metrics;
pub mod otlp_encode;
pub mod otlp_http;
pub mod otlp_metrics;
pub mod otlp_trace;
pub mod protobuf;
pub mod request_spans;
pub mod requests_jsonl;
pub mod session_metrics;
pub mod telemetry;
