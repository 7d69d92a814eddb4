//! Runs a sweep plan level by level and keeps the results directory up to
//! date after every level, through the one [`RunWriter`]. Shared by
//! `llmload run` and the daemon, so both write exactly the same files.

use crate::analysis::level::LevelResult;
use crate::analysis::slo::SloTarget;
use crate::engine::sweep::{Engine, LevelRun, LevelSpec, NoObserver};
use crate::plan::load::{Levels, Load};
use crate::plan::schedule::{Arrival, Schedule};
use crate::results::{RunDir, Summary, summarize};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use crate::results::writer::{Outputs, RunStatus, RunWriter};

/// The levels to run.
#[derive(Debug, Clone)]
pub struct SweepPlan {
    pub levels: Levels,
    /// Per level (a trace replay lasts its slice instead).
    pub duration: Duration,
    pub arrival: Arrival,
    pub seed: u64,
    /// Judge every request against this SLO (goodput, attainment).
    pub slo: Option<Arc<SloTarget>>,
    /// A fixed timeline (shards of one run): the first level starts at
    /// this instant, and each next one `duration + gap` later.
    pub timeline: Option<(std::time::SystemTime, Duration)>,
    /// Open-loop levels: sends beyond this many open requests wait.
    pub max_concurrency: Option<usize>,
    /// Sent before the first level, at its load, and left out of results.
    pub warmup: Option<Warmup>,
    /// The time series' step for levels whose rate changes.
    pub series_step: Duration,
}

/// `--warmup 30s` (a time) or `--warmup 200` (requests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    Time(Duration),
    Requests(u64),
}

impl Warmup {
    /// A whole number is requests; anything else a duration.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u64>() {
            return if n == 0 {
                Err(format!(
                    "'{s}': give a number of requests above 0, or a time such as 30s"
                ))
            } else {
                Ok(Self::Requests(n))
            };
        }
        match crate::base::duration::parse(t) {
            Ok(d) if !d.is_zero() => Ok(Self::Time(d)),
            _ => Err(format!(
                "'{s}' is neither a number of requests (200) nor a time (30s, 2m)"
            )),
        }
    }
}

impl std::fmt::Display for Warmup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Time(d) => f.write_str(&crate::base::duration::format(*d)),
            Self::Requests(n) => write!(f, "{n} requests"),
        }
    }
}

impl SweepPlan {
    /// The spec of level `index`. Each level gets its own seed so Poisson
    /// levels are not the same pattern scaled.
    pub fn spec(&self, index: usize) -> LevelSpec {
        let seed = self.seed.wrapping_add(index as u64);
        let open = |mut s: LevelSpec| {
            s.max_concurrency = self.max_concurrency;
            s
        };
        match &self.levels {
            Levels::Rates(r) => {
                let r = r[index];
                let mut s =
                    LevelSpec::flat(index, r.mean(), Some(self.duration), self.arrival, seed);
                if r.is_ramp() {
                    s.load = Load::Curve(std::sync::Arc::new(r.profile(Some(self.duration))));
                }
                open(s)
            }
            Levels::Concurrency(c) => {
                let mut s = LevelSpec::flat(index, 0.0, Some(self.duration), self.arrival, seed);
                s.load = Load::Concurrency(c[index]);
                s
            }
            Levels::Trace(r) => {
                // A looping replay runs for the level's duration.
                let window = if r.options.looping {
                    Some(self.duration)
                } else {
                    r.window()
                };
                let qps = crate::analysis::stats::round(r.mean_qps(), 3);
                let mut s = LevelSpec::flat(index, qps, window, self.arrival, seed);
                s.load = Load::Trace(r.clone());
                open(s)
            }
        }
    }

    /// The summary of `levels`, with the SLO they were judged against.
    pub fn summarize(&self, levels: &[LevelResult], status: &str) -> Summary {
        let mut s = summarize(levels, status);
        if let Some(slo) = &self.slo {
            s.slo = Some(slo.slo.to_string());
            s.slo_attainment = Some(slo.attainment);
        }
        s
    }

    /// Requests a level is expected to send (exact for constant
    /// arrivals and traces; 0 when unknown ahead: a closed loop).
    pub fn planned(&self, index: usize) -> u64 {
        match &self.levels {
            Levels::Rates(r) if !r[index].is_ramp() => {
                let qps = r[index].from;
                match self.arrival {
                    Arrival::Constant => Schedule::constant_count(qps, self.duration),
                    Arrival::Poisson | Arrival::PoissonExact => {
                        (qps * self.duration.as_secs_f64()).round().max(1.0) as u64
                    }
                }
            }
            Levels::Rates(r) => (r[index].mean() * self.duration.as_secs_f64()).round() as u64,
            Levels::Concurrency(_) => 0,
            Levels::Trace(r) if r.options.looping => 0,
            Levels::Trace(r) => r.len() as u64,
        }
    }
}

/// Callbacks for progress display, live status and spans.
pub trait SweepHooks: Send + Sync {
    fn level_started(&self, _spec: &LevelSpec, _levels: usize, _planned: u64, _run: &LevelRun) {}
    fn level_finished(&self, _spec: &LevelSpec, _result: &LevelResult) {}
    fn warmed_up(&self, _report: &crate::results::WarmupReport) {}
}

/// The warm-up: the first level's load, for a time or a number of
/// requests, through a copy of the engine that tells no observer and
/// scrapes no server, so that nothing of it reaches a statistic, a metric,
/// a trace or `requests.jsonl`. Returns what it did and the schedule
/// entries it used (the first level's requests start after them).
async fn warm_up(
    engine: &Engine,
    plan: &SweepPlan,
    w: Warmup,
    stop: &CancellationToken,
    cancel: &CancellationToken,
) -> (crate::results::WarmupReport, u64) {
    let quiet = Engine {
        client: engine.client.clone(),
        requests: engine.requests.clone(),
        max_in_flight: engine.max_in_flight,
        server_metrics: None,
        shard: engine.shard,
        observer: std::sync::Arc::new(NoObserver),
        // Warm-ups send single requests: a session warm-up would fill
        // the cache the first level is measured on.
        sessions: None,
    };
    let mut spec = plan.spec(0);
    // Its own seed, so a Poisson warm-up is not the first level's pattern.
    spec.seed = spec.seed.wrapping_add(0x3A97);
    match w {
        Warmup::Time(d) => {
            spec.duration = Some(d);
        }
        Warmup::Requests(n) => {
            spec.limit = Some(n);
            spec.duration = None;
        }
    }
    // A replay's warm-up sends its first lines with other words: it warms
    // the server, not the replay's own prefixes.
    if let Load::Trace(r) = &spec.load {
        spec.load = Load::Trace(std::sync::Arc::new(r.reseeded(spec.seed ^ 0x3A97_3A97)));
    }
    // A ramp's warm-up holds its starting rate (its mean if it starts at 0).
    if let (Load::Curve(_), Levels::Rates(r)) = (&spec.load, &plan.levels) {
        spec.load = Load::Flat;
        spec.qps = if r[0].from > 0.0 {
            r[0].from
        } else {
            r[0].mean()
        };
    }
    let t0 = std::time::Instant::now();
    let out = quiet
        .run_level(
            spec,
            &LevelRun::new(),
            stop.child_token(),
            cancel.clone(),
            0,
        )
        .await;
    let s = &out.stats;
    (
        crate::results::WarmupReport {
            asked: match w {
                Warmup::Time(d) => crate::base::duration::format(d),
                Warmup::Requests(n) => n.to_string(),
            },
            requests: s.sent,
            succeeded: s.succeeded,
            errors: s.failed + s.dropped,
            duration_s: crate::analysis::stats::round(t0.elapsed().as_secs_f64(), 3),
        },
        out.global_scheduled,
    )
}

pub struct NoHooks;
impl SweepHooks for NoHooks {}

#[derive(Debug)]
pub struct SweepReport {
    pub levels: Vec<LevelResult>,
    pub summary: Summary,
    pub status: RunStatus,
    /// Files that could not be written; the run still measured.
    pub write_errors: Vec<String>,
    pub dir: RunDir,
    /// What the client noticed about the endpoint (see `Metadata::notices`).
    pub notices: Vec<String>,
}

/// Run every level of `plan`, writing through `writer` after each.
/// `stop` ends sending (in-flight requests finish); `cancel` also
/// abandons in-flight requests.
pub async fn execute(
    engine: &Engine,
    plan: &SweepPlan,
    writer: &mut RunWriter,
    hooks: &dyn SweepHooks,
    stop: &CancellationToken,
    cancel: &CancellationToken,
) -> SweepReport {
    let mut levels: Vec<LevelResult> = Vec::new();
    let mut seq = 0u64;
    let mut interrupted = false;
    if let Some(w) = plan.warmup {
        let (report, sent) = warm_up(engine, plan, w, stop, cancel).await;
        seq += sent;
        hooks.warmed_up(&report);
        writer.meta_mut().warmup = Some(report);
    }
    for index in 0..plan.levels.len() {
        if stop.is_cancelled() || cancel.is_cancelled() {
            interrupted = true;
            break;
        }
        let mut spec = plan.spec(index);
        spec.sessions = engine.sessions.is_some() && !matches!(spec.load, Load::Trace(_));
        let mut run = LevelRun::with_slo(plan.slo.clone());
        if spec.load.varies() {
            run.stats.lock().unwrap_or_else(|e| e.into_inner()).series =
                Some(crate::analysis::series::Series::new(plan.series_step));
        }
        run.start_at = plan
            .timeline
            .map(|(t0, gap)| t0 + (plan.duration + gap) * index as u32);
        // A session level's requests depend on its replies: no count ahead.
        let planned = if spec.sessions {
            0
        } else {
            plan.planned(index)
        };
        hooks.level_started(&spec, plan.levels.len(), planned, &run);
        let outcome = engine
            .run_level(spec.clone(), &run, stop.child_token(), cancel.clone(), seq)
            .await;
        seq += outcome.global_scheduled;
        let mut result = LevelResult::from_stats(&outcome.stats, outcome.timing);
        result.server = outcome.server;
        if outcome.interrupted {
            result.mark_interrupted();
        }
        for e in engine.observer.flush() {
            writer.add_error(e);
        }
        hooks.level_finished(&spec, &result);
        levels.push(result);
        note_connections(engine, writer);
        writer.checkpoint(&levels, &plan.summarize(&levels, "running"));
        if outcome.interrupted {
            interrupted = true;
            break;
        }
    }

    let status = if interrupted || levels.len() < plan.levels.len() {
        RunStatus::Partial
    } else {
        RunStatus::Complete
    };
    let summary = plan.summarize(&levels, status.as_str());
    note_connections(engine, writer);
    writer.finish(&levels, &summary, status);
    SweepReport {
        levels,
        summary,
        status,
        write_errors: writer.errors().to_vec(),
        dir: writer.dir().clone(),
        notices: notices(engine),
    }
}

/// What the client learnt about the endpoint's connections (and the
/// server-metrics scraper about its endpoint), into metadata.
pub fn note_connections(engine: &Engine, writer: &mut RunWriter) {
    let m = writer.meta_mut();
    m.connection_reuse = engine.client.reusing_connections();
    m.notices = notices(engine);
}

/// Everything said once during the run, client and scraper.
pub fn notices(engine: &Engine) -> Vec<String> {
    let mut n = engine.client.notices();
    if let Some(s) = &engine.server_metrics {
        n.extend(s.notices());
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sweep::tests::{engine, mock};
    use crate::plan::profile::RateLevel;
    use crate::results::{Metadata, RunInfo};
    use std::time::Duration;

    fn writer(dir: &std::path::Path) -> RunWriter {
        let run = RunDir::create(dir, "run").unwrap();
        let t = crate::plan::target::Target::new("http://x/v1/chat/completions", "m");
        let meta = Metadata::new(&RunInfo {
            target: &t,
            dataset: "d",
            qps: &[20.0, 40.0],
            duration: Some(Duration::from_millis(300)),
            arrival: Arrival::Constant,
            seed: 0,
            run_id: "run".into(),
            percentiles: &[50.0],
            now: chrono::Local::now(),
            job: None,
            kind: "sweep",
        });
        RunWriter::start(
            Outputs {
                dir: run,
                results_file: "benchmark_qps_results.json".into(),
                plot_file: None,
                plot_title: "t".into(),
            },
            meta,
        )
    }

    fn plan() -> SweepPlan {
        SweepPlan {
            levels: Levels::Rates(vec![RateLevel::flat(20.0), RateLevel::flat(40.0)]),
            max_concurrency: None,
            warmup: None,
            series_step: crate::analysis::series::DEFAULT_STEP,
            duration: Duration::from_millis(300),
            arrival: Arrival::Constant,
            seed: 0,
            slo: None,
            timeline: None,
        }
    }

    /// Stops sending after the first level.
    struct StopAfterFirst(CancellationToken);
    impl SweepHooks for StopAfterFirst {
        fn level_finished(&self, _: &LevelSpec, _: &LevelResult) {
            self.0.cancel();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_complete_run_and_a_partial_one() {
        let m = mock(Duration::from_millis(5)).await;
        let e = engine(m.chat_url());
        let tmp = tempfile::tempdir().unwrap();
        let token = CancellationToken::new();
        let mut w = writer(tmp.path());
        let r = execute(&e, &plan(), &mut w, &NoHooks, &token, &token).await;
        assert_eq!(r.status, RunStatus::Complete);
        assert_eq!(r.levels.len(), 2);
        assert_eq!((r.levels[0].sent, r.levels[1].sent), (6, 12));
        let meta: Metadata = r.dir.read_json(crate::results::METADATA_FILE).unwrap();
        assert_eq!(
            (meta.status.as_str(), meta.levels_completed),
            ("complete", 2)
        );

        let tmp = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let mut w = writer(tmp.path());
        let hooks = StopAfterFirst(stop.clone());
        let r = execute(
            &e,
            &plan(),
            &mut w,
            &hooks,
            &stop,
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(r.status, RunStatus::Partial);
        assert_eq!(r.levels.len(), 1, "level 2 never started");
        assert_eq!(r.summary.status, "partial");
        let meta: Metadata = r.dir.read_json(crate::results::METADATA_FILE).unwrap();
        assert!(meta.partial);
        assert_eq!(meta.levels_completed, 1);
        m.shutdown().await;
    }
}
