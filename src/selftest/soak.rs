//! The soak: every fault kind mixed in, the books and resources checked
//! every minute.

use super::rig::*;
use super::servers;
use crate::client::{ClientConfig, LlmClient};
use crate::engine::sweep::{LevelRun, LevelSpec, NoObserver};
use crate::plan::schedule::Arrival;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One minute of the fault soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakMinute {
    pub minute: u64,
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub balanced: bool,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub rss_mb: f64,
    pub fds: usize,
}

/// A bounded soak against the mock with every fault kind mixed in, one
/// level per minute; RSS and fds after each.
pub async fn soak(minutes: u64, rate: f64, log: &dyn Fn(&str)) -> Result<Vec<SoakMinute>, String> {
    let srv = servers::mock(
        "llmload mock",
        &[
            "--slots",
            "256",
            "--queue",
            "256",
            "--ttft",
            "50ms",
            "--prefill-per-token",
            "0",
            "--tpot",
            "10ms",
            "--tpot-growth",
            "0",
            "--output-tokens",
            "32",
            "--stall-for",
            "2s",
            "--truth-capacity",
            "1000",
            "--fault",
            "http500=0.01",
            "--fault",
            "http503=0.01",
            "--fault",
            "http429=0.01",
            "--fault",
            "reset=0.01",
            "--fault",
            "truncate=0.01",
            "--fault",
            "malformed=0.01",
            "--fault",
            "stall=0.01",
            "--fault",
            "slow-first-byte=0.01",
        ],
    )?;
    let mut c = ClientConfig::new(&srv.url);
    c.first_token_timeout = Some(Duration::from_secs(1));
    c.idle_timeout = Some(Duration::from_secs(1));
    c.request_timeout = Duration::from_secs(10);
    let e = engine(
        Arc::new(LlmClient::new(c).map_err(|e| e.to_string())?),
        Arc::new(NoObserver),
        512,
    );
    let mut out = Vec::new();
    let mut seq = 0;
    for minute in 1..=minutes {
        let run = LevelRun::new();
        let o = e
            .run_level(
                LevelSpec {
                    index: minute as usize,
                    qps: rate,
                    duration: Some(Duration::from_secs(60)),
                    arrival: Arrival::Poisson,
                    seed: minute,
                    load: Default::default(),
                    limit: None,
                    max_concurrency: None,
                    sessions: false,
                },
                &run,
                CancellationToken::new(),
                CancellationToken::new(),
                seq,
            )
            .await;
        seq += o.stats.sent;
        let m = SoakMinute {
            minute,
            sent: o.stats.sent,
            succeeded: o.stats.succeeded,
            failed: o.stats.failed,
            balanced: o.stats.sent == o.stats.succeeded + o.stats.failed,
            errors: o.stats.errors.iter().map(|(k, v)| (k.key(), *v)).collect(),
            rss_mb: rss() as f64 / 1e6,
            fds: open_fds(),
        };
        log(&format!(
            "  minute {minute:>2}: sent {} ok {} failed {} balanced {} RSS {:.1} MB fds {} errors {:?}",
            m.sent, m.succeeded, m.failed, m.balanced, m.rss_mb, m.fds, m.errors
        ));
        out.push(m);
    }
    Ok(out)
}
