//! One request, from spawn to books: the queueing cap's slot, the send,
//! the count, the observers; whatever happens (a panic included) it is
//! counted exactly once and `in_flight` goes down.

use super::level::{LevelSpec, Observer, Progress};
use crate::analysis::stats::LevelStats;
use crate::client::LlmClient;
use crate::client::record::{ErrorKind, RequestRecord};
use crate::workload::request::PreparedRequest;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(super) struct TaskCtx {
    pub(super) client: Arc<LlmClient>,
    pub(super) requests: Arc<Vec<PreparedRequest>>,
    pub(super) observer: Arc<dyn Observer>,
    pub(super) stats: Arc<Mutex<LevelStats>>,
    pub(super) progress: Arc<Progress>,
    pub(super) idle: Arc<Notify>,
    pub(super) cancel: CancellationToken,
    /// The level stops sending: requests still waiting for a slot give up.
    pub(super) stop: CancellationToken,
    /// `max_concurrency` slots, when the level has them.
    pub(super) gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Multi-turn sessions, when the level sends them.
    pub(super) sessions: Option<Arc<crate::plan::sessions::SessionPlan>>,
    /// Cancelled when the level's send window closes: sessions stop
    /// sending turns (and count as open at its end).
    pub(super) window_over: CancellationToken,
    pub(super) spec: LevelSpec,
    pub(super) start: Instant,
}

/// What to send: its place in the level, its planned instant, the
/// requests open when it was handed over, its own body (else the
/// level's request `seq` cycles to), and its session turn (0: none; a
/// turn keeps the reply's text).
pub(super) struct Job {
    pub(super) seq: u64,
    pub(super) scheduled_at: Duration,
    pub(super) open: usize,
    pub(super) own: Option<PreparedRequest>,
    pub(super) turn: u32,
}

impl Job {
    pub(super) fn new(seq: u64, scheduled_at: Duration, open: usize) -> Self {
        Self {
            seq,
            scheduled_at,
            open,
            own: None,
            turn: 0,
        }
    }
}

/// How a request ended, for a session's next turn.
pub(super) struct Sent {
    pub(super) outcome: Result<(), ErrorKind>,
    /// The answer text (session turns only).
    pub(super) reply: Option<String>,
    pub(super) done_at: Duration,
}

/// One request, from spawn to books. Whatever happens inside (a panic in
/// the client or an observer included), the request is counted exactly
/// once and `in_flight` goes down, so the level ends on time.
pub(super) async fn request_task(ctx: Arc<TaskCtx>, job: Job) -> Sent {
    let _in_flight = InFlight(&ctx);
    let mut counted = false;
    let (seq, scheduled_at, open, turn) = (job.seq, job.scheduled_at, job.open, job.turn);
    let mut sent = Sent {
        outcome: Err(ErrorKind::Internal),
        reply: None,
        done_at: scheduled_at,
    };
    let run = std::panic::AssertUnwindSafe(run_request(&ctx, job, &mut counted, &mut sent));
    if let Err(panic) = futures_util::FutureExt::catch_unwind(run).await {
        report_panic(&*panic);
        if !counted {
            let mut rec = RequestRecord::new(seq, scheduled_at, scheduled_at);
            rec.done_at = Instant::now() - ctx.start;
            rec.in_flight_at_send = open as u32;
            rec.turn = turn;
            rec.outcome = Err(ErrorKind::Internal);
            sent.done_at = rec.done_at;
            count(&ctx, &rec);
            // Metrics, requests.jsonl and traces count it too.
            let base = ctx.start.into_std();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ctx.observer.request_done(&ctx.spec, base, &rec, None)
            }));
        }
    }
    sent
}

async fn run_request(ctx: &TaskCtx, job: Job, counted: &mut bool, sent: &mut Sent) {
    let (seq, scheduled_at, open) = (job.seq, job.scheduled_at, job.open);
    let req = match &job.own {
        Some(r) => r,
        None => &ctx.requests[(seq % ctx.requests.len() as u64) as usize],
    };
    let mut rec = RequestRecord::new(seq, scheduled_at, scheduled_at);
    rec.in_flight_at_send = open.min(u32::MAX as usize) as u32;
    rec.client_input_tokens = req.input_tokens;
    rec.prompt_chars = req.input_chars.min(u32::MAX as usize) as u32;
    rec.turn = job.turn;
    if job.turn > 0 {
        rec.reply = Some(String::new());
    }
    let base = ctx.start.into_std();
    let hook = ctx.observer.request_start(&ctx.spec, base, &rec);
    let header = hook.as_ref().and_then(|h| h.header.clone());
    if inject_panic(seq) {
        panic!("injected panic (LLMLOAD_INJECT_PANIC) in request {seq}");
    }
    // A queueing cap: wait for a slot; the wait is the client's queue,
    // and latency still counts from the planned instant.
    let _slot = match &ctx.gate {
        None => None,
        Some(gate) => {
            let slot = tokio::select! {
                s = gate.clone().acquire_owned() => s.ok(),
                _ = ctx.cancel.cancelled() => None,
                _ = ctx.stop.cancelled() => None,
            };
            let waited = (Instant::now() - ctx.start).saturating_sub(scheduled_at);
            rec.client_queue = Some(waited);
            if slot.is_none() {
                rec.sent_at = scheduled_at + waited;
                rec.done_at = rec.sent_at;
                rec.outcome = Err(ErrorKind::Cancelled);
                count(ctx, &rec);
                *counted = true;
                (sent.outcome, sent.done_at) = (rec.outcome, rec.done_at);
                ctx.observer.request_done(&ctx.spec, base, &rec, hook);
                return;
            }
            slot
        }
    };
    tokio::select! {
        _ = ctx.client.send(req.body.clone(), &mut rec, ctx.start, header) => {}
        _ = ctx.cancel.cancelled() => {
            rec.done_at = Instant::now() - ctx.start;
            rec.outcome = Err(ErrorKind::Cancelled);
        }
    }
    // The books first: an observer that fails cannot un-count a request.
    count(ctx, &rec);
    *counted = true;
    (sent.outcome, sent.done_at) = (rec.outcome, rec.done_at);
    let observed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ctx.observer.request_done(&ctx.spec, base, &rec, hook)
    }));
    if let Err(panic) = observed {
        report_panic(&*panic);
    }
    sent.reply = rec.reply.take();
}

/// Add a finished request to the level's stats and progress.
fn count(ctx: &TaskCtx, rec: &RequestRecord) {
    let good = {
        let mut st = lock(&ctx.stats);
        st.record(rec);
        st.slo.as_ref().is_some_and(|s| s.slo.is_good(rec))
    };
    if good {
        ctx.progress.good.fetch_add(1, Ordering::Relaxed);
    }
    if !rec.is_ok() {
        ctx.progress.failed.fetch_add(1, Ordering::Relaxed);
    }
    ctx.progress.completed.fetch_add(1, Ordering::Relaxed);
}

/// The stats, even if a panicking task poisoned the lock: the numbers in
/// it are whole (every update is a single `record`).
pub(super) fn lock(m: &Mutex<LevelStats>) -> std::sync::MutexGuard<'_, LevelStats> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decrements `in_flight` when the request task ends, however it ends.
struct InFlight<'a>(&'a TaskCtx);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.progress.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Counts a session in `sessions_active` from before its task is spawned
/// until it ends, however it ends, so that the drain waits for it (a
/// session spawned just as the window closes included).
pub(super) struct ActiveSession(Arc<TaskCtx>);

impl ActiveSession {
    pub(super) fn enter(ctx: &Arc<TaskCtx>) -> Self {
        ctx.progress.sessions_active.fetch_add(1, Ordering::AcqRel);
        Self(ctx.clone())
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        if self
            .0
            .progress
            .sessions_active
            .fetch_sub(1, Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// Log a panic caught in a request task, once per process: it is our bug,
/// and the request was counted as `internal error`.
fn report_panic(panic: &(dyn std::any::Any + Send)) {
    static SAID: std::sync::Once = std::sync::Once::new();
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic".into());
    SAID.call_once(|| {
        tracing::error!(
            "a request task panicked ({msg}); such requests are counted as 'internal error' \
             and the run goes on. Please report this."
        );
    });
}

/// Fault injection for the test suite: `LLMLOAD_INJECT_PANIC=N` makes
/// every Nth request task panic. Read once; unset costs one branch.
fn inject_panic(seq: u64) -> bool {
    static EVERY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let every = *EVERY.get_or_init(|| {
        std::env::var("LLMLOAD_INJECT_PANIC")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    every > 0 && seq % every == every - 1
}
