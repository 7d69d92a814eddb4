//! The `chat {model}` CLIENT span of each request, and its GenAI metrics.
//!
//! Request spans are the hot path of tracing: one per request, at the
//! client's full rate. They are not built as SDK spans. When a request
//! ends, its span is written as OTLP protobuf straight from the
//! [`RequestRecord`] ([`super::otlp_encode::span_message`]) and handed to
//! the [`SpanSink`], which exports them in batches. Through the SDK each
//! span cost a vector of ~20 attributes, an event vector, strings, and
//! their frees on the exporter's thread (where they contend for malloc's
//! lock with the workers that made them); here it costs one buffer copy.
//! The sweep and level spans, a handful per run, stay SDK spans; request
//! spans name the level span as parent, so the tree is the same.
//!
//! * **Ids.** A request's span id is drawn when it starts and goes out in
//!   its `traceparent`, sampled or not, so a failure kept from an unsampled
//!   request has the id the server saw.
//! * **Sampling.** A ratio draw by request sequence: sampled requests are
//!   exported; the others only if they fail.

use super::otlp_encode::{Attr, SpanBody, SpanHead, span_attributes, span_message};
use super::otlp_trace::SpanSink;
use crate::client::record::RequestRecord;
use crate::engine::sweep::{LevelSpec, Observer, RequestHook};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The attribute that says whether a request span was sampled (a failure
/// of an unsampled request is exported too, with `false`).
pub const SAMPLED_ATTR: &str = "llmload.sampled";

/// Creates the `chat {model}` CLIENT span of each request, and records
/// its GenAI metrics.
pub struct TraceObserver {
    /// The GenAI metrics of this operation, when they are pushed.
    metrics: Option<super::otlp_metrics::OperationMetrics>,
    /// Converts monotonic instants to wall-clock span timestamps.
    anchor: (Instant, SystemTime),
    sink: Arc<SpanSink>,
    level: Arc<Mutex<Option<opentelemetry::Context>>>,
    name: String,
    /// The attributes every request span of the run shares, encoded once.
    shared_attrs: Vec<u8>,
    sample_ratio: f64,
    propagate: bool,
    /// Per-observer salt for the sampling draw (by request sequence).
    salt: u64,
    /// Span ids: a counter, mixed (distinct counters give distinct ids).
    next_id: AtomicU64,
}

/// A request's span between its start and its end.
#[derive(Clone, Copy)]
struct RequestSpan {
    trace_id: [u8; 16],
    parent_span_id: [u8; 8],
    span_id: [u8; 8],
    sampled: bool,
}

/// SplitMix64: a fast, well-mixed bijection, for the sampling draw and ids.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

thread_local! {
    /// Each worker writes its spans here before one copy into the sink.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What the request observer takes from the tracing pipeline.
pub struct Pipeline<'a> {
    pub sink: Arc<SpanSink>,
    /// The running level's context (the request spans' parent).
    pub level: Arc<Mutex<Option<opentelemetry::Context>>>,
    pub metrics: Option<&'a super::otlp_metrics::OtlpMetrics>,
    pub anchor: (Instant, SystemTime),
    pub sample_ratio: f64,
    pub propagate: bool,
}

impl TraceObserver {
    pub(super) fn new(
        p: Pipeline,
        model: &str,
        uri: &http::Uri,
        max_tokens: u32,
        temperature: f64,
    ) -> Self {
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        // The GenAI operation: chat, or a base model's text completion.
        let path = uri.path();
        let operation = if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
            "text_completion"
        } else {
            "chat"
        };
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            metrics: p.metrics.map(|m| {
                m.operation(vec![
                    KeyValue::new("gen_ai.operation.name", operation),
                    KeyValue::new("gen_ai.provider.name", "openai"),
                    KeyValue::new("gen_ai.request.model", model.to_string()),
                    KeyValue::new("server.address", host.clone()),
                    KeyValue::new("server.port", port as i64),
                ])
            }),
            anchor: p.anchor,
            sink: p.sink,
            level: p.level,
            name: format!("{operation} {model}"),
            shared_attrs: span_attributes(&[
                ("gen_ai.operation.name", Attr::Str(operation)),
                ("gen_ai.provider.name", Attr::Str("openai")),
                ("gen_ai.request.model", Attr::Str(model)),
                ("gen_ai.request.max_tokens", Attr::I64(max_tokens as i64)),
                ("gen_ai.request.temperature", Attr::F64(temperature)),
                ("gen_ai.request.stream", Attr::Bool(true)),
                ("server.address", Attr::Str(&host)),
                ("server.port", Attr::I64(port as i64)),
            ]),
            sample_ratio: p.sample_ratio,
            propagate: p.propagate,
            salt: mix(now),
            next_id: AtomicU64::new(mix(now ^ 0x5EED)),
        }
    }

    fn unix_ns(&self, base: Instant, at: Duration) -> u64 {
        let (i, s) = self.anchor;
        let t = base + at;
        let wall = if t >= i { s + (t - i) } else { s - (i - t) };
        wall.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    /// Writes the finished span into the sink.
    fn export(&self, s: &RequestSpan, base: Instant, rec: &RequestRecord) {
        let head = SpanHead {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            trace_flags: 1,
            name: &self.name,
            kind: SpanKind::Client,
            start_unix_ns: self.unix_ns(base, rec.scheduled_at),
            end_unix_ns: self.unix_ns(base, rec.done_at),
        };
        let finish = rec.finish.map(|f| [f.as_str()]);
        let error = rec.outcome.err().map(|k| (k.otel_type(), k.key()));
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            span_message(buf, &head, |b| {
                self.attributes(b, s, base, rec, finish.as_ref().map(|f| &f[..]));
                if let Some((ty, key)) = &error {
                    b.attr("error.type", Attr::Str(ty));
                    b.error(key);
                }
            });
            self.sink.push(buf);
        });
    }

    fn attributes(
        &self,
        b: &mut SpanBody,
        s: &RequestSpan,
        base: Instant,
        rec: &RequestRecord,
        finish: Option<&[&str]>,
    ) {
        b.attrs_encoded(&self.shared_attrs);
        b.attr("llmload.seq", Attr::I64(rec.seq as i64));
        b.attr(SAMPLED_ATTR, Attr::Bool(s.sampled));
        b.attr(
            "llmload.scheduled_offset_s",
            Attr::F64(rec.scheduled_at.as_secs_f64()),
        );
        b.attr("llmload.send_lag_s", Attr::F64(rec.lag().as_secs_f64()));
        if let Some(code) = rec.status {
            b.attr("http.response.status_code", Attr::I64(code as i64));
        }
        if let Some(id) = &rec.response_id {
            b.attr("gen_ai.response.id", Attr::Str(id));
        }
        if let Some(m) = &rec.response_model {
            b.attr("gen_ai.response.model", Attr::Str(m));
        }
        if let Some(f) = finish {
            b.attr("gen_ai.response.finish_reasons", Attr::StrList(f));
        }
        if let Some(ttft) = rec.ttft() {
            b.attr(
                "gen_ai.response.time_to_first_chunk",
                Attr::F64(ttft.as_secs_f64()),
            );
            b.event(
                "llmload.first_token",
                self.unix_ns(base, rec.first_token_at.unwrap_or(rec.scheduled_at)),
                &[("llmload.ttft_s", Attr::F64(ttft.as_secs_f64()))],
            );
        }
        if let Some(n) = rec.usage_input_tokens {
            b.attr("gen_ai.usage.input_tokens", Attr::I64(n as i64));
        }
        if rec.is_ok() {
            let (n, _) = rec.output_tokens();
            b.attr("gen_ai.usage.output_tokens", Attr::I64(n as i64));
            if let Some(t) = rec.tpot() {
                b.attr("llmload.tpot_s", Attr::F64(t.as_secs_f64()));
            }
        }
        if rec.turn > 0 {
            b.attr("llmload.session.turn", Attr::I64(rec.turn as i64));
        }
        if let Some(c) = rec.cached_input_tokens {
            b.attr("llmload.cached_input_tokens", Attr::I64(c as i64));
        }
    }
}

/// `00-{trace id}-{span id}-{flags}` in lower-case hex, written in place.
fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut v = [0u8; 55];
    v[..3].copy_from_slice(b"00-");
    for (i, byte) in trace_id.iter().chain(span_id).enumerate() {
        // The span id starts after the trace id's 32 digits and a dash.
        let at = 3 + 2 * i + usize::from(i >= 16);
        v[at] = HEX[(byte >> 4) as usize];
        v[at + 1] = HEX[(byte & 15) as usize];
    }
    v[35] = b'-';
    v[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    http::HeaderValue::from_bytes(&v).expect("hex and dashes are a valid header")
}

impl Observer for TraceObserver {
    fn request_start(
        &self,
        _level: &LevelSpec,
        _base: Instant,
        rec: &RequestRecord,
    ) -> Option<RequestHook> {
        let (trace_id, parent_span_id) = {
            let level = self.level.lock().expect("level lock");
            let span = level.as_ref()?.span();
            let sc = span.span_context();
            (sc.trace_id().to_bytes(), sc.span_id().to_bytes())
        };
        let draw = mix(rec.seq ^ self.salt);
        let unit = (draw >> 11) as f64 / ((1u64 << 53) as f64);
        let sampled = unit < self.sample_ratio;
        let id = mix(self.next_id.fetch_add(1, Ordering::Relaxed)).max(1);
        let state = RequestSpan {
            trace_id,
            parent_span_id,
            span_id: id.to_be_bytes(),
            sampled,
        };
        let header = self.propagate.then(|| {
            (
                http::HeaderName::from_static("traceparent"),
                traceparent(&state.trace_id, &state.span_id, sampled),
            )
        });
        Some(RequestHook {
            header,
            state: Box::new(state),
        })
    }

    fn request_done(
        &self,
        _level: &LevelSpec,
        base: Instant,
        rec: &RequestRecord,
        hook: Option<RequestHook>,
    ) {
        if let Some(m) = &self.metrics {
            m.record(rec);
        }
        let Some(hook) = hook else { return };
        let Ok(state) = hook.state.downcast::<RequestSpan>() else {
            return;
        };
        // Failures are always kept, sampled or not.
        if state.sampled || !rec.is_ok() {
            self.export(&state, base, rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_the_w3c_form() {
        let t: [u8; 16] = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736u128.to_be_bytes();
        let s: [u8; 8] = 0x00f0_67aa_0ba9_02b7u64.to_be_bytes();
        assert_eq!(
            traceparent(&t, &s, true),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(
            traceparent(&t, &s, false),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
    }

    #[test]
    fn span_ids_from_a_counter_are_distinct() {
        let mut ids: Vec<u64> = (0..100_000u64).map(|i| mix(i ^ 0xABCD).max(1)).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 100_000);
    }
}
