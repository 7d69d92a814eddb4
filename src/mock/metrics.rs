//! The mock's own Prometheus metrics, named after vLLM's under an
//! `llmload_mock_` prefix so dashboards built for one read the other.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct MockMetrics {
    pub registry: Registry,
    pub running: IntGauge,
    pub waiting: IntGauge,
    pub rejected: IntCounter,
    pub requests: IntCounter,
    pub generation_tokens: IntCounter,
    pub prompt_tokens: IntCounter,
    pub faults: IntCounterVec,
    /// With `--prefix-cache`: prompt tokens looked up, and found (vLLM:
    /// `prefix_cache_queries`, `prefix_cache_hits`).
    pub prefix_queries: IntCounter,
    pub prefix_hits: IntCounter,
    /// OTLP/HTTP bodies received and discarded, by signal (`traces`,
    /// `metrics`).
    pub otlp_bytes: IntCounterVec,
}

impl MockMetrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("llmload_mock".into()), None)
            .expect("static prefix is valid");
        let running = IntGauge::new(
            "num_requests_running",
            "Requests holding a decode slot (vLLM: num_requests_running).",
        )
        .expect("valid metric");
        let waiting = IntGauge::new(
            "num_requests_waiting",
            "Requests queued for a decode slot (vLLM: num_requests_waiting).",
        )
        .expect("valid metric");
        let rejected = IntCounter::new(
            "requests_rejected_total",
            "Requests refused because slots and queue were full.",
        )
        .expect("valid metric");
        let requests = IntCounter::new("requests_total", "Completion requests received.")
            .expect("valid metric");
        let generation_tokens = IntCounter::new(
            "generation_tokens_total",
            "Output tokens generated (vLLM: generation_tokens_total).",
        )
        .expect("valid metric");
        let prompt_tokens = IntCounter::new(
            "prompt_tokens_total",
            "Input tokens prefilled, estimated at 4 characters a token.",
        )
        .expect("valid metric");
        let prefix_queries = IntCounter::new(
            "prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache (vLLM: prefix_cache_queries).",
        )
        .expect("valid metric");
        let prefix_hits = IntCounter::new(
            "prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache (vLLM: prefix_cache_hits).",
        )
        .expect("valid metric");
        let faults = IntCounterVec::new(
            Opts::new("faults_injected_total", "Faults injected, by kind."),
            &["kind"],
        )
        .expect("valid metric");
        let otlp_bytes = IntCounterVec::new(
            Opts::new(
                "otlp_received_bytes_total",
                "OTLP/HTTP request bytes received and discarded, by signal.",
            ),
            &["signal"],
        )
        .expect("valid metric");
        for m in [
            Box::new(running.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(waiting.clone()),
            Box::new(rejected.clone()),
            Box::new(requests.clone()),
            Box::new(generation_tokens.clone()),
            Box::new(prompt_tokens.clone()),
            Box::new(faults.clone()),
            Box::new(prefix_queries.clone()),
            Box::new(prefix_hits.clone()),
            Box::new(otlp_bytes.clone()),
        ] {
            registry.register(m).expect("names are unique");
        }
        Self {
            registry,
            running,
            waiting,
            rejected,
            requests,
            generation_tokens,
            prompt_tokens,
            faults,
            prefix_queries,
            prefix_hits,
            otlp_bytes,
        }
    }

    pub fn encode(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for MockMetrics {
    fn default() -> Self {
        Self::new()
    }
}
