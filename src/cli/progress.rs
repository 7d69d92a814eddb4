//! Progress on stderr while levels run: a bar per level on a terminal,
//! one line per level otherwise (CI logs stay readable). Never panics on a
//! closed stderr (see [`crate::base::console`]).

use crate::analysis::level::LevelResult;
use crate::engine::runner::SweepHooks;
use crate::engine::sweep::{LevelRun, LevelSpec};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Progress on stderr: a bar per level on a terminal, one line per level
/// otherwise (logs stay readable in CI).
pub struct ConsoleHooks {
    tty: bool,
    current: Mutex<Option<(ProgressBar, tokio::task::JoinHandle<()>)>>,
    traces: Option<(
        crate::observe::telemetry::Telemetry,
        crate::observe::telemetry::SweepSpan,
    )>,
}

impl ConsoleHooks {
    pub fn new(
        traces: Option<(
            crate::observe::telemetry::Telemetry,
            crate::observe::telemetry::SweepSpan,
        )>,
    ) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            current: Mutex::new(None),
            traces,
        }
    }
}

impl SweepHooks for ConsoleHooks {
    fn level_started(&self, spec: &LevelSpec, levels: usize, planned: u64, run: &LevelRun) {
        if let Some((t, s)) = &self.traces {
            t.level_started(s, spec);
        }
        // `levels` 0: a capacity probe (how many there will be is not known).
        let label = if levels == 0 {
            format!("probe {}: {}", spec.index + 1, spec.describe())
        } else {
            format!("level {}/{levels}: {}", spec.index + 1, spec.describe())
        };
        if !self.tty {
            match (spec.load.concurrency(), spec.duration) {
                (Some(n), Some(d)) => crate::errln!(
                    "{label}: {n} users for {}",
                    crate::base::duration::format(d)
                ),
                (_, Some(d)) if spec.sessions => crate::errln!(
                    "{label}: starting sessions for {} (each sends its turns as its replies end)",
                    crate::base::duration::format(d)
                ),
                _ if planned == 0 => crate::errln!("{label}: sending until stopped"),
                _ => crate::errln!("{label}: sending {planned} requests"),
            }
            return;
        }
        // A closed loop's count is not known ahead: a bar without an end.
        let bar = ProgressBar::with_draw_target(
            (planned > 0).then_some(planned),
            ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} sent {msg}",
            )
            .expect("static template"),
        );
        bar.set_prefix(label);
        let progress = run.progress.clone();
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                let sched = progress.scheduled.load(Ordering::Relaxed);
                let done = progress.completed.load(Ordering::Relaxed);
                let failed = progress.failed.load(Ordering::Relaxed);
                let open = progress.in_flight.load(Ordering::Relaxed);
                b.set_position(sched);
                b.set_message(format!("| {done} done, {failed} failed, {open} in flight"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        *self.current.lock().expect("console lock") = Some((bar, ticker));
    }

    fn warmed_up(&self, w: &crate::results::WarmupReport) {
        crate::errln!(
            "warm-up: {} requests in {:.1}s ({} errors), left out of the results",
            w.requests,
            w.duration_s,
            w.errors
        );
    }

    fn level_finished(&self, _spec: &LevelSpec, r: &LevelResult) {
        if let Some((t, s)) = &self.traces {
            t.level_finished(s, r);
        }
        if let Some((bar, ticker)) = self.current.lock().expect("console lock").take() {
            ticker.abort();
            bar.finish_and_clear();
        }
        let retries = if r.retried_stale_connection > 0 {
            format!(", {} stale-connection retries", r.retried_stale_connection)
        } else {
            String::new()
        };
        let achieved = if r.concurrency.is_some() || r.qps_ramp.is_some() {
            format!(" ({:.2} req/s)", r.actual_qps)
        } else {
            String::new()
        };
        let queue = match &r.client_queue {
            Some(q) if q.max > 0.0 => format!(", client queue p95 {:.3}s", q.p95),
            _ => String::new(),
        };
        crate::errln!(
            "  {}{achieved}: {} sent, {:.1}% ok, TTFT p95 {:.3}s, E2E p95 {:.3}s, {} new connections{queue}{retries}{}{}",
            r.describe(),
            r.sent,
            r.success_rate,
            r.ttft.p95,
            r.e2e_latency.p95,
            r.new_connections,
            if r.client_bound { ", CLIENT-BOUND" } else { "" },
            if r.interrupted { ", interrupted" } else { "" }
        );
        if let Some(s) = &r.server {
            crate::errln!("    {}", s.describe());
        }
    }
}
