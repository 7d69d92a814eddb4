//! The one executor: for each level, send on schedule, record, drain.
//!
//! A dedicated pacer thread owns the clock. It sleeps to each planned
//! instant with `std::thread::sleep` (nanosleep, timer slack set to 1 µs)
//! rather than tokio's timer, whose 1 ms wheel would add up to a
//! millisecond of lag to every send, and hands each request to the runtime
//! as a task. The task stamps `sent_at` just before the connection pool
//! takes the request; `sent_at - scheduled_at` is the schedule lag.
//!
//! Open loop: a request goes out at its time whatever earlier ones are
//! doing. Only `max_in_flight` bounds it, so a dead endpoint with a long
//! timeout cannot exhaust file descriptors; a send refused for that is
//! recorded as dropped (and flags the level client-bound). A level with
//! `max_concurrency` queues instead: the request is due at its planned
//! instant, waits for one of N slots, and its latency still counts from
//! the plan (the wait is reported as `client_queue`).
//!
//! Closed loop ([`Load::Concurrency`]) has no pacer: N tokio workers each
//! send their next request when the last one ends.

use crate::analysis::level::LevelTiming;
use crate::analysis::stats::LevelStats;
use crate::client::LlmClient;
use crate::client::record::{ErrorKind, RequestRecord};
use crate::plan::load::Load;
use crate::plan::schedule::{Arrival, Schedule};
use crate::workload::request::PreparedRequest;
use http::{HeaderName, HeaderValue};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// tokio's `global_queue_interval` for runtimes that drive sweeps: how
/// many local tasks a worker runs before checking the global queue, where
/// the pacer's new requests land (default 31 or 61).
pub const GLOBAL_QUEUE_INTERVAL: u32 = 4;

/// What one level should do.
#[derive(Debug, Clone)]
pub struct LevelSpec {
    pub index: usize,
    /// The nominal rate: the flat rate, a curve's or a trace's mean over
    /// the level; 0 for a concurrency level.
    pub qps: f64,
    /// `None`: until cancelled (soak forever).
    pub duration: Option<Duration>,
    pub arrival: Arrival,
    pub seed: u64,
    /// What the level holds steady.
    pub load: Load,
    /// Stop after this many sends (a warm-up of N requests).
    pub limit: Option<u64>,
    /// Open loop only: at most this many requests open at once; a send
    /// due beyond them waits for a slot (`--max-concurrency`).
    pub max_concurrency: Option<usize>,
}

impl LevelSpec {
    /// `5 QPS`, `10..100 QPS`, `concurrency 16`, `trace (4.2 QPS mean)`.
    pub fn describe(&self) -> String {
        let f = crate::analysis::saturation::fmt_qps;
        match &self.load {
            Load::Flat => format!("{} QPS", f(self.qps)),
            Load::Curve(c) => format!(
                "{}..{} QPS",
                f(c.rate_at(0.0)),
                f(c.rate_at(self.duration.map_or(0.0, |d| d.as_secs_f64())))
            ),
            Load::Concurrency(n) => format!("concurrency {n}"),
            Load::Trace(r) => format!(
                "trace ({} QPS mean)",
                f(crate::analysis::stats::round(r.mean_qps(), 2))
            ),
        }
    }

    /// A flat open-loop level.
    pub fn flat(
        index: usize,
        qps: f64,
        duration: Option<Duration>,
        arrival: Arrival,
        seed: u64,
    ) -> Self {
        Self {
            index,
            qps,
            duration,
            arrival,
            seed,
            load: Load::Flat,
            limit: None,
            max_concurrency: None,
        }
    }
}

/// Live counters of the running level, read by progress bars, the daemon
/// status endpoint and gauges. All monotonic except `in_flight`.
#[derive(Debug, Default)]
pub struct Progress {
    pub scheduled: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Requests that met the level's SLO (when it has one).
    pub good: AtomicU64,
    pub in_flight: AtomicUsize,
    /// Set while a soak is paused for a sweep on the same target.
    pub paused: AtomicBool,
    /// Total time spent paused, nanoseconds.
    pub paused_ns: AtomicU64,
    /// The pacer's longest wake-up past a send's due time, nanoseconds.
    pub pacer_stall_ns: AtomicU64,
    /// Trace replays: the trace-time offset (µs) of the last request sent,
    /// for "where in the trace" gauges.
    pub trace_position_us: AtomicU64,
    /// A level whose rate changes: the rate at the last send, milli-req/s
    /// (0 for flat levels), for the live target gauge.
    pub current_rate_milli: AtomicU64,
}

/// Hooks for live sinks (Prometheus, traces). Called from request tasks:
/// keep them cheap and non-blocking.
pub trait Observer: Send + Sync {
    /// Extra header for this request (W3C `traceparent`), and a token the
    /// observer gets back in `request_done`.
    /// `base` is the level start: record times are offsets from it.
    fn request_start(
        &self,
        _level: &LevelSpec,
        _base: std::time::Instant,
        _rec: &RequestRecord,
    ) -> Option<RequestHook> {
        None
    }
    fn request_done(
        &self,
        _level: &LevelSpec,
        _base: std::time::Instant,
        _rec: &RequestRecord,
        _hook: Option<RequestHook>,
    ) {
    }
    /// Called after each level: push buffered output out, and say what
    /// could not be written since the last call (one line per problem).
    fn flush(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Per-request state an observer carries from start to done.
pub struct RequestHook {
    pub header: Option<(HeaderName, HeaderValue)>,
    pub state: Box<dyn std::any::Any + Send>,
}

/// An observer that does nothing.
pub struct NoObserver;
impl Observer for NoObserver {}

/// Everything shared by the requests of a run.
pub struct Engine {
    pub client: Arc<LlmClient>,
    pub requests: Arc<Vec<PreparedRequest>>,
    pub max_in_flight: usize,
    /// The server's own metrics, scraped at each level's start and end
    /// and every interval between.
    pub server_metrics: Option<Arc<crate::server::scrape::ServerScraper>>,
    /// Send only this shard's part of every schedule.
    pub shard: Option<crate::plan::schedule::Shard>,
    pub observer: Arc<dyn Observer>,
}

/// A level in progress: the stats are shared so a soak can snapshot them.
pub struct LevelRun {
    pub stats: Arc<Mutex<LevelStats>>,
    pub progress: Arc<Progress>,
    /// Start the schedule at this wall-clock instant (shards of one run
    /// share it), instead of now. A start already past makes the first
    /// sends late, and counted so.
    pub start_at: Option<std::time::SystemTime>,
}

impl LevelRun {
    pub fn new() -> Self {
        Self {
            stats: Arc::new(Mutex::new(LevelStats::new())),
            progress: Arc::new(Progress::default()),
            start_at: None,
        }
    }

    /// A level whose requests are judged against `slo` (goodput,
    /// attainment, early stop).
    pub fn with_slo(slo: Option<Arc<crate::analysis::slo::SloTarget>>) -> Self {
        let run = Self::new();
        lock(&run.stats).slo = slo;
        run
    }

    /// A copy of the numbers so far.
    pub fn snapshot(&self) -> LevelStats {
        lock(&self.stats).clone()
    }
}

impl Default for LevelRun {
    fn default() -> Self {
        Self::new()
    }
}

/// Result of one level's run.
pub struct LevelOutcome {
    pub stats: LevelStats,
    pub timing: LevelTiming,
    /// The level was stopped before its schedule ended.
    pub interrupted: bool,
    /// What the server's own metrics said, when scraped.
    pub server: Option<crate::server::view::ServerLevel>,
    /// Entries of the global schedule gone through (every shard's): where
    /// the next level's request indices start.
    pub global_scheduled: u64,
}

impl Engine {
    /// Run one level to completion (or cancellation). `stop_sending` ends
    /// the send window early but lets in-flight requests finish;
    /// `cancel` also abandons in-flight requests (recorded as cancelled).
    pub async fn run_level(
        &self,
        spec: LevelSpec,
        run: &LevelRun,
        stop_sending: CancellationToken,
        cancel: CancellationToken,
        first_seq: u64,
    ) -> LevelOutcome {
        // A replay's bursts are its timing: open the connections its
        // largest one needs before the first is due, not during it.
        if let Load::Trace(r) = &spec.load {
            let want = r.largest_burst(Duration::from_millis(10)).min(64);
            let share = self.shard.map_or(want, |s| want.div_ceil(s.count as usize));
            self.client.prewarm(share).await;
        }
        let idle = Arc::new(Notify::new());
        let handle = tokio::runtime::Handle::current();
        let usage_at_start = crate::base::usage::Snapshot::now();
        {
            let mut st = lock(&run.stats);
            if let Some(d) = spec.duration {
                st.start_timeline(d);
            }
            if spec.load.varies() && st.series.is_none() {
                st.series = Some(crate::analysis::series::Series::new(
                    crate::analysis::series::DEFAULT_STEP,
                ));
            }
        }
        // A little lead so the first send is not late because of set-up;
        // or the shared start of a sharded run, on this process's clock.
        let start = match run.start_at {
            Some(at) => {
                let now = (Instant::now(), std::time::SystemTime::now());
                match at.duration_since(now.1) {
                    Ok(ahead) => now.0 + ahead,
                    Err(behind) => now.0.checked_sub(behind.duration()).unwrap_or(now.0),
                }
            }
            None => Instant::now() + Duration::from_millis(2),
        };
        let ctx = Arc::new(TaskCtx {
            client: self.client.clone(),
            requests: self.requests.clone(),
            observer: self.observer.clone(),
            stats: run.stats.clone(),
            progress: run.progress.clone(),
            idle: idle.clone(),
            cancel: cancel.clone(),
            gate: spec
                .max_concurrency
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
            spec: spec.clone(),
            start,
        });
        // The server's metrics: a scrape now (before the first send goes
        // far), then every interval, and one more after the drain.
        let scrapes = Arc::new(Mutex::new(Vec::new()));
        let scraping = self.server_metrics.clone().map(|sc| {
            let scrapes = scrapes.clone();
            let stop = CancellationToken::new();
            let until = stop.clone();
            let task = tokio::spawn(async move {
                loop {
                    let r = sc.scrape().await;
                    scrapes.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    tokio::select! {
                        _ = tokio::time::sleep(sc.interval) => {}
                        _ = until.cancelled() => return,
                    }
                }
            });
            (stop, task)
        });
        let max_in_flight = self.max_in_flight.max(1);
        let shard = self.shard;
        let (last_offset, interrupted, global) = if let Load::Concurrency(n) = spec.load {
            run_workers(&ctx, n, first_seq, shard, &stop_sending, &cancel).await
        } else {
            let pacer_ctx = ctx.clone();
            let pacer_stop = stop_sending.clone();
            let pacer_cancel = cancel.clone();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("llmload-pacer".into())
                .spawn(move || {
                    let r = pace(
                        &pacer_ctx,
                        &handle,
                        max_in_flight,
                        first_seq,
                        shard,
                        &pacer_stop,
                        &pacer_cancel,
                    );
                    let _ = done_tx.send(r);
                })
                .expect("spawning the pacer thread");
            done_rx.await.unwrap_or((Duration::ZERO, true, 0))
        };
        let mut sent_done = Instant::now();
        // Workers return when their last request has ended: the sending
        // stopped at the level's end, the rest was the drain.
        if let (Load::Concurrency(_), Some(d), false) = (&spec.load, spec.duration, interrupted) {
            sent_done = sent_done.min(start + d);
        }

        // Drain: every task carries its own deadline, so this ends.
        loop {
            let notified = idle.notified();
            if run.progress.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
        let drained = Instant::now();
        let used = usage_at_start.until(&crate::base::usage::Snapshot::now());
        let stats = lock(&run.stats).clone();
        let client = client_usage(&used, &stats, &run.progress);
        let server = match (scraping, &self.server_metrics) {
            (Some((stop, task)), Some(sc)) => {
                stop.cancel();
                let _ = task.await;
                let last = sc.scrape().await;
                let mut all =
                    std::mem::take(&mut *scrapes.lock().unwrap_or_else(|e| e.into_inner()));
                all.push(last);
                let ttft_p95 = (!stats.ttft.is_empty())
                    .then(|| stats.ttft.value_at_quantile(0.95) as f64 * 1e-6);
                Some(crate::server::view::reduce(
                    &all,
                    ttft_p95,
                    stats.output_tokens_total,
                    stats.input_tokens_total,
                ))
            }
            _ => None,
        };
        // A pacer that could not keep up finished its schedule late: the
        // window stretches, and the achieved rate shows it.
        let took = sent_done.saturating_duration_since(start);
        let window = match spec.duration {
            Some(d) if !interrupted => d.max(took),
            _ => last_offset.max(took),
        };
        LevelOutcome {
            stats,
            timing: LevelTiming {
                qps_target: spec.qps,
                concurrency: spec.load.concurrency().map(|n| workers_of(n, self.shard)),
                trace: matches!(spec.load, Load::Trace(_)),
                qps_ramp: match &spec.load {
                    Load::Curve(c) => Some([
                        c.rate_at(0.0),
                        c.rate_at(spec.duration.unwrap_or(window).as_secs_f64()),
                    ]),
                    _ => None,
                },
                duration: spec.duration.unwrap_or(window),
                send_window: window,
                drain: drained.saturating_duration_since(sent_done),
                client: Some(client),
            },
            interrupted: interrupted || cancel.is_cancelled(),
            server,
            global_scheduled: global,
        }
    }
}

/// The level's [`ClientUsage`] from what the process used during it.
fn client_usage(
    used: &crate::base::usage::Used,
    stats: &crate::analysis::stats::LevelStats,
    progress: &Progress,
) -> crate::analysis::level::ClientUsage {
    let cpu = used.cpu.as_secs_f64();
    let wall = used.wall.as_secs_f64().max(1e-9);
    let round = crate::analysis::stats::round;
    crate::analysis::level::ClientUsage {
        cpu_seconds: round(cpu, 3),
        cores_used: round(cpu / wall, 3),
        cores_available: crate::base::usage::cores_available(),
        cpu_us_per_request: if stats.sent > 0 {
            round(cpu * 1e6 / stats.sent as f64, 1)
        } else {
            0.0
        },
        throttled_ms: used
            .throttle
            .map(|t| round(t.throttled.as_secs_f64() * 1e3, 1)),
        nr_throttled: used.throttle.map(|t| t.nr_throttled),
        pacer_stall_ms: round(
            progress.pacer_stall_ns.load(Ordering::Relaxed) as f64 / 1e6,
            1,
        ),
    }
}

struct TaskCtx {
    client: Arc<LlmClient>,
    requests: Arc<Vec<PreparedRequest>>,
    observer: Arc<dyn Observer>,
    stats: Arc<Mutex<LevelStats>>,
    progress: Arc<Progress>,
    idle: Arc<Notify>,
    cancel: CancellationToken,
    /// `max_concurrency` slots, when the level has them.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    spec: LevelSpec,
    start: Instant,
}

/// The pacer loop (runs on its own OS thread). Returns the offset of the
/// last send, whether it was stopped early, and how many entries of the
/// global schedule it went through (all shards' together).
fn pace(
    ctx: &Arc<TaskCtx>,
    handle: &tokio::runtime::Handle,
    max_in_flight: usize,
    first_seq: u64,
    shard: Option<crate::plan::schedule::Shard>,
    stop: &CancellationToken,
    cancel: &CancellationToken,
) -> (Duration, bool, u64) {
    set_fine_timer_slack();
    let spec = &ctx.spec;
    let limit = spec.limit.map_or(usize::MAX, |l| l as usize);
    // Entries of the global schedule gone through, every shard's.
    let total = Arc::new(AtomicU64::new(0));
    let owned = move |i: &usize| shard.is_none_or(|s| s.owns(*i as u64));
    // The sends to make, in order. A replay's prompts are made on their
    // own thread, up to [`PREPARE_AHEAD`] ahead, so that making one never
    // delays a send and a burst of lines due at once goes out back to back.
    let mut upcoming: Box<dyn Iterator<Item = Pending> + '_> = match &spec.load {
        Load::Trace(r) => {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Pending>(PREPARE_AHEAD);
            let (r, window, seen) = (r.clone(), spec.duration, total.clone());
            std::thread::Builder::new()
                .name("llmload-prompts".into())
                .spawn(move || {
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
                        let ready = Some((r.request(line), r.trace.entries[line].at_us));
                        // The pacer gone (stopped): nothing more to make.
                        if tx.send(Pending { i, offset, ready }).is_err() {
                            return;
                        }
                    }
                })
                .expect("spawning the prompt thread");
            Box::new(rx.into_iter())
        }
        load => {
            let schedule = match load {
                Load::Curve(c) => Schedule::with_curve(c, spec.duration, spec.arrival, spec.seed),
                _ => Schedule::new(spec.qps, spec.duration, spec.arrival, spec.seed),
            };
            let seen = total.clone();
            Box::new(
                schedule
                    .take(limit)
                    .enumerate()
                    .inspect(move |(i, _)| seen.store(*i as u64 + 1, Ordering::Relaxed))
                    .filter(move |(i, _)| owned(i))
                    .map(|(i, offset)| Pending {
                        i,
                        offset,
                        ready: None,
                    }),
            )
        }
    };
    let std_start = ctx.start.into_std();
    // Time spent paused pushes the rest of the schedule back.
    let mut shift = Duration::ZERO;
    let mut last = Duration::ZERO;
    let mut stall = inject_stall(spec.index).zip(spec.duration);
    loop {
        let Some(mut p) = upcoming.next() else {
            break;
        };
        let (i, offset) = (p.i, p.offset);
        if let Some((pause, length)) = stall
            && offset >= length / 2
        {
            // The test suite's starved client: the pacer is not scheduled.
            std::thread::sleep(pause);
            stall = None;
        }
        let mut due = std_start + shift + offset;
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
                    std::thread::sleep(Duration::from_millis(20));
                }
                let paused_for = t0.elapsed();
                shift += paused_for;
                ctx.progress
                    .paused_ns
                    .fetch_add(paused_for.as_nanos() as u64, Ordering::Relaxed);
                due = std_start + shift + offset;
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
            std::thread::sleep((due - now).min(Duration::from_millis(50)));
        }
        let own = p.ready.take();
        let scheduled_at = shift + offset;
        last = scheduled_at;
        let seq = first_seq + i as u64;
        ctx.progress.scheduled.fetch_add(1, Ordering::Relaxed);
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
        if ctx.progress.in_flight.load(Ordering::Acquire) >= max_in_flight {
            let mut rec = RequestRecord::new(seq, scheduled_at, scheduled_at);
            rec.outcome = Err(ErrorKind::Dropped);
            ctx.progress.failed.fetch_add(1, Ordering::Relaxed);
            ctx.progress.completed.fetch_add(1, Ordering::Relaxed);
            lock(&ctx.stats).record(&rec);
            ctx.observer
                .request_done(spec, ctx.start.into_std(), &rec, None);
            continue;
        }
        let open = ctx.progress.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let task_ctx = ctx.clone();
        handle.spawn(async move {
            request_task(task_ctx, seq, scheduled_at, open, own).await;
        });
    }
    drop(upcoming);
    (last, false, total.load(Ordering::Relaxed))
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

/// A closed-loop level: `n` workers (this shard's share of them), each
/// sending its next request when its previous one ends, until the level's
/// duration is up. A request is "scheduled" the instant its worker is
/// free, so schedule lag is ~0 by construction: the server's slowness
/// shows as fewer sends, which is why capacity is an open-loop question.
async fn run_workers(
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
                    ctx.progress
                        .paused_ns
                        .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    continue;
                }
                let at = Instant::now() - ctx.start;
                if ctx.spec.duration.is_some_and(|d| at >= d) {
                    return false;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|l| k >= l) {
                    return false;
                }
                last.fetch_max(at.as_nanos() as u64, Ordering::Relaxed);
                let seq = first_seq + k * count + index;
                ctx.progress.scheduled.fetch_add(1, Ordering::Relaxed);
                let open = ctx.progress.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                let ok = request_task(ctx.clone(), seq, at, open, None).await;
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

/// One request, from spawn to books. Whatever happens inside (a panic in
/// the client or an observer included), the request is counted exactly
/// once and `in_flight` goes down, so the level ends on time.
async fn request_task(
    ctx: Arc<TaskCtx>,
    seq: u64,
    scheduled_at: Duration,
    open: usize,
    own: Option<PreparedRequest>,
) -> bool {
    let _in_flight = InFlight(&ctx);
    let mut counted = false;
    let mut ok = false;
    let run = std::panic::AssertUnwindSafe(run_request(
        &ctx,
        seq,
        scheduled_at,
        open,
        own,
        &mut counted,
        &mut ok,
    ));
    if let Err(panic) = futures_util::FutureExt::catch_unwind(run).await {
        report_panic(&*panic);
        if !counted {
            let mut rec = RequestRecord::new(seq, scheduled_at, scheduled_at);
            rec.done_at = Instant::now() - ctx.start;
            rec.in_flight_at_send = open as u32;
            rec.outcome = Err(ErrorKind::Internal);
            count(&ctx, &rec);
            // Metrics, requests.jsonl and traces count it too.
            let base = ctx.start.into_std();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ctx.observer.request_done(&ctx.spec, base, &rec, None)
            }));
        }
    }
    ok
}

async fn run_request(
    ctx: &TaskCtx,
    seq: u64,
    scheduled_at: Duration,
    open: usize,
    own: Option<PreparedRequest>,
    counted: &mut bool,
    ok: &mut bool,
) {
    let req = match &own {
        Some(r) => r,
        None => &ctx.requests[(seq % ctx.requests.len() as u64) as usize],
    };
    let mut rec = RequestRecord::new(seq, scheduled_at, scheduled_at);
    rec.in_flight_at_send = open.min(u32::MAX as usize) as u32;
    rec.client_input_tokens = req.input_tokens;
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
            };
            let waited = (Instant::now() - ctx.start).saturating_sub(scheduled_at);
            rec.client_queue = Some(waited);
            if slot.is_none() {
                rec.sent_at = scheduled_at + waited;
                rec.done_at = rec.sent_at;
                rec.outcome = Err(ErrorKind::Cancelled);
                count(ctx, &rec);
                *counted = true;
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
    *ok = rec.is_ok();
    let observed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ctx.observer.request_done(&ctx.spec, base, &rec, hook)
    }));
    if let Err(panic) = observed {
        report_panic(&*panic);
    }
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
fn lock(m: &Mutex<LevelStats>) -> std::sync::MutexGuard<'_, LevelStats> {
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

/// Ask the kernel to wake this thread within 1 µs of its deadline instead
/// of the default 50 µs slack.
fn set_fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and affects only the
    // calling thread; setpriority on our own thread id only lowers its
    // nice value, and fails harmlessly without the privilege to.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
        // A pacer that wakes late makes every later send late: ask the
        // scheduler to prefer it (it sleeps almost all the time, so this
        // costs the machine nothing). Needs CAP_SYS_NICE; best effort.
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, -10);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mock::capacity::CapacityModel;
    use crate::mock::{MockConfig, MockServer, OutputTokens};

    /// A mock whose every request takes `ttft`, then 4 quick tokens.
    pub(crate) async fn mock(ttft: Duration) -> MockServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = MockConfig {
            capacity: CapacityModel {
                slots: 1000,
                queue: 1000,
                ttft,
                prefill_per_token: Duration::ZERO,
                tpot: Duration::from_millis(1),
                tpot_growth: 0.0,
            },
            output_tokens: Some(OutputTokens::Cap(4)),
            ..MockConfig::default()
        };
        MockServer::start(cfg, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    pub(crate) fn engine(url: String) -> Engine {
        let target = crate::plan::target::Target::new(url, "m");
        let convs = vec![crate::workload::dataset::Conversation {
            messages: vec![crate::workload::dataset::Message {
                role: crate::workload::dataset::Role::User,
                content: "hi".into(),
            }],
            max_tokens: None,
        }];
        Engine {
            client: Arc::new(target.build_client(false).unwrap()),
            requests: Arc::new(crate::workload::request::prepare_all(
                &convs,
                &target.body_params(),
            )),
            max_in_flight: 1000,
            server_metrics: None,
            shard: None,
            observer: Arc::new(NoObserver),
        }
    }

    fn spec(qps: f64, secs: f64) -> LevelSpec {
        LevelSpec::flat(
            0,
            qps,
            Some(Duration::from_secs_f64(secs)),
            Arrival::Constant,
            0,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_level_drains_every_request_it_sent() {
        let m = mock(Duration::from_millis(300)).await;
        let e = engine(m.chat_url());
        let out = e
            .run_level(
                spec(20.0, 0.5),
                &LevelRun::new(),
                CancellationToken::new(),
                CancellationToken::new(),
                0,
            )
            .await;
        assert_eq!(out.stats.sent, 10);
        assert_eq!(out.stats.succeeded, 10, "{:?}", out.stats.errors);
        assert!(!out.interrupted);
        // The last send is at 450 ms and takes 300 ms: the drain waited.
        assert!(
            out.timing.drain >= Duration::from_millis(200),
            "{:?}",
            out.timing
        );
        m.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_ends_sending_and_cancel_abandons_in_flight() {
        let m = mock(Duration::from_secs(30)).await;
        let e = engine(m.chat_url());
        let (stop, cancel) = (CancellationToken::new(), CancellationToken::new());
        let run = LevelRun::new();
        let (s2, c2) = (stop.clone(), cancel.clone());
        let progress = run.progress.clone();
        tokio::spawn(async move {
            while progress.in_flight.load(Ordering::Acquire) < 5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            s2.cancel();
            tokio::time::sleep(Duration::from_millis(100)).await;
            c2.cancel();
        });
        let t0 = std::time::Instant::now();
        let out = e.run_level(spec(50.0, 10.0), &run, stop, cancel, 0).await;
        assert!(out.interrupted);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(
            out.stats.sent >= 5 && out.stats.sent < 500,
            "{}",
            out.stats.sent
        );
        assert_eq!(
            out.stats.errors.get(&ErrorKind::Cancelled).copied(),
            Some(out.stats.sent),
            "every open request was abandoned and counted"
        );
        assert_eq!(run.progress.in_flight.load(Ordering::Acquire), 0);
        m.shutdown().await;
    }
}
