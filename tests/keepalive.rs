//! Errors we would cause ourselves: requests written onto kept-alive
//! connections that the server is closing. Real servers close on their own
//! schedule (llama.cpp's after every streamed response, uvicorn's after
//! 5 s idle); none of that may show up as a server error.

mod common;

use common::closing::{self, Habits};
use common::*;
use llmload::client::ClientConfig;
use std::time::Duration;

fn cfg(url: &str) -> ClientConfig {
    let mut c = ClientConfig::new(url);
    c.request_timeout = Duration::from_secs(5);
    c
}

/// llama.cpp's habit: close a few milliseconds after every streamed
/// response, while the headers promised keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_after_every_response_costs_no_errors() {
    let _serial = serial();
    let srv = closing::start(Habits {
        close_after_response: Some(Duration::from_millis(3)),
        keep_alive: Some("timeout=5, max=100".into()),
        ..Habits::default()
    })
    .await;
    let (r, client) = run_level(cfg(&srv.url), 200.0, 5.0).await;
    assert_eq!(r.sent, 1000);
    assert_eq!(r.success_rate, 100.0, "errors: {:?}", r.errors);
    // Every connection served one response, so after a short streak the
    // client stops reusing them, and says so once.
    assert!(!client.reusing_connections());
    let notices = client.notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("no longer reused"), "{notices:?}");
    // One connection per request, plus the few that died stale.
    assert_eq!(srv.connections(), r.new_connections);
    assert!(r.new_connections >= r.sent, "{}", r.new_connections);
    assert!(r.new_connections <= r.sent + r.retried_stale_connection);
    assert_eq!(srv.requests(), 1000);
}

/// The deterministic form of the race: the server keeps the connection
/// open but closes it without a word when a second request arrives. Each
/// such request is sent again, once, on a new connection, and counted;
/// after a streak of them the client stops reusing connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_stale_connection_is_retried_once_and_counted() {
    let _serial = serial();
    let srv = closing::start(Habits {
        one_request_per_connection: true,
        ..Habits::default()
    })
    .await;
    // 20 requests, 50 ms apart: each finishes before the next starts.
    let (r, client) = run_level(cfg(&srv.url), 20.0, 1.0).await;
    assert_eq!(r.sent, 20);
    assert_eq!(r.success_rate, 100.0, "errors: {:?}", r.errors);
    let streak = llmload::client::keepalive::CLOSE_STREAK as u64;
    assert_eq!(r.retried_stale_connection, streak, "{r:?}");
    assert_eq!(srv.refused(), streak);
    assert!(!client.reusing_connections());
    // Requests 1..=streak+1 each opened one connection; after the streak
    // every request opens its own: one per request in all.
    assert_eq!(r.new_connections, 20);
    assert_eq!(srv.connections(), 20);
}

/// A retry is for a stale *reused* connection only: a request that fails
/// on a fresh connection fails as before, and is not sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_on_a_fresh_connection_is_not_retried() {
    let _serial = serial();
    // Every connection is closed as soon as a request arrives.
    let url = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut b = [0u8; 1024];
                    let _ = s.read(&mut b).await;
                    // Reset instead of a clean close.
                    #[allow(deprecated)]
                    let _ = s.set_linger(Some(Duration::ZERO));
                });
            }
        });
        format!("http://{addr}/v1/chat/completions")
    };
    let (r, _) = run_level(cfg(&url), 20.0, 0.5).await;
    assert_eq!(r.sent, 10);
    assert_eq!(r.failed, 10);
    assert_eq!(r.errors["connection reset"], 10, "{:?}", r.errors);
    assert_eq!(r.retried_stale_connection, 0);
    assert_eq!(r.new_connections, 10);
}

/// A server that says `Keep-Alive: timeout=1` and closes idle connections
/// after 1 s: requests 1.2 s apart never meet a closing connection,
/// because the client retires it before the server's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertised_idle_timeouts_are_respected() {
    let _serial = serial();
    let srv = closing::start(Habits {
        idle_close: Some(Duration::from_secs(1)),
        keep_alive: Some("timeout=1".into()),
        ..Habits::default()
    })
    .await;
    let (r, client) = run_level(cfg(&srv.url), 1.0 / 1.2, 4.0).await;
    assert_eq!(r.sent, 4);
    assert_eq!(r.success_rate, 100.0, "errors: {:?}", r.errors);
    assert_eq!(r.retried_stale_connection, 0);
    assert_eq!(r.new_connections, 4, "idle connections were retired");
    assert!(client.reusing_connections(), "reuse stays on");
    assert!(client.notices().is_empty());
}

/// The same server without the header: `--pool-idle-timeout` below its
/// timeout does the same job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_idle_timeout_retires_connections_before_the_server_does() {
    let _serial = serial();
    let srv = closing::start(Habits {
        idle_close: Some(Duration::from_secs(1)),
        ..Habits::default()
    })
    .await;
    let mut c = cfg(&srv.url);
    c.pool_idle_timeout = Duration::from_millis(700);
    let (r, _) = run_level(c, 1.0 / 1.2, 4.0).await;
    assert_eq!(r.success_rate, 100.0, "errors: {:?}", r.errors);
    assert_eq!(r.retried_stale_connection, 0);
    assert_eq!(r.new_connections, 4);
    // Closer together than the timeouts, connections are reused.
    let (r, _) = run_level(cfg(&srv.url), 10.0, 1.0).await;
    assert_eq!(r.success_rate, 100.0, "errors: {:?}", r.errors);
    assert_eq!(r.new_connections, 1);
}

/// `Keep-Alive: max=0` (no more requests allowed) is honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_max_is_honoured() {
    let _serial = serial();
    let srv = closing::start(Habits {
        keep_alive: Some("timeout=5, max=0".into()),
        one_request_per_connection: true,
        ..Habits::default()
    })
    .await;
    let (r, _) = run_level(cfg(&srv.url), 20.0, 0.5).await;
    assert_eq!(r.success_rate, 100.0, "errors: {:?}", r.errors);
    assert_eq!(r.retried_stale_connection, 0, "never reused");
    assert_eq!(srv.refused(), 0);
    assert_eq!(r.new_connections, 10);
}

/// HTTP errors do not cost a connection each: a 503 storm reuses the
/// connections it has (counted at the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_kept_for_reuse_after_http_errors() {
    let _serial = serial();
    let srv = closing::start(Habits {
        status: 503,
        ..Habits::default()
    })
    .await;
    let (r, _) = run_level(cfg(&srv.url), 50.0, 2.0).await;
    assert_eq!(r.sent, 100);
    assert_eq!(r.errors["HTTP 503"], 100);
    assert!(
        srv.connections() <= 3,
        "{} connections for 100 sequential 503s",
        srv.connections()
    );
    assert_eq!(r.new_connections, srv.connections());
}

/// Connections come back to the pool however many there are: a level
/// that held ~240 streams open leaves them all idle, and the next level
/// reuses them instead of opening them again (the pool once kept only
/// 64, so every level after a busy one re-opened the rest, and an
/// overloaded client churned thousands).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_level_leaves_its_connections_for_the_next() {
    use llmload::mock::capacity::CapacityModel;
    use llmload::mock::{MockConfig, OutputTokens};
    let _serial = serial();
    let mock = start_mock(MockConfig {
        capacity: CapacityModel {
            slots: 100_000,
            queue: 0,
            ttft: Duration::from_millis(200),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(5),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(8)),
        ..MockConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let results = tmp.path().join("r");
    let mut args = base_run(&mock.chat_url(), &dataset);
    args.extend(
        [
            "--qps",
            "1000,1001",
            "--duration",
            "1",
            "--results-dir",
            results.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let out = llmload(&args, &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let levels = read_json(&run_dirs(&results)[0].join("benchmark_qps_results.json"));
    let (first, second) = (&levels[0], &levels[1]);
    let opened = |l: &serde_json::Value| l["new_connections"].as_u64().unwrap();
    assert!(
        opened(first) > 100,
        "the first level needs many streams at once: {}",
        opened(first)
    );
    assert!(
        opened(second) * 5 <= opened(first),
        "the second level reuses the first's connections: {} then {}",
        opened(first),
        opened(second)
    );
    mock.shutdown().await;
}
