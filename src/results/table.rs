//! The console report: the seed's table, byte for byte, then our additions.
//!
//! Users grep and diff this output, so the first block keeps the seed's
//! title rule, column names, widths (12 wide, one space between, Success%
//! 10 wide) and error lines exactly. Everything we add (saturation
//! analysis, client-bound warnings, token-count notes) comes after it.

use crate::analysis::level::LevelResult;
use crate::analysis::saturation::{Analysis, fmt_qps};
use crate::analysis::slo::SloTarget;
use crate::analysis::summary::CapacitySummary;
use std::fmt::Write;

/// Render the seed's table for the chosen percentiles.
pub fn render_table(levels: &[LevelResult], percentiles: &[f64]) -> String {
    let mut out = String::new();
    let rule = "=".repeat(80);
    let _ = writeln!(out, "{rule}\nQPS BENCHMARK RESULTS\n{rule}");

    // A concurrency sweep's levels are users, and its first column says so.
    let closed = !levels.is_empty() && levels.iter().all(|l| l.concurrency.is_some());
    let mut header = vec![
        format!("{:<12}", if closed { "Concurrency" } else { "QPS Target" }),
        format!("{:<12}", "Actual QPS"),
        format!("{:<10}", "Success%"),
    ];
    for metric in ["TTFT", "E2E"] {
        for p in percentiles {
            header.push(format!("{:<12}", format!("{metric} P{}(s)", fmt_pct(*p))));
        }
    }
    for p in percentiles {
        header.push(format!("{:<12}", format!("Tok/s P{}", fmt_pct(*p))));
    }
    let _ = writeln!(out, "{}", header.join(" "));

    for l in levels {
        let first = match (l.concurrency, l.qps_ramp) {
            (Some(n), _) => format!("{n:<12}"),
            (None, Some([a, b])) => format!("{:<12}", format!("{}..{}", fmt_qps(a), fmt_qps(b))),
            (None, None) => format!("{:<12.1}", l.qps_target),
        };
        let mut row = vec![
            first,
            format!("{:<12.2}", l.actual_qps),
            format!("{:<10.1}", l.success_rate),
        ];
        for m in [Metric::Ttft, Metric::E2e] {
            for p in percentiles {
                row.push(format!("{:<12.3}", pick(l, m, *p)));
            }
        }
        for p in percentiles {
            row.push(format!("{:<12.1}", pick(l, Metric::TokensPerSec, *p)));
        }
        let _ = writeln!(out, "{}", row.join(" "));
    }

    for l in levels.iter().filter(|l| !l.errors.is_empty()) {
        let total: u64 = l.errors.values().sum();
        match l.concurrency {
            Some(n) => {
                let _ = writeln!(out, "\nConcurrency {n} - Errors ({total} total):");
            }
            None => {
                let _ = writeln!(out, "\nQPS {:.1} - Errors ({total} total):", l.qps_target);
            }
        }
        let mut errs: Vec<_> = l.errors.iter().collect();
        errs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (k, v) in errs {
            let _ = writeln!(out, "  - {k}: {v} occurrences");
        }
    }
    out
}

/// A concurrency sweep's analysis: its knee and the users to run at.
pub fn render_concurrency(
    levels: &[LevelResult],
    a: &crate::analysis::knee::ConcurrencyAnalysis,
    partial: bool,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nCONCURRENCY ANALYSIS");
    let opt = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "  Knee:                   {:<8} {}",
        opt(a.knee),
        a.knee_reason
    );
    let _ = writeln!(
        out,
        "  Peak throughput:        {:<8} tokens/s at {} users",
        crate::analysis::saturation::fmt_qps(a.peak_tokens_per_sec),
        opt(a.peak_at)
    );
    let _ = writeln!(
        out,
        "  Recommended users:      {:<8} {}",
        opt(a.recommended_concurrency),
        a.recommendation
    );
    let _ = writeln!(
        out,
        "  NOTE: a closed loop sends less when the server slows down, so its latencies hide that \
         delay (coordinated omission); use open-loop --qps levels or `llmload capacity` for a \
         rate to hold under an SLO"
    );
    for l in levels.iter().filter(|l| l.client_bound) {
        let _ = writeln!(
            out,
            "  WARNING: {} was client-bound ({}): the load generator, not the endpoint, limited this level",
            l.describe(),
            l.client_bound_reason
        );
    }
    if partial {
        let _ = writeln!(
            out,
            "  PARTIAL RUN: stopped before every level finished; results hold the levels measured"
        );
    }
    out
}

/// Our additions below the seed's table.
pub fn render_analysis(levels: &[LevelResult], a: &Analysis, partial: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nSATURATION ANALYSIS");
    let opt = |v: Option<f64>| v.map(fmt_qps).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "  Max QPS without errors: {:<8} {}",
        opt(a.max_qps_without_errors),
        a.max_qps_reason
    );
    let _ = writeln!(
        out,
        "  Saturation point:       {:<8} {}{}",
        opt(a.saturation_qps),
        if a.saturation_evidence.is_empty() {
            String::new()
        } else {
            format!("[{}] ", a.saturation_evidence)
        },
        a.saturation_reason
    );
    let _ = writeln!(
        out,
        "  Recommended limit:      {:<8} {}",
        opt(a.recommended_qps),
        a.recommendation
    );
    for l in levels.iter().filter(|l| l.client_bound) {
        let _ = writeln!(
            out,
            "  WARNING: QPS {:.1} was client-bound ({}): \
             the load generator, not the endpoint, limited this level",
            l.qps_target,
            if l.client_bound_reason.is_empty() {
                format!(
                    "schedule lag p99 {:.1} ms, {} dropped",
                    l.schedule_lag.p99 * 1000.0,
                    l.dropped
                )
            } else {
                l.client_bound_reason.clone()
            }
        );
    }
    for l in levels.iter().filter(|l| l.connection_bound) {
        let _ = writeln!(
            out,
            "  NOTE: QPS {:.1}: {:.0}% of TTFT was connection set-up ({} new connections, connect p95 {:.3}s): \
             the endpoint's TTFT is lower than shown",
            l.qps_target,
            l.connection_setup_share * 100.0,
            l.new_connections,
            l.connect.p95
        );
    }
    for l in levels.iter().filter(|l| l.tokens.output_source == "chunks") {
        let _ = writeln!(
            out,
            "  NOTE: QPS {:.1}: the server sent no usage; output tokens were counted from chunks (estimated)",
            l.qps_target
        );
    }
    if partial {
        let _ = writeln!(
            out,
            "  PARTIAL RUN: stopped before every level finished; results hold the levels measured"
        );
    }
    out
}

fn fmt_pct(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{p:.0}")
    } else {
        format!("{p}")
    }
}

#[derive(Clone, Copy)]
enum Metric {
    Ttft,
    E2e,
    TokensPerSec,
}

/// A percentile from the summary, or read from the serialized histogram
/// for percentiles the summary does not carry (e.g. `--percentiles 75`).
fn pick(l: &LevelResult, m: Metric, p: f64) -> f64 {
    let (dist, enc, scale) = match m {
        Metric::Ttft => (&l.ttft, &l.histograms.ttft_us, 1e-6),
        Metric::E2e => (&l.e2e_latency, &l.histograms.e2e_us, 1e-6),
        Metric::TokensPerSec => (&l.tokens_per_sec, &l.histograms.tokens_per_sec_milli, 1e-3),
    };
    if let Some(v) = dist.at(p) {
        return v;
    }
    if dist.count == 0 {
        return 0.0;
    }
    crate::analysis::stats::decode(enc)
        .map(|h| h.value_at_quantile(p / 100.0) as f64 * scale)
        .unwrap_or(0.0)
}

/// With `--slo`: goodput, attainment and stability per level.
pub fn render_slo(levels: &[LevelResult], slo: &SloTarget) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nSLO {} ({}% of scheduled requests)",
        slo.slo,
        fmt_qps(slo.attainment * 100.0)
    );
    let _ = writeln!(
        out,
        "  {:<10} {:>10} {:>11} {:>8} {:>8}",
        "QPS", "Goodput", "Attainment", "SLO met", "Stable"
    );
    for l in levels {
        let _ = writeln!(
            out,
            "  {:<10} {:>10.2} {:>10.2}% {:>8} {:>8}",
            fmt_qps(l.qps_target),
            l.goodput.unwrap_or(0.0),
            l.slo_attainment.unwrap_or(0.0) * 100.0,
            if l.slo_met == Some(true) { "yes" } else { "NO" },
            stable_word(l)
        );
    }
    out
}

fn stable_word(l: &LevelResult) -> &'static str {
    match &l.stability {
        Some(s) if !s.stable => "NO",
        Some(s) if s.windows >= crate::analysis::stability::MIN_WINDOWS => "yes",
        Some(_) => "short",
        None => "-",
    }
}

/// A capacity search: one row per probe, then the answer.
pub fn render_capacity(c: &CapacitySummary) -> String {
    let mut out = String::new();
    let rule = "=".repeat(80);
    let _ = writeln!(
        out,
        "{rule}\nCAPACITY UNDER SLO {} ({}% of scheduled requests)\n{rule}",
        c.slo,
        fmt_qps(c.attainment * 100.0)
    );
    let _ = writeln!(
        out,
        "{:>3} {:<8} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>7} {:>8} {:>6}",
        "#",
        "phase",
        "rate",
        "achieved",
        "goodput",
        "attain%",
        "TTFT p95",
        "TPOT p95",
        "stable",
        "verdict",
        "early"
    );
    for p in &c.probes {
        let _ = writeln!(
            out,
            "{:>3} {:<8} {:>9} {:>9.2} {:>9.2} {:>8.2} {:>8.3}s {:>8.3}s {:>7} {:>8} {:>6}",
            p.index,
            p.phase,
            fmt_qps(p.qps),
            p.achieved_qps,
            p.goodput,
            p.slo_attainment * 100.0,
            p.ttft_p95,
            p.tpot_p95,
            if p.stable { "yes" } else { "NO" },
            p.verdict,
            if p.stopped_early { "yes" } else { "" }
        );
        if !p.reason.is_empty() {
            let _ = writeln!(out, "      {}", p.reason);
        }
    }
    let _ = writeln!(out, "\n{}", c.message);
    out
}

/// With a tokenizer: how the server's prompt token counts compare with
/// ours, when they differ (a chat template adds tokens; a different
/// tokenizer counts differently).
/// With `--max-concurrency`: how long sends waited for a slot, per level
/// (the wait is inside TTFT and E2E, which count from the planned send).
/// Sessions by level: how they ended, and TTFT, prompt and cached tokens
/// by turn bucket; or, for single requests, the cache hit ratio where the
/// server reported cached tokens. `None` when there is neither.
pub fn render_sessions(levels: &[LevelResult]) -> Option<String> {
    let pct = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
    if levels.iter().all(|l| l.sessions.is_none()) {
        let cached: Vec<&LevelResult> = levels
            .iter()
            .filter(|l| l.cache_hit_ratio.is_some())
            .collect();
        if cached.is_empty() {
            return None;
        }
        let mut out =
            String::from("\nPREFIX CACHE (cached ÷ prompt tokens, as the server reported)\n");
        for l in cached {
            let _ = writeln!(out, "  {}: {}", l.describe(), pct(l.cache_hit_ratio));
        }
        return Some(out);
    }
    let mut out = String::from(
        "\nSESSIONS (QPS Target counts new sessions per second; Actual QPS counts requests, every turn)\n",
    );
    for l in levels {
        let Some(s) = &l.sessions else { continue };
        let aborted: u64 = s.aborted.values().sum();
        let _ = writeln!(
            out,
            "  {}: {} started ({:.2}/s), {} completed, {} aborted, {} open at the end; lag p95: first turns {:.3}s, later turns {:.3}s; cache hit {}",
            l.describe(),
            s.started,
            s.sessions_per_sec,
            s.completed,
            aborted,
            s.open_at_end,
            s.start_lag.p95,
            s.turn_lag.p95,
            pct(l.cache_hit_ratio)
        );
        if aborted > 0 {
            let why: Vec<String> = s.aborted.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(out, "    aborted by: {}", why.join(", "));
        }
        let _ = writeln!(
            out,
            "    {:<6} {:<9} {:<12} {:<12} {:<12} {:<11} {:<11} {:<9}",
            "Turn",
            "Requests",
            "TTFT P50(s)",
            "TTFT P95(s)",
            "E2E P50(s)",
            "Prompt tok",
            "Cached tok",
            "Cache hit"
        );
        for t in &s.turns {
            let _ = writeln!(
                out,
                "    {:<6} {:<9} {:<12.3} {:<12.3} {:<12.3} {:<11.1} {:<11} {:<9}",
                t.turn,
                t.requests,
                t.ttft.p50,
                t.ttft.p95,
                t.e2e_latency.p50,
                t.input_tokens_mean,
                t.cached_tokens_mean
                    .map_or("-".to_string(), |c| format!("{c:.1}")),
                pct(t.cache_hit_ratio)
            );
        }
    }
    Some(out)
}

pub fn render_queue(levels: &[LevelResult]) -> Option<String> {
    let queued: Vec<&LevelResult> = levels.iter().filter(|l| l.client_queue.is_some()).collect();
    if queued.is_empty() {
        return None;
    }
    let mut out =
        String::from("\nCLIENT QUEUE (--max-concurrency: waits for a slot, inside TTFT and E2E)\n");
    for l in queued {
        let q = l.client_queue.as_ref().expect("filtered");
        let _ = writeln!(
            out,
            "  {}: p50 {:.3}s  p95 {:.3}s  p99 {:.3}s  max {:.3}s",
            l.describe(),
            q.p50,
            q.p95,
            q.p99,
            q.max
        );
    }
    Some(out)
}

pub fn render_input_check(levels: &[LevelResult]) -> Option<String> {
    let counted: u64 = levels.iter().map(|l| l.tokens.input_counted).sum();
    let mismatch: u64 = levels.iter().map(|l| l.tokens.input_mismatch).sum();
    if counted == 0 || mismatch == 0 {
        return None;
    }
    let excess = levels
        .iter()
        .map(|l| l.tokens.input_excess_mean.unwrap_or(0.0) * l.tokens.input_counted as f64)
        .sum::<f64>()
        / counted as f64;
    Some(format!(
        "the server counted different prompt tokens than --tokenizer in {mismatch} of {counted} requests \
         ({excess:+.1} tokens a request on average: a chat template, or another tokenizer)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::level::LevelTiming;
    use crate::analysis::stats::LevelStats;
    use std::time::Duration;

    /// The seed README's header line, copied with its trailing spaces.
    const SEED_HEADER: &str = "QPS Target   Actual QPS   Success%   TTFT P50(s)  TTFT P95(s)  TTFT P99(s)  E2E P50(s)   E2E P95(s)   E2E P99(s)   Tok/s P50    Tok/s P95    Tok/s P99   ";

    fn level(qps: f64) -> LevelResult {
        LevelResult::from_stats(
            &LevelStats::new(),
            LevelTiming {
                qps_target: qps,
                duration: Duration::from_secs(1),
                send_window: Duration::from_secs(1),
                drain: Duration::ZERO,
                client: None,
                ..Default::default()
            },
        )
    }

    #[test]
    fn header_and_rows_match_the_seed() {
        let mut l = level(1.0);
        l.actual_qps = 1.0;
        l.success_rate = 100.0;
        l.ttft.p50 = 0.12;
        l.ttft.p95 = 0.15;
        l.ttft.p99 = 0.18;
        l.e2e_latency.p50 = 2.5;
        l.e2e_latency.p95 = 2.8;
        l.e2e_latency.p99 = 3.0;
        l.tokens_per_sec.p50 = 85.3;
        l.tokens_per_sec.p95 = 92.1;
        l.tokens_per_sec.p99 = 98.5;
        let mut bad = level(20.0);
        bad.actual_qps = 19.82;
        bad.success_rate = 85.2;
        bad.errors.insert("HTTP 503".into(), 145);
        bad.errors.insert("timeout (total)".into(), 33);
        let t = render_table(&[l, bad], &[50.0, 95.0, 99.0]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "=".repeat(80));
        assert_eq!(lines[1], "QPS BENCHMARK RESULTS");
        assert_eq!(lines[2], "=".repeat(80));
        assert_eq!(lines[3], SEED_HEADER);
        assert_eq!(
            lines[4],
            "1.0          1.00         100.0      0.120        0.150        0.180        2.500        2.800        3.000        85.3         92.1         98.5        "
        );
        assert!(lines[5].starts_with("20.0         19.82        85.2       0.000"));
        assert_eq!(lines[6], "");
        assert_eq!(lines[7], "QPS 20.0 - Errors (178 total):");
        assert_eq!(lines[8], "  - HTTP 503: 145 occurrences");
        assert_eq!(lines[9], "  - timeout (total): 33 occurrences");
    }

    #[test]
    fn compact_p50_only() {
        let t = render_table(&[level(1.0)], &[50.0]);
        assert_eq!(
            t.lines().nth(3).unwrap(),
            "QPS Target   Actual QPS   Success%   TTFT P50(s)  E2E P50(s)   Tok/s P50   "
        );
    }
}
