//! The span exporter: each batch encoded by [`super::otlp_encode`] (no
//! per-span allocation) and posted by the OTLP HTTP client the metrics
//! exporter shares ([`super::otlp_http`]), with the headers of
//! `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`.

use super::otlp_http::OnTokio;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use opentelemetry_http::HttpClient as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::SpanData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug)]
pub struct TraceExporter {
    client: OnTokio,
    endpoint: http::Uri,
    /// The endpoint for messages, credentials hidden.
    shown: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    resource: Resource,
    stopped: AtomicBool,
}

impl TraceExporter {
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
            resource: Resource::builder_empty().build(),
            stopped: AtomicBool::new(false),
        })
    }
}

impl opentelemetry_sdk::trace::SpanExporter for TraceExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let body = super::otlp_encode::trace_request(&self.resource, &batch);
        drop(batch);
        let mut req = http::Request::post(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Bytes::from(body))
            .map_err(|e| OTelSdkError::InternalFailure(format!("OTLP request: {e}")))?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let resp = self.client.send_bytes(req).await.map_err(|e| {
            OTelSdkError::InternalFailure(format!("OTLP export to {}: {e}", self.shown))
        })?;
        if !resp.status().is_success() {
            return Err(OTelSdkError::InternalFailure(format!(
                "OTLP export to {}: HTTP {}",
                self.shown,
                resp.status()
            )));
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.stopped.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.clone();
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
