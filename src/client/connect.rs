//! Opening one connection to the endpoint: DNS, TCP, TLS (with ALPN),
//! timed, with failures sorted into the kinds users see.

use crate::base::arrival::{Arrivals, StampedTcp};
use crate::client::record::{ErrorKind, TimeoutPhase};
use http::HeaderValue;
use rustls::pki_types::ServerName;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Where every request of a client goes: one scheme, host and port.
#[derive(Debug, Clone)]
pub struct Origin {
    pub https: bool,
    /// Host name or IP literal, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// The `Host` header for HTTP/1.1.
    pub host_header: HeaderValue,
}

impl Origin {
    pub fn from_uri(uri: &http::Uri) -> Result<Self, String> {
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("the scheme must be http:// or https://".into()),
        };
        let host = uri.host().ok_or("no host")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().ok_or("no host")?.as_str();
        // Credentials in the URL never go into the Host header.
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let host_header = HeaderValue::from_str(authority).map_err(|e| e.to_string())?;
        Ok(Self {
            https,
            host,
            port,
            host_header,
        })
    }
}

/// A plain or TLS socket, one type for hyper.
/// Its reads keep the kernel's receive stamps ([`crate::base::arrival`]).
pub enum Stream {
    Plain(StampedTcp),
    Tls(Box<tokio_rustls::client::TlsStream<StampedTcp>>),
}

impl Stream {
    /// The receive stamps of this stream's reads (under TLS, of the TCP
    /// reads that carried the records).
    pub fn arrivals(&self) -> Arrivals {
        match self {
            Stream::Plain(s) => s.arrivals(),
            Stream::Tls(s) => s.get_ref().0.arrivals(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, b),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A new connection and what it took to open it.
pub struct Opened {
    pub stream: Stream,
    /// ALPN chose HTTP/2.
    pub h2: bool,
    /// DNS + TCP + TLS.
    pub took: Duration,
}

/// Why a connection could not be opened.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub kind: ErrorKind,
    /// What the resolver, socket or TLS library said, for the log and
    /// `requests.jsonl` (never text the server sent).
    pub detail: String,
}

impl ConnectError {
    fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// Resolve, connect (trying each address, all within `timeout`) and, for
/// https, complete the TLS handshake (also within `timeout`). Through
/// `proxy`: the TCP connection goes to the proxy; for https a `CONNECT`
/// tunnel to the origin is opened on it first (TLS then runs end to end,
/// inside the tunnel); for http the requests go to the proxy in absolute
/// form (see [`super::LlmClient`]).
pub async fn open(
    origin: &Origin,
    tls: Option<&(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    proxy: Option<&super::proxy::Proxy>,
) -> Result<Opened, ConnectError> {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let mut tcp = match proxy {
        None => tcp_connect(&origin.host, origin.port, deadline, "").await?,
        Some(p) => {
            tcp_connect(
                &p.host,
                p.port,
                deadline,
                &format!("proxy {}: ", p.authority()),
            )
            .await?
        }
    };
    let _ = tcp.set_nodelay(true);
    let Some((connector, name)) = tls else {
        return Ok(Opened {
            stream: Stream::Plain(StampedTcp::new(tcp)),
            h2: false,
            took: t0.elapsed(),
        });
    };
    if let Some(p) = proxy {
        let target = super::proxy::authority(&origin.host, origin.port);
        tunnel(&mut tcp, &target, p, deadline).await?;
    }
    let tcp = StampedTcp::new(tcp);
    match tokio::time::timeout_at(deadline, connector.connect(name.clone(), tcp)).await {
        Err(_) => Err(connect_timed_out()),
        Ok(Err(e)) => Err(tls_error(&e)),
        Ok(Ok(s)) => {
            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok(Opened {
                stream: Stream::Tls(Box::new(s)),
                h2,
                took: t0.elapsed(),
            })
        }
    }
}

fn connect_timed_out() -> ConnectError {
    ConnectError::new(
        ErrorKind::Timeout(TimeoutPhase::Connect),
        "connect timed out",
    )
}

/// Resolve `host` and connect to the first address that answers, by
/// `deadline`. `what` prefixes the error detail (`proxy h:p: `).
pub async fn tcp_connect(
    host: &str,
    port: u16,
    deadline: Instant,
    what: &str,
) -> Result<TcpStream, ConnectError> {
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
            Err(_) => return Err(connect_timed_out()),
            Ok(Err(e)) => {
                return Err(ConnectError::new(
                    ErrorKind::Dns,
                    format!("{what}dns error: {e}"),
                ));
            }
            Ok(Ok(a)) => a.collect(),
        };
    if addrs.is_empty() {
        return Err(ConnectError::new(
            ErrorKind::Dns,
            format!("{what}dns error: no addresses"),
        ));
    }
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(connect_timed_out()),
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = Some(e),
        }
    }
    let e = last.expect("at least one address was tried");
    let kind = match e.kind() {
        io::ErrorKind::ConnectionRefused => ErrorKind::ConnectionRefused,
        io::ErrorKind::TimedOut => ErrorKind::Timeout(TimeoutPhase::Connect),
        _ => ErrorKind::ConnectionError,
    };
    Err(ConnectError::new(
        kind,
        format!("{what}tcp connect error: {e}"),
    ))
}

/// Open a `CONNECT` tunnel to `target` through the proxy on `tcp`. The
/// answer is read to its blank line and no further: what follows belongs
/// to the tunnel (the origin's TLS handshake).
pub async fn tunnel(
    tcp: &mut TcpStream,
    target: &str,
    proxy: &super::proxy::Proxy,
    deadline: Instant,
) -> Result<(), ConnectError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let who = proxy.authority();
    let io_err = |e: io::Error| {
        ConnectError::new(
            ErrorKind::ConnectionError,
            format!("proxy {who}: CONNECT {target}: {e}"),
        )
    };
    let handshake = async {
        tcp.write_all(&super::proxy::connect_request(target, proxy.auth.as_ref()))
            .await
            .map_err(io_err)?;
        let mut head = Vec::with_capacity(128);
        let mut byte = [0u8; 1];
        // Byte by byte: a few dozen bytes, once per connection.
        while super::proxy::head_end(&head).is_none() {
            if head.len() > 16 * 1024 {
                return Err(io_err(io::Error::other("answer too long")));
            }
            match tcp.read(&mut byte).await.map_err(io_err)? {
                0 => return Err(io_err(io::Error::other("closed before answering"))),
                _ => head.push(byte[0]),
            }
        }
        super::proxy::connect_response(&head).map_err(|status| {
            ConnectError::new(
                ErrorKind::ConnectionError,
                format!("proxy {who} refused the tunnel to {target}: {status}"),
            )
        })
    };
    match tokio::time::timeout_at(deadline, handshake).await {
        Err(_) => Err(connect_timed_out()),
        Ok(r) => r,
    }
}

/// A handshake failure: `TLS error` with rustls' own reason (a bad
/// certificate, a protocol mismatch), or a reset during the handshake.
fn tls_error(e: &io::Error) -> ConnectError {
    if let Some(inner) = e.get_ref()
        && let Some(r) = inner.downcast_ref::<rustls::Error>()
    {
        return ConnectError::new(ErrorKind::Tls, format!("TLS handshake: {}", explain(r)));
    }
    match e.kind() {
        io::ErrorKind::InvalidData => {
            ConnectError::new(ErrorKind::Tls, format!("TLS handshake: {e}"))
        }
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe => ConnectError::new(
            ErrorKind::ConnectionReset,
            format!("the server closed the connection during the TLS handshake ({e})"),
        ),
        _ => ConnectError::new(ErrorKind::Tls, format!("TLS handshake: {e}")),
    }
}

/// rustls' reason, with what to do about the common ones.
fn explain(r: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let hint = match r {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "the server's certificate is not signed by an authority we trust: \
             pass its CA certificate with --ca-cert"
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate has expired"
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => "the server's certificate does not name this host",
        rustls::Error::InvalidCertificate(C::Other(_))
            if format!("{r:?}").contains("CaUsedAsEndEntity") =>
        {
            "the server's certificate is a CA certificate (basicConstraints CA:TRUE, as \
             `openssl req -x509` makes by default): pass this very certificate with \
             --ca-cert to trust it"
        }
        _ => return r.to_string(),
    };
    format!("{hint} ({r})")
}

/// The rustls connector and the name to verify, for https origins.
pub fn tls_connector(
    origin: &Origin,
    cfg: rustls::ClientConfig,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), String> {
    let name = ServerName::try_from(origin.host.clone()).map_err(|e| e.to_string())?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
}
