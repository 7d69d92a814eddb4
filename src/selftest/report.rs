//! The report: targets with verdicts, the table and the JSON.

use super::accuracy::*;
use super::memory::*;
use super::overhead::*;
use super::throughput::*;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    /// `--only ceiling`: llmload beside wrk.
    pub ceiling: Option<super::ceiling::Ceiling>,
    pub throughput: Vec<Throughput>,
    pub accuracy: Vec<Accuracy>,
    pub memory: Option<Memory>,
    pub overhead: Vec<Overhead>,
    /// The same end to end, in pairs (what the targets judge).
    pub overhead_pairs: Vec<super::pairs::PairedOverhead>,
    pub observer_cost: ObserverCost,
    /// Peak RSS after the memory run alone (steady load, before the
    /// throughput search overloads the client on purpose).
    pub peak_rss_steady_mb: f64,
    pub peak_rss_mb: f64,
    pub targets: Vec<Check>,
    /// Sections that did not run, and why.
    pub not_run: Vec<(String, String)>,
}

/// One target and what the run could say about it. A target is `met` or
/// `MISSED` only on measured samples; otherwise it says why not.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    /// `met`, `MISSED`, `not measured` or `not run`.
    pub verdict: &'static str,
    /// The figure, or why there is none.
    pub detail: String,
}

impl Check {
    pub fn judged(what: &str, ok: bool, value: String) -> Self {
        Self {
            what: what.into(),
            verdict: if ok { "met" } else { "MISSED" },
            detail: value,
        }
    }
    pub fn not_measured(what: &str, why: &str) -> Self {
        Self {
            what: what.into(),
            verdict: "not measured",
            detail: why.into(),
        }
    }
    pub fn not_run(what: &str, why: &str) -> Self {
        Self {
            what: what.into(),
            verdict: "not run",
            detail: why.into(),
        }
    }
}

pub(super) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {cpu}, loopback")
}

/// The human-readable table.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "llmload selftest — {}", r.machine);
    let _ = writeln!(
        o,
        "\nTHROUGHPUT (highest rate held: achieved >= 99% of target, lag p99 < 5 ms, >= 99.9% ok, none dropped)"
    );
    let _ = writeln!(
        o,
        "  {:<14} {:<22} {:>7} {:>9} {:>8} {:>8} {:>6} {:>11} {:>11} {:>8} {:>11}",
        "server",
        "stream",
        "req/s",
        "tokens/s",
        "streams",
        "lag p99",
        "cores",
        "s/1k req",
        "s/1M tok",
        "srv cores",
        "srv s/1M tok"
    );
    for t in &r.throughput {
        if let Some(note) = &t.note {
            let _ = writeln!(
                o,
                "  {:<14} {:<22} not measured: {note}",
                t.server, t.stream
            );
            continue;
        }
        let _ = writeln!(
            o,
            "  {:<14} {:<22} {:>7.0} {:>9.0} {:>8.0} {:>5.2} ms {:>6.2} {:>11.4} {:>11.2} {:>9.2} {:>11.2}",
            t.server,
            t.stream,
            t.held_rps,
            t.tokens_per_s,
            t.concurrent_streams,
            t.lag_p99_ms,
            t.client_cores,
            t.cpu_s_per_1k_requests,
            t.cpu_s_per_1m_tokens,
            t.server_cores,
            t.server_cpu_s_per_1m_tokens
        );
    }
    let _ = writeln!(
        o,
        "  (client columns: cores used, CPU seconds per 1,000 requests and per 1,000,000 tokens; srv: the server process)"
    );
    let _ = writeln!(
        o,
        "\nACCURACY (|client − server| on the shared monotonic clock; µs)"
    );
    let _ = writeln!(
        o,
        "  {:>8} {:>6}   {:>22}   {:>22}   {:>22}  {:>8}",
        "req/s", "n", "TTFT p50/p99/max", "ITL p50/p99/max", "E2E p50/p99/max", "lag p99"
    );
    for a in &r.accuracy {
        let f = |e: &ErrStats| format!("{:.0}/{:.0}/{:.0}", e.p50_us, e.p99_us, e.max_us);
        let _ = writeln!(
            o,
            "  {:>8.0} {:>6}   {:>22}   {:>22}   {:>22}  {:>5.2} ms",
            a.rate,
            a.requests,
            f(&a.ttft_error),
            f(&a.itl_error),
            f(&a.e2e_error),
            a.lag_p99_ms
        );
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(
            o,
            "\nMEMORY ({} at {:.0} req/s): RSS {:.1} MB after 10^4 requests, {:.1} MB after {} ({:+.1} MB); fds {} -> {}",
            m.server,
            m.rate,
            m.rss_at_1e4_mb,
            m.rss_at_end_mb,
            m.requests_at_end,
            m.growth_mb,
            m.fds_at_1e4,
            m.fds_at_end
        );
        let pts: Vec<String> = m
            .series_mb
            .iter()
            .map(|(n, r, f)| format!("{n}: {r:.1} MB/{f} fds"))
            .collect();
        let _ = writeln!(o, "  RSS through the run: {}", pts.join(", "));
    }
    let _ = writeln!(
        o,
        "\nOVERHEAD (mock, 64 tokens; end to end: process CPU per 1,000 requests vs off; the least-disturbed of interleaved runs in this process, the median beside it; the targets judge the pairs below)"
    );
    for ov in &r.overhead {
        let _ = writeln!(
            o,
            "  {:>6.0} req/s  {:<15} {:>8.4} s  {:>+7.1} %   median {:>8.4} s {:>+7.1} %   TTFT p50 {:.2} ms",
            ov.rate,
            ov.variant,
            ov.cpu_s_per_1k_requests,
            ov.cpu_overhead_pct,
            ov.median_cpu_s_per_1k_requests,
            ov.median_overhead_pct,
            ov.ttft_p50_ms
        );
    }
    if let Some(p) = r.overhead_pairs.first() {
        let _ = writeln!(
            o,
            "  in pairs ({} pairs a variant at {:.0} req/s; each: its own `llmload run` beside an off run, at the same time, the same mock):",
            p.pairs_pct.len(),
            p.rate
        );
    }
    for p in &r.overhead_pairs {
        let _ = writeln!(
            o,
            "    {:<15} mean {:>+6.1} ± {:.1} %   median {:>+6.1} %   (off {:.0} µs/request)",
            p.variant, p.mean_pct, p.stderr_pct, p.median_pct, p.off_us_per_request
        );
    }
    let c = &r.observer_cost;
    let _ = writeln!(
        o,
        "  measured directly (20,000 synthetic 64-token requests through each observer, export included):\n    metrics {:.1} µs/request ({:.1} %), traces {:.1} µs/request ({:.1} %), both {:.1} % of the client's {:.0} µs/request at 1,000 req/s",
        c.metrics_us_per_request,
        c.metrics_pct,
        c.traces_us_per_request,
        c.traces_pct,
        c.both_pct,
        c.baseline_us_per_request
    );
    let _ = writeln!(
        o,
        "\npeak RSS {:.1} MB under steady load; {:.1} MB after the throughput search (which overloads the client on purpose)",
        r.peak_rss_steady_mb, r.peak_rss_mb
    );
    if let Some(c) = &r.ceiling {
        let _ = writeln!(
            o,
            "\nCEILING (one nginx, the 64-token stream; wrk -t1 -c64 parses nothing)\n  wrk      {:>8.0} req/s  {:>6.1} µs CPU/request\n  llmload  {:>8.0} req/s held ({:.0} % of wrk)  {:>6.1} µs CPU/request at {:.0} req/s ({:.1}x wrk)",
            c.wrk_rps,
            c.wrk_cpu_us_per_request,
            c.held_rps,
            c.held_share * 100.0,
            c.llmload_cpu_us_per_request,
            c.quarter_rps,
            c.cpu_ratio,
        );
        let _ = writeln!(
            o,
            "  workers  {:>8.0} req/s held with 1 worker thread, {:.0} with {} ({:.2}x)",
            c.held_rps_one_worker,
            c.held_rps,
            c.workers,
            c.held_rps / c.held_rps_one_worker.max(1.0)
        );
        if c.not_held.is_some() {
            let _ = writeln!(o, "  overload not run: no rate was held to overload");
        } else {
            let _ = writeln!(o, "  overload {}", c.overload_line());
        }
    }
    let _ = writeln!(o, "\nTARGETS");
    for c in &r.targets {
        let _ = writeln!(o, "  [{}] {}: {}", c.verdict, c.what, c.detail);
    }
    if !r.not_run.is_empty() {
        let _ = writeln!(o, "\nNOT RUN");
        for (section, why) in &r.not_run {
            let _ = writeln!(o, "  {section}: {why}");
        }
    }
    o
}
