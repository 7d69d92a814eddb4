//! `llmload compare`: no false alarm when one endpoint is measured twice;
//! a regression when TTFT grows by a fifth or capacity halves; exit 2 for
//! runs that cannot be compared. Real runs of the binary against mocks.

mod common;

use common::*;
use llmload::mock::capacity::{CapacityModel, UNBOUNDED};
use llmload::mock::{MockConfig, OutputTokens};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn mock_cfg(slots: usize, ttft_ms: u64) -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots,
            queue: UNBOUNDED,
            ttft: Duration::from_millis(ttft_ms),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(4),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(20)),
        seed: 7,
        ..MockConfig::default()
    }
}

/// `llmload run` (or `capacity`) with `args`; returns the run directory.
async fn run(url: &str, dataset: &Path, results: &Path, args: &[&str]) -> PathBuf {
    let before = run_dirs(results).len();
    let mut cmd = tokio::process::Command::new(bin());
    if args.first() == Some(&"capacity") {
        cmd.args(["capacity", "--endpoint", url, "--model", "m"])
            .arg("--dataset")
            .arg(dataset)
            .args(&args[1..]);
    } else {
        cmd.args(base_run(url, dataset)).args(args);
    }
    let out = cmd
        .arg("--results-dir")
        .arg(results)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dirs = run_dirs(results);
    assert_eq!(dirs.len(), before + 1);
    dirs.last().unwrap().clone()
}

async fn compare(a: &Path, b: &Path, extra: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(bin())
        .arg("compare")
        .arg(a)
        .arg(b)
        .args(extra)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_endpoint_twice_is_quiet_and_a_slower_ttft_is_caught() {
    let _serial = serial();
    let base = start_mock(mock_cfg(8, 50)).await;
    let slower = start_mock(mock_cfg(8, 60)).await;
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let r = tmp.path().join("r");
    // Enough requests per level (150 and 240) for a p95 to be pinned from
    // both sides (see the compare module).
    let sweep = ["--qps", "25,40", "--duration", "6", "--seed", "3"];
    let a = run(&base.chat_url(), &ds, &r, &sweep).await;
    let b = run(&base.chat_url(), &ds, &r, &sweep).await;
    let c = run(&slower.chat_url(), &ds, &r, &sweep).await;

    let (code, out) = compare(&a, &b, &[]).await;
    assert_eq!(code, 0, "the same endpoint twice: {out}");
    assert!(out.contains("verdict: no regression"), "{out}");

    let (code, out) = compare(&a, &c, &[]).await;
    assert_eq!(code, 1, "TTFT +20%: {out}");
    assert!(out.contains("ttft.p95"), "{out}");
    // The JSON says the same.
    let (code, json) = compare(&a, &c, &["--json"]).await;
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["verdict"], "regression");
    assert!(
        v["regressions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("ttft.p95"))
    );
    // Faster is not a regression.
    let (code, out) = compare(&c, &a, &[]).await;
    assert_eq!(code, 0, "{out}");

    // Different levels cannot be compared.
    let d = run(
        &base.chat_url(),
        &ds,
        &r,
        &["--qps", "25", "--duration", "1"],
    )
    .await;
    let (code, out) = compare(&a, &d, &[]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("different levels"), "{out}");
    base.shutdown().await;
    slower.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_the_slots_is_a_capacity_regression() {
    let _serial = serial();
    // 8 slots / (20 ms + 19 × 4 ms) = 83 req/s; 4 slots: 42.
    let full = start_mock(mock_cfg(8, 20)).await;
    let half = start_mock(mock_cfg(4, 20)).await;
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let r = tmp.path().join("r");
    let search = [
        "capacity",
        "--slo",
        "ttft<=1s",
        "--min-qps",
        "16",
        "--precision",
        "0.1",
        "--probe-duration",
        "3s",
        "--confirm-duration",
        "6s",
        "--arrival",
        "constant",
        "--no-plot",
    ];
    let (fu, hu, ra, rb) = (full.chat_url(), half.chat_url(), r.join("a"), r.join("b"));
    let (a, b) = tokio::join!(run(&fu, &ds, &ra, &search), run(&hu, &ds, &rb, &search));
    let (code, out) = compare(&a, &b, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("capacity under SLO ttft<=1s"), "{out}");
    assert!(out.contains("REGRESSION"), "{out}");
    let (code, out) = compare(&a, &a, &[]).await;
    assert_eq!(code, 0, "{out}");
    full.shutdown().await;
    half.shutdown().await;
}
