//! A connection pool for one origin, written for measuring: it knows, for
//! every request, whether its connection was new or reused, how long
//! opening it took, and how long the request waited for one. A general
//! pool (hyper-util's) hides all three, and cannot tell a request that
//! died on a stale kept-alive connection from one the server refused.
//!
//! * HTTP/1.1: one request per connection at a time; idle connections
//!   are kept (most recently used first) until the server's advertised
//!   `Keep-Alive` timeout, less a margin, or our own `--pool-idle-timeout`.
//! * HTTP/2 (by ALPN): requests share connections up to the server's
//!   stream limit; when every stream is taken a new connection is opened,
//!   so requests never queue inside the client for a stream slot. One
//!   connection is opened at a time; requests that wait for it count the
//!   wait as pool wait.
//! * A server that keeps closing connections right after their first
//!   response (see [`CloseDetector`]) gets no reuse at all: each request
//!   opens its own connection and says `Connection: close`.
//! * A client behind its schedule does not open its way out: a request
//!   sent more than [`LATE`] after its planned instant, finding no idle
//!   connection, waits for a busy one to be handed over (oldest waiter
//!   first). It opens one only when the whole queue has stood still, no
//!   connection handed over to anyone, for [`LATE_WAIT_FACTOR`] times as
//!   long as it is already late (at least 20 ms, at most
//!   [`LATE_REUSE_WAIT`]). Its lateness is the client's own (the send is
//!   late, not the server), so while connections keep coming back, more
//!   of them would not serve it sooner: they would pile up as streams the
//!   busy client reads ever later, and hit the server as a connect storm.
//!   A queue that stands still is the other case: a server whose streams
//!   are all long, after a hiccup of the client; then it opens. A client
//!   far behind waits its turn, and its level is flagged anyway. The wait
//!   counts as pool wait, and the request as held back.
//! * The same holds for a request sent on time while every worker of the
//!   runtime is busy ([`super::saturation`]) and connections are coming
//!   back every moment ([`CYCLING`]): such a client reads each stream
//!   late, so its connections stay busy on its account, not the server's,
//!   while its sends (one short poll each) still go out on time. It waits
//!   only while they keep coming back that often: against streams that
//!   last (an LLM's), an on-time request never waits, so a burst in a
//!   replay still reaches the server when the trace says.
//! * No connect storms: at most [`MAX_CONNECTING`] HTTP/1.1 connections
//!   open at once. A request that finds none idle and no connect slot free
//!   waits for whichever comes first, a connection given back or a slot.
//!   A client that falls behind (a burst of late sends) then reuses what
//!   the server frees instead of opening thousands of connections that
//!   overflow its listen backlog; it is still flagged client-bound. Idle
//!   connections are kept up to [`MAX_IDLE`], far above any live
//!   concurrency, so that a high rate does not churn them.

use super::connect::{self, ConnectError, Origin};
use crate::client::keepalive::{CloseDetector, ServerKeepAlive, idle_limit};
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

pub type Body = Full<Bytes>;

/// Reads are made into a fixed 16 KiB buffer per connection (hyper's
/// adaptive buffer grows to hundreds of KB): memory follows the live
/// concurrency, not the longest burst ever seen.
const READ_BUF: usize = 16 * 1024;

/// HTTP/1.1 connects in flight at most (see the module's doc).
pub const MAX_CONNECTING: usize = 256;
/// A request sent this late (the client behind its schedule) waits for a
/// connection to come back before it opens one: see [`Pool::checkout`].
pub const LATE: Duration = Duration::from_millis(5);
/// The longest a late request waits with no connection handed over to
/// anyone; then it opens one (a server whose streams are all long gives
/// none back soon).
pub const LATE_REUSE_WAIT: Duration = Duration::from_secs(1);
/// A late request waits with no connection handed over for this many
/// times as long as it is already late (from `LATE` × this, at most
/// [`LATE_REUSE_WAIT`]).
pub const LATE_WAIT_FACTOR: u32 = 4;
/// A request sent on time while the client is at its CPU limit waits for
/// a busy connection only if one came back this recently, and only while
/// they keep coming back this often.
pub const CYCLING: Duration = Duration::from_millis(2);
/// Idle HTTP/1.1 connections kept at most.
pub const MAX_IDLE: usize = 8192;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub connect_timeout: Duration,
    /// Connections go through this proxy (see [`connect::open`]).
    pub proxy: Option<super::proxy::Proxy>,
    /// Longest an idle connection is kept (shortened further by a
    /// server's `Keep-Alive: timeout`).
    pub idle_timeout: Duration,
    /// Idle HTTP/1.1 connections kept at most.
    pub max_idle: usize,
}

struct IdleH1 {
    tx: http1::SendRequest<Body>,
    driver: Driver,
    id: u64,
    served: u32,
    expires: Instant,
}

struct H2Conn {
    tx: http2::SendRequest<Body>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS, as last seen.
    limit: Arc<AtomicUsize>,
    id: u64,
    in_flight: AtomicUsize,
    served: AtomicU32,
}

/// A taken HTTP/2 stream slot; given back on drop, whatever happens to
/// the request.
pub struct H2Slot(Arc<H2Conn>);

impl Drop for H2Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub enum Sender {
    H1(http1::SendRequest<Body>, Driver),
    H2(http2::SendRequest<Body>, H2Slot),
}

/// An HTTP/1.1 connection's own future (hyper's dispatcher: it reads the
/// socket, writes requests, feeds response bodies).
type H1Conn = http1::Connection<TokioIo<connect::Stream>, Body>;

/// The HTTP/1.1 connection future, polled by the request that holds the
/// connection rather than by a task of its own.
///
/// With a task per connection, every read of a response crossed two
/// tasks: the connection's task read the socket and woke the request's
/// task through hyper's body channel, which woke the connection's task
/// for the next read, often on the other worker thread. Driven here, a
/// response's bytes go from the socket to the SSE decoder in the one
/// task that waits for them. An idle connection is not polled; the
/// kernel keeps its readiness, and [`Driver::check`] reads a close the
/// server sent meanwhile before the connection is lent again.
pub struct Driver {
    conn: Option<std::pin::Pin<Box<H1Conn>>>,
    /// When the bytes of its last read arrived.
    arrivals: crate::base::arrival::ArrivalReader,
    /// Counts the connection as open until it is dropped.
    _live: Live,
}

/// One HTTP/1.1 connection counted as open while it lives.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Driver {
    fn new(
        conn: H1Conn,
        live: &Arc<AtomicUsize>,
        arrivals: crate::base::arrival::Arrivals,
    ) -> Self {
        Self {
            conn: Some(Box::pin(conn)),
            arrivals: crate::base::arrival::ArrivalReader::new(arrivals),
            _live: Live::new(live),
        }
    }

    /// Poll the connection once; it is dropped once it has ended.
    fn poll_conn(&mut self, cx: &mut std::task::Context<'_>) {
        if let Some(c) = &mut self.conn
            && c.as_mut().poll(cx).is_ready()
        {
            self.conn = None;
        }
    }

    /// Await `f` (a response or a body frame of this connection) while
    /// driving the connection.
    pub async fn drive<F: Future>(&mut self, f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| {
            self.poll_conn(cx);
            f.as_mut().poll(cx)
        })
        .await
    }

    /// Let the connection catch up with what already happened (a
    /// response read to its end, a close from the server) without
    /// waiting: it is then ready for the next request, or ended.
    fn check(&mut self) {
        self.poll_conn(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    }
}

/// A connection lent to one request.
pub struct Lease {
    pub sender: Sender,
    pub id: u64,
    /// Responses this connection carried before this request.
    pub served: u32,
    /// Opened for this request: DNS + TCP + TLS took this long.
    pub opened: Option<Duration>,
    /// Waited for another request's connection to open (HTTP/2).
    pub waited: Duration,
    /// Say `Connection: close` (reuse is off for this server).
    pub close: bool,
}

impl Lease {
    pub fn reused(&self) -> bool {
        self.served > 0
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(..))
    }

    /// When the bytes the connection read last reached this host: a body
    /// frame just read is stamped with it (see [`crate::base::arrival`]).
    /// `None` for HTTP/2, whose reads are shared between streams, and
    /// where the kernel gave no stamp.
    pub fn arrived(&self) -> Option<Instant> {
        match &self.sender {
            Sender::H1(_, driver) => driver.arrivals.arrived().map(Instant::from_std),
            Sender::H2(..) => None,
        }
    }

    /// Await `f` (this connection's response or body), driving an
    /// HTTP/1.1 connection meanwhile (HTTP/2's runs in its own task).
    pub async fn drive<F: Future>(&mut self, f: F) -> F::Output {
        match &mut self.sender {
            Sender::H1(_, driver) => driver.drive(f).await,
            Sender::H2(..) => f.await,
        }
    }
}

pub struct Pool {
    origin: Origin,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    cfg: PoolConfig,
    idle: Mutex<Vec<IdleH1>>,
    h2: Mutex<Vec<Arc<H2Conn>>>,
    h2_connecting: tokio::sync::Mutex<()>,
    /// The server negotiated HTTP/2 on a connection: share connections.
    h2_seen: AtomicBool,
    /// False once the server is seen to close after every response.
    reuse: AtomicBool,
    detector: Mutex<CloseDetector>,
    next_id: AtomicU64,
    notices: Mutex<Vec<String>>,
    /// HTTP/1.1 connects in flight ([`MAX_CONNECTING`] permits).
    connecting: Arc<tokio::sync::Semaphore>,
    /// A connection was given back to the idle list.
    returned: tokio::sync::Notify,
    /// Requests that waited for a connection instead of opening one:
    /// every connect slot was taken, or the request was late.
    held_back: AtomicU64,
    /// HTTP/1.1 connections open (lent or idle).
    live: Arc<AtomicUsize>,
    /// A request found every connect slot taken (said once).
    connect_capped: AtomicBool,
    /// Late requests waiting for a connection to be handed over, oldest
    /// first (see [`Pool::checkout`]).
    waiters: Mutex<std::collections::VecDeque<tokio::sync::oneshot::Sender<IdleH1>>>,
    /// When a connection was last given back, to a waiter or the idle
    /// list (ns since `epoch`): the queue still moves.
    last_return: AtomicU64,
    epoch: Instant,
    /// Whether the client is at its CPU limit.
    saturation: super::saturation::Saturation,
}

impl Pool {
    pub fn new(
        origin: Origin,
        tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
        cfg: PoolConfig,
    ) -> Self {
        Self {
            origin,
            tls,
            cfg,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(Vec::new()),
            h2_connecting: tokio::sync::Mutex::new(()),
            h2_seen: AtomicBool::new(false),
            reuse: AtomicBool::new(true),
            detector: Mutex::new(CloseDetector::default()),
            next_id: AtomicU64::new(1),
            notices: Mutex::new(Vec::new()),
            connecting: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTING)),
            returned: tokio::sync::Notify::new(),
            held_back: AtomicU64::new(0),
            live: Arc::new(AtomicUsize::new(0)),
            connect_capped: AtomicBool::new(false),
            waiters: Mutex::new(std::collections::VecDeque::new()),
            last_return: AtomicU64::new(0),
            epoch: Instant::now(),
            saturation: Default::default(),
        }
    }

    /// Requests so far that waited for a connect slot (see the module's
    /// doc): a client that fell behind.
    pub fn held_back(&self) -> u64 {
        self.held_back.load(Ordering::Relaxed)
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Whether connections are reused (false once the server was seen to
    /// close after every response).
    pub fn reusing(&self) -> bool {
        self.reuse.load(Ordering::Relaxed)
    }

    /// Things the user should know about this endpoint's connections,
    /// each said once: reuse turned off, TLS failure reasons.
    pub fn notices(&self) -> Vec<String> {
        self.notices.lock().expect("notices lock").clone()
    }

    /// Log `text` and keep it for the report, unless already said.
    pub fn notice_once(&self, text: String) {
        let mut n = self.notices.lock().expect("notices lock");
        if !n.contains(&text) {
            tracing::warn!("{text}");
            n.push(text);
        }
    }

    /// Open up to `n` connections ahead and keep them idle, so that the
    /// first burst of a replay does not wait for connects. Returns how many
    /// opened (stops at the first failure: the requests will report it).
    /// One is enough for HTTP/2, which shares it.
    pub async fn prewarm(&self, n: usize) -> usize {
        let mut opened = Vec::new();
        for _ in 0..n.min(self.cfg.max_idle.max(1)) {
            match self.open(Duration::ZERO).await {
                Ok(l) if l.is_h2() => return opened.len() + 1,
                Ok(l) => opened.push(l),
                Err(_) => break,
            }
        }
        let count = opened.len();
        let expires = Instant::now() + self.cfg.idle_timeout;
        let mut idle = self.idle.lock().expect("idle lock");
        for l in opened {
            if let Sender::H1(tx, driver) = l.sender {
                idle.push(IdleH1 {
                    tx,
                    driver,
                    id: l.id,
                    served: 0,
                    expires,
                });
            }
        }
        count
    }

    /// A connection for one request. `fresh` forces a new connection (the
    /// retry after a stale one); `late`: how late the request is sent,
    /// when more than [`LATE`] after its planned instant (see the
    /// module's doc).
    pub async fn checkout(
        &self,
        fresh: bool,
        late: Option<Duration>,
    ) -> Result<Lease, ConnectError> {
        let t0 = Instant::now();
        if self.h2_seen.load(Ordering::Relaxed) {
            if !fresh && let Some(l) = self.h2_take(Duration::ZERO) {
                return Ok(l);
            }
            // One connection opens at a time; the others wait for it
            // rather than each opening their own.
            let _opening = self.h2_connecting.lock().await;
            if !fresh && let Some(l) = self.h2_take(t0.elapsed()) {
                return Ok(l);
            }
            let waited = t0.elapsed();
            return self.open(waited).await;
        }
        let mut counted = false;
        let mut stood_still = false;
        loop {
            // Armed before looking, so a connection given back meanwhile
            // is not missed.
            let returned = self.returned.notified();
            if !fresh && self.reusing() {
                while let Some(l) = self.h1_take().await {
                    if let Some(mut l) = l {
                        l.waited = t0.elapsed();
                        return Ok(l);
                    }
                }
            }
            // None idle: a late request, or any while the client is at
            // its CPU limit, waits for one of the busy ones while the
            // queue moves at least this often.
            let patience = if fresh
                || stood_still
                || !self.reusing()
                || self.live.load(Ordering::Relaxed) == 0
            {
                None
            } else if let Some(lag) = late {
                Some((lag * LATE_WAIT_FACTOR).clamp(LATE * LATE_WAIT_FACTOR, LATE_REUSE_WAIT))
            } else {
                // On time: wait only where connections come back every
                // moment anyway, so the wait is one of microseconds.
                (self.since_return() < CYCLING && self.saturation.saturated()).then_some(CYCLING)
            };
            if let Some(p) = patience {
                if !counted {
                    counted = true;
                    self.held_back.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(mut l) = self.await_handover(p).await {
                    l.waited = t0.elapsed();
                    return Ok(l);
                }
                // The queue stood still: open one.
                stood_still = true;
                continue;
            }
            if let Ok(slot) = self.connecting.clone().try_acquire_owned() {
                let r = self.open(t0.elapsed()).await;
                drop(slot);
                return r;
            }
            if !counted {
                counted = true;
                self.held_back.fetch_add(1, Ordering::Relaxed);
                if !self.connect_capped.swap(true, Ordering::Relaxed) {
                    self.notice_once(format!(
                        "{MAX_CONNECTING} connections were opening at once: later requests waited for a connection to come back or a connect slot, instead of opening more (the client fell behind its schedule)"
                    ));
                }
            }
            tokio::select! {
                _ = returned => {}
                slot = self.connecting.clone().acquire_owned() => {
                    let Ok(slot) = slot else { continue };
                    // A connection may have come back while we waited.
                    if !fresh && self.reusing() {
                        while let Some(l) = self.h1_take().await {
                            if let Some(mut l) = l {
                                l.waited = t0.elapsed();
                                return Ok(l);
                            }
                        }
                    }
                    let r = self.open(t0.elapsed()).await;
                    drop(slot);
                    return r;
                }
            }
        }
    }

    /// The most recently used idle connection that is still good.
    /// `Some(None)`: one was discarded, look again; `None`: none left.
    async fn h1_take(&self) -> Option<Option<Lease>> {
        let now = Instant::now();
        let c = {
            let mut idle = self.idle.lock().expect("idle lock");
            // Oldest first: drop what has outlived its idle limit.
            let stale = idle.iter().take_while(|c| c.expires <= now).count();
            idle.drain(..stale);
            idle.pop()?
        };
        Some(self.lend(c).await)
    }

    /// Lend an idle connection if it is still good (`None`: it was not,
    /// and is dropped).
    async fn lend(&self, mut c: IdleH1) -> Option<Lease> {
        // Read what the server did while it was idle (a close).
        c.driver.check();
        if c.tx.is_closed() {
            self.server_closed(c.served);
            return None;
        }
        if !c.tx.is_ready() {
            // Not caught up with its last response yet: give it a moment.
            let IdleH1 { tx, driver, .. } = &mut c;
            let ready = driver.drive(tx.ready());
            match tokio::time::timeout(Duration::from_millis(5), ready).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    self.server_closed(c.served);
                    return None;
                }
                Err(_) => return None,
            }
        }
        Some(Lease {
            sender: Sender::H1(c.tx, c.driver),
            id: c.id,
            served: c.served,
            opened: None,
            waited: Duration::ZERO,
            close: false,
        })
    }

    fn returned_now(&self) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.last_return.fetch_max(now, Ordering::Relaxed);
    }

    /// How long ago a connection was last given back.
    fn since_return(&self) -> Duration {
        let last = Duration::from_nanos(self.last_return.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Wait for a connection handed over at its release (in the order the
    /// waiters came), rather than racing every new request for the idle
    /// list, for as long as the queue moves: `None` once no connection was
    /// handed over to anyone for `patience`.
    async fn await_handover(&self, patience: Duration) -> Option<Lease> {
        let mut until = Instant::now() + patience;
        loop {
            let (tx, mut rx) = tokio::sync::oneshot::channel();
            {
                let mut w = self.waiters.lock().expect("waiters lock");
                // Waiters that gave up leave a closed sender behind.
                if w.len() >= 64 && w.len().is_power_of_two() {
                    w.retain(|s| !s.is_closed());
                }
                w.push_back(tx);
            }
            let c = loop {
                match tokio::time::timeout_at(until, &mut rx).await {
                    Ok(Ok(c)) => break c,
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        let since = self.since_return();
                        if since < patience {
                            until = Instant::now() + (patience - since);
                            continue;
                        }
                        // Given up; one handed over meanwhile is still ours.
                        rx.close();
                        match rx.try_recv() {
                            Ok(c) => break c,
                            Err(_) => return None,
                        }
                    }
                }
            };
            if let Some(l) = self.lend(c).await {
                return Some(l);
            }
            // That one had closed: back in line (at the end).
            until = Instant::now() + patience;
        }
    }

    /// A stream slot on an open HTTP/2 connection with room.
    fn h2_take(&self, waited: Duration) -> Option<Lease> {
        let mut conns = self.h2.lock().expect("h2 lock");
        conns.retain(|c| !c.tx.is_closed());
        for c in conns.iter() {
            let limit = c.limit.load(Ordering::Relaxed).max(1);
            let n = c.in_flight.fetch_add(1, Ordering::AcqRel);
            if n < limit {
                let served = c.served.fetch_add(1, Ordering::AcqRel);
                return Some(Lease {
                    sender: Sender::H2(c.tx.clone(), H2Slot(c.clone())),
                    id: c.id,
                    served,
                    opened: None,
                    waited,
                    close: false,
                });
            }
            c.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        None
    }

    /// Open a new connection and lend it.
    async fn open(&self, waited: Duration) -> Result<Lease, ConnectError> {
        let opened = connect::open(
            &self.origin,
            self.tls.as_ref(),
            self.cfg.connect_timeout,
            self.cfg.proxy.as_ref(),
        )
        .await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let arrivals = opened.stream.arrivals();
        let io = TokioIo::new(opened.stream);
        let handshake_failed = |e: hyper::Error| ConnectError {
            kind: super::classify::classify(&e),
            detail: format!("HTTP handshake: {e}"),
        };
        if opened.h2 {
            self.h2_seen.store(true, Ordering::Relaxed);
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(handshake_failed)?;
            // The stream limit lives on the connection future, which runs
            // in its own task: publish it after every poll.
            let limit = Arc::new(AtomicUsize::new(conn.current_max_send_streams()));
            let published = limit.clone();
            let mut conn = Box::pin(conn);
            tokio::spawn(std::future::poll_fn(move |cx| {
                let r = conn.as_mut().poll(cx);
                published.store(conn.current_max_send_streams(), Ordering::Relaxed);
                r.map(|_| ())
            }));
            let c = Arc::new(H2Conn {
                tx: tx.clone(),
                limit,
                id,
                in_flight: AtomicUsize::new(1),
                served: AtomicU32::new(1),
            });
            self.h2.lock().expect("h2 lock").push(c.clone());
            return Ok(Lease {
                sender: Sender::H2(tx, H2Slot(c)),
                id,
                served: 0,
                opened: Some(opened.took),
                waited,
                close: false,
            });
        }
        let (tx, conn) = http1::Builder::new()
            .read_buf_exact_size(Some(READ_BUF))
            .handshake(io)
            .await
            .map_err(handshake_failed)?;
        Ok(Lease {
            sender: Sender::H1(tx, Driver::new(conn, &self.live, arrivals)),
            id,
            served: 0,
            opened: Some(opened.took),
            waited,
            close: !self.reusing(),
        })
    }

    /// Give a connection back after its response. `keep` is what the
    /// response said about the connection, when it ended cleanly (body
    /// read to its end); `None` closes it.
    pub fn release(&self, lease: Lease, keep: Option<ServerKeepAlive>) {
        let Sender::H1(tx, mut driver) = lease.sender else {
            return; // HTTP/2: dropping the slot gives it back.
        };
        let served = lease.served + 1;
        if served >= 2 {
            self.detector.lock().expect("detector lock").reused_ok();
        }
        let Some(ka) = keep else {
            return;
        };
        if !ka.reusable() || lease.close {
            if ka.close && !lease.close {
                self.server_closed(served);
            }
            return;
        }
        if !self.reusing() {
            return;
        }
        let limit = idle_limit(self.cfg.idle_timeout, ka.timeout);
        if limit.is_zero() {
            return;
        }
        // Its dispatcher goes back to idle: ready for the next request.
        driver.check();
        if driver.conn.is_none() {
            return;
        }
        let mut c = IdleH1 {
            tx,
            driver,
            id: lease.id,
            served,
            expires: Instant::now() + limit,
        };
        // A late request waiting for one gets it first.
        loop {
            let Some(w) = self.waiters.lock().expect("waiters lock").pop_front() else {
                break;
            };
            match w.send(c) {
                Ok(()) => {
                    self.returned_now();
                    return;
                }
                Err(back) => c = back,
            }
        }
        {
            let mut idle = self.idle.lock().expect("idle lock");
            if idle.len() >= self.cfg.max_idle.max(1) {
                idle.remove(0);
            }
            idle.push(c);
        }
        self.returned_now();
        self.returned.notify_one();
    }

    /// A request died before any response on a reused connection: the
    /// server had closed it.
    pub fn stale(&self, lease: &Lease) {
        self.server_closed(lease.served);
    }

    fn server_closed(&self, served: u32) {
        let tripped = self
            .detector
            .lock()
            .expect("detector lock")
            .server_closed(served);
        if tripped {
            self.reuse.store(false, Ordering::Relaxed);
            self.idle.lock().expect("idle lock").clear();
            self.notice_once(format!(
                "the server closed {} connections in a row right after their first response: \
                 connections to it are no longer reused (each request opens its own)",
                crate::client::keepalive::CLOSE_STREAK
            ));
        }
    }
}
