//! Closed-loop levels: N tokio workers, each sending its next request
//! when its last one ends. No pacer: a request is "scheduled" the instant
//! its worker is free.

use super::request::{Job, TaskCtx, request_task};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A closed-loop level: `n` workers (this shard's share of them), each
/// sending its next request when its previous one ends, until the level's
/// duration is up. A request is "scheduled" the instant its worker is
/// free, so schedule lag is ~0 by construction: the server's slowness
/// shows as fewer sends, which is why capacity is an open-loop question.
pub(super) async fn run_workers(
    ctx: &Arc<TaskCtx>,
    n: u32,
    first_seq: u64,
    shard: Option<crate::plan::schedule::Shard>,
    stop: &CancellationToken,
    cancel: &CancellationToken,
) -> (Duration, bool, u64) {
    let (index, count) = shard.map_or((0, 1), |s| (s.index as u64, s.count as u64));
    let workers = workers_of(n, shard);
    let next = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let limit = ctx.spec.limit.map(|l| l.div_ceil(count));
    tokio::time::sleep_until(ctx.start).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (ctx, next, last) = (ctx.clone(), next.clone(), last.clone());
        let (stop, cancel) = (stop.clone(), cancel.clone());
        set.spawn(async move {
            loop {
                if stop.is_cancelled() || cancel.is_cancelled() {
                    return true;
                }
                if ctx.progress.paused.load(Ordering::Acquire) {
                    let t0 = Instant::now();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = stop.cancelled() => {}
                    }
                    // Every worker (and session) waits out the pause; the
                    // first to see it keeps its time, so that it is
                    // counted once.
                    if !ctx.progress.pause_counted.swap(true, Ordering::AcqRel) {
                        while ctx.progress.paused.load(Ordering::Acquire) && !stop.is_cancelled() {
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                                _ = stop.cancelled() => {}
                            }
                        }
                        ctx.progress
                            .paused_ns
                            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        ctx.progress.pause_counted.store(false, Ordering::Release);
                    }
                    continue;
                }
                let at = Instant::now() - ctx.start;
                // The duration counts time spent sending, not paused.
                let paused = Duration::from_nanos(ctx.progress.paused_ns.load(Ordering::Relaxed));
                if ctx
                    .spec
                    .duration
                    .is_some_and(|d| at.saturating_sub(paused) >= d)
                {
                    return false;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|l| k >= l) {
                    return false;
                }
                last.fetch_max(at.as_nanos() as u64, Ordering::Relaxed);
                let seq = first_seq + k * count + index;
                // A user with sessions runs them back to back, each to
                // its end (or the level's).
                let ok = if let Some(plan) = ctx.sessions.clone() {
                    let end = ctx.spec.duration;
                    let active = super::session::ActiveSession::enter(&ctx);
                    let ended =
                        super::session::run_session(&ctx, &plan, seq, at, end, active).await;
                    !matches!(ended, crate::analysis::sessions::SessionEnd::Aborted(_))
                } else {
                    ctx.progress.scheduled.fetch_add(1, Ordering::Relaxed);
                    let open = ctx.progress.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                    request_task(ctx.clone(), Job::new(seq, at, open))
                        .await
                        .outcome
                        .is_ok()
                };
                // A request that failed (a refused connection fails in
                // microseconds): a short pause, so that a dead endpoint
                // does not turn the workers into a busy loop.
                if !ok {
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        });
    }
    let mut interrupted = false;
    while let Some(r) = set.join_next().await {
        interrupted |= r.unwrap_or(true);
    }
    let sent = next.load(Ordering::Relaxed);
    (
        Duration::from_nanos(last.load(Ordering::Relaxed)),
        interrupted,
        sent.saturating_mul(count),
    )
}

/// A closed-loop worker's pause after a failed request.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// The workers shard `I/N` runs of a level of `n`: `n / N`, plus one for
/// the first `n mod N` shards, so the shards' workers sum to `n`.
pub fn workers_of(n: u32, shard: Option<crate::plan::schedule::Shard>) -> u32 {
    match shard {
        None => n,
        Some(s) => n / s.count + u32::from(s.index < n % s.count),
    }
}
