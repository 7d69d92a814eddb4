//! The mock's HTTP face: routes, admission, and an accept loop that can be
//! embedded in tests and in `llmload run --endpoint mock`.

use super::capacity::estimate_tokens;
use super::faults::{self, FaultKind};
use super::generate::{self, Api, Job, Occupancy};
use super::prefix_cache::{BlockHasher, fnv1a};
use super::state::MockState;
use super::truth::Truth;
use super::{MockConfig, OutputTokens};
use crate::base::clock::mono_ns;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use rand::RngExt;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The router, for embedding or `oneshot` tests.
pub fn app(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "OK" }))
        .route("/metrics", get(metrics))
        .route("/debug/requests", get(debug_requests))
        .route(
            "/v1/traces",
            post(otlp_traces).layer(axum::extract::DefaultBodyLimit::max(OTLP_BODY_LIMIT)),
        )
        .route(
            "/v1/metrics",
            post(otlp_metrics).layer(axum::extract::DefaultBodyLimit::max(OTLP_BODY_LIMIT)),
        )
        .with_state(state)
}

/// The largest OTLP body taken (the OpenTelemetry Collector's default
/// is 20 MiB).
const OTLP_BODY_LIMIT: usize = 20 << 20;

/// An OTLP/HTTP sink that keeps nothing but a byte count: a collector for
/// demos and for the selftest's tracing overhead, in a process of its own
/// so that receiving the spans is not counted against the client.
async fn otlp_traces(State(st): State<Arc<MockState>>, body: axum::body::Bytes) -> Response {
    otlp_discard(&st, "traces", &body)
}

async fn otlp_metrics(State(st): State<Arc<MockState>>, body: axum::body::Bytes) -> Response {
    otlp_discard(&st, "metrics", &body)
}

fn otlp_discard(st: &MockState, signal: &str, body: &[u8]) -> Response {
    st.metrics
        .otlp_bytes
        .with_label_values(&[signal])
        .inc_by(body.len() as u64);
    // An empty Export*ServiceResponse: full success.
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::<u8>::new(),
    )
        .into_response()
}

/// A running mock: its address and a way to stop it.
pub struct MockServer {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Bind `listen` (port 0 for any free port) and serve in the background.
    pub async fn start(cfg: MockConfig, listen: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = MockState::new(cfg);
        let token = CancellationToken::new();
        let task = tokio::spawn(crate::base::serve::serve(
            listener,
            app(state.clone()),
            token.clone(),
        ));
        Ok(Self {
            addr,
            state,
            token,
            task,
        })
    }

    /// `http://127.0.0.1:PORT/v1/chat/completions`.
    pub fn chat_url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1/completions`.
    pub fn completions_url(&self) -> String {
        format!("http://{}/v1/completions", self.addr)
    }

    /// The endpoint URL for requests of `api`.
    pub fn url_for(&self, api: crate::workload::Api) -> String {
        match api {
            crate::workload::Api::Chat => self.chat_url(),
            crate::workload::Api::Completions => self.completions_url(),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting, close idle connections, and wait for the loop.
    pub async fn shutdown(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

#[derive(Deserialize)]
struct RequestIn {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Vec<MessageIn>,
    #[serde(default)]
    prompt: Option<serde_json::Value>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptionsIn>,
    /// vLLM's and llama.cpp's extension: never stop at end-of-sequence,
    /// so the output runs to `max_tokens`.
    #[serde(default)]
    ignore_eos: bool,
    /// vLLM's extension: no end-of-sequence before this many tokens.
    #[serde(default)]
    min_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct MessageIn {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: Option<serde_json::Value>,
}

/// A message's text: a string, or the text of its content parts.
fn text_of(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => out.push_str(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| text_of(x, out)),
        serde_json::Value::Object(o) => {
            if let Some(t) = o.get("text") {
                text_of(t, out)
            }
        }
        _ => {}
    }
}

#[derive(Deserialize)]
struct StreamOptionsIn {
    #[serde(default)]
    include_usage: bool,
}

/// Characters of text in a string, an array of strings, or content parts.
fn text_chars(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::String(s) => s.chars().count(),
        serde_json::Value::Array(a) => a.iter().map(text_chars).sum(),
        serde_json::Value::Object(o) => o.get("text").map(text_chars).unwrap_or(0),
        _ => 0,
    }
}

type Arrival = Option<axum::Extension<crate::base::serve::Arrived>>;

async fn chat(
    State(st): State<Arc<MockState>>,
    arrived: Arrival,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    complete(st, Api::Chat, received(arrived), headers, body).await
}

async fn completions(
    State(st): State<Arc<MockState>>,
    arrived: Arrival,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    complete(st, Api::Completions, received(arrived), headers, body).await
}

/// When the request reached this host (`mono_ns`): the kernel's stamp
/// where there is one, so that the mock's log (its truth) leaves out its
/// own wake-up, as the wire would; else now.
fn received(arrived: Arrival) -> u64 {
    let now = mono_ns();
    arrived.map_or(now, |a| {
        now.saturating_sub(a.0.0.elapsed().as_nanos() as u64)
    })
}

fn openai_error(status: StatusCode, message: &str, kind: &str) -> Response {
    let body = serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": status.as_u16()}
    });
    (status, axum::Json(body)).into_response()
}

async fn complete(
    st: Arc<MockState>,
    api: Api,
    received_ns: u64,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    st.metrics.requests.inc();
    let req: RequestIn = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                &format!("invalid request body: {e}"),
                "invalid_request_error",
            );
        }
    };
    let seq = st.seq.fetch_add(1, Ordering::Relaxed);
    let mut rng = generate::request_rng(st.cfg.seed, seq);
    let fault = faults::pick(&st.cfg.faults, rng.random::<f64>());
    if let Some(f) = fault {
        st.metrics.faults.with_label_values(&[f.name()]).inc();
    }
    let chars = match api {
        Api::Chat => req
            .messages
            .iter()
            .filter_map(|m| m.content.as_ref())
            .map(text_chars)
            .sum(),
        Api::Completions => req.prompt.as_ref().map(text_chars).unwrap_or(0),
    };
    let input_tokens = estimate_tokens(chars);
    // The prompt as the prefix cache keys it, and the answers it carries.
    let mut assistant_hashes = Vec::new();
    let mut blocks = st.prefix.as_ref().map(|_| BlockHasher::new());
    let mut text = String::new();
    match api {
        Api::Chat => {
            for m in &req.messages {
                text.clear();
                if let Some(c) = &m.content {
                    text_of(c, &mut text);
                }
                let role = m.role.as_deref().unwrap_or("user");
                if role == "assistant" {
                    assistant_hashes.push(fnv1a(text.as_bytes()));
                }
                if let Some(b) = &mut blocks {
                    b.message(role, &text);
                }
            }
        }
        Api::Completions => {
            if let (Some(b), Some(p)) = (&mut blocks, &req.prompt) {
                text_of(p, &mut text);
                b.feed(text.as_bytes());
            }
        }
    }
    let mut truth = Truth {
        seq,
        received_ns,
        first_token_ns: 0,
        last_byte_ns: 0,
        input_tokens,
        output_tokens: 0,
        status: 200,
        fault: fault.map(FaultKind::name),
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        cached_tokens: None,
        assistant_hashes,
        reply_hash: 0,
    };

    let quick_status = match fault {
        Some(FaultKind::Http500) => Some(StatusCode::INTERNAL_SERVER_ERROR),
        Some(FaultKind::Http503) => Some(StatusCode::SERVICE_UNAVAILABLE),
        Some(FaultKind::Http429) => Some(StatusCode::TOO_MANY_REQUESTS),
        _ => None,
    };
    if let Some(status) = quick_status {
        truth.status = status.as_u16();
        truth.last_byte_ns = mono_ns();
        st.truth.push(truth);
        return reject(&st, status, "mock fault injected");
    }

    let Some(occupancy) = Occupancy::admit(&st) else {
        st.metrics.rejected.inc();
        let status =
            StatusCode::from_u16(st.cfg.reject_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        truth.status = status.as_u16();
        truth.last_byte_ns = mono_ns();
        st.truth.push(truth);
        return reject(&st, status, "server at capacity: slots and queue are full");
    };
    st.metrics.prompt_tokens.inc_by(input_tokens as u64);

    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(st.cfg.default_max_tokens)
        .max(1);
    let drawn = match st.cfg.output_tokens {
        None => max_tokens,
        Some(OutputTokens::Cap(n)) => n,
        Some(OutputTokens::Range(a, b)) => rng.random_range(a..=b),
    };
    // The drawn length stands for where the model would emit EOS.
    let output_tokens = if req.ignore_eos {
        max_tokens
    } else {
        drawn
            .max(req.min_tokens.unwrap_or(0))
            .min(max_tokens)
            .max(1)
    };
    let model = req.model.unwrap_or_else(|| st.cfg.model_name.clone());
    let job = Job {
        seq,
        api,
        model_json: serde_json::to_string(&model).expect("strings serialize"),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        input_tokens,
        output_tokens,
        hit_max_tokens: output_tokens == max_tokens,
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        fault,
        rng,
        truth,
        cache: blocks.map(|b| generate::JobCache {
            prompt_blocks: b.blocks.len(),
            blocks: b,
        }),
        cached_tokens: 0,
        reply_hash: 0xcbf2_9ce4_8422_2325,
    };

    if fault == Some(FaultKind::SlowFirstByte) {
        tokio::time::sleep(st.cfg.stall_for).await;
    }
    if req.stream {
        let mut resp = Response::new(Body::from_stream(generate::sse(st, job, occupancy)));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    } else {
        let fault = job.fault;
        let body = generate::non_streaming(st, job, occupancy).await;
        match fault {
            Some(FaultKind::Reset) => {
                let s = futures_util::stream::iter([
                    Ok(body.slice(..body.len() / 2)),
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "mock fault: reset",
                    )),
                ]);
                Response::new(Body::from_stream(s))
            }
            Some(FaultKind::Truncate) | Some(FaultKind::Malformed) => (
                [(header::CONTENT_TYPE, "application/json")],
                body.slice(..body.len() / 2),
            )
                .into_response(),
            _ => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        }
    }
}

fn reject(st: &MockState, status: StatusCode, message: &str) -> Response {
    let mut resp = openai_error(status, message, "server_error");
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(st.cfg.retry_after_s));
    }
    resp
}

async fn models(State(st): State<Arc<MockState>>) -> Response {
    axum::Json(serde_json::json!({
        "object": "list",
        "data": [{"id": st.cfg.model_name, "object": "model", "created": 0, "owned_by": "llmload"}]
    }))
    .into_response()
}

async fn metrics(State(st): State<Arc<MockState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.encode(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct DebugQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    clear: bool,
}

async fn debug_requests(State(st): State<Arc<MockState>>, Query(q): Query<DebugQuery>) -> Response {
    axum::Json(st.truth.snapshot(q.since, q.clear)).into_response()
}
