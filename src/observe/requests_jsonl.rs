//! Optional per-request log: `requests.jsonl` in the run directory, one
//! line per request, written only when asked (`--record-requests`, or
//! `record_requests = true` on a daemon job). Off by default so memory and
//! disk stay flat over days; the histograms carry the statistics.
//!
//! Unlike the run's other files it is a log, appended to as the run goes
//! (it can grow to gigabytes over a soak), so it is not rewritten and
//! renamed. It still never holds half a line: when a write fails (a full
//! disk), the file is cut back to its length at the last good flush and
//! the lines since are counted as lost.

use crate::client::record::RequestRecord;
use crate::engine::sweep::{LevelSpec, Observer, RequestHook};
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub const RECORDS_FILE: &str = "requests.jsonl";

/// One line of `requests.jsonl`. Times are seconds from the level start.
#[derive(Serialize)]
struct Line<'a> {
    level: usize,
    qps: f64,
    seq: u64,
    scheduled_at: f64,
    sent_at: f64,
    ttft: Option<f64>,
    e2e: f64,
    output_tokens: u32,
    status: Option<u16>,
    error: Option<String>,
    /// What the socket or TLS library said (e.g. a certificate problem).
    error_detail: Option<&'a str>,
    finish_reason: Option<&'a str>,
    new_connection: bool,
    connect: Option<f64>,
    retried_stale_connection: bool,
    /// A session's turn (absent outside sessions) and the cached prompt
    /// tokens the server reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    turn: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_tokens: Option<u32>,
}

/// Appends a line per finished request, then passes the request on.
/// A failed write is never ignored: it is counted and reported at the
/// next flush, and the run then fails like any other results write.
pub struct RecordsObserver {
    out: Mutex<Sink>,
    pub next: Option<Arc<dyn Observer>>,
}

const BUFFER: usize = 64 * 1024;

struct Sink {
    file: BufWriter<std::fs::File>,
    /// The file's length after the last successful flush: whole lines.
    good_len: u64,
    path: std::path::PathBuf,
    /// Lines handed to the buffer since it last reached the file.
    pending: u64,
    /// Lines lost since the last report, and the first reason.
    lost: u64,
    reason: Option<String>,
}

impl Sink {
    /// A write or flush failed: what was buffered is gone, and so is any
    /// part of it that reached the file (a half line).
    fn failed(&mut self, e: std::io::Error) {
        self.lost += std::mem::take(&mut self.pending);
        if self.reason.is_none() {
            self.reason = Some(e.to_string());
        }
        let _ = self.file.get_ref().set_len(self.good_len);
        if let Ok(raw) = self.file.get_ref().try_clone() {
            let old = std::mem::replace(&mut self.file, BufWriter::with_capacity(BUFFER, raw));
            // `into_parts` drops the buffer without writing it.
            drop(old.into_parts());
        }
    }
}

impl RecordsObserver {
    pub fn create(dir: &Path, next: Option<Arc<dyn Observer>>) -> std::io::Result<Self> {
        let path = dir.join(RECORDS_FILE);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let good_len = f.metadata().map_or(0, |m| m.len());
        Ok(Self {
            out: Mutex::new(Sink {
                good_len,
                file: BufWriter::with_capacity(BUFFER, f),
                path,
                pending: 0,
                lost: 0,
                reason: None,
            }),
            next,
        })
    }

    /// Push buffered lines to the file; what could not be written since
    /// the last call, as one message.
    pub fn flush_records(&self) -> Option<String> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        match out.file.flush() {
            Ok(()) => {
                out.pending = 0;
                out.good_len = out
                    .file
                    .get_ref()
                    .metadata()
                    .map_or(out.good_len, |m| m.len());
            }
            Err(e) => out.failed(e),
        }
        if out.lost == 0 {
            return None;
        }
        let reason = out.reason.take().unwrap_or_default();
        let msg = format!(
            "cannot write {}: {reason} (lines lost: {})",
            out.path.display(),
            out.lost
        );
        out.lost = 0;
        Some(msg)
    }
}

impl Observer for RecordsObserver {
    fn request_start(
        &self,
        level: &LevelSpec,
        base: std::time::Instant,
        rec: &RequestRecord,
    ) -> Option<RequestHook> {
        self.next
            .as_ref()
            .and_then(|n| n.request_start(level, base, rec))
    }

    fn request_done(
        &self,
        level: &LevelSpec,
        base: std::time::Instant,
        rec: &RequestRecord,
        hook: Option<RequestHook>,
    ) {
        let line = Line {
            level: level.index,
            qps: level.qps,
            seq: rec.seq,
            scheduled_at: rec.scheduled_at.as_secs_f64(),
            sent_at: rec.sent_at.as_secs_f64(),
            ttft: rec.ttft().map(|d| d.as_secs_f64()),
            e2e: rec.e2e().as_secs_f64(),
            output_tokens: rec.output_tokens().0,
            status: rec.status,
            error: rec.outcome.err().map(|k| k.key()),
            error_detail: rec.error_detail.as_deref(),
            finish_reason: rec.finish.map(|f| f.as_str()),
            new_connection: rec.new_connection,
            connect: rec.connect.map(|d| d.as_secs_f64()),
            retried_stale_connection: rec.retried_stale,
            session: (rec.turn > 0).then_some(rec.seq >> 16),
            turn: (rec.turn > 0).then_some(rec.turn),
            cached_tokens: rec.cached_input_tokens,
        };
        if let Ok(mut text) = serde_json::to_vec(&line) {
            text.push(b'\n');
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            out.pending += 1;
            if let Err(e) = out.file.write_all(&text) {
                out.failed(e);
            }
        }
        if let Some(n) = &self.next {
            n.request_done(level, base, rec, hook);
        }
    }

    fn session_ended(&self, level: &LevelSpec, end: crate::analysis::sessions::SessionEnd) {
        if let Some(n) = &self.next {
            n.session_ended(level, end);
        }
    }

    fn flush(&self) -> Vec<String> {
        let mut out: Vec<String> = self.flush_records().into_iter().collect();
        if let Some(n) = &self.next {
            out.extend(n.flush());
        }
        out
    }
}

impl Drop for RecordsObserver {
    fn drop(&mut self) {
        let _ = self.flush_records();
    }
}
