//! The benchmarks run and print their figures. Their numbers are judged
//! by people on a quiet machine, never here: a shared CI runner is too
//! noisy for absolute targets, so this only checks the harness works end
//! to end (nginx and wrk are installed by `scripts/test.sh`).

mod common;

use common::*;
use std::time::Duration;

/// `scripts/bench-ceiling.sh --quick` with the test build: wrk, llmload's
/// held rate, CPU per request and the overload probe, with a verdict line
/// for each of issue 25's targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_side_by_side_ceiling_runs_and_prints_its_figures() {
    let _serial = serial();
    let (stdout, stderr) = script("bench-ceiling.sh", &["--quick"]).await;
    let all = format!("{stdout}\n{stderr}");
    assert!(all.contains(" cores, "), "the machine is named: {all}");
    let ceiling = all
        .split("CEILING")
        .nth(1)
        .unwrap_or_else(|| panic!("no CEILING block: {all}"));
    let figure = |label: &str| -> f64 {
        let line = ceiling
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line: {ceiling}"));
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no figure in {line:?}"))
    };
    assert!(figure("wrk") > 0.0);
    // The held rate on one worker thread beside all of them (`--workers`).
    let workers = ceiling
        .lines()
        .find(|l| l.trim_start().starts_with("workers"))
        .unwrap_or_else(|| panic!("no workers line: {ceiling}"));
    assert!(
        workers.contains("held with 1 worker thread") && figure("workers") >= 0.0,
        "{workers}"
    );
    // A machine too busy to hold even the lowest rate says so, and still
    // measures the CPU per request; only the overload probe needs a held
    // rate to start from.
    let held = figure("llmload") > 0.0;
    assert!(
        held || all.contains("none held, the machine is too busy to judge"),
        "{all}"
    );
    let verdict = |target: &str| -> String {
        all.lines()
            .find(|l| l.contains(target))
            .unwrap_or_else(|| panic!("no verdict for {target:?}: {all}"))
            .to_string()
    };
    for target in ["held rate >= 40 % of wrk's", "CPU per request <= 2x wrk's"] {
        let line = verdict(target);
        assert!(
            line.contains("[met]") || line.contains("[MISSED]"),
            "a measured verdict: {line}"
        );
    }
    let overload = verdict("at 1.5x the held rate");
    if held {
        assert!(figure("overload") > 0.0);
        // Whether the machine itself was the limit: both processes' cores.
        let line = ceiling
            .lines()
            .find(|l| l.trim_start().starts_with("overload"))
            .unwrap_or_default();
        assert!(
            line.contains("cores used: nginx ") && line.contains(", llmload "),
            "{line}"
        );
        assert!(
            overload.contains("[met]") || overload.contains("[MISSED]"),
            "a measured verdict: {overload}"
        );
    } else {
        assert!(overload.contains("[not run]"), "{overload}");
    }
}

/// `scripts/<name> <args>` with the test build as `LLMLOAD`, bounded; it
/// must succeed. Its stdout and stderr.
async fn script(name: &str, args: &[&str]) -> (String, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(path)
            .args(args)
            .env("LLMLOAD", bin())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the benchmark ends")
    .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{name}: {stdout}\n{stderr}");
    (stdout, stderr)
}

/// `cargo <args>` in this package, bounded; its output.
async fn cargo(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // The first call compiles the bench binary (about a minute on CI).
    let out = tokio::time::timeout(Duration::from_secs(900), cmd.output())
        .await
        .expect("the benchmark ends")
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "cargo {args:?}:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The hot-path benches (`benches/hot_path.rs`), each stage run once in
/// criterion's test mode: every stage builds, runs and finishes.
#[tokio::test]
async fn the_hot_path_benches_run_each_stage_once() {
    let _serial = serial();
    let (stdout, _) = cargo(&["test", "--bench", "hot_path"], &[]).await;
    for stage in [
        "sse_decode",
        "chunk_scan",
        "chunk_scan_memo",
        "stream_events",
        "level_record",
        "histogram_record",
        "prometheus_observer",
        "trace_observer",
        "trace_spans_only",
    ] {
        let at = stdout
            .find(&format!("Testing {stage}\n"))
            .unwrap_or_else(|| panic!("{stage} did not run: {stdout}"));
        assert!(
            stdout[at..].lines().nth(1) == Some("Success"),
            "{stage}: {stdout}"
        );
    }
}

/// The trace-load bench on a small trace prints its figures.
#[tokio::test]
async fn the_trace_load_bench_prints_its_figures() {
    let _serial = serial();
    let (stdout, stderr) = cargo(
        &["test", "--bench", "trace_load"],
        &[("TRACE_LINES", "20000")],
    )
    .await;
    let all = format!("{stdout}\n{stderr}");
    let line = all
        .lines()
        .find(|l| l.starts_with("trace load: 20000 lines"))
        .unwrap_or_else(|| panic!("no figures: {all}"));
    assert!(
        line.contains(" lines/s)") && line.contains("peak RSS"),
        "{line}"
    );
}

/// `scripts/overhead-pairs.sh` on one short round with the test build:
/// every variant's pair runs and prints its figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paired_overhead_bench_prints_a_line_per_variant() {
    let _serial = serial();
    let (stdout, _) = script("overhead-pairs.sh", &["100", "1", "1"]).await;
    assert!(
        stdout.contains("OVERHEAD PAIRS") && stdout.contains(" cores, "),
        "{stdout}"
    );
    for v in [
        "noise",
        "prometheus",
        "traceparent",
        "genai-metrics",
        "spans",
        "all",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{v} ")))
            .unwrap_or_else(|| panic!("no {v} line: {stdout}"));
        let mean: f64 = line
            .split_whitespace()
            .nth(2)
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("no figure in {line:?}"));
        assert!(mean.is_finite() && mean > -100.0, "{line}");
        assert!(line.contains("µs/request; pairs: "), "{line}");
    }
}

/// `selftest --only overhead --quick`: the in-process rows, the pairs
/// (each variant's own `llmload run` beside an off run) and a verdict
/// for both overhead targets, judged from the pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_selftest_overhead_section_judges_its_targets_from_pairs() {
    let _serial = serial();
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(bin())
            .args(["selftest", "--only", "overhead", "--quick"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the selftest ends")
    .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("in pairs (2 pairs a variant at 1000 req/s"),
        "{stdout}"
    );
    for v in ["noise", "metrics", "traces", "metrics+traces"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{v} ")) && l.contains(" mean ")),
            "no {v} pair line: {stdout}"
        );
    }
    for what in ["metrics CPU overhead", "metrics + traces CPU overhead"] {
        let line = stdout
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what} target: {stdout}"));
        assert!(
            (line.contains("[met]") || line.contains("[MISSED]"))
                && line.contains("mean of 2 pairs"),
            "{line}"
        );
    }
    // The JSON line carries the pairs.
    let json = stdout
        .lines()
        .find(|l| l.starts_with("{\"selftest\""))
        .unwrap_or_else(|| panic!("no JSON line: {stdout}"));
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let pairs = v["selftest"]["overhead_pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 4);
    for p in pairs {
        assert_eq!(p["pairs_pct"].as_array().map(Vec::len), Some(2), "{p}");
        assert!(p["off_us_per_request"].as_f64().unwrap() > 0.0, "{p}");
    }
}
