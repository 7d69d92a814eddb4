//! Shared test helpers: an in-process mock on 127.0.0.1:0, a plain HTTP
//! client that timestamps every body frame, datasets, and the binary.
#![allow(dead_code)]

pub mod closing;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llmload::client::sse::SseDecoder;
use llmload::mock::{MockConfig, MockServer};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Held for the whole of every integration test: one test at a time,
/// across test binaries too, so that `cargo test` (threads within a
/// binary) and `cargo nextest` (binaries side by side) both give the
/// timing tests the quiet machine they assert on. An exclusive `flock`
/// on a file in cargo's per-target temporary directory; released when
/// the guard drops, or by the kernel if the test process dies.
pub fn serial() -> std::fs::File {
    use std::os::fd::AsRawFd;
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("llmload-serial.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", path.display());
    f
}

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub async fn start_mock(cfg: MockConfig) -> MockServer {
    init();
    MockServer::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("mock starts")
}

/// A response with every body frame's arrival time since the request.
pub struct Timed {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub frames: Vec<(Duration, Bytes)>,
    pub error: Option<String>,
    pub elapsed: Duration,
}

impl Timed {
    /// The SSE `data:` payloads, in order.
    pub fn events(&self) -> Vec<String> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        d.feed(&self.body, |e| {
            out.push(String::from_utf8(e.data.to_vec()).unwrap());
            true
        })
        .unwrap();
        out
    }

    /// Arrival time of each `data:` event that carries content tokens.
    pub fn token_times(&self) -> Vec<Duration> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for (t, f) in &self.frames {
            d.feed(f, |e| {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(e.data) {
                    let c = &v["choices"][0];
                    let text = c["delta"]["content"]
                        .as_str()
                        .or(c["text"].as_str())
                        .unwrap_or("");
                    if !text.is_empty() {
                        out.push(*t);
                    }
                }
                true
            })
            .unwrap();
        }
        out
    }
}

pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(c)
}

pub async fn post(url: &str, body: serde_json::Value) -> Timed {
    post_with(url, body, &[]).await
}

pub async fn post_with(url: &str, body: serde_json::Value, headers: &[(&str, &str)]) -> Timed {
    let client = http_client();
    let mut b = http::Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let t0 = Instant::now();
    let resp = client.request(req).await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    let mut all = Vec::new();
    let mut error = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                error = Some(e.to_string());
                break;
            }
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    all.extend_from_slice(d);
                    frames.push((t0.elapsed(), d.clone()));
                }
            }
        }
    }
    Timed {
        status,
        headers,
        body: all,
        frames,
        error,
        elapsed: t0.elapsed(),
    }
}

pub async fn get(url: &str) -> (u16, String) {
    let client = http_client();
    let resp = client
        .request(
            http::Request::get(url)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .expect("GET sent");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub fn chat_body(max_tokens: u32, stream: bool, usage: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 2+2?"}
        ],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": stream,
    });
    if usage {
        v["stream_options"] = serde_json::json!({"include_usage": true});
    }
    v
}

/// The llmload binary built by cargo for this test run.
/// Environment variables that change what the binary does (the key, the
/// shard, the common start): a test's child never inherits them.
pub const LLMLOAD_ENV: &[&str] = &[
    "LLMLOAD_API_KEY",
    "OPENAI_API_KEY",
    "LLMLOAD_SHARD",
    "LLMLOAD_SHARDS",
    "JOB_COMPLETION_INDEX",
    "LLMLOAD_START_AT",
    "LLMLOAD_INJECT_STALL",
    "LLMLOAD_INJECT_PANIC",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Run the binary with `args`, none of [`LLMLOAD_ENV`] inherited, and
/// `envs` set; wait for it.
pub async fn llmload<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    envs: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args);
    for k in LLMLOAD_ENV {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.kill_on_drop(true).output().await.unwrap()
}

/// Standard output or error as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_llmload"))
}

/// The seed's minimal dataset, written to `dir`.
pub fn write_dataset(dir: &Path) -> PathBuf {
    let path = dir.join("conversations.json");
    std::fs::write(
        &path,
        serde_json::json!([
            {"prompt_content": "You are a helpful AI assistant.",
             "cut_chat_history": [{"role": "user", "content": "Hello"}]},
            {"prompt_content": "You are a helpful AI assistant.",
             "cut_chat_history": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "What's the weather?"}]},
            {"prompt_content": "You are a helpful AI assistant.",
             "cut_chat_history": [
                {"role": "user", "content": "Tell me about Python"},
                {"role": "assistant", "content": "Python is a programming language."},
                {"role": "system", "content": "skipped"},
                {"role": "user", "content": "What are its features?"}]}
        ])
        .to_string(),
    )
    .unwrap();
    path
}

/// The run directories under `root`.
pub fn run_dirs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Width and height of a PNG, after decoding every row (so a truncated
/// or corrupt file fails).
pub fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG pixels decode");
    // A blank image would decode too: require some non-white pixels.
    let non_white = buf.iter().filter(|&&b| b < 200).count();
    assert!(non_white > 10_000, "PNG looks blank");
    (info.width, info.height)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// A daemon child process and everything it printed on stderr.
pub struct Daemon {
    pub child: tokio::process::Child,
    pub addr: std::net::SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Daemon {
    /// Start `llmload daemon --config <config> --listen 127.0.0.1:0` and
    /// wait for it to announce its address.
    pub async fn start(config: &Path, envs: &[(&str, &str)]) -> Daemon {
        use tokio::io::AsyncBufReadExt;
        init();
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args([
            "daemon",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("LLMLOAD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        for k in LLMLOAD_ENV {
            cmd.env_remove(k);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("daemon starts");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let log2 = log.clone();
        let reader = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(a) = l.strip_prefix("llmload daemon listening on http://") {
                    let _ = tx.send(a.trim().to_string());
                }
                log2.lock().unwrap().push(l);
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "daemon did not announce its address: {:?}",
                    log.lock().unwrap()
                )
            })
            .expect("daemon exited early")
            .parse()
            .unwrap();
        Daemon {
            child,
            addr,
            log,
            reader,
        }
    }

    /// Close our end of the daemon's log pipe (a dead journald, a killed
    /// `tee`): its later writes fail with EPIPE.
    pub async fn close_log(&mut self) {
        self.reader.abort();
        let _ = (&mut self.reader).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id().unwrap() as i32, sig) };
    }

    /// Poll `GET path` until `pred` holds on the JSON, or panic at the deadline.
    pub async fn wait_json(
        &self,
        path: &str,
        secs: u64,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, body) = get(&self.url(path)).await;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
                && pred(&v)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out on {path}: {body}\nlog:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// POST with optional bearer token; returns status and JSON body.
pub async fn post_empty(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let client = http_client();
    let mut b = http::Request::post(url);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Prometheus server (Debian's `prometheus`) on loopback, scraping
/// `targets` every second. Killed on drop.
pub struct Prometheus {
    pub port: u16,
    pub child: tokio::process::Child,
    pub dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(
        targets: &[std::net::SocketAddr],
        rule_files: &[PathBuf],
        alertmanager: Option<u16>,
    ) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|r| format!("'{}'", r.display()))
            .collect();
        let alerting = match alertmanager {
            Some(p) => format!(
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{p}']\n"
            ),
            None => String::new(),
        };
        let cfg = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\n{alerting}scrape_configs:\n  - job_name: llmload\n    honor_labels: true\n    static_configs:\n      - targets: [{}]\n",
            rules.join(", "),
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
        let child = tokio::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("`prometheus` must be installed: run ./scripts/test.sh, which installs it");
        let p = Prometheus { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), async {
                let c = http_client();
                c.request(
                    http::Request::get(format!("http://127.0.0.1:{port}/-/ready"))
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
            })
            .await
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    /// Instant query; the `data.result` array.
    pub async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/query?query={}",
            self.port,
            urlencode(expr)
        );
        let (status, body) = get(&url).await;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{expr}: HTTP {status}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Poll until the query returns at least one series for which `pred`
    /// holds on its value.
    pub async fn wait_for(
        &self,
        expr: &str,
        secs: u64,
        pred: impl Fn(f64) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.query(expr).await.unwrap();
            if r.iter().any(|s| sample_value(s).is_some_and(&pred)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {expr}: last {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

pub fn sample_value(series: &serde_json::Value) -> Option<f64> {
    series["value"][1].as_str().and_then(|s| s.parse().ok())
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `run --endpoint <url> --model m --dataset <dataset>`: the arguments
/// every `llmload run` test starts with.
pub fn base_run(endpoint: &str, dataset: &Path) -> Vec<String> {
    [
        "run",
        "--endpoint",
        endpoint,
        "--model",
        "m",
        "--dataset",
        dataset.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Run one constant-rate level of `secs` at `qps` through the real
/// engine and client; returns the level and the client (for its notices).
pub async fn run_level(
    cfg: llmload::client::ClientConfig,
    qps: f64,
    secs: f64,
) -> (
    llmload::analysis::level::LevelResult,
    std::sync::Arc<llmload::client::LlmClient>,
) {
    use llmload::engine::sweep::{Engine, LevelRun, LevelSpec, NoObserver};
    use llmload::workload::dataset::{Conversation, Message, Role};
    use llmload::workload::request::{BodyParams, prepare_all};
    use std::sync::Arc;
    init();
    let client = Arc::new(llmload::client::LlmClient::new(cfg).expect("client builds"));
    let conv = vec![Conversation {
        messages: vec![Message {
            role: Role::User,
            content: "hi".into(),
        }],
        max_tokens: None,
    }];
    let engine = Engine {
        client: client.clone(),
        requests: Arc::new(prepare_all(
            &conv,
            &BodyParams {
                model: "m".into(),
                max_tokens: 16,
                temperature: 0.0,
                stream_usage: true,
                ..Default::default()
            },
        )),
        max_in_flight: 10_000,
        server_metrics: None,
        shard: None,
        observer: Arc::new(NoObserver),
        sessions: None,
    };
    let dur = Duration::from_secs_f64(secs);
    let out = engine
        .run_level(
            LevelSpec::flat(
                0,
                qps,
                Some(dur),
                llmload::plan::schedule::Arrival::Constant,
                0,
            ),
            &LevelRun::new(),
            tokio_util::sync::CancellationToken::new(),
            tokio_util::sync::CancellationToken::new(),
            0,
        )
        .await;
    let r = llmload::analysis::level::LevelResult::from_stats(&out.stats, out.timing);
    assert_eq!(r.sent, r.succeeded + r.failed, "books balance");
    (r, client)
}
