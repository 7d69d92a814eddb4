//! The one executor: for each level, send on schedule, record, drain.
//!
//! The pacer owns the clock. It sleeps to each planned instant on a
//! timerfd (microsecond precision; tokio's timer wheel would add up to a
//! millisecond of lag to every send) and starts each request as a task:
//! a fast level's pacer is a task on the runtime, a slower level's or a
//! replay's has a thread of its own (see [`super::pacer`]). The task
//! stamps `sent_at` just before the connection pool takes the request;
//! `sent_at - scheduled_at` is the schedule lag, so a client with a
//! backlog shows it as lag.
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
use crate::plan::load::Load;
use crate::workload::request::PreparedRequest;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use super::level::{LevelSpec, NoObserver, Observer, Progress, RequestHook};
use super::request::{TaskCtx, lock};

/// tokio's `global_queue_interval` for runtimes that drive sweeps: how
/// many local tasks a worker runs before checking the global queue, where
/// the pacer's new requests land (default 31 or 61).
pub const GLOBAL_QUEUE_INTERVAL: u32 = 4;

/// The runtime a sweep runs on, with `workers` worker threads (the
/// binary's, and the selftest's one-worker comparison).
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .thread_name("llmload-worker")
        .global_queue_interval(GLOBAL_QUEUE_INTERVAL)
        .build()
}

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
    /// Multi-turn sessions: each schedule entry (or each user's next
    /// iteration) starts a session instead of sending one request.
    pub sessions: Option<Arc<super::session::SessionPlan>>,
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
        let usage_at_start = crate::base::usage::Snapshot::now();
        let held_back_at_start = self.client.held_back();
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
        // The sends to make, a replay's first prompts made before the
        // start is fixed (`Err`: a closed loop of `n` users makes its own).
        let sends = match spec.load {
            Load::Concurrency(n) => Err(n),
            _ => {
                let mut u = super::pacer::Upcoming::new(&spec, self.shard);
                u.ready().await;
                Ok(u)
            }
        };
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
        // A shard holds its share of the cap, as of the schedule.
        let gate_slots = spec.max_concurrency.map(|n| {
            self.shard
                .map_or(n, |s| n.div_ceil(s.count as usize))
                .max(1)
        });
        let ctx = Arc::new(TaskCtx {
            client: self.client.clone(),
            requests: self.requests.clone(),
            observer: self.observer.clone(),
            stats: run.stats.clone(),
            progress: run.progress.clone(),
            idle: idle.clone(),
            cancel: cancel.clone(),
            stop: stop_sending.clone(),
            gate: gate_slots.map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
            // A warm-up of N requests sends single requests.
            // (and a trace's lines are its own requests).
            // Only where the level says so (not a capacity cool-down).
            sessions: self.sessions.clone().filter(|_| {
                spec.sessions && spec.limit.is_none() && !matches!(spec.load, Load::Trace(_))
            }),
            window_over: CancellationToken::new(),
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
        // See the pacer's doc for why it runs where it does.
        let own_thread =
            matches!(spec.load, Load::Trace(_)) || spec.qps < super::pacer::TASK_PACER_FROM;
        // A closed loop has no schedule to quantize.
        let quantum = match &sends {
            Ok(_) => crate::plan::send_quantum::get().resolve(!own_thread),
            Err(_) => Duration::ZERO,
        };
        let (last_offset, interrupted, global) = match sends {
            // `n` users, each sending as the last reply ends.
            Err(n) => {
                super::closed_loop::run_workers(&ctx, n, first_seq, shard, &stop_sending, &cancel)
                    .await
            }
            Ok(upcoming) => {
                let pacing = super::pacer::Pacing {
                    ctx: ctx.clone(),
                    upcoming,
                    max_in_flight,
                    first_seq,
                    stop: stop_sending.clone(),
                    cancel: cancel.clone(),
                    quantum,
                };
                if own_thread {
                    super::pacer::pace_on_own_thread(pacing).await.unwrap_or((
                        Duration::ZERO,
                        true,
                        0,
                    ))
                } else if let Some(lead) = super::lead::for_current_runtime() {
                    let level = tokio::runtime::Handle::current();
                    lead.spawn(async move {
                        let spawner = super::pacer::Spawner::Lead {
                            spill: Default::default(),
                            level,
                        };
                        super::pacer::pace(pacing, spawner).await
                    })
                    .await
                    .unwrap_or((Duration::ZERO, true, 0))
                } else {
                    let pacer = super::pacer::pace(pacing, super::pacer::Spawner::Local);
                    tokio::spawn(pacer)
                        .await
                        .unwrap_or((Duration::ZERO, true, 0))
                }
            }
        };
        let mut sent_done = Instant::now();
        // Workers return when their last request has ended: the sending
        // stopped at the level's end, the rest was the drain.
        if let (Load::Concurrency(_), Some(d), false) = (&spec.load, spec.duration, interrupted) {
            sent_done = sent_done.min(start + d);
        }

        // The window closes at the level's end, not at its last session's
        // start: sessions thinking now still send the turns due before it.
        if ctx.sessions.is_some()
            && let Some(d) = spec.duration
            && !interrupted
        {
            loop {
                let paused = Duration::from_nanos(run.progress.paused_ns.load(Ordering::Relaxed));
                let until = start + d + paused;
                if Instant::now() >= until {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = stop_sending.cancelled() => break,
                    _ = cancel.cancelled() => break,
                }
            }
        }
        // The window is closed: sessions send no more turns.
        ctx.window_over.cancel();
        // Drain: every task carries its own deadline, and a session ends
        // with the window, so this ends.
        loop {
            let notified = idle.notified();
            if run.progress.in_flight.load(Ordering::Acquire) == 0
                && run.progress.sessions_active.load(Ordering::Acquire) == 0
            {
                break;
            }
            notified.await;
        }
        let drained = Instant::now();
        let used = usage_at_start.until(&crate::base::usage::Snapshot::now());
        let stats = lock(&run.stats).clone();
        let mut client = client_usage(&used, &stats, &run.progress);
        client.held_back = self.client.held_back().saturating_sub(held_back_at_start);
        client.send_quantum_us = quantum.as_micros() as u64;
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
                concurrency: spec
                    .load
                    .concurrency()
                    .map(|n| super::closed_loop::workers_of(n, self.shard)),
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
        held_back: 0,
        send_quantum_us: 0,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::client::record::ErrorKind;
    use crate::mock::capacity::CapacityModel;
    use crate::mock::{MockConfig, MockServer, OutputTokens};
    use crate::plan::schedule::Arrival;

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
            sessions: None,
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
