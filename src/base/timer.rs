//! A sub-millisecond timer for async tasks.
//!
//! tokio's timer wheel ticks in whole milliseconds and its driver waits in
//! whole milliseconds, so `sleep_until(t)` fires 0.5–2 ms after `t`. For a
//! mock that claims "TTFT = 40 ms" that error is the size of the effect
//! being measured. This timer keeps deadlines in a heap served by one OS
//! thread that sleeps with nanosecond precision (timer slack 1 µs) and
//! wakes each task on time; the task then runs on the tokio workers as
//! usual. Cost per sleep: one small allocation and a heap push/pop.

use futures_util::task::AtomicWaker;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

struct Entry {
    at: Instant,
    seq: u64,
    waker: Arc<AtomicWaker>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Shared {
    heap: Mutex<(BinaryHeap<Reverse<Entry>>, u64)>,
    cond: Condvar,
    stop: AtomicBool,
}

/// Handle to the timer thread; the thread stops when the handle drops.
pub struct PreciseTimer {
    shared: Arc<Shared>,
}

impl Default for PreciseTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl PreciseTimer {
    pub fn new() -> Self {
        let shared = Arc::new(Shared {
            heap: Mutex::new((BinaryHeap::new(), 0)),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("llmload-timer".into())
            .spawn(move || run(s))
            .expect("spawning the timer thread");
        Self { shared }
    }

    /// A future that completes at `at` (a `std::time::Instant`).
    pub fn sleep_until(&self, at: Instant) -> Sleep {
        Sleep {
            at,
            shared: self.shared.clone(),
            waker: None,
        }
    }
}

impl Drop for PreciseTimer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.cond.notify_all();
    }
}

pub struct Sleep {
    at: Instant,
    shared: Arc<Shared>,
    waker: Option<Arc<AtomicWaker>>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A stopped timer will never wake it again: done.
        if Instant::now() >= self.at || self.shared.stop.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        match &self.waker {
            Some(w) => w.register(cx.waker()),
            None => {
                let w = Arc::new(AtomicWaker::new());
                w.register(cx.waker());
                self.waker = Some(w.clone());
                let mut g = self.shared.heap.lock().expect("timer lock");
                let seq = g.1;
                g.1 += 1;
                let earliest = g.0.peek().is_none_or(|Reverse(e)| self.at < e.at);
                g.0.push(Reverse(Entry {
                    at: self.at,
                    seq,
                    waker: w,
                }));
                drop(g);
                if earliest {
                    self.shared.cond.notify_one();
                }
                // Stopped while it was pushed: the thread may have drained
                // the heap before the push and will never wake it.
                if self.shared.stop.load(Ordering::Acquire) {
                    return Poll::Ready(());
                }
            }
        }
        Poll::Pending
    }
}

fn run(shared: Arc<Shared>) {
    // SAFETY: PR_SET_TIMERSLACK affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
    let mut g = shared.heap.lock().expect("timer lock");
    loop {
        if shared.stop.load(Ordering::Acquire) {
            // Wake everyone so no task waits forever on a dead timer.
            while let Some(Reverse(e)) = g.0.pop() {
                e.waker.wake();
            }
            return;
        }
        let now = Instant::now();
        while g.0.peek().is_some_and(|Reverse(e)| e.at <= now) {
            let Reverse(e) = g.0.pop().expect("peeked");
            e.waker.wake();
        }
        g = match g.0.peek() {
            None => shared.cond.wait(g).expect("timer lock"),
            Some(Reverse(e)) => {
                let wait = e.at.saturating_duration_since(Instant::now());
                shared.cond.wait_timeout(g, wait).expect("timer lock").0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Never early, and woken in deadline order whatever the order the
    /// sleeps were made in. How late it fires on a busy machine is the
    /// selftest's business (its TTFT error against the mock's stamps),
    /// not a unit test's: nothing here depends on how fast the machine is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fires_in_deadline_order_and_never_early() {
        use futures_util::StreamExt;
        use futures_util::stream::FuturesUnordered;
        let t = PreciseTimer::new();
        // Far enough ahead that every sleep registers with the timer
        // before its deadline; a first poll that finds one past already
        // proves nothing about the timer and is left out of the order.
        let start = Instant::now() + Duration::from_millis(300);
        let mut sleeps = FuturesUnordered::new();
        for ms in [3u64, 1, 7, 2, 5] {
            let at = start + Duration::from_millis(ms);
            let s = t.sleep_until(at);
            sleeps.push(async move {
                s.await;
                (ms, Instant::now() >= at)
            });
        }
        // One task polls them all: they complete in the order they are
        // woken, which is the timer thread's order.
        let mut order = Vec::new();
        while let Some((ms, on_or_after)) = sleeps.next().await {
            assert!(on_or_after, "the {ms} ms sleep finished early");
            order.push(ms);
        }
        assert_eq!(order, [1, 2, 3, 5, 7]);
        // A deadline in the past is ready at once.
        let past = t.sleep_until(Instant::now() - Duration::from_millis(1));
        assert!(futures_util::FutureExt::now_or_never(past).is_some());
    }

    /// A timer dropped while sleeps wait ends them, rather than leaving
    /// them pending forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_timer_ends_every_waiting_sleep() {
        let t = PreciseTimer::new();
        let far = t.sleep_until(Instant::now() + Duration::from_secs(3600));
        let waiter = tokio::spawn(far);
        tokio::task::yield_now().await;
        drop(t);
        tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("a sleep outlived its timer")
            .unwrap();
    }
}
