//! `--server-metrics`: the server's own view of each level, beside ours.
//! A sweep past a queueing mock's capacity shows its waiting queue grow;
//! a metrics endpoint that is down or answers garbage never fails the run.

mod common;

use common::*;
use llmload::mock::capacity::{CapacityModel, UNBOUNDED};
use llmload::mock::{MockConfig, OutputTokens};
use std::path::Path;
use std::time::Duration;

fn queueing_mock() -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            // 2 / (20 ms + 19 × 4 ms) = 20.8 requests/s.
            slots: 2,
            queue: UNBOUNDED,
            ttft: Duration::from_millis(20),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(4),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(20)),
        ..MockConfig::default()
    }
}

async fn sweep(
    url: &str,
    metrics: &str,
    dataset: &Path,
    results: &Path,
) -> (serde_json::Value, serde_json::Value, String) {
    let out = tokio::process::Command::new(bin())
        .args(base_run(url, dataset))
        .args(["--qps", "10,40", "--duration", "3", "--plot"])
        .args([
            "--server-metrics",
            metrics,
            "--server-metrics-interval",
            "1s",
        ])
        .arg("--results-dir")
        .arg(results)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let dir = run_dirs(results).pop().unwrap();
    assert_eq!(png_size(&dir.join("benchmark_qps.png")), (3200, 1200));
    (
        read_json(&dir.join("benchmark_qps_results.json")),
        read_json(&dir.join("summary.json")),
        stderr + &String::from_utf8_lossy(&out.stdout),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_waiting_queue_grows_past_saturation() {
    let _serial = serial();
    let mock = start_mock(queueing_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let (levels, summary, out) = sweep(&mock.chat_url(), "auto", &ds, &tmp.path().join("r")).await;
    let (low, high) = (&levels[0]["server"], &levels[1]["server"]);
    assert_eq!(low["status"], "ok", "{low}");
    assert_eq!(low["family"], "llmload");
    assert!(
        low["scrapes"].as_u64().unwrap() >= 3,
        "start, every second, end: {low}"
    );
    assert!(low["waiting"]["max"].as_f64().unwrap() <= 2.0, "{low}");
    // 40 req/s on a 20.8 req/s server for 3 s: ~55 queued at the end.
    let waiting = high["waiting"]["max"].as_f64().unwrap();
    assert!(waiting >= 30.0, "{high}");
    assert_eq!(high["running"]["max"], 2.0);
    // The server's token counter agrees with the usage we counted.
    assert_eq!(
        low["generation_tokens"].as_f64().unwrap() as u64,
        low["our_output_tokens"].as_u64().unwrap()
    );
    let why = summary["analysis"]["saturation_reason"].as_str().unwrap();
    assert!(
        why.contains("the server's waiting requests grew from"),
        "{why}\nlevel 2: client_bound {} ({}), lag {}, usage {}",
        levels[1]["client_bound"],
        levels[1]["client_bound_reason"],
        levels[1]["schedule_lag"],
        levels[1]["client_usage"]
    );
    assert!(out.contains("server: running"), "{out}");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_endpoint_that_is_down_or_garbage_never_fails_the_run() {
    let _serial = serial();
    let mock = start_mock(queueing_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    // Down.
    let (levels, _, out) = sweep(
        &mock.chat_url(),
        "http://127.0.0.1:9/metrics",
        &ds,
        &tmp.path().join("a"),
    )
    .await;
    assert_eq!(levels[0]["server"]["status"], "unavailable");
    assert!(
        levels[0]["server"]["reason"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{}",
        levels[0]["server"]
    );
    assert_eq!(
        out.matches("server metrics: cannot reach").count(),
        2,
        "said once in the log, once as a note: {out}"
    );
    assert_eq!(levels[1]["succeeded"], 120, "the run itself is unharmed");
    // Garbage: the mock's chat endpoint answers GET with an error page.
    let garbage = format!("{}/v1/models?x", mock.base_url());
    let (levels, _, _) = sweep(&mock.chat_url(), &garbage, &ds, &tmp.path().join("b")).await;
    let s = &levels[0]["server"];
    assert_eq!(s["status"], "unavailable", "{s}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("not Prometheus text"),
        "{s}"
    );
    mock.shutdown().await;
}
