//! The inference server's own `/metrics`, reduced to the few facts llmload
//! reports beside its own numbers: how many requests the server says it is
//! running and queueing, how full its KV cache is, how often it preempted,
//! how many tokens it counted, and its own TTFT histogram.
//!
//! Two steps, both pure (the shell that scrapes hands in the text):
//! [`parse`] reads a Prometheus text exposition into [`Sample`]s, and
//! [`read`] recognises the server [`Family`] and reduces one scrape to a
//! [`Reading`]. Our side of the wire is measured by llmload; this is the
//! server's side, so a gap between the two (we count 40 in flight, the
//! server runs 8 and queues 32) says where the time goes.
//!
//! The parser is bounded ([`MAX_BYTES`], [`MAX_SAMPLES`]) because the
//! endpoint is whatever the user pointed us at: a misconfigured URL that
//! streams a large file must give an error, not eat memory.
//!
//! # How to add a family
//! 1. Add a [`Family`] variant.
//! 2. Add a `Dialect` to `DIALECTS` naming its metrics, with the source you
//!    read them from in the list below.
//! 3. Record a scrape under `tests/fixtures/server-metrics/` and test every
//!    field of the [`Reading`] it gives.

// Sources the metric names were checked against (stored copies of public
// repositories and documentation; commits are those of the copies read):
//
// * vLLM V1, vllm-project/vllm `vllm/v1/metrics/loggers.py`
//   (PrometheusStatLogger) at 005a810bc40faa25b8870fbc8559c3462581eee3:
//   gauges `vllm:num_requests_running`, `vllm:num_requests_waiting`,
//   `vllm:kv_cache_usage_perc` (help text: "1 means 100 percent usage", so a
//   0..1 fraction despite `_perc`) and the deprecated
//   `vllm:gpu_cache_usage_perc` it replaced in 0.9; counters declared as
//   `vllm:num_preemptions`, `vllm:prompt_tokens`, `vllm:generation_tokens`,
//   which prometheus_client exposes with a `_total` suffix; histogram
//   `vllm:time_to_first_token_seconds`. Labels: `model_name`, `engine`.
// * vLLM V0, `vllm/engine/metrics.py` (copies found by exact search) and the
//   docs.vllm.ai v0.4.0 / v0.5.3 metrics pages: `vllm:gpu_cache_usage_perc`,
//   counters declared with the suffix (`vllm:num_preemptions_total`,
//   `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`), label
//   `model_name` only.
// * SGLang, sgl-project/sglang `python/sglang/srt/metrics/collector.py` at
//   00ae9c1590d2d0bb6c0bfff39e312c34ae3dd538: scheduler gauges
//   `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage`
//   (share of the KV token pool in use), counter
//   `sglang:num_retracted_requests_total` (a running request pushed back
//   because the pool ran out: SGLang's name for a preemption); tokenizer
//   counters `sglang:prompt_tokens_total`, `sglang:generation_tokens_total`
//   and histogram `sglang:time_to_first_token_seconds`. Scheduler labels
//   (scheduler.py): `model_name`, `engine_type`, `tp_rank`, `pp_rank`,
//   `moe_ep_rank`, and `dp_rank` under data parallelism. Example output:
//   docs.sglang.io references/production_metrics.
// * TGI, huggingface/text-generation-inference
//   `docs/source/reference/metrics.md` at
//   53fdbe617d4f3cc358842ad96914393ad6b6e4ca: gauges `tgi_queue_size`,
//   `tgi_batch_current_size`; histograms `tgi_request_input_length` and
//   `tgi_request_generated_tokens` (router `server.rs` gives both explicit
//   buckets, so `_sum` is exposed). No TTFT histogram, no KV gauge and no
//   token counters: the histograms' `_sum`s are the token totals. Counters
//   carry no `_total` (metrics-exporter-prometheus).
// * llama.cpp `llama-server --metrics`: the running server on
//   127.0.0.1:8002 (`build_info` "b0-unknown"; its output is the fixture
//   `llamacpp.txt`) and ggml-org/llama.cpp `examples/server/server.cpp` at
//   03d4bccb685f1fff604c56abe4cddf0348c26417 (`handle_metrics`):
//   `llamacpp:requests_processing`, `llamacpp:requests_deferred`,
//   `llamacpp:prompt_tokens_total`, `llamacpp:tokens_predicted_total`, and
//   `llamacpp:kv_cache_usage_ratio` (used cells / n_ctx) which newer servers
//   no longer export. Newer servers (`tools/server/server-task.cpp`,
//   `server_task_result_metrics::to_metrics`) count prompt tokens
//   "excluding cached tokens" and add `llamacpp:prompt_tokens_cached_total`.
// * llmload's mock: `src/mock/metrics.rs` (vLLM's names under
//   `llmload_mock_`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Largest exposition [`parse`] accepts. A busy vLLM with a few engines
/// writes well under 1 MiB; 8 MiB leaves room and still bounds memory.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;

/// Most samples [`parse`] accepts; the same reasoning as [`MAX_BYTES`] for
/// many short lines.
pub const MAX_SAMPLES: usize = 200_000;

/// One sample line: name, labels in the order written, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Why an exposition was refused. `line` is 1-based; 0 means the input as a
/// whole (over [`MAX_BYTES`]).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Every sample; a malformed line is an error naming its 1-based line.
///
/// Reads the Prometheus text format 0.0.4 and tolerates what OpenMetrics
/// adds: `# EOF` (parsing stops there), `# UNIT`, a timestamp after the
/// value, and an exemplar after ` # `. Comment lines (`# HELP`, `# TYPE`)
/// and blank lines are skipped: the reducer knows its metrics by name, so
/// the declared types add nothing.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    if text.len() > MAX_BYTES {
        return Err(ParseError {
            line: 0,
            reason: format!(
                "the exposition is {} bytes, over the {MAX_BYTES}-byte limit",
                text.len()
            ),
        });
    }
    let mut samples = Vec::new();
    // `lines` also drops the `\r` of CRLF endings.
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if comment.trim() == "EOF" {
                break;
            }
            continue;
        }
        if samples.len() == MAX_SAMPLES {
            return Err(ParseError {
                line: line_no,
                reason: format!("more than {MAX_SAMPLES} samples"),
            });
        }
        let sample = parse_sample(line).map_err(|reason| ParseError {
            line: line_no,
            reason,
        })?;
        samples.push(sample);
    }
    Ok(samples)
}

/// A position in one line. Positions only ever stop on ASCII bytes or at
/// the end, so slicing at them stays on `char` boundaries.
struct Cursor<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.as_bytes().get(self.pos).copied()
    }

    fn rest(&self) -> &'a str {
        &self.line[self.pos..]
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        &self.line[start..self.pos]
    }

    /// Up to the next blank: a value or a timestamp.
    fn token(&mut self) -> &'a str {
        self.take_while(|b| b != b' ' && b != b'\t')
    }

    /// A label value after its opening quote, unescaped; leaves the cursor
    /// past the closing quote.
    fn label_value(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, other)) => {
                        return Err(format!("unknown escape \\{other} in a label value"));
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err("a label value has no closing quote".into())
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The start of a line for an error message: a garbage endpoint may send
/// megabytes on one line, and the message must stay readable.
fn excerpt(line: &str) -> String {
    const MAX: usize = 40;
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// A value as Prometheus writes it, `NaN` and `±Inf` included. Rust's own
/// float parser accepts more spellings (`infinity`); only numbers and the
/// exposition's words are taken.
fn parse_value(token: &str) -> Option<f64> {
    match token {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ if token
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')) =>
        {
            token.parse().ok()
        }
        _ => None,
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let mut c = Cursor { line, pos: 0 };
    let name = c.take_while(is_name_byte);
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return Err(format!("expected a metric name: {:?}", excerpt(line)));
    }
    c.skip_blanks();
    let mut labels = Vec::new();
    if c.peek() == Some(b'{') {
        c.pos += 1;
        loop {
            c.skip_blanks();
            match c.peek() {
                Some(b'}') => {
                    c.pos += 1;
                    break;
                }
                None => return Err(format!("{name}'s label set has no closing brace")),
                Some(_) => {}
            }
            let key = c.take_while(is_label_byte);
            if key.is_empty() || key.as_bytes()[0].is_ascii_digit() {
                return Err(format!(
                    "expected a label name in {name}'s label set: {:?}",
                    excerpt(c.rest())
                ));
            }
            c.skip_blanks();
            if c.peek() != Some(b'=') {
                return Err(format!("expected '=' after label {key} of {name}"));
            }
            c.pos += 1;
            c.skip_blanks();
            if c.peek() != Some(b'"') {
                return Err(format!("label {key} of {name} has an unquoted value"));
            }
            c.pos += 1;
            let value = c.label_value()?;
            labels.push((key.to_string(), value));
            c.skip_blanks();
            match c.peek() {
                Some(b',') => c.pos += 1,
                Some(b'}') => {}
                _ => return Err(format!("expected ',' or '}}' after label {key} of {name}")),
            }
        }
        c.skip_blanks();
    }
    let token = c.token();
    if token.is_empty() {
        return Err(format!("{name} has no value"));
    }
    let value = parse_value(token)
        .ok_or_else(|| format!("{name}'s value {:?} is not a number", excerpt(token)))?;
    c.skip_blanks();
    // What may follow: a timestamp, then an exemplar (` # {…} v [ts]`),
    // which is ignored.
    if !c.rest().is_empty() && !c.rest().starts_with('#') {
        let stamp = c.token();
        if parse_value(stamp).is_none_or(|t| !t.is_finite()) {
            return Err(format!(
                "unexpected {:?} after {name}'s value",
                excerpt(stamp)
            ));
        }
        c.skip_blanks();
        if !c.rest().is_empty() && !c.rest().starts_with('#') {
            return Err(format!(
                "unexpected {:?} after {name}'s timestamp",
                excerpt(c.rest())
            ));
        }
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The servers llmload knows the metrics of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Vllm,
    Sglang,
    Tgi,
    LlamaCpp,
    Llmload,
}

/// One scrape, reduced. A field is `None` when the server does not export
/// it (TGI has no KV gauge, new llama.cpp dropped its own) or the scrape
/// lacked it; it is never guessed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Reading {
    pub family: Option<Family>,
    /// Requests being processed (decoding) now.
    pub running: Option<f64>,
    /// Requests waiting in the server's queue now.
    pub waiting: Option<f64>,
    /// KV-cache use, 0..1.
    pub kv_cache: Option<f64>,
    /// Counter: preemptions so far.
    pub preemptions: Option<f64>,
    /// Counters: prompt and generated tokens so far.
    pub prompt_tokens: Option<f64>,
    pub generation_tokens: Option<f64>,
    /// The server's TTFT histogram, cumulative buckets (le seconds, count),
    /// sorted by le, +Inf last; with its _count.
    #[serde(default, with = "bucket_serde")]
    pub ttft_buckets: Option<Vec<(f64, f64)>>,
}

/// How one family names the facts of a [`Reading`].
struct Dialect {
    family: Family,
    /// Every metric of the family starts with this; the family with the
    /// most samples under its prefix is the one recognised.
    prefix: &'static str,
    /// Alternatives, newest name first: the first present is read.
    running: &'static [&'static str],
    waiting: &'static [&'static str],
    kv_cache: &'static [&'static str],
    preemptions: &'static [&'static str],
    /// Parts of one total, all summed: new llama.cpp counts cached prompt
    /// tokens apart, and llmload compares with every token it sent.
    prompt_tokens: &'static [&'static str],
    generation_tokens: &'static [&'static str],
    /// Histogram base name (its series are `_bucket`, `_count`, `_sum`).
    ttft: Option<&'static str>,
}

const DIALECTS: &[Dialect] = &[
    Dialect {
        family: Family::Vllm,
        prefix: "vllm:",
        running: &["vllm:num_requests_running"],
        waiting: &["vllm:num_requests_waiting"],
        kv_cache: &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
        preemptions: &["vllm:num_preemptions_total"],
        prompt_tokens: &["vllm:prompt_tokens_total"],
        generation_tokens: &["vllm:generation_tokens_total"],
        ttft: Some("vllm:time_to_first_token_seconds"),
    },
    Dialect {
        family: Family::Sglang,
        prefix: "sglang:",
        running: &["sglang:num_running_reqs"],
        waiting: &["sglang:num_queue_reqs"],
        kv_cache: &["sglang:token_usage"],
        preemptions: &["sglang:num_retracted_requests_total"],
        prompt_tokens: &["sglang:prompt_tokens_total"],
        generation_tokens: &["sglang:generation_tokens_total"],
        ttft: Some("sglang:time_to_first_token_seconds"),
    },
    Dialect {
        family: Family::Tgi,
        prefix: "tgi_",
        running: &["tgi_batch_current_size"],
        waiting: &["tgi_queue_size"],
        kv_cache: &[],
        preemptions: &[],
        // Recorded when a request passes validation (the generated tokens
        // when it ends): totals, though kept as histogram sums.
        prompt_tokens: &["tgi_request_input_length_sum"],
        generation_tokens: &["tgi_request_generated_tokens_sum"],
        ttft: None,
    },
    Dialect {
        family: Family::LlamaCpp,
        prefix: "llamacpp:",
        running: &["llamacpp:requests_processing"],
        waiting: &["llamacpp:requests_deferred"],
        kv_cache: &["llamacpp:kv_cache_usage_ratio"],
        preemptions: &[],
        prompt_tokens: &[
            "llamacpp:prompt_tokens_total",
            "llamacpp:prompt_tokens_cached_total",
        ],
        generation_tokens: &["llamacpp:tokens_predicted_total"],
        ttft: None,
    },
    Dialect {
        family: Family::Llmload,
        prefix: "llmload_mock_",
        running: &["llmload_mock_num_requests_running"],
        waiting: &["llmload_mock_num_requests_waiting"],
        kv_cache: &[],
        preemptions: &[],
        prompt_tokens: &["llmload_mock_prompt_tokens_total"],
        generation_tokens: &["llmload_mock_generation_tokens_total"],
        ttft: None,
    },
];

/// Prefixes of metrics every kind of process exports (runtimes, HTTP
/// middleware, the exporter itself): seeing them says nothing about which
/// inference server answered.
const GENERIC_PREFIXES: &[&str] = &[
    "aiohttp_",
    "dotnet_",
    "fastapi_",
    "go_",
    "grpc_",
    "gunicorn_",
    "http_",
    "jvm_",
    "net_",
    "nodejs_",
    "otel_",
    "process_",
    "promhttp_",
    "python_",
    "rust_",
    "scrape_",
    "starlette_",
    "target_",
    "tokio_",
    "uvicorn_",
];

fn label<'s>(sample: &'s Sample, key: &str) -> Option<&'s str> {
    sample
        .labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Reduce one scrape. `model`: when samples carry a `model_name` label
/// (vLLM) keep only that model's series (if no series matches the model,
/// fall back to summing all). Series of the same metric with other labels
/// (e.g. engine index) are summed for gauges/counters and bucket-wise for
/// histograms.
///
/// One exception to summing: KV-cache use is a fraction per engine, so
/// its series are averaged (two engines at 40 % are a pool 40 % full, not
/// 80 %; exact when the engines' pools are the same size). `NaN` samples
/// are skipped: servers write it for "no value yet".
pub fn read(samples: &[Sample], model: Option<&str>) -> Reading {
    let Some(dialect) = recognise(samples) else {
        return Reading::default();
    };
    let kept = for_model(samples, model);
    let mut by_name: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in kept {
        if !s.value.is_nan() {
            by_name.entry(s.name.as_str()).or_default().push(s);
        }
    }
    let values = |name: &str| -> Option<Vec<f64>> {
        let found = by_name.get(name)?;
        Some(found.iter().map(|s| s.value).collect())
    };
    let total = |name: &str| values(name).map(|v| v.iter().sum::<f64>());
    let first_total = |names: &[&str]| names.iter().find_map(|n| total(n));
    let parts_total = |names: &[&str]| names.iter().filter_map(|n| total(n)).reduce(|a, b| a + b);
    let kv_cache = dialect.kv_cache.iter().find_map(|n| {
        let v = values(n)?;
        Some(v.iter().sum::<f64>() / v.len() as f64)
    });
    Reading {
        family: Some(dialect.family),
        running: first_total(dialect.running),
        waiting: first_total(dialect.waiting),
        kv_cache,
        preemptions: first_total(dialect.preemptions),
        prompt_tokens: parts_total(dialect.prompt_tokens),
        generation_tokens: parts_total(dialect.generation_tokens),
        ttft_buckets: dialect.ttft.and_then(|base| histogram(&by_name, base)),
    }
}

/// The family with the most samples under its prefix, if any.
fn recognise(samples: &[Sample]) -> Option<&'static Dialect> {
    let mut best: Option<(&'static Dialect, usize)> = None;
    for d in DIALECTS {
        let n = samples
            .iter()
            .filter(|s| s.name.starts_with(d.prefix))
            .count();
        if n > 0 && best.is_none_or(|(_, m)| n > m) {
            best = Some((d, n));
        }
    }
    best.map(|(d, _)| d)
}

/// The samples of `model` plus those with no `model_name` (server-wide);
/// all samples when no `model` is given or none is labelled with it, so a
/// served-name mismatch degrades to the whole server rather than nothing.
fn for_model<'s>(samples: &'s [Sample], model: Option<&str>) -> Vec<&'s Sample> {
    let Some(model) = model else {
        return samples.iter().collect();
    };
    if !samples
        .iter()
        .any(|s| label(s, "model_name") == Some(model))
    {
        return samples.iter().collect();
    }
    samples
        .iter()
        .filter(|s| label(s, "model_name").is_none_or(|m| m == model))
        .collect()
}

/// The cumulative buckets of every series of `base`, merged.
///
/// Each series (one label set minus `le`) is taken on its own; a series
/// without a `+Inf` bucket gets one from its `_count`. The merged count at
/// a bound is the sum over series of each one's count at its greatest
/// bound not above it: exact when the series share bounds (the usual case)
/// and a lower bound, still monotone, when they do not.
fn histogram(by_name: &BTreeMap<&str, Vec<&Sample>>, base: &str) -> Option<Vec<(f64, f64)>> {
    type Key<'s> = Vec<(&'s str, &'s str)>;
    fn key<'s>(s: &'s Sample) -> Key<'s> {
        let mut k: Key<'s> = s
            .labels
            .iter()
            .filter(|(name, _)| name != "le")
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        k.sort_unstable();
        k
    }
    let mut series: BTreeMap<Key<'_>, Vec<(f64, f64)>> = BTreeMap::new();
    for s in by_name.get(format!("{base}_bucket").as_str())? {
        let Some(le) = label(s, "le").and_then(parse_value) else {
            continue;
        };
        if !le.is_nan() {
            series.entry(key(s)).or_default().push((le, s.value));
        }
    }
    let counts: BTreeMap<Key<'_>, f64> = by_name
        .get(format!("{base}_count").as_str())
        .into_iter()
        .flatten()
        .map(|s| (key(s), s.value))
        .collect();
    for (k, buckets) in &mut series {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets.dedup_by(|later, earlier| later.0 == earlier.0);
        let has_inf = buckets.last().is_some_and(|b| b.0 == f64::INFINITY);
        if let (false, Some(&count)) = (has_inf, counts.get(k)) {
            buckets.push((f64::INFINITY, count));
        }
    }
    let mut bounds: Vec<f64> = series.values().flatten().map(|b| b.0).collect();
    bounds.sort_by(|a, b| a.total_cmp(b));
    bounds.dedup();
    if bounds.is_empty() {
        return None;
    }
    let merged: Vec<(f64, f64)> = bounds
        .into_iter()
        .map(|le| {
            let count: f64 = series
                .values()
                .map(|b| match b.partition_point(|x| x.0 <= le) {
                    0 => 0.0,
                    i => b[i - 1].1,
                })
                .sum();
            (le, count)
        })
        .collect();
    Some(merged)
}

/// Metric-name prefixes seen that belong to no recognised family (e.g.
/// "ray_", "triton_"), for a one-time notice; generic prefixes
/// (process_, go_, python_, http_ and the like) are ignored.
///
/// A prefix runs to the first `:` (the vLLM style) or else the first `_`,
/// both kept. Names with neither (`up`) name no family. Sorted, each once.
pub fn unknown_families(samples: &[Sample]) -> Vec<String> {
    let mut unknown = BTreeSet::new();
    for s in samples {
        let name = s.name.as_str();
        let Some(end) = name.find(':').or_else(|| name.find('_')) else {
            continue;
        };
        let prefix = &name[..=end];
        let known = DIALECTS.iter().any(|d| name.starts_with(d.prefix))
            || prefix == "llmload_"
            || GENERIC_PREFIXES.contains(&prefix);
        if !known {
            unknown.insert(prefix);
        }
    }
    unknown.into_iter().map(str::to_string).collect()
}

/// JSON has no infinity (serde_json writes `null`, which does not read
/// back as a number), so a bucket bound is written as a number when finite
/// and as Prometheus spells it (`"+Inf"`) otherwise.
mod bucket_serde {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Bound {
        Finite(f64),
        Word(String),
    }

    pub fn serialize<S: Serializer>(
        buckets: &Option<Vec<(f64, f64)>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let out: Option<Vec<(Bound, f64)>> = buckets.as_ref().map(|b| {
            b.iter()
                .map(|&(le, n)| {
                    let bound = if le.is_finite() {
                        Bound::Finite(le)
                    } else if le > 0.0 {
                        Bound::Word("+Inf".into())
                    } else {
                        Bound::Word("-Inf".into())
                    };
                    (bound, n)
                })
                .collect()
        });
        out.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<(f64, f64)>>, D::Error> {
        let raw = Option::<Vec<(Bound, f64)>>::deserialize(d)?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(raw.len());
        for (bound, n) in raw {
            let le = match bound {
                Bound::Finite(le) => le,
                Bound::Word(w) => super::parse_value(&w).ok_or_else(|| {
                    D::Error::custom(format!("bucket bound {w:?} is not a number"))
                })?,
            };
            out.push((le, n));
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = include_str!("../tests/fixtures/server-metrics/vllm.txt");
    const VLLM_OLD: &str = include_str!("../tests/fixtures/server-metrics/vllm-old.txt");
    const SGLANG: &str = include_str!("../tests/fixtures/server-metrics/sglang.txt");
    const TGI: &str = include_str!("../tests/fixtures/server-metrics/tgi.txt");
    const LLAMACPP: &str = include_str!("../tests/fixtures/server-metrics/llamacpp.txt");
    const MOCK: &str = include_str!("../tests/fixtures/server-metrics/llmload-mock.txt");

    const LLAMA_8B: &str = "meta-llama/Llama-3.1-8B-Instruct";
    const QWEN: &str = "Qwen/Qwen2.5-0.5B-Instruct";

    fn reading(text: &str, model: Option<&str>) -> Reading {
        read(&parse(text).expect("fixture parses"), model)
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    fn bucket(r: &Reading, le: f64) -> f64 {
        let b = r.ttft_buckets.as_ref().expect("has a TTFT histogram");
        b.iter().find(|x| x.0 == le).expect("bound present").1
    }

    fn assert_sorted_inf_last(r: &Reading) {
        let b = r.ttft_buckets.as_ref().expect("has a TTFT histogram");
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(b.last().unwrap().0, f64::INFINITY);
    }

    #[test]
    fn vllm_one_model_sums_its_engines() {
        let r = reading(VLLM, Some(LLAMA_8B));
        assert_eq!(r.family, Some(Family::Vllm));
        assert_eq!(r.running, Some(12.0));
        assert_eq!(r.waiting, Some(4.0));
        assert!(close(r.kv_cache, 0.40), "{:?}", r.kv_cache);
        assert_eq!(r.preemptions, Some(3.0));
        assert_eq!(r.prompt_tokens, Some(1_602_346.0));
        assert_eq!(r.generation_tokens, Some(801_076.0));
        assert_sorted_inf_last(&r);
        assert_eq!(r.ttft_buckets.as_ref().unwrap().len(), 23);
        assert_eq!(bucket(&r, 0.001), 0.0);
        assert_eq!(bucket(&r, 0.01), 1.0);
        assert_eq!(bucket(&r, 0.25), 3014.0);
        assert_eq!(bucket(&r, f64::INFINITY), 4871.0);
    }

    #[test]
    fn vllm_model_filter_keeps_only_that_model() {
        let r = reading(VLLM, Some(QWEN));
        assert_eq!(r.running, Some(2.0));
        assert_eq!(r.waiting, Some(0.0));
        assert!(close(r.kv_cache, 0.1));
        assert_eq!(r.preemptions, Some(0.0));
        assert_eq!(r.prompt_tokens, Some(1000.0));
        assert_eq!(r.generation_tokens, Some(500.0));
        assert_eq!(bucket(&r, 0.005), 2.0);
        assert_eq!(bucket(&r, f64::INFINITY), 100.0);
    }

    #[test]
    fn vllm_without_or_with_unknown_model_sums_everything() {
        let all = reading(VLLM, None);
        assert_eq!(all.running, Some(14.0));
        assert_eq!(all.waiting, Some(4.0));
        assert!(close(all.kv_cache, 0.30), "{:?}", all.kv_cache);
        assert_eq!(all.prompt_tokens, Some(1_603_346.0));
        assert_eq!(bucket(&all, f64::INFINITY), 4971.0);
        assert_eq!(reading(VLLM, Some("no/such-model")), all);
    }

    #[test]
    fn vllm_old_reads_gpu_cache_usage() {
        let r = reading(VLLM_OLD, Some("mistralai/Mistral-7B-Instruct-v0.3"));
        assert_eq!(r.family, Some(Family::Vllm));
        assert_eq!(r.running, Some(24.0));
        assert_eq!(r.waiting, Some(17.0));
        assert_eq!(r.kv_cache, Some(0.9871));
        assert_eq!(r.preemptions, Some(58.0));
        assert_eq!(r.prompt_tokens, Some(2_481_203.0));
        assert_eq!(r.generation_tokens, Some(1_209_877.0));
        assert_sorted_inf_last(&r);
        assert_eq!(r.ttft_buckets.as_ref().unwrap().len(), 17);
        assert_eq!(bucket(&r, 0.04), 12.0);
        assert_eq!(bucket(&r, f64::INFINITY), 1926.0);
        assert_eq!(r, reading(VLLM_OLD, None));
    }

    #[test]
    fn vllm_prefers_the_new_kv_name_when_both_are_exported() {
        let text = "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.9\n\
                    vllm:kv_cache_usage_perc{model_name=\"m\"} 0.5\n";
        assert_eq!(reading(text, None).kv_cache, Some(0.5));
    }

    #[test]
    fn sglang_sums_data_parallel_ranks() {
        let r = reading(SGLANG, Some(LLAMA_8B));
        assert_eq!(r.family, Some(Family::Sglang));
        assert_eq!(r.running, Some(20.0));
        assert_eq!(r.waiting, Some(6.0));
        assert!(close(r.kv_cache, 0.60), "{:?}", r.kv_cache);
        assert_eq!(r.preemptions, Some(3.0));
        assert_eq!(r.prompt_tokens, Some(8_128_902.0));
        assert_eq!(r.generation_tokens, Some(7_557_572.0));
        assert_sorted_inf_last(&r);
        assert_eq!(r.ttft_buckets.as_ref().unwrap().len(), 19);
        assert_eq!(bucket(&r, 0.1), 5000.0);
        assert_eq!(bucket(&r, 1.0), 19500.0);
        assert_eq!(bucket(&r, f64::INFINITY), 21028.0);
    }

    #[test]
    fn tgi_reads_queue_batch_and_token_sums() {
        let r = reading(TGI, None);
        assert_eq!(r.family, Some(Family::Tgi));
        assert_eq!(r.running, Some(14.0));
        assert_eq!(r.waiting, Some(6.0));
        assert_eq!(r.kv_cache, None);
        assert_eq!(r.preemptions, None);
        assert_eq!(r.prompt_tokens, Some(245_760.0));
        assert_eq!(r.generation_tokens, Some(131_072.0));
        assert_eq!(r.ttft_buckets, None);
    }

    #[test]
    fn llamacpp_real_output() {
        let r = reading(LLAMACPP, Some("tiny"));
        assert_eq!(r.family, Some(Family::LlamaCpp));
        assert_eq!(r.running, Some(0.0));
        assert_eq!(r.waiting, Some(0.0));
        assert_eq!(r.kv_cache, None, "this build exports no KV gauge");
        assert_eq!(r.preemptions, None);
        // Processed plus reused from the cache: every prompt token sent.
        assert_eq!(r.prompt_tokens, Some(11_509.0 + 459_646.0));
        assert_eq!(r.generation_tokens, Some(201_616.0));
        assert_eq!(r.ttft_buckets, None);
    }

    #[test]
    fn llamacpp_older_kv_ratio() {
        let text = "# TYPE llamacpp:kv_cache_usage_ratio gauge\n\
                    llamacpp:kv_cache_usage_ratio 0.25\n\
                    llamacpp:requests_processing 3\n\
                    llamacpp:prompt_tokens_total 100\n";
        let r = reading(text, None);
        assert_eq!(r.kv_cache, Some(0.25));
        assert_eq!(r.running, Some(3.0));
        assert_eq!(r.prompt_tokens, Some(100.0));
    }

    #[test]
    fn llmload_mock() {
        let r = reading(MOCK, None);
        assert_eq!(r.family, Some(Family::Llmload));
        assert_eq!(r.running, Some(4.0));
        assert_eq!(r.waiting, Some(9.0));
        assert_eq!(r.kv_cache, None);
        assert_eq!(r.prompt_tokens, Some(52_000.0));
        assert_eq!(r.generation_tokens, Some(31_000.0));
        assert_eq!(r.ttft_buckets, None);
    }

    #[test]
    fn unrecognised_scrape_reads_nothing() {
        let text = "ray_serve_num_ongoing_requests 3\nprocess_open_fds 9\n";
        assert_eq!(reading(text, None), Reading::default());
        assert_eq!(read(&[], None), Reading::default());
    }

    #[test]
    fn nan_samples_are_skipped() {
        let text = "vllm:num_requests_running{engine=\"0\"} NaN\n\
                    vllm:num_requests_running{engine=\"1\"} 2\n\
                    vllm:num_requests_waiting NaN\n";
        let r = reading(text, None);
        assert_eq!(r.running, Some(2.0));
        assert_eq!(r.waiting, None);
    }

    #[test]
    fn histograms_with_different_bounds_merge_monotone() {
        // Engine 0 has bounds 1 and 2 and +Inf; engine 1 has bound 1.5 and
        // no +Inf bucket, so its _count supplies one.
        let text = "\
vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"1.0\"} 4
vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"2.0\"} 6
vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"+Inf\"} 7
vllm:time_to_first_token_seconds_count{engine=\"0\"} 7
vllm:time_to_first_token_seconds_bucket{engine=\"1\",le=\"1.5\"} 10
vllm:time_to_first_token_seconds_count{engine=\"1\"} 11
";
        let r = reading(text, None);
        assert_eq!(
            r.ttft_buckets,
            Some(vec![
                (1.0, 4.0),
                (1.5, 14.0),
                (2.0, 16.0),
                (f64::INFINITY, 18.0)
            ])
        );
    }

    #[test]
    fn reading_round_trips_through_json() {
        // Values exact in binary, so the comparison needs no tolerance.
        let r = Reading {
            family: Some(Family::Vllm),
            running: Some(12.0),
            waiting: Some(4.0),
            kv_cache: Some(0.5),
            preemptions: Some(3.0),
            prompt_tokens: Some(1_602_346.0),
            generation_tokens: None,
            ttft_buckets: Some(vec![(0.25, 3.0), (1.0, 7.0), (f64::INFINITY, 9.0)]),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("[\"+Inf\",9.0]"), "{json}");
        assert!(json.contains("\"family\":\"vllm\""), "{json}");
        let back: Reading = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let empty: Reading = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Reading::default());
        let bad = serde_json::from_str::<Reading>(r#"{"ttft_buckets":[["soon",1.0]]}"#);
        assert!(bad.is_err());
    }

    // ---- parser ----

    fn one(line: &str) -> Sample {
        let mut s = parse(line).expect("parses");
        assert_eq!(s.len(), 1, "{s:?}");
        s.remove(0)
    }

    fn pairs(s: &Sample) -> Vec<(&str, &str)> {
        s.labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn parses_names_with_colons_and_labels_in_order() {
        let s = one("llamacpp:requests_processing 2");
        assert_eq!(
            (s.name.as_str(), s.value),
            ("llamacpp:requests_processing", 2.0)
        );
        let s = one("vllm:x{model_name=\"a/b\", engine = \"0\",} 1.5e3");
        assert_eq!(s.name, "vllm:x");
        assert_eq!(pairs(&s), [("model_name", "a/b"), ("engine", "0")]);
        assert_eq!(s.value, 1500.0);
        assert!(one("x{} 1").labels.is_empty());
    }

    #[test]
    fn unescapes_label_values() {
        let s = one(r#"m{a="q\"uote",b="back\\slash",c="new\nline",d="} , # é"} 1"#);
        assert_eq!(
            pairs(&s),
            [
                ("a", "q\"uote"),
                ("b", "back\\slash"),
                ("c", "new\nline"),
                ("d", "} , # é"),
            ]
        );
    }

    #[test]
    fn special_values() {
        assert!(one("a NaN").value.is_nan());
        assert_eq!(one("b +Inf").value, f64::INFINITY);
        assert_eq!(one("c -Inf").value, f64::NEG_INFINITY);
        assert_eq!(one("d -0.5").value, -0.5);
        assert_eq!(one("e 1.75432198121e+09").value, 1_754_321_981.21);
    }

    #[test]
    fn timestamps_and_exemplars_are_skipped() {
        assert_eq!(one("a 3 1712345678000").value, 3.0);
        assert_eq!(one("a 3 1712345678.5").value, 3.0);
        let s = one(r#"h_bucket{le="0.5"} 7 # {trace_id="abc 123"} 0.43 1712345678.1"#);
        assert_eq!((s.value, pairs(&s)), (7.0, vec![("le", "0.5")]));
        assert_eq!(one(r#"c_total 9 1712345678 # {id="x"} 1"#).value, 9.0);
    }

    #[test]
    fn comments_blank_lines_crlf_and_eof() {
        let text = "# HELP a The a.\r\n# TYPE a gauge\r\n# UNIT a seconds\r\n\r\n   \
                    a 1\r\n\t b{x=\"y\"}\t2\r\n# EOF\r\nthis is not a sample\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].name.as_str(), s[0].value), ("a", 1.0));
        assert_eq!((s[1].name.as_str(), s[1].value), ("b", 2.0));
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "ok 1\n\n# HELP x y\nbad{a=\"b\" 1\n",
                4,
                "expected ',' or '}'",
            ),
            ("ok 1\nnovalue\n", 2, "has no value"),
            ("ok 1\nok 2\nx abc\n", 3, "is not a number"),
            ("x{a=\"\\t\"} 1\n", 1, "unknown escape"),
            ("ok 1\nx{a=\"open} 1\n", 2, "no closing quote"),
            ("x{a=b} 1\n", 1, "unquoted value"),
            ("x{a=\"b\"\n", 1, "expected ',' or '}'"),
            ("x{a=\"b\",\n", 1, "no closing brace"),
            ("x{=\"b\"} 1\n", 1, "expected a label name"),
            ("x{a \"b\"} 1\n", 1, "expected '='"),
            ("9x 1\n", 1, "expected a metric name"),
            ("{a=\"b\"} 1\n", 1, "expected a metric name"),
            ("ok 1\nx 1 2 3\n", 2, "after x's timestamp"),
            ("x 1 soon\n", 1, "after x's value"),
            ("x infinity\n", 1, "is not a number"),
        ];
        for (text, line, reason) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, *line, "{text:?}: {err}");
            assert!(err.reason.contains(reason), "{text:?}: {err}");
        }
        let err = parse("ok 1\nx 1 2 3\n").unwrap_err();
        assert!(err.to_string().starts_with("line 2: "), "{err}");
    }

    #[test]
    fn error_messages_stay_short() {
        let long = format!("x {}\n", "z".repeat(10_000));
        let err = parse(&long).unwrap_err();
        assert!(err.reason.len() < 200, "{}", err.reason.len());
    }

    #[test]
    fn size_limits() {
        let big = "#".repeat(MAX_BYTES + 1);
        let err = parse(&big).unwrap_err();
        assert_eq!(err.line, 0);
        assert!(err.reason.contains("limit"), "{err}");
        assert!(parse(&"#".repeat(MAX_BYTES)).is_ok());

        let at_limit = "a 1\n".repeat(MAX_SAMPLES);
        assert_eq!(parse(&at_limit).unwrap().len(), MAX_SAMPLES);
        let over = format!("# HELP a x\n{at_limit}a 1\n");
        let err = parse(&over).unwrap_err();
        assert_eq!(err.line, MAX_SAMPLES + 2);
        assert!(err.reason.contains("samples"), "{err}");
    }

    #[test]
    fn fixtures_all_parse() {
        for text in [VLLM, VLLM_OLD, SGLANG, TGI, LLAMACPP, MOCK] {
            assert!(parse(text).unwrap().len() >= 8);
        }
    }

    // ---- unknown families ----

    fn named(names: &[&str]) -> Vec<Sample> {
        names
            .iter()
            .map(|n| Sample {
                name: n.to_string(),
                labels: vec![],
                value: 1.0,
            })
            .collect()
    }

    #[test]
    fn unknown_families_listed_once_generic_ignored() {
        let s = named(&[
            "ray_serve_num_ongoing_requests",
            "ray_tasks",
            "triton_inference_count",
            "foo:bar_total",
            "foo:baz",
            "process_cpu_seconds_total",
            "go_goroutines",
            "python_gc_objects_collected_total",
            "http_requests_total",
            "vllm:num_requests_running",
            "llmload_requests_total",
            "up",
        ]);
        assert_eq!(unknown_families(&s), ["foo:", "ray_", "triton_"]);
    }

    #[test]
    fn fixtures_have_no_unknown_families() {
        for text in [VLLM, VLLM_OLD, SGLANG, TGI, LLAMACPP, MOCK] {
            let s = parse(text).unwrap();
            assert_eq!(unknown_families(&s), Vec::<String>::new());
        }
    }
}
