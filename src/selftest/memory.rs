//! Memory over time: RSS and open descriptors through a long run.

use super::rig::*;

use crate::engine::sweep::{Engine, LevelRun, LevelSpec};
use crate::plan::schedule::Arrival;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub server: String,
    pub rate: f64,
    pub rss_at_1e4_mb: f64,
    pub rss_at_end_mb: f64,
    pub requests_at_end: u64,
    pub growth_mb: f64,
    pub fds_at_1e4: usize,
    pub fds_at_end: usize,
    /// (requests completed, RSS MB, open fds) through the run.
    pub series_mb: Vec<(u64, f64, usize)>,
}

pub(super) async fn memory(e: &Engine, server: &str, rate: f64, total: u64) -> Memory {
    let run = LevelRun::new();
    let progress = run.progress.clone();
    // RSS at 10^4, then at each further 10 % of the run.
    let marks: Vec<u64> = std::iter::once(10_000)
        .chain((1..=10).map(|i| total * i / 10))
        .filter(|&m| m >= 10_000)
        .collect();
    let sampler = tokio::spawn(async move {
        let mut series = Vec::new();
        let mut next = 0;
        while next < marks.len() {
            let done = progress.completed.load(Ordering::Relaxed);
            if done >= marks[next] {
                series.push((marks[next], rss(), open_fds()));
                next += 1;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        series
    });
    // Run 5 % past the last mark so it is sampled mid-run, not while the
    // level's results are being assembled.
    let dur = Duration::from_secs_f64(total as f64 * 1.05 / rate);
    let out = e
        .run_level(
            LevelSpec {
                index: 0,
                qps: rate,
                duration: Some(dur),
                arrival: Arrival::Constant,
                seed: 0,
                load: Default::default(),
                limit: None,
                max_concurrency: None,
                sessions: false,
            },
            &run,
            CancellationToken::new(),
            CancellationToken::new(),
            0,
        )
        .await;
    let mut series = tokio::time::timeout(Duration::from_secs(2), sampler)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if series.is_empty() {
        series.push((out.stats.sent, rss(), open_fds()));
    }
    let (_, at_1e4, fds_1e4) = series[0];
    let (at_n, end, fds_end) = *series.last().expect("non-empty");
    let _ = out;
    Memory {
        server: server.into(),
        rate,
        rss_at_1e4_mb: at_1e4 as f64 / 1e6,
        rss_at_end_mb: end as f64 / 1e6,
        requests_at_end: at_n,
        growth_mb: (end as f64 - at_1e4 as f64) / 1e6,
        fds_at_1e4: fds_1e4,
        fds_at_end: fds_end,
        series_mb: series
            .iter()
            .map(|(n, r, f)| (*n, *r as f64 / 1e6, *f))
            .collect(),
    }
}
