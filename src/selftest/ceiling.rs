//! The side-by-side ceiling (`selftest --only ceiling`, run by
//! `scripts/bench-ceiling.sh`): in one run, on one machine, against one
//! nginx serving the recorded 64-token stream to every POST,
//!
//! 1. `wrk -t1 -c64`: the ceiling. It parses nothing and allocates nothing
//!    per request; its rate and CPU per request are what a load generator
//!    on this machine cannot beat;
//! 2. llmload's held rate (as the throughput section defines "held"), as a
//!    share of wrk's;
//! 3. llmload's CPU per request at a quarter of wrk's rate, against wrk's;
//! 4. llmload at 1.5× its own held rate: what it achieves and how many
//!    connections it opens (an overloaded client must not storm the
//!    server with connects);
//! 5. the held rate again on a runtime of one worker thread: against the
//!    held rate with every worker (`--workers`), how the client scales
//!    with cores.
//!
//! Only ratios within one run compare: these VMs differ by 2.5× in
//! absolute rates.

use super::rig::*;
use crate::engine::sweep::NoObserver;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub wrk_rps: f64,
    pub wrk_cpu_us_per_request: f64,
    pub held_rps: f64,
    /// `held_rps / wrk_rps`.
    pub held_share: f64,
    /// At a quarter of wrk's rate.
    pub quarter_rps: f64,
    pub llmload_cpu_us_per_request: f64,
    /// llmload's CPU per request over wrk's, at that rate.
    pub cpu_ratio: f64,
    /// At 1.5× the held rate.
    pub overload_target: f64,
    pub overload_achieved: f64,
    pub overload_connections: u64,
    /// The cores nginx and llmload used at 1.5× the held rate: with both
    /// near one core each, the 2-core machine itself is the limit, and the
    /// server's answers slow down with it (an open-loop client then needs
    /// more connections to send on time, whoever is behind).
    pub overload_server_cores: f64,
    pub overload_client_cores: f64,
    pub overload_lag_p99_ms: f64,
    /// Why no rate was held, when none was (a machine too busy to measure
    /// on): the other figures are still measured and printed.
    pub not_held: Option<String>,
    /// The worker threads of the held rate above.
    pub workers: usize,
    /// The held rate with one worker thread (0: none held).
    pub held_rps_one_worker: f64,
}

/// The held rate on a fresh runtime of one worker thread, against the
/// same server: its own engine and pool, so nothing is shared with the
/// runtime that measured every worker.
fn held_with_one_worker(url: &str, pid: u32, probe_for: Duration, bisect: usize) -> f64 {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = crate::engine::sweep::runtime(1).ok()?;
        rt.block_on(async {
            let e = engine(client(&url, false), Arc::new(NoObserver), 512);
            let log = |l: &str| crate::errln!("  [1 worker]{l}");
            super::throughput::find_max(&e, pid, probe_for, bisect, &log)
                .await
                .ok()
                .map(|p| p.target)
        })
    })
    .join()
    .ok()
    .flatten()
    .unwrap_or(0.0)
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// CPU seconds of this process's waited-for children.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// wrk's requests/s and CPU µs per request, `secs` against `url`.
fn run_wrk(url: &str, secs: u64) -> Result<(f64, f64), String> {
    let wrk = which("wrk").ok_or("wrk is not installed (scripts/bench-ceiling.sh installs it)")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lua = dir.path().join("post.lua");
    std::fs::write(
        &lua,
        "wrk.method = \"POST\"\nwrk.body = '{\"model\":\"bulk\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )
    .map_err(|e| e.to_string())?;
    let cpu0 = children_cpu();
    let out = std::process::Command::new(wrk)
        .args(["-t1", "-c64", &format!("-d{secs}s"), "-s"])
        .arg(&lua)
        .arg(url)
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let cpu = children_cpu() - cpu0;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no 'Requests/sec' in wrk's output: {text}"))?;
    let requests = rps * secs as f64;
    Ok((rps, cpu / requests.max(1.0) * 1e6))
}

/// The four figures (see the module's doc).
pub(super) async fn ceiling(
    probe_for: Duration,
    bisect: usize,
    log: &dyn Fn(&str),
) -> Result<Ceiling, String> {
    let srv = super::servers::nginx(64)?;
    let secs = probe_for.as_secs().max(3) * 2;
    log(&format!(
        "ceiling: wrk -t1 -c64 for {secs} s against {}",
        srv.name
    ));
    let url = srv.url.clone();
    let (wrk_rps, wrk_us) = tokio::task::spawn_blocking(move || run_wrk(&url, secs))
        .await
        .map_err(|e| e.to_string())??;
    log(&format!(
        "    wrk: {wrk_rps:.0} req/s, {wrk_us:.1} µs CPU per request"
    ));
    let e = engine(client(&srv.url, false), Arc::new(NoObserver), 512);
    log("ceiling: llmload's held rate against the same nginx");
    let (held_rps, not_held) =
        match super::throughput::find_max(&e, srv.pid(), probe_for, bisect, log).await {
            Ok(p) => (p.target, None),
            Err(why) => {
                log(&format!("    {why}"));
                (0.0, Some(why))
            }
        };
    let quarter_rps = (wrk_rps / 4.0).round();
    let q = probe(&e, quarter_rps, probe_for).await;
    let llmload_us = q.cpu_s / (q.sent.max(1) as f64) * 1e6;
    log(&format!(
        "    at {quarter_rps:.0} req/s (a quarter of wrk's): {llmload_us:.1} µs CPU per request ({:.1}× wrk's), {}",
        llmload_us / wrk_us.max(1e-9),
        if q.held { "held" } else { "NOT held" }
    ));
    let workers = crate::base::workers::get();
    log(&format!(
        "ceiling: llmload's held rate with 1 worker thread (above: {workers})"
    ));
    let (url, pid) = (srv.url.clone(), srv.pid());
    let held_rps_one_worker =
        tokio::task::spawn_blocking(move || held_with_one_worker(&url, pid, probe_for, bisect))
            .await
            .unwrap_or(0.0);
    let mut c = Ceiling {
        wrk_rps,
        wrk_cpu_us_per_request: wrk_us,
        held_rps,
        held_share: held_rps / wrk_rps.max(1.0),
        quarter_rps,
        llmload_cpu_us_per_request: llmload_us,
        cpu_ratio: llmload_us / wrk_us.max(1e-9),
        overload_target: 0.0,
        overload_achieved: 0.0,
        overload_connections: 0,
        overload_server_cores: 0.0,
        overload_client_cores: 0.0,
        overload_lag_p99_ms: 0.0,
        not_held,
        workers,
        held_rps_one_worker,
    };
    // Without a held rate there is nothing to overload by half.
    if held_rps > 0.0 {
        c.overload_target = (held_rps * 1.5).round();
        // Over the probe's whole wall time: a client behind its schedule
        // reads its last streams after the level's duration.
        let t0 = std::time::Instant::now();
        let o = probe_with_server(&e, c.overload_target, probe_for, srv.pid()).await;
        let secs = t0.elapsed().as_secs_f64();
        c.overload_achieved = o.achieved;
        c.overload_connections = o.connections;
        c.overload_server_cores = o.server_cpu_s / secs;
        c.overload_client_cores = o.cpu_s / secs;
        c.overload_lag_p99_ms = o.lag_p99_ms;
        log(&format!("    at 1.5× held: {}", c.overload_line()));
    }
    Ok(c)
}

impl Ceiling {
    /// The overload probe's figures, as the report and the verdict say
    /// them.
    pub fn overload_line(&self) -> String {
        format!(
            "{:.0} req/s asked ({:.0} % of wrk's): achieved {:.0} ({:.0} % of held), {} new connections, lag p99 {:.1} ms; cores used: nginx {:.2}, llmload {:.2}",
            self.overload_target,
            self.overload_target / self.wrk_rps.max(1.0) * 100.0,
            self.overload_achieved,
            self.overload_achieved / self.held_rps.max(1.0) * 100.0,
            self.overload_connections,
            self.overload_lag_p99_ms,
            self.overload_server_cores,
            self.overload_client_cores
        )
    }
}
