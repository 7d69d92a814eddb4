//! Capacity under an SLO, found by search against mocks of known capacity:
//! queueing servers that never refuse (as vLLM, TGI and llama.cpp's server
//! behave) and one that rejects with 503. Short probes keep the suite
//! quick; the closing note has the default-length figures.

mod common;

use common::*;
use llmload::analysis::search::{Outcome, SearchConfig};
use llmload::analysis::slo::{Slo, SloTarget};
use llmload::engine::capacity::{self, CapacityHooks, CapacityPlan};
use llmload::engine::runner::{NoHooks, Outputs, RunWriter};
use llmload::engine::sweep::Engine;
use llmload::mock::capacity::{CapacityModel, UNBOUNDED};
use llmload::mock::{MockConfig, OutputTokens};
use llmload::plan::schedule::Arrival;
use llmload::results::{Metadata, RunDir, RunInfo};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl CapacityHooks for Quiet {}
struct Quiet;
impl llmload::engine::runner::SweepHooks for Quiet {}

/// A mock of capacity `slots / (ttft + 59 × tpot)` requests/s (60 output
/// tokens, no prefill cost, no batch slow-down: the formula is exact).
fn mock_cfg(slots: usize, ttft_ms: u64, tpot_us: u64, queue: usize) -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots,
            queue,
            ttft: Duration::from_millis(ttft_ms),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_micros(tpot_us),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(60)),
        ..MockConfig::default()
    }
}

fn engine(url: &str) -> Engine {
    let _ = NoHooks;
    let target = llmload::plan::target::Target::new(url, "m");
    let convs = llmload::workload::files::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/conversations.json"),
    )
    .unwrap();
    Engine {
        client: Arc::new(target.build_client(false).unwrap()),
        requests: Arc::new(llmload::workload::request::prepare_all(
            &convs,
            &target.body_params(),
        )),
        max_in_flight: 20_000,
        server_metrics: None,
        shard: None,
        observer: Arc::new(llmload::engine::sweep::NoObserver),
        sessions: None,
    }
}

/// One search with short probes (`probe` long, the confirmation 2×);
/// returns the report.
async fn search(url: &str, min: f64, max: f64, probe: Duration) -> capacity::CapacityReport {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path(), "cap").unwrap();
    let plan = CapacityPlan {
        slo: Arc::new(SloTarget {
            slo: Slo::parse(&["ttft<=2s"]).unwrap(),
            attainment: 0.99,
        }),
        // A coarser bracket than the default 5 % keeps the suite quick;
        // the accuracy asked of the answer is unchanged.
        search: SearchConfig {
            min_qps: min,
            max_qps: max,
            precision: 0.08,
            integer: false,
        },
        // The confirmation resolves a few percent of overload (see the
        // stability module): two probes long, as by default.
        probe_duration: probe,
        confirm_duration: probe * 2,
        // Constant arrivals: with the mock's fixed service times, a rate
        // past capacity grows the backlog steadily, so short probes can
        // tell 5 % of overload. Poisson arrivals need the default probe
        // lengths for that (their backlog wanders); the closing note has
        // those runs.
        arrival: Arrival::Constant,
        seed: 1,
        concurrency: false,
    };
    let target = llmload::plan::target::Target::new(url, "m");
    let meta = Metadata::new(&RunInfo {
        target: &target,
        dataset: "d",
        qps: &[],
        duration: Some(plan.probe_duration),
        arrival: plan.arrival,
        seed: 1,
        run_id: "cap".into(),
        percentiles: &[50.0],
        now: chrono::Local::now(),
        job: None,
        kind: "capacity",
    });
    let mut w = RunWriter::start(
        Outputs {
            dir: dir.clone(),
            results_file: "benchmark_qps_results.json".into(),
            plot_file: Some("benchmark_qps.png".into()),
            plot_title: "capacity".into(),
        },
        meta,
    );
    let e = engine(url);
    let t = CancellationToken::new();
    let r = capacity::search(&e, &plan, &mut w, &Quiet, &t, &t).await;
    // The directory is a sweep's, with one level per probe.
    let levels = read_json(&dir.file("benchmark_qps_results.json"));
    assert_eq!(levels.as_array().unwrap().len(), r.probes.len());
    let summary = read_json(&dir.file("summary.json"));
    assert_eq!(
        summary["capacity"]["probes"].as_array().unwrap().len(),
        r.probes.len()
    );
    assert_eq!(png_size(&dir.file("benchmark_qps.png")), (3200, 1200));
    r
}

fn found(r: &capacity::CapacityReport) -> (f64, [f64; 2]) {
    match r.outcome {
        Some(Outcome::Found { qps, bracket }) => (qps, bracket),
        other => panic!("no capacity found: {other:?}\n{:#?}", r.probes),
    }
}

/// Search a mock of `slots / (ttft + 59 × tpot)` req/s; the capacity
/// found must lie within [0.85 C, 1.05 C]. A slow server needs longer
/// probes to show a growing backlog (a probe must carry enough requests:
/// see the stability module), so `probe` is set per case.
async fn case(slots: usize, ttft: u64, tpot: u64, queue: usize, min: f64, probe: u64) {
    let cfg = mock_cfg(slots, ttft, tpot, queue);
    let c = cfg.capacity.capacity_rps(1, 60);
    let mock = start_mock(cfg).await;
    let t0 = std::time::Instant::now();
    // An inconclusive search (this busy machine starved the client in every
    // repeat of a probe) measured nothing: search again, at most twice.
    let mut r = search(&mock.chat_url(), min, 1000.0, Duration::from_secs(probe)).await;
    for _ in 0..2 {
        let Some(i) = &r.inconclusive else { break };
        eprintln!("C {c:.1}: inconclusive ({}), searching again", i.reason);
        r = search(&mock.chat_url(), min, 1000.0, Duration::from_secs(probe)).await;
    }
    let (qps, bracket) = found(&r);
    eprintln!(
        "C {c:.1} (queue {}): found {qps} in [{}, {}], {} probes, {:.0}s",
        if queue == UNBOUNDED {
            "unbounded".into()
        } else {
            queue.to_string()
        },
        bracket[0],
        bracket[1],
        r.probes.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        qps >= 0.85 * c && qps <= 1.05 * c,
        "C {c}: found {qps}\n{:#?}",
        r.probes
    );
    mock.shutdown().await;
}

/// Four servers, searched at once (each has its own mock and client; the
/// rates are small for this machine): queueing servers of C = 5, 25 and
/// 120 req/s that never refuse, and one of C = 25 that refuses past a
/// queue of 32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_the_capacity_of_queueing_and_rejecting_servers() {
    let _serial = serial();
    tokio::join!(
        case(2, 105, 5_000, UNBOUNDED, 4.0, 10),
        case(5, 52, 2_500, UNBOUNDED, 8.0, 6),
        case(12, 41, 1_000, UNBOUNDED, 32.0, 4),
        case(5, 52, 2_500, 32, 8.0, 6),
    );
}

/// Out of range both ways: the answer says so instead of a number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_below_or_above_the_range_is_said_so() {
    let _serial = serial();
    let mock = start_mock(mock_cfg(2, 105, 5_000, UNBOUNDED)).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let run = |min: &str, max: &str| {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args(["capacity", "--endpoint", &mock.chat_url(), "--model", "m"])
            .arg("--dataset")
            .arg(&dataset)
            .args(["--slo", "ttft<=2s", "--min-qps", min, "--max-qps", max])
            .args(["--probe-duration", "3s", "--confirm-duration", "3s"])
            .arg("--results-dir")
            .arg(tmp.path().join("r"));
        cmd
    };
    // C = 5: 40 req/s is far past it.
    let out = run("40", "1000").output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("capacity lies below the range"), "{stdout}");
    // And 1..2 req/s is far below it.
    let out = run("1", "2").output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(stdout.contains("capacity lies above the range"), "{stdout}");
    mock.shutdown().await;
}

/// `llmload capacity` against `mock` with the pacer stalled as `stall`
/// says (`LLMLOAD_INJECT_STALL`); returns the exit code, stdout and the
/// run's `summary.json`.
async fn starved_search(
    mock: &llmload::mock::MockServer,
    stall: &str,
    tmp: &std::path::Path,
) -> (Option<i32>, String, serde_json::Value, serde_json::Value) {
    let dataset = write_dataset(tmp);
    let results = tmp.join("r");
    let args: Vec<String> = [
        "capacity",
        "--endpoint",
        &mock.chat_url(),
        "--model",
        "m",
        "--dataset",
        dataset.to_str().unwrap(),
        "--slo",
        "ttft<=2s",
        "--min-qps",
        "8",
        "--max-qps",
        "1000",
        "--precision",
        "0.08",
        "--probe-duration",
        "6s",
        "--confirm-duration",
        "12s",
        "--arrival",
        "constant",
        "--no-plot",
        "--results-dir",
        results.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = llmload(&args, &[("LLMLOAD_INJECT_STALL", stall)]).await;
    let stdout = text(&out.stdout);
    let dirs = run_dirs(&results);
    assert_eq!(dirs.len(), 1, "{stdout}{}", text(&out.stderr));
    let summary = read_json(&dirs[0].join("summary.json"));
    let levels = read_json(&dirs[0].join("benchmark_qps_results.json"));
    (out.status.code(), stdout, summary, levels)
}

/// A client starved during one probe (its pacer stalled for 700 ms, as a
/// CPU-throttled pod's is) measured itself, not the server: the probe is
/// repeated at the same rate, listed as such with the reason, and the
/// search still finds the mock's known capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_whose_client_was_starved_is_repeated_not_failed() {
    let _serial = serial();
    let cfg = mock_cfg(5, 52, 2_500, UNBOUNDED);
    let c = cfg.capacity.capacity_rps(1, 60);
    let mock = start_mock(cfg).await;
    let tmp = tempfile::tempdir().unwrap();
    // Level 1 is the second growth probe, at 16 req/s.
    let (code, stdout, summary, levels) = starved_search(&mock, "700ms@1", tmp.path()).await;
    assert_eq!(code, Some(0), "{stdout}");
    let cap = &summary["capacity"];
    let probes = cap["probes"].as_array().unwrap();
    assert_eq!(probes[1]["verdict"], "repeated", "{cap:#}");
    let reason = probes[1]["reason"].as_str().unwrap();
    assert!(reason.starts_with("client-bound: "), "{reason}");
    // And why, from the client's own figures: the stalled pacer (or, in a
    // container with a CPU quota on a busy machine, its throttling).
    assert!(
        reason.contains("the pacer was not scheduled for") || reason.contains("CPU-throttled"),
        "{reason}"
    );
    let usage = &levels[1]["client_usage"];
    assert!(
        usage["pacer_stall_ms"].as_f64().unwrap() >= 500.0,
        "{usage}"
    );
    assert!(
        levels[2]["client_usage"]["pacer_stall_ms"]
            .as_f64()
            .unwrap()
            < 500.0
    );
    assert!(
        usage["cpu_us_per_request"].as_f64().unwrap() > 0.0,
        "{usage}"
    );
    assert_eq!(
        probes[2]["qps"], probes[1]["qps"],
        "repeated at the same rate"
    );
    // (A busy machine may starve another probe too: each is repeated.)
    let repeated = probes.iter().filter(|p| p["verdict"] == "repeated").count();
    assert!(repeated >= 1, "{cap:#}");
    assert_eq!(cap["outcome"], "found", "{cap:#}");
    let qps = cap["qps"].as_f64().unwrap();
    assert!(
        qps >= 0.85 * c && qps <= 1.05 * c,
        "C {c}: found {qps}\n{cap:#}"
    );
    assert!(stdout.contains("repeated"), "{stdout}");
    mock.shutdown().await;
}

/// A client that stays starved never yields a capacity: after
/// `CLIENT_BOUND_REPEATS` repeats the search ends inconclusive, with its
/// own exit code and no number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stays_starved_ends_inconclusive() {
    let _serial = serial();
    let mock = start_mock(mock_cfg(5, 52, 2_500, UNBOUNDED)).await;
    let tmp = tempfile::tempdir().unwrap();
    let (code, stdout, summary, _) = starved_search(&mock, "700ms@*", tmp.path()).await;
    assert_eq!(code, Some(5), "{stdout}");
    let cap = &summary["capacity"];
    assert_eq!(cap["outcome"], "inconclusive", "{cap:#}");
    assert!(cap["qps"].is_null(), "{cap:#}");
    let probes = cap["probes"].as_array().unwrap();
    assert_eq!(
        probes.len() as u32,
        capacity::CLIENT_BOUND_REPEATS,
        "{cap:#}"
    );
    assert!(
        probes
            .iter()
            .all(|p| p["verdict"] == "repeated" && p["qps"] == 8.0),
        "{cap:#}"
    );
    let message = cap["message"].as_str().unwrap();
    assert!(
        message.starts_with("inconclusive: the client could not keep up"),
        "{message}"
    );
    assert!(stdout.contains(message), "{stdout}");
    assert_eq!(summary["status"], "complete");
    mock.shutdown().await;
}

/// Without an SLO, `run`'s saturation point against a queueing server is
/// the first level whose backlog grows (not a TTFT ratio: TTFT grows well
/// before that as the queue fills), and the recommended limit is at least
/// half of what `capacity` finds on the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_finds_the_knee_where_the_backlog_grows() {
    let _serial = serial();
    let cfg = mock_cfg(5, 52, 2_500, UNBOUNDED);
    let c = cfg.capacity.capacity_rps(1, 60);
    let mock = start_mock(cfg).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    // Levels at 0.3, 0.6, 0.88, 1.2 and 1.6 C (C = 25.1 req/s).
    let mut args = base_run(&mock.chat_url(), &dataset);
    args.extend(
        [
            "--qps",
            "8,16,22,30,40",
            "--duration",
            "6",
            "--arrival",
            "constant",
            "--results-dir",
            results.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    // A level this busy machine starved is client-bound: measure again.
    let (summary, levels) = loop {
        let out = llmload(&args, &[]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let dir = run_dirs(&results).pop().unwrap();
        let levels = read_json(&dir.join("benchmark_qps_results.json"));
        let starved = levels
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["client_bound"] == true);
        let summary = read_json(&dir.join("summary.json"));
        if !starved || run_dirs(&results).len() >= 3 {
            break (summary, levels);
        }
    };
    let a = &summary["analysis"];
    let levels = levels.as_array().unwrap();
    let first_growing = levels
        .iter()
        .filter(|l| l["client_bound"] == false)
        .find(|l| l["stability"]["stable"] == false)
        .map(|l| l["qps_target"].as_f64().unwrap());
    assert_eq!(a["saturation_qps"].as_f64(), first_growing, "{a:#}");
    assert_eq!(a["saturation_evidence"], "backlog", "{a:#}");
    let knee = first_growing.unwrap();
    assert!(knee > c && knee <= 40.0, "C {c}: knee {knee}");
    // TTFT grew below the knee already: the old ratio rule would have
    // stopped there.
    let ttft = |q: f64| {
        levels.iter().find(|l| l["qps_target"] == q).unwrap()["ttft"]["p95"]
            .as_f64()
            .unwrap()
    };
    assert!(ttft(knee) > ttft(8.0), "{levels:#?}");
    let recommended = a["recommended_qps"].as_f64().unwrap();
    assert!(
        recommended >= c / 2.0,
        "recommended {recommended} for C {c}"
    );
    assert!(recommended < c, "recommended {recommended} for C {c}");
    mock.shutdown().await;
}
