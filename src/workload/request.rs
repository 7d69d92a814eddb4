//! Request bodies, built once per dataset sample before any load is sent.
//!
//! The body is the seed's, field for field: `model`, `messages`,
//! `max_tokens`, `temperature`, `stream: true`, plus
//! `stream_options.include_usage` (so the server reports the exact output
//! token count) unless the endpoint rejects it. `--api completions` sends
//! `prompt` instead of `messages`; `--ignore-eos` adds `ignore_eos` and
//! `min_tokens` (vLLM's and llama.cpp's extensions) so that every request
//! generates exactly its `max_tokens`; `--extra-body` keys come last. Serializing ahead keeps
//! JSON work off the send path: a request clones a reference-counted
//! `Bytes`.

use crate::workload::Api;
use crate::workload::dataset::{Conversation, Message};
use bytes::Bytes;
use serde::Serialize;

/// The generation parameters shared by every request of a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BodyParams {
    pub model: String,
    pub max_tokens: u32,
    pub temperature: f64,
    pub stream_usage: bool,
    pub api: Api,
    pub ignore_eos: bool,
    /// Merged into every body, last (checked against our own keys when
    /// the settings were read).
    pub extra_body: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<&'a [Message]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    max_tokens: u32,
    temperature: f64,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignore_eos: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_tokens: Option<u32>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A prepared request: its body and what we know about its input.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub body: Bytes,
    /// Characters of message text; `/4` is the rough token estimate.
    pub input_chars: usize,
    /// Prompt tokens counted with the run's tokenizer, when it has one.
    pub input_tokens: Option<u32>,
}

/// The text `/v1/completions` gets for a conversation: its one message,
/// or every message's text, a blank line apart.
pub fn prompt_text(conv: &Conversation) -> String {
    match conv.messages.as_slice() {
        [one] => one.content.clone(),
        many => many
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n\n"),
    }
}

/// Serialize one conversation.
pub fn build_body(conv: &Conversation, p: &BodyParams) -> Bytes {
    let max_tokens = conv.max_tokens.unwrap_or(p.max_tokens);
    let body = Body {
        model: &p.model,
        messages: (p.api == Api::Chat).then_some(&conv.messages[..]),
        prompt: (p.api == Api::Completions).then(|| prompt_text(conv)),
        max_tokens,
        temperature: p.temperature,
        stream: true,
        stream_options: p.stream_usage.then_some(StreamOptions {
            include_usage: true,
        }),
        ignore_eos: p.ignore_eos.then_some(true),
        min_tokens: p.ignore_eos.then_some(max_tokens),
    };
    let bytes = if p.extra_body.is_empty() {
        serde_json::to_vec(&body)
    } else {
        let mut v = serde_json::to_value(&body).expect("a body of strings and numbers serializes");
        let obj = v.as_object_mut().expect("the body is an object");
        for (k, x) in &p.extra_body {
            obj.insert(k.clone(), x.clone());
        }
        serde_json::to_vec(&v)
    };
    Bytes::from(bytes.expect("a body of strings and numbers serializes"))
}

/// Prepare every sample; requests then cycle through them in order.
/// `input_tokens`: each sample's prompt tokens, when counted.
pub fn prepare_all(convs: &[Conversation], p: &BodyParams) -> Vec<PreparedRequest> {
    prepare_counted(convs, p, &|_| None)
}

pub fn prepare_counted(
    convs: &[Conversation],
    p: &BodyParams,
    input_tokens: &dyn Fn(usize) -> Option<u32>,
) -> Vec<PreparedRequest> {
    convs
        .iter()
        .enumerate()
        .map(|(i, c)| PreparedRequest {
            body: build_body(c, p),
            input_chars: c.text_chars(),
            input_tokens: input_tokens(i),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::dataset::Role;

    fn conv() -> Conversation {
        Conversation {
            messages: vec![
                Message {
                    role: Role::System,
                    content: "You are a helpful assistant.".into(),
                },
                Message {
                    role: Role::User,
                    content: "What is 2+2?".into(),
                },
            ],
            max_tokens: None,
        }
    }

    #[test]
    fn body_matches_the_seed_exactly() {
        let p = BodyParams {
            model: "your-model".into(),
            max_tokens: 512,
            temperature: 0.7,
            stream_usage: false,
            ..BodyParams::default()
        };
        assert_eq!(
            std::str::from_utf8(&build_body(&conv(), &p)).unwrap(),
            r#"{"model":"your-model","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is 2+2?"}],"max_tokens":512,"temperature":0.7,"stream":true}"#
        );
    }

    #[test]
    fn stream_usage_is_requested_by_default() {
        let p = BodyParams {
            model: "m".into(),
            max_tokens: 8,
            temperature: 0.0,
            stream_usage: true,
            ..BodyParams::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&build_body(&conv(), &p)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["temperature"], 0.0);
        assert_eq!(v["stream"], true);
        assert!(v.get("ignore_eos").is_none() && v.get("prompt").is_none());
    }

    #[test]
    fn completions_ignore_eos_and_extra_keys() {
        let mut extra = serde_json::Map::new();
        extra.insert("top_p".into(), serde_json::json!(0.5));
        let p = BodyParams {
            model: "m".into(),
            max_tokens: 8,
            temperature: 0.0,
            stream_usage: true,
            api: Api::Completions,
            ignore_eos: true,
            extra_body: extra,
        };
        let mut c = conv();
        c.max_tokens = Some(32);
        let v: serde_json::Value = serde_json::from_slice(&build_body(&c, &p)).unwrap();
        assert_eq!(v["prompt"], "You are a helpful assistant.\n\nWhat is 2+2?");
        assert!(v.get("messages").is_none());
        assert_eq!(v["max_tokens"], 32, "the sample's own length");
        assert_eq!(v["min_tokens"], 32);
        assert_eq!(v["ignore_eos"], true);
        assert_eq!(v["top_p"], 0.5);
        assert_eq!(v["stream"], true);
    }
}
