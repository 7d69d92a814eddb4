//! The proxy, for the hyper-util clients beside the measured one: the
//! server-metrics scraper and the OTLP exporter. A connector in front of
//! `HttpConnector` (and under `hyper_rustls`): https goes through a
//! `CONNECT` tunnel, plain http to the proxy in absolute form (the
//! connection says it is proxied, and hyper-util then writes the absolute
//! form itself). The caller adds [`ProxyConnector::forward_auth`] to plain
//! http requests when the proxy wants credentials.

use super::connect;
use super::proxy::{ProxySettings, authority};
use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
pub struct ProxyConnector {
    inner: HttpConnector,
    proxies: Arc<ProxySettings>,
    timeout: Duration,
}

impl ProxyConnector {
    /// `inner` connects directly (hosts the settings exempt, or all when
    /// none is configured); `timeout` bounds proxy connect + tunnel.
    pub fn new(inner: HttpConnector, proxies: ProxySettings, timeout: Duration) -> Self {
        Self {
            inner,
            proxies: Arc::new(proxies),
            timeout,
        }
    }

    /// `Proxy-Authorization` for a plain-http request to `uri` that goes
    /// to a proxy with credentials (https ones carry it in `CONNECT`).
    pub fn forward_auth(&self, uri: &Uri) -> Option<HeaderValue> {
        if uri.scheme_str() == Some("https") {
            return None;
        }
        self.proxies.for_uri(uri)?.auth.clone()
    }
}

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = Proxied;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Proxied, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some(p) = self.proxies.for_uri(&dst).cloned() else {
            let direct = self.inner.call(dst);
            return Box::pin(async move {
                Ok(Proxied {
                    io: direct.await?,
                    forward: false,
                })
            });
        };
        let timeout = self.timeout;
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let what = format!("proxy {}: ", p.authority());
            let mut tcp = connect::tcp_connect(&p.host, p.port, deadline, &what)
                .await
                .map_err(|e| e.detail)?;
            let https = dst.scheme_str() == Some("https");
            if https {
                let host = dst.host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let target = authority(host, dst.port_u16().unwrap_or(443));
                connect::tunnel(&mut tcp, &target, &p, deadline)
                    .await
                    .map_err(|e| e.detail)?;
            }
            Ok(Proxied {
                io: TokioIo::new(tcp),
                forward: !https,
            })
        })
    }
}

/// A connection, direct or through the proxy.
pub struct Proxied {
    io: TokioIo<TcpStream>,
    /// Requests on it go to a forward proxy (absolute form).
    forward: bool,
}

impl Connection for Proxied {
    fn connected(&self) -> Connected {
        let c = self.io.connected();
        if self.forward { c.proxy(true) } else { c }
    }
}

impl hyper::rt::Read for Proxied {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Proxied {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
