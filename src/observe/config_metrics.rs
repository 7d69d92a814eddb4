//! The daemon's config reloads, under Prometheus's own names for the same
//! facts (`prometheus_config_last_reload_successful` and friends), so that
//! the alert people already have for Prometheus reads the same for us.

use prometheus::{Gauge, IntCounterVec, IntGauge, Opts};

#[derive(Clone)]
pub struct ConfigMetrics {
    /// `result`: success or failure.
    pub reloads: IntCounterVec,
    /// 1 when the last reload (or the start) applied the file, 0 when the
    /// last reload was refused and the daemon runs on the previous one.
    pub last_reload_successful: IntGauge,
    pub last_reload_success_time: Gauge,
}

impl ConfigMetrics {
    pub fn new() -> Self {
        let m = Self {
            reloads: IntCounterVec::new(
                Opts::new(
                    "config_reloads_total",
                    "Config reloads (SIGHUP, POST /-/reload) by result: success, failure (the file was refused; the daemon runs on the previous one).",
                ),
                &["result"],
            )
            .expect("valid counter"),
            last_reload_successful: IntGauge::new(
                "config_last_reload_successful",
                "1 if the last reload applied the config file (or none was asked since the start), 0 if it was refused.",
            )
            .expect("valid gauge"),
            last_reload_success_time: Gauge::new(
                "config_last_reload_success_timestamp_seconds",
                "Unix time the config in force was loaded (the start, or the last successful reload).",
            )
            .expect("valid gauge"),
        };
        for r in ["success", "failure"] {
            m.reloads.with_label_values(&[r]);
        }
        m.last_reload_successful.set(1);
        m
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.reloads.clone()),
            Box::new(self.last_reload_successful.clone()),
            Box::new(self.last_reload_success_time.clone()),
        ]
    }

    /// A reload's outcome.
    pub fn reloaded(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        self.last_reload_successful.set(i64::from(ok));
        if ok {
            self.loaded_now();
        }
    }

    /// The config in force was loaded now.
    pub fn loaded_now(&self) {
        self.last_reload_success_time
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }
}

impl Default for ConfigMetrics {
    fn default() -> Self {
        Self::new()
    }
}
