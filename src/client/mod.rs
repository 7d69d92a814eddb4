//! The streaming client: one POST in, one [`RequestRecord`] out.
//!
//! hyper 1.x connections from our own single-origin [`pool`] (HTTP/1.1
//! keep-alive, h2 when TLS ALPN offers it), rustls with the system roots.
//! The body is read frame by frame and fed to the pure [`SseDecoder`];
//! every event in a frame shares the frame's arrival instant, read once.
//! Nothing is buffered beyond the decoder's unfinished line.
//!
//! Failures never escape as `Err`: they become an [`ErrorKind`] in the
//! record, because a faulty endpoint is something we measure, not a
//! reason to stop. One failure is ours, not the server's: a request
//! written onto a kept-alive connection the server was already closing.
//! It is sent again, once, on a new connection, and counted as a retry.

pub mod chunk;
pub mod chunk_memo;
#[cfg(test)]
pub mod chunk_reference;
pub mod classify;
pub mod connect;
mod json_scan;
pub mod keepalive;
pub mod pool;
pub mod proxy;
pub mod proxy_connector;
pub mod record;
pub mod saturation;
pub mod sse;
pub mod tls;

pub use classify::classify;

use crate::base::secret::ApiKey;
use crate::client::chunk::Payload;
use crate::client::keepalive::ServerKeepAlive;
use crate::client::record::{ErrorKind, RequestRecord, TimeoutPhase};
use crate::client::sse::{DEFAULT_MAX_EVENT_BYTES, SseDecoder};
use bytes::Bytes;
use connect::{ConnectError, Origin};
use futures_util::future::Either;
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, HeaderName, HeaderValue, PROXY_AUTHORIZATION,
};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::{BodyExt, Full};
use pool::{Lease, Pool, PoolConfig, Sender};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;
use tokio::time::{Instant, timeout_at};

/// Default for `--pool-idle-timeout`: below the 5 s keep-alive timeout
/// of uvicorn (vLLM, SGLang) and cpp-httplib (llama.cpp), so we close an
/// idle connection before they do.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Everything that shapes how requests are sent.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoint: String,
    pub api_key: Option<ApiKey>,
    pub headers: Vec<(String, String)>,
    pub ca_cert: Option<PathBuf>,
    pub insecure: bool,
    pub connect_timeout: Duration,
    /// From send to the first token (headers included).
    pub first_token_timeout: Option<Duration>,
    /// Longest silence allowed between body frames once streaming.
    pub idle_timeout: Option<Duration>,
    /// From send to end of stream.
    pub request_timeout: Duration,
    /// Token-carrying chunks allowed before the stream counts as runaway.
    pub max_token_chunks: u32,
    /// Keep the response id and model (for traces; costs two allocations).
    pub keep_response_ids: bool,
    /// Longest an idle connection is kept for reuse.
    pub pool_idle_timeout: Duration,
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` as read at start (direct
    /// with `--no-proxy`).
    pub proxies: proxy::ProxySettings,
}

impl ClientConfig {
    /// Allow a stream four times the request's `max_tokens` in token
    /// chunks (at least 4,096) before it counts as runaway.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_token_chunks = max_tokens.saturating_mul(4).max(4096);
        self
    }

    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            api_key: None,
            headers: Vec::new(),
            ca_cert: None,
            insecure: false,
            connect_timeout: Duration::from_secs(10),
            first_token_timeout: None,
            idle_timeout: None,
            request_timeout: Duration::from_secs(300),
            max_token_chunks: 1 << 20,
            keep_response_ids: false,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            proxies: proxy::ProxySettings::direct(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ClientBuildError {
    #[error("invalid endpoint URL '{url}': {reason}")]
    Endpoint { url: String, reason: String },
    #[error("invalid header '{0}': expected 'Name: value'")]
    Header(String),
    #[error("cannot read CA certificate {path}: {reason}")]
    CaCert { path: PathBuf, reason: String },
    #[error("the API key contains characters not allowed in an HTTP header")]
    ApiKey,
    #[error("TLS set-up: {0}")]
    Tls(String),
}

/// A pooled client bound to one endpoint.
pub struct LlmClient {
    /// The level's runtime's connections, and the lead thread's
    /// ([`crate::engine::lead`]): a socket is driven on the runtime that
    /// opened it.
    pools: [Pool; 2],
    /// Absolute form, for HTTP/2 (`:scheme` and `:authority`).
    uri: Uri,
    /// Origin form (`/v1/chat/completions`), for HTTP/1.1.
    path: Uri,
    headers: HeaderMap,
    cfg: ClientConfig,
    /// Plain http through a proxy: requests in absolute form, with the
    /// proxy's credentials.
    forward: Option<(proxy::Proxy, Uri)>,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient").field("uri", &self.uri).finish()
    }
}

/// A response on its way: the lease goes back to the pool (or not) once
/// its body has been read.
type Incoming = http::Response<hyper::body::Incoming>;

impl LlmClient {
    /// The pool of the runtime this runs on.
    fn pool(&self) -> &Pool {
        &self.pools[usize::from(crate::engine::lead::on_lead())]
    }

    pub fn new(cfg: ClientConfig) -> Result<Self, ClientBuildError> {
        let bad = |reason: String| ClientBuildError::Endpoint {
            url: cfg.endpoint.clone(),
            reason,
        };
        let uri: Uri = cfg
            .endpoint
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        let origin = Origin::from_uri(&uri).map_err(bad)?;
        let path: Uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        if let Some(key) = &cfg.api_key {
            headers.insert(
                AUTHORIZATION,
                key.bearer_header().map_err(|_| ClientBuildError::ApiKey)?,
            );
        }
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|_| ClientBuildError::Header(format!("{k}: {v}")))?;
            let mut value = HeaderValue::from_str(v.trim())
                .map_err(|_| ClientBuildError::Header(format!("{k}: {v}")))?;
            // Custom auth headers (api-key, x-api-key) are secrets too.
            if is_sensitive_header(name.as_str()) {
                value.set_sensitive(true);
            }
            headers.insert(name, value);
        }
        // Built for http:// too, so a bad --ca-cert is reported at once.
        let tls_cfg = tls::config(cfg.ca_cert.as_deref(), cfg.insecure)?;
        let tls = if origin.https {
            Some(connect::tls_connector(&origin, tls_cfg).map_err(bad)?)
        } else {
            None
        };
        let via = cfg
            .proxies
            .for_target(origin.https, &origin.host, origin.port)
            .cloned();
        let forward = via.clone().filter(|_| !origin.https).map(|p| {
            // The absolute form, without any credentials of the URL.
            let uri = format!(
                "http://{}{}",
                origin.host_header.to_str().unwrap_or_default(),
                path
            )
            .parse()
            .unwrap_or_else(|_| uri.clone());
            (p, uri)
        });
        let pool_cfg = PoolConfig {
            proxy: via,
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.pool_idle_timeout,
            max_idle: pool::MAX_IDLE,
        };
        let pools = [
            Pool::new(origin.clone(), tls.clone(), pool_cfg.clone()),
            Pool::new(origin, tls, pool_cfg),
        ];
        Ok(Self {
            pools,
            uri,
            path,
            headers,
            cfg,
            forward,
        })
    }

    /// The proxy the endpoint is reached through, if any (`host:port`).
    pub fn proxy(&self) -> Option<String> {
        let o = self.pool().origin();
        self.cfg
            .proxies
            .for_target(o.https, &o.host, o.port)
            .map(|p| p.authority())
    }

    /// Open up to `n` connections ahead of the first request (see
    /// [`Pool::prewarm`]); how many opened.
    pub async fn prewarm(&self, n: usize) -> usize {
        self.pool().prewarm(n).await
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// What the user should know about this endpoint's connections
    /// (reuse turned off, TLS failure reasons), each said once.
    pub fn notices(&self) -> Vec<String> {
        let mut n = self.pools[0].notices();
        for more in self.pools[1].notices() {
            if !n.contains(&more) {
                n.push(more);
            }
        }
        n
    }

    /// Requests so far that waited for a connection instead of opening
    /// one (the client was behind, or every connect slot was taken).
    pub fn held_back(&self) -> u64 {
        self.pools.iter().map(Pool::held_back).sum()
    }

    /// Whether kept-alive connections are being reused.
    pub fn reusing_connections(&self) -> bool {
        self.pools.iter().all(Pool::reusing)
    }

    /// Send one request and fill `rec`. `base` is the level start; the
    /// record's `scheduled_at` must already be set. `extra` adds per-request
    /// headers (trace context).
    pub async fn send(
        &self,
        body: Bytes,
        rec: &mut RequestRecord,
        base: Instant,
        extra: Option<(HeaderName, HeaderValue)>,
    ) {
        let sent = Instant::now();
        rec.sent_at = sent - base;
        let outcome = self.exchange(body, extra, rec, base, sent).await;
        if rec.done_at < rec.sent_at {
            rec.done_at = Instant::now() - base;
        }
        rec.outcome = outcome;
    }

    fn request(
        &self,
        lease: &Lease,
        body: Bytes,
        extra: Option<(HeaderName, HeaderValue)>,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.headers_mut() = self.headers.clone();
        if let Some((k, v)) = extra {
            req.headers_mut().insert(k, v);
        }
        if lease.is_h2() {
            *req.uri_mut() = self.uri.clone();
            *req.version_mut() = Version::HTTP_2;
        } else {
            match &self.forward {
                // A forward proxy needs the absolute form (RFC 9112 3.2.2).
                Some((p, absolute)) => {
                    *req.uri_mut() = absolute.clone();
                    if let Some(a) = &p.auth {
                        req.headers_mut().insert(PROXY_AUTHORIZATION, a.clone());
                    }
                }
                None => *req.uri_mut() = self.path.clone(),
            }
            req.headers_mut()
                .entry(HOST)
                .or_insert_with(|| self.pool().origin().host_header.clone());
            if lease.close {
                req.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        req
    }

    /// Headers of the response, on a connection from the pool: retried
    /// once on a new connection when a reused one turns out to be stale.
    async fn response(
        &self,
        body: Bytes,
        extra: Option<(HeaderName, HeaderValue)>,
        rec: &mut RequestRecord,
        first: Instant,
    ) -> Result<(Incoming, Lease), Result<ErrorKind, ()>> {
        let mut fresh = false;
        loop {
            let late = Some(rec.lag()).filter(|l| *l > pool::LATE);
            let mut lease = match timeout_at(first, self.pool().checkout(fresh, late)).await {
                Err(_) => return Err(Err(())),
                Ok(Err(e)) => return Err(Ok(self.connect_failed(e, rec))),
                Ok(Ok(l)) => l,
            };
            if let Some(took) = lease.opened {
                rec.new_connection = true;
                rec.connect = Some(rec.connect.unwrap_or_default() + took);
            }
            rec.pool_wait += lease.waited;
            let req = self.request(&lease, body.clone(), extra.clone());
            let pending = match &mut lease.sender {
                Sender::H1(tx, driver) => Either::Left(driver.drive(tx.send_request(req))),
                Sender::H2(tx, _) => Either::Right(tx.send_request(req)),
            };
            match timeout_at(first, pending).await {
                Err(_) => return Err(Err(())),
                Ok(Ok(resp)) => return Ok((resp, lease)),
                Ok(Err(e)) => {
                    if !fresh && lease.reused() && classify::is_stale_connection(&e) {
                        tracing::debug!(
                            connection = lease.id,
                            served = lease.served,
                            "stale kept-alive connection ({e}); retrying on a new one"
                        );
                        self.pool().stale(&lease);
                        rec.retried_stale = true;
                        fresh = true;
                        continue;
                    }
                    rec.error_detail = Some(e.to_string().into());
                    return Err(Ok(classify(&e)));
                }
            }
        }
    }

    fn connect_failed(&self, e: ConnectError, rec: &mut RequestRecord) -> ErrorKind {
        if e.kind == ErrorKind::Tls {
            self.pool().notice_once(format!(
                "TLS error talking to {}: {}",
                crate::base::redact::redact_url(&self.cfg.endpoint),
                e.detail
            ));
        }
        rec.error_detail = Some(e.detail.into());
        e.kind
    }

    async fn exchange(
        &self,
        body: Bytes,
        extra: Option<(HeaderName, HeaderValue)>,
        rec: &mut RequestRecord,
        base: Instant,
        sent: Instant,
    ) -> Result<(), ErrorKind> {
        let total = sent + self.cfg.request_timeout;
        let first = self
            .cfg
            .first_token_timeout
            .map(|t| (sent + t).min(total))
            .unwrap_or(total);
        let phase_at = |deadline: Instant| {
            if deadline < total {
                TimeoutPhase::FirstToken
            } else {
                TimeoutPhase::Total
            }
        };

        let (resp, mut lease) = match self.response(body, extra, rec, first).await {
            Ok(r) => r,
            Err(Ok(kind)) => return Err(kind),
            Err(Err(())) => return Err(ErrorKind::Timeout(phase_at(first))),
        };
        let status = resp.status().as_u16();
        rec.status = Some(status);
        let keep_alive = ServerKeepAlive::parse(
            resp.headers().get(CONNECTION).map(|v| v.as_bytes()),
            resp.headers().get("keep-alive").map(|v| v.as_bytes()),
            resp.version() == Version::HTTP_10,
        );
        let (parts, mut body) = resp.into_parts();
        if status != 200 {
            // Read (a bounded amount of) the error body so the connection
            // can go back to the pool: 503 storms must not cost a new
            // connection per request.
            let drain_until = (Instant::now() + Duration::from_secs(1)).min(total);
            let mut seen = 0usize;
            let mut ended = false;
            while seen < 64 * 1024 {
                match timeout_at(drain_until, lease.drive(body.frame())).await {
                    Ok(Some(Ok(f))) => seen += f.data_ref().map_or(0, |d| d.len()),
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                    _ => break,
                }
            }
            rec.done_at = Instant::now() - base;
            self.pool().release(lease, ended.then_some(keep_alive));
            return Err(ErrorKind::Http(status));
        }
        if let Some(ct) = parts.headers.get(CONTENT_TYPE) {
            let ct = ct.as_bytes();
            if !ct.starts_with(b"text/event-stream") {
                rec.done_at = Instant::now() - base;
                return Err(ErrorKind::MalformedStream);
            }
        }

        let mut decoder = SseDecoder::new(DEFAULT_MAX_EVENT_BYTES);
        let mut last_frame = sent;
        let mut state = StreamState::default();
        let idle = self.cfg.idle_timeout;
        loop {
            let now = Instant::now();
            let (deadline, phase) = if rec.first_token_at.is_none() {
                let d = idle.map(|i| (now + i).min(first)).unwrap_or(first);
                (
                    d,
                    if d < first {
                        TimeoutPhase::Idle
                    } else {
                        phase_at(first)
                    },
                )
            } else {
                let d = idle.map(|i| (now + i).min(total)).unwrap_or(total);
                (
                    d,
                    if d < total {
                        TimeoutPhase::Idle
                    } else {
                        TimeoutPhase::Total
                    },
                )
            };
            let frame = match timeout_at(deadline, lease.drive(body.frame())).await {
                Err(_) => {
                    rec.done_at = Instant::now() - base;
                    return Err(ErrorKind::Timeout(phase));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    rec.done_at = Instant::now() - base;
                    rec.error_detail = Some(e.to_string().into());
                    return Err(classify(&e));
                }
                Ok(Some(Ok(f))) => f,
            };
            let Some(data) = frame.data_ref() else {
                continue; // trailers
            };
            // Stamped when its bytes reached this host, not when this
            // task got round to reading them; never before the frame
            // before it (that one may have had no stamp, and been dated
            // when read).
            let now = Instant::now();
            last_frame = lease.arrived().map_or(now, |a| a.clamp(last_frame, now));
            let at = last_frame - base;
            let fed = decoder.feed(data, |ev| {
                state.on_event(ev.event, ev.data, at, rec, &self.cfg)
            });
            if fed.is_err() {
                rec.done_at = at;
                return Err(ErrorKind::MalformedStream);
            }
            if let Some(end) = state.end.take() {
                rec.done_at = at;
                return match end {
                    End::Done => {
                        // Read the (normally empty) rest so h1 connections
                        // are reused; bounded so a server that keeps
                        // talking after [DONE] cannot hold us.
                        let until = (Instant::now() + Duration::from_millis(200)).min(total);
                        let ended = loop {
                            match timeout_at(until, lease.drive(body.frame())).await {
                                Ok(Some(Ok(_))) => continue,
                                Ok(None) => break true,
                                _ => break false,
                            }
                        };
                        self.pool().release(lease, ended.then_some(keep_alive));
                        empty_is_an_error(rec)
                    }
                    End::Failed(kind) => Err(kind),
                };
            }
        }
        let at = Instant::now() - base;
        rec.done_at = at;
        // A final event with no blank line after it still counts.
        if decoder
            .finish(|ev| state.on_event(ev.event, ev.data, at, rec, &self.cfg))
            .is_err()
        {
            return Err(ErrorKind::MalformedStream);
        }
        match state.end {
            Some(End::Done) => {
                self.pool().release(lease, Some(keep_alive));
                empty_is_an_error(rec)
            }
            Some(End::Failed(kind)) => Err(kind),
            None => Err(ErrorKind::StreamTruncated),
        }
    }
}

/// A stream that ended properly but carried no generated token (only
/// `[DONE]`, a role chunk, empty deltas or a bare `finish_reason`) is a
/// failure: a user got nothing.
fn empty_is_an_error(rec: &RequestRecord) -> Result<(), ErrorKind> {
    if rec.first_token_at.is_none() {
        Err(ErrorKind::EmptyResponse)
    } else {
        Ok(())
    }
}

enum End {
    Done,
    Failed(ErrorKind),
}

#[derive(Default)]
struct StreamState {
    last_token_at: Option<Duration>,
    end: Option<End>,
    /// The previous chunk, whose envelope (and answer string's
    /// surroundings) the next one skips.
    memo: chunk_memo::Memo,
}

impl StreamState {
    /// Handle one SSE event; returns whether to keep decoding.
    fn on_event(
        &mut self,
        event: &[u8],
        data: &[u8],
        at: Duration,
        rec: &mut RequestRecord,
        cfg: &ClientConfig,
    ) -> bool {
        if event == b"error" {
            self.end = Some(End::Failed(ErrorKind::ServerErrorEvent));
            return false;
        }
        let want_ids = cfg.keep_response_ids && rec.response_id.is_none();
        let want_text = rec.reply.is_some();
        let info = match chunk_memo::parse_memo(data, want_ids, want_text, &mut self.memo) {
            Ok(Payload::Done) => {
                self.end = Some(End::Done);
                return false;
            }
            Ok(Payload::Chunk(c)) => c,
            Err(_) => {
                self.end = Some(End::Failed(ErrorKind::MalformedStream));
                return false;
            }
        };
        if info.error {
            self.end = Some(End::Failed(ErrorKind::ServerErrorEvent));
            return false;
        }
        if cfg.keep_response_ids {
            if rec.response_id.is_none() {
                rec.response_id = info.id.as_deref().map(str::to_owned);
            }
            if rec.response_model.is_none() {
                rec.response_model = info.model.as_deref().map(str::to_owned);
            }
        }
        if info.has_tokens() {
            if rec.first_token_at.is_none() {
                rec.first_token_at = Some(at);
            }
            if info.content && rec.first_content_at.is_none() {
                rec.first_content_at = Some(at);
            }
            if let Some(last) = self.last_token_at {
                rec.itl_us
                    .push(at.saturating_sub(last).as_micros().min(u32::MAX as u128) as u32);
            }
            self.last_token_at = Some(at);
            rec.token_chunks += 1;
            if rec.token_chunks > cfg.max_token_chunks {
                self.end = Some(End::Failed(ErrorKind::StreamTooLong));
                return false;
            }
        }
        if info.finish.is_some() {
            rec.finish = info.finish;
        }
        if info.completion_tokens.is_some() {
            rec.usage_output_tokens = info.completion_tokens;
        }
        if info.prompt_tokens.is_some() {
            rec.usage_input_tokens = info.prompt_tokens;
        }
        if info.cached_tokens.is_some() {
            rec.cached_input_tokens = info.cached_tokens;
        }
        if let (Some(reply), Some(text)) = (rec.reply.as_mut(), info.text.as_deref()) {
            reply.push_str(text);
        }
        true
    }
}

fn is_sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization"
        || n == "proxy-authorization"
        || n.contains("api-key")
        || n.contains("apikey")
        || n.contains("token")
        || n.contains("secret")
        || n == "cookie"
}
