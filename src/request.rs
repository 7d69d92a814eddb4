//! Request bodies, built once per dataset sample before any load is sent.
//!
//! The body is the seed's, field for field: `model`, `messages`,
//! `max_tokens`, `temperature`, `stream: true`, plus
//! `stream_options.include_usage` (so the server reports the exact output
//! token count) unless the endpoint rejects it. Serializing ahead keeps
//! JSON work off the send path: a request clones a reference-counted
//! `Bytes`.

use crate::dataset::{Conversation, Message};
use bytes::Bytes;
use serde::Serialize;

/// The generation parameters shared by every request of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyParams {
    pub model: String,
    pub max_tokens: u32,
    pub temperature: f64,
    pub stream_usage: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: &'a [Message],
    max_tokens: u32,
    temperature: f64,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
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
}

/// Serialize one conversation.
pub fn build_body(conv: &Conversation, p: &BodyParams) -> Bytes {
    let body = Body {
        model: &p.model,
        messages: &conv.messages,
        max_tokens: p.max_tokens,
        temperature: p.temperature,
        stream: true,
        stream_options: p.stream_usage.then_some(StreamOptions {
            include_usage: true,
        }),
    };
    Bytes::from(serde_json::to_vec(&body).expect("a body of strings and numbers serializes"))
}

/// Prepare every sample; requests then cycle through them in order.
pub fn prepare_all(convs: &[Conversation], p: &BodyParams) -> Vec<PreparedRequest> {
    convs
        .iter()
        .map(|c| PreparedRequest {
            body: build_body(c, p),
            input_chars: c.text_chars(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Role;

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
        }
    }

    #[test]
    fn body_matches_the_seed_exactly() {
        let p = BodyParams {
            model: "your-model".into(),
            max_tokens: 512,
            temperature: 0.7,
            stream_usage: false,
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
        };
        let v: serde_json::Value = serde_json::from_slice(&build_body(&conv(), &p)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["temperature"], 0.0);
        assert_eq!(v["stream"], true);
    }
}
