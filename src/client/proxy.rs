//! Which proxy, if any, a URL goes through: `HTTPS_PROXY`, `HTTP_PROXY`
//! and `NO_PROXY` (and their lower-case forms), read as curl reads them,
//! and the bytes of a `CONNECT` handshake.
//!
//! Pure: the environment comes in as a function, the handshake's bytes as
//! slices; opening sockets is [`super::connect`]'s job.
//!
//! * `HTTPS_PROXY` for `https://` URLs, `HTTP_PROXY` for `http://` ones
//!   (lower case first when both are set, as curl does);
//! * the proxy's URL is `http://[user:password@]host[:port]` (port 1080 by
//!   default, as curl); the credentials become a `Proxy-Authorization:
//!   Basic` header, marked sensitive, and are never printed;
//! * `NO_PROXY`: comma-separated host names (a name also matches its
//!   subdomains; a leading `.` or `*.` is allowed), IP addresses, CIDR
//!   blocks, each optionally with `:port`, or `*` for everything. Loopback
//!   is *not* exempt by default (unlike Go's), so a proxy in front of a
//!   local server works; list `localhost,127.0.0.1` to skip it.

use base64::Engine;
use http::HeaderValue;
use std::net::IpAddr;

/// One proxy server.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Host name or IP literal, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// `Basic …`, from the URL's user and password; sensitive.
    pub auth: Option<HeaderValue>,
}

/// Never the credentials.
impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Proxy({}{})",
            self.authority(),
            if self.auth.is_some() { ", auth" } else { "" }
        )
    }
}

impl Proxy {
    /// `http://[user:password@]host[:port][/]`; a bare `host:port` is read
    /// as http, as curl does. `var` names the variable in errors.
    pub fn parse(var: &str, url: &str) -> Result<Self, String> {
        let url = url.trim();
        // The value may hold a password: an error shows everything before
        // its last `@` as `***`, whatever the rest looks like.
        let shown = match url.rfind('@') {
            Some(at) => match url.split_once("://") {
                Some((scheme, _)) if scheme.len() < at => {
                    format!("{scheme}://***@{}", &url[at + 1..])
                }
                _ => format!("***@{}", &url[at + 1..]),
            },
            None => url.to_string(),
        };
        let bad = |why: &str| format!("{var}={shown}: {why}");
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => {
                return Err(bad(
                    "an https:// proxy (TLS to the proxy) is not supported; use http://",
                ));
            }
            Some((s, _)) => return Err(bad(&format!("'{s}://' proxies are not supported"))),
            None => url,
        };
        // The credentials end at the last `@` (a password may hold `/`);
        // the host and port, at the first `/` after it.
        let (userinfo, after) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let hostport = after.split('/').next().unwrap_or("");
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("no host"))?;
        let port = match port {
            None => 1080,
            Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
        };
        let auth = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                let creds = format!("{}:{}", percent_decode(user), percent_decode(pass));
                let token = base64::engine::general_purpose::STANDARD.encode(creds);
                let mut v = HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| bad("the credentials are not valid in a header"))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(Self {
            host: host.to_string(),
            port,
            auth,
        })
    }

    /// `host:port` (IPv6 in brackets): where to connect, and what the
    /// metadata records. Never the credentials.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// `host:port`, IPv6 literals in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':');
        return (!host.is_empty()).then_some((host, port));
    }
    let (host, port) = match s.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((h, _)) if h.contains(':') => (s, None),
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    (!host.is_empty()).then_some((host, port))
}

/// `%40` and friends in a proxy URL's user and password.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One `NO_PROXY` entry.
#[derive(Debug, Clone, PartialEq)]
enum Bypass {
    All,
    /// A name and its subdomains.
    Name(String, Option<u16>),
    Ip(IpAddr, Option<u16>),
    Cidr(IpAddr, u8),
}

/// The proxies the environment names, and the hosts that skip them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxySettings {
    http: Option<Proxy>,
    https: Option<Proxy>,
    bypass: Vec<Bypass>,
}

impl ProxySettings {
    /// No proxy for anything (`--no-proxy`, or none configured).
    pub fn direct() -> Self {
        Self::default()
    }

    /// From `HTTPS_PROXY`/`https_proxy`, `HTTP_PROXY`/`http_proxy` and
    /// `NO_PROXY`/`no_proxy`. Errors name the variable (with any password
    /// redacted).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let pick = |names: [&str; 2]| -> Result<Option<Proxy>, String> {
            for n in names {
                if let Some(v) = env(n).filter(|v| !v.trim().is_empty()) {
                    return Proxy::parse(n, &v).map(Some);
                }
            }
            Ok(None)
        };
        let https = pick(["https_proxy", "HTTPS_PROXY"])?;
        let http = pick(["http_proxy", "HTTP_PROXY"])?;
        let no = env("no_proxy")
            .filter(|v| !v.trim().is_empty())
            .or_else(|| env("NO_PROXY"))
            .unwrap_or_default();
        Ok(Self {
            http,
            https,
            bypass: no.split(',').filter_map(parse_bypass).collect(),
        })
    }

    /// Whether any proxy is configured.
    pub fn any(&self) -> bool {
        self.http.is_some() || self.https.is_some()
    }

    /// The proxy for a URL with this scheme, host and port, or `None` to
    /// connect directly.
    pub fn for_target(&self, https: bool, host: &str, port: u16) -> Option<&Proxy> {
        let proxy = if https { &self.https } else { &self.http }.as_ref()?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: Option<IpAddr> = host.parse().ok();
        let host_l = host.to_ascii_lowercase();
        let skip = self.bypass.iter().any(|b| match b {
            Bypass::All => true,
            Bypass::Name(n, p) => {
                p.is_none_or(|p| p == port) && (host_l == *n || host_l.ends_with(&format!(".{n}")))
            }
            Bypass::Ip(a, p) => p.is_none_or(|p| p == port) && ip == Some(*a),
            Bypass::Cidr(net, bits) => ip.is_some_and(|a| in_cidr(a, *net, *bits)),
        });
        (!skip).then_some(proxy)
    }

    /// The proxy for `uri` (see [`Self::for_target`]).
    pub fn for_uri(&self, uri: &http::Uri) -> Option<&Proxy> {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host()?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        self.for_target(https, host, port)
    }
}

fn parse_bypass(entry: &str) -> Option<Bypass> {
    let e = entry.trim();
    if e.is_empty() {
        return None;
    }
    if e == "*" {
        return Some(Bypass::All);
    }
    if let Some((net, bits)) = e.split_once('/')
        && let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u8>())
    {
        return Some(Bypass::Cidr(net, bits));
    }
    let (host, port) = split_host_port(e)?;
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Bypass::Ip(ip, port));
    }
    let name = host
        .trim_start_matches("*.")
        .trim_start_matches('.')
        .to_ascii_lowercase();
    Some(Bypass::Name(name, port))
}

fn in_cidr(a: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The `CONNECT` request that opens a tunnel to `target` (`host:port`).
pub fn connect_request(target: &str, auth: Option<&HeaderValue>) -> Vec<u8> {
    let mut out = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    if let Some(a) = auth {
        out.extend_from_slice(b"Proxy-Authorization: ");
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The end of the proxy's answer to `CONNECT` (its blank line), if `buf`
/// holds it.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// The proxy's answer to `CONNECT`: `Ok` for 2xx (the tunnel is open),
/// else the status line, e.g. `407 Proxy Authentication Required`.
pub fn connect_response(head: &[u8]) -> Result<(), String> {
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .unwrap_or_default();
    let mut parts = line.splitn(2, ' ');
    let version = parts.next().unwrap_or("");
    let rest = parts.next().unwrap_or("").trim();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP answer to CONNECT: '{line}'"));
    }
    match rest.get(..3).and_then(|c| c.parse::<u16>().ok()) {
        Some(c) if (200..300).contains(&c) => Ok(()),
        Some(_) => Err(rest.to_string()),
        None => Err(format!("not an HTTP answer to CONNECT: '{line}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn proxy_urls_parse_and_never_show_their_password() {
        let p = Proxy::parse("HTTPS_PROXY", "http://al%40ice:pa%3Ass@proxy.corp:3128/").unwrap();
        assert_eq!(p.authority(), "proxy.corp:3128");
        let token = base64::engine::general_purpose::STANDARD.encode("al@ice:pa:ss");
        assert_eq!(
            p.auth.as_ref().unwrap().to_str().unwrap(),
            format!("Basic {token}")
        );
        assert!(p.auth.as_ref().unwrap().is_sensitive());
        assert_eq!(format!("{p:?}"), "Proxy(proxy.corp:3128, auth)");
        assert_eq!(Proxy::parse("X", "proxy:8080").unwrap().port, 8080);
        assert_eq!(Proxy::parse("X", "http://proxy").unwrap().port, 1080);
        assert_eq!(
            Proxy::parse("X", "http://[::1]:9").unwrap().authority(),
            "[::1]:9"
        );
        let e = Proxy::parse("HTTPS_PROXY", "socks5://u:secret@h:1").unwrap_err();
        assert!(
            e.starts_with("HTTPS_PROXY=") && !e.contains("secret"),
            "{e}"
        );
        let e = Proxy::parse("HTTP_PROXY", "http://u:secret@h:port").unwrap_err();
        assert!(
            e.contains("the port is not a number") && !e.contains("secret"),
            "{e}"
        );
        // No scheme, or a `/` in the password: still redacted, still parsed.
        let e = Proxy::parse("HTTPS_PROXY", "u:secret@proxy:x").unwrap_err();
        assert!(
            e.starts_with("HTTPS_PROXY=***@proxy:x") && !e.contains("secret"),
            "{e}"
        );
        let p = Proxy::parse("X", "http://u:pa/ss@proxy:3128").unwrap();
        assert_eq!(p.authority(), "proxy:3128");
        let token = base64::engine::general_purpose::STANDARD.encode("u:pa/ss");
        assert_eq!(p.auth.unwrap().to_str().unwrap(), format!("Basic {token}"));
    }

    #[test]
    fn the_scheme_picks_the_proxy_lower_case_first() {
        let s = ProxySettings::from_env(&env(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:2"),
            ("HTTP_PROXY", "http://plain:3"),
        ]))
        .unwrap();
        assert_eq!(s.for_target(true, "api.x", 443).unwrap().host, "lower");
        assert_eq!(s.for_target(false, "api.x", 80).unwrap().host, "plain");
        let only_https = ProxySettings::from_env(&env(&[("HTTPS_PROXY", "http://p:1")])).unwrap();
        assert!(only_https.for_target(false, "api.x", 80).is_none());
        assert!(!ProxySettings::from_env(&env(&[])).unwrap().any());
    }

    #[test]
    fn no_proxy_matches_names_subdomains_ips_cidrs_and_ports() {
        let s = ProxySettings::from_env(&env(&[
            ("HTTP_PROXY", "http://p:1"),
            (
                "NO_PROXY",
                " .internal, example.com ,10.0.0.0/8, 127.0.0.1:9000, ::1, *.svc",
            ),
        ]))
        .unwrap();
        let direct = |h: &str, port: u16| s.for_target(false, h, port).is_none();
        assert!(direct("a.b.internal", 80));
        assert!(direct("internal", 80));
        assert!(direct("EXAMPLE.com", 80));
        assert!(direct("api.example.com", 80));
        assert!(!direct("notexample.com", 80), "a suffix is not a subdomain");
        assert!(direct("10.1.2.3", 80));
        assert!(!direct("11.1.2.3", 80));
        assert!(direct("127.0.0.1", 9000));
        assert!(!direct("127.0.0.1", 9001), "the entry names a port");
        assert!(direct("[::1]", 80));
        assert!(direct("vllm.default.svc", 80));
        assert!(!direct("localhost", 80), "loopback is not exempt by itself");
        let all =
            ProxySettings::from_env(&env(&[("HTTP_PROXY", "p:1"), ("no_proxy", "*")])).unwrap();
        assert!(all.for_target(false, "anything", 80).is_none());
    }

    #[test]
    fn connect_handshake_bytes() {
        let p = Proxy::parse("X", "http://u:p@h:1").unwrap();
        let req = String::from_utf8(connect_request("api:443", p.auth.as_ref())).unwrap();
        assert!(req.starts_with(
            "CONNECT api:443 HTTP/1.1\r\nHost: api:443\r\nProxy-Authorization: Basic "
        ));
        assert!(req.ends_with("\r\n\r\n"));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\nrest"), Some(19));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n"), None);
        assert!(connect_response(b"HTTP/1.1 200 Connection established\r\n\r\n").is_ok());
        assert_eq!(
            connect_response(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n").unwrap_err(),
            "407 Proxy Authentication Required"
        );
        assert!(
            connect_response(b"SSH-2.0\r\n\r\n")
                .unwrap_err()
                .contains("not an HTTP")
        );
    }
}
