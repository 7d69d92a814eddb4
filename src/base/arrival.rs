//! When a response's bytes reached this host, not when we got round to
//! reading them: the kernel's receive time of each read (`SO_TIMESTAMPNS`).
//!
//! A client stamps a token when its task reads it. Between the bytes
//! arriving and that read lie a thread's wake-up (100-300 µs on a VM), a
//! worker busy with other streams, or a whole scheduling slice on a
//! loaded machine: all of it was added to TTFT, ITL and E2E, and more of
//! it the busier the client. The kernel stamps every packet as it is
//! received; asking for the stamp costs nothing extra (`recvmsg` instead
//! of `read`). Each read of an HTTP/1.1 connection keeps the stamp of
//! what it read ([`Arrivals`]), and the request stamps each body frame
//! with the arrival of the read that delivered it.
//!
//! Where the kernel gives no stamp (an old kernel, a socket option
//! refused, or the first packets after the first socket asked: the
//! kernel turns stamping on system-wide a moment later), a frame is
//! stamped when it is read, as before. HTTP/2 shares
//! one connection's reads between streams, so its frames are stamped when
//! read too.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A stamp older than this is not believed (the wall clock was stepped
/// between the packet and the read): the frame is stamped when read.
const OLDEST: Duration = Duration::from_secs(10);

/// The kernel's receive time of what a connection read last (wall clock,
/// ns since the epoch; 0: the read carried none).
#[derive(Debug, Clone, Default)]
pub struct Arrivals(Arc<AtomicU64>);

impl Arrivals {
    /// When the bytes of the last read arrived, on the monotonic clock
    /// (`None`: the read carried no stamp).
    pub fn arrived(&self) -> Option<Instant> {
        monotonic(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, stamp: Option<u64>) {
        self.0.store(stamp.unwrap_or(0), Ordering::Relaxed);
    }
}

/// A wall-clock receive stamp on the monotonic clock (`None` for 0, or
/// a stamp not believed).
fn monotonic(stamp: u64) -> Option<Instant> {
    if stamp == 0 {
        return None;
    }
    // The two clocks read back to back: a thread descheduled between
    // them would date the packet that much too early, so read again.
    let wall = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    };
    for _ in 0..3 {
        let (before, now, after) = (wall(), Instant::now(), wall());
        if after.saturating_sub(before) < 20_000 {
            return back_dated(now, before, stamp);
        }
    }
    None
}

/// One reader's view of [`Arrivals`]: each stamp is turned into an
/// instant once, however many frames its read delivered (a 64-token
/// stream read at once is some 66 frames, and three clock reads each
/// cost 3 % of a request's CPU).
#[derive(Debug, Default)]
pub struct ArrivalReader {
    arrivals: Arrivals,
    /// The last stamp seen, and its instant.
    last: std::cell::Cell<(u64, Option<Instant>)>,
}

impl ArrivalReader {
    pub fn new(arrivals: Arrivals) -> Self {
        Self {
            arrivals,
            last: Default::default(),
        }
    }

    /// As [`Arrivals::arrived`].
    pub fn arrived(&self) -> Option<Instant> {
        let stamp = self.arrivals.0.load(Ordering::Relaxed);
        let (seen, at) = self.last.get();
        if stamp == seen {
            return at;
        }
        let at = monotonic(stamp);
        self.last.set((stamp, at));
        at
    }
}

/// `now` moved back by the age of a packet stamped `stamp_ns` on a wall
/// clock that reads `wall_ns` now. A stamp from the future (a clock
/// stepped back) or older than [`OLDEST`] is not believed.
fn back_dated(now: Instant, wall_ns: u64, stamp_ns: u64) -> Option<Instant> {
    let age = Duration::from_nanos(wall_ns.checked_sub(stamp_ns)?);
    if age > OLDEST {
        return None;
    }
    now.checked_sub(age)
}

/// A TCP stream whose reads keep the kernel's receive stamp.
pub struct StampedTcp {
    tcp: TcpStream,
    arrivals: Arrivals,
    /// The kernel agreed to stamp this socket's packets.
    stamping: bool,
}

impl StampedTcp {
    pub fn new(tcp: TcpStream) -> Self {
        let stamping = enable(&tcp).is_ok();
        Self {
            tcp,
            arrivals: Arrivals::default(),
            stamping,
        }
    }

    /// The stamps of this stream's reads.
    pub fn arrivals(&self) -> Arrivals {
        self.arrivals.clone()
    }
}

/// Ask the kernel to stamp the packets this socket receives.
fn enable(tcp: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and a c_int option value of the
    // size given.
    let r = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One `recvmsg` into `buf`: the bytes read, and the receive stamp (wall
/// clock ns) when the kernel gave one.
fn recv_stamped(
    fd: libc::c_int,
    buf: &mut [std::mem::MaybeUninit<u8>],
) -> io::Result<(usize, Option<u64>)> {
    // Room for one control message carrying a timespec, aligned for it.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` (into `buf`, writable for its length)
    // and at `control`, both alive for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the kernel filled `msg_control` up to `msg_controllen`; the
    // CMSG macros walk only within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

impl AsyncRead for StampedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.stamping {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        }
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            let fd = this.tcp.as_raw_fd();
            // SAFETY: the bytes `recvmsg` reports are written by the
            // kernel before they are marked filled; none are read before.
            let unfilled = unsafe { buf.unfilled_mut() };
            match this
                .tcp
                .try_io(Interest::READABLE, || recv_stamped(fd, unfilled))
            {
                Ok((n, stamp)) => {
                    // SAFETY: `recvmsg` initialised the first `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    if n > 0 {
                        this.arrivals.set(stamp);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for StampedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_stamp_moves_now_back_by_its_age_and_a_bad_one_does_not() {
        let now = Instant::now();
        let ms = |n: u64| n * 1_000_000;
        assert_eq!(
            back_dated(now, ms(5_000), ms(4_998)),
            Some(now - Duration::from_millis(2))
        );
        // From the future: the wall clock was stepped back.
        assert_eq!(back_dated(now, ms(5_000), ms(5_001)), None);
        // Older than believable.
        assert_eq!(back_dated(now, ms(60_000), ms(1_000)), None);
    }

    /// A real socket pair on 127.0.0.1: bytes read 30 ms after they were
    /// sent are dated to their arrival, not to the read.
    #[tokio::test]
    async fn bytes_read_late_are_dated_when_they_arrived() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        let mut client = StampedTcp::new(client.unwrap());
        assert!(client.stamping, "the kernel stamps loopback packets");
        let (mut server, _) = server.unwrap();
        let arrivals = client.arrivals();
        // The kernel turns stamping on for the whole system a moment
        // after the first socket asks (deferred work): packets received
        // before then carry no stamp. Wait until one does.
        let mut buf = [0u8; 64];
        let mut tries = 0;
        loop {
            server.write_all(b"x").await.unwrap();
            client.read_exact(&mut buf[..1]).await.unwrap();
            if arrivals.arrived().is_some() {
                break;
            }
            tries += 1;
            assert!(tries < 1000, "no read was ever stamped");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let sent = Instant::now();
        server.write_all(b"data: {}\n\n").await.unwrap();
        // Whatever the machine does meanwhile, the read comes at least
        // 30 ms after the bytes were written.
        tokio::time::sleep(Duration::from_millis(30)).await;
        client.read_exact(&mut buf[..10]).await.unwrap();
        let read_at = Instant::now();
        assert_eq!(&buf[..10], b"data: {}\n\n");
        let arrived = arrivals.arrived().expect("a stamped read");
        assert!(
            arrived + Duration::from_millis(1) >= sent,
            "arrived {:?} before it was sent",
            sent - arrived
        );
        assert!(
            read_at - arrived >= Duration::from_millis(29),
            "dated {:?} before the read, not to its arrival",
            read_at - arrived
        );
        // Bytes that go on arriving get their own stamps.
        server.write_all(b"more").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before = Instant::now();
        client.read_exact(&mut buf[..4]).await.unwrap();
        let again = arrivals.arrived().expect("a stamped read");
        assert!(again <= before && again > arrived);
    }
}
