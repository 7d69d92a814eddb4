//! What a run sends, as settings: where the prompts come from (a dataset
//! file in one of three formats, or a synthetic spec), which API, whether
//! output lengths are forced, and the record of it all that goes into
//! `metadata.json`. Capacity depends on input and output lengths more than
//! on anything else, so a result must say what lengths it was measured
//! with. Pure: parsing and description only.

pub mod dataset;
pub mod files;
pub mod request;
pub mod session;
pub mod synthetic;
pub mod tokenizer;
pub mod trace;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which OpenAI-compatible API requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `/v1/chat/completions` with `messages`.
    #[default]
    Chat,
    /// `/v1/completions` with `prompt` (base models).
    Completions,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Completions => "completions",
        }
    }
}

impl std::str::FromStr for Api {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "chat" => Ok(Self::Chat),
            "completions" => Ok(Self::Completions),
            other => Err(format!("'{other}' is not an API (chat or completions)")),
        }
    }
}

/// A dataset file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The seed's `[{"prompt_content", "cut_chat_history"}]`.
    Seed,
    /// `[{"conversations": [{"from": "human"|"gpt"|"system", "value"}]}]`.
    Sharegpt,
    /// One `{"messages": [...]}` or `{"prompt": "..."}` per line.
    Jsonl,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::Sharegpt => "sharegpt",
            Self::Jsonl => "jsonl",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "seed" => Ok(Self::Seed),
            "sharegpt" => Ok(Self::Sharegpt),
            "jsonl" => Ok(Self::Jsonl),
            other => Err(format!(
                "'{other}' is not a dataset format (seed, sharegpt or jsonl)"
            )),
        }
    }
}

/// `synthetic:input=512,output=128[,input_stddev=,output_stddev=,prefix=,samples=,turns=,turn_input=]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyntheticSpec {
    /// Prompt tokens (the shared prefix included).
    pub input: u32,
    /// Output tokens asked for (`max_tokens`).
    pub output: u32,
    pub input_stddev: f64,
    pub output_stddev: f64,
    /// Tokens at the start of every prompt that are the same for all, for
    /// servers with prefix caching. Part of `input`.
    pub prefix: u32,
    /// Distinct prompts generated; requests cycle through them. With
    /// `turns` > 1, distinct sessions.
    pub samples: usize,
    /// Turns per session: 1 is single-turn requests; more makes sessions
    /// whose later turns carry the history and the server's replies.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub turns: u32,
    /// New user tokens each turn after the first adds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub turn_input: u32,
}

fn one() -> u32 {
    1
}
fn is_one(v: &u32) -> bool {
    *v == 1
}
fn is_zero(v: &u32) -> bool {
    *v == 0
}

pub const SYNTHETIC: &str = "synthetic:";
pub const DEFAULT_SAMPLES: usize = 256;
/// Longest prompt generated: beyond any model's context today, small
/// enough that a typo (`input=5120000`) fails fast.
pub const MAX_INPUT: u32 = 1_000_000;
/// Most turns a synthetic session has.
pub const MAX_TURNS: u32 = 1000;

impl SyntheticSpec {
    /// Parse what follows `synthetic:`. Errors name the key.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut spec = SyntheticSpec {
            input: 0,
            output: 0,
            input_stddev: 0.0,
            output_stddev: 0.0,
            prefix: 0,
            samples: DEFAULT_SAMPLES,
            turns: 1,
            turn_input: 0,
        };
        let (mut input, mut output) = (false, false);
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected KEY=VALUE, e.g. input=512"))?;
            let (k, v) = (k.trim(), v.trim());
            let whole = || {
                v.parse::<u32>()
                    .map_err(|_| format!("{k}={v}: '{v}' is not a whole number"))
            };
            let spread = || match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                _ => Err(format!("{k}={v}: expected a standard deviation >= 0")),
            };
            match k {
                "input" => {
                    spec.input = whole()?;
                    input = true;
                }
                "output" => {
                    spec.output = whole()?;
                    output = true;
                }
                "input_stddev" => spec.input_stddev = spread()?,
                "output_stddev" => spec.output_stddev = spread()?,
                "prefix" => spec.prefix = whole()?,
                "samples" => spec.samples = whole()? as usize,
                "turns" => spec.turns = whole()?,
                "turn_input" => spec.turn_input = whole()?,
                other => {
                    return Err(format!(
                        "unknown key '{other}' (input, output, input_stddev, output_stddev, prefix, samples, turns, turn_input)"
                    ));
                }
            }
        }
        if !input || !output {
            return Err(
                "give input= and output= token counts, e.g. synthetic:input=512,output=128".into(),
            );
        }
        if spec.input == 0 || spec.input > MAX_INPUT {
            return Err(format!(
                "input={}: must be 1 to {MAX_INPUT} tokens",
                spec.input
            ));
        }
        if spec.output == 0 {
            return Err("output=0: ask for at least 1 token".into());
        }
        if spec.prefix >= spec.input {
            return Err(format!(
                "prefix={} must be below input={} (the prefix is part of the prompt)",
                spec.prefix, spec.input
            ));
        }
        if spec.samples == 0 {
            return Err("samples=0: generate at least 1 prompt".into());
        }
        if spec.turns == 0 || spec.turns > MAX_TURNS {
            return Err(format!(
                "turns={}: a session has 1 to {MAX_TURNS} turns",
                spec.turns
            ));
        }
        if spec.turns > 1 && spec.turn_input == 0 {
            return Err(format!(
                "turns={} needs turn_input=K: the new user tokens each later turn adds",
                spec.turns
            ));
        }
        if spec.turns == 1 && spec.turn_input > 0 {
            return Err("turn_input= needs turns= above 1 (a session of several turns)".into());
        }
        let longest = spec.input as u64
            + (spec.turns as u64 - 1) * (spec.turn_input as u64 + spec.output as u64);
        if longest > MAX_INPUT as u64 {
            return Err(format!(
                "turns={}: the last turn's history would be {longest} tokens, beyond {MAX_INPUT}",
                spec.turns
            ));
        }
        Ok(spec)
    }
}

/// Where the prompts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    File {
        path: PathBuf,
        /// `None`: detected from the content.
        format: Option<Format>,
    },
    Synthetic(SyntheticSpec),
}

impl Source {
    /// `--dataset` / the daemon's `dataset`: a path, or `synthetic:…`.
    pub fn parse(dataset: &str, format: Option<Format>) -> Result<Self, String> {
        match dataset.strip_prefix(SYNTHETIC) {
            Some(spec) => {
                if let Some(f) = format {
                    return Err(format!(
                        "a synthetic dataset has no file format (drop --dataset-format {})",
                        f.as_str()
                    ));
                }
                SyntheticSpec::parse(spec)
                    .map(Self::Synthetic)
                    .map_err(|e| format!("'{dataset}': {e}"))
            }
            None => Ok(Self::File {
                path: PathBuf::from(dataset),
                format,
            }),
        }
    }
}

/// Keys of the request body that llmload sets itself: `--extra-body` may
/// not change them unless forced.
pub const OWN_KEYS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "temperature",
    "stream",
    "stream_options",
    "ignore_eos",
    "min_tokens",
];

/// `--extra-body`: a JSON object. A key llmload sets is refused unless
/// `force`, so that a copied snippet cannot silently turn streaming off.
pub fn parse_extra_body(
    json: &str,
    force: bool,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let serde_json::Value::Object(map) = v else {
        return Err(format!(
            "expected a JSON object like {{\"top_p\": 0.9}}, found {v}"
        ));
    };
    check_extra_body(&map, force)?;
    Ok(map)
}

pub fn check_extra_body(
    map: &serde_json::Map<String, serde_json::Value>,
    force: bool,
) -> Result<(), String> {
    if force {
        return Ok(());
    }
    let clash: Vec<&str> = map
        .keys()
        .filter(|k| OWN_KEYS.contains(&k.as_str()))
        .map(String::as_str)
        .collect();
    if clash.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "sets {} which llmload sets itself (add --force-extra-body to override)",
            clash
                .iter()
                .map(|k| format!("'{k}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// The tokenizer a workload was measured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// File name only (paths can name users and machines).
    pub file: String,
    pub sha256: String,
}

/// `metadata.json`'s `workload`: what was sent, so that two results can
/// be told apart by the lengths they were measured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// `seed`, `sharegpt`, `jsonl` or `synthetic`.
    pub format: String,
    pub api: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerInfo>,
    /// `exact` (counted with the tokenizer) or `approximate` (characters /
    /// 4: no tokenizer was given).
    pub token_counts: String,
    /// Synthetic workloads: the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticSpec>,
    pub samples: usize,
    /// Prompt tokens per sample (client-side count), min / mean / max.
    pub input_tokens: LengthStats,
    /// `max_tokens` per sample, min / mean / max.
    pub output_tokens: LengthStats,
    pub seed: u64,
    /// `ignore_eos` and `min_tokens` sent: every request generates exactly
    /// its `max_tokens` (on servers that honour them: vLLM, llama.cpp).
    pub ignore_eos: bool,
    /// Keys merged into every body by `--extra-body`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_body_keys: Vec<String>,
    /// Multi-turn sessions: how many, and their turns. `samples`,
    /// `input_tokens` and `output_tokens` then describe first turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionsInfo>,
}

/// `workload.sessions` in `metadata.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionsInfo {
    pub count: usize,
    /// Turns per session, min / mean / max.
    pub turns: LengthStats,
    /// New prompt tokens a later turn adds (counted with the tokenizer,
    /// else 4 characters a token), min / mean / max.
    pub turn_input_tokens: LengthStats,
}

impl SessionsInfo {
    pub fn of(sessions: &[session::Session]) -> Self {
        Self {
            count: sessions.len(),
            turns: LengthStats::of(session::turn_counts(sessions)),
            turn_input_tokens: LengthStats::of(sessions.iter().flat_map(|s| {
                s.turns.iter().skip(1).map(|t| {
                    t.new_tokens.unwrap_or_else(|| {
                        synthetic::estimate_tokens(
                            t.messages.iter().map(|m| m.content.chars().count()).sum(),
                        )
                    })
                })
            })),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct LengthStats {
    pub min: u32,
    pub mean: f64,
    pub max: u32,
}

impl LengthStats {
    pub fn of(v: impl Iterator<Item = u32>) -> Self {
        let (mut min, mut max, mut sum, mut n) = (u32::MAX, 0u32, 0u64, 0u64);
        for x in v {
            min = min.min(x);
            max = max.max(x);
            sum += x as u64;
            n += 1;
        }
        if n == 0 {
            return Self::default();
        }
        Self {
            min,
            mean: (sum as f64 / n as f64 * 100.0).round() / 100.0,
            max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_specs_parse_and_name_the_bad_key() {
        let s = SyntheticSpec::parse("input=512,output=128,prefix=64,samples=10,output_stddev=8")
            .unwrap();
        assert_eq!((s.input, s.output, s.prefix, s.samples), (512, 128, 64, 10));
        assert_eq!(s.output_stddev, 8.0);
        assert_eq!((s.turns, s.turn_input), (1, 0));
        let s = SyntheticSpec::parse("input=512,output=64,turns=8,turn_input=32").unwrap();
        assert_eq!((s.turns, s.turn_input), (8, 32));
        for (bad, says) in [
            ("input=512", "give input= and output="),
            ("input=x,output=1", "input=x"),
            ("input=5,output=1,colour=red", "unknown key 'colour'"),
            (
                "input=5,output=1,prefix=5",
                "prefix=5 must be below input=5",
            ),
            ("input=0,output=1", "input=0"),
            ("input=4,output=0", "output=0"),
            ("input=4,output=2,input_stddev=-1", "input_stddev=-1"),
            ("input=4,output=2,turns=3", "needs turn_input"),
            ("input=4,output=2,turn_input=3", "needs turns="),
            ("input=4,output=2,turns=0,turn_input=1", "turns=0"),
            (
                "input=900000,output=2000,turns=100,turn_input=10",
                "beyond 1000000",
            ),
            ("input=4,output", "expected KEY=VALUE"),
        ] {
            let e = SyntheticSpec::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn sources_are_files_or_synthetic() {
        assert!(matches!(
            Source::parse("synthetic:input=8,output=4", None).unwrap(),
            Source::Synthetic(_)
        ));
        assert_eq!(
            Source::parse("data.jsonl", Some(Format::Jsonl)).unwrap(),
            Source::File {
                path: "data.jsonl".into(),
                format: Some(Format::Jsonl)
            }
        );
        assert!(
            Source::parse("synthetic:input=8,output=4", Some(Format::Seed))
                .unwrap_err()
                .contains("no file format")
        );
    }

    #[test]
    fn extra_body_may_not_change_our_keys_unless_forced() {
        let m = parse_extra_body(
            r#"{"chat_template_kwargs": {"enable_thinking": false}}"#,
            false,
        )
        .unwrap();
        assert!(m.contains_key("chat_template_kwargs"));
        let e = parse_extra_body(r#"{"stream": false, "top_p": 1}"#, false).unwrap_err();
        assert!(
            e.contains("'stream'") && e.contains("--force-extra-body"),
            "{e}"
        );
        assert!(parse_extra_body(r#"{"stream": false}"#, true).is_ok());
        assert!(
            parse_extra_body("[1]", false)
                .unwrap_err()
                .contains("JSON object")
        );
        assert!(
            parse_extra_body("{", false)
                .unwrap_err()
                .contains("not valid JSON")
        );
    }
}
