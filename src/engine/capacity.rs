//! `llmload capacity` (and the daemon's `kind = "capacity"` jobs): the
//! highest rate an endpoint holds under an SLO, found by probing.
//!
//! The [`Search`](crate::analysis::search::Search) decides which rate to probe; this
//! module runs each probe as a level through the one engine and writes it
//! through the one writer, so a capacity run's directory is a sweep's,
//! with one level per probe and the answer in `summary.json`'s `capacity`.
//!
//! * A probe passes when it met the SLO (attainment and stability) and the
//!   client kept up.
//! * A probe stops early once it can no longer pass: more bad requests
//!   than the attainment allows out of its planned total. Its open
//!   requests are abandoned, to spare the server.
//! * Between probes the endpoint drains: nothing is in flight when the
//!   next probe starts, and after a failed probe a few light requests
//!   check that TTFT has recovered before going on.
//! * Growth probes are a third of `--probe-duration` (at least 5 s): far
//!   below capacity a short probe says enough. Bisection probes use the
//!   full length, the confirmation `--confirm-duration`.

use crate::analysis::level::{LevelResult, ProbeInfo};
use crate::analysis::search::{Next, Outcome, Phase, Search, SearchConfig};
use crate::analysis::slo::SloTarget;
use crate::engine::runner::{RunStatus, RunWriter, SweepHooks, note_connections};
use crate::engine::sweep::{Engine, LevelRun, LevelSpec};
use crate::plan::schedule::{Arrival, Schedule};
use crate::results::{CapacitySummary, ProbeSummary, Summary};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct CapacityPlan {
    pub slo: Arc<SloTarget>,
    pub search: SearchConfig,
    pub probe_duration: Duration,
    pub confirm_duration: Duration,
    pub arrival: Arrival,
    pub seed: u64,
    /// Search concurrent users (closed loop) instead of a rate.
    pub concurrency: bool,
}

/// Growth probes are this share of the probe duration…
const GROW_SHARE: u32 = 3;
/// …and never shorter than this.
const MIN_GROW_PROBE: Duration = Duration::from_secs(5);
/// How often a running probe's bad-request count is checked.
const WATCH_EVERY: Duration = Duration::from_millis(50);
/// Light requests after a failed probe, and how long to wait between
/// checks while TTFT has not recovered.
const LIGHT_RATE: f64 = 2.0;
const LIGHT_FOR: Duration = Duration::from_millis(1500);
const COOLDOWN_STEP: Duration = Duration::from_secs(5);
const COOLDOWN_MAX: Duration = Duration::from_secs(60);
/// A probe whose client could not keep up measured the client, not the
/// endpoint: it never counts as a pass or a fail, and the same rate is
/// probed again after [`CLIENT_BOUND_PAUSE`]. This many client-bound probes
/// in a row at one rate (the first and two repeats) end the search
/// inconclusive.
pub const CLIENT_BOUND_REPEATS: u32 = 3;
/// The pause before a client-bound probe is repeated: long enough for a
/// CPU-throttling period (100 ms in a container) or a neighbour's burst to
/// pass, short against a probe.
const CLIENT_BOUND_PAUSE: Duration = Duration::from_secs(2);

impl CapacityPlan {
    pub fn probe_length(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Grow => {
                (self.probe_duration / GROW_SHARE).max(MIN_GROW_PROBE.min(self.probe_duration))
            }
            Phase::Bisect => self.probe_duration,
            Phase::Confirm => self.confirm_duration,
        }
    }

    /// The summary of the probes so far (and the answer, once known).
    pub fn summarize(
        &self,
        levels: &[LevelResult],
        probes: &[ProbeSummary],
        status: &str,
        outcome: Option<Outcome>,
        inconclusive: Option<&Inconclusive>,
        wall: Duration,
    ) -> Summary {
        let mut s = crate::results::summarize(levels, status);
        s.slo = Some(self.slo.slo.to_string());
        s.slo_attainment = Some(self.slo.attainment);
        let (unit, min_flag, max_flag) = if self.concurrency {
            ("concurrent users", "--min-users", "--max-users")
        } else if levels.iter().any(|l| l.sessions.is_some()) {
            ("new sessions/s", "--min-qps", "--max-qps")
        } else {
            ("req/s", "--min-qps", "--max-qps")
        };
        let (name, qps, bracket, message) = match outcome {
            Some(Outcome::Found { qps, bracket }) => (
                "found",
                Some(qps),
                Some(bracket),
                format!(
                    "capacity: {} {unit} under SLO {} ({}% of requests), bracket [{}, {}]",
                    crate::analysis::saturation::fmt_qps(qps),
                    self.slo.slo,
                    crate::analysis::saturation::fmt_qps(self.slo.attainment * 100.0),
                    crate::analysis::saturation::fmt_qps(bracket[0]),
                    crate::analysis::saturation::fmt_qps(bracket[1])
                ),
            ),
            Some(Outcome::BelowRange) => (
                "below_range",
                None,
                None,
                format!(
                    "even {min_flag} {} misses SLO {}: capacity lies below the range (lower {min_flag}, or check the endpoint)",
                    crate::analysis::saturation::fmt_qps(self.search.min_qps),
                    self.slo.slo
                ),
            ),
            Some(Outcome::AboveRange) => (
                "above_range",
                None,
                None,
                format!(
                    "{max_flag} {} still meets SLO {}: capacity lies above the range (raise {max_flag})",
                    crate::analysis::saturation::fmt_qps(self.search.max_qps),
                    self.slo.slo
                ),
            ),
            None => match inconclusive {
                Some(i) => ("inconclusive", None, i.bracket, i.message(self)),
                None => ("searching", None, None, "the search did not finish".into()),
            },
        };
        s.capacity = Some(CapacitySummary {
            outcome: name.into(),
            concurrency: self.concurrency,
            qps,
            bracket,
            slo: self.slo.slo.to_string(),
            attainment: self.slo.attainment,
            min_qps: self.search.min_qps,
            max_qps: self.search.max_qps,
            precision: self.search.precision,
            probes: probes.to_vec(),
            wall_time_s: (wall.as_secs_f64() * 10.0).round() / 10.0,
            message,
        });
        s
    }
}

/// A search that ended because the client, not the endpoint, was the
/// limit: no capacity is claimed. `bracket` is what the search had narrowed
/// down to when it gave up (a pass below, a fail above, either missing),
/// reported for the reader and marked as not a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Inconclusive {
    /// The rate whose probes were all client-bound.
    pub qps: f64,
    pub repeats: u32,
    /// The last probe's reason, e.g. "3 of 80 sends more than 10 ms late".
    pub reason: String,
    pub bracket: Option<[f64; 2]>,
}

impl Inconclusive {
    fn message(&self, plan: &CapacityPlan) -> String {
        let fmt = crate::analysis::saturation::fmt_qps;
        let so_far = match self.bracket {
            Some([lo, hi]) => format!(
                "; the bracket so far, [{}, {}] req/s, is not a result",
                fmt(lo),
                fmt(hi)
            ),
            None => String::new(),
        };
        format!(
            "inconclusive: the client could not keep up in {} probes in a row at {} req/s ({}), so SLO {} was not measured{so_far}. Give llmload more CPU (see the deployment docs) or lower --max-qps",
            self.repeats,
            fmt(self.qps),
            self.reason,
            plan.slo.slo
        )
    }
}

/// Live progress of a capacity run, beyond what [`SweepHooks`] carries.
pub trait CapacityHooks: SweepHooks {
    fn probe_finished(&self, _p: &ProbeSummary) {}
}

#[derive(Debug)]
pub struct CapacityReport {
    pub levels: Vec<LevelResult>,
    pub probes: Vec<ProbeSummary>,
    /// `None` when the run was stopped before the search finished, or
    /// when it was inconclusive.
    pub outcome: Option<Outcome>,
    /// Set when the client was the limit [`CLIENT_BOUND_REPEATS`] times in
    /// a row: the search ended without an answer.
    pub inconclusive: Option<Inconclusive>,
    pub summary: Summary,
    pub status: RunStatus,
    pub write_errors: Vec<String>,
    pub notices: Vec<String>,
}

/// Why a probe failed, in a few words.
fn fail_reason(r: &LevelResult, slo: &SloTarget, stopped_early: bool) -> String {
    if r.client_bound {
        return format!("client-bound: {}", r.client_bound_reason);
    }
    if let Some(st) = &r.stability
        && !st.stable
    {
        return format!("unstable: {}", st.evidence);
    }
    let att = r.slo_attainment.unwrap_or(0.0);
    if stopped_early {
        return format!(
            "stopped early: more bad requests than {:.1}% of the planned total allows",
            (1.0 - slo.attainment) * 100.0
        );
    }
    format!(
        "attainment {:.2}% < {:.2}%",
        att * 100.0,
        slo.attainment * 100.0
    )
}

/// Run the search. `stop` ends it (what was measured is kept, marked
/// partial); `cancel` also abandons in-flight requests.
pub async fn search(
    engine: &Engine,
    plan: &CapacityPlan,
    writer: &mut RunWriter,
    hooks: &dyn CapacityHooks,
    stop: &CancellationToken,
    cancel: &CancellationToken,
) -> CapacityReport {
    let t0 = Instant::now();
    let mut search = Search::new(plan.search);
    let mut levels: Vec<LevelResult> = Vec::new();
    let mut probes: Vec<ProbeSummary> = Vec::new();
    let mut seq = 0u64;
    let mut baseline_ttft: Option<f64> = None;
    let mut outcome = None;
    let mut inconclusive = None;
    // Client-bound probes in a row at the current rate.
    let mut repeats = 0u32;
    while !stop.is_cancelled() && !cancel.is_cancelled() {
        let (qps, phase) = match search.next() {
            Next::Done(o) => {
                outcome = Some(o);
                break;
            }
            Next::Probe { qps, phase } => (qps, phase),
        };
        let index = levels.len();
        let mut spec = LevelSpec {
            index,
            qps,
            duration: Some(plan.probe_length(phase)),
            // A short Poisson probe may draw far fewer arrivals than its
            // rate: one that passed must have carried its load.
            arrival: match plan.arrival {
                Arrival::Poisson => Arrival::PoissonExact,
                a => a,
            },
            seed: plan.seed.wrapping_add(index as u64),
            load: Default::default(),
            limit: None,
            max_concurrency: None,
            sessions: false,
        };
        // A closed loop sends as many requests as its users manage: no
        // count is known ahead, so it runs its length (no early stop).
        if plan.concurrency {
            spec.load = crate::plan::load::Load::Concurrency(qps.round().max(1.0) as u32);
            spec.qps = 0.0;
        }
        // Sessions: the requests a session makes depend on its turns and
        // on how many end by the level's end, so neither is a count known
        // ahead.
        let unplanned = plan.concurrency || engine.sessions.is_some();
        spec.sessions = engine.sessions.is_some();
        let planned = if unplanned { 0 } else { planned(&spec) };
        let allowed_bad = if unplanned {
            u64::MAX
        } else {
            plan.slo.allowed_bad(planned)
        };
        let run = LevelRun::with_slo(Some(plan.slo.clone()));
        hooks.level_started(&spec, 0, planned, &run);
        let (probe_stop, probe_cancel) = (stop.child_token(), cancel.child_token());
        let watcher = tokio::spawn(watch(
            run.stats.clone(),
            allowed_bad,
            probe_stop.clone(),
            probe_cancel.clone(),
        ));
        let started = Instant::now();
        let outcome_of_level = engine
            .run_level(spec.clone(), &run, probe_stop, probe_cancel, seq)
            .await;
        watcher.abort();
        // Aborted after a normal end: not stopped early (unless it had
        // already fired, which the join then reports).
        let stopped_early = watcher.await.unwrap_or(false);
        seq += outcome_of_level.global_scheduled;
        let user_stopped = stop.is_cancelled() || cancel.is_cancelled();
        let mut r = LevelResult::from_stats(&outcome_of_level.stats, outcome_of_level.timing);
        r.server = outcome_of_level.server;
        if outcome_of_level.interrupted {
            r.mark_interrupted();
            if !user_stopped {
                r.interrupted = false; // stopped by the search, not the user
            }
        }
        // The client's own stall says nothing about the endpoint: a probe
        // whose sends were late (or whose window stretched) is repeated. A
        // probe with drops at --max-in-flight, errors or an early stop is
        // the endpoint's: in-flight is rate x latency, so a slow endpoint
        // is what fills the cap.
        let client_bound =
            !user_stopped && r.client_bound && r.dropped == 0 && r.failed == 0 && !stopped_early;
        let passed = !stopped_early && !user_stopped && r.slo_met == Some(true) && !r.client_bound;
        let reason = if passed || user_stopped {
            String::new()
        } else {
            fail_reason(&r, &plan.slo, stopped_early)
        };
        r.probe = Some(ProbeInfo {
            index: index + 1,
            phase: phase.as_str().into(),
            verdict: if user_stopped {
                "stopped".into()
            } else if client_bound {
                // Not a verdict on the endpoint: probed again (or, the
                // last time, the search ends inconclusive).
                "repeated".into()
            } else if passed {
                "pass".into()
            } else {
                "fail".into()
            },
            reason: reason.clone(),
            stopped_early,
        });
        for e in engine.observer.flush() {
            writer.add_error(e);
        }
        hooks.level_finished(&spec, &r);
        if passed && baseline_ttft.is_none() && r.ttft.count > 0 {
            baseline_ttft = Some(r.ttft.p50);
        }
        let mut p = ProbeSummary {
            index: index + 1,
            qps,
            phase: phase.as_str().into(),
            verdict: r
                .probe
                .as_ref()
                .map(|p| p.verdict.clone())
                .unwrap_or_default(),
            reason,
            stopped_early,
            achieved_qps: r
                .sessions
                .as_ref()
                .map_or(r.actual_qps, |s| s.sessions_per_sec),
            goodput: r.goodput.unwrap_or(0.0),
            slo_attainment: r.slo_attainment.unwrap_or(0.0),
            ttft_p95: r.ttft.p95,
            tpot_p95: r.tpot.p95,
            stable: r.stability.as_ref().is_none_or(|s| s.stable),
            duration_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            cooldown_s: 0.0,
        };
        let client_bound_reason = r.client_bound_reason.clone();
        levels.push(r);
        if user_stopped {
            probes.push(p);
            break;
        }
        if client_bound {
            repeats += 1;
            hooks.probe_finished(&p);
            probes.push(p);
            if repeats >= CLIENT_BOUND_REPEATS {
                let (lo, hi) = search.bracket();
                inconclusive = Some(Inconclusive {
                    qps,
                    repeats,
                    reason: client_bound_reason,
                    bracket: lo.zip(hi).map(|(l, h)| [l, h]),
                });
                break;
            }
            note_connections(engine, writer);
            writer.checkpoint(
                &levels,
                &plan.summarize(&levels, &probes, "running", None, None, t0.elapsed()),
            );
            tokio::select! {
                _ = tokio::time::sleep(CLIENT_BOUND_PAUSE) => {}
                _ = stop.cancelled() => {}
                _ = cancel.cancelled() => {}
            }
            continue;
        }
        repeats = 0;
        if !passed {
            p.cooldown_s = cool_down(engine, baseline_ttft, &mut seq, stop).await;
        }
        hooks.probe_finished(&p);
        probes.push(p);
        search.record(qps, passed);
        note_connections(engine, writer);
        writer.checkpoint(
            &levels,
            &plan.summarize(&levels, &probes, "running", None, None, t0.elapsed()),
        );
    }
    if outcome.is_none()
        && inconclusive.is_none()
        && let Next::Done(o) = search.next()
    {
        outcome = Some(o);
    }
    // An inconclusive search finished: it ran to its end and said so.
    let status = if outcome.is_some() || inconclusive.is_some() {
        RunStatus::Complete
    } else {
        RunStatus::Partial
    };
    let summary = plan.summarize(
        &levels,
        &probes,
        status.as_str(),
        outcome,
        inconclusive.as_ref(),
        t0.elapsed(),
    );
    note_connections(engine, writer);
    writer.finish(&levels, &summary, status);
    CapacityReport {
        levels,
        probes,
        outcome,
        inconclusive,
        summary,
        status,
        write_errors: writer.errors().to_vec(),
        notices: crate::engine::runner::notices(engine),
    }
}

/// Requests a probe plans to send (exact for constant arrivals, the
/// seeded draw for Poisson).
fn planned(spec: &LevelSpec) -> u64 {
    Schedule::new(spec.qps, spec.duration, spec.arrival, spec.seed).count() as u64
}

/// Stop the probe once its bad requests exceed what it may have. Returns
/// whether it did.
async fn watch(
    stats: Arc<std::sync::Mutex<crate::analysis::stats::LevelStats>>,
    allowed_bad: u64,
    stop: CancellationToken,
    cancel: CancellationToken,
) -> bool {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let bad = stats.lock().unwrap_or_else(|e| e.into_inner()).bad;
        if bad > allowed_bad {
            stop.cancel();
            cancel.cancel();
            return true;
        }
        if stop.is_cancelled() {
            return false;
        }
    }
}

/// After a failed probe: light requests until TTFT is back near the
/// baseline (or failures stop), at most [`COOLDOWN_MAX`]. Returns the
/// seconds spent.
async fn cool_down(
    engine: &Engine,
    baseline_ttft: Option<f64>,
    seq: &mut u64,
    stop: &CancellationToken,
) -> f64 {
    let t0 = Instant::now();
    loop {
        let run = LevelRun::new();
        let spec = LevelSpec {
            index: usize::MAX,
            qps: LIGHT_RATE,
            duration: Some(LIGHT_FOR),
            arrival: Arrival::Constant,
            seed: 0,
            load: Default::default(),
            limit: None,
            max_concurrency: None,
            sessions: false,
        };
        let out = engine
            .run_level(spec, &run, stop.child_token(), stop.child_token(), *seq)
            .await;
        *seq += out.global_scheduled;
        let light = LevelResult::from_stats(&out.stats, out.timing);
        let recovered = light.failed == 0
            && match baseline_ttft {
                Some(b) => light.ttft.p50 <= (2.0 * b).max(b + 0.25),
                None => true,
            };
        if recovered || stop.is_cancelled() || t0.elapsed() >= COOLDOWN_MAX {
            return (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        }
        tracing::info!(
            ttft_p50 = light.ttft.p50,
            failed = light.failed,
            "the endpoint has not recovered yet; cooling down"
        );
        tokio::select! {
            _ = tokio::time::sleep(COOLDOWN_STEP) => {}
            _ = stop.cancelled() => {}
        }
    }
}
