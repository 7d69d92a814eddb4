//! `llmload daemon` end to end: a real child process, a real Prometheus
//! scraping it, the control API, soak/sweep coordination, SIGTERM.

mod common;

use common::*;
use llmload::mock::capacity::CapacityModel;
use llmload::mock::{MockConfig, OutputTokens};
use std::path::Path;
use std::time::{Duration, Instant};

fn fast_mock() -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots: 4,
            queue: 2,
            ttft: Duration::from_millis(20),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(4),
            tpot_growth: 0.0,
        },
        // Capacity 4 / (20 ms + 19 × 4 ms) = 41.7 requests/s.
        output_tokens: Some(OutputTokens::Cap(20)),
        ..MockConfig::default()
    }
}

fn target(name: &str, url: &str, dataset: &Path, extra: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nendpoint = \"{url}\"\nmodel = \"m\"\ndataset = \"{}\"\napi_key_env = \"LLMLOAD_TEST_KEY\"\n{extra}\n",
        dataset.display()
    )
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("llmload.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nresults_dir = \"{}\"\napi_token_env = \"LLMLOAD_TEST_TOKEN\"\nshutdown_grace = \"3s\"\n\n{body}",
        dir.join("results").display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

const TOKEN: &str = "test-token-xyz";
const KEY: &str = "sk-daemon-SECRET-777";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_sweep_and_the_api_answers() {
    let _serial = serial();
    let mock = start_mock(fast_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let cfg = write_config(
        tmp.path(),
        &format!(
            "{}\n[[job]]\nname = \"capacity\"\ntarget = \"t\"\nkind = \"sweep\"\nqps = [5, 100]\nduration = \"2s\"\nschedule = \"at_start\"\n",
            target("t", &mock.chat_url(), &dataset, "")
        ),
    );
    let d = Daemon::start(
        &cfg,
        &[("LLMLOAD_TEST_TOKEN", TOKEN), ("LLMLOAD_TEST_KEY", KEY)],
    )
    .await;
    let prom = Prometheus::start(&[d.addr], &[], None).await;

    let runs = d
        .wait_json("/api/v1/runs", 60, |v| v["runs"][0]["status"] == "complete")
        .await;
    let run = &runs["runs"][0];
    let id = run["id"].as_str().unwrap().to_string();
    assert_eq!(run["job"], "capacity");
    assert_eq!(run["max_qps_without_errors"], 5.0);
    assert_eq!(run["saturation_qps"], 100.0);

    // The run's files, as `llmload run` writes them.
    let dir = tmp
        .path()
        .join("results")
        .join(run["dir"].as_str().unwrap());
    for f in [
        "metadata.json",
        "benchmark_qps_results.json",
        "summary.json",
        "benchmark_qps.png",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    assert_eq!(png_size(&dir.join("benchmark_qps.png")), (3200, 1200));
    let detail = d
        .wait_json(&format!("/api/v1/runs/{id}"), 5, |v| {
            v["results"].is_array()
        })
        .await;
    let levels = detail["results"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    assert_eq!(detail["metadata"]["job"], "capacity");
    assert_eq!(detail["summary"]["status"], "complete");
    let succeeded: u64 = levels
        .iter()
        .map(|l| l["succeeded"].as_u64().unwrap())
        .sum();
    let e503 = levels[1]["errors"]["HTTP 503"].as_u64().unwrap();
    assert!(e503 > 0);

    // Prometheus agrees with the results file.
    let q = |e: &str| e.to_string();
    prom.wait_for(
        &q("sum(llmload_time_to_first_token_seconds_count{job=\"capacity\"})"),
        30,
        |v| v == succeeded as f64,
    )
    .await;
    prom.wait_for(
        &q("sum(llmload_requests_total{job=\"capacity\",outcome=\"success\"})"),
        30,
        |v| v == succeeded as f64,
    )
    .await;
    prom.wait_for(
        &q("sum(llmload_request_errors_total{job=\"capacity\",kind=\"http\",status=\"503\"})"),
        30,
        |v| v == e503 as f64,
    )
    .await;
    prom.wait_for(
        &q("llmload_capacity_max_qps_without_errors{target=\"t\",job=\"capacity\"}"),
        30,
        |v| v == 5.0,
    )
    .await;
    prom.wait_for(
        &q("llmload_capacity_saturation_qps{target=\"t\"}"),
        30,
        |v| v == 100.0,
    )
    .await;
    prom.wait_for(
        &q("llmload_capacity_recommended_qps{target=\"t\"}"),
        30,
        |v| v == 3.75,
    )
    .await;
    prom.wait_for(
        &q("llmload_sweep_level_success_ratio{target=\"t\",level=\"5\"}"),
        30,
        |v| v == 1.0,
    )
    .await;
    let p95 = levels[0]["ttft"]["p95"].as_f64().unwrap();
    prom.wait_for(
        &q("llmload_sweep_level_ttft_p95_seconds{target=\"t\",level=\"5\"}"),
        30,
        |v| (v - p95).abs() < 1e-9,
    )
    .await;
    // The histogram's quantile is in the right place: in the bucket (or
    // at its edge) that holds the p50 of the same requests, read from the
    // run's own HDR histograms. A busy machine stretches TTFT; it moves
    // both the same way.
    let r = prom
        .wait_for(
            &q("histogram_quantile(0.5, sum by (le) (llmload_time_to_first_token_seconds_bucket{job=\"capacity\"}))"),
            30,
            |v| v > 0.0,
        )
        .await;
    let p50 = sample_value(&r[0]).unwrap();
    let mut all: Option<hdrhistogram::Histogram<u64>> = None;
    for l in levels.iter() {
        let h =
            llmload::analysis::stats::decode(l["histograms"]["ttft_us"].as_str().unwrap()).unwrap();
        match &mut all {
            Some(a) => a.add(h).unwrap(),
            None => all = Some(h),
        }
    }
    let truth = all.unwrap().value_at_quantile(0.5) as f64 * 1e-6;
    let b = llmload::observe::metrics::TTFT_BUCKETS;
    let i = b.iter().position(|le| truth <= *le).unwrap();
    let (lo, hi) = (
        if i >= 2 { b[i - 2] } else { 0.0 },
        b[(i + 1).min(b.len() - 1)],
    );
    assert!(
        (lo..=hi).contains(&p50),
        "TTFT p50 from buckets {p50}, from the run's histograms {truth} (bucket ..{})",
        b[i]
    );
    prom.wait_for(
        &q("llmload_last_successful_sweep_timestamp_seconds{job=\"capacity\"}"),
        30,
        |v| v > 1.7e9,
    )
    .await;
    prom.wait_for(&q("up{job=\"llmload\"}"), 30, |v| v == 1.0)
        .await;

    // The control API.
    assert_eq!(get(&d.url("/healthz")).await.0, 200);
    assert_eq!(get(&d.url("/readyz")).await.0, 200);
    let png = get(&d.url(&format!("/api/v1/runs/{id}/plot.png"))).await;
    assert_eq!(png.0, 200);
    assert_eq!(get(&d.url("/api/v1/runs/nope")).await.0, 404);
    // A results file that exists but is corrupt is a 500 naming it, not
    // a silent null.
    let summary = dir.join("summary.json");
    let good = std::fs::read(&summary).unwrap();
    std::fs::write(&summary, b"{\"status\": trunc").unwrap();
    let (s, body) = get(&d.url(&format!("/api/v1/runs/{id}"))).await;
    assert_eq!(s, 500, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("summary.json is not valid JSON"),
        "{v}"
    );
    std::fs::write(&summary, good).unwrap();
    assert_eq!(get(&d.url(&format!("/api/v1/runs/{id}"))).await.0, 200);
    assert_eq!(get(&d.url("/api/v1/runs/nope/plot.png")).await.0, 404);
    assert_eq!(get(&d.url("/api/v1/nothing")).await.0, 404);
    let (s, body) = post_empty(&d.url("/api/v1/jobs/capacity/trigger"), None).await;
    assert_eq!(s, 401, "{body}");
    let (s, _) = post_empty(&d.url("/api/v1/jobs/capacity/trigger"), Some("wrong")).await;
    assert_eq!(s, 401);
    let (s, body) = post_empty(&d.url("/api/v1/jobs/nope/trigger"), Some(TOKEN)).await;
    assert_eq!(s, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nope"));
    let (s, _) = post_empty(&d.url("/api/v1/runs/current/stop"), Some(TOKEN)).await;
    assert_eq!(s, 404, "nothing runs yet");
    let (s, body) = post_empty(&d.url("/api/v1/jobs/capacity/trigger"), Some(TOKEN)).await;
    assert_eq!(s, 202, "{body}");
    let (s, _) = post_empty(&d.url("/api/v1/jobs/capacity/trigger"), Some(TOKEN)).await;
    assert_eq!(s, 409, "already running");
    let status = d
        .wait_json("/api/v1/status", 10, |v| {
            v["running"].as_array().is_some_and(|r| !r.is_empty())
        })
        .await;
    let running = &status["running"][0];
    assert_eq!(running["job"], "capacity");
    assert_eq!(running["kind"], "sweep");
    assert_eq!(running["levels"], 2);
    assert!(running["in_flight"].is_number());
    let (s, body) = post_empty(&d.url("/api/v1/runs/current/stop"), Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["stopped"].as_array().unwrap().len(), 1);
    let runs = d
        .wait_json("/api/v1/runs", 20, |v| {
            v["runs"].as_array().unwrap().len() == 2 && v["runs"][0]["status"] == "partial"
        })
        .await;
    assert_eq!(runs["runs"][1]["status"], "complete", "newest first");

    // The key never shows up anywhere the daemon writes or serves.
    let (_, metrics) = get(&d.url("/metrics")).await;
    assert!(!metrics.contains("SECRET"));
    assert!(!d.log_text().contains("SECRET"));
    for entry in walk(&tmp.path().join("results")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(6).any(|w| w == b"SECRET"),
            "{}",
            entry.display()
        );
    }
    mock.shutdown().await;
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_sweep_writes_partial_results_and_exits_0() {
    let _serial = serial();
    let mock = start_mock(fast_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let cfg = write_config(
        tmp.path(),
        &format!(
            "{}\n[[job]]\nname = \"long\"\ntarget = \"t\"\nkind = \"sweep\"\nqps = [5, 6, 7]\nduration = \"3s\"\nschedule = \"at_start\"\n",
            target("t", &mock.chat_url(), &dataset, "")
        ),
    );
    let mut d = Daemon::start(&cfg, &[]).await;
    d.wait_json("/api/v1/status", 20, |v| {
        v["running"][0]["completed"].as_u64().unwrap_or(0) >= 3
    })
    .await;
    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(20), d.child.wait())
        .await
        .expect("daemon exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "stopped within the grace period"
    );
    let results = tmp.path().join("results");
    let index = std::fs::read_to_string(results.join("index.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(index.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "partial");
    let dir = results.join(last["dir"].as_str().unwrap());
    let meta = read_json(&dir.join("metadata.json"));
    assert_eq!(meta["partial"], true);
    assert_eq!(meta["status"], "partial");
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    assert_eq!(levels.as_array().unwrap().len(), 1);
    assert_eq!(levels[0]["interrupted"], true);
    let sent = levels[0]["sent"].as_u64().unwrap();
    assert!(sent >= 3);
    assert_eq!(
        sent,
        levels[0]["succeeded"].as_u64().unwrap() + levels[0]["failed"].as_u64().unwrap()
    );
    // In-flight requests finished during the grace: nothing was cancelled.
    assert!(
        levels[0]["errors"].get("cancelled").is_none(),
        "{}",
        levels[0]["errors"]
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_pauses_for_a_sweep_then_resumes() {
    let _serial = serial();
    let mock = start_mock(fast_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let cfg = write_config(
        tmp.path(),
        &format!(
            "{}\n[[job]]\nname = \"soak\"\ntarget = \"t\"\nkind = \"soak\"\nqps = 10\nduration = \"forever\"\nsnapshot_every = \"1s\"\nschedule = \"at_start\"\n\
             [[job]]\nname = \"sweep\"\ntarget = \"t\"\nkind = \"sweep\"\nqps = [3]\nduration = \"2s\"\nschedule = \"0 0 1 1 *\"\n",
            target("t", &mock.chat_url(), &dataset, "")
        ),
    );
    let d = Daemon::start(&cfg, &[("LLMLOAD_TEST_TOKEN", TOKEN)]).await;
    // The soak writes snapshots while it runs.
    let status = d
        .wait_json("/api/v1/status", 20, |v| {
            v["running"][0]["completed"].as_u64().unwrap_or(0) >= 10
        })
        .await;
    let soak_run = status["running"][0]["run_id"].as_str().unwrap().to_string();
    let runs = d
        .wait_json("/api/v1/runs", 5, |v| v["runs"][0]["id"].is_string())
        .await;
    let soak_dir = tmp
        .path()
        .join("results")
        .join(runs["runs"][0]["dir"].as_str().unwrap());
    // The first checkpoint is whole once its PNG is there: the writer puts
    // the JSON files first, then the PNG.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(soak_dir.join("benchmark_qps_results.json").exists()
        && soak_dir.join("benchmark_qps.png").exists())
    {
        assert!(Instant::now() < deadline, "no soak snapshot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A snapshot is a results directory of a sweep's exact shape.
    let meta = read_json(&soak_dir.join("metadata.json"));
    assert_eq!(meta["status"], "running");
    assert_eq!(meta["kind"], "soak");
    let snapshot_files = file_names(&soak_dir);
    let (s, _) = post_empty(&d.url("/api/v1/jobs/sweep/trigger"), Some(TOKEN)).await;
    assert_eq!(s, 202);
    let status = d
        .wait_json("/api/v1/status", 10, |v| {
            v["running"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x["job"] == "sweep"))
        })
        .await;
    let soak = status["running"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["job"] == "soak")
        .unwrap()
        .clone();
    assert_eq!(soak["paused"], true, "{status}");
    let during = soak["scheduled"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, body) = get(&d.url("/api/v1/status")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let soak_now = v["running"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["job"] == "soak")
        .unwrap()
        .clone();
    assert!(
        soak_now["scheduled"].as_u64().unwrap() <= during + 1,
        "a paused soak sends nothing"
    );
    // After the sweep the soak resumes.
    let resumed = d
        .wait_json("/api/v1/status", 15, |v| {
            let r = v["running"].as_array().unwrap();
            r.len() == 1 && r[0]["job"] == "soak" && r[0]["paused"] == false
        })
        .await;
    let before = resumed["running"][0]["scheduled"].as_u64().unwrap();
    d.wait_json("/api/v1/status", 10, |v| {
        v["running"][0]["scheduled"].as_u64().unwrap_or(0) >= before + 5
    })
    .await;
    let (_, metrics) = get(&d.url("/metrics")).await;
    assert!(
        metrics.contains("llmload_soak_pauses_total{job=\"soak\"} 1"),
        "{metrics}"
    );
    // Stop the soak: its results are written, marked partial.
    let (s, body) = post_empty(&d.url("/api/v1/runs/current/stop"), Some(TOKEN)).await;
    assert_eq!(s, 200);
    assert_eq!(body["stopped"][0], soak_run);
    let runs = d
        .wait_json("/api/v1/runs?job=soak", 15, |v| {
            v["runs"][0]["status"] == "partial"
        })
        .await;
    let dir = tmp
        .path()
        .join("results")
        .join(runs["runs"][0]["dir"].as_str().unwrap());
    let sweeps = d
        .wait_json("/api/v1/runs?job=sweep", 5, |v| {
            v["runs"][0]["status"] == "complete"
        })
        .await;
    let sweep_dir = tmp
        .path()
        .join("results")
        .join(sweeps["runs"][0]["dir"].as_str().unwrap());
    assert_eq!(snapshot_files, file_names(&sweep_dir));
    assert_eq!(file_names(&dir), file_names(&sweep_dir));
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    let l = &levels[0];
    assert_eq!(l["qps_target"], 10.0);
    assert!(l["succeeded"].as_u64().unwrap() >= 12, "{l}");
    // The time paused is not counted as sending time: the rate stays true.
    let actual = l["actual_qps"].as_f64().unwrap();
    assert!((8.0..=11.0).contains(&actual), "actual_qps {actual}");
    assert_eq!(png_size(&dir.join("benchmark_qps.png")), (3200, 1200));
    mock.shutdown().await;
}

#[test]
fn check_validates_and_prints_the_plan() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(tmp.path());
    // The issue's file, exactly as written.
    let example = r#"[server]
listen = "127.0.0.1:9464"
results_dir = "results"

[[target]]
name = "staging-llama"
endpoint = "http://127.0.0.1:8000/v1/chat/completions"
model = "meta-llama/Llama-3.1-8B-Instruct"
dataset = "conversations.json"
api_key_env = "STAGING_API_KEY"     # or api_key_file = "/run/secrets/key"

[[job]]
name = "nightly-sweep"
target = "staging-llama"
kind = "sweep"
qps = [1, 5, 10, 20]
duration = "60s"
schedule = "0 3 * * *"              # cron; or "every 6h"; or "at_start"

[[job]]
name = "soak"
target = "staging-llama"
kind = "soak"
qps = 5
duration = "forever"                # or "24h"
snapshot_every = "10m"
schedule = "at_start"
"#;
    let p = tmp.path().join("llmload.toml");
    std::fs::write(&p, example).unwrap();
    let out = std::process::Command::new(bin())
        .args(["daemon", "--config", p.to_str().unwrap(), "--check"])
        .env("STAGING_API_KEY", "x")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK (1 target(s), 2 job(s))"), "{stdout}");
    assert!(stdout.contains("job nightly-sweep (sweep) on staging-llama: qps [1, 5, 10, 20] x 1m, cron '0 3 * * *' (UTC)"), "{stdout}");
    assert!(stdout.contains("T03:00:00+00:00"), "{stdout}");
    assert!(
        stdout.contains("job soak (soak) on staging-llama: qps [5] x forever, at_start"),
        "{stdout}"
    );

    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        example
            .replace("qps = 5\n", "qps = -5\n")
            .replace("\"0 3 * * *\"", "\"sometimes\"")
            .replace(
                "target = \"staging-llama\"\nkind = \"soak\"",
                "target = \"prod\"\nkind = \"soak\"",
            ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["daemon", "--config", bad.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    assert!(stderr.contains("job[0].schedule: 'sometimes'"), "{stderr}");
    assert!(
        stderr.contains("job[1].target: no target named 'prod'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("job[1].qps: -5 must be a rate above 0"),
        "{stderr}"
    );
}

/// Documented series that move only under a fault another test causes,
/// or exist only where the machine has them (a readable cgroup `cpu.stat`).
const FAULT_ONLY: &[&str] = &[
    "llmload_capacity_inconclusive_total",
    "llmload_sweep_level_client_throttled_seconds",
];

/// The metrics table in docs/src/metrics.md, between its markers: (name, type).
fn readme_metrics() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/metrics.md"))
            .unwrap();
    let start = readme
        .find("<!-- metrics:start -->")
        .expect("docs/src/metrics.md metrics markers");
    let end = readme.find("<!-- metrics:end -->").unwrap();
    readme[start..end]
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            (cols.len() > 3 && cols[1].starts_with("`llmload_"))
                .then(|| (cols[1].trim_matches('`').to_string(), cols[2].to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_readme_lists_moves() {
    let _serial = serial();
    let fast = start_mock(fast_mock()).await;
    let mut slow_cfg = fast_mock();
    slow_cfg.capacity.ttft = Duration::from_millis(800);
    let slow = start_mock(slow_cfg).await;
    // Sessions against a caching server: the turn, cache and session
    // series move.
    let mut cached_cfg = fast_mock();
    cached_cfg.prefix_cache_tokens = 100_000;
    let cached = start_mock(cached_cfg).await;
    let closer = common::closing::start(common::closing::Habits {
        one_request_per_connection: true,
        ..Default::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    // A file where the "broken" target's directory should be: its runs
    // cannot be written (works even as root, unlike chmod).
    std::fs::write(results.join("broken"), "not a directory").unwrap();
    let cfg = write_config(
        tmp.path(),
        &format!(
            "{}{}{}{}{}{}\
             [[job]]\nname = \"capacity\"\ntarget = \"t\"\nkind = \"sweep\"\nqps = [5, 100]\nduration = \"1.5s\"\nschedule = \"at_start\"\n\
             [[job]]\nname = \"soak\"\ntarget = \"t\"\nkind = \"soak\"\nqps = 5\nduration = \"forever\"\nsnapshot_every = \"1s\"\nschedule = \"at_start\"\n\
             [[job]]\nname = \"drops\"\ntarget = \"slow\"\nkind = \"sweep\"\nqps = [20]\nduration = \"1s\"\nschedule = \"at_start\"\n\
             [[job]]\nname = \"unwritable\"\ntarget = \"broken\"\nkind = \"sweep\"\nqps = [1]\nduration = \"1s\"\nschedule = \"at_start\"\n\
             [[job]]\nname = \"nightly\"\ntarget = \"slow\"\nkind = \"sweep\"\nqps = [1]\nduration = \"1s\"\nschedule = \"0 3 * * *\"\n\
             [[job]]\nname = \"stale\"\ntarget = \"closer\"\nkind = \"sweep\"\nqps = [20]\nduration = \"1s\"\nschedule = \"at_start\"\n\
             [[job]]\nname = \"cap\"\ntarget = \"cap\"\nkind = \"capacity\"\nslo = [\"ttft<=1s\"]\nmin_qps = 5\nmax_qps = 10\nprobe_duration = \"1s\"\nconfirm_duration = \"1s\"\nschedule = \"at_start\"\n\
             [[job]]\nname = \"chat\"\ntarget = \"sess\"\nkind = \"sweep\"\nqps = [4]\nduration = \"1.5s\"\nschedule = \"at_start\"\n",
            target(
                "t",
                &fast.chat_url(),
                &dataset,
                "keep_runs = 1\nserver_metrics = \"auto\"\nserver_metrics_interval = \"1s\"",
            ),
            target("slow", &slow.chat_url(), &dataset, "max_in_flight = 2"),
            target("broken", &fast.chat_url(), &dataset, ""),
            // Closes a kept-alive connection when a second request comes:
            // the stale-connection retries move.
            target("closer", &closer.url, &dataset, ""),
            // Holds more than 10 req/s: the search ends above its range.
            target("cap", &fast.chat_url(), &dataset, ""),
            target(
                "sess",
                &cached.chat_url(),
                Path::new("synthetic:input=64,output=8,turns=3,turn_input=16,samples=8"),
                "think_time = \"10ms\"",
            ),
        ),
    );
    let d = Daemon::start(&cfg, &[("LLMLOAD_TEST_TOKEN", TOKEN)]).await;
    // First sweep completes; the soak (delayed by it) then runs.
    d.wait_json("/api/v1/runs?job=capacity", 30, |v| {
        v["runs"][0]["status"] == "complete"
    })
    .await;
    d.wait_json("/api/v1/status", 15, |v| {
        v["running"].as_array().is_some_and(|r| {
            r.iter()
                .any(|x| x["job"] == "soak" && x["completed"].as_u64().unwrap_or(0) > 2)
        })
    })
    .await;
    // Freeze the whole daemon for 600 ms (three soak sends at 5/s): its
    // sends fall behind schedule, as under CPU starvation, and must be
    // counted late.
    d.signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(600)).await;
    d.signal(libc::SIGCONT);
    // A second sweep pauses the soak; retention (keep_runs = 1) prunes.
    let (s, _) = post_empty(&d.url("/api/v1/jobs/capacity/trigger"), Some(TOKEN)).await;
    assert_eq!(s, 202);
    let (s, _) = post_empty(&d.url("/api/v1/jobs/capacity/trigger"), Some(TOKEN)).await;
    assert_eq!(s, 409);
    d.wait_json("/api/v1/runs?job=capacity", 30, |v| {
        v["runs"].as_array().unwrap().len() == 1 && v["runs"][0]["status"] == "complete"
    })
    .await;
    let status = d
        .wait_json("/api/v1/status", 10, |v| {
            v["results_write_errors"].as_u64().unwrap_or(0) > 0
        })
        .await;
    assert!(
        status["last_write_error"]
            .as_str()
            .unwrap()
            .contains("broken"),
        "{status}"
    );
    assert_eq!(
        status["ready"], true,
        "the daemon keeps running after a write failure"
    );

    // The target's server metrics are in its runs' results.
    let runs = d
        .wait_json("/api/v1/runs?job=capacity", 10, |v| {
            v["runs"][0]["status"] == "complete"
        })
        .await;
    let id = runs["runs"][0]["id"].as_str().unwrap();
    let detail = d
        .wait_json(&format!("/api/v1/runs/{id}"), 10, |v| {
            v["results"].is_array()
        })
        .await;
    assert_eq!(
        detail["results"][0]["server"]["status"], "ok",
        "{}",
        detail["results"][0]
    );
    assert_eq!(detail["results"][0]["server"]["family"], "llmload");
    d.wait_json("/api/v1/runs?job=cap", 60, |v| {
        v["runs"][0]["status"] == "complete"
    })
    .await;
    d.wait_json("/api/v1/runs?job=chat", 60, |v| {
        v["runs"][0]["status"] == "complete"
    })
    .await;
    // A reload of the unchanged file: the reload series move.
    d.signal(libc::SIGHUP);
    d.wait_json("/api/v1/status", 20, |v| {
        v["config"]["last_reload"]["result"] == "success"
    })
    .await;
    let (_, text) = get(&d.url("/metrics")).await;
    let listed = readme_metrics();
    assert!(
        listed.len() >= 25,
        "docs/src/metrics.md lists {} metrics",
        listed.len()
    );
    for (name, kind) in &listed {
        // Moves only when the client is starved: checked by
        // `an_inconclusive_capacity_search_keeps_the_last_capacity`.
        if FAULT_ONLY.contains(&name.as_str()) {
            continue;
        }
        let series = match kind.as_str() {
            "histogram" => format!("{name}_count"),
            _ => name.clone(),
        };
        let values: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{series}{{")) || l.starts_with(&format!("{series} "))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(
            !values.is_empty(),
            "{name} ({kind}) is not exported:\n{text}"
        );
        if kind == "counter" || kind == "histogram" {
            assert!(
                values.iter().any(|v| *v > 0.0),
                "{name} never moved: {values:?}"
            );
        }
    }
    // And nothing is exported that docs/src/metrics.md does not document.
    for l in text.lines().filter(|l| l.starts_with("# TYPE llmload_")) {
        let name = l.split_whitespace().nth(2).unwrap();
        assert!(
            listed.iter().any(|(n, _)| n == name),
            "{name} is exported but not in docs/src/metrics.md"
        );
    }
    fast.shutdown().await;
    slow.shutdown().await;
    cached.shutdown().await;
}

/// The files in a run directory, sorted.
/// The files of a run directory; the writer's `.name.tmp-PID` files,
/// present only while a file is being replaced, are left out.
fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// A capacity job whose client is starved (the pacer stalled in every
/// probe, as in a CPU-throttled pod) publishes no capacity: the gauge keeps
/// the last conclusive answer, `llmload_capacity_inconclusive_total` counts
/// the run, and the status API says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconclusive_capacity_search_keeps_the_last_capacity() {
    let _serial = serial();
    let fast = start_mock(fast_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let starve = tmp.path().join("starve");
    let cfg = write_config(
        tmp.path(),
        &format!(
            "{}[[job]]\nname = \"cap\"\ntarget = \"cap\"\nkind = \"capacity\"\nslo = [\"ttft<=1s\"]\nmin_qps = 8\nmax_qps = 12\nprobe_duration = \"2s\"\nconfirm_duration = \"2s\"\narrival = \"constant\"\nschedule = \"at_start\"\n",
            // Holds 41.7 req/s: the search ends above its range, at 12.
            target("cap", &fast.chat_url(), &dataset, ""),
        ),
    );
    let stall = format!("700ms@file:{}", starve.display());
    let d = Daemon::start(
        &cfg,
        &[
            ("LLMLOAD_TEST_TOKEN", TOKEN),
            ("LLMLOAD_INJECT_STALL", &stall),
        ],
    )
    .await;
    let status = d
        .wait_json("/api/v1/status", 60, |v| {
            v["jobs"][0]["capacity"]["outcome"] == "above_range"
        })
        .await;
    assert_eq!(
        status["jobs"][0]["capacity"]["published_qps"], 12.0,
        "{status}"
    );
    let gauge = "llmload_capacity_qps_under_slo{job=\"cap\",model=\"m\",target=\"cap\"} 12";
    let (_, text) = get(&d.url("/metrics")).await;
    assert!(text.contains(gauge), "{text}");
    let last_success = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("llmload_last_successful_sweep_timestamp_seconds{"))
            .map(str::to_string)
    };
    let success_before = last_success(&text);
    assert!(success_before.is_some(), "{text}");

    // From now on every probe's pacer stalls: the next search measures
    // the client only.
    std::fs::write(&starve, "").unwrap();
    let (s, _) = post_empty(&d.url("/api/v1/jobs/cap/trigger"), Some(TOKEN)).await;
    assert_eq!(s, 202);
    let status = d
        .wait_json("/api/v1/status", 60, |v| {
            v["jobs"][0]["capacity"]["outcome"] == "inconclusive"
        })
        .await;
    let cap = &status["jobs"][0]["capacity"];
    assert_eq!(cap["published_qps"], 12.0, "{status}");
    assert_eq!(cap["inconclusive_runs"], 1, "{status}");
    assert!(
        cap["message"]
            .as_str()
            .unwrap()
            .contains("client could not keep up"),
        "{status}"
    );
    let (_, text) = get(&d.url("/metrics")).await;
    assert!(
        text.contains(gauge),
        "the gauge keeps its last value:\n{text}"
    );
    assert!(
        text.contains(
            "llmload_capacity_inconclusive_total{job=\"cap\",model=\"m\",target=\"cap\"} 1"
        ),
        "{text}"
    );
    assert_eq!(
        last_success(&text),
        success_before,
        "an inconclusive search is not a successful run"
    );
    assert!(d.log_text().contains("capacity search inconclusive"));
    fast.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_sweeps_and_shaped_soaks_run_from_the_config() {
    let _serial = serial();
    let mut cfg = fast_mock();
    cfg.capacity.slots = 64;
    cfg.capacity.queue = 64;
    let mock = start_mock(cfg).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let cfg = write_config(
        tmp.path(),
        &format!(
            "{}{}{}\n[[job]]\nname = \"loop\"\ntarget = \"v\"\nkind = \"soak\"\ntrace = \"trace.jsonl\"\nduration = \"3s\"\nschedule = \"at_start\"\n[[job]]\nname = \"users\"\ntarget = \"t\"\nkind = \"sweep\"\nconcurrency = [2, 4]\nduration = \"2s\"\nschedule = \"at_start\"\n\
             [[job]]\nname = \"ramp\"\ntarget = \"u\"\nkind = \"soak\"\nshape = {{ kind = \"ramp\", from = 5, to = 20, over = \"4s\" }}\nduration = \"4s\"\nseries_interval = \"1s\"\nschedule = \"at_start\"\n",
            target("t", &mock.chat_url(), &dataset, ""),
            target("u", &mock.chat_url(), &dataset, ""),
            target("v", &mock.chat_url(), &dataset, "")
        ),
    );
    // 20 lines a second: a 3 s soak replays it three times.
    let lines: String = (0..20)
        .map(|i| {
            format!(
                "{{\"timestamp\": {}, \"input_length\": 8, \"output_length\": 2}}\n",
                i * 50
            )
        })
        .collect();
    std::fs::write(tmp.path().join("trace.jsonl"), lines).unwrap();
    let d = Daemon::start(&cfg, &[("LLMLOAD_TEST_KEY", "k")]).await;
    // While the users run, the gauge says how many.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let (_, m) = get(&d.url("/metrics")).await;
        let v = m
            .lines()
            .find(|l| l.starts_with("llmload_target_concurrency{") && l.contains("job=\"users\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<i64>().ok());
        if let Some(v) = v
            && !seen.contains(&v)
        {
            seen.push(v);
        }
        if seen.contains(&4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen.contains(&2) && seen.contains(&4),
        "{seen:?}\n{}",
        d.log_text()
    );
    // Both runs end on their own; their directories say what they sent.
    let index = d
        .wait_json("/api/v1/runs", 30, |v| {
            v["runs"]
                .as_array()
                .is_some_and(|a| a.iter().filter(|r| r["status"] == "complete").count() >= 3)
        })
        .await;
    let index = &index["runs"];
    let results = tmp.path().join("results");
    let dir_of = |job: &str| {
        let r = index
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["job"] == job)
            .unwrap_or_else(|| panic!("{job}: {index}"));
        results.join(r["dir"].as_str().unwrap())
    };
    let users = dir_of("users");
    assert_eq!(
        read_json(&users.join("metadata.json"))["load"],
        "concurrency"
    );
    let levels = read_json(&users.join("benchmark_qps_results.json"));
    assert_eq!(levels[0]["concurrency"], 2);
    assert_eq!(levels[1]["concurrency"], 4);
    let summary = read_json(&users.join("summary.json"));
    assert!(summary["concurrency"].is_object(), "{summary}");
    let ramp = read_json(&dir_of("ramp").join("benchmark_qps_results.json"));
    let l = &ramp[0];
    assert_eq!(l["qps_ramp"], serde_json::json!([5.0, 20.0]), "{l}");
    // Λ(4 s) = 4 × 12.5 = 50 requests, and a step a second.
    assert_eq!(l["scheduled"], 50, "{l}");
    let series = l["timeseries"].as_array().unwrap();
    assert!(series.len() >= 4, "{series:?}");
    assert!(
        series[3]["target_qps"].as_f64().unwrap() > series[0]["target_qps"].as_f64().unwrap() * 2.0,
        "{series:?}"
    );
    // The looping replay went round its trace, and says so.
    let looped = dir_of("loop");
    let l = &read_json(&looped.join("benchmark_qps_results.json"))[0];
    assert_eq!(l["trace"], true);
    let sent = l["sent"].as_u64().unwrap();
    assert!(
        (50..=62).contains(&sent),
        "three passes of 20 lines: {sent}"
    );
    let meta = read_json(&looped.join("metadata.json"));
    assert_eq!(meta["load"], "trace");
    assert_eq!(meta["trace"]["looping"], true);
    mock.shutdown().await;
}
