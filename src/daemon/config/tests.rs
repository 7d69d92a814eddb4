use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn targets_take_workload_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = parse(
        &tmp.path().join("c.toml"),
        r#"
[[target]]
name = "base"
endpoint = "http://127.0.0.1:8000/v1/completions"
model = "m"
dataset = "synthetic:input=256,output=64,prefix=32"
api = "completions"
ignore_eos = true
extra_body = { top_k = 20, chat_template_kwargs = { enable_thinking = false } }
"#,
    )
    .unwrap();
    let t = &cfg.targets[0];
    assert_eq!(
        t.dataset,
        PathBuf::from("synthetic:input=256,output=64,prefix=32")
    );
    assert_eq!(t.spec.api, crate::workload::Api::Completions);
    assert!(t.spec.ignore_eos);
    assert_eq!(t.spec.extra_body["top_k"], 20);
    assert_eq!(
        t.spec.extra_body["chat_template_kwargs"]["enable_thinking"],
        false
    );
    let errs = parse(
        &tmp.path().join("c.toml"),
        r#"
[[target]]
name = "t"
endpoint = "http://127.0.0.1:8000/v1/chat/completions"
model = "m"
dataset = "synthetic:input=8,output=0"
api = "telepathy"
dataset_format = "csv"
extra_body = { stream = false }
"#,
    )
    .unwrap_err()
    .join("\n");
    for want in [
        "target[0].api",
        "telepathy",
        "target[0].dataset_format",
        "csv",
        "target[0].dataset",
        "output=0",
        "target[0].extra_body",
        "'stream'",
    ] {
        assert!(errs.contains(want), "{want} in {errs}");
    }
}

fn dataset(dir: &Path) {
    write(
        dir,
        "conversations.json",
        r#"[{"prompt_content":"s","cut_chat_history":[{"role":"user","content":"hi"}]}]"#,
    );
}

/// The issue's example file, verbatim.
pub const EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:9464"
results_dir = "results"

[[target]]
name = "staging-llama"
endpoint = "http://127.0.0.1:8000/v1/chat/completions"
model = "meta-llama/Llama-3.1-8B-Instruct"
dataset = "conversations.json"
api_key_env = "STAGING_API_KEY"     # or api_key_file = "/run/secrets/key"

[[job]]
name = "nightly-sweep"
target = "staging-llama"
kind = "sweep"
qps = [1, 5, 10, 20]
duration = "60s"
schedule = "0 3 * * *"              # cron; or "every 6h"; or "at_start"

[[job]]
name = "soak"
target = "staging-llama"
kind = "soak"
qps = 5
duration = "forever"                # or "24h"
snapshot_every = "10m"
schedule = "at_start"
"#;

#[test]
fn the_documented_example_works_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let p = write(tmp.path(), "llmload.toml", EXAMPLE);
    let c = load(&p).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:9464");
    assert_eq!(c.results_dir, tmp.path().join("results"));
    assert_eq!(
        c.targets[0].spec.key,
        crate::plan::target::KeySource::Env("STAGING_API_KEY".into())
    );
    assert_eq!(c.jobs[0].qps, vec![1.0, 5.0, 10.0, 20.0]);
    assert_eq!(c.jobs[0].duration, Some(Duration::from_secs(60)));
    assert!(matches!(c.jobs[0].schedule, FireSchedule::Cron { .. }));
    assert_eq!(c.jobs[1].kind, JobKind::Soak);
    assert_eq!(c.jobs[1].duration, None);
    assert_eq!(c.jobs[1].snapshot_every, Duration::from_secs(600));
    assert_eq!(c.jobs[1].schedule, FireSchedule::AtStart);
}

#[test]
fn every_problem_is_listed_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "bad.toml",
        r#"
[server]
listen = "nowhere"

[[target]]
name = "a b"
endpoint = "ftp://x"
model = "m"
dataset = "missing.json"

[[job]]
name = "j"
target = "nope"
kind = "burst"
qps = [0, 5]
duration = "forever"
schedule = "every banana"
arrival = "bursty"
"#,
    );
    let errs = load(&p).unwrap_err();
    let all = errs.join("\n");
    for needle in [
        "server.listen: 'nowhere'",
        "target[0].name: 'a b'",
        "target[0].endpoint: 'ftp://x'",
        "target[0].dataset:",
        "missing.json: cannot read dataset",
        "job[0].target: no target named 'nope'",
        "job[0].kind: 'burst'",
        "job[0].qps: 0 must be a rate above 0",
        "job[0].schedule:",
        "job[0].arrival: unknown arrival 'bursty'",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert!(errs.iter().all(|e| e.starts_with(&p.display().to_string())));
    assert!(errs.len() >= 10, "{all}");
}

#[test]
fn syntax_and_unknown_keys_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "a.toml", "[server]\nlisten = \n");
    let e = load(&p).unwrap_err().join("\n");
    assert!(e.contains("a.toml:2:"), "{e}");
    let p = write(tmp.path(), "b.toml", "[server]\nlistn = \"x\"\n");
    let e = load(&p).unwrap_err().join("\n");
    assert!(
        e.contains("b.toml:2:1") && e.contains("unknown field `listn`"),
        "{e}"
    );
    let p = write(
        tmp.path(),
        "c.toml",
        "[[target]]\nname = \"t\"\nendpoint = \"http://h/v1\"\nmodel = 5\ndataset = \"d\"\n",
    );
    let e = load(&p).unwrap_err().join("\n");
    assert!(e.contains("c.toml:4:9"), "{e}");
}

proptest::proptest! {
    /// Fuzz: any text either parses or fails with messages that each
    /// name the file; never a panic.
    #[test]
    fn any_text_parses_or_explains(text in "[\\[\\]a-z_=\" 0-9.\n#{}]{0,200}") {
        if let Err(errs) = parse(Path::new("c.toml"), &text) {
            proptest::prop_assert!(!errs.is_empty());
            for e in errs {
                proptest::prop_assert!(e.starts_with("c.toml"), "{}", e);
            }
        }
    }
}

#[test]
fn soak_rules() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let p = write(
        tmp.path(),
        "s.toml",
        r#"
[[target]]
name = "t"
endpoint = "http://127.0.0.1:1/v1/chat/completions"
model = "m"
dataset = "conversations.json"
[[job]]
name = "s"
target = "t"
kind = "soak"
qps = [1, 2]
duration = "24h"
schedule = "at_start"
[[job]]
name = "w"
target = "t"
kind = "sweep"
qps = 3
duration = "forever"
schedule = "at_start"
"#,
    );
    let e = load(&p).unwrap_err().join("\n");
    assert!(e.contains("job[0].qps: a soak runs one rate"), "{e}");
    assert!(
        e.contains("job[1].duration: 'forever' is only allowed"),
        "{e}"
    );
}

const TARGET: &str = r#"
[[target]]
name = "t"
endpoint = "http://127.0.0.1:1/v1/chat/completions"
model = "m"
dataset = "conversations.json"
"#;

#[test]
fn traffic_keys_make_concurrency_trace_and_shaped_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    write(
        tmp.path(),
        "trace.jsonl",
        "{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 4, \"hash_ids\": [1, 2]}\n\
         {\"timestamp\": 500, \"input_length\": 600, \"output_length\": 4, \"hash_ids\": [1, 3]}\n",
    );
    let p = write(
        tmp.path(),
        "c.toml",
        &format!(
            r#"{TARGET}
[[job]]
name = "users"
target = "t"
kind = "sweep"
concurrency = [1, 4, 16]
duration = "30s"
warmup = 50
schedule = "at_start"
[[job]]
name = "replay"
target = "t"
kind = "sweep"
trace = "trace.jsonl"
trace_speed = 2
max_concurrency = 8
schedule = "at_start"
[[job]]
name = "day"
target = "t"
kind = "soak"
shape = {{ kind = "daily", min_qps = 2, max_qps = 20, peak = "14:00" }}
duration = "forever"
schedule = "at_start"
[[job]]
name = "steps"
target = "t"
kind = "soak"
shape = {{ kind = "stages", stages = [{{ duration = "5m", qps = 5 }}, {{ duration = "10m", from = 5, to = 20 }}] }}
duration = "1h"
schedule = "at_start"
[[job]]
name = "looped"
target = "t"
kind = "soak"
trace = "trace.jsonl"
duration = "forever"
schedule = "at_start"
"#
        ),
    );
    let c = load(&p).unwrap();
    let j = |n: &str| c.jobs.iter().find(|j| j.name == n).unwrap();
    assert_eq!(j("users").concurrency, vec![1, 4, 16]);
    assert_eq!(
        j("users").warmup,
        Some(crate::engine::runner::Warmup::Requests(50))
    );
    let r = j("replay").trace.as_ref().unwrap();
    assert_eq!(r.trace.entries.len(), 2);
    assert_eq!(r.options.speed, 2.0);
    assert!(!r.options.looping, "a sweep replays its slice once");
    assert_eq!(j("replay").duration, None, "a replay lasts its slice");
    assert_eq!(j("replay").max_concurrency, Some(8));
    assert!(
        j("looped").trace.as_ref().unwrap().options.looping,
        "a soak loops its trace"
    );
    assert!(matches!(j("day").shape, Some(Shape::Daily { peak, .. }) if peak == 14.0 * 3600.0));
    let Some(Shape::Stages(st)) = &j("steps").shape else {
        panic!("stages")
    };
    assert_eq!(st[1], (Duration::from_secs(600), 5.0, 20.0));
}

#[test]
fn bad_traffic_keys_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    write(
        tmp.path(),
        "bad.jsonl",
        "{\"timestamp\": 5, \"input_length\": 1}\n",
    );
    let p = write(
        tmp.path(),
        "c.toml",
        &format!(
            r#"{TARGET}
[[job]]
name = "a"
target = "t"
kind = "sweep"
qps = [1]
concurrency = [2]
duration = "10s"
schedule = "at_start"
[[job]]
name = "b"
target = "t"
kind = "sweep"
trace = "bad.jsonl"
schedule = "at_start"
[[job]]
name = "c"
target = "t"
kind = "sweep"
qps = 3
shape = {{ kind = "ramp", from = 1, to = 2, over = "1m" }}
duration = "10s"
schedule = "at_start"
[[job]]
name = "d"
target = "t"
kind = "soak"
shape = {{ kind = "daily", min_qps = 5, max_qps = 1, peak = "25:00" }}
duration = "1h"
schedule = "at_start"
[[job]]
name = "e"
target = "t"
kind = "soak"
concurrency = [1, 2]
warmup = "soon"
trace_speed = 2
duration = "1h"
schedule = "at_start"
[[job]]
name = "f"
target = "t"
kind = "sweep"
concurrency = 4
max_concurrency = 2
duration = "10s"
schedule = "at_start"
"#
        ),
    );
    let e = load(&p).unwrap_err().join("\n");
    for want in [
        "job[0].concurrency: give one of qps, concurrency, trace or shape, not qps and concurrency",
        "job[1].trace:",
        "bad.jsonl: line 1: 'output_length': missing",
        "job[2].shape: give one of",
        "job[3].shape.peak: '25:00' is not a time of day",
        "job[4].concurrency: a soak runs one concurrency",
        "job[4].warmup:",
        "job[4].trace_speed: only with trace",
        "job[5].max_concurrency: caps open-loop rates",
    ] {
        assert!(e.contains(want), "{want}\n in\n{e}");
    }
}
