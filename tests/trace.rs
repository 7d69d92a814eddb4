//! Trace replay end to end: Mooncake and Azure traces through the real
//! binary against an in-process mock, judged by the mock's own log: each
//! request arrives at its trace time (99 % within 1 ms), with its trace's
//! lengths; slices, speed and bad input.

mod common;

use common::*;
use llmload::mock::capacity::CapacityModel;
use llmload::mock::{MockConfig, OutputTokens};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Quick requests, many slots: the mock never queues, so arrivals are
/// the client's timing alone.
fn quick() -> MockConfig {
    MockConfig {
        capacity: CapacityModel {
            slots: 500,
            queue: 500,
            ttft: Duration::from_millis(5),
            prefill_per_token: Duration::ZERO,
            tpot: Duration::from_millis(1),
            tpot_growth: 0.0,
        },
        output_tokens: Some(OutputTokens::Cap(64)),
        ..MockConfig::default()
    }
}

/// One trace request: ms, input, output, hash ids.
type Line = (u64, u32, u32, Vec<u64>);

/// 300 requests over ~6 s: bursts (several in the same millisecond),
/// gaps, lengths from 40 to 1500 tokens, every third sharing a prefix.
fn lines() -> Vec<Line> {
    let mut out = Vec::new();
    let mut t = 0u64;
    let mut x = 12345u64;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..300u64 {
        // A burst of 5 every 50 requests; else 5 to 35 ms apart.
        if i % 50 >= 5 {
            t += 5 + rnd() % 31;
        }
        let input = 40 + (rnd() % 1460) as u32;
        let output = 2 + (rnd() % 5) as u32;
        let blocks = input.div_ceil(512) as u64;
        let ids: Vec<u64> = if i % 3 == 0 {
            (0..blocks).collect()
        } else {
            (0..blocks).map(|b| 10_000 + i * 10 + b).collect()
        };
        out.push((t, input, output, ids));
    }
    out
}

fn write_mooncake(dir: &Path, lines: &[Line]) -> PathBuf {
    let p = dir.join("trace.jsonl");
    let text: String = lines
        .iter()
        .map(|(t, i, o, h)| {
            format!(
                "{}\n",
                serde_json::json!({"timestamp": t, "input_length": i, "output_length": o, "hash_ids": h})
            )
        })
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

fn write_azure(dir: &Path, lines: &[Line]) -> PathBuf {
    let p = dir.join("trace.csv");
    let mut text = String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n");
    let base = chrono::NaiveDate::from_ymd_opt(2023, 11, 16)
        .unwrap()
        .and_hms_opt(18, 15, 46)
        .unwrap();
    for (t, i, o, _) in lines {
        let at = base + chrono::Duration::milliseconds(*t as i64);
        text.push_str(&format!("{},{i},{o}\n", at.format("%Y-%m-%d %H:%M:%S%.6f")));
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// What the mock saw: `(received_ns, input_tokens, output_tokens)`.
async fn truth(m: &llmload::mock::MockServer) -> Vec<(u64, u32, u32)> {
    let (_, body) = get(&format!("{}/debug/requests?clear=true", m.base_url())).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["received_ns"].as_u64().unwrap(),
                t["input_tokens"].as_u64().unwrap() as u32,
                t["output_tokens"].as_u64().unwrap() as u32,
            )
        })
        .collect()
}

/// The arrivals more than `tol` off their trace time, after the one
/// constant offset (the median) that lines the two clocks up.
fn off_time(arrivals_ns: &[u64], trace_ms: &[f64], tol_ns: f64) -> Vec<u64> {
    let mut a = arrivals_ns.to_vec();
    a.sort();
    let d: Vec<f64> = a
        .iter()
        .zip(trace_ms)
        .map(|(&r, &t)| r as f64 - t * 1e6)
        .collect();
    let mut sorted = d.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    a.iter()
        .zip(&d)
        .filter(|&(_, x)| (x - median).abs() > tol_ns)
        .map(|(&r, _)| r)
        .collect()
}

/// The share of arrivals within `tol` of their trace time (see
/// [`off_time`]).
fn on_time(arrivals_ns: &[u64], trace_ms: &[f64], tol_ns: f64) -> f64 {
    1.0 - off_time(arrivals_ns, trace_ms, tol_ns).len() as f64 / arrivals_ns.len() as f64
}

struct Replayed {
    dir: PathBuf,
    truth: Vec<(u64, u32, u32)>,
    lag_p99: f64,
}

async fn replay(
    m: &llmload::mock::MockServer,
    trace: &Path,
    root: &Path,
    extra: &[&str],
) -> Replayed {
    let results = root.join(format!("r{}", run_dirs(root).len()));
    let mut a = vec![
        "run".to_string(),
        "--endpoint".into(),
        m.chat_url(),
        "--model".into(),
        "m".into(),
        "--trace".into(),
        trace.to_str().unwrap().into(),
        "--results-dir".into(),
        results.to_str().unwrap().into(),
        "--series-interval".into(),
        "2s".into(),
        "--plot".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    let out = llmload(&a, &[]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let dir = run_dirs(&results).pop().unwrap();
    let l = &read_json(&dir.join("benchmark_qps_results.json"))[0];
    Replayed {
        lag_p99: l["schedule_lag"]["p99"].as_f64().unwrap(),
        dir,
        truth: truth(m).await,
    }
}

/// How noisy the machine is while a replay runs: a thread that sleeps
/// 1 ms at a time and notes the wake-ups more than 0.5 ms late (when, on
/// the mock's clock, and by how much). On a quiet machine under 0.5 % are
/// late and none by 3 ms; CPU hogs beside the suite, or a hypervisor
/// taking the vCPU away (this machine is a VM: stalls of 20 ms happen),
/// show at once.
struct Canary {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Noise>,
}

struct Noise {
    /// The share of wake-ups more than 0.5 ms late.
    late: f64,
    worst: Duration,
    /// Each late wake-up: when it came (`mono_ns`) and how late.
    stalls: Vec<(u64, Duration)>,
}

impl Noise {
    fn quiet(&self) -> bool {
        self.late <= 0.005 && self.worst <= Duration::from_millis(3)
    }

    /// An arrival at `at_ns` that a stall of the machine explains: it
    /// came while the machine stood still or just after (the stall held
    /// back the client, the mock, or both).
    fn explains(&self, at_ns: u64) -> bool {
        self.stalls.iter().any(|&(woke, over)| {
            let from = woke.saturating_sub((over + Duration::from_millis(2)).as_nanos() as u64);
            (from..=woke + 3_000_000).contains(&at_ns)
        })
    }
}

impl Canary {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut n, mut stalls, mut worst) = (0u64, Vec::new(), Duration::ZERO);
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                std::thread::sleep(Duration::from_millis(1));
                let over = t.elapsed().saturating_sub(Duration::from_millis(1));
                n += 1;
                if over > Duration::from_micros(500) {
                    stalls.push((llmload::base::clock::mono_ns(), over));
                }
                worst = worst.max(over);
            }
            Noise {
                late: stalls.len() as f64 / n.max(1) as f64,
                worst,
                stalls,
            }
        });
        Self { stop, thread }
    }

    fn stop(self) -> Noise {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Replays until 99 % of arrivals are within 1 ms of their trace time, at
/// most four times. Late arrivals that a stall of the machine explains
/// (see [`Canary`]: a burst due during a 1.5 ms hiccup of the VM is late
/// as a whole, and the canary still calls the machine quiet) do not count
/// against an attempt. The canary sees only its own thread, so a stall of
/// the client's threads alone (a vCPU taken away while only they were
/// runnable: seen in CI as a 4 ms lag at the 99th percentile, in a
/// replay whose lag is 0.1-0.3 ms otherwise) goes unseen: a replay late on
/// a quiet machine is tried again, and three such attempts fail. A client
/// that is late by its nature is late every time. If no attempt made it
/// (a noisy machine: two CPU hogs beside the suite leave 91-93 % within
/// 1 ms), the best attempt must still have 80 % within 1 ms and 95 %
/// within 5 ms: a client 4 ms late by design (a 4 ms send quantum) has
/// under half within 1 ms, on any machine.
async fn replay_on_time(
    m: &llmload::mock::MockServer,
    trace: &Path,
    root: &Path,
    want_ms: &[f64],
) -> Replayed {
    let mut seen = Vec::new();
    let mut last = None;
    let mut late_on_quiet = 0;
    for _ in 0..4 {
        let canary = Canary::start();
        let r = replay(m, trace, root, &[]).await;
        let noise = canary.stop();
        let arrivals: Vec<u64> = r.truth.iter().map(|t| t.0).collect();
        assert_eq!(arrivals.len(), want_ms.len());
        let late = off_time(&arrivals, want_ms, 1e6);
        let unexplained = late.iter().filter(|&&a| !noise.explains(a)).count();
        let share = 1.0 - late.len() as f64 / arrivals.len() as f64;
        let (noise_share, worst) = (noise.late, noise.worst);
        eprintln!(
            "replay: {:.1}% within 1 ms ({unexplained} late with no stall of the machine to explain it), llmload lag p99 {:.3} ms, machine: {:.2}% of 1 ms sleeps late, worst {:.1} ms",
            share * 100.0,
            r.lag_p99 * 1e3,
            noise_share * 100.0,
            worst.as_secs_f64() * 1e3
        );
        // Stalls explain late arrivals only while they are rare (else
        // they would cover every arrival, and excuse a late client too).
        let explained = noise.late <= 0.005 && (unexplained as f64) < 0.01 * arrivals.len() as f64;
        if share >= 0.99 || explained {
            return r;
        }
        seen.push((share, noise_share, worst));
        if noise.quiet() {
            late_on_quiet += 1;
            assert!(
                late_on_quiet < 3,
                "a quiet machine, yet three replays were late (share within 1 ms, share of the canary's sleeps late, its worst): {seen:?}; the last: {unexplained} late arrivals with no stall of the machine to explain them, llmload's own lag p99 {:.3} ms",
                r.lag_p99 * 1e3
            );
        }
        last = Some((r, arrivals));
    }
    let (r, arrivals) = last.expect("four attempts");
    let best = seen.iter().map(|s| s.0).fold(0.0, f64::max);
    let share = on_time(&arrivals, want_ms, 5e6);
    assert!(
        best >= 0.8 && share >= 0.95,
        "on a busy machine, at best {:.1}% within 1 ms and {:.1}% within 5 ms (attempts: {seen:?})",
        best * 100.0,
        share * 100.0
    );
    r
}

fn sorted_lengths(v: impl Iterator<Item = (u32, u32)>) -> Vec<(u32, u32)> {
    let mut v: Vec<_> = v.collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mooncake_trace_arrives_on_time_with_its_lengths_and_reuse() {
    let _serial = serial();
    let m = start_mock(quick()).await;
    let tmp = tempfile::tempdir().unwrap();
    let l = lines();
    let trace = write_mooncake(tmp.path(), &l);
    let want: Vec<f64> = l.iter().map(|x| x.0 as f64).collect();
    let r = replay_on_time(&m, &trace, tmp.path(), &want).await;
    // Each request with its trace lengths: the mock counts 4 characters a
    // token, as llmload writes prompts without a tokenizer.
    assert_eq!(
        sorted_lengths(r.truth.iter().map(|t| (t.1, t.2))),
        sorted_lengths(l.iter().map(|x| (x.1, x.2)))
    );
    let meta = read_json(&r.dir.join("metadata.json"));
    assert_eq!(meta["load"], "trace");
    let s = &meta["trace"];
    assert_eq!(s["format"], "mooncake");
    assert_eq!(s["requests"], 300);
    // Reuse: every third line names blocks 0.. of the shared prefix; the
    // first of them is new, the rest seen before.
    let (mut reused, mut total, mut seen) = (0u64, 0u64, std::collections::HashSet::new());
    for (_, input, _, ids) in &l {
        total += *input as u64;
        let mut left = *input;
        for id in ids {
            let n = left.min(512);
            if !seen.insert(*id) {
                reused += n as u64;
            }
            left -= n;
        }
    }
    let want_reuse = reused as f64 / total as f64;
    assert!(
        (s["prefix_reuse"].as_f64().unwrap() - want_reuse).abs() < 1e-3,
        "{s} vs {want_reuse}"
    );
    let level = &read_json(&r.dir.join("benchmark_qps_results.json"))[0];
    assert_eq!(level["sent"], 300);
    assert_eq!(level["trace"], true);
    assert!(!level["timeseries"].as_array().unwrap().is_empty());
    assert_eq!(
        png_size(&r.dir.join("benchmark_timeline.png")),
        (2400, 1500)
    );
    assert_eq!(png_size(&r.dir.join("benchmark_qps.png")), (3200, 1200));
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_trace_arrives_on_time_and_slices_and_speeds() {
    let _serial = serial();
    let m = start_mock(quick()).await;
    let tmp = tempfile::tempdir().unwrap();
    let l = lines();
    let trace = write_azure(tmp.path(), &l);
    let want: Vec<f64> = l.iter().map(|x| x.0 as f64).collect();
    let r = replay_on_time(&m, &trace, tmp.path(), &want).await;
    assert_eq!(
        read_json(&r.dir.join("metadata.json"))["trace"]["format"],
        "azure"
    );
    assert_eq!(
        sorted_lengths(r.truth.iter().map(|t| (t.1, t.2))),
        sorted_lengths(l.iter().map(|x| (x.1, x.2)))
    );
    // A slice, twice as fast: trace time [1 s, 3 s) in one second.
    let r = replay(
        &m,
        &trace,
        tmp.path(),
        &[
            "--trace-start",
            "1s",
            "--trace-duration",
            "2s",
            "--trace-speed",
            "2",
        ],
    )
    .await;
    let t0 = l[0].0;
    let slice: Vec<f64> = l
        .iter()
        .map(|x| (x.0 - t0) as f64)
        .filter(|t| (1000.0..3000.0).contains(t))
        .map(|t| (t - 1000.0) / 2.0)
        .collect();
    assert_eq!(r.truth.len(), slice.len());
    let arrivals: Vec<u64> = r.truth.iter().map(|t| t.0).collect();
    let span_ms = (arrivals.iter().max().unwrap() - arrivals.iter().min().unwrap()) as f64 / 1e6;
    let want_span = slice.last().unwrap() - slice[0];
    assert!(
        (span_ms - want_span).abs() < 20.0,
        "{span_ms} ms vs {want_span} ms"
    );
    let s = &read_json(&r.dir.join("metadata.json"))["trace"];
    assert_eq!(s["speed"], 2.0);
    assert_eq!(s["requests"].as_u64().unwrap() as usize, slice.len());
    m.shutdown().await;
}

#[tokio::test]
async fn a_bad_trace_exits_2_naming_the_file_line_and_field() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ok = "{\"timestamp\": 5, \"input_length\": 10, \"output_length\": 2}";
    let cases: &[(&str, &str, &str)] = &[
        (
            "a.jsonl",
            "{\"timestamp\": 5, \"input_length\": 10}\n",
            "a.jsonl: line 1: 'output_length': missing",
        ),
        (
            "b.jsonl",
            &format!("{ok}\n{{oops\n"),
            "b.jsonl: line 2: not a JSON object",
        ),
        (
            "c.jsonl",
            "{\"timestamp\": -3, \"input_length\": 10, \"output_length\": 2}\n",
            "c.jsonl: line 1: 'timestamp': -3 is negative",
        ),
        (
            "d.jsonl",
            &format!(
                "{ok}\n{ok}\n{{\"timestamp\": 4, \"input_length\": 10, \"output_length\": 2}}\n"
            ),
            "d.jsonl: line 3: 'timestamp': goes back in time",
        ),
        ("e.jsonl", "", "e.jsonl: line 1: the trace has no requests"),
        (
            "f.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,,3\n",
            "f.csv: line 2: 'ContextTokens': missing",
        ),
        (
            "g.csv",
            "TIMESTAMP,Tokens\n",
            "g.csv: line 1: the header has no 'ContextTokens' column",
        ),
    ];
    for (name, body, want) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        let out = llmload(
            &[
                "run",
                "--endpoint",
                "mock",
                "--model",
                "m",
                "--trace",
                p.to_str().unwrap(),
            ],
            &[],
        )
        .await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want), "{name}: want {want:?} in {err}");
        assert!(
            run_dirs(&tmp.path().join("results")).is_empty(),
            "{name}: no run directory"
        );
    }
    let missing = tmp.path().join("nope.jsonl");
    let out = llmload(
        &[
            "run",
            "--endpoint",
            "mock",
            "--model",
            "m",
            "--trace",
            missing.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nope.jsonl: cannot read trace"),
        "{}",
        text(&out.stderr)
    );
    // A slice with nothing in it, and a trace flag without a trace.
    let p = tmp.path().join("ok.jsonl");
    std::fs::write(&p, format!("{ok}\n")).unwrap();
    let out = llmload(
        &[
            "run",
            "--endpoint",
            "mock",
            "--model",
            "m",
            "--trace",
            p.to_str().unwrap(),
            "--trace-start",
            "1h",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("holds no request"),
        "{}",
        text(&out.stderr)
    );
    let ds = write_dataset(tmp.path());
    let out = llmload(
        &[
            "run",
            "--endpoint",
            "mock",
            "--model",
            "m",
            "--dataset",
            ds.to_str().unwrap(),
            "--trace-speed",
            "2",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--trace"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replays_of_one_trace_compare() {
    let _serial = serial();
    // A TTFT well above the client's own jitter.
    let mut cfg = quick();
    cfg.capacity.ttft = Duration::from_millis(60);
    let m = start_mock(cfg).await;
    let tmp = tempfile::tempdir().unwrap();
    let l: Vec<Line> = lines().into_iter().take(120).collect();
    let trace = write_mooncake(tmp.path(), &l);
    let a = replay(&m, &trace, tmp.path(), &[]).await;
    let b = replay(&m, &trace, tmp.path(), &[]).await;
    let out = llmload(
        &[
            "compare".to_string(),
            a.dir.to_str().unwrap().to_string(),
            b.dir.to_str().unwrap().to_string(),
        ],
        &[],
    )
    .await;
    let stdout = text(&out.stdout);
    // The same endpoint twice: compared level for level, no regression
    // (or, on a starved machine, "not comparable": never a false alarm).
    assert!(
        matches!(out.status.code(), Some(0) | Some(2)),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("ttft"), "{stdout}");
    if out.status.code() == Some(2) {
        assert!(stdout.contains("not comparable"), "{stdout}");
    }
    // A replay and a rate sweep are not the same kind of run.
    let tmp2 = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp2.path());
    let rates = tmp2.path().join("r");
    let r = llmload(
        &[
            "run",
            "--endpoint",
            &m.chat_url(),
            "--model",
            "m",
            "--dataset",
            ds.to_str().unwrap(),
            "--qps",
            "5",
            "--duration",
            "1",
            "--results-dir",
            rates.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    let sweep = run_dirs(&rates).pop().unwrap();
    let out = llmload(
        &[
            "compare".to_string(),
            a.dir.to_str().unwrap().to_string(),
            sweep.to_str().unwrap().to_string(),
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        format!("{}{}", text(&out.stdout), text(&out.stderr)).contains("cannot be compared"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    m.shutdown().await;
}
