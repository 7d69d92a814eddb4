//! The shared state of one mock instance: configuration, the slot
//! semaphore, occupancy counters, metrics and the ground-truth log. The
//! server (HTTP) and the generator (streams) both work on it.

use super::MockConfig;
use super::metrics::MockMetrics;
use super::truth::TruthLog;
use crate::base::timer::PreciseTimer;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use tokio::sync::Semaphore;

/// Shared state of one mock instance.
pub struct MockState {
    pub cfg: MockConfig,
    pub slots: Arc<Semaphore>,
    /// Requests admitted and not finished: queued plus running.
    pub in_system: AtomicUsize,
    pub running: AtomicUsize,
    pub seq: AtomicU64,
    pub metrics: MockMetrics,
    pub truth: TruthLog,
    /// Sub-millisecond sleeps: "TTFT 40 ms" means 40 ms, not 41.5.
    pub timer: PreciseTimer,
    /// `--prefix-cache`: blocks of prompts (and answers) prefilled.
    pub prefix: Option<std::sync::Mutex<super::prefix_cache::PrefixCache>>,
}

impl MockState {
    pub fn new(cfg: MockConfig) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(cfg.capacity.slots)),
            in_system: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            metrics: MockMetrics::new(),
            truth: TruthLog::new(cfg.truth_capacity),
            timer: PreciseTimer::new(),
            prefix: (cfg.prefix_cache_tokens > 0).then(|| {
                std::sync::Mutex::new(super::prefix_cache::PrefixCache::new(
                    cfg.prefix_cache_tokens,
                ))
            }),
            cfg,
        })
    }
}
