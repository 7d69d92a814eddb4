//! The fault matrix: hostile endpoints on 127.0.0.1 (the mock's fault
//! injection, raw TCP servers for protocol abuse, TLS servers with bad
//! certificates). For each case: the right error key, the level ends on
//! time, no panic, bounded memory, and `sent = succeeded + failed`.

mod common;

use common::*;
use llmload::analysis::level::{LevelResult, LevelTiming};
use llmload::client::{ClientConfig, LlmClient};
use llmload::engine::sweep::{Engine, LevelRun, LevelSpec, NoObserver};
use llmload::mock::capacity::CapacityModel;
use llmload::mock::{MockConfig, OutputTokens};
use llmload::plan::schedule::Arrival;
use llmload::workload::dataset::{Conversation, Message, Role};
use llmload::workload::request::{BodyParams, prepare_all};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Run `n` requests at 20/s against `url`; returns the level and how long
/// it took.
async fn level(cfg: ClientConfig, n: u32) -> (LevelResult, Duration) {
    init();
    let client = Arc::new(LlmClient::new(cfg).expect("client builds"));
    let conv = vec![Conversation {
        messages: vec![
            Message {
                role: Role::System,
                content: "s".into(),
            },
            Message {
                role: Role::User,
                content: "hi".into(),
            },
        ],
        max_tokens: None,
    }];
    let engine = Engine {
        client,
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
        max_in_flight: 1000,
        server_metrics: None,
        shard: None,
        observer: Arc::new(NoObserver),
        sessions: None,
    };
    let qps = 20.0;
    let dur = Duration::from_secs_f64(n as f64 / qps);
    let t0 = Instant::now();
    let out = engine
        .run_level(
            LevelSpec {
                index: 0,
                qps,
                duration: Some(dur),
                arrival: Arrival::Constant,
                seed: 0,
                load: Default::default(),
                limit: None,
                max_concurrency: None,
                sessions: false,
            },
            &LevelRun::new(),
            CancellationToken::new(),
            CancellationToken::new(),
            0,
        )
        .await;
    let r = LevelResult::from_stats(
        &out.stats,
        LevelTiming {
            qps_target: qps,
            duration: dur,
            send_window: dur,
            drain: out.timing.drain,
            client: None,
            ..Default::default()
        },
    );
    assert_eq!(r.sent, r.succeeded + r.failed, "books balance");
    assert_eq!(r.sent, n as u64);
    (r, t0.elapsed())
}

fn cfg(url: &str) -> ClientConfig {
    let mut c = ClientConfig::new(url);
    c.request_timeout = Duration::from_secs(5);
    c.connect_timeout = Duration::from_secs(2);
    c
}

fn only_error(r: &LevelResult) -> String {
    assert_eq!(
        r.errors.len(),
        1,
        "exactly one kind of error: {:?}",
        r.errors
    );
    r.errors.keys().next().unwrap().clone()
}

/// A raw TCP server: `serve(stream, request bytes)` for every connection.
async fn raw<F, Fut>(serve: F) -> String
where
    F: Fn(TcpStream, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let serve = serve.clone();
            tokio::spawn(async move {
                if let Some(req) = read_request(&mut s).await {
                    serve(s, req).await;
                }
            });
        }
    });
    format!("http://{addr}/v1/chat/completions")
}

/// Read one HTTP/1.1 request (headers + content-length body).
async fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= h + 4 + len {
                return Some(buf);
            }
        }
    }
}

const CHUNK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
const DONE: &str = "data: {\"choices\":[],\"usage\":{\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";

fn sse_head() -> &'static str {
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
}

fn chunked(s: &str) -> String {
    format!("{:x}\r\n{s}\r\n", s.len())
}

#[tokio::test]
async fn connection_refused_and_dns_failure() {
    let _serial = serial();
    let port = free_port();
    let (r, t) = level(
        cfg(&format!("http://127.0.0.1:{port}/v1/chat/completions")),
        4,
    )
    .await;
    assert_eq!(only_error(&r), "connection refused");
    assert!(t < Duration::from_secs(2));
    // A label over 63 characters fails in the resolver itself: no query
    // leaves the machine.
    let host = format!("{}.invalid", "a".repeat(70));
    let (r, t) = level(cfg(&format!("http://{host}:9/v1/chat/completions")), 2).await;
    assert_eq!(only_error(&r), "DNS error");
    assert!(t < Duration::from_secs(3));
}

#[tokio::test]
async fn http_error_statuses_are_counted_by_code() {
    let _serial = serial();
    for code in [401u16, 403, 404, 429, 500, 502, 503, 504] {
        let url = raw(move |mut s, _| async move {
            let extra = if code == 429 { "retry-after: 3\r\n" } else { "" };
            let body = r#"{"error":{"message":"no"}}"#;
            let _ = s
                .write_all(format!("HTTP/1.1 {code} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}", body.len()).as_bytes())
                .await;
            // Keep the connection for reuse, as servers do.
            let mut sink = [0u8; 1024];
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 { break; }
                let _ = s.write_all(format!("HTTP/1.1 {code} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}", body.len()).as_bytes()).await;
            }
        })
        .await;
        let (r, _) = level(cfg(&url), 3).await;
        assert_eq!(only_error(&r), format!("HTTP {code}"));
    }
}

#[tokio::test]
async fn not_sse_html_and_json_bodies_are_malformed_streams() {
    let _serial = serial();
    for (ct, body) in [
        ("text/html", "<html><body>502 Bad Gateway</body></html>"),
        (
            "application/json",
            r#"{"choices":[{"message":{"content":"hi"}}]}"#,
        ),
    ] {
        let url = raw(move |mut s, _| async move {
            let _ = s
                .write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes())
                .await;
        })
        .await;
        let (r, _) = level(cfg(&url), 2).await;
        assert_eq!(only_error(&r), "malformed stream", "{ct}");
    }
}

#[tokio::test]
async fn truncated_errored_and_split_utf8_streams() {
    let _serial = serial();
    // SSE without [DONE].
    let url = raw(|mut s, _| async move {
        let _ = s
            .write_all(
                format!(
                    "{}{}{}0\r\n\r\n",
                    sse_head(),
                    chunked(CHUNK),
                    chunked(CHUNK)
                )
                .as_bytes(),
            )
            .await;
    })
    .await;
    let (r, _) = level(cfg(&url), 2).await;
    assert_eq!(only_error(&r), "stream truncated");

    // An error object mid-stream, as vLLM sends once streaming began.
    let url = raw(|mut s, _| async move {
        let err = "data: {\"error\":{\"message\":\"out of KV cache\",\"code\":500}}\n\n";
        let _ = s
            .write_all(
                format!("{}{}{}0\r\n\r\n", sse_head(), chunked(CHUNK), chunked(err)).as_bytes(),
            )
            .await;
    })
    .await;
    let (r, _) = level(cfg(&url), 2).await;
    assert_eq!(only_error(&r), "server error event");

    // A UTF-8 character cut across two TCP writes and two HTTP chunks: fine.
    let url = raw(|mut s, _| async move {
        let text = "data: {\"choices\":[{\"delta\":{\"content\":\"h\u{e9}llo \u{20ac}\"}}]}\n\n";
        let bytes = text.as_bytes();
        let cut = text.find('\u{e9}').unwrap() + 1; // inside the 2-byte é
        let _ = s.write_all(sse_head().as_bytes()).await;
        let _ = s.write_all(format!("{:x}\r\n", cut).as_bytes()).await;
        let _ = s.write_all(&bytes[..cut]).await;
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = s.write_all(b"\r\n").await;
        let rest = &bytes[cut..];
        let _ = s
            .write_all(format!("{:x}\r\n", rest.len()).as_bytes())
            .await;
        let _ = s.write_all(rest).await;
        let _ = s
            .write_all(format!("\r\n{}0\r\n\r\n", chunked(DONE)).as_bytes())
            .await;
    })
    .await;
    let (r, _) = level(cfg(&url), 2).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.succeeded, 2);
}

/// A 200 stream that carries no generated token is a failure: a user got
/// nothing. Only `[DONE]`; a role chunk then `[DONE]`; empty deltas and a
/// bare `finish_reason`. Each is `empty response`, never a success.
#[tokio::test]
async fn empty_streams_are_failures() {
    let _serial = serial();
    const ROLE: &str =
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
    const EMPTY: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"\"}}]}\n\n";
    const FINISH: &str = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    const END: &str = "data: [DONE]\n\n";
    for events in [
        vec![END],
        vec![ROLE, END],
        vec![ROLE, EMPTY, EMPTY, FINISH, END],
    ] {
        let body: String = events.iter().map(|e| chunked(e)).collect();
        let url = raw(move |mut s, _| {
            let body = body.clone();
            async move {
                let _ = s
                    .write_all(format!("{}{body}0\r\n\r\n", sse_head()).as_bytes())
                    .await;
            }
        })
        .await;
        let (r, _) = level(cfg(&url), 2).await;
        assert_eq!(only_error(&r), "empty response", "{events:?}");
        assert_eq!(r.success_rate, 0.0);
        assert_eq!(r.ttft.count, 0);
        assert_eq!(r.time_to_error.count, 2);
        assert_eq!(r.e2e_latency_all.count, 2);
    }
}

#[tokio::test]
async fn a_ten_megabyte_line_is_an_error_with_bounded_memory() {
    let _serial = serial();
    let url = raw(|mut s, _| async move {
        let _ = s.write_all(sse_head().as_bytes()).await;
        let blob = vec![b'x'; 64 * 1024];
        let _ = s.write_all(chunked("data: ").as_bytes()).await;
        for _ in 0..160 {
            // 10 MB of one line, no newline.
            if s.write_all(format!("{:x}\r\n", blob.len()).as_bytes())
                .await
                .is_err()
                || s.write_all(&blob).await.is_err()
                || s.write_all(b"\r\n").await.is_err()
            {
                return;
            }
        }
    })
    .await;
    let before = llmload::selftest::rss();
    let (r, t) = level(cfg(&url), 4).await;
    let grew = llmload::selftest::rss().saturating_sub(before);
    assert_eq!(only_error(&r), "malformed stream");
    assert!(t < Duration::from_secs(3), "{t:?}");
    // Four concurrent 10 MB lines would be 40 MB if buffered; the decoder
    // stops at 1 MiB each.
    assert!(grew < 16_000_000, "RSS grew {grew} bytes");
}

#[tokio::test]
async fn endless_streams_end_by_token_cap_or_timeout() {
    let _serial = serial();
    // Fast and endless: the token cap (4 x max_tokens, at least 4096) ends it.
    let url = raw(|mut s, _| async move {
        let _ = s.write_all(sse_head().as_bytes()).await;
        let burst = chunked(&CHUNK.repeat(64));
        while s.write_all(burst.as_bytes()).await.is_ok() {}
    })
    .await;
    let mut c = cfg(&url);
    c.max_token_chunks = 500;
    let (r, t) = level(c, 2).await;
    assert_eq!(only_error(&r), "stream too long");
    assert!(t < Duration::from_secs(3));

    // Slow and endless: the request timeout ends it, on time.
    let url = raw(|mut s, _| async move {
        let _ = s.write_all(sse_head().as_bytes()).await;
        loop {
            if s.write_all(chunked(CHUNK).as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mut c = cfg(&url);
    c.request_timeout = Duration::from_millis(800);
    let (r, t) = level(c, 2).await;
    assert_eq!(only_error(&r), "timeout (total)");
    assert!(t < Duration::from_secs(2), "{t:?}");
}

fn stalling_mock(kind: &str) -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots: 8,
            queue: 8,
            ttft: Duration::from_millis(5),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(2),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(10)),
        faults: vec![format!("{kind}=1").parse().unwrap()],
        stall_for: Duration::from_secs(3),
        ..MockConfig::default()
    }
}

#[tokio::test]
async fn stalls_hit_their_own_timeouts() {
    let _serial = serial();
    // Before the first byte: the first-token timeout.
    let m = start_mock(stalling_mock("slow-first-byte")).await;
    let mut c = cfg(&m.chat_url());
    c.first_token_timeout = Some(Duration::from_millis(300));
    let (r, t) = level(c, 2).await;
    assert_eq!(only_error(&r), "timeout (first token)");
    assert!(t < Duration::from_millis(1500), "{t:?}");
    m.shutdown().await;

    // Mid-stream: the idle timeout.
    let m = start_mock(stalling_mock("stall")).await;
    let mut c = cfg(&m.chat_url());
    c.idle_timeout = Some(Duration::from_millis(300));
    let (r, t) = level(c, 2).await;
    assert_eq!(only_error(&r), "timeout (idle)");
    assert!(t < Duration::from_millis(1500), "{t:?}");
    m.shutdown().await;

    // Connect: set-up (TCP and TLS) has its own deadline. A server that
    // accepts the TCP connection but never answers the TLS ClientHello
    // keeps the connection from ever opening.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let mut c = cfg(&format!("https://127.0.0.1:{port}/v1/chat/completions"));
    c.connect_timeout = Duration::from_millis(300);
    let (r, t) = level(c, 2).await;
    assert_eq!(only_error(&r), "timeout (connect)");
    assert!(t < Duration::from_millis(1500), "{t:?}");
}

#[tokio::test]
async fn mock_faults_map_to_their_keys() {
    let _serial = serial();
    for (kind, key) in [
        ("truncate", "stream truncated"),
        ("malformed", "malformed stream"),
        ("reset", "connection reset"),
        ("http500", "HTTP 500"),
        ("http429", "HTTP 429"),
    ] {
        let m = start_mock(stalling_mock(kind)).await;
        let (r, _) = level(cfg(&m.chat_url()), 3).await;
        assert_eq!(only_error(&r), key, "{kind}");
        m.shutdown().await;
    }
}

#[tokio::test]
async fn server_closing_kept_alive_connections_and_slow_loris() {
    let _serial = serial();
    // One response per connection, then close without saying so: the
    // pooled connection is dead when reused.
    let url = raw(|mut s, _| async move {
        let body = format!("{CHUNK}{DONE}");
        let _ = s
            .write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes())
            .await;
        let _ = s.shutdown().await;
    })
    .await;
    let (r, _) = level(cfg(&url), 6).await;
    assert_eq!(r.succeeded, 6, "{:?}", r.errors);

    // Slow-loris: headers dribble out a byte every 200 ms.
    let url = raw(|mut s, _| async move {
        for b in sse_head().bytes() {
            if s.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let mut c = cfg(&url);
    c.first_token_timeout = Some(Duration::from_millis(500));
    let (r, t) = level(c, 2).await;
    assert_eq!(only_error(&r), "timeout (first token)");
    assert!(t < Duration::from_millis(1500), "{t:?}");
}

/// A TLS server on loopback with `cert`, answering one SSE stream.
async fn tls_server(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> u16 {
    let certs = vec![cert.cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let mut sc = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                loop {
                    let Ok(n) = tls.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(h) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .to_ascii_lowercase()
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if got.len() >= h + 4 + len {
                            got.clear();
                            let body = format!("{CHUNK}{DONE}");
                            let _ = tls.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes()).await;
                        }
                    }
                }
            });
        }
    });
    port
}

fn cert_for(names: &[&str], expired: bool) -> rcgen::CertifiedKey<rcgen::KeyPair> {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    rcgen::CertifiedKey {
        cert,
        signing_key: key,
    }
}

#[tokio::test]
async fn tls_failures_and_the_ca_cert_fix() {
    let _serial = serial();
    init();
    let tmp = tempfile::tempdir().unwrap();
    let good = cert_for(&["127.0.0.1", "localhost"], false);
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, good.cert.pem()).unwrap();
    let port = tls_server(&good).await;
    let url = format!("https://127.0.0.1:{port}/v1/chat/completions");

    // Self-signed, not trusted: refused (verification is on by default).
    let (r, _) = level(cfg(&url), 2).await;
    assert_eq!(only_error(&r), "TLS error");
    // --ca-cert fixes it.
    let mut c = cfg(&url);
    c.ca_cert = Some(ca.clone());
    let (r, _) = level(c, 2).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.succeeded, 2);
    // --insecure also works (and is warned about at the CLI).
    let mut c = cfg(&url);
    c.insecure = true;
    let (r, _) = level(c, 2).await;
    assert_eq!(r.succeeded, 2);

    // Wrong host name: trusted certificate for another name.
    let other = cert_for(&["example.com"], false);
    let other_ca = tmp.path().join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let port = tls_server(&other).await;
    let mut c = cfg(&format!("https://127.0.0.1:{port}/v1/chat/completions"));
    c.ca_cert = Some(other_ca);
    let (r, _) = level(c, 2).await;
    assert_eq!(only_error(&r), "TLS error");

    // Expired, though trusted.
    let old = cert_for(&["127.0.0.1"], true);
    let old_ca = tmp.path().join("old.pem");
    std::fs::write(&old_ca, old.cert.pem()).unwrap();
    let port = tls_server(&old).await;
    let mut c = cfg(&format!("https://127.0.0.1:{port}/v1/chat/completions"));
    c.ca_cert = Some(old_ca);
    let (r, _) = level(c, 2).await;
    assert_eq!(only_error(&r), "TLS error");

    // TLS handshake against a plain-HTTP server.
    let m = start_mock(stalling_mock("http500")).await;
    let (r, _) = level(cfg(&format!("https://{}/v1/chat/completions", m.addr)), 2).await;
    assert_eq!(only_error(&r), "TLS error");
    m.shutdown().await;

    // A --ca-cert file that is not a certificate is a usage error.
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a cert").unwrap();
    let mut c = cfg(&url);
    c.ca_cert = Some(junk);
    let e = LlmClient::new(c).unwrap_err().to_string();
    assert!(e.contains("junk.pem"), "{e}");
}

#[tokio::test]
async fn kill_9_mid_run_leaves_readable_partial_results() {
    let _serial = serial();
    let mock = start_mock(stalling_mock("http500")).await;
    let mut m2 = stalling_mock("http500");
    m2.faults.clear();
    let mock2 = start_mock(m2).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let mut child = tokio::process::Command::new(bin())
        .args(base_run(&mock2.chat_url(), &dataset))
        .args([
            "--qps",
            "10,11,12",
            "--duration",
            "1",
            "--results-dir",
            results.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(d) = run_dirs(&results).first()
            && let Ok(text) = std::fs::read_to_string(d.join("benchmark_qps_results.json"))
            && text.contains("qps_target")
        {
            break;
        }
        assert!(Instant::now() < deadline, "level 1 never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    let _ = child.wait().await;
    let dir = &run_dirs(&results)[0];
    let meta = read_json(&dir.join("metadata.json"));
    assert_eq!(meta["partial"], true, "a killed run reads as partial");
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    assert!(!levels.as_array().unwrap().is_empty());
    assert_eq!(levels[0]["sent"], 10);
    // No half-written temporary files are mistaken for results.
    for f in std::fs::read_dir(dir).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".json") {
            let _ = read_json(&dir.join(&name));
        }
    }
    mock.shutdown().await;
    mock2.shutdown().await;
}

#[tokio::test]
async fn unwritable_results_still_print_the_report_and_exit_1() {
    let _serial = serial();
    let mut mc = stalling_mock("http500");
    mc.faults.clear();
    let mock = start_mock(mc).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let child = tokio::process::Command::new(bin())
        .args(base_run(&mock.chat_url(), &dataset))
        .args([
            "--qps",
            "10,11",
            "--duration",
            "1",
            "--plot",
            "--results-dir",
            results.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Once the run directory exists, put a file where it was: every later
    // write fails (ENOTDIR), as a full or read-only disk would make it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let dir = loop {
        if let Some(d) = run_dirs(&results).first()
            && d.join("metadata.json").exists()
        {
            break d.clone();
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "in the way").unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stdout.contains("QPS BENCHMARK RESULTS"),
        "the report is still printed"
    );
    assert!(
        stdout.contains("10.0         10.00        100.0"),
        "{stdout}"
    );
    assert!(stderr.contains("error: cannot write"), "{stderr}");
    assert!(!stdout.contains("Results saved to"), "{stdout}");
    mock.shutdown().await;
}

#[tokio::test]
async fn bad_flags_exit_2_with_the_flag_named() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let ds = ds.to_str().unwrap();
    let base = [
        "run",
        "--endpoint",
        "http://127.0.0.1:9/v1/chat/completions",
        "--model",
        "m",
        "--dataset",
        ds,
    ];
    let cases: &[(&[&str], &str)] = &[
        (
            &["--header", "no-colon"],
            "--header 'no-colon': expected 'Name: value'",
        ),
        (&["--max-tokens", "0"], "--max-tokens must be at least 1"),
        (
            &["--temperature", "-1"],
            "--temperature -1 must be a number >= 0",
        ),
        (
            &["--max-in-flight", "0"],
            "--max-in-flight must be at least 1",
        ),
        (
            &["--api-key-file", "/nonexistent/key"],
            "/nonexistent/key: cannot read API key file",
        ),
        (&["--ca-cert", "/nonexistent/ca.pem"], "/nonexistent/ca.pem"),
        (&["--arrival", "burst"], "unknown arrival 'burst'"),
        (&["--request-timeout", "0"], "must be longer than zero"),
        (&["--qps", ""], "give at least one rate"),
        (&["--unknown-flag"], "unexpected argument '--unknown-flag'"),
    ];
    for (extra, needle) in cases {
        let out = tokio::process::Command::new(bin())
            .args(base)
            .args(*extra)
            .env_remove("LLMLOAD_API_KEY")
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
}

#[tokio::test]
async fn the_key_never_leaks_into_output_logs_or_process_args() {
    let _serial = serial();
    let mut mc = stalling_mock("http500");
    mc.faults.clear();
    let mock = start_mock(mc).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let key = "sk-leak-CANARY-31337";
    let key_file = tmp.path().join("key.txt");
    std::fs::write(&key_file, format!("\n{key}\n")).unwrap();
    // The key by environment, then by file: neither may reach `ps`.
    for (n, by_file) in [(0, false), (1, true)] {
        let results = tmp.path().join(format!("r{n}"));
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args(base_run(&mock.chat_url(), &dataset))
            .args([
                "--qps",
                "10",
                "--duration",
                "1",
                "--plot",
                "--results-dir",
                results.to_str().unwrap(),
                "--header",
                "X-Api-Key: hdr-CANARY-42",
            ])
            .env_remove("OPENAI_API_KEY")
            .env("LLMLOAD_LOG", "trace")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if by_file {
            cmd.arg("--api-key-file").arg(&key_file);
            cmd.env_remove("LLMLOAD_API_KEY");
        } else {
            cmd.env("LLMLOAD_API_KEY", key);
        }
        let child = cmd.spawn().unwrap();
        // The header value is on the command line by design (it was
        // given as a flag); the key must not be.
        let cmdline = cmdline_after_exec(child.id().unwrap(), b"--results-dir").await;
        assert!(!contains(&cmdline, key.as_bytes()), "the key is in ps");
        let out = child.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut all = out.stdout.clone();
        all.extend_from_slice(&out.stderr);
        for f in std::fs::read_dir(&run_dirs(&results)[0]).unwrap() {
            all.extend(std::fs::read(f.unwrap().path()).unwrap());
        }
        assert!(!all.is_empty());
        assert!(
            !contains(&all, b"CANARY"),
            "a secret leaked into output, logs or results"
        );
    }
    let (_, truth) = get(&format!("{}/debug/requests", mock.base_url())).await;
    assert!(truth.contains("\"status\":200"), "the requests did go out");
    mock.shutdown().await;
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `/proc/<pid>/cmdline` once the child has exec'd our binary. Read any
/// earlier and it is the test binary's own command line (the fork before
/// `exec`), which proves nothing; and the kernel switches `/proc/<pid>/exe`
/// a moment before it fills in the new argument block, so in between the
/// command line reads empty. Wait for both: the exe names llmload and the
/// command line holds `marker`. Bounded: a child that never gets there
/// fails the test.
async fn cmdline_after_exec(pid: u32, marker: &[u8]) -> Vec<u8> {
    let want = std::fs::canonicalize(bin()).unwrap();
    for _ in 0..1000 {
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() == Some(&want) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if contains(&cmdline, marker) {
                return cmdline;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("process {pid} did not exec {} within 5 s", want.display());
}

/// The certificate most people make (`openssl req -x509 -newkey … -nodes
/// -addext subjectAltName=…`) carries `basicConstraints CA:TRUE`.
fn openssl_style_cert(names: &[&str]) -> rcgen::CertifiedKey<rcgen::KeyPair> {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    rcgen::CertifiedKey {
        cert,
        signing_key: key,
    }
}

/// An HTTP/2-over-TLS SSE server (ALPN h2, http/1.1), as nginx or a
/// gateway would be. Counts the requests that arrived over HTTP/2.
async fn h2_tls_server(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> (u16, Arc<std::sync::atomic::AtomicU64>) {
    h2_tls_server_slow(cert, Duration::ZERO).await
}

/// The same, starting each TLS handshake only after `handshake_delay`
/// (a server busy accepting: the cost lands in connection set-up).
async fn h2_tls_server_slow(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
    handshake_delay: Duration,
) -> (u16, Arc<std::sync::atomic::AtomicU64>) {
    use hyper::service::service_fn;
    use std::sync::atomic::{AtomicU64, Ordering};
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let mut sc = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h2_requests = Arc::new(AtomicU64::new(0));
    let counter = h2_requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                tokio::time::sleep(handshake_delay).await;
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        if req.version() == http::Version::HTTP_2 {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        let body = format!("{CHUNK}{DONE}");
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    (port, h2_requests)
}

/// The everyday self-signed certificate: refused with its reason said
/// once (console, log, requests.jsonl) while the key stays `TLS error`;
/// accepted when given with --ca-cert, over HTTP/2, on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_ca_certificates_work_with_ca_cert_over_http2() {
    let _serial = serial();
    init();
    let tmp = tempfile::tempdir().unwrap();
    let cert = openssl_style_cert(&["127.0.0.1", "localhost"]);
    let pem = tmp.path().join("cert.pem");
    std::fs::write(&pem, cert.cert.pem()).unwrap();
    let (port, h2) = h2_tls_server(&cert).await;
    let url = format!("https://127.0.0.1:{port}/v1/chat/completions");
    let dataset = write_dataset(tmp.path());

    // Not trusted: every request is a TLS error, and the reason is said.
    let results = tmp.path().join("r1");
    let out = tokio::process::Command::new(bin())
        .args(base_run(&url, &dataset))
        .args(["--qps", "10", "--duration", "1", "--record-requests"])
        .arg("--results-dir")
        .arg(&results)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let l = &read_json(&run_dirs(&results)[0].join("benchmark_qps_results.json"))[0];
    assert_eq!(l["errors"]["TLS error"], 10, "{l}");
    let reason = "is a CA certificate (basicConstraints CA:TRUE";
    assert_eq!(stderr.matches(reason).count(), 1, "logged once: {stderr}");
    assert_eq!(stdout.matches(reason).count(), 1, "noted once: {stdout}");
    let lines = std::fs::read_to_string(run_dirs(&results)[0].join("requests.jsonl")).unwrap();
    assert_eq!(lines.matches(reason).count(), 10, "{lines}");
    let meta = read_json(&run_dirs(&results)[0].join("metadata.json"));
    assert!(
        meta["notices"][0].as_str().unwrap().contains(reason),
        "{meta}"
    );

    // Pinned with --ca-cert: accepted, over HTTP/2, one connection.
    let mut c = cfg(&url);
    c.ca_cert = Some(pem.clone());
    let (r, _) = level(c, 20).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.succeeded, 20);
    assert_eq!(h2.load(std::sync::atomic::Ordering::SeqCst), 20);
    assert_eq!(r.new_connections, 1, "HTTP/2 requests share a connection");

    // Pinning checks everything else: a pinned certificate for another
    // host name is still refused.
    let other = openssl_style_cert(&["example.com"]);
    let other_pem = tmp.path().join("other.pem");
    std::fs::write(&other_pem, other.cert.pem()).unwrap();
    let (port, _) = h2_tls_server(&other).await;
    let mut c = cfg(&format!("https://127.0.0.1:{port}/v1/chat/completions"));
    c.ca_cert = Some(other_pem);
    let (r, _) = level(c, 2).await;
    assert_eq!(only_error(&r), "TLS error");
}

/// Time inside the client is not the endpoint's TTFT: connection set-up
/// is measured per request, and a level whose TTFT is mostly set-up is
/// flagged `connection_bound`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_setup_is_measured_and_flagged() {
    let _serial = serial();
    init();
    let tmp = tempfile::tempdir().unwrap();
    let cert = openssl_style_cert(&["127.0.0.1"]);
    let pem = tmp.path().join("cert.pem");
    std::fs::write(&pem, cert.cert.pem()).unwrap();
    // Handshakes take 200 ms; the answer then comes at once.
    let (port, _) = h2_tls_server_slow(&cert, Duration::from_millis(200)).await;
    let mut c = cfg(&format!("https://127.0.0.1:{port}/v1/chat/completions"));
    c.ca_cert = Some(pem);
    let (r, _) = level(c, 1).await;
    assert_eq!(r.succeeded, 1);
    assert_eq!(r.new_connections, 1);
    assert_eq!(r.connect.count, 1);
    assert!(
        r.connect.p50 >= 0.2 && r.connect.p50 < 0.5,
        "{:?}",
        r.connect
    );
    assert!(
        r.ttft.p50 >= r.connect.p50,
        "TTFT still counts from the schedule"
    );
    assert!(
        r.connection_setup_share > 0.8,
        "{}",
        r.connection_setup_share
    );
    assert!(r.connection_bound);
}

/// A client too busy to read when its first token comes (its only thread
/// blocked for 100 ms) still dates the token when it reached the host,
/// from the kernel's receive stamp, not when it got round to reading it.
#[test]
fn a_token_that_arrives_while_the_client_is_busy_is_dated_when_it_arrived() {
    use llmload::base::clock::mono_ns;
    use llmload::client::record::RequestRecord;
    init();
    // The mock on a runtime (a thread) of its own.
    let mock_rt = tokio::runtime::Runtime::new().unwrap();
    let mut mc = MockConfig {
        capacity: CapacityModel {
            slots: 4,
            queue: 4,
            ttft: Duration::from_millis(5),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(1),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(4)),
        ..MockConfig::default()
    };
    mc.faults.clear();
    let m = mock_rt.block_on(start_mock(mc));
    // The client on one thread: blocking it blocks its every read.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The kernel turns stamping on for the whole system a moment after
        // the first socket asks; this pair holds it on for the test.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        let mut probe = llmload::base::arrival::StampedTcp::new(a.unwrap());
        let (mut peer, _) = b.unwrap();
        let stamps = probe.arrivals();
        for tries in 0.. {
            assert!(tries < 1000, "no read was ever stamped");
            peer.write_all(b"x").await.unwrap();
            probe.read_exact(&mut [0u8; 1]).await.unwrap();
            if stamps.arrived().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let client = LlmClient::new(cfg(&m.chat_url())).unwrap();
        let body = prepare_all(
            &[Conversation {
                messages: vec![Message {
                    role: Role::User,
                    content: "hi".into(),
                }],
                max_tokens: None,
            }],
            &BodyParams {
                model: "m".into(),
                max_tokens: 4,
                stream_usage: true,
                ..Default::default()
            },
        )[0]
        .body
        .clone();
        // A request on a fresh connection, then the one measured on it.
        let mut judged = 0;
        for _ in 0..20 {
            let received = m.state.metrics.requests.get();
            let (base, base_ns) = (tokio::time::Instant::now(), mono_ns());
            let mut rec = RequestRecord::new(0, Duration::ZERO, Duration::ZERO);
            let blocker = async {
                // Once the mock has the request, block the client's only
                // thread past its first token (due 5 ms later).
                while m.state.metrics.requests.get() == received {
                    tokio::task::yield_now().await;
                }
                std::thread::sleep(Duration::from_millis(100));
                mono_ns()
            };
            let (unblocked, ()) =
                tokio::join!(blocker, client.send(body.clone(), &mut rec, base, None));
            assert!(rec.outcome.is_ok(), "{:?}", rec.outcome);
            let truth = m.state.truth.snapshot(0, true);
            let Some(sent_token) = truth.last().map(|t| t.first_token_ns) else {
                continue;
            };
            // The mock itself may have been slower than the block (a
            // busy machine): then there is nothing to judge.
            if sent_token + 10_000_000 > unblocked {
                continue;
            }
            let dated = base_ns + rec.first_token_at.unwrap().as_nanos() as u64;
            assert!(
                dated < unblocked,
                "the first token, written {} ms before the client could read, was dated when read",
                (unblocked - sent_token) / 1_000_000
            );
            // Nearer the mock's write than the client's read: on a busy
            // machine the mock itself may be preempted between stamping
            // the token and writing it (6.8 ms once, in a full suite), so
            // the bound is a relation, not a fixed tolerance.
            assert!(
                dated + 1_000_000 >= sent_token
                    && dated.saturating_sub(sent_token) < (unblocked - sent_token) / 2,
                "dated {} µs after the mock wrote it and {} µs before the client read",
                (dated as i64 - sent_token as i64) / 1000,
                (unblocked as i64 - dated as i64) / 1000
            );
            judged += 1;
            if judged == 3 {
                break;
            }
        }
        assert_eq!(judged, 3, "the mock was never on time to judge");
    });
    mock_rt.block_on(m.shutdown());
}
