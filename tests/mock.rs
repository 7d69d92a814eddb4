//! The built-in mock over real sockets: wire format, capacity model,
//! faults, determinism, its own metrics and ground truth.

mod common;

use common::*;
use llmload::mock::capacity::CapacityModel;
use llmload::mock::faults::{FaultKind, FaultSpec};
use llmload::mock::{MockConfig, OutputTokens};
use std::time::Duration;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn cfg(slots: usize, queue: usize, ttft: u64, tpot: u64, growth: f64, tokens: u32) -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots,
            queue,
            ttft: ms(ttft),
            prefill_per_token: Duration::ZERO,
            tpot: ms(tpot),
            tpot_growth: growth,
        },
        output_tokens: Some(OutputTokens::Cap(tokens)),
        ..MockConfig::default()
    }
}

#[tokio::test]
async fn streaming_chat_is_openai_shaped() {
    let _serial = serial();
    let m = start_mock(cfg(4, 4, 5, 1, 0.0, 8)).await;
    let r = post(&m.chat_url(), chat_body(512, true, true)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // Role first, 8 content chunks, a finish chunk, a usage chunk.
    assert_eq!(chunks.len(), 11, "{events:?}");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "test-model");
        assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert!(c["created"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    let content: Vec<&str> = chunks[1..9]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert!(content.iter().all(|t| !t.is_empty()));
    assert!(
        chunks[1..9]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(chunks[9]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[9]["choices"][0]["delta"], serde_json::json!({}));
    assert_eq!(chunks[10]["choices"], serde_json::json!([]));
    let usage = &chunks[10]["usage"];
    assert_eq!(usage["completion_tokens"], 8, "usage equals tokens sent");
    let words: usize = content.iter().map(|t| t.split_whitespace().count()).sum();
    assert_eq!(words, 8);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + 8
    );
    // 4 characters a token: "You are a helpful assistant." + "What is 2+2?" = 40 chars.
    assert_eq!(usage["prompt_tokens"], 10);
    m.shutdown().await;
}

#[tokio::test]
async fn no_usage_chunk_unless_asked_and_max_tokens_sets_length() {
    let _serial = serial();
    let m = start_mock(cfg(4, 4, 1, 1, 0.0, 50)).await;
    let r = post(&m.chat_url(), chat_body(3, true, false)).await;
    let events = r.events();
    assert!(events.iter().all(|e| !e.contains("usage")), "{events:?}");
    let finish: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(r.token_times().len(), 3);
    m.shutdown().await;
}

#[tokio::test]
async fn non_streaming_chat_and_completions() {
    let _serial = serial();
    let m = start_mock(cfg(4, 4, 1, 1, 0.0, 6)).await;
    let r = post(&m.chat_url(), chat_body(512, false, false)).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 6);
    assert_eq!(v["usage"]["completion_tokens"], 6);

    let url = format!("{}/v1/completions", m.base_url());
    let body = serde_json::json!({"model": "m", "prompt": "Say something", "max_tokens": 4, "stream": true,
        "stream_options": {"include_usage": true}});
    let r = post(&url, body).await;
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let first: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
    assert!(!first["choices"][0]["text"].as_str().unwrap().is_empty());
    assert_eq!(r.token_times().len(), 4);
    assert!(events.iter().any(|e| e.contains("\"completion_tokens\":4")));

    let body = serde_json::json!({"model": "m", "prompt": ["a", "b"], "max_tokens": 2});
    let v: serde_json::Value = serde_json::from_slice(&post(&url, body).await.body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 2);

    let bad = post(&m.chat_url(), serde_json::json!("not an object")).await;
    assert_eq!(bad.status, 400);
    m.shutdown().await;
}

#[tokio::test]
async fn slots_and_queue_reject_the_rest_at_once() {
    let _serial = serial();
    // 4 slots + 4 queue places; 12 long requests at once: 4 rejected.
    let m = start_mock(cfg(4, 4, 50, 20, 0.0, 50)).await;
    let url = m.chat_url();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            post(&url, chat_body(512, true, false)).await
        }));
    }
    let mut ok = 0;
    let mut rejected = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 => rejected.push(r),
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok, 8);
    assert_eq!(rejected.len(), 4);
    for r in &rejected {
        // "At once": a long request takes > 1 s here.
        assert!(r.elapsed < ms(300), "rejection took {:?}", r.elapsed);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["code"], 503);
    }
    let (_, metrics) = get(&format!("{}/metrics", m.base_url())).await;
    assert!(
        metrics.contains("llmload_mock_requests_rejected_total 4"),
        "{metrics}"
    );
    assert!(metrics.contains("llmload_mock_num_requests_running 0"));
    assert!(metrics.contains("llmload_mock_num_requests_waiting 0"));
    assert!(metrics.contains("llmload_mock_generation_tokens_total 400"));
    m.shutdown().await;
}

#[tokio::test]
async fn reject_with_429_and_retry_after() {
    let _serial = serial();
    let mut c = cfg(1, 0, 200, 1, 0.0, 1);
    c.reject_status = 429;
    c.retry_after_s = 7;
    let m = start_mock(c).await;
    let url = m.chat_url();
    let first = tokio::spawn({
        let url = url.clone();
        async move { post(&url, chat_body(4, true, false)).await }
    });
    tokio::time::sleep(ms(50)).await;
    let r = post(&url, chat_body(4, true, false)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "7");
    assert_eq!(first.await.unwrap().status, 200);
    m.shutdown().await;
}

#[tokio::test]
async fn ttft_grows_by_the_queue_wait() {
    let _serial = serial();
    // One slot: the second request waits for the first to finish.
    // Service = 100 ms + 9 × 10 ms = 190 ms.
    let m = start_mock(cfg(1, 4, 100, 10, 0.0, 10)).await;
    let url = m.chat_url();
    let a = tokio::spawn({
        let url = url.clone();
        async move { post(&url, chat_body(512, true, false)).await }
    });
    tokio::time::sleep(ms(20)).await;
    let b = post(&url, chat_body(512, true, false)).await;
    let a = a.await.unwrap();
    let ttft_a = a.token_times()[0];
    let ttft_b = b.token_times()[0];
    assert!(
        ttft_a >= ms(100) && ttft_a < ms(115),
        "unqueued TTFT {ttft_a:?}"
    );
    // b arrived 20 ms later and waits ~170 ms, then 100 ms of prefill.
    let expected = ms(190 - 20 + 100);
    assert!(
        ttft_b >= expected - ms(5) && ttft_b < expected + ms(25),
        "queued TTFT {ttft_b:?}, expected about {expected:?}"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn token_gap_grows_with_concurrency_by_the_formula() {
    let _serial = serial();
    // gap = tpot × (1 + growth × (running − 1)) = 20 ms × (1 + 0.5 × 3) = 50 ms
    // with 4 running; 20 ms alone. Tolerance ±10 % (timer granularity 1 ms).
    let m = start_mock(cfg(8, 8, 10, 20, 0.5, 12)).await;
    let alone = post(&m.chat_url(), chat_body(512, true, false)).await;
    let mean_gap = |r: &Timed| {
        let t = r.token_times();
        (t[t.len() - 1] - t[0]) / (t.len() as u32 - 1)
    };
    let g1 = mean_gap(&alone);
    assert!(g1 >= ms(18) && g1 <= ms(22), "gap alone {g1:?}");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = m.chat_url();
        tasks.push(tokio::spawn(async move {
            post(&url, chat_body(512, true, false)).await
        }));
    }
    for t in tasks {
        let g = mean_gap(&t.await.unwrap());
        assert!(g >= ms(45) && g <= ms(55), "gap with 4 running {g:?}");
    }
    m.shutdown().await;
}

#[tokio::test]
async fn chunk_tokens_batches_tokens_per_event() {
    let _serial = serial();
    let mut c = cfg(4, 4, 1, 1, 0.0, 10);
    c.chunk_tokens = 4;
    let m = start_mock(c).await;
    let r = post(&m.chat_url(), chat_body(512, true, true)).await;
    let contents: Vec<String> = r
        .events()
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .filter(|s| !s.is_empty())
        .collect();
    let sizes: Vec<usize> = contents
        .iter()
        .map(|c| c.split_whitespace().count())
        .collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    assert!(
        r.events()
            .iter()
            .any(|e| e.contains("\"completion_tokens\":10"))
    );
    m.shutdown().await;
}

#[tokio::test]
async fn seed_makes_text_and_lengths_reproducible() {
    let _serial = serial();
    let mk = |seed| {
        let mut c = cfg(4, 4, 1, 1, 0.0, 1);
        c.output_tokens = Some(OutputTokens::Range(3, 30));
        c.seed = seed;
        c
    };
    async fn texts(c: MockConfig) -> Vec<String> {
        let m = start_mock(c).await;
        let mut out = Vec::new();
        for _ in 0..6 {
            let r = post(&m.chat_url(), chat_body(512, false, false)).await;
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            out.push(
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        m.shutdown().await;
        out
    }
    let a = texts(mk(42)).await;
    let b = texts(mk(42)).await;
    let c = texts(mk(43)).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
    let lengths: std::collections::BTreeSet<usize> =
        a.iter().map(|t| t.split_whitespace().count()).collect();
    assert!(
        lengths.len() > 1,
        "lengths are drawn, not fixed: {lengths:?}"
    );
}

/// A mock where every request gets `kind`.
async fn faulty(kind: FaultKind) -> llmload::mock::MockServer {
    let mut c = cfg(4, 4, 5, 2, 0.0, 10);
    c.faults = vec![FaultSpec {
        kind,
        fraction: 1.0,
    }];
    c.stall_for = ms(300);
    start_mock(c).await
}

#[tokio::test]
async fn every_fault_does_what_it_says() {
    let _serial = serial();
    for (kind, status) in [
        (FaultKind::Http500, 500),
        (FaultKind::Http503, 503),
        (FaultKind::Http429, 429),
    ] {
        let m = faulty(kind).await;
        let r = post(&m.chat_url(), chat_body(512, true, true)).await;
        assert_eq!(r.status, status, "{kind}");
        if status == 429 {
            assert!(r.headers.contains_key("retry-after"));
        }
        m.shutdown().await;
    }

    let m = faulty(FaultKind::Reset).await;
    let r = post(&m.chat_url(), chat_body(512, true, true)).await;
    assert_eq!(r.status, 200);
    assert!(r.error.is_some(), "reset must break the body");
    assert!(!r.events().contains(&"[DONE]".to_string()));
    assert!(!r.token_times().is_empty(), "some tokens came first");
    m.shutdown().await;

    let m = faulty(FaultKind::Truncate).await;
    let r = post(&m.chat_url(), chat_body(512, true, true)).await;
    assert!(r.error.is_none(), "truncate ends cleanly");
    let ev = r.events();
    assert!(!ev.contains(&"[DONE]".to_string()));
    assert!(ev.iter().all(|e| !e.contains("finish_reason\":\"")));
    assert!(!r.token_times().is_empty());
    m.shutdown().await;

    let m = faulty(FaultKind::Malformed).await;
    let r = post(&m.chat_url(), chat_body(512, true, true)).await;
    let ev = r.events();
    let bad = ev
        .iter()
        .filter(|e| *e != "[DONE]" && serde_json::from_str::<serde_json::Value>(e).is_err())
        .count();
    assert_eq!(bad, 1, "{ev:?}");
    assert_eq!(ev.last().unwrap(), "[DONE]");
    m.shutdown().await;

    let m = faulty(FaultKind::Stall).await;
    let r = post(&m.chat_url(), chat_body(512, true, true)).await;
    let t = r.token_times();
    let max_gap = t.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(max_gap >= ms(300), "stall gap {max_gap:?}");
    assert!(
        t[0] < ms(100),
        "stall is mid-stream, not before the first token"
    );
    m.shutdown().await;

    let m = faulty(FaultKind::SlowFirstByte).await;
    let r = post(&m.chat_url(), chat_body(512, true, true)).await;
    assert!(
        r.frames[0].0 >= ms(300),
        "first byte at {:?}",
        r.frames[0].0
    );
    assert_eq!(r.events().last().unwrap(), "[DONE]");
    let (_, metrics) = get(&format!("{}/metrics", m.base_url())).await;
    assert!(metrics.contains("llmload_mock_faults_injected_total{kind=\"slow-first-byte\"} 1"));
    m.shutdown().await;
}

#[tokio::test]
async fn fault_fractions_are_fractions() {
    let _serial = serial();
    let mut c = cfg(64, 64, 1, 1, 0.0, 2);
    c.faults = vec!["http503=0.3".parse().unwrap()];
    let m = start_mock(c).await;
    let mut n503 = 0;
    for _ in 0..200 {
        if post(&m.chat_url(), chat_body(4, true, false)).await.status == 503 {
            n503 += 1;
        }
    }
    // Binomial(200, 0.3): mean 60, sd 6.5.
    assert!((35..=85).contains(&n503), "{n503}");
    m.shutdown().await;
}

#[tokio::test]
async fn models_health_and_ground_truth() {
    let _serial = serial();
    let m = start_mock(cfg(4, 4, 20, 2, 0.0, 5)).await;
    let (s, body) = get(&format!("{}/health", m.base_url())).await;
    assert_eq!((s, body.as_str()), (200, "OK"));
    let (s, body) = get(&format!("{}/v1/models", m.base_url())).await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], "mock");

    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = post_with(
        &m.chat_url(),
        chat_body(512, true, false),
        &[("traceparent", tp)],
    )
    .await;
    assert_eq!(r.status, 200);
    let (_, body) = get(&format!("{}/debug/requests", m.base_url())).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let t = &v[0];
    assert_eq!(t["status"], 200);
    assert_eq!(t["output_tokens"], 5);
    assert_eq!(t["traceparent"], tp);
    let recv = t["received_ns"].as_u64().unwrap();
    let first = t["first_token_ns"].as_u64().unwrap();
    let last = t["last_byte_ns"].as_u64().unwrap();
    assert!(
        first - recv >= 20_000_000,
        "server TTFT {} ns",
        first - recv
    );
    assert!(last >= first);
    // The shared clock: the server's stamps are on this process's
    // CLOCK_MONOTONIC too.
    assert!(last <= llmload::base::clock::mono_ns());
    let (_, body) = get(&format!("{}/debug/requests?since=1", m.base_url())).await;
    assert_eq!(body, "[]");
    m.shutdown().await;
}

#[test]
fn binary_serves_and_prints_capacity() {
    let _serial = serial();
    // --print-capacity: 4 slots, service 40 ms + 19 × 5 ms = 135 ms.
    let out = std::process::Command::new(bin())
        .args([
            "mock",
            "--print-capacity",
            "--slots",
            "4",
            "--ttft",
            "40ms",
            "--prefill-per-token",
            "0",
            "--tpot",
            "5ms",
            "--tpot-growth",
            "0",
            "--output-tokens",
            "20",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let json: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let cap = json["capacity_rps"].as_f64().unwrap();
    assert!((cap - 4.0 / 0.135).abs() < 0.01, "{text}");
    assert!(text.starts_with("capacity: 29.63 requests/s"), "{text}");

    let bad = std::process::Command::new(bin())
        .args(["mock", "--fault", "http503=0.7", "--fault", "reset=0.7"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("add up to"));
}

#[tokio::test]
async fn binary_listens_and_stops_on_sigterm() {
    let _serial = serial();
    init();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(bin())
        .args([
            "mock",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tpot",
            "1ms",
            "--ttft",
            "1ms",
        ])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(ms(50)).await;
    }
    assert!(up, "mock binary did not listen");
    let r = post(
        &format!("{url}/v1/chat/completions"),
        chat_body(8, true, true),
    )
    .await;
    assert_eq!(r.events().last().unwrap(), "[DONE]");
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("mock exits after SIGTERM")
        .unwrap();
    assert!(status.success());
}

/// The HTTP chunks of one streamed chat answer, read off a raw socket:
/// how many data chunks the body came in, and its text.
async fn raw_chunks(m: &llmload::mock::MockServer) -> (usize, String) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let body = chat_body(512, true, false).to_string();
    let mut s = tokio::net::TcpStream::connect(m.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let (mut chunks, mut text) = (0, String::new());
    loop {
        let mut size = String::new();
        r.read_line(&mut size).await.unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut data = vec![0; n + 2];
        r.read_exact(&mut data).await.unwrap();
        if n == 0 {
            return (chunks, text);
        }
        chunks += 1;
        text.push_str(std::str::from_utf8(&data[..n]).unwrap());
    }
}

/// With no gap between tokens the answer is ready at once, and goes out
/// in one write after the role event, as a fast server sends it; with a
/// gap, each token event is written when it is due.
#[tokio::test]
async fn tokens_due_together_go_out_in_one_write() {
    let _serial = serial();
    let m = start_mock(cfg(4, 4, 0, 0, 0.0, 16)).await;
    let (chunks, text) = raw_chunks(&m).await;
    assert_eq!(chunks, 2, "the role event, then the whole answer:\n{text}");
    // Still one SSE event per token, then the finish event and [DONE].
    assert_eq!(text.matches("\"content\":\"").count(), 1 + 16, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    m.shutdown().await;
    // 50 ms apart: only a stall of the mock past 100 ms would let all
    // three go together.
    let m = start_mock(cfg(4, 4, 0, 50, 0.0, 3)).await;
    let (chunks, text) = raw_chunks(&m).await;
    assert!(
        chunks >= 3,
        "{chunks} chunks for 3 tokens 50 ms apart:\n{text}"
    );
    m.shutdown().await;
}
