//! `llmload run` end to end: the seed's command line against an
//! in-process mock with a known capacity, through the real binary.

mod common;

use common::*;
use llmload::mock::capacity::CapacityModel;
use llmload::mock::faults::FaultSpec;
use llmload::mock::{MockConfig, OutputTokens};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Capacity 4 / (40 ms + 19 × 5 ms) = 29.6 requests/s.
fn known_capacity() -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots: 4,
            queue: 2,
            ttft: Duration::from_millis(40),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(5),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(20)),
        ..MockConfig::default()
    }
}

async fn run_bin(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    llmload(&all, envs).await
}

const SEED_HEADER: &str = "QPS Target   Actual QPS   Success%   TTFT P50(s)  TTFT P95(s)  TTFT P99(s)  E2E P50(s)   E2E P95(s)   E2E P99(s)   Tok/s P50    Tok/s P95    Tok/s P99   ";

// The mock stamps its own truth on its own runtime threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_command_line_finds_the_known_saturation_point() {
    let _serial = serial();
    // A level the busy machine starved is flagged client-bound, and its
    // figures are then not the server's: the sweep is repeated (a verdict
    // about the machine, not the code), a bounded number of times.
    let mut attempt = 0;
    let (mock, _tmp, results, out) = loop {
        attempt += 1;
        let mock = start_mock(known_capacity()).await;
        let tmp = tempfile::tempdir().unwrap();
        let dataset = write_dataset(tmp.path());
        let results = tmp.path().join("results");
        let out = run_bin(
            &[
                "--endpoint",
                &mock.chat_url(),
                "--api-key",
                "sk-test-SECRET-123",
                "--model",
                "meta-llama/Llama-3.1-8B-Instruct",
                "--dataset",
                dataset.to_str().unwrap(),
                "--qps",
                "5,100",
                "--duration",
                "3",
                "--plot",
                "--results-dir",
                results.to_str().unwrap(),
            ],
            &[],
        )
        .await;
        let starved = out.status.code() == Some(0)
            && run_dirs(&results).first().is_some_and(|d| {
                read_json(&d.join("benchmark_qps_results.json"))
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["client_bound"] == true)
            });
        if starved && attempt < 4 {
            eprintln!("attempt {attempt}: a level was client-bound, the sweep is repeated");
            mock.shutdown().await;
            continue;
        }
        break (mock, tmp, results, out);
    };
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("--api-key on the command line is visible"),
        "{stderr}"
    );

    // The console table, as the seed prints it.
    let lines: Vec<&str> = stdout.lines().collect();
    let h = lines
        .iter()
        .position(|l| *l == "QPS BENCHMARK RESULTS")
        .unwrap();
    assert_eq!(lines[h - 1], "=".repeat(80));
    assert_eq!(lines[h + 1], "=".repeat(80));
    assert_eq!(lines[h + 2], SEED_HEADER);
    assert!(
        lines[h + 3].starts_with("5.0          5.00         100.0      "),
        "{}",
        lines[h + 3]
    );
    assert!(
        lines[h + 4].starts_with("100.0        "),
        "{}",
        lines[h + 4]
    );
    assert!(stdout.contains("QPS 100.0 - Errors ("), "{stdout}");
    assert!(stdout.contains("  - HTTP 503: "), "{stdout}");
    assert!(stdout.contains("Saturation point:       100"), "{stdout}");
    assert!(stdout.contains("Max QPS without errors: 5"), "{stdout}");

    // The directory layout.
    let dirs = run_dirs(&results);
    assert_eq!(dirs.len(), 1);
    let dir = &dirs[0];
    let name = dir.file_name().unwrap().to_str().unwrap();
    assert_eq!(name.len(), "2024-11-14_10-30-45".len(), "{name}");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_digit() || c == '-' || c == '_')
    );
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "benchmark_qps.png",
            "benchmark_qps_results.json",
            "metadata.json",
            "summary.json"
        ]
    );
    assert_eq!(png_size(&dir.join("benchmark_qps.png")), (3200, 1200));

    // metadata.json: the seed's fields, never the key.
    let meta = read_json(&dir.join("metadata.json"));
    for (k, v) in [
        (
            "model",
            serde_json::json!("meta-llama/Llama-3.1-8B-Instruct"),
        ),
        ("qps_levels", serde_json::json!([5.0, 100.0])),
        ("duration", serde_json::json!(3)),
        ("max_tokens", serde_json::json!(512)),
        ("temperature", serde_json::json!(0.7)),
        ("percentiles", serde_json::json!([50, 95, 99])),
        ("show_tokens", serde_json::json!(true)),
        ("status", serde_json::json!("complete")),
        ("partial", serde_json::json!(false)),
    ] {
        assert_eq!(meta[k], v, "metadata.{k}");
    }
    assert_eq!(meta["endpoint"], mock.chat_url());
    assert!(
        meta["dataset"]
            .as_str()
            .unwrap()
            .ends_with("conversations.json")
    );
    let ts = meta["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), "2024-11-14T10:30:45.123456".len(), "{ts}");
    for f in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(6).any(|w| w == b"SECRET"),
            "the API key leaked into a results file"
        );
    }

    // benchmark_qps_results.json: every seed field per level, and ours.
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    let levels = levels.as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for l in levels {
        for k in [
            "qps_target",
            "actual_qps",
            "success_rate",
            "ttft",
            "e2e_latency",
            "tokens_per_sec",
            "errors",
        ] {
            assert!(l.get(k).is_some(), "missing seed field {k}");
        }
        for d in [
            "ttft",
            "e2e_latency",
            "tokens_per_sec",
            "itl",
            "tpot",
            "schedule_lag",
        ] {
            for p in ["p50", "p90", "p95", "p99", "mean", "min", "max"] {
                assert!(l[d][p].is_number(), "{d}.{p}");
            }
        }
        for k in [
            "sent",
            "succeeded",
            "failed",
            "completed_qps",
            "client_bound",
            "histograms",
            "tokens",
        ] {
            assert!(l.get(k).is_some(), "missing field {k}");
        }
        let sent = l["sent"].as_u64().unwrap();
        assert_eq!(
            sent,
            l["succeeded"].as_u64().unwrap() + l["failed"].as_u64().unwrap()
        );
        let errors: u64 = l["errors"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(
            errors,
            l["failed"].as_u64().unwrap() + l["dropped"].as_u64().unwrap()
        );
        assert_eq!(l["client_bound"], false, "{}", l["schedule_lag"]);
    }
    let low = &levels[0];
    let high = &levels[1];
    assert_eq!(low["qps_target"], 5.0);
    assert_eq!(low["sent"], 15);
    assert_eq!(low["success_rate"], 100.0);
    assert_eq!(low["actual_qps"], 5.0);
    assert!(low["errors"].as_object().unwrap().is_empty());
    assert_eq!(low["tokens"]["output_source"], "usage");
    assert_eq!(low["tokens"]["output_total"], 15 * 20);
    // At low load the mock serves its configured 40 ms TTFT, 5 ms TPOT and
    // E2E = 40 + 19 × 5 = 135 ms, by its own clock (on a busy machine its
    // timers wake a little late). What llmload measured must match what
    // the mock did: within 2 ms for TTFT, 0.5 ms for TPOT, 4 ms for E2E.
    let (_, truth) = get(&format!("{}/debug/requests", mock.base_url())).await;
    let truth: serde_json::Value = serde_json::from_str(&truth).unwrap();
    let first15: Vec<&serde_json::Value> = truth
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["seq"].as_u64().unwrap() < 15)
        .collect();
    assert_eq!(first15.len(), 15);
    let median = |f: &dyn Fn(&serde_json::Value) -> f64| {
        let mut v: Vec<f64> = first15.iter().map(|t| f(t)).collect();
        v.sort_by(f64::total_cmp);
        v[7]
    };
    let ns = |t: &serde_json::Value, k: &str| t[k].as_u64().unwrap() as f64 / 1e9;
    let server_ttft = median(&|t| ns(t, "first_token_ns") - ns(t, "received_ns"));
    let server_e2e = median(&|t| ns(t, "last_byte_ns") - ns(t, "received_ns"));
    let server_tpot = median(&|t| (ns(t, "last_byte_ns") - ns(t, "first_token_ns")) / 19.0);
    assert!(
        server_ttft >= 0.0399 && server_e2e >= 0.1349,
        "the mock's own TTFT {server_ttft}, E2E {server_e2e}"
    );
    // TTFT counts from the scheduled instant: a client the busy machine
    // starved starts late by its schedule lag, which the run measured;
    // beyond that, 2 ms.
    let lag = low["schedule_lag"]["p99"].as_f64().unwrap();
    let ttft = low["ttft"]["p50"].as_f64().unwrap();
    assert!(
        (ttft - server_ttft).abs() <= 0.002 + lag,
        "TTFT p50 {ttft}, the mock's {server_ttft}, schedule lag p99 {lag}"
    );
    let tpot = low["tpot"]["p50"].as_f64().unwrap();
    assert!(
        (tpot - server_tpot).abs() <= 0.0005,
        "TPOT p50 {tpot}, the mock's {server_tpot}"
    );
    let e2e = low["e2e_latency"]["p50"].as_f64().unwrap();
    assert!(
        (e2e - server_e2e).abs() <= 0.004 + lag,
        "E2E p50 {e2e}, the mock's {server_e2e}, schedule lag p99 {lag}"
    );
    assert!(
        high["errors"]["HTTP 503"].as_u64().unwrap() > 50,
        "{}",
        high["errors"]
    );
    assert!(high["success_rate"].as_f64().unwrap() < 60.0);

    let summary = read_json(&dir.join("summary.json"));
    assert_eq!(summary["analysis"]["max_qps_without_errors"], 5.0);
    assert_eq!(summary["analysis"]["saturation_qps"], 100.0);
    assert_eq!(summary["analysis"]["recommended_qps"], 3.75);
    assert_eq!(summary["status"], "complete");

    // The mock saw the key and the seed's body.
    mock.shutdown().await;
}

#[tokio::test]
async fn key_from_env_or_file_and_the_body_sent() {
    let _serial = serial();
    init();
    // A raw server that records the first request and answers one stream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(h) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if got.len() >= h + 4 + len {
                            seen.lock().await.push(text);
                            got.clear();
                            let body = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = s.write_all(resp.as_bytes()).await;
                        }
                    }
                }
            });
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("results");
    let url = format!("http://{addr}/v1/chat/completions");
    let common = [
        "--endpoint",
        &url,
        "--model",
        "m",
        "--dataset",
        dataset.to_str().unwrap(),
        "--qps",
        "1",
        "--duration",
        "1",
        "--results-dir",
        results.to_str().unwrap(),
    ];
    let out = run_bin(&common, &[("LLMLOAD_API_KEY", "sk-from-env")]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("visible to other users"));
    let key_file = tmp.path().join("key");
    std::fs::write(&key_file, "\nsk-from-file\n").unwrap();
    let mut with_file = common.to_vec();
    with_file.extend([
        "--api-key-file",
        key_file.to_str().unwrap(),
        "--no-stream-usage",
        "--header",
        "X-Team: capacity",
    ]);
    let out = run_bin(&with_file, &[("OPENAI_API_KEY", "sk-ignored")]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let seen = seen.lock().await;
    assert_eq!(seen.len(), 2);
    let first = seen[0].to_ascii_lowercase();
    assert!(
        first.starts_with("post /v1/chat/completions http/1.1"),
        "{first}"
    );
    assert!(first.contains("authorization: bearer sk-from-env"));
    assert!(first.contains("content-type: application/json"));
    let body: serde_json::Value =
        serde_json::from_str(&seen[0][seen[0].find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are a helpful AI assistant."},
                {"role": "user", "content": "Hello"}
            ],
            "max_tokens": 512, "temperature": 0.7, "stream": true,
            "stream_options": {"include_usage": true}
        })
    );
    let second = seen[1].to_ascii_lowercase();
    assert!(second.contains("authorization: bearer sk-from-file"));
    assert!(second.contains("x-team: capacity"));
    assert!(!second.contains("stream_options"));
    // Chunks were counted because the server sent no usage.
    let dir = &run_dirs(&results)[0];
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    assert_eq!(levels[0]["tokens"]["output_source"], "chunks");
    assert_eq!(levels[0]["succeeded"], 1);
}

#[tokio::test]
async fn fractional_rate_sends_exactly_one_request() {
    let _serial = serial();
    let mock = start_mock(known_capacity()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let t0 = Instant::now();
    let out = run_bin(
        &[
            "--endpoint",
            &mock.chat_url(),
            "--model",
            "m",
            "--dataset",
            dataset.to_str().unwrap(),
            "--qps",
            "0.1",
            "--duration",
            "10",
            "--results-dir",
            results.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "a lone request need not wait out the window"
    );
    let levels = read_json(&run_dirs(&results)[0].join("benchmark_qps_results.json"));
    assert_eq!(levels[0]["sent"], 1);
    assert_eq!(levels[0]["actual_qps"], 0.1);
    let (_, truth) = get(&format!("{}/debug/requests", mock.base_url())).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&truth)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn errors_are_categorised_and_books_balance() {
    let _serial = serial();
    let mut cfg = known_capacity();
    cfg.faults = vec![
        "http500=0.1".parse::<FaultSpec>().unwrap(),
        "truncate=0.1".parse().unwrap(),
        "malformed=0.1".parse().unwrap(),
        "reset=0.1".parse().unwrap(),
    ];
    cfg.capacity.slots = 64;
    let mock = start_mock(cfg).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let out = run_bin(
        &[
            "--endpoint",
            &mock.chat_url(),
            "--model",
            "m",
            "--dataset",
            dataset.to_str().unwrap(),
            "--qps",
            "100",
            "--duration",
            "2",
            "--results-dir",
            results.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let l = &read_json(&run_dirs(&results)[0].join("benchmark_qps_results.json"))[0];
    let errors = l["errors"].as_object().unwrap();
    for key in [
        "HTTP 500",
        "stream truncated",
        "malformed stream",
        "connection reset",
    ] {
        let n = errors.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        assert!(n >= 5, "{key}: {n} in {errors:?}");
    }
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert_eq!(l["sent"], 200);
    assert_eq!(
        l["sent"].as_u64().unwrap(),
        l["succeeded"].as_u64().unwrap() + l["failed"].as_u64().unwrap()
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn bad_input_exits_2_naming_the_problem() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"prompt_content": "a", "cut_chat_history": [{"role": "robot", "content": "x"}]}]"#,
    )
    .unwrap();
    let base = [
        "--endpoint",
        "http://127.0.0.1:9/v1/chat/completions",
        "--model",
        "m",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--dataset", bad.to_str().unwrap()],
            "sample 0: field `cut_chat_history[0].role`: unknown variant `robot`",
        ),
        (
            vec!["--dataset", "/nonexistent.json"],
            "/nonexistent.json: cannot read dataset",
        ),
        (
            vec!["--dataset", bad.to_str().unwrap(), "--qps", "1,0"],
            "'0' must be a rate above 0",
        ),
        (
            vec!["--dataset", bad.to_str().unwrap(), "--qps", "fast"],
            "'fast' is not a number",
        ),
        (
            vec![
                "--dataset",
                bad.to_str().unwrap(),
                "--percentiles",
                "50,100",
            ],
            "between 0 and 100",
        ),
        (
            vec!["--dataset", bad.to_str().unwrap(), "--duration", "soon"],
            "'soon' is not a duration",
        ),
        // Strict lists: a stray comma or a repeated level is a typo.
        (
            vec!["--dataset", bad.to_str().unwrap(), "--qps", "5,,10"],
            "for '--qps <QPS>': item 2 of '5,,10' is empty",
        ),
        (
            vec!["--dataset", bad.to_str().unwrap(), "--qps", "5,10,"],
            "item 3 of '5,10,' is empty",
        ),
        (
            vec!["--dataset", bad.to_str().unwrap(), "--qps", "5,10,5"],
            "'5' is listed twice (items 1 and 3)",
        ),
        (
            vec!["--dataset", bad.to_str().unwrap(), "--concurrency", "4,,8"],
            "for '--concurrency <N,...>': item 2 of '4,,8' is empty",
        ),
        (
            vec![
                "--dataset",
                bad.to_str().unwrap(),
                "--percentiles",
                "50,95,50",
            ],
            "'50' is listed twice",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = base.to_vec();
        args.extend(extra);
        let out = run_bin(&args, &[]).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = run_bin(&["--model", "m", "--dataset", "x"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--endpoint"));
    let good = write_dataset(tmp.path());
    let out = run_bin(
        &[
            "--endpoint",
            "ftp://x/y",
            "--model",
            "m",
            "--dataset",
            good.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("http:// or https://"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn interrupt_keeps_finished_levels_and_marks_partial() {
    interrupted_by(libc::SIGINT, 130).await;
}

/// A dropped ssh session sends SIGHUP: handled as SIGTERM (results
/// written, marked partial), exit 128+1.
#[tokio::test]
async fn hangup_keeps_finished_levels_and_exits_129() {
    interrupted_by(libc::SIGHUP, 129).await;
}

async fn interrupted_by(signal: i32, code: i32) {
    let _serial = serial();
    let mock = start_mock(known_capacity()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let child = tokio::process::Command::new(bin())
        .args(base_run(&mock.chat_url(), &dataset))
        .args([
            "--qps",
            "10,12,14",
            "--duration",
            "1.5",
            "--plot",
            "--results-dir",
            results.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait for level 1 to be on disk, then interrupt during level 2.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = run_dirs(&results)
            .first()
            .map(|d| d.join("benchmark_qps_results.json").exists())
            .unwrap_or(false);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "level 1 never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, signal) };
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("exits promptly after Ctrl-C")
        .unwrap();
    assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
    let dir = &run_dirs(&results)[0];
    let meta = read_json(&dir.join("metadata.json"));
    assert_eq!(meta["status"], "partial");
    assert_eq!(meta["partial"], true);
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    let levels = levels.as_array().unwrap();
    assert_eq!(levels.len(), 2, "level 1 whole, level 2 cut short");
    assert_eq!(levels[0]["interrupted"], false);
    assert_eq!(levels[0]["sent"], 15);
    assert_eq!(levels[1]["interrupted"], true);
    assert!(levels[1]["sent"].as_u64().unwrap() < 18);
    assert_eq!(png_size(&dir.join("benchmark_qps.png")), (3200, 1200));
    assert!(text(&out.stdout).contains("PARTIAL RUN"));
    assert!(
        text(&out.stdout).contains("Results saved to"),
        "{}",
        text(&out.stdout)
    );
    mock.shutdown().await;
}

/// A descending list is a legitimate test: it runs as given, with a note.
#[tokio::test]
async fn unsorted_levels_run_as_given_with_a_note() {
    let _serial = serial();
    let mock = start_mock(known_capacity()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let out = run_bin(
        &[
            "--endpoint",
            &mock.chat_url(),
            "--model",
            "m",
            "--dataset",
            dataset.to_str().unwrap(),
            "--qps",
            "4,2",
            "--duration",
            "0.5",
            "--results-dir",
            results.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("note: --qps is not in ascending order; levels run as given: 4, 2"),
        "{err}"
    );
    let levels = read_json(&run_dirs(&results)[0].join("benchmark_qps_results.json"));
    let qps: Vec<f64> = levels
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["qps_target"].as_f64().unwrap())
        .collect();
    assert_eq!(qps, [4.0, 2.0]);
    mock.shutdown().await;
}

#[tokio::test]
async fn plot_redraws_from_the_json_alone() {
    let _serial = serial();
    let mock = start_mock(known_capacity()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let out = run_bin(
        &[
            "--endpoint",
            &mock.chat_url(),
            "--model",
            "m",
            "--dataset",
            dataset.to_str().unwrap(),
            "--qps",
            "2,4",
            "--duration",
            "1",
            "--results-dir",
            results.to_str().unwrap(),
            "--output",
            "custom.json",
        ],
        &[],
    )
    .await;
    assert!(out.status.success());
    let dir = run_dirs(&results).remove(0);
    assert!(dir.join("custom.json").exists());
    assert!(
        !dir.join("benchmark_qps.png").exists(),
        "no PNG without --plot"
    );
    // Only the results JSON is needed.
    std::fs::remove_file(dir.join("metadata.json")).unwrap();
    std::fs::remove_file(dir.join("summary.json")).unwrap();
    let out = std::process::Command::new(bin())
        .args(["plot", dir.to_str().unwrap(), "--input", "custom.json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(png_size(&dir.join("benchmark_qps.png")), (3200, 1200));
    let out = std::process::Command::new(bin())
        .args(["plot", tmp.path().join("nope").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    mock.shutdown().await;
}

#[tokio::test]
async fn record_requests_writes_one_line_per_request() {
    let _serial = serial();
    let mock = start_mock(known_capacity()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let out = run_bin(
        &[
            "--endpoint",
            &mock.chat_url(),
            "--model",
            "m",
            "--dataset",
            dataset.to_str().unwrap(),
            "--qps",
            "10,200",
            "--duration",
            "1",
            "--results-dir",
            results.to_str().unwrap(),
            "--record-requests",
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = &run_dirs(&results)[0];
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("requests.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 210);
    let ok = lines.iter().filter(|l| l["error"].is_null()).count();
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    let succeeded: u64 = levels
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["succeeded"].as_u64().unwrap())
        .sum();
    assert_eq!(ok as u64, succeeded, "the log agrees with the histograms");
    let first = &lines[0];
    for k in [
        "level",
        "qps",
        "seq",
        "scheduled_at",
        "sent_at",
        "ttft",
        "e2e",
        "output_tokens",
        "status",
    ] {
        assert!(first.get(k).is_some(), "{k}");
    }
    assert!(lines.iter().any(|l| l["error"] == "HTTP 503"));
    mock.shutdown().await;
}

/// A `requests.jsonl` that cannot be written (here: the disk is full, via
/// /dev/full) is reported by the runner like any other results write,
/// which makes `run` exit 1; the level itself is still measured.
#[tokio::test]
async fn a_failed_requests_jsonl_write_is_reported_not_ignored() {
    let _serial = serial();
    use llmload::engine::runner::{NoHooks, Outputs, SweepPlan};
    use llmload::observe::requests_jsonl::{RECORDS_FILE, RecordsObserver};
    let mock = start_mock(known_capacity()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = llmload::results::RunDir::create(tmp.path(), "run").unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.file(RECORDS_FILE)).unwrap();
    let records = Arc::new(RecordsObserver::create(&dir.path, None).unwrap());
    let client = Arc::new(
        llmload::client::LlmClient::new(llmload::client::ClientConfig::new(mock.chat_url()))
            .unwrap(),
    );
    let convs = llmload::workload::files::load(&write_dataset(tmp.path())).unwrap();
    let engine = llmload::engine::sweep::Engine {
        client,
        requests: Arc::new(llmload::workload::request::prepare_all(
            &convs,
            &llmload::workload::request::BodyParams {
                model: "m".into(),
                max_tokens: 16,
                temperature: 0.0,
                stream_usage: true,
                ..Default::default()
            },
        )),
        max_in_flight: 100,
        server_metrics: None,
        shard: None,
        observer: records,
        sessions: None,
    };
    let plan = SweepPlan {
        levels: llmload::plan::load::Levels::Rates(vec![llmload::plan::profile::RateLevel::flat(
            10.0,
        )]),
        max_concurrency: None,
        warmup: None,
        series_step: llmload::analysis::series::DEFAULT_STEP,
        duration: Duration::from_secs(1),
        arrival: llmload::plan::schedule::Arrival::Constant,
        seed: 0,
        slo: None,
        timeline: None,
    };
    let out = Outputs {
        dir: dir.clone(),
        results_file: "benchmark_qps_results.json".into(),
        plot_file: None,
        plot_title: "t".into(),
    };
    let target = llmload::plan::target::Target::new(mock.chat_url(), "m");
    let meta = llmload::results::Metadata::new(&llmload::results::RunInfo {
        target: &target,
        dataset: "d",
        qps: &[10.0],
        duration: Some(Duration::from_secs(1)),
        arrival: llmload::plan::schedule::Arrival::Constant,
        seed: 0,
        run_id: "run".into(),
        percentiles: &[50.0],
        now: chrono::Local::now(),
        job: None,
        kind: "sweep",
    });
    let mut writer = llmload::engine::runner::RunWriter::start(out, meta);
    let token = tokio_util::sync::CancellationToken::new();
    let report =
        llmload::engine::runner::execute(&engine, &plan, &mut writer, &NoHooks, &token, &token)
            .await;
    assert_eq!(report.levels[0].sent, 10, "the level was measured");
    assert_eq!(report.write_errors.len(), 1, "{:?}", report.write_errors);
    let e = &report.write_errors[0];
    assert!(
        e.contains("requests.jsonl") && e.contains("lines lost: 10"),
        "{e}"
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn builtin_mock_endpoint_runs_the_readme_demo() {
    let _serial = serial();
    init();
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("r");
    let mut args = demo_sweep(&results, "4", "1");
    args.push("--plot".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_bin(&argv, &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = &run_dirs(&results)[0];
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    assert_eq!(levels[0]["succeeded"], 4);
    assert_eq!(png_size(&dir.join("benchmark_qps.png")), (3200, 1200));
}

#[tokio::test]
async fn same_second_runs_do_not_overwrite() {
    let _serial = serial();
    let mock = start_mock(known_capacity()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let args = [
        "--endpoint",
        mock.chat_url().leak(),
        "--model",
        "m",
        "--dataset",
        dataset.to_str().unwrap().to_string().leak(),
        "--qps",
        "1",
        "--duration",
        "0.5",
        "--results-dir",
        results.to_str().unwrap().to_string().leak(),
    ];
    let (a, b, c) = tokio::join!(
        run_bin(&args, &[]),
        run_bin(&args, &[]),
        run_bin(&args, &[])
    );
    assert!(a.status.success() && b.status.success() && c.status.success());
    let dirs = run_dirs(&results);
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    for d in dirs {
        assert!(d.join("benchmark_qps_results.json").exists());
    }
    mock.shutdown().await;
}

/// `--workers N` sizes the runtime and metadata says so; the default is
/// the cores this process may use; a bad count exits 2 naming the flag.
#[tokio::test]
async fn workers_size_the_runtime_and_metadata_says_so() {
    let _serial = serial();
    init();
    let tmp = tempfile::tempdir().unwrap();
    let sweep = |results: &Path| demo_sweep(results, "4", "1");
    for (extra, env, want) in [
        (vec!["--workers", "1"], vec![], 1),
        (vec![], vec![("LLMLOAD_WORKERS", "3")], 3),
        (
            vec![],
            vec![],
            std::thread::available_parallelism().unwrap().get(),
        ),
    ] {
        let results = tmp.path().join(format!("r{want}-{}", extra.len()));
        let mut args = sweep(&results);
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_bin(&argv, &env).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let dir = &run_dirs(&results)[0];
        let meta = read_json(&dir.join("metadata.json"));
        assert_eq!(meta["workers"], want, "{extra:?} {env:?}");
        let levels = read_json(&dir.join("benchmark_qps_results.json"));
        assert_eq!(levels[0]["succeeded"], 4);
    }
    for bad in ["0", "many"] {
        let mut args = sweep(&tmp.path().join("bad"));
        args.extend(["--workers".to_string(), bad.to_string()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_bin(&argv, &[]).await;
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(err.contains("--workers"), "{err}");
    }
}

/// `--send-quantum`: `auto` times a fast level's sends to the millisecond
/// and an exact one as before, a given quantum holds every send back to
/// the end of its quantum (the schedule lag counts from the planned
/// instant, so it shows), and the results say which was used; a quantum
/// too long to be honest exits 2 naming the flag.
#[tokio::test]
async fn the_send_quantum_times_fast_sends_and_the_results_say_so() {
    let _serial = serial();
    init();
    let tmp = tempfile::tempdir().unwrap();
    let sweep = |results: &Path, qps: &str, duration: &str| {
        let mut args = demo_sweep(results, qps, duration);
        args.extend(["--max-tokens".into(), "4".into()]);
        args
    };
    let go = |args: Vec<String>, env: Vec<(&'static str, &'static str)>| async move {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_bin(&argv, &env).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    let quanta = |results: &Path| {
        let dir = &run_dirs(results)[0];
        let meta = read_json(&dir.join("metadata.json"));
        let levels = read_json(&dir.join("benchmark_qps_results.json"));
        let per_level: Vec<u64> = levels
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["client_usage"]["send_quantum_us"].as_u64().unwrap_or(0))
            .collect();
        (meta["send_quantum"].clone(), per_level, levels)
    };

    // auto: a slow level (its own pacer thread) exact, a fast one 1 ms.
    let auto = tmp.path().join("auto");
    go(sweep(&auto, "100,2000", "0.5"), vec![]).await;
    let (meta, per_level, _) = quanta(&auto);
    assert_eq!(meta, "auto");
    assert_eq!(per_level, [0, 1000]);

    // 0 from the environment: the fast level is exact too.
    let exact = tmp.path().join("exact");
    go(
        sweep(&exact, "2000", "0.5"),
        vec![("LLMLOAD_SEND_QUANTUM", "0")],
    )
    .await;
    let (meta, per_level, _) = quanta(&exact);
    assert_eq!(meta, "0");
    assert_eq!(per_level, [0]);

    // 5 ms at 500 req/s (constant arrival, 2 ms apart): the planned
    // instants fall 0, 2, 4, 1, 3 ms into their quanta, so the sends wait
    // 0, 3, 1, 4, 2 ms for the quantum's end. A send is never earlier
    // than that, however busy the machine: its lag's median is at least
    // the median wait (2 ms), and the level is sent in full.
    let given = tmp.path().join("given");
    let mut args = sweep(&given, "500", "1");
    args.extend(["--send-quantum".into(), "5ms".into()]);
    go(args, vec![]).await;
    let (meta, per_level, levels) = quanta(&given);
    assert_eq!(meta, "5000us");
    assert_eq!(per_level, [5000]);
    let lag = &levels[0]["schedule_lag"];
    assert!(lag["p50"].as_f64().unwrap() >= 0.0019, "{lag}");
    assert!(lag["p90"].as_f64().unwrap() >= 0.0029, "{lag}");
    // (The embedded mock turns away what is past its slots: sent is what
    // the pacer did.)
    assert_eq!(levels[0]["sent"], 500, "{}", levels[0]);

    for bad in ["20ms", "1", "soon"] {
        let mut args = sweep(&tmp.path().join("bad"), "10", "1");
        args.extend(["--send-quantum".to_string(), bad.to_string()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_bin(&argv, &[]).await;
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = text(&out.stderr);
        assert!(err.contains("--send-quantum"), "{err}");
    }
}

/// `run` against the embedded mock with the examples' dataset, writing
/// into `results`: what the tests of run-wide flags start from.
fn demo_sweep(results: &Path, qps: &str, duration: &str) -> Vec<String> {
    let dataset = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/conversations.json");
    [
        "--endpoint",
        "mock",
        "--model",
        "demo",
        "--dataset",
        dataset.to_str().unwrap(),
        "--qps",
        qps,
        "--duration",
        duration,
        "--results-dir",
        results.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}
