//! The streaming client: one POST in, one [`RequestRecord`] out.
//!
//! hyper 1.x through hyper-util's pooled client (HTTP/1.1 keep-alive, h2
//! when TLS ALPN offers it), rustls with the system roots. The body is
//! read frame by frame and fed to the pure [`SseDecoder`]; every event in
//! a frame shares the frame's arrival instant, read once. Nothing is
//! buffered beyond the decoder's unfinished line.
//!
//! Failures never escape as `Err`: they become an [`ErrorKind`] in the
//! record, because a faulty endpoint is something we measure, not a
//! reason to stop.

use crate::chunk::{self, Payload};
use crate::record::{ErrorKind, RequestRecord, TimeoutPhase};
use crate::secret::ApiKey;
use crate::sse::{DEFAULT_MAX_EVENT_BYTES, SseDecoder};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::error::Error as StdError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::time::{Instant, timeout_at};

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
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled client bound to one endpoint.
pub struct LlmClient {
    http: HttpClient,
    uri: Uri,
    headers: HeaderMap,
    cfg: ClientConfig,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient").field("uri", &self.uri).finish()
    }
}

impl LlmClient {
    pub fn new(cfg: ClientConfig) -> Result<Self, ClientBuildError> {
        let uri: Uri = cfg.endpoint.parse().map_err(|e: http::uri::InvalidUri| {
            ClientBuildError::Endpoint {
                url: cfg.endpoint.clone(),
                reason: e.to_string(),
            }
        })?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(ClientBuildError::Endpoint {
                    url: cfg.endpoint.clone(),
                    reason: "the scheme must be http:// or https://".into(),
                });
            }
        }
        if uri.host().is_none() {
            return Err(ClientBuildError::Endpoint {
                url: cfg.endpoint.clone(),
                reason: "no host".into(),
            });
        }
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

        let tls = tls_config(cfg.ca_cert.as_ref(), cfg.insecure)?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        // Connections left idle by a burst are closed after 30 s, and each
        // reads into a fixed 16 KiB buffer (hyper's adaptive buffer grows
        // to hundreds of KB per connection): memory follows the live
        // concurrency, not the longest burst ever seen.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .http1_read_buf_exact_size(16 * 1024)
            .build(https);
        Ok(Self {
            http: client,
            uri,
            headers,
            cfg,
        })
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
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
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if let Some((k, v)) = extra {
            req.headers_mut().insert(k, v);
        }
        let sent = Instant::now();
        rec.sent_at = sent - base;
        let outcome = self.exchange(req, rec, base, sent).await;
        if rec.done_at < rec.sent_at {
            rec.done_at = Instant::now() - base;
        }
        rec.outcome = outcome;
    }

    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
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

        let resp = match timeout_at(first, self.http.request(req)).await {
            Err(_) => return Err(ErrorKind::Timeout(phase_at(first))),
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        rec.status = Some(status);
        let (parts, mut body) = resp.into_parts();
        if status != 200 {
            // Read (a bounded amount of) the error body so the connection
            // can go back to the pool: 503 storms must not cost a new
            // connection per request.
            let drain_until = (Instant::now() + Duration::from_secs(1)).min(total);
            let mut seen = 0usize;
            while seen < 64 * 1024 {
                match timeout_at(drain_until, body.frame()).await {
                    Ok(Some(Ok(f))) => seen += f.data_ref().map_or(0, |d| d.len()),
                    _ => break,
                }
            }
            rec.done_at = Instant::now() - base;
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
            let frame = match timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    rec.done_at = Instant::now() - base;
                    return Err(ErrorKind::Timeout(phase));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    rec.done_at = Instant::now() - base;
                    return Err(classify(&e));
                }
                Ok(Some(Ok(f))) => f,
            };
            let Some(data) = frame.data_ref() else {
                continue; // trailers
            };
            let at = Instant::now() - base;
            let fed = decoder.feed(data, |ev| {
                state.on_event(ev.event, ev.data, at, rec, &self.cfg)
            });
            if fed.is_err() {
                rec.done_at = at;
                return Err(ErrorKind::MalformedStream);
            }
            if let Some(end) = state.end {
                rec.done_at = at;
                return match end {
                    End::Done => {
                        // Read the (normally empty) rest so h1 connections
                        // are reused; bounded so a server that keeps
                        // talking after [DONE] cannot hold us.
                        let until = (Instant::now() + Duration::from_millis(200)).min(total);
                        while let Ok(Some(Ok(_))) = timeout_at(until, body.frame()).await {}
                        Ok(())
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
            Some(End::Done) => Ok(()),
            Some(End::Failed(kind)) => Err(kind),
            None => Err(ErrorKind::StreamTruncated),
        }
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
        let info = match chunk::parse_with(data, want_ids) {
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
                    .push((at - last).as_micros().min(u32::MAX as u128) as u32);
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

/// Map a hyper / connector / TLS error to our stable kind by walking the
/// cause chain. Only types and fixed library messages are inspected,
/// never text a server sent.
pub fn classify(err: &(dyn StdError + 'static)) -> ErrorKind {
    let mut is_connect = false;
    if let Some(e) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
        is_connect = e.is_connect();
    }
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return ErrorKind::Tls;
        }
        // `io::Error::source` skips the error it wraps (it returns the
        // wrapped error's *source*), so descend through `get_ref` instead:
        // hyper-rustls nests rustls errors two io::Errors deep.
        let mut next = e.source();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::ConnectionRefused => return ErrorKind::ConnectionRefused,
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    return ErrorKind::ConnectionReset;
                }
                K::TimedOut if is_connect => return ErrorKind::Timeout(TimeoutPhase::Connect),
                _ => {}
            }
            if let Some(inner) = io.get_ref() {
                next = Some(inner as &(dyn StdError + 'static));
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            return ErrorKind::ConnectionReset;
        }
        let msg = e.to_string();
        if msg.starts_with("dns error") {
            return ErrorKind::Dns;
        }
        if msg.contains("invalid peer certificate") || msg.contains("tls handshake") {
            return ErrorKind::Tls;
        }
        cur = next;
    }
    if is_connect {
        ErrorKind::ConnectionError
    } else {
        ErrorKind::ConnectionReset
    }
}

fn tls_config(
    ca_cert: Option<&PathBuf>,
    insecure: bool,
) -> Result<rustls::ClientConfig, ClientBuildError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        // No system store (minimal containers): fall back to Mozilla's.
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_cert {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ClientBuildError::CaCert {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(ClientBuildError::CaCert {
                path: path.clone(),
                reason: "no PEM certificate found".into(),
            });
        }
        for c in certs {
            roots.add(c).map_err(|e| ClientBuildError::CaCert {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    // ALPN (h2, http/1.1) is set by the hyper-rustls builder.
    let cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(cfg)
}

/// `--insecure`: accept any certificate (signatures still checked so the
/// handshake is well-formed). Loudly warned about at the CLI.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
