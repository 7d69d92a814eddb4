//! Multi-turn sessions end to end, through the real binary against the
//! in-process mock with its prefix cache, judged by what the mock
//! received (its ground-truth log): each turn carries the exact answers
//! the mock streamed before it, the think time holds at the mock, a
//! failed turn ends its session, shards never split one, and `compare`
//! sees a broken prefix cache that a single-turn benchmark cannot.

mod common;

use common::*;
use llmload::mock::capacity::{CapacityModel, UNBOUNDED};
use llmload::mock::{MockConfig, OutputTokens};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefill matters: 500 µs a prompt token, so a turn that prefills its
/// whole history is much slower than one that finds it cached.
fn caching_mock(cache_tokens: usize) -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots: 64,
            queue: UNBOUNDED,
            ttft: Duration::from_millis(10),
            prefill_per_token: Duration::from_micros(500),
            tpot: Duration::from_millis(2),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(24)),
        prefix_cache_tokens: cache_tokens,
        ..MockConfig::default()
    }
}

/// One request as the mock saw it.
#[derive(Debug, Clone)]
struct Seen {
    received_ns: u64,
    last_byte_ns: u64,
    status: u64,
    cached: Option<u64>,
    assistant: Vec<u64>,
    reply: u64,
}

async fn seen(m: &llmload::mock::MockServer) -> Vec<Seen> {
    let (status, body) = get(&format!("{}/debug/requests", m.base_url())).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| Seen {
            received_ns: t["received_ns"].as_u64().unwrap(),
            last_byte_ns: t["last_byte_ns"].as_u64().unwrap(),
            status: t["status"].as_u64().unwrap(),
            cached: t["cached_tokens"].as_u64(),
            assistant: t["assistant_hashes"]
                .as_array()
                .map(|a| a.iter().map(|h| h.as_u64().unwrap()).collect())
                .unwrap_or_default(),
            reply: t["reply_hash"].as_u64().unwrap(),
        })
        .collect()
}

fn args(endpoint: &str, dataset: &str, results: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--endpoint",
        endpoint,
        "--model",
        "m",
        "--dataset",
        dataset,
        "--max-tokens",
        "24",
        "--results-dir",
        results.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn only_run(root: &Path) -> PathBuf {
    let dirs = run_dirs(root);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

const THINK: &str = "150ms";
const SESSIONS: &str = "synthetic:input=256,output=24,turns=4,turn_input=32,samples=16";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_carry_the_replies_the_mock_streamed_and_the_think_time_holds() {
    let _serial = serial();
    let m = start_mock(caching_mock(1 << 20)).await;
    let tmp = tempfile::tempdir().unwrap();
    let metrics = format!("{}/metrics", m.base_url());
    let out = llmload(
        &args(
            &m.chat_url(),
            SESSIONS,
            &tmp.path().join("r"),
            &[
                "--server-metrics",
                &metrics,
                "--qps",
                "2",
                "--duration",
                "3",
                "--think-time",
                THINK,
                "--plot",
            ],
        ),
        &[],
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("SESSIONS (QPS Target counts new sessions"),
        "{stdout}"
    );

    // What the mock received: every answer a later turn carries is one
    // the mock streamed earlier, byte for byte (hashes of the text), and
    // turn k carries k - 1 of them, in the order they were streamed.
    let t = seen(&m).await;
    let by_reply: HashMap<u64, &Seen> = t.iter().map(|s| (s.reply, s)).collect();
    let mut gaps = Vec::new();
    let mut later = 0;
    for s in t.iter().filter(|s| !s.assistant.is_empty()) {
        later += 1;
        let mut prev_end = 0;
        for h in &s.assistant {
            let src = by_reply
                .get(h)
                .unwrap_or_else(|| panic!("an answer the mock never streamed: {s:?}"));
            assert!(src.last_byte_ns < s.received_ns);
            assert!(src.last_byte_ns > prev_end, "answers in the order streamed");
            prev_end = src.last_byte_ns;
        }
        // The think time, from the previous answer's last byte at the
        // mock to this turn's arrival there.
        gaps.push((s.received_ns - prev_end) as f64 / 1e6);
        assert!(s.cached.unwrap_or(0) > 0, "the history was cached: {s:?}");
    }
    assert!(later >= 12, "{later} later turns");
    gaps.sort_by(f64::total_cmp);
    let median = gaps[gaps.len() / 2];
    eprintln!(
        "think time at the mock: min {:.3} ms, median {median:.3} ms, max {:.3} ms over {} turns",
        gaps[0],
        gaps.last().unwrap(),
        gaps.len()
    );
    assert!(gaps[0] >= 150.0, "never early: {gaps:?}");
    assert!(median < 151.0, "within 1 ms of the setting: {gaps:?}");

    // The results: sessions, turn buckets, cache hit ratios.
    let dir = only_run(&tmp.path().join("r"));
    let levels = read_json(&dir.join("benchmark_qps_results.json"));
    let l = &levels[0];
    let s = &l["sessions"];
    let started = s["started"].as_u64().unwrap();
    assert_eq!(started, 6, "2 sessions/s for 3 s: {s}");
    let ended = s["completed"].as_u64().unwrap()
        + s["open_at_end"].as_u64().unwrap()
        + s["aborted"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>();
    assert_eq!(ended, started, "every session is reported: {s}");
    assert_eq!(l["sent"].as_u64().unwrap(), t.len() as u64);
    let turns = s["turns"].as_array().unwrap();
    assert_eq!(turns[0]["turn"], "1");
    assert_eq!(turns[1]["turn"], "2-4");
    let first = turns[0]["ttft"]["p50"].as_f64().unwrap();
    let next = turns[1]["ttft"]["p50"].as_f64().unwrap();
    assert!(
        next * 2.0 < first,
        "cached turns are faster: {first} vs {next}"
    );
    assert!(turns[1]["cache_hit_ratio"].as_f64().unwrap() > 0.8, "{s}");
    assert!(turns[1]["input_tokens_mean"].as_f64() > turns[0]["input_tokens_mean"].as_f64());
    let ours = l["cache_hit_ratio"].as_f64().unwrap();
    assert!(ours > 0.5, "{l}");
    // The server's own counters say the same (its queries and hits).
    let server = l["server"]["prefix_cache_hit_ratio"].as_f64().unwrap();
    assert!((server - ours).abs() < 0.05, "server {server}, ours {ours}");

    assert_eq!(png_size(&dir.join("benchmark_sessions.png")), (2400, 1000));
    assert_eq!(png_size(&dir.join("benchmark_qps.png")), (3200, 1200));
    let meta = read_json(&dir.join("metadata.json"));
    assert_eq!(meta["sessions"]["think_time"], "150ms");
    assert_eq!(meta["sessions"]["rate"], "new sessions per second");
    assert_eq!(meta["workload"]["sessions"]["count"], 16);
    assert_eq!(meta["workload"]["sessions"]["turns"]["max"], 4);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_turn_ends_its_session_and_users_run_sessions_back_to_back() {
    let _serial = serial();
    let mut cfg = caching_mock(1 << 20);
    cfg.faults = vec!["http500=0.2".parse().unwrap()];
    let m = start_mock(cfg).await;
    let tmp = tempfile::tempdir().unwrap();
    let out = llmload(
        &args(
            &m.chat_url(),
            SESSIONS,
            &tmp.path().join("r"),
            &["--concurrency", "2", "--duration", "3"],
        ),
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let l = &read_json(&only_run(&tmp.path().join("r")).join("benchmark_qps_results.json"))[0];
    let s = &l["sessions"];
    let failed = l["errors"]["HTTP 500"].as_u64().unwrap();
    assert!(failed > 0, "{l}");
    // Each failure ended exactly one session: no turn was sent after it.
    assert_eq!(s["aborted"]["HTTP 500"].as_u64(), Some(failed), "{s}");
    let t = seen(&m).await;
    let failed_replies: Vec<u64> = t
        .iter()
        .filter(|x| x.status == 500)
        .map(|x| x.reply)
        .collect();
    assert!(
        t.iter()
            .all(|x| x.assistant.iter().all(|h| !failed_replies.contains(h))),
        "no turn follows a failed one"
    );
    // Two users: never more than two requests open at the mock.
    let mut ev: Vec<(u64, i32)> = t
        .iter()
        .flat_map(|x| [(x.received_ns, 1), (x.last_byte_ns.max(x.received_ns), -1)])
        .collect();
    ev.sort();
    let (mut open, mut peak) = (0, 0);
    for (_, d) in ev {
        open += d;
        peak = peak.max(open);
    }
    assert!(peak <= 2, "peak {peak}");
    assert!(s["completed"].as_u64().unwrap() >= 2, "{s}");
    m.shutdown().await;
}

/// Shards 0/2 and 1/2 of one run of [`SESSIONS`] at 4 sessions/s for 2 s,
/// sharing a start, shard I sending to `urls[I]`, into `root`.
async fn two_shards(urls: [&str; 2], root: &Path) {
    let start = std::time::SystemTime::now() + Duration::from_millis(1500);
    let start = format!(
        "{:.3}",
        start
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    );
    let shard = |i: usize| {
        args(
            urls[i],
            SESSIONS,
            root,
            &[
                "--qps",
                "4",
                "--duration",
                "2",
                "--start-at",
                &start,
                "--shard",
                &format!("{i}/2"),
            ],
        )
    };
    let (a0, a1) = (shard(0), shard(1));
    let (s0, s1) = tokio::join!(llmload(&a0, &[]), llmload(&a1, &[]));
    for o in [&s0, &s1] {
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_split_sessions_never_one_session_and_merge_keeps_the_turns() {
    let _serial = serial();
    // One mock per shard, each writing its own text (its own seed): a
    // turn's answers must all come from its own.
    let seeded = |seed| MockConfig {
        seed,
        ..caching_mock(1 << 20)
    };
    let a = start_mock(seeded(1)).await;
    let b = start_mock(seeded(2)).await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shards");
    two_shards([&a.chat_url(), &b.chat_url()], &root).await;
    let (ta, tb) = (seen(&a).await, seen(&b).await);
    for (own, other) in [(&ta, &tb), (&tb, &ta)] {
        let mine: std::collections::HashSet<u64> = own.iter().map(|s| s.reply).collect();
        let theirs: std::collections::HashSet<u64> = other.iter().map(|s| s.reply).collect();
        for s in own.iter() {
            for h in &s.assistant {
                assert!(
                    mine.contains(h) && !theirs.contains(h),
                    "a session crossed shards"
                );
            }
        }
        assert!(
            own.iter().any(|s| !s.assistant.is_empty()),
            "later turns ran"
        );
    }
    let dirs = run_dirs(&root);
    assert_eq!(dirs.len(), 2);
    let started: Vec<u64> = dirs
        .iter()
        .map(|d| {
            read_json(&d.join("benchmark_qps_results.json"))[0]["sessions"]["started"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        started.iter().sum::<u64>(),
        8,
        "4 sessions/s for 2 s, split: {started:?}"
    );
    assert_eq!(started, vec![4, 4]);

    a.shutdown().await;
    b.shutdown().await;

    // Merged: shards of one run send to one endpoint.
    let one = start_mock(caching_mock(1 << 20)).await;
    let root = tmp.path().join("one");
    two_shards([&one.chat_url(), &one.chat_url()], &root).await;
    let sent = seen(&one).await.len() as u64;
    let merged = tmp.path().join("merged");
    let mut m = vec![
        "merge".to_string(),
        "--output".into(),
        merged.display().to_string(),
    ];
    m.extend(run_dirs(&root).iter().map(|d| d.display().to_string()));
    let out = llmload(&m, &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let l = &read_json(&merged.join("benchmark_qps_results.json"))[0];
    assert_eq!(l["sessions"]["started"], 8);
    let turns = l["sessions"]["turns"].as_array().unwrap();
    let requests: u64 = turns.iter().map(|t| t["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, sent, "every turn, in its bucket");
    assert!(
        turns
            .iter()
            .all(|t| !t["ttft_us"].as_str().unwrap().is_empty())
    );
    one.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_sees_a_broken_prefix_cache_that_single_turns_cannot() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let single = "synthetic:input=256,output=24,samples=16";
    let mut dirs = HashMap::new();
    for (name, cache, ds) in [
        ("multi-on", 1 << 20, SESSIONS),
        ("multi-off", 0, SESSIONS),
        ("single-on", 1 << 20, single),
        ("single-off", 0, single),
    ] {
        // A fresh server each: one run's prompts never warm another's.
        let mock = start_mock(caching_mock(cache)).await;
        let root = tmp.path().join(name);
        let out = llmload(
            &args(
                &mock.chat_url(),
                ds,
                &root,
                &["--qps", "3", "--duration", "3", "--seed", "7"],
            ),
            &[],
        )
        .await;
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        dirs.insert(name, only_run(&root));
        mock.shutdown().await;
    }
    let compare = |a: &str, b: &str| {
        [
            "compare".to_string(),
            dirs[a].display().to_string(),
            dirs[b].display().to_string(),
        ]
    };
    // The cache off: later turns prefill their whole history again.
    let out = llmload(&compare("multi-on", "multi-off"), &[]).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("REGRESSION"), "{stdout}");
    assert!(stdout.contains("cache hit ratio"), "{stdout}");
    assert!(stdout.contains("ttft.p95 (turn 2-4)"), "{stdout}");
    // Single turns of unique prompts never hit a cache: nothing to see.
    let out = llmload(&compare("single-on", "single-off"), &[]).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(!stdout.contains("REGRESSION"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharegpt_sessions_and_bad_session_files_name_the_line() {
    let _serial = serial();
    let m = start_mock(caching_mock(1 << 20)).await;
    let tmp = tempfile::tempdir().unwrap();
    // ShareGPT: with --sessions each human turn is a turn; without, one
    // request per entry, and a note says what --sessions would do.
    let sg = tmp.path().join("chats.json");
    std::fs::write(
        &sg,
        serde_json::json!([
            {"conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Name a river."},
                {"from": "gpt", "value": "The Nile."},
                {"from": "human", "value": "Another?"},
                {"from": "gpt", "value": "The Amazon."},
                {"from": "human", "value": "And a third?"}]}
        ])
        .to_string(),
    )
    .unwrap();
    let sg = sg.to_str().unwrap();
    let out = llmload(
        &args(
            &m.chat_url(),
            sg,
            &tmp.path().join("a"),
            &["--qps", "2", "--duration", "1", "--sessions"],
        ),
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let l = &read_json(&only_run(&tmp.path().join("a")).join("benchmark_qps_results.json"))[0];
    assert_eq!(l["sessions"]["started"], 2, "{l}");
    let t = seen(&m).await;
    assert!(
        t.iter().any(|s| s.assistant.len() == 2),
        "turn 3 carries two answers"
    );
    let out = llmload(
        &args(
            &m.chat_url(),
            sg,
            &tmp.path().join("b"),
            &["--qps", "2", "--duration", "1"],
        ),
        &[],
    )
    .await;
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("--sessions replays them"),
        "{}",
        text(&out.stderr)
    );

    // Bad session files: exit 2, the file and the line named.
    let cases = [
        (
            "order.jsonl",
            "{\"session_id\": \"a\", \"turn\": 1, \"prompt\": \"hi\"}\n{\"session_id\": \"b\", \"turn\": 1, \"prompt\": \"yo\"}\n{\"session_id\": \"a\", \"turn\": 3, \"prompt\": \"skip\"}\n",
            ":3: session 'a': turn 3 follows turn 1",
        ),
        (
            "role.jsonl",
            "{\"session_id\": 7, \"turn\": 1, \"prompt\": \"hi\"}\n{\"session_id\": 7, \"turn\": 2, \"messages\": [{\"content\": \"no role\"}]}\n",
            ":2: field `messages[0]`: missing field `role`",
        ),
        (
            "empty.jsonl",
            "{\"turns\": []}\n",
            ":1: field `turns`: empty session",
        ),
    ];
    for (name, body, says) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        let out = llmload(
            &args(
                &m.chat_url(),
                p.to_str().unwrap(),
                &tmp.path().join("x"),
                &["--qps", "1", "--duration", "1"],
            ),
            &[],
        )
        .await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(&format!("{}{says}", p.display())),
            "{name}: {err}"
        );
    }
    // Think time without sessions is a mistake worth saying.
    let out = llmload(
        &args(
            &m.chat_url(),
            "synthetic:input=8,output=4",
            &tmp.path().join("y"),
            &["--qps", "1", "--duration", "1", "--think-time", "1s"],
        ),
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--think-time"),
        "{}",
        text(&out.stderr)
    );
    m.shutdown().await;
}
