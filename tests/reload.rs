//! Reloading the daemon's config (SIGHUP, `POST /-/reload`) while a soak
//! runs: unchanged jobs go on untouched, changed ones are rescheduled,
//! removed ones stop as at shutdown, and a broken file changes nothing.

mod common;

use common::*;
use llmload::mock::capacity::CapacityModel;
use llmload::mock::{MockConfig, OutputTokens};
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "reload-token-abc";

fn fast_mock() -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots: 8,
            queue: 8,
            ttft: Duration::from_millis(10),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(2),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(8)),
        ..MockConfig::default()
    }
}

/// The config: targets `t` (the soak's) and `u` (the sweep's), both on
/// `url`; the sweep sends `sweep_qps`; the soak (if any) `soak` req/s.
fn config(dir: &Path, url: &str, dataset: &Path, sweep_qps: &str, soak: Option<u32>) -> String {
    let target = |name: &str| {
        format!(
            "[[target]]\nname = \"{name}\"\nendpoint = \"{url}\"\nmodel = \"m\"\ndataset = \"{}\"\n",
            dataset.display()
        )
    };
    let soak = soak.map_or(String::new(), |q| {
        format!(
            "[[job]]\nname = \"soak\"\ntarget = \"t\"\nkind = \"soak\"\nqps = {q}\nduration = \"forever\"\nsnapshot_every = \"1s\"\nschedule = \"at_start\"\n"
        )
    });
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nresults_dir = \"{}\"\napi_token_env = \"LLMLOAD_TEST_TOKEN\"\nshutdown_grace = \"2s\"\n\n\
         {}{}{soak}\
         [[job]]\nname = \"sweep\"\ntarget = \"u\"\nkind = \"sweep\"\nqps = [{sweep_qps}]\nduration = \"1s\"\nschedule = \"at_start\"\n",
        dir.join("results").display(),
        target("t"),
        target("u"),
    )
}

/// The value of one series in a scrape (0 when absent).
fn series(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn soak_of(status: &serde_json::Value) -> Option<serde_json::Value> {
    status["running"]
        .as_array()?
        .iter()
        .find(|r| r["job"] == "soak")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_the_soak_reschedules_the_sweep_and_refuses_a_broken_file() {
    let _serial = serial();
    let mock = start_mock(fast_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let path = tmp.path().join("llmload.toml");
    let url = mock.chat_url();
    std::fs::write(&path, config(tmp.path(), &url, &dataset, "5", Some(10))).unwrap();
    let d = Daemon::start(&path, &[("LLMLOAD_TEST_TOKEN", TOKEN)]).await;

    // v1: the sweep ran once; the soak is sending.
    d.wait_json("/api/v1/runs?job=sweep", 30, |v| {
        v["runs"][0]["status"] == "complete"
    })
    .await;
    let before = d
        .wait_json("/api/v1/status", 20, |v| {
            soak_of(v).is_some_and(|s| s["completed"].as_u64().unwrap_or(0) >= 5)
        })
        .await;
    let soak_run = soak_of(&before).unwrap()["run_id"].clone();
    let soak_sent = |text: &str| series(text, "llmload_requests_total{job=\"soak\"");

    // v2: the sweep changes; SIGHUP.
    std::fs::write(&path, config(tmp.path(), &url, &dataset, "6", Some(10))).unwrap();
    let (_, m0) = get(&d.url("/metrics")).await;
    d.signal(libc::SIGHUP);
    let status = d
        .wait_json("/api/v1/status", 20, |v| {
            v["config"]["last_reload"]["result"] == "success"
        })
        .await;
    let r = &status["config"]["last_reload"];
    assert_eq!(r["trigger"], "SIGHUP", "{r}");
    assert_eq!(r["jobs"]["changed"], serde_json::json!(["sweep"]), "{r}");
    assert_eq!(r["jobs"]["unchanged"], serde_json::json!(["soak"]), "{r}");
    // The changed sweep fires again (at_start) with its new rate.
    let runs = d
        .wait_json("/api/v1/runs?job=sweep", 30, |v| {
            v["runs"].as_array().is_some_and(|r| r.len() == 2)
                && v["runs"][0]["status"] == "complete"
        })
        .await;
    let id = runs["runs"][0]["id"].as_str().unwrap();
    let detail = d
        .wait_json(&format!("/api/v1/runs/{id}"), 10, |v| {
            v["results"].is_array()
        })
        .await;
    assert_eq!(detail["results"][0]["qps_target"], 6.0);
    // The soak went on: the same run, its counter grew across the reload
    // and never went back, and its pacer was never paused or restarted.
    let (_, m1) = get(&d.url("/metrics")).await;
    assert!(
        soak_sent(&m1) > soak_sent(&m0),
        "the sweep's second run took over a second: the soak sent meanwhile"
    );
    let after = d
        .wait_json("/api/v1/status", 10, |v| {
            soak_of(v).is_some_and(|s| {
                s["scheduled"].as_u64() > soak_of(&before).unwrap()["scheduled"].as_u64()
            })
        })
        .await;
    let soak = soak_of(&after).unwrap();
    assert_eq!(soak["run_id"], soak_run, "the soak was not restarted");
    assert_eq!(series(&m1, "llmload_config_last_reload_successful"), 1.0);
    assert_eq!(
        series(&m1, "llmload_config_reloads_total{result=\"success\"}"),
        1.0
    );

    // v3: a broken file. The daemon keeps running on v2.
    std::fs::write(
        &path,
        config(tmp.path(), &url, &dataset, "0", Some(10))
            .replace("[server]", "[server]\nbogus = 1"),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let status = d
        .wait_json("/api/v1/status", 20, |v| {
            v["config"]["last_reload"]["result"] == "failure"
        })
        .await;
    let errors = status["config"]["last_reload"]["errors"].to_string();
    assert!(
        errors.contains("llmload.toml") && errors.contains("bogus"),
        "{errors}"
    );
    let (code, _) = get(&d.url("/healthz")).await;
    assert_eq!(code, 200);
    let (_, m2) = get(&d.url("/metrics")).await;
    assert_eq!(series(&m2, "llmload_config_last_reload_successful"), 0.0);
    assert_eq!(
        series(&m2, "llmload_config_reloads_total{result=\"failure\"}"),
        1.0
    );
    // The soak still runs: its counter moves on from the last scrape.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = get(&d.url("/metrics")).await;
        if soak_sent(&m) > soak_sent(&m2) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the soak stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(soak_of(&status).unwrap()["run_id"], soak_run);
    assert!(d.log_text().contains("reload refused"), "{}", d.log_text());
    // A value that parses but means nothing is refused too.
    std::fs::write(&path, config(tmp.path(), &url, &dataset, "0", Some(10))).unwrap();
    let (code, body) = post_empty(&d.url("/-/reload"), Some(TOKEN)).await;
    assert_eq!(code, 500, "{body}");
    assert!(body["errors"].to_string().contains("job[1].qps"), "{body}");

    // v4 over the API (the token is required): the soak's rate changes
    // while it runs, so its run stops as at shutdown (written, marked
    // partial) and a new one starts with the new rate.
    std::fs::write(&path, config(tmp.path(), &url, &dataset, "6", Some(12))).unwrap();
    let (code, _) = post_empty(&d.url("/-/reload"), None).await;
    assert_eq!(code, 401);
    let (code, body) = post_empty(&d.url("/-/reload"), Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["jobs"]["changed"],
        serde_json::json!(["soak"]),
        "{body}"
    );
    assert_eq!(
        body["jobs"]["stopped"],
        serde_json::json!(["soak"]),
        "{body}"
    );
    assert_eq!(
        body["jobs"]["unchanged"],
        serde_json::json!(["sweep"]),
        "{body}"
    );
    let runs = d
        .wait_json("/api/v1/runs?job=soak", 20, |v| {
            v["runs"].as_array().is_some_and(|r| r.len() == 2)
                && v["runs"][0]["status"] == "running"
                && v["runs"][1]["status"] == "partial"
        })
        .await;
    let first = runs["runs"][1].clone();
    assert_eq!(first["id"], soak_run);
    let dir = tmp
        .path()
        .join("results")
        .join(first["dir"].as_str().unwrap());
    let meta = read_json(&dir.join("metadata.json"));
    assert_eq!(
        (meta["status"].as_str(), meta["partial"].as_bool()),
        (Some("partial"), Some(true))
    );
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    assert!(levels[0]["sent"].as_u64().unwrap() >= 5, "{levels}");
    assert_eq!(levels[0]["qps_target"], 10.0);
    let status = d
        .wait_json("/api/v1/status", 10, |v| soak_of(v).is_some())
        .await;
    assert_ne!(soak_of(&status).unwrap()["run_id"], soak_run, "a new run");
    assert_eq!(soak_of(&status).unwrap()["qps"], 12.0);

    // v5: the soak is removed: its run stops, marked partial.
    std::fs::write(&path, config(tmp.path(), &url, &dataset, "6", None)).unwrap();
    let (code, body) = post_empty(&d.url("/-/reload"), Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["jobs"]["removed"],
        serde_json::json!(["soak"]),
        "{body}"
    );
    assert_eq!(
        body["jobs"]["stopped"],
        serde_json::json!(["soak"]),
        "{body}"
    );
    d.wait_json("/api/v1/runs?job=soak", 20, |v| {
        v["runs"][0]["status"] == "partial"
    })
    .await;
    let (_, m3) = get(&d.url("/metrics")).await;
    assert_eq!(series(&m3, "llmload_config_last_reload_successful"), 1.0);
    // The unchanged sweep did not run again.
    let (_, runs) = get(&d.url("/api/v1/runs?job=sweep")).await;
    let runs: serde_json::Value = serde_json::from_str(&runs).unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);

    d.signal(libc::SIGTERM);
    let mut d = d;
    let status = tokio::time::timeout(Duration::from_secs(20), d.child.wait())
        .await
        .expect("daemon exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    mock.shutdown().await;
}
