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
    run_with(url, dataset, results, args, &[]).await
}

/// [`run`] with environment variables set for the child. A capacity
/// search that ends inconclusive (exit 5: this busy machine starved the
/// client in every repeat of a probe) measured nothing, so it is run
/// again, at most twice, and its directory dropped.
async fn run_with(
    url: &str,
    dataset: &Path,
    results: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> PathBuf {
    let before = run_dirs(results).len();
    for attempt in 1.. {
        let mut cmd = tokio::process::Command::new(bin());
        for k in LLMLOAD_ENV {
            cmd.env_remove(k);
        }
        cmd.envs(envs.iter().copied());
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
        let dirs = run_dirs(results);
        assert_eq!(dirs.len(), before + 1);
        // A sweep level whose client could not keep up on this busy
        // machine is not comparable: unless the test starves the client on
        // purpose, measure again.
        let starved = envs.is_empty()
            && args.first() != Some(&"capacity")
            && out.status.success()
            && read_json(&dirs.last().unwrap().join("benchmark_qps_results.json"))
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["client_bound"] == true);
        if (out.status.code() == Some(5) || starved) && attempt < 3 {
            eprintln!(
                "client-bound (a level, or every repeat of a probe), attempt {attempt}: run again\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::fs::remove_dir_all(dirs.last().unwrap()).unwrap();
            continue;
        }
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return dirs.last().unwrap().clone();
    }
    unreachable!()
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

/// A level whose client could not keep up (its pacer stalled for 700 ms,
/// as a CPU-throttled pod's does) measured the client: `compare` calls it
/// "not comparable" with the reason and exits 2, and never REGRESSION,
/// even where the endpoint did get slower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_bound_levels_are_not_comparable_never_a_regression() {
    let _serial = serial();
    let base = start_mock(mock_cfg(8, 50)).await;
    let slower = start_mock(mock_cfg(8, 60)).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let args = ["--qps", "5,10", "--duration", "3", "--arrival", "constant"];
    let a = run(&base.chat_url(), &dataset, &results, &args).await;
    // The same endpoint, its second level client-bound.
    let b = run_with(
        &base.chat_url(),
        &dataset,
        &results,
        &args,
        &[("LLMLOAD_INJECT_STALL", "700ms@1")],
    )
    .await;
    let (code, out) = compare(&a, &b, &[]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("verdict: not comparable"), "{out}");
    assert!(out.contains("client-bound at 10 QPS"), "{out}");
    let level_10: Vec<&str> = out.lines().filter(|l| l.starts_with("10 ")).collect();
    assert!(!level_10.is_empty(), "{out}");
    assert!(
        level_10.iter().all(|l| l.ends_with("not comparable")),
        "{out}"
    );
    assert!(
        out.lines()
            .filter(|l| l.starts_with("5 "))
            .all(|l| !l.contains("not comparable")),
        "{out}"
    );
    // A 20 % slower endpoint, measured by a client stalled at every level:
    // no figure can be judged, so none is called a regression.
    let c = run_with(
        &slower.chat_url(),
        &dataset,
        &results,
        &args,
        &[("LLMLOAD_INJECT_STALL", "700ms@*")],
    )
    .await;
    let (code, out) = compare(&a, &c, &["--json"]).await;
    assert_eq!(code, 2, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "not comparable");
    assert_eq!(v["regressions"].as_array().unwrap().len(), 0, "{out}");
    for l in v["lines"].as_array().unwrap() {
        assert_eq!(l["regression"], false, "{l}");
        assert!(
            l["not_comparable"]
                .as_str()
                .unwrap()
                .contains("client-bound"),
            "{l}"
        );
    }
    base.shutdown().await;
    slower.shutdown().await;
}
