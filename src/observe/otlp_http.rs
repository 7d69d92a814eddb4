//! The HTTP client of the OTLP exporters (traces and metrics), and
//! [`Poster`], which posts the request bodies our own encoders write.
//!
//! The SDK exports from its own OS threads (the batch span processor, the
//! periodic metric reader), which have no tokio reactor; our hyper client
//! needs one, so [`OnTokio`] runs each export on the runtime that built it
//! (otherwise the SDK's thread panics, see the notes). The connection
//! honours `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` as the endpoint's does.

use crate::client::proxy::ProxySettings;
use crate::client::proxy_connector::ProxyConnector;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use opentelemetry_http::HttpClient as _;
use std::time::Duration;

/// Longest one export request may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

type Hyper = opentelemetry_http::hyper::HyperClient<hyper_rustls::HttpsConnector<ProxyConnector>>;

/// Runs the HTTP client's future on the tokio runtime it was built in,
/// with the proxy's credentials on plain-http exports through a proxy.
#[derive(Debug, Clone)]
pub struct OnTokio {
    inner: Hyper,
    handle: tokio::runtime::Handle,
    /// For each export's `Proxy-Authorization` (plain-http collectors).
    connector: ProxyConnector,
}

/// The exporters' client; must be called inside the tokio runtime.
pub fn client(proxies: &ProxySettings) -> OnTokio {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let connector = ProxyConnector::new(http, proxies.clone(), EXPORT_TIMEOUT);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector.clone());
    OnTokio {
        inner: opentelemetry_http::hyper::HyperClient::new(https, EXPORT_TIMEOUT, None),
        handle: tokio::runtime::Handle::current(),
        connector,
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnTokio {
    async fn send_bytes(
        &self,
        mut req: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        // A plain-http collector behind a proxy with credentials (an
        // https one gets them in CONNECT).
        if let Some(auth) = self.connector.forward_auth(req.uri()) {
            req.headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth);
        }
        let inner = self.inner.clone();
        self.handle
            .spawn(async move { inner.send_bytes(req).await })
            .await
            .map_err(|e| Box::new(e) as opentelemetry_http::HttpError)?
    }
}

/// Which signal a [`Poster`] exports: each has its own headers variable.
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// The signal's own variable; `OTEL_EXPORTER_OTLP_HEADERS` is read
    /// when it is unset, as the SDK's exporters do.
    fn headers_var(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        }
    }
}

/// Posts encoded export requests to the collector.
#[derive(Debug, Clone)]
pub struct Poster {
    client: OnTokio,
    endpoint: http::Uri,
    /// The endpoint for messages, credentials hidden.
    shown: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

impl Poster {
    /// `endpoint` is the signal's full URL (…/v1/traces, …/v1/metrics).
    pub fn new(endpoint: &str, client: OnTokio, signal: Signal) -> Result<Self, String> {
        let shown = crate::base::redact::redact_url(endpoint);
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("OTLP exporter for {shown}: {e}"))?;
        if uri.host().is_none() {
            return Err(format!("OTLP exporter for {shown}: the URL names no host"));
        }
        let headers = std::env::var(signal.headers_var())
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_HEADERS"))
            .map(|v| parse_headers(&v))
            .unwrap_or_default();
        Ok(Self {
            client,
            endpoint: uri,
            shown,
            headers,
            timeout: EXPORT_TIMEOUT,
        })
    }

    /// Give up on an export after `t` (the default is [`EXPORT_TIMEOUT`]).
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub async fn post(&self, body: impl Into<Bytes>) -> Result<(), String> {
        let mut req = http::Request::post(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body.into())
            .map_err(|e| format!("OTLP request: {e}"))?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        // The timer runs on the runtime: the SDK's exporting threads
        // have none.
        let (client, t) = (self.client.clone(), self.timeout);
        let sent = self
            .client
            .handle
            .spawn(async move { tokio::time::timeout(t, client.send_bytes(req)).await })
            .await;
        let resp = match sent {
            Ok(Ok(r)) => r.map_err(|e| format!("OTLP export to {}: {e}", self.shown))?,
            Ok(Err(_)) => {
                return Err(format!(
                    "OTLP export to {}: no answer in {} s",
                    self.shown,
                    t.as_secs_f64()
                ));
            }
            Err(e) => return Err(format!("OTLP export to {}: {e}", self.shown)),
        };
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
