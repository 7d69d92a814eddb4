//! Connection reuse rules, kept pure so they can be tested without sockets.
//!
//! Servers close kept-alive connections on their own schedule: after an
//! idle timeout (uvicorn's 5 s, gateways' idle timers), after a number of
//! requests, or, like llama.cpp's server, right after every streamed
//! response without saying `Connection: close`. A request written onto a
//! connection the server is already closing dies with a reset that says
//! nothing about the server's capacity. These rules keep the client from
//! doing that:
//!
//! * [`ServerKeepAlive`] reads what a response says about its connection
//!   (`Connection: close`, `Keep-Alive: timeout=N, max=M`);
//! * [`idle_limit`] is how long an idle connection may be kept: below our
//!   own pool timeout and safely below the server's advertised one;
//! * [`CloseDetector`] notices a server that closes after every response,
//!   so the client stops reusing connections to it altogether.

use std::time::Duration;

/// What one response said about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerKeepAlive {
    /// `Connection: close` (or an HTTP/1.0 response without keep-alive).
    pub close: bool,
    /// `Keep-Alive: timeout=N`: the server closes after N idle seconds.
    pub timeout: Option<Duration>,
    /// `Keep-Alive: max=M`: requests still allowed on this connection.
    pub max: Option<u32>,
}

impl ServerKeepAlive {
    /// Read the `Connection` and `Keep-Alive` header values. Unknown
    /// parameters and malformed numbers are ignored (the connection is
    /// then treated as an ordinary keep-alive one).
    pub fn parse(connection: Option<&[u8]>, keep_alive: Option<&[u8]>, http10: bool) -> Self {
        let has_token = |v: &[u8], tok: &str| {
            std::str::from_utf8(v)
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(tok)))
                .unwrap_or(false)
        };
        let close = match connection {
            Some(v) if has_token(v, "close") => true,
            Some(v) if http10 => !has_token(v, "keep-alive"),
            None => http10,
            Some(_) => false,
        };
        let mut out = Self {
            close,
            ..Self::default()
        };
        let Some(text) = keep_alive.and_then(|v| std::str::from_utf8(v).ok()) else {
            return out;
        };
        for param in text.split(',') {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "timeout" => {
                    if let Ok(s) = v.parse::<u64>() {
                        out.timeout = Some(Duration::from_secs(s));
                    }
                }
                "max" => {
                    if let Ok(m) = v.parse::<u32>() {
                        out.max = Some(m);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Whether the connection may carry another request at all.
    pub fn reusable(&self) -> bool {
        !self.close && self.max != Some(0) && self.timeout != Some(Duration::ZERO)
    }
}

/// How long a connection may sit idle in our pool: our own limit, or the
/// server's advertised timeout less a margin (a fifth of it, at least
/// 100 ms), whichever is shorter. Closing early costs a handshake;
/// closing late costs a false error.
pub fn idle_limit(ours: Duration, server: Option<Duration>) -> Duration {
    match server {
        None => ours,
        Some(t) => {
            let margin = (t / 5).max(Duration::from_millis(100));
            ours.min(t.saturating_sub(margin))
        }
    }
}

/// Connections in a row that the server ended after one response before
/// we stop reusing connections to it.
pub const CLOSE_STREAK: u32 = 8;

/// Notices a server that closes every connection after its first
/// response. Each connection that ends is reported once with the number
/// of responses it carried and whether the server (not we) ended it; a
/// connection that carried a second response resets the streak.
#[derive(Debug, Clone, Default)]
pub struct CloseDetector {
    streak: u32,
    tripped: bool,
}

impl CloseDetector {
    /// A connection served its second (or later) response: reuse works.
    pub fn reused_ok(&mut self) {
        self.streak = 0;
    }

    /// The server ended a connection after `served` responses. Returns
    /// `true` exactly once: when the streak first reaches [`CLOSE_STREAK`].
    pub fn server_closed(&mut self, served: u32) -> bool {
        if served > 1 {
            self.streak = 0;
            return false;
        }
        if served == 1 {
            self.streak += 1;
        }
        if !self.tripped && self.streak >= CLOSE_STREAK {
            self.tripped = true;
            return true;
        }
        false
    }

    pub fn tripped(&self) -> bool {
        self.tripped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(c: Option<&str>, k: Option<&str>, h10: bool) -> ServerKeepAlive {
        ServerKeepAlive::parse(c.map(str::as_bytes), k.map(str::as_bytes), h10)
    }

    #[test]
    fn headers_are_read_as_servers_send_them() {
        assert_eq!(p(None, None, false), ServerKeepAlive::default());
        assert!(p(Some("close"), None, false).close);
        assert!(p(Some("Keep-Alive, Close"), None, false).close);
        assert!(!p(Some("keep-alive"), None, false).close);
        assert!(p(None, None, true).close, "HTTP/1.0 closes by default");
        assert!(!p(Some("keep-alive"), None, true).close);
        let k = p(None, Some("timeout=5, max=100"), false);
        assert_eq!(k.timeout, Some(Duration::from_secs(5)));
        assert_eq!(k.max, Some(100));
        assert!(k.reusable());
        let k = p(None, Some(" Max=0 ,TIMEOUT=\"2\", foo"), false);
        assert_eq!(k.max, Some(0));
        assert_eq!(k.timeout, Some(Duration::from_secs(2)));
        assert!(!k.reusable());
        let k = p(None, Some("timeout=soon, max=-1"), false);
        assert_eq!(k, ServerKeepAlive::default());
        assert!(!p(None, Some("timeout=0"), false).reusable());
    }

    #[test]
    fn idle_limit_stays_below_the_servers_timeout() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(idle_limit(s(4), None), s(4));
        assert_eq!(idle_limit(s(4), Some(s(5))), s(4));
        assert_eq!(idle_limit(s(30), Some(s(5))), s(4));
        assert_eq!(idle_limit(s(4), Some(s(1))), ms(800));
        assert_eq!(idle_limit(s(4), Some(ms(300))), ms(200));
        assert_eq!(idle_limit(s(4), Some(ms(50))), Duration::ZERO);
    }

    #[test]
    fn detector_trips_once_on_a_streak_of_single_use_connections() {
        let mut d = CloseDetector::default();
        for _ in 0..CLOSE_STREAK - 1 {
            assert!(!d.server_closed(1));
        }
        d.reused_ok();
        for _ in 0..CLOSE_STREAK - 1 {
            assert!(!d.server_closed(1));
        }
        assert!(
            !d.server_closed(5),
            "a long-lived connection breaks the streak"
        );
        for _ in 0..CLOSE_STREAK - 1 {
            assert!(!d.server_closed(1));
        }
        assert!(!d.tripped());
        assert!(d.server_closed(1));
        assert!(d.tripped());
        assert!(!d.server_closed(1), "reported once");
        assert!(!d.server_closed(0), "never-used connections do not count");
    }
}
