//! Traffic shapes end to end, through the real binary against an
//! in-process mock, judged by what the mock received (its ground-truth
//! log), not only by what llmload reports: concurrency levels and their
//! knee, capacity by concurrency, the queueing cap, ramps, warm-up.

mod common;

use common::*;
use llmload::mock::capacity::{CapacityModel, UNBOUNDED};
use llmload::mock::{MockConfig, OutputTokens};
use std::path::Path;
use std::time::Duration;

/// 16 slots, an unbounded queue, 64 tokens in 40 ms + 63 × 25 ms = 1.6 s
/// a request: 16 users fill it exactly; a 17th always waits a whole
/// request for a slot (the closed loop keeps the batch in step).
fn sixteen_slots() -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots: 16,
            queue: UNBOUNDED,
            ttft: Duration::from_millis(40),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(25),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(64)),
        ..MockConfig::default()
    }
}

/// The same, with room for everything: only llmload limits what is open.
fn roomy(tpot_ms: u64, tokens: u32) -> MockConfig {
    let mut cfg = sixteen_slots();
    cfg.capacity.slots = 200;
    cfg.capacity.tpot = Duration::from_millis(tpot_ms);
    cfg.output_tokens = Some(OutputTokens::Cap(tokens));
    cfg
}

/// What the mock saw: `(received_ns, last_byte_ns)` of every request.
async fn truth(m: &llmload::mock::MockServer) -> Vec<(u64, u64, u32, u32)> {
    let (status, body) = get(&format!("{}/debug/requests", m.base_url())).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["received_ns"].as_u64().unwrap(),
                t["last_byte_ns"].as_u64().unwrap(),
                t["input_tokens"].as_u64().unwrap() as u32,
                t["output_tokens"].as_u64().unwrap() as u32,
            )
        })
        .collect()
}

/// The most requests the server had open at once.
fn peak_open(t: &[(u64, u64, u32, u32)]) -> usize {
    let mut ev: Vec<(u64, i32)> = t
        .iter()
        .flat_map(|&(a, b, _, _)| [(a, 1), (b.max(a), -1)])
        .collect();
    // Ends before starts at the same instant: a worker's next request
    // follows its last one's end.
    ev.sort();
    let (mut open, mut peak) = (0i32, 0i32);
    for (_, d) in ev {
        open += d;
        peak = peak.max(open);
    }
    peak as usize
}

fn run_args(endpoint: &str, dataset: &Path, results: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = base_run(endpoint, dataset);
    a.extend(
        [
            "--max-tokens",
            "64",
            "--results-dir",
            results.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn only_run(root: &Path) -> std::path::PathBuf {
    let dirs = run_dirs(root);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_sweep_finds_the_knee_at_the_slots() {
    let _serial = serial();
    let m = start_mock(sixteen_slots()).await;
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let out = llmload(
        &run_args(
            &m.chat_url(),
            &ds,
            &tmp.path().join("r"),
            &["--concurrency", "1,4,16,64", "--duration", "5", "--plot"],
        ),
        &[],
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    // The seed's table, its first column named for what the levels are.
    assert!(
        stdout.contains("\nConcurrency  Actual QPS   Success%"),
        "{stdout}"
    );
    assert!(stdout.contains("CONCURRENCY ANALYSIS"), "{stdout}");
    assert!(stdout.contains("coordinated omission"), "{stdout}");

    let dir = only_run(&tmp.path().join("r"));
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    let levels = levels.as_array().unwrap();
    let users: Vec<u64> = levels
        .iter()
        .map(|l| l["concurrency"].as_u64().unwrap())
        .collect();
    assert_eq!(users, vec![1, 4, 16, 64]);
    let summary = read_json(&dir.join("summary.json"));
    let c = &summary["concurrency"];
    let knee = c["knee"].as_u64();
    assert!(
        matches!(knee, Some(16)),
        "the mock's 16 slots are the knee: {c}"
    );
    assert_eq!(c["recommended_concurrency"].as_u64(), Some(12), "{c}");
    let meta = read_json(&dir.join("metadata.json"));
    assert_eq!(meta["load"], "concurrency");
    assert_eq!(
        meta["concurrency_levels"],
        serde_json::json!([1, 4, 16, 64])
    );
    assert_eq!(png_size(&dir.join("benchmark_qps.png")), (3200, 1200));

    // What the mock received: every request llmload counted, and never
    // more open at once than the largest level's users (all 64 were).
    let t = truth(&m).await;
    let sent: u64 = levels.iter().map(|l| l["sent"].as_u64().unwrap()).sum();
    assert_eq!(t.len() as u64, sent);
    assert_eq!(peak_open(&t), 64);
    // Throughput is flat past the knee, latency is not.
    let tps = |i: usize| {
        levels[i]["output_throughput_tokens_per_sec"]
            .as_f64()
            .unwrap()
    };
    let ttft = |i: usize| levels[i]["ttft"]["p95"].as_f64().unwrap();
    assert!(tps(3) < tps(2) * 1.25, "{} vs {}", tps(3), tps(2));
    assert!(tps(2) > tps(1) * 2.5, "{} vs {}", tps(2), tps(1));
    assert!(ttft(3) > ttft(2) * 4.0, "{} vs {}", ttft(3), ttft(2));
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_by_concurrency_answers_the_slots() {
    let _serial = serial();
    let m = start_mock(sixteen_slots()).await;
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let out = llmload(
        &[
            "capacity",
            "--endpoint",
            &m.chat_url(),
            "--model",
            "m",
            "--dataset",
            ds.to_str().unwrap(),
            "--max-tokens",
            "64",
            "--results-dir",
            results.to_str().unwrap(),
            "--concurrency",
            "--min-users",
            "4",
            "--max-users",
            "64",
            "--slo",
            "ttft<=1s",
            "--probe-duration",
            "5s",
            "--confirm-duration",
            "6s",
            "--no-plot",
        ],
        &[],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{stderr}",
        text(&out.stdout)
    );
    let summary = read_json(&only_run(&results).join("summary.json"));
    let c = &summary["capacity"];
    assert_eq!(c["concurrency"], true, "{c}");
    let users = c["qps"].as_f64().unwrap();
    assert!((12.0..=17.0).contains(&users), "{c}");
    assert_eq!(users.fract(), 0.0, "a whole number of users");
    assert!(
        c["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["qps"].as_f64().unwrap().fract() == 0.0),
        "{c}"
    );
    assert!(
        text(&out.stdout).contains("concurrent users"),
        "{}",
        text(&out.stdout)
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_queues_instead_of_dropping() {
    let _serial = serial();
    // Plenty of slots: only llmload's cap limits what is open.
    let m = start_mock(roomy(5, 40)).await;
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let out = llmload(
        &run_args(
            &m.chat_url(),
            &ds,
            &tmp.path().join("r"),
            &["--qps", "40", "--duration", "3", "--max-concurrency", "4"],
        ),
        &[],
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("CLIENT QUEUE"), "{stdout}");
    let dir = only_run(&tmp.path().join("r"));
    let l = &read_json(&dir.join("benchmark_qps_results.json"))[0];
    // Nothing dropped: every planned send went out, after its wait.
    assert_eq!(l["scheduled"], 120);
    assert_eq!(l["sent"], 120);
    assert_eq!(l["dropped"], 0);
    let q = &l["client_queue"];
    assert!(
        q["p95"].as_f64().unwrap() > 0.1,
        "4 slots for 40 req/s of 0.24 s: {q}"
    );
    // Latency counts from the planned instant, so it holds the wait.
    assert!(l["ttft"]["p50"].as_f64().unwrap() > q["p50"].as_f64().unwrap());
    // The wait is the user's cap, not the client falling behind: it is
    // not schedule lag.
    assert!(
        l["schedule_lag"]["p95"].as_f64().unwrap() < q["p95"].as_f64().unwrap() / 10.0,
        "lag {} vs queue {q}",
        l["schedule_lag"]
    );
    let meta = read_json(&dir.join("metadata.json"));
    assert_eq!(meta["max_concurrency"], 4);
    // At the mock: never more than 4 open.
    let t = truth(&m).await;
    assert_eq!(t.len(), 120);
    assert_eq!(peak_open(&t), 4);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_sends_its_rate_step_by_step_and_draws_a_timeline() {
    let _serial = serial();
    let m = start_mock(roomy(2, 4)).await;
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let out = llmload(
        &run_args(
            &m.chat_url(),
            &ds,
            &tmp.path().join("r"),
            &[
                "--qps",
                "5..45",
                "--duration",
                "8",
                "--series-interval",
                "2s",
                "--plot",
            ],
        ),
        &[],
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("\n5..45 "),
        "the ramp in the table: {stdout}"
    );
    let dir = only_run(&tmp.path().join("r"));
    let l = &read_json(&dir.join("benchmark_qps_results.json"))[0];
    // Λ(8 s) = 8 × 25 = 200 requests, the mean rate 25.
    assert_eq!(l["scheduled"], 200);
    assert_eq!(l["qps_target"], 25.0);
    assert_eq!(l["qps_ramp"], serde_json::json!([5.0, 45.0]));
    let series = l["timeseries"].as_array().unwrap();
    assert_eq!(series.len(), 4);
    // Each 2 s step plans the ramp's integral over it: Λ(t) = 5t + 2.5t².
    let want = [20.0, 40.0, 60.0, 80.0];
    for (p, w) in series.iter().zip(want) {
        let got = p["target_qps"].as_f64().unwrap() * 2.0;
        assert!((got - w).abs() <= 1.0, "{p} vs {w}");
    }
    // The mock received the same shape, by its own clock, unless llmload
    // itself says it could not keep up (then it must say so).
    let t = truth(&m).await;
    assert_eq!(t.len(), 200);
    let t0 = t.iter().map(|x| x.0).min().unwrap();
    let why = l["client_bound_reason"].as_str().unwrap_or("");
    if l["client_bound"] == true {
        assert!(
            why.contains("behind schedule") || why.contains("sending took"),
            "{l}"
        );
    } else {
        for (k, w) in want.iter().enumerate() {
            let (a, b) = (k as u64 * 2_000_000_000, (k as u64 + 1) * 2_000_000_000);
            let n = t.iter().filter(|x| (a..b).contains(&(x.0 - t0))).count() as f64;
            assert!(
                (n - w).abs() <= 2.0,
                "step {k}: the mock got {n}, the ramp plans {w}"
            );
        }
    }
    assert_eq!(png_size(&dir.join("benchmark_timeline.png")), (2400, 1500));
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmup_is_sent_and_left_out_of_every_figure() {
    let _serial = serial();
    let m = start_mock(roomy(2, 4)).await;
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let out = llmload(
        &run_args(
            &m.chat_url(),
            &ds,
            &tmp.path().join("r"),
            &[
                "--qps",
                "20",
                "--duration",
                "2",
                "--warmup",
                "15",
                "--record-requests",
            ],
        ),
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("warm-up: 15 requests"),
        "{}",
        text(&out.stderr)
    );
    let dir = only_run(&tmp.path().join("r"));
    let l = &read_json(&dir.join("benchmark_qps_results.json"))[0];
    assert_eq!(l["sent"], 40, "the level holds its own requests only");
    let meta = read_json(&dir.join("metadata.json"));
    assert_eq!(meta["warmup"]["requests"], 15, "{}", meta["warmup"]);
    assert_eq!(meta["warmup"]["errors"], 0);
    assert_eq!(meta["warmup"]["asked"], "15");
    let lines = std::fs::read_to_string(dir.join("requests.jsonl")).unwrap();
    assert_eq!(
        lines.lines().count(),
        40,
        "requests.jsonl leaves the warm-up out"
    );
    // The mock got both.
    assert_eq!(truth(&m).await.len(), 55);
    m.shutdown().await;
}

#[tokio::test]
async fn bad_traffic_flags_exit_2_naming_the_flag() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let ds = ds.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--qps", "5", "--concurrency", "4"], "--concurrency"),
        (&["--concurrency", "0"], "at least 1 user"),
        (
            &["--concurrency", "4", "--max-concurrency", "2"],
            "--max-concurrency",
        ),
        (&["--qps", "5..5"], "two different rates"),
        (&["--warmup", "soon"], "neither a number of requests"),
        (&["--max-concurrency", "0"], "at least 1"),
    ];
    for (extra, want) in cases {
        let mut a = vec!["run", "--endpoint", "mock", "--model", "m", "--dataset", ds];
        a.extend_from_slice(extra);
        let out = llmload(&a, &[]).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    // Without a dataset (and no trace): said plainly.
    let out = llmload(&["run", "--endpoint", "mock", "--model", "m"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--dataset is required"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_gives_up_the_requests_waiting_for_a_slot() {
    let _serial = serial();
    // A second a request, two slots for 40 req/s: the wait list grows.
    let mut cfg = roomy(15, 64);
    cfg.capacity.ttft = Duration::from_millis(50);
    let m = start_mock(cfg).await;
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let mut child = tokio::process::Command::new(bin())
        .args(run_args(
            &m.chat_url(),
            &ds,
            &results,
            &["--qps", "40", "--duration", "20", "--max-concurrency", "2"],
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    let t0 = std::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the run ends after Ctrl-C, not after its wait list")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    let l = &read_json(&only_run(&results).join("benchmark_qps_results.json"))[0];
    assert_eq!(l["interrupted"], true);
    // ~120 planned in 3 s, a handful served: the rest gave up, counted.
    let cancelled = l["errors"]["cancelled"].as_u64().unwrap_or(0);
    assert!(cancelled > 50, "{}", l["errors"]);
    assert_eq!(l["dropped"], 0);
    assert!(
        (truth(&m).await.len() as u64) < l["scheduled"].as_u64().unwrap() - 50,
        "requests given up while waiting never reached the server"
    );
    m.shutdown().await;
}
