//! Whether the client is at its CPU limit: every worker of the runtime
//! busy nearly all of the last few tens of milliseconds.
//!
//! The pool asks this before it opens a connection (see
//! [`super::pool::Pool::checkout`]). A client at its limit reads every
//! stream late, so its connections stay busy longer than the server needs
//! them; its sends can still be on time (a send is one short poll, a
//! stream is many). Opening a connection for each such send grows the pool
//! by the client's own backlog and hits the server with connects, where
//! waiting for a busy connection to come back costs a few microseconds.
//! The send lag alone sees this too late: in one 30,000 req/s overload on
//! 2 cores it stayed under 5 ms while 1,100 connections opened.
//!
//! It reads tokio's worker busy time (a stable metric on 64-bit targets,
//! updated at each worker's maintenance and park), at most once per
//! [`WINDOW`]; between samples it is one atomic load.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the busy time is sampled, and over what span it is judged.
pub const WINDOW: Duration = Duration::from_millis(5);
/// Busy at least this share of the window, on every worker: saturated.
pub const BUSY_SHARE: f64 = 0.9;

/// The saturation flag and the sample it was last judged from.
#[derive(Debug, Default)]
pub struct Saturation {
    saturated: AtomicBool,
    last: Mutex<Option<Sample>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    busy: Duration,
    workers: usize,
}

impl Saturation {
    /// Whether the current runtime's workers were all busy through the
    /// last window (false outside a multi-thread runtime).
    pub fn saturated(&self) -> bool {
        if let Ok(mut last) = self.last.try_lock() {
            let now = Instant::now();
            if last.is_none_or(|s| now.duration_since(s.at) >= WINDOW)
                && let Some(s) = sample(now)
            {
                if let Some(prev) = *last
                    && prev.workers == s.workers
                {
                    let share = busy_share(prev, s);
                    self.saturated.store(share >= BUSY_SHARE, Ordering::Relaxed);
                }
                *last = Some(s);
            }
        }
        self.saturated.load(Ordering::Relaxed)
    }
}

/// The share of the span between two samples that the workers were busy,
/// on average per worker.
fn busy_share(a: Sample, b: Sample) -> f64 {
    let wall = b.at.duration_since(a.at).as_secs_f64() * b.workers.max(1) as f64;
    if wall <= 0.0 {
        return 0.0;
    }
    b.busy.saturating_sub(a.busy).as_secs_f64() / wall
}

fn sample(at: Instant) -> Option<Sample> {
    let h = tokio::runtime::Handle::try_current().ok()?;
    if h.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return None;
    }
    let m = h.metrics();
    let workers = m.num_workers();
    let busy = (0..workers).map(|w| m.worker_total_busy_duration(w)).sum();
    Some(Sample { at, busy, workers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_busy_time_over_wall_time_per_worker() {
        let t = Instant::now();
        let a = Sample {
            at: t,
            busy: Duration::from_millis(100),
            workers: 2,
        };
        let b = Sample {
            at: t + Duration::from_millis(20),
            busy: Duration::from_millis(136),
            workers: 2,
        };
        assert!((busy_share(a, b) - 0.9).abs() < 1e-9);
        assert_eq!(busy_share(b, b), 0.0);
    }

    /// Two workers kept spinning are saturated; an idle runtime is not.
    #[test]
    fn spinning_workers_saturate_and_idle_ones_do_not() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Judged from the thread that runs `block_on`, not a worker, so
        // that the watching takes no worker's time.
        rt.block_on(async {
            let s = Saturation::default();
            // Idle: sampled over a window in which nothing ran.
            s.saturated();
            tokio::time::sleep(WINDOW * 3).await;
            assert!(!s.saturated(), "an idle runtime is not saturated");
            // Two spinners, spawned from outside the workers (each takes
            // one from the shared queue): each holds its worker 2 ms at a
            // time, then yields so the worker submits its busy time. A
            // spinner that only yielded could share one worker with the
            // other and leave the second worker parked.
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let spinners: Vec<_> = (0..2)
                .map(|_| {
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            while t.elapsed() < Duration::from_millis(2) {
                                std::hint::spin_loop();
                            }
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            // Bounded: 10 s of spinning at most.
            let t0 = Instant::now();
            let mut seen = false;
            while !seen && t0.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                seen = s.saturated();
            }
            stop.store(true, Ordering::Relaxed);
            for h in spinners {
                h.await.unwrap();
            }
            assert!(seen, "two spinning workers were never judged saturated");
        });
    }
}
