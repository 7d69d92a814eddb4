//! `summary.json`: what a run concluded, as plain data: the saturation
//! analysis, the SLO it was judged against, and a capacity search's answer.

use crate::analysis::level::LevelResult;
use crate::analysis::saturation::{Analysis, LevelFacts, analyze};
use serde::{Deserialize, Serialize};

/// Bumped when a field changes meaning or goes away (adding is free).
pub const SCHEMA_VERSION: u32 = 1;

/// `summary.json`: the saturation analysis and the run's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub schema_version: u32,
    pub status: String,
    pub partial: bool,
    pub analysis: Analysis,
    /// The SLO levels were judged against (`run --slo`, capacity runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<String>,
    /// The SLO attainment required of a level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_attainment: Option<f64>,
    /// A capacity search's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacitySummary>,
    /// A concurrency sweep: its knee and recommended users (`analysis`
    /// then holds no rates: a closed loop sets none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<crate::analysis::knee::ConcurrencyAnalysis>,
}

/// `summary.json`'s `capacity`: the rate the endpoint holds under the SLO.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CapacitySummary {
    /// `found`, `below_range` (even `min_qps` failed) or `above_range`
    /// (`max_qps` still passed).
    pub outcome: String,
    /// `capacity --concurrency`: `qps`, the bracket, the range and each
    /// probe's `qps` are concurrent users, not requests/s.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub concurrency: bool,
    /// Requests/s held under the SLO (the last confirmed pass).
    pub qps: Option<f64>,
    /// `[last pass, first fail]`.
    pub bracket: Option<[f64; 2]>,
    pub slo: String,
    pub attainment: f64,
    pub min_qps: f64,
    pub max_qps: f64,
    pub precision: f64,
    pub probes: Vec<ProbeSummary>,
    pub wall_time_s: f64,
    /// The answer in words.
    pub message: String,
}

/// One probe of a capacity search, as the console and summary show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeSummary {
    pub index: usize,
    pub qps: f64,
    pub phase: String,
    pub verdict: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub stopped_early: bool,
    pub achieved_qps: f64,
    pub goodput: f64,
    pub slo_attainment: f64,
    pub ttft_p95: f64,
    pub tpot_p95: f64,
    pub stable: bool,
    pub duration_s: f64,
    /// Seconds waited afterwards for the endpoint to recover.
    pub cooldown_s: f64,
}

/// Turn level results into analysis input.
pub fn facts(levels: &[LevelResult]) -> Vec<LevelFacts> {
    levels
        .iter()
        .map(|l| LevelFacts {
            qps_target: l.qps_target,
            // A session level's rate is sessions started per second.
            actual_qps: l
                .sessions
                .as_ref()
                .map_or(l.actual_qps, |s| s.sessions_per_sec),
            planned_qps: match &l.sessions {
                Some(s) if l.duration > 0.0 && s.started > 0 => s.started as f64 / l.duration,
                None if l.duration > 0.0 && l.scheduled > 0 => l.scheduled as f64 / l.duration,
                _ => l.qps_target,
            },
            success_rate: l.success_rate,
            ttft_p95: l.ttft.p95,
            client_bound: l.client_bound,
            stable: l.stability.as_ref().map(|s| s.stable),
            slo_met: l.slo_met,
            server_waiting: l.server.as_ref().and_then(|s| s.waiting_growth()),
            server_waiting_mean: l.server.as_ref().and_then(|s| s.waiting.map(|w| w.mean)),
        })
        .collect()
}

pub fn summarize(levels: &[LevelResult], status: &str) -> Summary {
    let closed = !levels.is_empty() && levels.iter().all(|l| l.concurrency.is_some());
    let (analysis, concurrency) = if closed {
        let users: Vec<_> = levels
            .iter()
            .map(|l| crate::analysis::knee::UsersFacts {
                concurrency: l.concurrency.unwrap_or(0),
                tokens_per_sec: l.output_throughput_tokens_per_sec,
                completed_qps: l.completed_qps,
                ttft_p95: l.ttft.p95,
                e2e_p50: l.e2e_latency.p50,
                success_rate: l.success_rate,
                client_bound: l.client_bound,
            })
            .collect();
        (
            Analysis::for_concurrency(),
            Some(crate::analysis::knee::analyze(&users)),
        )
    } else {
        (analyze(&facts(levels)), None)
    };
    Summary {
        schema_version: SCHEMA_VERSION,
        status: status.into(),
        partial: status != "complete",
        analysis,
        slo: None,
        slo_attainment: None,
        capacity: None,
        concurrency,
    }
}
