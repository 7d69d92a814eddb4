//! Trace export: the SDK's spans (sweep, level) through [`TraceExporter`],
//! and request spans, written as protobuf when each request ends, through
//! [`SpanSink`]. Both are encoded by [`super::otlp_encode`] (no per-span
//! allocation) and posted by the OTLP HTTP client the metrics exporter
//! shares ([`super::otlp_http`]), with the headers of
//! `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`.

use super::otlp_encode::Envelope;
use super::otlp_http::OnTokio;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use opentelemetry_http::HttpClient as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::SpanData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Posts encoded export requests to the collector.
#[derive(Debug, Clone)]
pub struct Poster {
    client: OnTokio,
    endpoint: http::Uri,
    /// The endpoint for messages, credentials hidden.
    shown: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Poster {
    /// `endpoint` is the full traces URL (…/v1/traces).
    pub fn new(endpoint: &str, client: OnTokio) -> Result<Self, String> {
        let shown = crate::base::redact::redact_url(endpoint);
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("OTLP exporter for {shown}: {e}"))?;
        if uri.host().is_none() {
            return Err(format!("OTLP exporter for {shown}: the URL names no host"));
        }
        let headers = std::env::var("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_HEADERS"))
            .map(|v| parse_headers(&v))
            .unwrap_or_default();
        Ok(Self {
            client,
            endpoint: uri,
            shown,
            headers,
        })
    }

    pub async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let mut req = http::Request::post(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Bytes::from(body))
            .map_err(|e| format!("OTLP request: {e}"))?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let resp = self
            .client
            .send_bytes(req)
            .await
            .map_err(|e| format!("OTLP export to {}: {e}", self.shown))?;
        if !resp.status().is_success() {
            return Err(format!(
                "OTLP export to {}: HTTP {}",
                self.shown,
                resp.status()
            ));
        }
        Ok(())
    }
}

/// The SDK's span exporter (sweep and level spans).
#[derive(Debug)]
pub struct TraceExporter {
    poster: Poster,
    resource: Resource,
    stopped: AtomicBool,
}

impl TraceExporter {
    pub fn new(poster: Poster) -> Self {
        Self {
            poster,
            resource: Resource::builder_empty().build(),
            stopped: AtomicBool::new(false),
        }
    }
}

impl opentelemetry_sdk::trace::SpanExporter for TraceExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let body = super::otlp_encode::trace_request(&self.resource, &batch);
        drop(batch);
        self.poster
            .post(body)
            .await
            .map_err(OTelSdkError::InternalFailure)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.stopped.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.clone();
    }
}

/// Request spans, already encoded (see [`super::request_spans`]), waiting
/// for their export: a batch goes when it holds [`BATCH`] spans or every
/// [`INTERVAL`], whichever comes first. At most [`MAX_PENDING`] wait; more
/// are dropped and counted, so a dead collector costs bounded memory.
pub struct SpanSink {
    pending: Mutex<Pending>,
    /// Wakes the shipper when a batch is full, or to stop.
    wake: Arc<Notify>,
    stop: AtomicBool,
    envelope: Envelope,
    poster: Poster,
    dropped: AtomicU64,
    /// The last export failed (one warning per run of failures).
    failing: AtomicBool,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    spans: usize,
}

pub const BATCH: usize = 2048;
pub const MAX_PENDING: usize = 65_536;
pub const INTERVAL: Duration = Duration::from_secs(1);

impl SpanSink {
    /// Starts its shipper task; inside the tokio runtime.
    pub fn start(poster: Poster, envelope: Envelope) -> Arc<Self> {
        let sink = Arc::new(Self {
            pending: Mutex::default(),
            wake: Arc::new(Notify::new()),
            stop: AtomicBool::new(false),
            envelope,
            poster,
            dropped: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&sink);
        let wake = sink.wake.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(INTERVAL) => {}
                    _ = wake.notified() => {}
                }
                // Dropped without a shutdown: nothing is left to send to.
                let Some(sink) = weak.upgrade() else { return };
                if sink.stop.load(Ordering::Relaxed) {
                    return;
                }
                sink.ship().await;
            }
        });
        sink
    }

    /// One encoded span (a `ScopeSpans.spans` field).
    pub fn push(&self, span: &[u8]) {
        let mut p = self.pending.lock().expect("span sink lock");
        if p.spans >= MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        p.bytes.extend_from_slice(span);
        p.spans += 1;
        if p.spans == BATCH {
            drop(p);
            self.wake.notify_one();
        }
    }

    /// Exports what is waiting now. A failure is logged when it starts a
    /// run of failures; the spans of a failed export are lost, as with the
    /// SDK's batch processor.
    pub async fn ship(&self) {
        let bytes = {
            let mut p = self.pending.lock().expect("span sink lock");
            if p.spans == 0 {
                return;
            }
            p.spans = 0;
            std::mem::take(&mut p.bytes)
        };
        match self.poster.post(self.envelope.request(&bytes)).await {
            Ok(()) => self.failing.store(false, Ordering::Relaxed),
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!("request spans not exported: {e}");
                }
            }
        }
    }

    /// Exports what is waiting and stops the shipper.
    pub async fn shutdown(&self) {
        self.ship().await;
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                "{dropped} request spans were dropped: more than {MAX_PENDING} waited for a slow collector"
            );
        }
    }
}

/// `key=value,key2=value2` as the OTLP exporter variables give headers:
/// both sides trimmed, the value percent-decoded; an entry that is not a
/// valid header is left out (as the SDK's exporters do).
pub fn parse_headers(s: &str) -> Vec<(HeaderName, HeaderValue)> {
    s.split(',')
        .filter_map(|item| {
            let (k, v) = item.split_once('=')?;
            let name = HeaderName::from_bytes(k.trim().as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(&percent_decode(v.trim())).ok()?;
            Some((name, value))
        })
        .collect()
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_trimmed_decoded_and_invalid_ones_left_out() {
        let h = parse_headers(
            " authorization = Bearer%20abc%3D ,X-Scope-OrgID=capacity,broken,bad name=x,k=%zz%4",
        );
        let got: Vec<(String, Vec<u8>)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("authorization".into(), b"Bearer abc=".to_vec()),
                ("x-scope-orgid".into(), b"capacity".to_vec()),
                ("k".into(), b"%zz%4".to_vec()),
            ]
        );
    }
}
