//! What one streamed OpenAI chunk tells us, read without building a JSON tree.
//!
//! The client only needs a handful of facts per event: did it carry
//! generated text (content, reasoning or a tool call), did it finish, what
//! usage did it report, was it an error. Deserializing into borrowed,
//! purpose-built types skips everything else (logprobs, ids of every chunk)
//! and allocates nothing for unescaped strings.

use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Why generation stopped, as reported in `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    Other,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
            Self::Other => "other",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "stop" => Self::Stop,
            "length" => Self::Length,
            "tool_calls" | "function_call" => Self::ToolCalls,
            "content_filter" => Self::ContentFilter,
            _ => Self::Other,
        }
    }
}

/// The facts of one `data:` event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkInfo<'a> {
    /// The chunk carried visible answer text.
    pub content: bool,
    /// The chunk carried reasoning text (`reasoning_content` / `reasoning`)
    /// or a tool-call delta: generated tokens that are not the answer.
    pub other_tokens: bool,
    pub finish: Option<FinishReason>,
    pub completion_tokens: Option<u32>,
    pub prompt_tokens: Option<u32>,
    /// An `error` object inside the stream (vLLM and proxies send these
    /// with status 200 once streaming has begun).
    pub error: bool,
    pub id: Option<Cow<'a, str>>,
    pub model: Option<Cow<'a, str>>,
}

impl ChunkInfo<'_> {
    /// Whether the chunk carried any generated token: TTFT and ITL count
    /// from these only (a role-only or empty chunk is not a token).
    pub fn has_tokens(&self) -> bool {
        self.content || self.other_tokens
    }
}

/// What a `data:` payload is.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Done,
    Chunk(ChunkInfo<'a>),
}

#[derive(Debug, thiserror::Error)]
#[error("chunk is not valid JSON: {0}")]
pub struct ChunkError(#[from] serde_json::Error);

/// Read one `data:` payload.
pub fn parse(data: &[u8]) -> Result<Payload<'_>, ChunkError> {
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
        error: raw.error.is_some_and(|e| !matches!(e, MaybeNull::Null)),
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
    error: Option<MaybeNull>,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    completion_tokens: Option<u32>,
    #[serde(default)]
    prompt_tokens: Option<u32>,
}

/// `null` or anything else, without keeping it.
enum MaybeNull {
    Null,
    Some,
}

impl<'de> Deserialize<'de> for MaybeNull {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeNull;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("anything")
            }
            fn visit_unit<E>(self) -> Result<MaybeNull, E> {
                Ok(MaybeNull::Null)
            }
            fn visit_none<E>(self) -> Result<MaybeNull, E> {
                Ok(MaybeNull::Null)
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<MaybeNull, D::Error> {
                IgnoredAny::deserialize(d)?;
                Ok(MaybeNull::Some)
            }
        }
        // `deserialize_option` makes serde_json report null as none and
        // hand everything else to visit_some.
        d.deserialize_option(V)
    }
}

/// The `choices` array folded into three facts, without a `Vec`.
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
                while let Some(c) = seq.next_element::<RawChoice<'de>>()? {
                    if let Some(delta) = c.delta {
                        acc.content |= delta.content.0;
                        acc.other_tokens |= delta.reasoning_content.0
                            || delta.reasoning.0
                            || delta
                                .tool_calls
                                .is_some_and(|t| matches!(t, MaybeNull::Some));
                    }
                    // Legacy /v1/completions chunks carry `text` instead of a delta.
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
    tool_calls: Option<MaybeNull>,
}

/// Whether a string field is present and non-empty, without copying it.
#[derive(Default)]
struct NonEmpty(bool);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or null")
            }
            fn visit_str<E>(self, s: &str) -> Result<NonEmpty, E> {
                Ok(NonEmpty(!s.is_empty()))
            }
            fn visit_unit<E>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_none<E>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<NonEmpty, D::Error> {
                d.deserialize_any(V)
            }
            // Some servers send content as an array of parts; any non-empty
            // value counts as text.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NonEmpty, A::Error> {
                let mut any = false;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(NonEmpty(any))
            }
        }
        d.deserialize_option(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(s: &str) -> ChunkInfo<'_> {
        match parse(s.as_bytes()).unwrap() {
            Payload::Chunk(c) => c,
            Payload::Done => panic!("unexpected DONE"),
        }
    }

    #[test]
    fn done_marker() {
        assert_eq!(parse(b"[DONE]").unwrap(), Payload::Done);
        assert_eq!(parse(b" [DONE] ").unwrap(), Payload::Done);
    }

    #[test]
    fn role_only_and_empty_chunks_carry_no_tokens() {
        let c = chunk(
            r#"{"id":"x","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
        );
        assert!(!c.has_tokens());
        assert_eq!(c.id.as_deref(), Some("x"));
        assert_eq!(c.model.as_deref(), Some("m"));
        assert!(!chunk(r#"{"choices":[{"delta":{}}]}"#).has_tokens());
        assert!(!chunk(r#"{"choices":[{"delta":{"content":null}}]}"#).has_tokens());
    }

    #[test]
    fn content_reasoning_and_tool_calls() {
        let c = chunk(r#"{"choices":[{"delta":{"content":"h\u00e9 \"q\""}}]}"#);
        assert!(c.content && !c.other_tokens);
        let r = chunk(r#"{"choices":[{"delta":{"reasoning_content":"think"}}]}"#);
        assert!(!r.content && r.other_tokens);
        let r = chunk(r#"{"choices":[{"delta":{"reasoning":"think","content":null}}]}"#);
        assert!(!r.content && r.other_tokens);
        let t = chunk(
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#,
        );
        assert!(t.other_tokens);
        let legacy = chunk(r#"{"object":"text_completion","choices":[{"text":" w","index":0}]}"#);
        assert!(legacy.content);
    }

    #[test]
    fn finish_and_usage() {
        let f = chunk(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#);
        assert_eq!(f.finish, Some(FinishReason::Length));
        let u = chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#,
        );
        assert_eq!(u.completion_tokens, Some(34));
        assert_eq!(u.prompt_tokens, Some(12));
        assert!(!u.has_tokens());
        let n = chunk(r#"{"choices":[{"delta":{"content":"a"}}],"usage":null}"#);
        assert_eq!(n.completion_tokens, None);
    }

    #[test]
    fn error_objects() {
        assert!(chunk(r#"{"error":{"message":"overloaded","code":503}}"#).error);
        assert!(chunk(r#"{"object":"error","error":"boom"}"#).error);
        assert!(!chunk(r#"{"choices":[],"error":null}"#).error);
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(parse(b"{not json").is_err());
        assert!(parse(br#"{"choices":[{"delta":{"content":"#).is_err());
    }
}
