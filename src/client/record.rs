//! `RequestRecord`: the one row every later stage consumes.
//!
//! All instants are offsets from the start of the level on the monotonic
//! clock. Latencies count from `scheduled_at`, the instant the open-loop
//! schedule planned, not from when the client got around to sending: if
//! the client or its pool lags, users see it as latency and as
//! `schedule_lag`, never as a quietly lower load.

use crate::client::chunk::FinishReason;
use std::fmt;
use std::time::Duration;

/// Which deadline fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeoutPhase {
    /// TCP/TLS connect took longer than the connect timeout.
    Connect,
    /// Headers or the first token did not arrive in time.
    FirstToken,
    /// The stream went silent for longer than the idle timeout.
    Idle,
    /// The whole request exceeded the request timeout.
    Total,
}

/// Why a request failed. `key()` is the stable string users see in the
/// seed's `errors` map and in the console; `kind()` is the bounded label
/// used for metrics and traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    Http(u16),
    Timeout(TimeoutPhase),
    ConnectionRefused,
    ConnectionReset,
    /// Any other failure to connect (unreachable, no route…).
    ConnectionError,
    Dns,
    Tls,
    /// The body ended without `data: [DONE]`.
    StreamTruncated,
    /// Not SSE, not JSON, or an oversized line.
    MalformedStream,
    /// The server sent an `error` object inside the stream.
    ServerErrorEvent,
    /// More token chunks than `max_tokens` allows: a stream that never ends.
    StreamTooLong,
    /// Never sent: `--max-in-flight` requests were already open.
    Dropped,
    /// Still open when the run was stopped (Ctrl-C, daemon stop).
    Cancelled,
    /// A 200 stream that ended without a single generated token.
    EmptyResponse,
    /// A request task or observer panicked: our bug, counted, never lost.
    Internal,
}

impl ErrorKind {
    /// Stable error key (the seed's `"HTTP 503"` form).
    pub fn key(self) -> String {
        let fixed = match self {
            Self::Http(code) => return format!("HTTP {code}"),
            Self::Timeout(TimeoutPhase::Connect) => "timeout (connect)",
            Self::Timeout(TimeoutPhase::FirstToken) => "timeout (first token)",
            Self::Timeout(TimeoutPhase::Idle) => "timeout (idle)",
            Self::Timeout(TimeoutPhase::Total) => "timeout (total)",
            Self::ConnectionRefused => "connection refused",
            Self::ConnectionReset => "connection reset",
            Self::ConnectionError => "connection error",
            Self::Dns => "DNS error",
            Self::Tls => "TLS error",
            Self::StreamTruncated => "stream truncated",
            Self::MalformedStream => "malformed stream",
            Self::ServerErrorEvent => "server error event",
            Self::StreamTooLong => "stream too long",
            Self::Dropped => "dropped (max in-flight)",
            Self::Cancelled => "cancelled",
            Self::EmptyResponse => "empty response",
            Self::Internal => "internal error",
        };
        fixed.to_string()
    }

    /// Bounded label for metrics and span attributes.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Http(_) => "http",
            Self::Timeout(TimeoutPhase::Connect) => "timeout_connect",
            Self::Timeout(TimeoutPhase::FirstToken) => "timeout_first_token",
            Self::Timeout(TimeoutPhase::Idle) => "timeout_idle",
            Self::Timeout(TimeoutPhase::Total) => "timeout_total",
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectionReset => "connection_reset",
            Self::ConnectionError => "connection_error",
            Self::Dns => "dns_error",
            Self::Tls => "tls_error",
            Self::StreamTruncated => "stream_truncated",
            Self::MalformedStream => "malformed_stream",
            Self::ServerErrorEvent => "server_error_event",
            Self::StreamTooLong => "stream_too_long",
            Self::Dropped => "dropped",
            Self::Cancelled => "cancelled",
            Self::EmptyResponse => "empty_response",
            Self::Internal => "internal_error",
        }
    }

    /// `error.type` for traces: the HTTP code itself for HTTP errors (as
    /// the OTel HTTP conventions do), our kind otherwise.
    pub fn otel_type(self) -> String {
        match self {
            Self::Http(code) => code.to_string(),
            other => other.kind().to_string(),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// Where `output_tokens` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The server's `usage.completion_tokens`: exact.
    Usage,
    /// Counted token-carrying chunks: an estimate (servers may put several
    /// tokens in one chunk).
    Chunks,
}

/// One request's life. See the module docs for the time base.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// Index within the level's schedule.
    pub seq: u64,
    pub scheduled_at: Duration,
    /// When the request was handed to the connection pool.
    pub sent_at: Duration,
    /// First chunk carrying generated text (content, reasoning or tool call).
    pub first_token_at: Option<Duration>,
    /// First chunk carrying answer content (after any reasoning).
    pub first_content_at: Option<Duration>,
    pub done_at: Duration,
    /// Gaps between consecutive token-carrying chunks, microseconds.
    pub itl_us: Vec<u32>,
    pub token_chunks: u32,
    pub usage_output_tokens: Option<u32>,
    pub usage_input_tokens: Option<u32>,
    /// Prompt tokens counted with the run's tokenizer (none without one).
    pub client_input_tokens: Option<u32>,
    /// Prompt tokens the server said it served from its prefix cache.
    pub cached_input_tokens: Option<u32>,
    /// The answer text streamed. `Some` before the send asks the client
    /// to keep it (a session sends it back as history); `None` costs
    /// nothing.
    pub reply: Option<String>,
    /// A session's turn, 1-based; 0 for a request outside any session.
    pub turn: u32,
    /// Characters of prompt text sent (the estimate where no count is).
    pub prompt_chars: u32,
    pub finish: Option<FinishReason>,
    pub status: Option<u16>,
    /// Only filled when a sink asked for them (tracing): they allocate.
    pub response_id: Option<String>,
    pub response_model: Option<String>,
    pub outcome: Result<(), ErrorKind>,
    /// This request opened a new connection (first try or retry).
    pub new_connection: bool,
    /// DNS + TCP + TLS time this request spent opening connections.
    pub connect: Option<Duration>,
    /// Time waiting for a connection another request was opening.
    pub pool_wait: Duration,
    /// Sent again on a new connection after a kept-alive one turned out
    /// to be closed by the server.
    pub retried_stale: bool,
    /// What the socket or TLS library said about a failure (the key stays
    /// the stable [`ErrorKind`]); for the log and `requests.jsonl`.
    pub error_detail: Option<std::sync::Arc<str>>,
    /// Requests open (this one included) when the pacer sent it: the
    /// backlog the stability check follows.
    pub in_flight_at_send: u32,
    /// Under `--max-concurrency`: how long the request waited for a slot
    /// after its planned instant (`None` without a cap).
    pub client_queue: Option<Duration>,
}

impl RequestRecord {
    pub fn new(seq: u64, scheduled_at: Duration, sent_at: Duration) -> Self {
        Self {
            seq,
            scheduled_at,
            sent_at,
            first_token_at: None,
            first_content_at: None,
            done_at: sent_at,
            itl_us: Vec::new(),
            token_chunks: 0,
            usage_output_tokens: None,
            usage_input_tokens: None,
            client_input_tokens: None,
            cached_input_tokens: None,
            reply: None,
            turn: 0,
            prompt_chars: 0,
            finish: None,
            status: None,
            response_id: None,
            response_model: None,
            outcome: Ok(()),
            new_connection: false,
            connect: None,
            pool_wait: Duration::ZERO,
            retried_stale: false,
            error_detail: None,
            in_flight_at_send: 0,
            client_queue: None,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok()
    }

    /// How late the client was: `sent_at - scheduled_at`, less any wait
    /// for a `--max-concurrency` slot (a queue the user asked for is not
    /// the client falling behind).
    pub fn lag(&self) -> Duration {
        self.sent_at
            .saturating_sub(self.scheduled_at)
            .saturating_sub(self.client_queue.unwrap_or_default())
    }

    pub fn ttft(&self) -> Option<Duration> {
        self.first_token_at
            .map(|t| t.saturating_sub(self.scheduled_at))
    }

    pub fn ttfc(&self) -> Option<Duration> {
        self.first_content_at
            .map(|t| t.saturating_sub(self.scheduled_at))
    }

    /// Time spent inside the client before the request could go out:
    /// opening a connection, or waiting for one.
    pub fn client_setup(&self) -> Duration {
        self.connect.unwrap_or_default() + self.pool_wait
    }

    pub fn e2e(&self) -> Duration {
        self.done_at.saturating_sub(self.scheduled_at)
    }

    /// Prompt tokens: the server's count, else the tokenizer's, else the
    /// 4-characters estimate of the text sent.
    pub fn prompt_tokens(&self) -> u32 {
        self.usage_input_tokens
            .or(self.client_input_tokens)
            .unwrap_or_else(|| {
                crate::workload::synthetic::estimate_tokens(self.prompt_chars as usize)
            })
    }

    /// Output tokens and where the number came from.
    pub fn output_tokens(&self) -> (u32, TokenSource) {
        match self.usage_output_tokens {
            Some(n) => (n, TokenSource::Usage),
            None => (self.token_chunks, TokenSource::Chunks),
        }
    }

    /// Time per output token after the first: `(E2E − TTFT) / (tokens − 1)`.
    pub fn tpot(&self) -> Option<Duration> {
        let (tokens, _) = self.output_tokens();
        let ttft = self.ttft()?;
        (tokens > 1).then(|| (self.e2e().saturating_sub(ttft)) / (tokens - 1))
    }

    /// The seed's tokens/sec: output tokens ÷ E2E.
    pub fn tokens_per_sec(&self) -> Option<f64> {
        let (tokens, _) = self.output_tokens();
        let e2e = self.e2e().as_secs_f64();
        (e2e > 0.0).then(|| tokens as f64 / e2e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable() {
        let cases = [
            (ErrorKind::Http(503), "HTTP 503", "http"),
            (
                ErrorKind::Timeout(TimeoutPhase::Connect),
                "timeout (connect)",
                "timeout_connect",
            ),
            (
                ErrorKind::Timeout(TimeoutPhase::FirstToken),
                "timeout (first token)",
                "timeout_first_token",
            ),
            (
                ErrorKind::Timeout(TimeoutPhase::Idle),
                "timeout (idle)",
                "timeout_idle",
            ),
            (
                ErrorKind::Timeout(TimeoutPhase::Total),
                "timeout (total)",
                "timeout_total",
            ),
            (
                ErrorKind::ConnectionRefused,
                "connection refused",
                "connection_refused",
            ),
            (
                ErrorKind::ConnectionReset,
                "connection reset",
                "connection_reset",
            ),
            (ErrorKind::Dns, "DNS error", "dns_error"),
            (ErrorKind::Tls, "TLS error", "tls_error"),
            (
                ErrorKind::StreamTruncated,
                "stream truncated",
                "stream_truncated",
            ),
            (
                ErrorKind::MalformedStream,
                "malformed stream",
                "malformed_stream",
            ),
            (
                ErrorKind::ServerErrorEvent,
                "server error event",
                "server_error_event",
            ),
            (
                ErrorKind::StreamTooLong,
                "stream too long",
                "stream_too_long",
            ),
            (ErrorKind::Dropped, "dropped (max in-flight)", "dropped"),
            (ErrorKind::Cancelled, "cancelled", "cancelled"),
            (ErrorKind::EmptyResponse, "empty response", "empty_response"),
            (ErrorKind::Internal, "internal error", "internal_error"),
        ];
        for (k, key, kind) in cases {
            assert_eq!(k.key(), key);
            assert_eq!(k.kind(), kind);
        }
        assert_eq!(ErrorKind::Http(429).otel_type(), "429");
    }

    #[test]
    fn derived_times() {
        let ms = Duration::from_millis;
        let mut r = RequestRecord::new(0, ms(100), ms(101));
        r.first_token_at = Some(ms(150));
        r.done_at = ms(1100);
        r.token_chunks = 11;
        assert_eq!(r.lag(), ms(1));
        assert_eq!(r.ttft(), Some(ms(50)));
        assert_eq!(r.e2e(), ms(1000));
        assert_eq!(r.tpot(), Some(ms(95)));
        assert_eq!(r.output_tokens(), (11, TokenSource::Chunks));
        r.usage_output_tokens = Some(21);
        assert_eq!(r.output_tokens(), (21, TokenSource::Usage));
        assert_eq!(r.tpot(), Some(Duration::from_micros(47_500)));
        assert!((r.tokens_per_sec().unwrap() - 21.0).abs() < 1e-9);
    }
}
