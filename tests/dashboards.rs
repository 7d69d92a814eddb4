//! Dashboards and alert rules, kept honest: promtool, Grafana's published
//! types, structural checks, and an end-to-end run where every dashboard
//! expression must return data from a real Prometheus scraping a real
//! daemon, and a capacity regression must fire and reach a real
//! Alertmanager.

mod common;

use common::*;
use llmload::mock::capacity::CapacityModel;
use llmload::mock::{MockConfig, OutputTokens};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let mut v: Vec<_> = std::fs::read_dir(root().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, read_json(&p))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(v.len(), 3, "capacity, live and soak dashboards");
    v
}

/// Every PromQL expression of a dashboard: panel targets, query
/// variables, annotations.
fn expressions(d: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((
                    format!("panel {} '{}'", p["id"], p["title"].as_str().unwrap_or("")),
                    e.to_string(),
                ));
            }
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["query"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| v["query"]["query"].as_str().map(str::to_owned));
            if let Some(q) = q {
                out.push((format!("variable {}", v["name"]), q));
            }
        }
    }
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(e) = a["expr"].as_str() {
            out.push((format!("annotation {}", a["name"]), e.to_string()));
        }
    }
    out
}

/// Grafana template syntax to plain PromQL: variables to match-all, and
/// `label_values(sel, label)` to the query Grafana would run.
fn to_promql(e: &str) -> String {
    let e = e
        .replace("$__rate_interval", "20s")
        .replace("${__rate_interval}", "20s")
        .replace("$target", ".*")
        .replace("$model", ".*")
        .replace("$job", ".*");
    if let Some(inner) = e
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (sel, label) = inner.rsplit_once(',').unwrap();
        return format!("count by ({}) ({})", label.trim(), sel.trim());
    }
    e
}

/// `llmload_…` names referenced by an expression, histogram suffixes off.
fn metric_names(e: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = e.as_bytes();
    let mut i = 0;
    while let Some(off) = e[i..].find("llmload_") {
        let start = i + off;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let mut name = e[start..end].to_string();
        for suffix in ["_bucket", "_count", "_sum"] {
            if let Some(n) = name.strip_suffix(suffix) {
                name = n.to_string();
            }
        }
        out.insert(name);
        i = end;
    }
    out
}

fn readme_metric_names() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(root().join("docs/src/metrics.md")).unwrap();
    let start = readme.find("<!-- metrics:start -->").unwrap();
    let end = readme.find("<!-- metrics:end -->").unwrap();
    readme[start..end]
        .lines()
        .filter_map(|l| l.split('|').nth(1))
        .map(|c| c.trim().trim_matches('`').to_string())
        .filter(|c| c.starts_with("llmload_"))
        .collect()
}

#[test]
fn promtool_checks_config_rules_and_alert_unit_tests() {
    let _serial = serial();
    let dir = root().join("deploy/prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("`promtool` must be installed: ./scripts/test.sh installs it");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The shipped rules are the template rendered with its defaults.
    let rendered = Command::new(bin()).arg("alert-rules").output().unwrap();
    assert!(rendered.status.success());
    assert_eq!(
        String::from_utf8(rendered.stdout).unwrap(),
        std::fs::read_to_string(dir.join("alerts.yml")).unwrap(),
        "alerts.yml is stale: llmload alert-rules > deploy/prometheus/alerts.yml"
    );
}

#[test]
fn dashboards_type_check_against_grafana_schema() {
    let _serial = serial();
    let dir = root().join("tests/dashboards");
    assert!(
        dir.join("node_modules/@grafana/schema").exists(),
        "@grafana/schema is not installed: run ./scripts/test.sh (it runs npm ci in tests/dashboards)"
    );
    let tsc = |file: &str| {
        Command::new("npx")
            .args([
                "tsc",
                "--noEmit",
                "--strict",
                "--resolveJsonModule",
                "--esModuleInterop",
                "--moduleResolution",
                "bundler",
                "--module",
                "esnext",
                "--target",
                "es2022",
                "--skipLibCheck",
                file,
            ])
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let out = tsc("check.ts");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The check can fail: a dashboard with a string gridPos.h is refused.
    let (_, mut broken) = dashboards().remove(0);
    broken["panels"][0]["gridPos"]["h"] = serde_json::json!("4");
    let tag = std::process::id();
    let json = dir.join(format!("broken-{tag}.json"));
    let ts = dir.join(format!("broken-{tag}.ts"));
    std::fs::write(&json, broken.to_string()).unwrap();
    std::fs::write(
        &ts,
        format!(
            "import type {{ DashboardJson }} from './check';\nimport b from './broken-{tag}.json';\nexport const x: DashboardJson = b;\n"
        ),
    )
    .unwrap();
    let out = tsc(ts.file_name().unwrap().to_str().unwrap());
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(&ts);
    assert!(
        !out.status.success(),
        "a broken dashboard must fail the type check"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("not assignable to type 'number'"));
}

#[test]
fn dashboards_are_well_formed_and_use_only_documented_metrics() {
    let _serial = serial();
    let documented = readme_metric_names();
    for (name, d) in dashboards() {
        assert!(
            d["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{name}: uid"
        );
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for v in ["datasource", "target", "model"] {
            assert!(vars.contains(&v), "{name}: variable {v}");
        }
        let mut ids = BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap_or("?");
            assert!(
                ids.insert(p["id"].as_i64().unwrap()),
                "{name}: duplicate panel id {}",
                p["id"]
            );
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_i64().unwrap(), g["w"].as_i64().unwrap());
            assert!(
                x >= 0 && w > 0 && x + w <= 24,
                "{name}/{title}: gridPos {g}"
            );
            assert!(g["h"].as_i64().unwrap() > 0 && g["y"].as_i64().unwrap() >= 0);
            assert!(
                p["description"].as_str().is_some_and(|s| s.len() > 10),
                "{name}/{title}: description"
            );
            if p["type"] != "row" {
                assert!(
                    p["fieldConfig"]["defaults"]["unit"].is_string(),
                    "{name}/{title}: unit"
                );
                assert_eq!(
                    p["datasource"]["uid"], "${datasource}",
                    "{name}/{title}: datasource"
                );
                for t in p["targets"].as_array().unwrap() {
                    assert_eq!(
                        t["datasource"]["uid"], "${datasource}",
                        "{name}/{title}: target datasource"
                    );
                }
            }
        }
        for (where_, e) in expressions(&d) {
            for m in metric_names(&e) {
                assert!(
                    documented.contains(&m),
                    "{name} {where_}: {m} is not a documented metric"
                );
            }
        }
    }
}

/// A TCP proxy whose backend can be switched; switching drops every open
/// connection so the client reconnects to the new backend.
struct Proxy {
    addr: SocketAddr,
    backend: Arc<Mutex<SocketAddr>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(backend: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = Arc::new(Mutex::new(backend));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (b, c) = (backend.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = *b.lock().unwrap();
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap().push(h.abort_handle());
            }
        });
        Proxy {
            addr,
            backend,
            conns,
        }
    }

    fn switch(&self, to: SocketAddr) {
        *self.backend.lock().unwrap() = to;
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

fn capacity_mock(slots: usize) -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots,
            queue: 2,
            ttft: Duration::from_millis(20),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(4),
            tpot_growth: 0.0,
        },
        // 4 slots: 4 / (20 ms + 19 × 4 ms) = 41.7 requests/s; 2 slots: 20.8.
        output_tokens: Some(OutputTokens::Cap(20)),
        ..MockConfig::default()
    }
}

struct Alertmanager {
    port: u16,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

async fn start_alertmanager() -> Alertmanager {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("am.yml"),
        "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let child = tokio::process::Command::new("prometheus-alertmanager")
        .arg(format!(
            "--config.file={}",
            dir.path().join("am.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("`prometheus-alertmanager` must be installed: ./scripts/test.sh installs it");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_ok(&format!("http://127.0.0.1:{port}/-/ready")).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "alertmanager did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Alertmanager {
        port,
        _child: child,
        _dir: dir,
    }
}

async fn get_ok(url: &str) -> Option<u16> {
    let c = http_client();
    let req = http::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), c.request(req))
        .await
        .ok()?
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_expression_returns_data_and_a_capacity_regression_reaches_alertmanager() {
    let _serial = serial();
    let full = start_mock(capacity_mock(4)).await;
    let half = start_mock(capacity_mock(2)).await;
    // The soak target fails now and then, so its error panels have data;
    // it caches prefixes and the soak sends sessions, so the cache and
    // per-turn panels have data too.
    let mut soak_cfg = capacity_mock(8);
    soak_cfg.faults = vec!["http500=0.1".parse().unwrap()];
    soak_cfg.prefix_cache_tokens = 100_000;
    let soak_mock = start_mock(soak_cfg).await;
    let proxy = Proxy::start(full.addr).await;
    // The second leg: a queueing server that never refuses (vLLM-like),
    // first whole, then with half its slots.
    let mut queueing = capacity_mock(4);
    queueing.capacity.queue = llmload::mock::capacity::UNBOUNDED;
    let qfull = start_mock(queueing.clone()).await;
    queueing.capacity.slots = 2;
    let qhalf = start_mock(queueing).await;
    let qproxy = Proxy::start(qfull.addr).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());

    // The shipped template, windows shortened for a test.
    let rules = tmp.path().join("alerts.yml");
    let out = Command::new(bin())
        .args([
            "alert-rules",
            "--set",
            "CAPACITY_LOOKBACK=10m",
            "--set",
            "SOAK_FOR=0s",
            "--set",
            "RATE_WINDOW=20s",
            "--set",
            "DAEMON_DOWN_FOR=0s",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&rules, &out.stdout).unwrap();

    let cfg = tmp.path().join("llmload.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nresults_dir = \"{results}\"\n\
             [[target]]\nname = \"prod\"\nendpoint = \"http://{proxy}/v1/chat/completions\"\nmodel = \"m\"\ndataset = \"{ds}\"\n\
             [[target]]\nname = \"staging\"\nendpoint = \"{soak}\"\nmodel = \"m\"\ndataset = \"synthetic:input=64,output=8,turns=3,turn_input=16,samples=16\"\n\
             [[job]]\nname = \"capacity\"\ntarget = \"prod\"\nkind = \"sweep\"\nqps = [10, 30, 60]\nduration = \"2s\"\nschedule = \"at_start\"\n\
             [[job]]\nname = \"nightly\"\ntarget = \"prod\"\nkind = \"sweep\"\nqps = [1]\nduration = \"1s\"\nschedule = \"0 3 * * *\"\n\
             [[job]]\nname = \"soak\"\ntarget = \"staging\"\nkind = \"soak\"\nqps = 5\nduration = \"forever\"\nsnapshot_every = \"2s\"\nschedule = \"at_start\"\n\
             [[target]]\nname = \"queued\"\nendpoint = \"http://{qproxy}/v1/chat/completions\"\nmodel = \"m\"\ndataset = \"{ds}\"\n\
             [[job]]\nname = \"slo-capacity\"\ntarget = \"queued\"\nkind = \"capacity\"\nslo = [\"ttft<=1s\"]\nmin_qps = 8\nmax_qps = 200\nprecision = 0.1\nprobe_duration = \"3s\"\nconfirm_duration = \"6s\"\narrival = \"constant\"\nschedule = \"at_start\"\n",
            results = tmp.path().join("results").display(),
            proxy = proxy.addr,
            qproxy = qproxy.addr,
            soak = soak_mock.chat_url(),
            ds = dataset.display(),
        ),
    )
    .unwrap();
    let am = start_alertmanager().await;
    let d = Daemon::start(&cfg, &[]).await;
    let prom = Prometheus::start(&[d.addr], std::slice::from_ref(&rules), Some(am.port)).await;

    // Sweep 1 at full capacity: 30 QPS holds, 60 does not.
    d.wait_json("/api/v1/runs?job=capacity", 60, |v| {
        v["runs"][0]["status"] == "complete"
    })
    .await;
    prom.wait_for(
        "llmload_capacity_max_qps_without_errors{target=\"prod\"}",
        30,
        |v| v == 30.0,
    )
    .await;
    // Let the baseline accumulate samples in the look-back window.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let firing = prom
        .query("ALERTS{alertname=\"LLMLoadCapacityRegression\"}")
        .await
        .unwrap();
    assert!(firing.is_empty(), "no regression yet: {firing:?}");

    // The queueing server's capacity under the SLO: about 41.7 req/s.
    d.wait_json("/api/v1/runs?job=slo-capacity", 120, |v| {
        v["runs"][0]["status"] == "complete"
    })
    .await;
    prom.wait_for(
        "llmload_capacity_qps_under_slo{target=\"queued\"}",
        30,
        |v| (35.0..=44.0).contains(&v),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;

    // Sweep 2 at half capacity.
    proxy.switch(half.addr);
    let (s, _) = post_empty(&d.url("/api/v1/jobs/capacity/trigger"), None).await;
    assert_eq!(s, 202);
    d.wait_json("/api/v1/runs?job=capacity", 60, |v| {
        v["runs"].as_array().unwrap().len() == 2 && v["runs"][0]["status"] == "complete"
    })
    .await;
    prom.wait_for(
        "llmload_capacity_max_qps_without_errors{target=\"prod\"}",
        30,
        |v| v == 10.0,
    )
    .await;
    prom.wait_for(
        "ALERTS{alertname=\"LLMLoadCapacityRegression\",alertstate=\"firing\",target=\"prod\"}",
        30,
        |v| v == 1.0,
    )
    .await;
    // Second leg: the queueing server loses half its slots. It still
    // answers every request, late; its capacity under the SLO halves.
    qproxy.switch(qhalf.addr);
    let (s, _) = post_empty(&d.url("/api/v1/jobs/slo-capacity/trigger"), None).await;
    assert_eq!(s, 202);
    d.wait_json("/api/v1/runs?job=slo-capacity", 120, |v| {
        v["runs"].as_array().unwrap().len() == 2 && v["runs"][0]["status"] == "complete"
    })
    .await;
    prom.wait_for(
        "llmload_capacity_qps_under_slo{target=\"queued\"}",
        30,
        |v| (16.0..=23.0).contains(&v),
    )
    .await;
    prom.wait_for(
        "ALERTS{alertname=\"LLMLoadCapacityRegression\",alertstate=\"firing\",target=\"queued\",measure=\"under its SLO\"}",
        30,
        |v| v == 1.0,
    )
    .await;
    // The daemon's compare API says so too, for both kinds of run.
    for job in ["capacity", "slo-capacity"] {
        let (_, runs) = get(&d.url(&format!("/api/v1/runs?job={job}"))).await;
        let runs: serde_json::Value = serde_json::from_str(&runs).unwrap();
        let (new, base) = (
            runs["runs"][0]["id"].as_str().unwrap(),
            runs["runs"][1]["id"].as_str().unwrap(),
        );
        let (s, body) = get(&d.url(&format!("/api/v1/runs/{new}/compare?with={base}"))).await;
        assert_eq!(s, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let want = if job == "capacity" {
            "max QPS without errors"
        } else {
            "capacity under SLO"
        };
        // A level this busy machine starved makes the figure "not
        // comparable", never a regression: say so instead of failing.
        let tainted = v["lines"].as_array().unwrap().iter().find(|l| {
            l["metric"] == want && l["not_comparable"].as_str().is_some_and(|w| !w.is_empty())
        });
        if let Some(l) = tainted {
            eprintln!("{job}: {want} not comparable here: {}", l["not_comparable"]);
            assert!(
                v["verdict"] == "regression" || v["verdict"] == "not comparable",
                "{job}: {v}"
            );
            continue;
        }
        assert_eq!(v["verdict"], "regression", "{job}: {v}");
        assert!(
            v["regressions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().contains(want)),
            "{job}: {v}"
        );
    }
    let (s, _) = get(&d.url("/api/v1/runs/nope/compare?with=nope")).await;
    assert_eq!(s, 404);
    // …and it reached Alertmanager.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = get(&format!("http://127.0.0.1:{}/api/v2/alerts", am.port)).await;
        let alerts: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let find = |target: &str| {
            alerts.as_array().into_iter().flatten().find(|a| {
                a["labels"]["alertname"] == "LLMLoadCapacityRegression"
                    && a["labels"]["target"] == target
            })
        };
        let hit = find("prod").zip(find("queued"));
        if let Some((a, q)) = hit {
            assert!(
                q["annotations"]["summary"]
                    .as_str()
                    .unwrap()
                    .contains("QPS under its SLO"),
                "{q}"
            );
            assert_eq!(a["labels"]["severity"], "warning");
            assert!(
                a["annotations"]["summary"]
                    .as_str()
                    .unwrap()
                    .contains("holds only 10 QPS")
            );
            assert!(
                a["annotations"]["runbook"]
                    .as_str()
                    .unwrap()
                    .contains("/api/v1/jobs/capacity/trigger")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alert never reached alertmanager: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every dashboard expression parses and returns data.
    let (_, exported) = get(&d.url("/metrics")).await;
    let exported: BTreeSet<String> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let mut checked = 0;
    for (name, dash) in dashboards() {
        for (where_, expr) in expressions(&dash) {
            for m in metric_names(&expr) {
                assert!(
                    exported.contains(&m),
                    "{name} {where_}: {m} is not exported by the daemon"
                );
            }
            let q = to_promql(&expr);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match prom.query(&q).await {
                    Err(e) => panic!("{name} {where_}: does not evaluate: {e}"),
                    Ok(r) if !r.is_empty() => break,
                    Ok(_) => {
                        assert!(
                            Instant::now() < deadline,
                            "{name} {where_}: no series for {q}"
                        );
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 60, "{checked} expressions");

    // Every alert rule evaluates without error in the real Prometheus.
    let (_, body) = get(&format!("http://127.0.0.1:{}/api/v1/rules", prom.port)).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rules: Vec<&serde_json::Value> = v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 6);
    for r in rules {
        assert_eq!(r["health"], "ok", "{}: {}", r["name"], r["lastError"]);
    }
    full.shutdown().await;
    half.shutdown().await;
    qfull.shutdown().await;
    qhalf.shutdown().await;
    soak_mock.shutdown().await;
}

/// Labels of a query result series, `instance` left out.
fn without_instance(series: &serde_json::Value) -> String {
    let mut m = series["metric"].as_object().cloned().unwrap_or_default();
    m.remove("instance");
    serde_json::Value::Object(m).to_string()
}

/// Three shards of one `llmload run`, each serving `/metrics`
/// (`--metrics-listen`), scraped by one real Prometheus: every dashboard
/// expression that has data must read as one run. No two series of a
/// result may differ only by `instance` (a panel would draw three lines,
/// or a stat pick one shard), and the rates must add up to the run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_reads_one_run_when_shards_report_at_once() {
    let _serial = serial();
    let mock = start_mock(capacity_mock(8)).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let prom = Prometheus::start(&addrs, &[], None).await;
    // Far enough ahead for Prometheus' first scrapes (about 5 s after it
    // starts) to land while the first level runs.
    let start = std::time::SystemTime::now() + Duration::from_secs(4);
    let start = format!(
        "{:.3}",
        start
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    );
    let mut shards = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let child = tokio::process::Command::new(bin())
            .args(common::base_run(&mock.chat_url(), &dataset))
            .args([
                "--qps",
                "24,30",
                "--duration",
                "12",
                "--level-gap",
                "1s",
                "--start-at",
                &start,
                "--shard",
                &format!("{i}/3"),
                "--metrics-listen",
                &format!("127.0.0.1:{port}"),
                "--results-dir",
                tmp.path().join("results").to_str().unwrap(),
            ])
            .env_remove("LLMLOAD_SHARD")
            .env_remove("JOB_COMPLETION_INDEX")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        shards.push(child);
    }
    // The second level is under way: the first level's histograms and
    // capacity figures are in, the live gauges are moving.
    prom.wait_for("count(llmload_target_qps)", 60, |v| v == 3.0)
        .await;
    prom.wait_for("sum(llmload_target_qps)", 60, |v| (v - 30.0).abs() < 1e-9)
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;

    let mut with_data = 0;
    for (name, dash) in dashboards() {
        for (where_, expr) in expressions(&dash) {
            let q = to_promql(&expr);
            let r = prom
                .query(&q)
                .await
                .unwrap_or_else(|e| panic!("{name} {where_}: {e}"));
            if r.is_empty() {
                continue; // a daemon-only series (soak, capacity search)
            }
            with_data += 1;
            let mut seen = BTreeSet::new();
            for s in &r {
                assert!(
                    seen.insert(without_instance(s)),
                    "{name} {where_}: one series per shard, not one for the run: {q}\n{r:?}"
                );
            }
        }
    }
    assert!(with_data >= 15, "{with_data} expressions had data");

    // The run's rates, summed over the shards.
    let achieved = prom
        .wait_for("sum(llmload_achieved_qps)", 20, |v| v > 20.0)
        .await;
    eprintln!("achieved, summed over 3 shards: {achieved:?}");
    for mut s in shards {
        let st = s.wait().await.unwrap();
        assert!(st.success(), "a shard failed: {st}");
    }
    mock.shutdown().await;
}
