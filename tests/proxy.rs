//! `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` through a real forward proxy
//! (Debian's tinyproxy, installed by `scripts/test.sh`): plain http goes
//! to it in absolute form, https through a `CONNECT` tunnel, with basic
//! proxy auth from the URL; the server-metrics scrape and the OTLP export
//! go the same way; `NO_PROXY` and `--no-proxy` bypass it; the proxy's
//! password appears nowhere.

mod common;

use common::*;
use llmload::mock::capacity::CapacityModel;
use llmload::mock::{MockConfig, OutputTokens};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "pr0xy-SECRET-pw";

fn quick_mock() -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots: 16,
            queue: 16,
            ttft: Duration::from_millis(10),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(1),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(8)),
        ..MockConfig::default()
    }
}

/// tinyproxy on a free loopback port, requiring `user:PASSWORD`, logging
/// every request line. Killed on drop.
struct Tinyproxy {
    port: u16,
    log: PathBuf,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\n\
                 MaxClients 256\nAllow 127.0.0.1\nBasicAuth user {PASSWORD}\nDisableViaHeader Yes\n",
                log.display()
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new("tinyproxy")
            .args(["-d", "-c", conf.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tinyproxy is installed (scripts/test.sh installs tinyproxy-bin)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "tinyproxy did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            port,
            log,
            _child: child,
            _dir: dir,
        }
    }

    fn url(&self, password: &str) -> String {
        format!("http://user:{password}@127.0.0.1:{}", self.port)
    }

    /// Request lines the proxy logged that contain `needle`.
    fn requests(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Request (file descriptor") && l.contains(needle))
            .count()
    }
}

/// TLS in front of `backend`, with a certificate for 127.0.0.1; returns
/// the port and the CA file that trusts it.
async fn tls_front(backend: std::net::SocketAddr, dir: &Path) -> (u16, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let sc = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (port, ca)
}

/// An OTLP/HTTP receiver that accepts and counts traces and metrics posts.
async fn otlp_sink() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let posts = Arc::new(AtomicUsize::new(0));
    let (a, b) = (posts.clone(), posts.clone());
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |_b: axum::body::Bytes| {
                a.fetch_add(1, Ordering::Relaxed);
                async { "" }
            }),
        )
        .route(
            "/v1/metrics",
            axum::routing::post(move |_b: axum::body::Bytes| {
                b.fetch_add(1, Ordering::Relaxed);
                async { "" }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), posts)
}

struct Ran {
    out: std::process::Output,
    dir: PathBuf,
}

impl Ran {
    fn level(&self) -> serde_json::Value {
        read_json(&self.dir.join("benchmark_qps_results.json"))[0].clone()
    }
    fn meta(&self) -> serde_json::Value {
        read_json(&self.dir.join("metadata.json"))
    }
    /// Everything the run wrote or printed.
    fn everything(&self) -> String {
        let mut all = text(&self.out.stdout) + &text(&self.out.stderr);
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let p = e.unwrap().path();
            if let Ok(t) = std::fs::read_to_string(&p) {
                all.push_str(&t);
            }
        }
        all
    }
}

async fn run(url: &str, dataset: &Path, tmp: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Ran {
    let results = tmp.join(format!("r{}", free_port()));
    let mut args: Vec<String> = base_run(url, dataset);
    args.extend(
        [
            "--qps",
            "10",
            "--duration",
            "1",
            "--record-requests",
            "--results-dir",
            results.to_str().unwrap(),
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(&args).kill_on_drop(true);
    for k in LLMLOAD_ENV.iter().chain(&["OTEL_EXPORTER_OTLP_ENDPOINT"]) {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the run ends")
        .unwrap();
    assert!(out.status.success(), "{args:?}\n{}", text(&out.stderr));
    let dir = run_dirs(&results).remove(0);
    Ran { out, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_scrapes_and_exports_go_through_a_real_proxy_unless_exempt() {
    let _serial = serial();
    let proxy = Tinyproxy::start().await;
    let mock = start_mock(quick_mock()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let chat = mock.chat_url();
    let mock_authority = chat
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let (otlp, otlp_posts) = otlp_sink().await;
    let good = proxy.url(PASSWORD);

    // Plain http through the proxy: every request, the server-metrics
    // scrapes and the OTLP exports are proxied requests in absolute form.
    let before = proxy.requests(&format!("POST http://{mock_authority}/v1/chat/completions"));
    let via = run(
        &chat,
        &dataset,
        tmp.path(),
        &["--server-metrics", "auto", "--otlp-endpoint", &otlp],
        &[("HTTP_PROXY", &good)],
    )
    .await;
    let l = via.level();
    assert_eq!(l["succeeded"], 10, "{l}");
    let proxied = proxy.requests(&format!("POST http://{mock_authority}/v1/chat/completions"));
    assert_eq!(proxied - before, 10, "each request went through the proxy");
    assert!(proxy.requests(&format!("GET http://{mock_authority}/metrics")) >= 1);
    assert_eq!(l["server"]["status"], "ok", "{}", l["server"]);
    let otlp_authority = otlp.trim_start_matches("http://");
    assert!(
        proxy.requests(&format!("POST http://{otlp_authority}/v1/")) >= 2,
        "traces and metrics exported through the proxy"
    );
    assert!(otlp_posts.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert_eq!(via.meta()["proxy"], format!("127.0.0.1:{}", proxy.port));
    assert!(!via.everything().contains(PASSWORD), "the password leaked");

    // https: a CONNECT tunnel, TLS end to end inside it.
    let (tls_port, ca) = tls_front(mock.addr, tmp.path()).await;
    let https = format!("https://127.0.0.1:{tls_port}/v1/chat/completions");
    let ca = ca.to_str().unwrap().to_string();
    let tunnelled = run(
        &https,
        &dataset,
        tmp.path(),
        &["--ca-cert", &ca],
        &[("HTTPS_PROXY", &good), ("HTTP_PROXY", "http://127.0.0.1:9")],
    )
    .await;
    assert_eq!(tunnelled.level()["succeeded"], 10, "{}", tunnelled.level());
    let tunnels = proxy.requests(&format!("CONNECT 127.0.0.1:{tls_port}"));
    assert!(
        (1..=10).contains(&tunnels),
        "kept-alive tunnels, at most one per request: {tunnels}"
    );
    assert_eq!(
        tunnelled.meta()["proxy"],
        format!("127.0.0.1:{}", proxy.port)
    );
    assert!(!tunnelled.everything().contains(PASSWORD));

    // NO_PROXY and --no-proxy go direct: the proxy sees nothing more.
    let seen = proxy.requests("127.0.0.1");
    let exempt = run(
        &chat,
        &dataset,
        tmp.path(),
        &[],
        &[("HTTP_PROXY", &good), ("NO_PROXY", "localhost,127.0.0.1")],
    )
    .await;
    assert_eq!(exempt.level()["succeeded"], 10);
    assert!(exempt.meta().get("proxy").is_none(), "{}", exempt.meta());
    let off = run(
        &chat,
        &dataset,
        tmp.path(),
        &["--no-proxy"],
        &[("HTTP_PROXY", &good)],
    )
    .await;
    assert_eq!(off.level()["succeeded"], 10);
    assert_eq!(
        proxy.requests("127.0.0.1"),
        seen,
        "nothing went through the proxy"
    );

    // A wrong password: the proxy's 407, counted; the tunnel refused,
    // counted as a connection error naming the proxy's answer.
    let bad = proxy.url("wrong");
    let refused = run(&chat, &dataset, tmp.path(), &[], &[("HTTP_PROXY", &bad)]).await;
    // (tinyproxy answers 407 to no credentials, 401 to wrong ones.)
    let e = &refused.level()["errors"];
    let auth = e["HTTP 407"].as_u64().unwrap_or(0) + e["HTTP 401"].as_u64().unwrap_or(0);
    assert_eq!(auth, 10, "{e}");
    let refused = run(
        &https,
        &dataset,
        tmp.path(),
        &["--ca-cert", &ca],
        &[("HTTPS_PROXY", &bad)],
    )
    .await;
    assert_eq!(
        refused.level()["errors"]["connection error"],
        10,
        "{}",
        refused.level()
    );
    let records = std::fs::read_to_string(refused.dir.join("requests.jsonl")).unwrap();
    assert!(
        records.contains("refused the tunnel") && records.contains(" 40"),
        "{}",
        &records[..records.len().min(600)]
    );

    // What the proxy adds, measured (not asserted: the machine is shared).
    let p50 = |r: &Ran| r.level()["ttft"]["p50"].as_f64().unwrap();
    eprintln!(
        "TTFT p50: direct {:.4}s, via tinyproxy {:.4}s, via CONNECT tunnel {:.4}s",
        p50(&off),
        p50(&via),
        p50(&tunnelled)
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn a_bad_proxy_variable_is_a_clear_error_without_its_password() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let out = llmload(
        &[
            "run",
            "--endpoint",
            "http://127.0.0.1:9/v1/chat/completions",
            "--model",
            "m",
            "--dataset",
            dataset.to_str().unwrap(),
        ],
        &[("HTTPS_PROXY", "socks5://user:hunter2@proxy:1080")],
    )
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("HTTPS_PROXY=") && err.contains("socks5"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}
