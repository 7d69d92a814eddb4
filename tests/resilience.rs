//! The run survives its surroundings: closed output pipes, an endpoint
//! that disappears, a panic in a request task, signals. Each case runs the
//! real binary as a child process and checks that nothing measured is
//! lost and that the process ends by itself, with the right exit code.

mod common;

use common::*;
use llmload::mock::capacity::CapacityModel;
use llmload::mock::{MockConfig, OutputTokens};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

fn quick_mock() -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots: 16,
            queue: 16,
            ttft: Duration::from_millis(5),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(1),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(8)),
        ..MockConfig::default()
    }
}

fn run_cmd(
    url: &str,
    dataset: &std::path::Path,
    results: &std::path::Path,
    extra: &[&str],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(base_run(url, dataset))
        .args(["--results-dir", results.to_str().unwrap(), "--plot"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for k in LLMLOAD_ENV {
        cmd.env_remove(k);
    }
    cmd
}

/// Read the child's stderr until it has said `needle`, then close both
/// of our pipe ends: later writes in the child fail with EPIPE.
async fn close_pipes_after(child: &mut tokio::process::Child, needle: &str) {
    let mut err = child.stderr.take().unwrap();
    drop(child.stdout.take());
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "child never said {needle:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        match tokio::time::timeout(Duration::from_secs(20), err.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => panic!(
                "stderr ended before {needle:?}: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    drop(err);
}

async fn wait(child: &mut tokio::process::Child, secs: u64) -> i32 {
    tokio::time::timeout(Duration::from_secs(secs), child.wait())
        .await
        .unwrap_or_else(|_| panic!("the child did not exit within {secs} s"))
        .unwrap()
        .code()
        .expect("exited, not killed by a signal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_output_pipes_lose_nothing() {
    let _serial = serial();
    let mock = start_mock(quick_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let mut child = run_cmd(
        &mock.chat_url(),
        &dataset,
        &results,
        &["--qps", "10,20", "--duration", "1"],
    )
    .spawn()
    .unwrap();
    close_pipes_after(&mut child, "level 1/2").await;
    assert_eq!(wait(&mut child, 30).await, 0, "the run's own exit code");
    let dir = &run_dirs(&results)[0];
    let meta = read_json(&dir.join("metadata.json"));
    assert_eq!(meta["status"], "complete");
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    let levels = levels.as_array().unwrap();
    assert_eq!(levels.len(), 2);
    assert_eq!(levels[0]["succeeded"], 10);
    assert_eq!(levels[1]["succeeded"], 20);
    png_size(&dir.join("benchmark_qps.png"));
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_pipes_and_a_vanished_endpoint_still_end_the_run() {
    let _serial = serial();
    let srv = common::closing::start(common::closing::Habits {
        hang: true,
        ..Default::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let mut cmd = run_cmd(
        &srv.url,
        &dataset,
        &results,
        &["--qps", "10", "--duration", "1"],
    );
    cmd.env("LLMLOAD_LOG", "trace");
    let mut child = cmd.spawn().unwrap();
    close_pipes_after(&mut child, "level 1/1").await;
    // Every request is open, mid-stream, when the endpoint goes away.
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.requests() < 10 {
        assert!(
            Instant::now() < deadline,
            "only {} requests arrived",
            srv.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.vanish();
    assert_eq!(wait(&mut child, 30).await, 0);
    let dir = &run_dirs(&results)[0];
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    let l = &levels[0];
    assert_eq!(l["sent"], 10);
    assert_eq!(l["errors"]["connection reset"], 10, "{l}");
    assert_eq!(read_json(&dir.join("metadata.json"))["status"], "complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_closed_pipes_ends_within_the_grace_with_partial_results() {
    let _serial = serial();
    let mut slow = quick_mock();
    slow.capacity.ttft = Duration::from_secs(60);
    let mock = start_mock(slow).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let mut child = run_cmd(
        &mock.chat_url(),
        &dataset,
        &results,
        &["--qps", "10", "--duration", "30"],
    )
    .spawn()
    .unwrap();
    close_pipes_after(&mut child, "level 1/1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    assert_eq!(wait(&mut child, 15).await, 130);
    // Stop sending at once, 2 s grace for in-flight requests, then out.
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let dir = &run_dirs(&results)[0];
    let meta = read_json(&dir.join("metadata.json"));
    assert_eq!(meta["status"], "partial");
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    let l = &levels[0];
    assert_eq!(l["interrupted"], true);
    assert_eq!(l["errors"]["cancelled"], l["sent"], "{l}");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_request_is_counted_and_the_level_ends_on_time() {
    let _serial = serial();
    let mock = start_mock(quick_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let mut cmd = run_cmd(
        &mock.chat_url(),
        &dataset,
        &results,
        &["--qps", "20", "--duration", "1"],
    );
    cmd.env("LLMLOAD_INJECT_PANIC", "4");
    let t0 = Instant::now();
    let out = cmd.output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("a request task panicked").count(),
        1,
        "logged once: {stderr}"
    );
    let dir = &run_dirs(&results)[0];
    let l = &read_json(&dir.join("benchmark_qps_results.json"))[0];
    assert_eq!(l["sent"], 20);
    assert_eq!(l["errors"]["internal error"], 5, "{l}");
    assert_eq!(l["succeeded"], 15);
    assert_eq!(l["failed"], 5);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_log_pipe_closed_still_stops_cleanly() {
    let _serial = serial();
    let mut slow = quick_mock();
    slow.capacity.ttft = Duration::from_secs(60);
    let mock = start_mock(slow).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("results");
    let cfg = tmp.path().join("llmload.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nresults_dir = \"{}\"\nshutdown_grace = \"1s\"\n\
             [[target]]\nname = \"t\"\nendpoint = \"{}\"\nmodel = \"m\"\ndataset = \"{}\"\n\
             [[job]]\nname = \"sweep\"\ntarget = \"t\"\nkind = \"sweep\"\nqps = [10]\nduration = \"30s\"\nschedule = \"at_start\"\n",
            results.display(),
            mock.chat_url(),
            dataset.display()
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&cfg, &[]).await;
    d.wait_json("/api/v1/status", 15, |v| {
        v["running"].as_array().is_some_and(|r| !r.is_empty())
    })
    .await;
    d.close_log().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.signal(libc::SIGTERM);
    let code = wait(&mut d.child, 15).await;
    assert_eq!(code, 0);
    let dir = &run_dirs(&results.join("t"))[0];
    assert_eq!(read_json(&dir.join("metadata.json"))["status"], "partial");
    mock.shutdown().await;
}

/// The child's writes fail past `bytes` per file, as on a full disk: a
/// file-size limit (`ulimit -f`), with SIGXFSZ ignored so that a write
/// past it fails with EFBIG instead of killing the process.
fn full_disk_at(cmd: &mut tokio::process::Command, bytes: u64) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
}

/// A disk that fills during the run (here: a file-size limit on the child,
/// `ulimit -f`, so that writes past 64 KiB fail with EFBIG as on a full
/// disk): the JSON files fit and are whole, the PNG does not and is absent
/// (never truncated), no temporary file is left, the console does not say
/// "saved", and the exit code is 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_no_half_file_and_no_saved_line() {
    let _serial = serial();
    let mock = start_mock(quick_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let mut cmd = run_cmd(
        &mock.chat_url(),
        &dataset,
        &results,
        &["--qps", "10,20", "--duration", "0.5"],
    );
    full_disk_at(&mut cmd, 64 * 1024);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("the run ends")
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stdout.contains("Results saved to"), "{stdout}");
    assert!(stdout.contains("Results NOT fully saved"), "{stdout}");
    assert!(
        stderr.contains("benchmark_qps.png") && stderr.contains("File too large"),
        "{stderr}"
    );
    let dir = &run_dirs(&results)[0];
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "benchmark_qps_results.json",
            "metadata.json",
            "summary.json"
        ],
        "no PNG, no temporary file"
    );
    for n in &names {
        read_json(&dir.join(n));
    }
    let meta = read_json(&dir.join("metadata.json"));
    assert_eq!(meta["status"], "complete");
    assert!(
        meta["error"]
            .as_str()
            .unwrap()
            .contains("benchmark_qps.png"),
        "{meta}"
    );
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    assert_eq!(levels.as_array().unwrap().len(), 2, "nothing measured lost");
    mock.shutdown().await;
}

/// `--metrics-linger`: a shard keeps serving its final figures after its
/// last level, so that the next scrape sees the end; a signal ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_with_metrics_linger_is_scraped_after_its_last_level() {
    use tokio::io::AsyncBufReadExt;
    let _serial = serial();
    let mock = start_mock(quick_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let mut child = run_cmd(
        &mock.chat_url(),
        &dataset,
        &results,
        &[
            "--qps",
            "20",
            "--duration",
            "1",
            "--shard",
            "1/2",
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-linger",
            "120s",
        ],
    )
    .spawn()
    .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .expect("the run reaches its linger")
            .unwrap()
            .expect("stderr open until the linger");
        if let Some(a) = line.strip_prefix("serving metrics on http://") {
            addr = Some(a.trim_end_matches("/metrics").to_string());
        }
        if line.contains("serving metrics for another 2m") {
            break;
        }
    }
    // The run is over: its results are on disk, and /metrics still
    // answers with every request of the level counted.
    let dir = &run_dirs(&results)[0];
    let l = &read_json(&dir.join("benchmark_qps_results.json"))[0];
    let sent = l["sent"].as_u64().unwrap();
    assert_eq!(sent, 10, "shard 1 of 2 sends half of 20 req/s x 1 s");
    let (code, body) = get(&format!("http://{}/metrics", addr.unwrap())).await;
    assert_eq!(code, 200);
    let counted: f64 = body
        .lines()
        .filter(|l| l.starts_with("llmload_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, sent as f64, "{body}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    assert_eq!(
        wait(&mut child, 10).await,
        0,
        "a complete run, linger cut short"
    );
    mock.shutdown().await;
}

/// `requests.jsonl` is a log, appended level by level; a full disk (the
/// same file-size limit) mid-run cuts it back to its last whole flush:
/// every line in it parses, the lost ones are counted, exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_requests_jsonl_with_whole_lines_only() {
    let _serial = serial();
    let mock = start_mock(quick_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(base_run(&mock.chat_url(), &dataset))
        .args([
            "--qps",
            "100,200",
            "--duration",
            "1",
            "--record-requests",
            "--results-dir",
            results.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    full_disk_at(&mut cmd, 64 * 1024);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("the run ends")
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stdout.contains("Results saved to"), "{stdout}");
    let lost: u64 = stderr
        .split("lines lost: ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lost-lines count: {stderr}"));
    let dir = &run_dirs(&results)[0];
    let log = std::fs::read_to_string(dir.join("requests.jsonl")).unwrap();
    assert!(log.is_empty() || log.ends_with('\n'), "a half last line");
    let kept = log.lines().count() as u64;
    for l in log.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
    assert!(kept >= 100, "level 1 reached the file whole: {kept}");
    assert!(lost > 0);
    assert_eq!(
        kept + lost,
        300,
        "every request either kept or counted lost"
    );
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    assert_eq!(levels.as_array().unwrap().len(), 2, "nothing measured lost");
    mock.shutdown().await;
}
