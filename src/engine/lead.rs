//! The lead thread: one current-thread runtime that runs a fast level's
//! pacer and as many of its requests as one thread carries; the runtime's
//! other workers take requests only once the lead is busy.
//!
//! Why: on 2 cores at 20,000 req/s against nginx (the 64-token stream), a
//! request cost 17-19 µs of CPU with one worker thread and 25-27 µs with
//! the default two (2026-12-08). Two threads each sleep and wake for
//! their share of the events (0.45 voluntary context switches per request
//! against 0.10), and tokio wakes an idle worker to steal each new task.
//! Two designs that kept both threads in play measured like two workers:
//! long-lived tasks each driving many requests, and two current-thread
//! runtimes fed in turn. The cost is two threads waking, not the
//! scheduler. So the lead takes every send while it is busy less than
//! [`SPILL_SHARE`] of the last [`WINDOW`], and the rest spills to the
//! multi-thread runtime: a light level costs what one thread costs, a
//! heavy one still uses every core.
//!
//! Used where the level's runtime has two workers or more (`--workers 1`
//! already runs on one thread); `LLMLOAD_LEAD=off` turns it off, for a
//! side-by-side measurement. The lead's requests use a pool of their own
//! (see [`crate::client::LlmClient`]): a socket is registered with the
//! poller of the runtime that opened it, and a connection driven across
//! two runtimes would cost a wake between threads per read.

use std::cell::Cell;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// How often the lead's busy share is judged, and over what span.
pub const WINDOW: Duration = Duration::from_millis(5);
/// Busy at least this share of the window: later sends go to the other
/// workers until a window below it. It leaves the lead room to wake on
/// time for its pacer (a send's lag counts from its planned instant).
/// In ceiling runs on 2 cores, 0.5, 0.65 and 0.8 held the same rate
/// within the noise (38,000-42,000 req/s); at a quarter of wrk's rate the
/// lead is about 40 % busy, so a share well above that keeps such a
/// level on one thread through a noisy window.
pub const SPILL_SHARE: f64 = 0.7;

thread_local! {
    static ON_LEAD: Cell<bool> = const { Cell::new(false) };
}

static LEAD: OnceLock<Option<Handle>> = OnceLock::new();

/// Whether the calling thread is the lead's.
pub fn on_lead() -> bool {
    ON_LEAD.with(Cell::get)
}

/// The lead runtime, for a level running on the current runtime: `None`
/// where that runtime has a single worker (it is one thread already),
/// outside a runtime, with `LLMLOAD_LEAD=off`, or when its thread could
/// not be started. Started on first use; it lives as long as the process.
pub fn for_current_runtime() -> Option<&'static Handle> {
    let workers = Handle::try_current().ok()?.metrics().num_workers();
    if workers < 2 || std::env::var("LLMLOAD_LEAD").is_ok_and(|v| v == "off") {
        return None;
    }
    LEAD.get_or_init(start).as_ref()
}

fn start() -> Option<Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("llmload-lead".into())
        .spawn(move || {
            ON_LEAD.with(|l| l.set(true));
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!("no lead thread (every worker takes requests): {e}");
                    let _ = tx.send(None);
                    return;
                }
            };
            let _ = tx.send(Some(rt.handle().clone()));
            rt.block_on(std::future::pending::<()>());
        });
    match spawned {
        Ok(_) => rx.recv().ok().flatten(),
        Err(e) => {
            tracing::warn!("no lead thread (every worker takes requests): {e}");
            None
        }
    }
}

/// Whether the lead is busy enough that sends go elsewhere: judged from
/// its runtime's busy time at most once per [`WINDOW`]. Call on the lead.
#[derive(Debug)]
pub struct Spill {
    last: Mutex<Judged>,
}

#[derive(Debug, Clone, Copy)]
struct Judged {
    at: Instant,
    busy: Duration,
    spill: bool,
}

impl Default for Spill {
    fn default() -> Self {
        Self {
            last: Mutex::new(Judged {
                at: Instant::now(),
                busy: busy_now(),
                spill: false,
            }),
        }
    }
}

impl Spill {
    /// Whether this send should go to the other workers.
    pub fn now(&self) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        let now = Instant::now();
        if now.duration_since(last.at) >= WINDOW {
            *last = last.next(now, busy_now());
        }
        last.spill
    }
}

impl Judged {
    /// The judgement at `now`, the lead busy for `busy` in all so far.
    fn next(self, now: Instant, busy: Duration) -> Self {
        Self {
            at: now,
            busy,
            spill: busy_share(self.at, self.busy, now, busy) >= SPILL_SHARE,
        }
    }
}

/// The current runtime's first worker's busy time (the lead has one).
fn busy_now() -> Duration {
    Handle::try_current()
        .map(|h| h.metrics().worker_total_busy_duration(0))
        .unwrap_or_default()
}

/// The share of the span from `(t0, busy0)` to `(t1, busy1)` spent busy.
fn busy_share(t0: Instant, busy0: Duration, t1: Instant, busy1: Duration) -> f64 {
    let span = t1.saturating_duration_since(t0).as_secs_f64();
    if span <= 0.0 {
        return 0.0;
    }
    (busy1.saturating_sub(busy0).as_secs_f64() / span).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_busy_time_over_the_span() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(10);
        let share =
            |b0, b1| busy_share(t0, Duration::from_millis(b0), t1, Duration::from_millis(b1));
        assert!((share(2, 7) - 0.5).abs() < 1e-9);
        assert_eq!(share(3, 3), 0.0);
        // A counter read across a reset or a clock step never goes past
        // the bounds.
        assert_eq!(share(7, 2), 0.0);
        assert_eq!(share(0, 50), 1.0);
        assert_eq!(
            busy_share(t1, Duration::ZERO, t0, Duration::from_millis(5)),
            0.0
        );
    }

    #[test]
    fn a_single_worker_runtime_has_no_lead() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { assert!(for_current_runtime().is_none()) });
        assert!(for_current_runtime().is_none(), "outside a runtime");
    }

    #[test]
    fn the_lead_runs_on_its_own_thread_and_says_so() {
        // The binary's runtime, with two workers.
        let rt = crate::engine::sweep::runtime(2).unwrap();
        rt.block_on(async {
            assert!(!on_lead());
            let Some(lead) = for_current_runtime() else {
                // Only LLMLOAD_LEAD=off in the test's environment.
                assert_eq!(std::env::var("LLMLOAD_LEAD").as_deref(), Ok("off"));
                return;
            };
            let (on, name) = lead
                .spawn(async { (on_lead(), std::thread::current().name().map(String::from)) })
                .await
                .unwrap();
            assert!(on);
            assert_eq!(name.as_deref(), Some("llmload-lead"));
        });
    }

    #[test]
    fn sends_spill_while_the_lead_was_busy_for_the_share_or_more() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let ms = Duration::from_millis;
        let j = Judged {
            at: t0,
            busy: ms(100),
            spill: false,
        };
        let j = j.next(at(10), ms(108));
        assert!(j.spill, "8 ms busy of 10");
        let j = j.next(at(20), ms(114));
        assert!(!j.spill, "6 ms busy of 10");
        let j = j.next(at(30), ms(124));
        assert!(j.spill, "the lead busy again");
    }
}
