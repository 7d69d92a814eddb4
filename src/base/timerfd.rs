//! A sub-millisecond sleep that wakes the task on the runtime's own
//! poller: a Linux `timerfd` registered with tokio's I/O driver.
//!
//! tokio's timer wheel rounds every deadline to whole milliseconds. The
//! [`PreciseTimer`](super::timer::PreciseTimer) thread fixes that for the
//! mock, but each of its wake-ups is a second thread waking a worker: two
//! context switches per deadline. An open-loop level at thousands of
//! sends per second pays that on every send. A timerfd fires inside the
//! `epoll_wait` the worker already sleeps in, so the send costs one wake,
//! and the send runs on the thread that woke (no hand-over). The kernel's
//! hrtimer behind it has no timer slack: it fires within microseconds.
//!
//! One [`Deadline`] serves one task, one deadline at a time (a pacer).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A timerfd on the current runtime's I/O driver.
pub struct Deadline {
    fd: AsyncFd<OwnedFd>,
}

impl Deadline {
    /// A timer on the current runtime (call inside it).
    pub fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create takes two integer flags and returns a new
        // descriptor or -1; the descriptor is owned by the OwnedFd below.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd stays open, and is the same descriptor,
        // for as long as the AsyncFd that owns it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Sleep until `at`; at once when it has passed.
    pub async fn sleep_until(&mut self, at: Instant) -> io::Result<()> {
        let now = Instant::now();
        if at <= now {
            return Ok(());
        }
        arm(self.fd.as_raw_fd(), at - now)?;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            if n == 8 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            ready.clear_ready();
            // Woken with nothing to read (readiness from an earlier
            // deadline): wait again unless the time has come anyway.
            if Instant::now() >= at {
                disarm(self.fd.as_raw_fd())?;
                return Ok(());
            }
        }
    }
}

/// Arm the timer to fire once, `after` from now (relative to
/// CLOCK_MONOTONIC, the clock of `std::time::Instant` on Linux).
fn arm(fd: RawFd, after: Duration) -> io::Result<()> {
    // A zero it_value disarms: ask for at least one nanosecond.
    let after = after.max(Duration::from_nanos(1));
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        },
    };
    settime(fd, &spec)
}

fn disarm(fd: RawFd) -> io::Result<()> {
    // SAFETY: an all-zero itimerspec is a valid "disarm" value.
    let spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    settime(fd, &spec)
}

fn settime(fd: RawFd, spec: &libc::itimerspec) -> io::Result<()> {
    // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
    let r = unsafe { libc::timerfd_settime(fd, 0, spec, std::ptr::null_mut()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Never early, whatever the order of deadlines; a past one is at once;
    /// a timer re-armed many times keeps working. How late it fires is the
    /// selftest's business (lag and TTFT error), not a unit test's.
    #[tokio::test(flavor = "current_thread")]
    async fn never_early_and_reusable() {
        let mut d = Deadline::new().expect("timerfd");
        for us in [300u64, 50, 1_000, 0, 10, 2_000] {
            let at = Instant::now() + Duration::from_micros(us);
            d.sleep_until(at).await.unwrap();
            assert!(Instant::now() >= at, "woke before a {us} µs deadline");
        }
        let past = Instant::now() - Duration::from_millis(5);
        d.sleep_until(past).await.unwrap();
        // Many short deadlines in a row: none is lost (a lost one hangs,
        // and the test's own timeout would say so).
        let t0 = Instant::now();
        for i in 1..=200u64 {
            d.sleep_until(t0 + Duration::from_micros(20 * i))
                .await
                .unwrap();
        }
        assert!(Instant::now() >= t0 + Duration::from_micros(4_000));
    }

    /// Abandoning a sleep (a select that took another branch) leaves the
    /// timer usable for the next deadline.
    #[tokio::test(flavor = "current_thread")]
    async fn an_abandoned_sleep_does_not_wake_the_next_one_early() {
        let mut d = Deadline::new().expect("timerfd");
        let soon = Instant::now() + Duration::from_millis(1);
        tokio::select! {
            _ = d.sleep_until(Instant::now() + Duration::from_secs(60)) => panic!("a minute passed"),
            _ = tokio::time::sleep_until(soon.into()) => {}
        }
        let at = Instant::now() + Duration::from_millis(3);
        d.sleep_until(at).await.unwrap();
        assert!(Instant::now() >= at);
    }
}
