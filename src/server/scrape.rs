//! Reading the inference server's own `/metrics` while levels run, so the
//! results can say *why* a level saturated (its queue, its KV cache, its
//! own TTFT). A metrics endpoint that is down, slow or garbage never
//! fails a run: a scrape is bounded in time and size, and a failure is
//! only a note in the level's `server` object.

use crate::client::proxy::ProxySettings;
use crate::client::proxy_connector::ProxyConnector;
use crate::server::metrics::{self, Reading};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Mutex;
use std::time::Duration;

/// Longest a scrape may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest exposition read.
pub const MAX_BODY: usize = 8 << 20;
/// Default time between scrapes within a level.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

type HttpsClient = Client<hyper_rustls::HttpsConnector<ProxyConnector>, Empty<Bytes>>;

pub struct ServerScraper {
    uri: http::Uri,
    client: HttpsClient,
    /// `Proxy-Authorization` for a plain-http scrape through a proxy.
    proxy_auth: Option<http::HeaderValue>,
    /// Keep only this model's series where the server labels them.
    model: Option<String>,
    pub interval: Duration,
    notices: Mutex<Vec<String>>,
}

impl std::fmt::Debug for ServerScraper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerScraper")
            .field("uri", &self.uri)
            .finish()
    }
}

/// `auto`: the endpoint's own origin, `/metrics` (vLLM, SGLang, TGI and
/// llama.cpp's server all serve it next to the API).
pub fn resolve_url(given: &str, endpoint: &str) -> Result<String, String> {
    if given != "auto" {
        return Ok(given.to_string());
    }
    let u: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("cannot derive a metrics URL from '{endpoint}': {e}"))?;
    match (u.scheme_str(), u.authority()) {
        (Some(s), Some(a)) => Ok(format!(
            "{s}://{}/metrics",
            a.as_str().rsplit('@').next().unwrap_or("")
        )),
        _ => Err(format!("cannot derive a metrics URL from '{endpoint}'")),
    }
}

impl ServerScraper {
    /// `proxies`: as the endpoint's (`HTTP_PROXY`, `NO_PROXY`, `--no-proxy`).
    pub fn new(
        url: &str,
        model: Option<String>,
        interval: Duration,
        proxies: &ProxySettings,
    ) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("'{url}': {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!("'{url}' is not an http:// or https:// URL"));
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(SCRAPE_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(ProxyConnector::new(http, proxies.clone(), SCRAPE_TIMEOUT));
        let proxy_auth = ProxyConnector::new(HttpConnector::new(), proxies.clone(), SCRAPE_TIMEOUT)
            .forward_auth(&uri);
        Ok(Self {
            proxy_auth,
            uri,
            client: Client::builder(TokioExecutor::new()).build(https),
            model,
            interval,
            notices: Mutex::new(Vec::new()),
        })
    }

    /// What the user should know, each said once (unrecognised metric
    /// families, a failing endpoint).
    pub fn notices(&self) -> Vec<String> {
        self.notices.lock().expect("notices lock").clone()
    }

    fn notice_once(&self, text: String) {
        let mut n = self.notices.lock().expect("notices lock");
        if !n.contains(&text) {
            tracing::warn!("{text}");
            n.push(text);
        }
    }

    /// One bounded scrape, reduced to a [`Reading`].
    pub async fn scrape(&self) -> Result<Reading, String> {
        let r = tokio::time::timeout(SCRAPE_TIMEOUT, self.fetch()).await;
        let text = match r {
            Err(_) => Err(format!(
                "no answer from {} within {}s",
                crate::base::redact::redact_url(&self.uri.to_string()),
                SCRAPE_TIMEOUT.as_secs()
            )),
            Ok(r) => r,
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                self.notice_once(format!("server metrics: {e}"));
                return Err(e);
            }
        };
        let samples = metrics::parse(&text).map_err(|e| {
            let e = format!(
                "{} is not Prometheus text: {e}",
                crate::base::redact::redact_url(&self.uri.to_string())
            );
            self.notice_once(format!("server metrics: {e}"));
            e
        })?;
        let unknown = metrics::unknown_families(&samples);
        if !unknown.is_empty() {
            self.notice_once(format!(
                "server metrics: families not recognised (ignored): {}",
                unknown.join(", ")
            ));
        }
        let reading = metrics::read(&samples, self.model.as_deref());
        if reading.family.is_none() {
            self.notice_once(format!(
                "server metrics: {} exposes none of the vLLM, SGLang, TGI, llama.cpp or llmload families",
                crate::base::redact::redact_url(&self.uri.to_string())
            ));
        }
        Ok(reading)
    }

    async fn fetch(&self) -> Result<String, String> {
        let mut req = http::Request::get(self.uri.clone())
            .header(http::header::ACCEPT, "text/plain")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        if let Some(a) = &self.proxy_auth {
            req.headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, a.clone());
        }
        let resp = self.client.request(req).await.map_err(|e| {
            format!(
                "cannot reach {}: {}",
                crate::base::redact::redact_url(&self.uri.to_string()),
                crate::client::classify(&e)
            )
        })?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                format!(
                    "reading {}: {e}",
                    crate::base::redact::redact_url(&self.uri.to_string())
                )
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{} answered HTTP {}",
                crate::base::redact::redact_url(&self.uri.to_string()),
                status.as_u16()
            ));
        }
        String::from_utf8(body.to_vec()).map_err(|_| "the metrics are not UTF-8 text".into())
    }
}
