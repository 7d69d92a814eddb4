//! The serde-based reader the chunk scanner replaced, kept (tests only)
//! as the reference the scanner's property tests compare against.

use crate::client::chunk::*;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

pub fn parse(data: &[u8]) -> Result<Payload<'_>, serde_json::Error> {
    let trimmed = data.trim_ascii();
    if trimmed == b"[DONE]" {
        return Ok(Payload::Done);
    }
    let raw: RawChunk<'_> = serde_json::from_slice(trimmed)?;
    let choices = raw.choices.unwrap_or_default();
    Ok(Payload::Chunk(ChunkInfo {
        content: choices.content,
        other_tokens: choices.other_tokens,
        finish: choices.finish,
        completion_tokens: raw.usage.as_ref().and_then(|u| u.completion_tokens),
        prompt_tokens: raw.usage.as_ref().and_then(|u| u.prompt_tokens),
        cached_tokens: raw
            .usage
            .as_ref()
            .and_then(|u| u.prompt_tokens_details.as_ref())
            .and_then(|d| d.cached_tokens)
            .or(raw.timings.and_then(|t| t.cache_n)),
        text: None,
        error: raw.error.is_some_and(|e| e.0),
        id: raw.id,
        model: raw.model,
    }))
}

#[derive(Deserialize)]
struct RawChunk<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    choices: Option<Choices>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    timings: Option<RawTimings>,
    #[serde(default)]
    error: Option<NonEmpty>,
}

#[derive(Deserialize)]
struct RawTimings {
    #[serde(default)]
    cache_n: Option<u32>,
}

#[derive(Deserialize)]
struct RawDetails {
    #[serde(default)]
    cached_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    completion_tokens: Option<u32>,
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    prompt_tokens_details: Option<RawDetails>,
}

#[derive(Default)]
struct Choices {
    content: bool,
    other_tokens: bool,
    finish: Option<FinishReason>,
}

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Choices;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
                let mut acc = Choices::default();
                while let Some(c) = seq.next_element::<Option<RawChoice<'de>>>()? {
                    let Some(c) = c else { continue };
                    if let Some(delta) = c.delta {
                        acc.content |= delta.content.0;
                        acc.other_tokens |=
                            delta.reasoning_content.0 || delta.reasoning.0 || delta.tool_calls.0;
                    }
                    acc.content |= c.text.0;
                    if let Some(r) = c.finish_reason {
                        acc.finish = Some(FinishReason::parse(&r));
                    }
                }
                Ok(acc)
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
struct RawChoice<'a> {
    #[serde(default)]
    delta: Option<RawDelta>,
    #[serde(default)]
    text: NonEmpty,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawDelta {
    #[serde(default)]
    content: NonEmpty,
    #[serde(default)]
    reasoning_content: NonEmpty,
    #[serde(default)]
    reasoning: NonEmpty,
    #[serde(default)]
    tool_calls: NonEmpty,
}

/// Non-empty string, non-empty array, or any object.
#[derive(Default)]
struct NonEmpty(bool);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("anything")
            }
            fn visit_str<E>(self, s: &str) -> Result<NonEmpty, E> {
                Ok(NonEmpty(!s.is_empty()))
            }
            fn visit_unit<E>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NonEmpty, A::Error> {
                let mut any = false;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(NonEmpty(any))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<NonEmpty, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NonEmpty(true))
            }
        }
        d.deserialize_any(V)
    }
}
