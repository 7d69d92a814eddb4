//! Trace export: the SDK's spans (sweep, level) through [`TraceExporter`],
//! and request spans, written as protobuf when each request ends, through
//! [`SpanSink`]. Both are encoded by [`super::otlp_encode`] (no per-span
//! allocation) and posted by the OTLP HTTP client the metrics exporter
//! shares ([`super::otlp_http`]), with the headers of
//! `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`.

use super::otlp_encode::Envelope;
use super::otlp_http::Poster;
use bytes::Bytes;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::SpanData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// The SDK's span exporter (sweep and level spans).
#[derive(Debug)]
pub struct TraceExporter {
    poster: Poster,
    resource: Resource,
    stopped: AtomicBool,
}

impl TraceExporter {
    pub fn new(poster: Poster) -> Self {
        Self {
            poster,
            resource: Resource::builder_empty().build(),
            stopped: AtomicBool::new(false),
        }
    }
}

impl opentelemetry_sdk::trace::SpanExporter for TraceExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let body = super::otlp_encode::trace_request(&self.resource, &batch);
        drop(batch);
        self.poster
            .post(body)
            .await
            .map_err(OTelSdkError::InternalFailure)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.stopped.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.clone();
    }
}

/// Request spans, already encoded (see [`super::request_spans`]), waiting
/// for their export: a batch goes when it holds [`BATCH`] spans or every
/// [`INTERVAL`], whichever comes first. At most [`MAX_PENDING`] wait; more
/// are dropped and counted, so a dead collector costs bounded memory.
pub struct SpanSink {
    pending: Mutex<Pending>,
    /// Wakes the shipper when a batch is full, or to stop.
    wake: Arc<Notify>,
    stop: AtomicBool,
    envelope: Envelope,
    /// The bytes kept free before each batch's spans for the envelope's
    /// head ([`Envelope::headroom`]).
    room: usize,
    /// Batch buffers back from their export, for the next batches.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    poster: Poster,
    /// Held while batches are taken and posted. A shutdown waits on it,
    /// so a batch the shipper is still posting is not lost, unsaid, when
    /// the process exits.
    shipping: tokio::sync::Mutex<()>,
    dropped: AtomicU64,
    /// The last export failed (one warning per run of failures).
    failing: AtomicBool,
}

/// Batches of encoded spans, each of at most [`BATCH`], oldest first.
#[derive(Default)]
struct Pending {
    batches: std::collections::VecDeque<(Vec<u8>, usize)>,
    spans: usize,
}

pub const BATCH: usize = 2048;
/// Batch buffers kept for reuse: the one filling and the one posting.
/// A fresh 1.4 MB buffer per batch cost a page fault per 4 KiB written,
/// twice (it was copied into the request body too).
const SPARES: usize = 2;
pub const MAX_PENDING: usize = 65_536;
pub const INTERVAL: Duration = Duration::from_secs(1);

impl SpanSink {
    /// Starts its shipper task; inside the tokio runtime.
    pub fn start(poster: Poster, envelope: Envelope) -> Arc<Self> {
        let sink = Arc::new(Self {
            pending: Mutex::default(),
            wake: Arc::new(Notify::new()),
            stop: AtomicBool::new(false),
            room: envelope.headroom(),
            envelope,
            spare: Arc::default(),
            poster,
            shipping: tokio::sync::Mutex::new(()),
            dropped: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&sink);
        let wake = sink.wake.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(INTERVAL) => {}
                    _ = wake.notified() => {}
                }
                // Dropped without a shutdown: nothing is left to send to.
                let Some(sink) = weak.upgrade() else { return };
                // Stop is read under the lock: a shutdown holds it from its
                // last export until it has set stop.
                let _shipping = sink.shipping.lock().await;
                if sink.stop.load(Ordering::Relaxed) {
                    return;
                }
                sink.ship_locked().await;
            }
        });
        sink
    }

    /// One encoded span (a `ScopeSpans.spans` field).
    pub fn push(&self, span: &[u8]) {
        let mut p = self.pending.lock().expect("span sink lock");
        if p.spans >= MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        p.spans += 1;
        match p.batches.back_mut() {
            Some((bytes, n)) if *n < BATCH => {
                bytes.extend_from_slice(span);
                *n += 1;
                if *n == BATCH {
                    drop(p);
                    self.wake.notify_one();
                }
            }
            _ => {
                let spare = self.spare.lock().expect("spare batches lock").pop();
                let mut bytes =
                    spare.unwrap_or_else(|| Vec::with_capacity(self.room + span.len() * BATCH));
                bytes.resize(self.room, 0);
                bytes.extend_from_slice(span);
                p.batches.push_back((bytes, 1));
            }
        }
    }

    /// Exports what is waiting now, a batch per request. A failure is
    /// logged when it starts a run of failures, and its spans are counted
    /// as dropped. When an export fails, the batches taken with it are
    /// dropped and counted too, rather than tried one
    /// by one, so a collector that hangs costs one timeout, not one per
    /// batch (the shutdown waits on this).
    pub async fn ship(&self) {
        // After any export in flight: what it took is settled first.
        let _shipping = self.shipping.lock().await;
        self.ship_locked().await;
    }

    /// [`Self::ship`], with `shipping` held by the caller.
    async fn ship_locked(&self) {
        let batches = {
            let mut p = self.pending.lock().expect("span sink lock");
            p.spans = 0;
            std::mem::take(&mut p.batches)
        };
        let mut batches = batches.into_iter();
        while let Some((mut bytes, n)) = batches.next() {
            let start = self.envelope.frame(&mut bytes, self.room);
            let body = Bytes::from_owner(Recycled {
                buf: bytes,
                start,
                spare: Arc::downgrade(&self.spare),
            });
            match self.poster.post(body).await {
                Ok(()) => self.failing.store(false, Ordering::Relaxed),
                Err(e) => {
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!("request spans not exported: {e}");
                    }
                    let lost: usize = n + batches.map(|(_, n)| n).sum::<usize>();
                    self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Exports what is waiting and stops the shipper. An export already
    /// in flight is waited for (bounded by the poster's timeout), so its
    /// outcome is logged before the process exits.
    pub async fn shutdown(&self) {
        let shipping = self.shipping.lock().await;
        self.ship_locked().await;
        self.stop.store(true, Ordering::Relaxed);
        drop(shipping);
        self.wake.notify_one();
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                "{dropped} request spans were dropped: more than {MAX_PENDING} waited for a slow collector, or the collector failed"
            );
        }
    }
}

/// An export request framed in its batch buffer ([`Envelope::frame`]).
/// When the HTTP client lets go of the body, the buffer goes back to the
/// sink's spares.
struct Recycled {
    buf: Vec<u8>,
    start: usize,
    spare: Weak<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let Some(spare) = self.spare.upgrade() else {
            return;
        };
        let mut spare = spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARES {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            spare.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::otlp_encode::{Attr, SpanHead, span_message};
    use crate::observe::otlp_http::Signal;
    use bytes::Bytes;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    /// The span ids of each export a collector received.
    type Exports = Arc<Mutex<Vec<Vec<u64>>>>;

    /// A collector on 127.0.0.1 that records each export's span ids.
    async fn collector() -> (String, Exports) {
        let got = Exports::default();
        let g = got.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let req = ExportTraceServiceRequest::decode(body).expect("valid OTLP");
                let ids = req.resource_spans[0].scope_spans[0]
                    .spans
                    .iter()
                    .map(|s| u64::from_be_bytes(s.span_id[..].try_into().unwrap()))
                    .collect();
                g.lock().unwrap().push(ids);
                async { "" }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (format!("http://{addr}/v1/traces"), got)
    }

    fn one_span(i: u64) -> Vec<u8> {
        let head = SpanHead {
            trace_id: 1u128.to_be_bytes(),
            span_id: (i + 1).to_be_bytes(),
            parent_span_id: [0; 8],
            trace_flags: 1,
            name: "chat m",
            kind: opentelemetry::trace::SpanKind::Client,
            start_unix_ns: 1,
            end_unix_ns: 2,
        };
        let mut b = Vec::new();
        span_message(&mut b, &head, |s| {
            s.attr("llmload.seq", Attr::I64(i as i64))
        });
        b
    }

    /// A sink exporting to `url`, with an empty resource.
    fn sink_to(url: &str) -> Arc<SpanSink> {
        let client =
            super::super::otlp_http::client(&crate::client::proxy::ProxySettings::direct());
        let envelope = Envelope::new(
            &Resource::builder_empty().build(),
            &opentelemetry::InstrumentationScope::builder("llmload").build(),
        );
        SpanSink::start(Poster::new(url, client, Signal::Traces).unwrap(), envelope)
    }

    /// On a current-thread runtime the shipper cannot run between the
    /// pushes, so exactly the spans past the bound are dropped.
    #[tokio::test(flavor = "current_thread")]
    async fn spans_past_the_bound_are_dropped_and_the_rest_exported() {
        let (url, got) = collector().await;
        let sink = sink_to(&url);
        for i in 0..(MAX_PENDING + 10) as u64 {
            sink.push(&one_span(i));
        }
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 10);
        sink.shutdown().await;
        let sizes: Vec<usize> = got.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), MAX_PENDING);
        assert!(
            sizes.iter().all(|&n| n == BATCH),
            "batches of {BATCH}: {sizes:?}"
        );
        // Stopped: what comes after the shutdown is not exported.
        sink.push(&one_span(0));
        tokio::time::sleep(INTERVAL * 2).await;
        let sent: usize = got.lock().unwrap().iter().map(Vec::len).sum();
        assert_eq!(sent, MAX_PENDING);
    }

    /// A batch's buffer comes back once its export is done, and the next
    /// batch written into it carries its own spans only, framed anew.
    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_buffer_is_reused_and_carries_only_its_own_spans() {
        let (url, got) = collector().await;
        let sink = sink_to(&url);
        for i in 0..300 {
            sink.push(&one_span(i));
        }
        sink.ship().await;
        assert_eq!(sink.spare.lock().unwrap().len(), 1, "the buffer came back");
        let first = sink.spare.lock().unwrap()[0].as_ptr();
        // Fewer and longer spans: the old tail must not show through.
        for i in 1000..1005 {
            let mut span = one_span(i);
            span.extend_from_slice(&one_span(i + 10_000));
            sink.push(&span);
        }
        assert!(sink.spare.lock().unwrap().is_empty(), "the spare is in use");
        let reused = sink.pending.lock().unwrap().batches[0].0.as_ptr();
        assert_eq!(reused, first, "the same allocation");
        sink.ship().await;
        let got = got.lock().unwrap().clone();
        assert_eq!(got[0], (1..=300).collect::<Vec<u64>>());
        let mut second: Vec<u64> = (1001..1006).chain(11_001..11_006).collect();
        second.sort_unstable();
        let mut ids = got[1].clone();
        ids.sort_unstable();
        assert_eq!(ids, second);
        assert_eq!(got.len(), 2);
        // At most SPARES are kept, however many batches were in flight.
        for i in 0..(4 * BATCH) as u64 {
            sink.push(&one_span(i));
        }
        sink.ship().await;
        assert_eq!(sink.spare.lock().unwrap().len(), SPARES);
    }

    /// A shutdown that comes while the shipper's export is in flight
    /// waits for it: before, it found nothing pending and returned, and
    /// the process exited with the batch unsent and nothing said.
    #[tokio::test(flavor = "current_thread")]
    async fn a_shutdown_waits_for_the_export_in_flight() {
        let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let release = Arc::new(tokio::sync::Notify::new());
        let r = release.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let req = ExportTraceServiceRequest::decode(body).expect("valid OTLP");
                let n = req.resource_spans[0].scope_spans[0].spans.len();
                let (tx, r) = (got_tx.clone(), r.clone());
                async move {
                    tx.send(n).unwrap();
                    // Answers only when the test says so.
                    r.notified().await;
                    ""
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let sink = sink_to(&url);
        for i in 0..5 {
            sink.push(&one_span(i));
        }
        let shipper = tokio::spawn({
            let sink = sink.clone();
            async move { sink.ship().await }
        });
        assert_eq!(got_rx.recv().await, Some(5), "the export is in flight");
        let mut shutdown = Box::pin(sink.shutdown());
        // It cannot end while the collector holds the answer back.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut shutdown)
                .await
                .is_err(),
            "the shutdown waits for the export in flight"
        );
        release.notify_one();
        shutdown.await;
        shipper.await.unwrap();
        assert!(
            !sink.failing.load(Ordering::Relaxed),
            "the export succeeded"
        );
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dead_collector_loses_the_batch_not_the_sink() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", dead.local_addr().unwrap());
        drop(dead);
        let sink = sink_to(&url);
        for i in 0..BATCH as u64 + 1 {
            sink.push(&one_span(i));
        }
        sink.ship().await;
        assert!(sink.failing.load(Ordering::Relaxed));
        assert_eq!(
            sink.pending.lock().unwrap().spans,
            0,
            "the batches were taken"
        );
        // The first batch failed; the one behind it was counted, not tried.
        assert_eq!(sink.dropped.load(Ordering::Relaxed), BATCH as u64 + 1);
        sink.push(&one_span(2));
        assert_eq!(
            sink.pending.lock().unwrap().spans,
            1,
            "and the sink goes on"
        );
    }
}
