//! Workloads: synthetic prompts of exact token lengths with a real
//! tokenizer (trained here with the tokenizers library), forced output
//! lengths, ShareGPT and JSONL files, and the completions API, against
//! the mock.

mod common;

use common::*;
use llmload::mock::MockConfig;
use std::path::{Path, PathBuf};
use std::process::Output;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, DecoderWrapper, TokenizerBuilder, TokenizerImpl};

type Bpe = TokenizerImpl<
    BPE,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// A byte-level BPE tokenizer (GPT-2's kind) trained on generated English,
/// saved as a Hugging Face tokenizer.json.
fn train_tokenizer(dir: &Path) -> PathBuf {
    let words = [
        "the", "model", "server", "request", "token", "answer", "question", "river", "mountain",
        "garden", "window", "history", "science", "market", "energy", "summer", "winter",
        "village", "animal", "letter", "story", "power", "water", "light", "paper", "system",
        "number", "group", "place", "point", "state", "city", "school", "night", "family", "music",
        "money", "field", "order", "table", "plant", "stone", "train", "travel", "measure",
        "explain", "describe", "compare", "quick", "slow", "bright", "dark",
    ];
    let mut corpus = Vec::new();
    for i in 0..4000usize {
        let n = 5 + i % 11;
        let line: Vec<&str> = (0..n)
            .map(|k| words[(i * 7 + k * 13 + k * k) % words.len()])
            .collect();
        corpus.push(format!(
            "{}, and {} {}.",
            line.join(" "),
            words[i % words.len()],
            i % 97
        ));
    }
    let bl = ByteLevel::default().add_prefix_space(false);
    let mut tk: Bpe = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(bl.into()))
        .with_post_processor(Some(bl.into()))
        .with_decoder(Some(bl.into()))
        .build()
        .unwrap();
    let alphabet: std::collections::HashSet<char> =
        tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
            .into_iter()
            .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(600)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(alphabet)
        .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
        .build();
    tk.train(&mut trainer, corpus.iter()).unwrap();
    let path = dir.join("tokenizer.json");
    tk.save(&path, false).unwrap();
    path
}

async fn run(args: &[&str]) -> Output {
    llmload(args, &[]).await
}

/// `llmload run --endpoint URL --model m --dataset DATASET`, then `rest`.
async fn run_on(url: &str, dataset: &str, rest: &[&str]) -> Output {
    let mut a = vec![
        "run",
        "--endpoint",
        url,
        "--model",
        "m",
        "--dataset",
        dataset,
    ];
    a.extend_from_slice(rest);
    run(&a).await
}

#[test]
fn synthetic_prompts_encode_to_exactly_the_asked_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let path = train_tokenizer(tmp.path());
    let check = tokenizers::Tokenizer::from_file(&path).unwrap();
    let target = llmload::plan::target::Target::new("http://127.0.0.1:1/v1/chat/completions", "m");
    for n in [1u32, 7, 128, 4096] {
        let spec = format!("synthetic:input={n},output=16,samples=12");
        let p = llmload::plan::prompts::load(&spec, None, Some(&path), 5, &target).unwrap();
        assert_eq!(p.requests.len(), 12);
        assert_eq!(p.workload.token_counts, "exact");
        let mut texts = std::collections::BTreeSet::new();
        for r in &p.requests {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let prompt = body["messages"][0]["content"].as_str().unwrap().to_string();
            let ids = check
                .encode(prompt.as_str(), false)
                .unwrap()
                .get_ids()
                .len();
            assert_eq!(ids, n as usize, "input={n}: {prompt:.80}");
            assert_eq!(r.input_tokens, Some(n));
            assert_eq!(body["max_tokens"], 16);
            texts.insert(prompt);
        }
        if n >= 7 {
            assert_eq!(texts.len(), 12, "input={n}: every prompt differs");
        }
    }
    // A shared prefix: the same first 100 tokens in every prompt.
    let p = llmload::plan::prompts::load(
        "synthetic:input=300,output=8,prefix=100,samples=6",
        None,
        Some(&path),
        5,
        &target,
    )
    .unwrap();
    let heads: std::collections::BTreeSet<Vec<u32>> = p
        .requests
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let ids = check
                .encode(body["messages"][0]["content"].as_str().unwrap(), false)
                .unwrap()
                .get_ids()
                .to_vec();
            assert_eq!(ids.len(), 300);
            ids[..100].to_vec()
        })
        .collect();
    assert_eq!(heads.len(), 1, "one shared prefix");
}

#[tokio::test]
async fn ignore_eos_forces_exact_output_lengths_and_metadata_says_what_was_sent() {
    let _serial = serial();
    // The mock ends each answer at a seeded length of its choosing, as a
    // model emits EOS.
    let cfg = MockConfig {
        output_tokens: Some("3..40".parse().unwrap()),
        ..MockConfig::default()
    };
    let mock = start_mock(cfg).await;
    let tmp = tempfile::tempdir().unwrap();
    let tok = train_tokenizer(tmp.path());
    let results = tmp.path().join("r");
    let common = [
        "run",
        "--endpoint",
        &mock.chat_url(),
        "--model",
        "m",
        "--dataset",
        "synthetic:input=48,output=24",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--qps",
        "20",
        "--duration",
        "1",
        "--results-dir",
        results.to_str().unwrap(),
    ];
    let mut forced = common.to_vec();
    forced.push("--ignore-eos");
    let out = run(&forced).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&common).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dirs = run_dirs(&results);
    let level = |d: &Path| read_json(&d.join("benchmark_qps_results.json"))[0].clone();
    let (f, free) = (level(&dirs[0]), level(&dirs[1]));
    let out_tokens = &f["tokens"]["output_per_request"];
    assert_eq!(f["tokens"]["output_source"], "usage");
    assert_eq!(
        (out_tokens["min"].as_f64(), out_tokens["max"].as_f64()),
        (Some(24.0), Some(24.0))
    );
    assert_eq!(
        f["tokens"]["output_total"].as_u64().unwrap(),
        24 * f["succeeded"].as_u64().unwrap()
    );
    let free_tokens = &free["tokens"]["output_per_request"];
    assert!(
        free_tokens["min"].as_f64().unwrap() < 24.0,
        "without --ignore-eos the server decides: {free_tokens}"
    );

    let w = &read_json(&dirs[0].join("metadata.json"))["workload"];
    assert_eq!(w["format"], "synthetic");
    assert_eq!(w["api"], "chat");
    assert_eq!(w["token_counts"], "exact");
    assert_eq!(w["tokenizer"]["file"], "tokenizer.json");
    assert_eq!(w["tokenizer"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(w["synthetic"]["input"], 48);
    assert_eq!(
        w["input_tokens"],
        serde_json::json!({"min": 48, "mean": 48.0, "max": 48})
    );
    assert_eq!(w["output_tokens"]["max"], 24);
    assert_eq!(w["ignore_eos"], true);
    // The mock counts 4 characters a token, not this tokenizer's way: the
    // run reports that the counts differ, and by how much.
    assert!(f["tokens"]["input_counted"].as_u64().unwrap() > 0);
    assert!(
        f["tokens"]["input_excess_mean"].is_number(),
        "{}",
        f["tokens"]
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn completions_api_sweeps_like_chat() {
    let _serial = serial();
    let mock = start_mock(MockConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path());
    let (chat_root, comp_root) = (tmp.path().join("chat"), tmp.path().join("comp"));
    let completions_url = mock.chat_url().replace("/chat/completions", "/completions");
    for (url, root, api) in [
        (mock.chat_url(), &chat_root, "chat"),
        (completions_url.clone(), &comp_root, "completions"),
    ] {
        let out = run_on(
            &url,
            dataset.to_str().unwrap(),
            &[
                "--api",
                api,
                "--qps",
                "10",
                "--duration",
                "1",
                "--results-dir",
                root.to_str().unwrap(),
            ],
        )
        .await;
        assert!(out.status.success(), "{api}: {}", text(&out.stderr));
    }
    let chat = read_json(&run_dirs(&chat_root)[0].join("benchmark_qps_results.json"))[0].clone();
    let comp = read_json(&run_dirs(&comp_root)[0].join("benchmark_qps_results.json"))[0].clone();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&comp), keys(&chat), "the same fields");
    assert_eq!(comp["success_rate"], 100.0);
    assert!(comp["ttft"]["p50"].as_f64().unwrap() > 0.0);
    assert!(comp["tokens"]["output_total"].as_u64().unwrap() > 0);
    assert_eq!(comp["tokens"]["output_source"], "usage");
    let meta = read_json(&run_dirs(&comp_root)[0].join("metadata.json"));
    assert_eq!(meta["workload"]["api"], "completions");

    // The chat URL with --api completions is a mistake, said before sending.
    let out = run_on(
        &mock.chat_url(),
        dataset.to_str().unwrap(),
        &["--api", "completions", "--qps", "1", "--duration", "1"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/v1/completions URL"),
        "{}",
        text(&out.stderr)
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn sharegpt_and_jsonl_load_and_each_mistake_names_file_and_line() {
    let _serial = serial();
    let mock = start_mock(MockConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let sharegpt = write(
        "sg.json",
        r#"[{"id": "a", "conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi"}]},
            {"id": "b", "conversations": [{"from": "gpt", "value": "no question here"}]}]"#,
    );
    let jsonl = write(
        "chat.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 12, \"id\": 1}\n\n{\"prompt\": \"once upon a time\"}\n",
    );
    let results = tmp.path().join("r");
    for (file, format) in [(&sharegpt, "sharegpt"), (&jsonl, "jsonl")] {
        let out = run_on(
            &mock.chat_url(),
            file.to_str().unwrap(),
            &[
                "--qps",
                "5",
                "--duration",
                "1",
                "--results-dir",
                results.to_str().unwrap(),
            ],
        )
        .await;
        assert!(out.status.success(), "{format}: {}", text(&out.stderr));
        if format == "sharegpt" {
            assert!(
                text(&out.stderr).contains("1 of 2 entries have no human turn"),
                "{}",
                text(&out.stderr)
            );
        }
        let dir = run_dirs(&results).pop().unwrap();
        let meta = read_json(&dir.join("metadata.json"));
        assert_eq!(meta["workload"]["format"], format);
        let l = &read_json(&dir.join("benchmark_qps_results.json"))[0];
        assert_eq!(l["success_rate"], 100.0, "{format}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    let cases: Vec<(PathBuf, Option<&str>, Vec<&str>)> = vec![
        (
            write("bad1.jsonl", "{\"prompt\": \"a\"}\n{\"prompt\": 5}\n"),
            None,
            vec!["bad1.jsonl:2:", "field `prompt`"],
        ),
        (
            write("bad2.jsonl", "{\"prompt\": \"a\"}\n\n{\"text\": \"x\"}\n"),
            None,
            vec!["bad2.jsonl:3:", "needs `messages`"],
        ),
        (
            write(
                "bad3.jsonl",
                "{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}\n",
            ),
            None,
            vec!["bad3.jsonl:1:", "messages[0].role"],
        ),
        (
            write("bad4.jsonl", "{\"prompt\": \"a\"\n"),
            None,
            vec!["bad4.jsonl:1:", "invalid JSON line"],
        ),
        (
            write("bad5.jsonl", "{\"prompt\": \"a\", \"messages\": []}\n"),
            None,
            vec!["bad5.jsonl:1:", "both"],
        ),
        (
            write(
                "bad6.json",
                r#"[{"conversations": [{"from": "robot", "value": "x"}]}]"#,
            ),
            None,
            vec!["bad6.json", "sample 0", "conversations[0].from", "robot"],
        ),
        (
            write("bad7.json", r#"[{"conversations": [{"from": "human"}]}]"#),
            None,
            vec!["bad7.json", "sample 0", "conversations[0]", "value"],
        ),
        (
            write("bad8.json", "hello"),
            None,
            vec!["bad8.json", "cannot tell the dataset's format"],
        ),
        (
            write("bad9.json", r#"{"conversations": []}"#),
            Some("sharegpt"),
            vec!["bad9.json", "expected a JSON array"],
        ),
    ];
    let url = mock.chat_url();
    for (file, format, says) in cases {
        let mut args = vec![
            "run",
            "--endpoint",
            &url,
            "--model",
            "m",
            "--dataset",
            file.to_str().unwrap(),
            "--qps",
            "1",
            "--duration",
            "1",
            "--results-dir",
            results.to_str().unwrap(),
        ];
        if let Some(f) = format {
            args.extend(["--dataset-format", f]);
        }
        let out = run(&args).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", file.display());
        for s in says {
            assert!(
                err.contains(s),
                "{}: expected '{s}' in: {err}",
                file.display()
            );
        }
    }
    for (spec, says) in [
        ("synthetic:input=8", "give input= and output="),
        (
            "synthetic:input=8,output=2,flavour=1",
            "unknown key 'flavour'",
        ),
    ] {
        let out = run_on(&mock.chat_url(), spec, &["--qps", "1", "--duration", "1"]).await;
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    let out = run_on(
        &mock.chat_url(),
        "synthetic:input=8,output=2",
        &[
            "--extra-body",
            r#"{"stream": false}"#,
            "--qps",
            "1",
            "--duration",
            "1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--force-extra-body"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(run_dirs(&results).len(), 0, "nothing was run");
    mock.shutdown().await;
}
