//! One session's life: its turns in order, each sent when the reply
//! before it has ended and the think time has passed, each carrying the
//! history with the replies the server actually streamed.
//!
//! A turn's planned instant is the end of the previous reply plus the
//! think time; its latency counts from that instant, as an open-loop
//! request's counts from its schedule, so a client that wakes late shows
//! as turn lag rather than as a faster server. The wait is on the precise
//! timer thread (tokio's 1 ms wheel would add up to a millisecond to
//! every think time). A failed turn ends its session; turns not sent when
//! the level's window closes leave the session open at the level's end,
//! and both are counted.

pub(super) use super::request::ActiveSession;
use super::request::{Job, TaskCtx, lock, request_task};
use crate::analysis::sessions::SessionEnd;
use crate::base::timer::PreciseTimer;
pub use crate::plan::sessions::SessionPlan;
use crate::workload::request::{PreparedRequest, build_body};
use crate::workload::session::Session;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One timer thread for every session of the process.
fn timer() -> &'static PreciseTimer {
    static TIMER: std::sync::OnceLock<PreciseTimer> = std::sync::OnceLock::new();
    TIMER.get_or_init(PreciseTimer::new)
}

/// A long think ends in two steps: the precise timer wakes the session
/// this much early, then sleeps it the rest of the way. After a long
/// sleep the timer thread and the runtime's workers wake slowly (a few
/// hundred microseconds on a VM whose CPU went idle); the second, short
/// sleep starts from a warm CPU and lands within tens of microseconds.
const WAKE_AHEAD: Duration = Duration::from_millis(2);

/// Wait until `due`, on time.
async fn sleep_until(due: std::time::Instant) {
    if let Some(early) = due.checked_sub(WAKE_AHEAD)
        && early > std::time::Instant::now()
    {
        timer().sleep_until(early).await;
    }
    timer().sleep_until(due).await;
}

/// Turn `k` (0-based) of session instance `instance`: its request's
/// sequence number, unique across levels and shards (instances are
/// global schedule indices), and its session is `seq >> 16`.
pub fn turn_seq(instance: u64, k: usize) -> u64 {
    (instance << 16) | (k as u64).min(0xFFFF)
}

/// Run session instance `instance`, its first turn planned at `first_at`
/// (an offset from the level start). `end`: no turn is planned at or
/// after this offset, moved back by the time the level spent paused.
/// Returns how it ended (also counted in the stats).
/// `active` was taken before the session's task was spawned.
pub(super) async fn run_session(
    ctx: &Arc<TaskCtx>,
    plan: &SessionPlan,
    instance: u64,
    first_at: Duration,
    end: Option<Duration>,
    active: ActiveSession,
) -> SessionEnd {
    let _active = active;
    let session = &plan.sessions[(instance % plan.sessions.len() as u64) as usize];
    lock(&ctx.stats)
        .sessions
        .get_or_insert_with(Default::default)
        .started();
    let ended = turns(ctx, plan, session, instance, first_at, end).await;
    lock(&ctx.stats)
        .sessions
        .get_or_insert_with(Default::default)
        .ended(ended);
    ctx.observer.session_ended(&ctx.spec, ended);
    ended
}

async fn turns(
    ctx: &Arc<TaskCtx>,
    plan: &SessionPlan,
    session: &Session,
    instance: u64,
    first_at: Duration,
    end: Option<Duration>,
) -> SessionEnd {
    let mut replies: Vec<String> = Vec::with_capacity(session.turns.len());
    let mut planned = first_at;
    for k in 0..session.turns.len() {
        let turn = k as u32 + 1;
        // The body is made before the wait (the user thinks; we write):
        // none of its serialization is on the send path.
        let conv = session.conversation(k, &replies);
        let req = PreparedRequest {
            body: build_body(&conv, &plan.params),
            input_chars: conv.text_chars(),
            // Later turns hold replies we did not count.
            input_tokens: if k == 0 {
                session.turns[0].new_tokens
            } else {
                None
            },
        };
        drop(conv);
        if k > 0 {
            let paused = Duration::from_nanos(ctx.progress.paused_ns.load(Ordering::Relaxed));
            if end.is_some_and(|e| planned >= e + paused) || ctx.window_over.is_cancelled() {
                return SessionEnd::OpenAtEnd;
            }
            let due = ctx.start.into_std() + planned;
            tokio::select! {
                _ = sleep_until(due) => {}
                _ = ctx.window_over.cancelled() => return SessionEnd::OpenAtEnd,
                _ = ctx.stop.cancelled() => return SessionEnd::OpenAtEnd,
                _ = ctx.cancel.cancelled() => return SessionEnd::OpenAtEnd,
            }
            // A soak paused for a sweep on the same target: its sessions
            // wait too, and the pause moves the turn's plan back. The
            // pacer counts an open loop's pauses; in a closed loop the
            // first to see one counts it.
            if ctx.progress.paused.load(Ordering::Acquire) {
                let t0 = tokio::time::Instant::now();
                let counts = matches!(ctx.spec.load, crate::plan::load::Load::Concurrency(_))
                    && !ctx.progress.pause_counted.swap(true, Ordering::AcqRel);
                while ctx.progress.paused.load(Ordering::Acquire) {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = ctx.stop.cancelled() => break,
                        _ = ctx.cancel.cancelled() => break,
                    }
                }
                if counts {
                    ctx.progress
                        .paused_ns
                        .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    ctx.progress.pause_counted.store(false, Ordering::Release);
                }
                if ctx.stop.is_cancelled() || ctx.cancel.is_cancelled() {
                    return SessionEnd::OpenAtEnd;
                }
                planned += t0.elapsed();
            }
        }
        ctx.progress.scheduled.fetch_add(1, Ordering::Relaxed);
        let open = ctx.progress.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let job = Job {
            seq: turn_seq(instance, k),
            scheduled_at: planned,
            open,
            own: Some(req),
            turn,
        };
        let sent = request_task(ctx.clone(), job).await;
        if let Err(kind) = sent.outcome {
            return SessionEnd::Aborted(kind);
        }
        replies.push(sent.reply.unwrap_or_default());
        if k + 1 < session.turns.len() {
            planned = sent.done_at + plan.think.draw(plan.seed, instance, turn + 1);
        }
    }
    SessionEnd::Completed
}
