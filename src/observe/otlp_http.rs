//! The HTTP client of the OTLP exporters (traces and metrics).
//!
//! The SDK exports from its own OS threads (the batch span processor, the
//! periodic metric reader), which have no tokio reactor; our hyper client
//! needs one, so [`OnTokio`] runs each export on the runtime that built it
//! (otherwise the SDK's thread panics, see the notes). The connection
//! honours `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` as the endpoint's does.

use crate::client::proxy::ProxySettings;
use crate::client::proxy_connector::ProxyConnector;
use bytes::Bytes;
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
