//! Accuracy: client timings against the mock's own stamps on the shared
//! monotonic clock.

use super::rig::*;

use super::servers;
use crate::client::record::RequestRecord;
use crate::engine::sweep::{LevelSpec, Observer, RequestHook};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Client stamps of one request on the shared monotonic clock.
#[derive(Debug, Clone)]
pub(super) struct ClientRow {
    seq: u64,
    sent_ns: u64,
    first_ns: u64,
    done_ns: u64,
    tokens: u32,
}

/// Records each successful request's client-side stamps.
pub(super) struct Capture {
    anchor: crate::base::clock::Anchor,
    rows: Mutex<Vec<ClientRow>>,
}

impl Observer for Capture {
    fn request_done(
        &self,
        _l: &LevelSpec,
        base: std::time::Instant,
        r: &RequestRecord,
        _h: Option<RequestHook>,
    ) {
        let (Ok(()), Some(id), Some(first)) = (r.outcome, &r.response_id, r.first_token_at) else {
            return;
        };
        let Some(seq) = id.rsplit('-').next().and_then(|s| s.parse().ok()) else {
            return;
        };
        let base_ns = self.anchor.mono_ns
            + base
                .saturating_duration_since(self.anchor.instant)
                .as_nanos() as u64;
        self.rows.lock().expect("capture lock").push(ClientRow {
            seq,
            sent_ns: base_ns + r.sent_at.as_nanos() as u64,
            first_ns: base_ns + first.as_nanos() as u64,
            done_ns: base_ns + r.done_at.as_nanos() as u64,
            tokens: r.output_tokens().0,
        });
    }
}

/// p50 / p99 / max of |client − server| differences, microseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ErrStats {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

pub(super) fn err_stats(mut v: Vec<f64>) -> ErrStats {
    if v.is_empty() {
        return ErrStats::default();
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    ErrStats {
        p50_us: q(0.5),
        p99_us: q(0.99),
        max_us: *v.last().expect("non-empty"),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    pub rate: f64,
    pub requests: usize,
    /// Client TTFT (from its send) minus server TTFT (from receipt).
    pub ttft_error: ErrStats,
    /// Per-gap difference of the decode span (first → last token).
    pub itl_error: ErrStats,
    /// Client E2E (from its send) minus server E2E (from receipt).
    pub e2e_error: ErrStats,
    pub lag_p99_ms: f64,
}

#[derive(serde::Deserialize)]
pub(super) struct TruthRow {
    seq: u64,
    received_ns: u64,
    first_token_ns: u64,
    last_byte_ns: u64,
    status: u16,
}

pub(super) async fn fetch_truth(base: &str) -> Vec<TruthRow> {
    use http_body_util::BodyExt;
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let Ok(uri) = format!("{base}/debug/requests?clear=true").parse::<http::Uri>() else {
        return Vec::new();
    };
    let Ok(resp) = c.get(uri).await else {
        return Vec::new();
    };
    let Ok(body) = resp.into_body().collect().await else {
        return Vec::new();
    };
    serde_json::from_slice(&body.to_bytes()).unwrap_or_default()
}

pub(super) async fn accuracy(mock: &servers::ServerProcess, rate: f64, dur: Duration) -> Accuracy {
    let cap = Arc::new(Capture {
        anchor: crate::base::clock::Anchor::now(),
        rows: Mutex::new(Vec::new()),
    });
    let e = engine(client(&mock.url, true), cap.clone(), 512);
    let _ = fetch_truth(&mock.base).await;
    let p = probe(&e, rate, dur).await;
    let truth = fetch_truth(&mock.base).await;
    let by_seq: std::collections::HashMap<u64, &TruthRow> = truth
        .iter()
        .filter(|t| t.status == 200 && t.first_token_ns > 0)
        .map(|t| (t.seq, t))
        .collect();
    let rows = cap.rows.lock().expect("capture lock").clone();
    let (mut ttft, mut itl, mut e2e) = (Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        let Some(t) = by_seq.get(&r.seq) else {
            continue;
        };
        let c_ttft = r.first_ns as f64 - r.sent_ns as f64;
        let s_ttft = t.first_token_ns as f64 - t.received_ns as f64;
        ttft.push((c_ttft - s_ttft).abs() / 1000.0);
        let c_e2e = r.done_ns as f64 - r.sent_ns as f64;
        let s_e2e = t.last_byte_ns as f64 - t.received_ns as f64;
        e2e.push((c_e2e - s_e2e).abs() / 1000.0);
        if r.tokens > 1 {
            let c_dec = r.done_ns as f64 - r.first_ns as f64;
            let s_dec = t.last_byte_ns as f64 - t.first_token_ns as f64;
            itl.push((c_dec - s_dec).abs() / (r.tokens - 1) as f64 / 1000.0);
        }
    }
    Accuracy {
        rate,
        requests: ttft.len(),
        ttft_error: err_stats(ttft),
        itl_error: err_stats(itl),
        e2e_error: err_stats(e2e),
        lag_p99_ms: p.lag_p99_ms,
    }
}
