//! The pacer: the task that owns the clock of an open-loop level. It
//! sleeps to each planned instant on a timerfd registered with the
//! poller of the runtime it runs on ([`Deadline`]), not on tokio's timer,
//! whose 1 ms wheel would add up to a millisecond of lag to every send.
//!
//! Where it runs is a trade between cost and isolation ([`Spawner`]):
//! * from [`TASK_PACER_FROM`] req/s, the pacer is a task on the level's
//!   runtime: the timerfd wakes the worker that then makes the send, one
//!   wake per send and no hand-over between threads. This took the rate
//!   one client holds from 16,000 to 24,000-28,000 req/s (2 cores), and
//!   the CPU a send costs is what limits a fast level. Where the runtime
//!   has two workers or more, the pacer and the requests it starts run
//!   on the lead thread until it is busy ([`super::lead`]): one thread
//!   doing all the work costs a third less CPU per request than two;
//! * below it, and for every trace replay, the pacer has a thread of its
//!   own (raised priority) and hands its sends to the runtime's shared
//!   queue, where any idle worker takes them. There the extra wake per
//!   send costs nothing that matters, and the pacer is isolated from the
//!   rest of the process: a long poll of some request (a debug build, a
//!   daemon running a soak beside the sweep) never delays a send, and a
//!   burst of lines due at once goes out on every worker in parallel. A
//!   replay's prompts are made on another thread, ahead of their sends.
//!
//! A send waits for the end of its send quantum
//! ([`crate::plan::send_quantum`]; 1 ms on the runtime by default), so a
//! fast level's pacer wakes once per quantum, not once per send. Its lag
//! still counts from its own planned instant.

use super::level::LevelSpec;
use super::request::{Job, TaskCtx, lock, request_task};
use crate::base::timerfd::Deadline;
use crate::client::record::{ErrorKind, RequestRecord};
use crate::plan::load::Load;
use crate::plan::schedule::{Schedule, Shard};
use crate::workload::request::PreparedRequest;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where the sends come from: the level's schedule, computed as it goes,
/// or a replay's lines, made ahead on their own thread. Made before the
/// level's start is fixed (see [`Upcoming::ready`]).
pub(super) struct Upcoming {
    source: Source,
    /// Entries of the global schedule gone through, every shard's.
    total: Arc<AtomicU64>,
    /// Fires once a replay's first prompts are made.
    prepared: Option<tokio::sync::oneshot::Receiver<()>>,
}

enum Source {
    Schedule(Box<dyn Iterator<Item = Pending> + Send>),
    Trace(tokio::sync::mpsc::Receiver<Pending>),
}

impl Upcoming {
    /// The sends of `spec`'s level that this shard makes, in order.
    pub(super) fn new(spec: &LevelSpec, shard: Option<Shard>) -> Self {
        let limit = spec.limit.map_or(usize::MAX, |l| l as usize);
        let total = Arc::new(AtomicU64::new(0));
        let owned = move |i: &usize| shard.is_none_or(|s| s.owns(*i as u64));
        let seen = total.clone();
        let (source, prepared) = match &spec.load {
            // A replay's prompts are made on their own thread, up to
            // [`PREPARE_AHEAD`] ahead, so that making one never delays a
            // send and a burst of lines due at once goes out back to back.
            Load::Trace(r) => {
                let (tx, rx) = tokio::sync::mpsc::channel::<Pending>(PREPARE_AHEAD);
                let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
                let (r, window) = (r.clone(), spec.duration);
                std::thread::Builder::new()
                    .name("llmload-prompts".into())
                    .spawn(move || {
                        let mut ready = Some(ready_tx);
                        let lines = r
                            .arrivals()
                            .take_while(|(d, _)| window.is_none_or(|w| *d < w))
                            .take(limit)
                            .enumerate();
                        for (i, (offset, line)) in lines {
                            seen.store(i as u64 + 1, Ordering::Relaxed);
                            if !owned(&i) {
                                continue;
                            }
                            let ready_line = Some((r.request(line), r.trace.entries[line].at_us));
                            // The pacer gone (stopped): nothing more to make.
                            if tx
                                .blocking_send(Pending {
                                    i,
                                    offset,
                                    ready: ready_line,
                                })
                                .is_err()
                            {
                                return;
                            }
                            if tx.capacity() == 0
                                && let Some(r) = ready.take()
                            {
                                let _ = r.send(());
                            }
                        }
                        // The end of the lines (dropping `ready`) is ready too.
                    })
                    .expect("spawning the prompt thread");
                (Source::Trace(rx), Some(ready_rx))
            }
            load => {
                let schedule = match load {
                    Load::Curve(c) => {
                        Schedule::with_curve(c, spec.duration, spec.arrival, spec.seed)
                    }
                    _ => Schedule::new(spec.qps, spec.duration, spec.arrival, spec.seed),
                };
                let it = schedule
                    .take(limit)
                    .enumerate()
                    .inspect(move |(i, _)| seen.store(*i as u64 + 1, Ordering::Relaxed))
                    .filter(move |(i, _)| owned(i))
                    .map(|(i, offset)| Pending {
                        i,
                        offset,
                        ready: None,
                    });
                (Source::Schedule(Box::new(it)), None)
            }
        };
        Self {
            source,
            total,
            prepared,
        }
    }

    /// Returns once a replay's first [`PREPARE_AHEAD`] prompts (or all of
    /// them) are made. The level's start is fixed after it: a replay
    /// opening on a burst of long prompts (made slowly by a debug build,
    /// or beside a busy process) would otherwise send its first lines
    /// late for want of their prompts.
    pub(super) async fn ready(&mut self) {
        if let Some(r) = self.prepared.take() {
            let _ = r.await;
        }
    }

    async fn next(&mut self) -> Option<Pending> {
        match &mut self.source {
            Source::Schedule(it) => it.next(),
            Source::Trace(rx) => rx.recv().await,
        }
    }
}

/// What a pacer is given: the level, where its sends come from, and the
/// tokens that stop it.
pub(super) struct Pacing {
    pub ctx: Arc<TaskCtx>,
    pub upcoming: Upcoming,
    /// In-flight requests at most: a send past it is dropped.
    pub max_in_flight: usize,
    /// The sequence number of the level's first request.
    pub first_seq: u64,
    /// Ends the send window.
    pub stop: CancellationToken,
    /// Ends everything.
    pub cancel: CancellationToken,
    /// Sends go at the first multiple of this at or after their instant
    /// (see [`crate::plan::send_quantum`]); zero: each at its own.
    pub quantum: Duration,
}

/// Sleeps to a send's instant: on a timerfd when the system has one to
/// give (else on tokio's timer, to the millisecond).
struct Clock(Option<Deadline>);

impl Clock {
    fn new() -> Self {
        Self(Deadline::new().ok())
    }

    async fn sleep_until(&mut self, at: std::time::Instant) {
        match &mut self.0 {
            Some(d) => {
                if d.sleep_until(at).await.is_err() {
                    self.0 = None;
                    tokio::time::sleep_until(at.into()).await;
                }
            }
            None => tokio::time::sleep_until(at.into()).await,
        }
    }
}

/// From this rate (req/s) a level's pacer is a task on its runtime;
/// below it, a thread of its own (see the module's doc).
pub const TASK_PACER_FROM: f64 = 2000.0;

/// Where the pacer starts its requests.
pub(super) enum Spawner {
    /// On the worker the pacer runs on, behind the work already queued
    /// there (a task spawned on a worker would otherwise run next): a
    /// client with a backlog then sends late, and says so, instead of
    /// sending on time and reading every response late.
    Local,
    /// From the pacer's own thread into the runtime's shared queue.
    Remote(tokio::runtime::Handle),
    /// On the lead thread the pacer runs on, as [`Self::Local`], while
    /// the lead is not busy; else into the level's runtime's shared queue
    /// (see [`super::lead`]). Made on the lead: it judges the runtime it
    /// is made on.
    Lead {
        spill: super::lead::Spill,
        level: tokio::runtime::Handle,
    },
}

/// Spawn `f` on this thread's runtime, behind the work already queued
/// (see [`Spawner::Local`]).
fn spawn_behind<F: std::future::Future<Output = ()> + Send + 'static>(f: Pin<Box<F>>) {
    tokio::spawn(async move {
        tokio::task::yield_now().await;
        f.await
    });
}

impl Spawner {
    /// Takes the request boxed. A request's future is 4.6 kB (the client's
    /// exchange, nested); unboxed, it was copied whole at each hand-over
    /// on its way into its task (into [`Self::Local`]'s wrapper, then into
    /// tokio's task cell): `memmove` was 7.8 % of the workers' CPU at
    /// 10,000 req/s. Boxed where it is made, it is copied once and then
    /// only a pointer moves (`memmove` under 0.2 %).
    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: Pin<Box<F>>) {
        match self {
            Self::Local => spawn_behind(f),
            Self::Remote(h) => {
                h.spawn(f);
            }
            Self::Lead { spill, level } => {
                if spill.now() {
                    level.spawn(f);
                } else {
                    spawn_behind(f);
                }
            }
        }
    }
}

/// Run `pace` on a thread of its own (its own current-thread runtime, a
/// raised priority), sending through `handle`'s shared queue.
pub(super) fn pace_on_own_thread(
    pacing: Pacing,
) -> tokio::sync::oneshot::Receiver<(Duration, bool, u64)> {
    let handle = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("llmload-pacer".into())
        .spawn(move || {
            raise_priority();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the pacer thread");
            let r = rt.block_on(pace(pacing, Spawner::Remote(handle)));
            let _ = done_tx.send(r);
        })
        .expect("spawning the pacer thread");
    done_rx
}

/// A pacer that wakes late makes every later send late: ask the
/// scheduler to prefer its thread (it sleeps almost all the time, so this
/// costs the machine nothing). Needs CAP_SYS_NICE; best effort.
fn raise_priority() {
    // SAFETY: setpriority on our own thread id only lowers its nice
    // value, and fails harmlessly without the privilege to.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, -10);
    }
}

/// The pacer loop. Returns the offset of the last send, whether it was
/// stopped early, and how many entries of the global schedule it went
/// through (all shards' together).
pub(super) async fn pace(pacing: Pacing, spawner: Spawner) -> (Duration, bool, u64) {
    let Pacing {
        ctx,
        mut upcoming,
        max_in_flight,
        first_seq,
        stop,
        cancel,
        quantum,
    } = pacing;
    let spec = &ctx.spec;
    let mut clock = Clock::new();
    let std_start = ctx.start.into_std();
    // Time spent paused pushes the rest of the schedule back.
    let mut shift = Duration::ZERO;
    let mut last = Duration::ZERO;
    let mut stall = inject_stall(spec.index).zip(spec.duration);
    loop {
        let Some(mut p) = upcoming.next().await else {
            break;
        };
        let (i, offset) = (p.i, p.offset);
        if let Some((pause, length)) = stall
            && offset >= length / 2
        {
            // The test suite's starved client: the pacer is not scheduled.
            tokio::time::sleep(pause).await;
            stall = None;
        }
        // The send waits for its quantum's end; its lag still counts
        // from its own instant (`scheduled_at` below).
        let sent_at = crate::plan::send_quantum::quantize(offset, quantum);
        let mut due = std_start + shift + sent_at;
        loop {
            if stop.is_cancelled() || cancel.is_cancelled() {
                return (last, true, i as u64);
            }
            if ctx.progress.paused.load(Ordering::Acquire) {
                let t0 = std::time::Instant::now();
                while ctx.progress.paused.load(Ordering::Acquire)
                    && !stop.is_cancelled()
                    && !cancel.is_cancelled()
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let paused_for = t0.elapsed();
                shift += paused_for;
                ctx.progress
                    .paused_ns
                    .fetch_add(paused_for.as_nanos() as u64, Ordering::Relaxed);
                due = std_start + shift + sent_at;
                continue;
            }
            let now = std::time::Instant::now();
            if now >= due {
                let late = now.duration_since(due).as_nanos() as u64;
                ctx.progress
                    .pacer_stall_ns
                    .fetch_max(late, Ordering::Relaxed);
                break;
            }
            // Sleep in slices so stop and pause are seen within 50 ms.
            clock
                .sleep_until(due.min(now + Duration::from_millis(50)))
                .await;
        }
        // A pacer catching up sends back to back: let the requests it
        // started run now and then.
        tokio::task::consume_budget().await;
        let own = p.ready.take();
        let scheduled_at = shift + offset;
        last = scheduled_at;
        let seq = first_seq + i as u64;
        // A session counts its turns as it sends them.
        if ctx.sessions.is_none() {
            ctx.progress.scheduled.fetch_add(1, Ordering::Relaxed);
        }
        if let Load::Curve(c) = &spec.load {
            let rate = c.rate_at(offset.as_secs_f64());
            ctx.progress
                .current_rate_milli
                .store((rate * 1000.0) as u64, Ordering::Relaxed);
        }
        let own = own.map(|(req, at)| {
            ctx.progress.trace_position_us.store(at, Ordering::Relaxed);
            req
        });
        // With a queueing cap, requests waiting for a slot hold no socket:
        // the cap bounds what is open, and nothing is dropped.
        if ctx.gate.is_none() && ctx.progress.in_flight.load(Ordering::Acquire) >= max_in_flight {
            let mut rec = RequestRecord::new(seq, scheduled_at, scheduled_at);
            rec.outcome = Err(ErrorKind::Dropped);
            if ctx.sessions.is_some() {
                // The session's first turn never went: the session broke.
                ctx.progress.scheduled.fetch_add(1, Ordering::Relaxed);
                rec.turn = 1;
                rec.seq = super::session::turn_seq(seq, 0);
                let end = crate::analysis::sessions::SessionEnd::Aborted(ErrorKind::Dropped);
                {
                    let mut st = lock(&ctx.stats);
                    let s = st.sessions.get_or_insert_with(Default::default);
                    s.started();
                    s.ended(end);
                }
                ctx.observer.session_ended(spec, end);
            }
            ctx.progress.failed.fetch_add(1, Ordering::Relaxed);
            ctx.progress.completed.fetch_add(1, Ordering::Relaxed);
            lock(&ctx.stats).record(&rec);
            ctx.observer
                .request_done(spec, ctx.start.into_std(), &rec, None);
            continue;
        }
        let task_ctx = ctx.clone();
        if let Some(plan) = ctx.sessions.clone() {
            // The pacer adds its pauses to `paused_ns`; the session moves
            // its end by them as they come.
            let end = spec.duration;
            let active = super::session::ActiveSession::enter(&ctx);
            spawner.spawn(Box::pin(async move {
                super::session::run_session(&task_ctx, &plan, seq, scheduled_at, end, active).await;
            }));
            continue;
        }
        let open = ctx.progress.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        spawner.spawn(Box::pin(async move {
            let mut job = Job::new(seq, scheduled_at, open);
            job.own = own;
            request_task(task_ctx, job).await;
        }));
    }
    (last, false, upcoming.total.load(Ordering::Relaxed))
}

/// Trace lines whose prompts are made ahead of their sends.
const PREPARE_AHEAD: usize = 256;

/// A send taken from the schedule.
struct Pending {
    /// Its index in the global schedule.
    i: usize,
    offset: Duration,
    /// A replay's request, made ahead, and its trace time (µs).
    ready: Option<(PreparedRequest, u64)>,
}

/// Fault injection for the test suite: `LLMLOAD_INJECT_STALL=600ms@1,2`
/// stalls the pacer for 600 ms halfway through levels 1 and 2 (0-based),
/// as a CPU-throttled or descheduled client would be; `600ms@*` stalls
/// every level, and `600ms@file:PATH` every level that starts while PATH
/// exists (a daemon test turns it on and off). Read once; unset costs one
/// branch per level.
fn inject_stall(level: usize) -> Option<Duration> {
    enum Which {
        All,
        Levels(Vec<usize>),
        WhileExists(std::path::PathBuf),
    }
    static STALL: std::sync::OnceLock<Option<(Duration, Which)>> = std::sync::OnceLock::new();
    let stall = STALL.get_or_init(|| {
        let v = std::env::var("LLMLOAD_INJECT_STALL").ok()?;
        let (pause, which) = v.split_once('@')?;
        let pause = crate::base::duration::parse(pause).ok()?;
        let which = match which {
            "*" => Which::All,
            w => match w.strip_prefix("file:") {
                Some(path) => Which::WhileExists(path.into()),
                None => Which::Levels(w.split(',').filter_map(|x| x.trim().parse().ok()).collect()),
            },
        };
        Some((pause, which))
    });
    let (pause, which) = stall.as_ref()?;
    let on = match which {
        Which::All => true,
        Which::Levels(l) => l.contains(&level),
        Which::WhileExists(p) => p.exists(),
    };
    on.then_some(*pause)
}
