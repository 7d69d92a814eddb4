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
//! 2. Add a file beside `vllm.rs` with its `Dialect` (naming its metrics, and
//!    the source you read them from), and list it in `DIALECTS`.
//! 3. Record a scrape under `tests/fixtures/server-metrics/` and test every
//!    field of the [`Reading`] it gives.

mod exposition;
mod llamacpp;
mod mock;
mod sglang;
mod tgi;
mod vllm;

use exposition::parse_value;
pub use exposition::{MAX_BYTES, MAX_SAMPLES, ParseError, Sample, parse};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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
    /// Counters: prompt tokens looked up in the prefix cache, and found
    /// there (vLLM's `prefix_cache_queries`/`hits`; llama.cpp's processed
    /// plus cached prompt tokens, and cached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache_queries: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache_hits: Option<f64>,
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
    /// Prefix-cache counters, in tokens: the parts of the looked-up total
    /// (summed) and the hits. Empty: the family exports none (SGLang has
    /// only a gauge of its recent hit rate, TGI nothing).
    cache_queries: &'static [&'static str],
    cache_hits: &'static [&'static str],
    /// Histogram base name (its series are `_bucket`, `_count`, `_sum`).
    ttft: Option<&'static str>,
}

const DIALECTS: &[Dialect] = &[
    vllm::DIALECT,
    sglang::DIALECT,
    tgi::DIALECT,
    llamacpp::DIALECT,
    mock::DIALECT,
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
        prefix_cache_queries: parts_total(dialect.cache_queries),
        prefix_cache_hits: parts_total(dialect.cache_hits),
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

    pub(super) const VLLM: &str = include_str!("../../../tests/fixtures/server-metrics/vllm.txt");
    pub(super) const VLLM_OLD: &str =
        include_str!("../../../tests/fixtures/server-metrics/vllm-old.txt");
    pub(super) const SGLANG: &str =
        include_str!("../../../tests/fixtures/server-metrics/sglang.txt");
    pub(super) const TGI: &str = include_str!("../../../tests/fixtures/server-metrics/tgi.txt");
    pub(super) const LLAMACPP: &str =
        include_str!("../../../tests/fixtures/server-metrics/llamacpp.txt");
    pub(super) const MOCK: &str =
        include_str!("../../../tests/fixtures/server-metrics/llmload-mock.txt");

    pub(super) const LLAMA_8B: &str = "meta-llama/Llama-3.1-8B-Instruct";
    pub(super) const QWEN: &str = "Qwen/Qwen2.5-0.5B-Instruct";

    pub(super) fn reading(text: &str, model: Option<&str>) -> Reading {
        read(&parse(text).expect("fixture parses"), model)
    }

    pub(super) fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    pub(super) fn bucket(r: &Reading, le: f64) -> f64 {
        let b = r.ttft_buckets.as_ref().expect("has a TTFT histogram");
        b.iter().find(|x| x.0 == le).expect("bound present").1
    }

    pub(super) fn assert_sorted_inf_last(r: &Reading) {
        let b = r.ttft_buckets.as_ref().expect("has a TTFT histogram");
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(b.last().unwrap().0, f64::INFINITY);
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
            prefix_cache_queries: Some(100.0),
            prefix_cache_hits: Some(75.0),
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
