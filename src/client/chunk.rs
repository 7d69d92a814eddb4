//! What one streamed OpenAI chunk tells us, read without building a JSON tree.
//!
//! The client only needs a handful of facts per event: did it carry
//! generated text (content, reasoning or a tool call), did it finish, what
//! usage did it report, was it an error. Deserializing into borrowed,
//! purpose-built types skips everything else (logprobs, ids of every chunk)
//! and allocates nothing for unescaped strings.

pub use super::json_scan::ChunkError;
use super::json_scan::{Res, Scanner};
use std::borrow::Cow;

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
    pub(crate) fn parse(s: &str) -> Self {
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
    /// Prompt tokens the server served from its prefix cache:
    /// `usage.prompt_tokens_details.cached_tokens` (OpenAI, vLLM, SGLang,
    /// llama.cpp), else llama.cpp's `timings.cache_n`.
    pub cached_tokens: Option<u32>,
    /// The answer text the chunk carried, decoded; only read when asked
    /// for (a session's next turn sends it back as history).
    pub text: Option<Cow<'a, str>>,
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

/// Read one `data:` payload.
///
/// A purpose-built scanner walks the JSON once: it reads the handful of
/// fields we need (which strings are non-empty, `finish_reason`, `usage`,
/// `error`, and `id`/`model`) and skips everything else without decoding
/// it. No tree, no allocation for unescaped strings, no UTF-8 validation
/// of text we never look at. Structure is still checked: a truncated or
/// malformed chunk is an error. `chunk_reference::parse` (serde, tests only)
/// gives the same answers; a property test holds them to it.
pub fn parse(data: &[u8]) -> Result<Payload<'_>, ChunkError> {
    parse_with(data, true)
}

/// [`parse`], reading `id` and `model` only when `want_ids` (the client
/// needs them once per request, for traces; skipping them saves a UTF-8
/// check of two strings per chunk).
pub fn parse_with(data: &[u8], want_ids: bool) -> Result<Payload<'_>, ChunkError> {
    parse_full(data, want_ids, false)
}

/// [`parse_with`], also decoding the answer text into `text` when
/// `want_text` (a string per content delta, joined).
pub fn parse_full(data: &[u8], want_ids: bool, want_text: bool) -> Result<Payload<'_>, ChunkError> {
    let trimmed = data.trim_ascii();
    if trimmed == b"[DONE]" {
        return Ok(Payload::Done);
    }
    let mut sc = Scanner { b: trimmed, i: 0 };
    let mut info = ChunkInfo::default();
    sc.ws();
    top_level(
        &mut sc,
        &mut info,
        want_ids,
        want_text,
        false,
        &mut Vec::new(),
        &mut Sites::default(),
    )?;
    Ok(Payload::Chunk(info))
}

/// The places in one chunk that could carry answer text (`content` in a
/// delta, a choice's `text`), and where the last string among them was.
#[derive(Debug, Default)]
pub(super) struct Sites {
    pub(super) count: u32,
    pub(super) string: Option<(usize, usize)>,
}

impl Sites {
    /// Reads an answer value: whether it carries text, as
    /// [`Scanner::non_empty`] says.
    pub(super) fn answer(&mut self, sc: &mut Scanner<'_>) -> Res<bool> {
        self.count += 1;
        let is_string = sc.peek()? == b'"';
        let start = sc.i;
        let any = sc.non_empty()?;
        self.string = is_string.then_some((start, sc.i));
        Ok(any)
    }
}

/// The chunk's top-level object, from its `{` (or, `resumed`, from just
/// after one of its members); the scanner must end at the end of the
/// input. Offsets just after each leading member that leaves `info`
/// empty are pushed onto `marks`.
pub(super) fn top_level<'a>(
    sc: &mut Scanner<'a>,
    info: &mut ChunkInfo<'a>,
    want_ids: bool,
    want_text: bool,
    resumed: bool,
    marks: &mut Vec<usize>,
    sites: &mut Sites,
) -> Res<()> {
    let mut leading = *info == ChunkInfo::default();
    let mut first = !resumed;
    if first {
        sc.eat(b'{')?;
    }
    loop {
        match sc.peek()? {
            b'}' if first || resumed => {
                sc.i += 1;
                break;
            }
            b',' if !first => sc.i += 1,
            _ if first => {}
            _ => return Err(sc.err("expected ',' or '}'")),
        }
        first = false;
        let (key, _) = sc.raw_str()?;
        sc.eat(b':')?;
        member(sc, key, info, want_ids, want_text, sites)?;
        leading = leading && *info == ChunkInfo::default();
        if leading {
            marks.push(sc.i);
        }
        // After a member: a ',' or the closing '}' comes next.
        match sc.peek()? {
            b',' => continue,
            b'}' => {
                sc.i += 1;
                break;
            }
            _ => return Err(sc.err("expected ',' or '}'")),
        }
    }
    sc.ws();
    if sc.i != sc.b.len() {
        return Err(sc.err("trailing bytes"));
    }
    Ok(())
}

/// One top-level member's value: the facts it holds go into `info`.
fn member<'a>(
    sc: &mut Scanner<'a>,
    key: &[u8],
    info: &mut ChunkInfo<'a>,
    want_ids: bool,
    want_text: bool,
    sites: &mut Sites,
) -> Res<()> {
    match key {
        b"id" if want_ids => {
            info.id = sc.opt_str()?;
            Ok(())
        }
        b"model" if want_ids => {
            info.model = sc.opt_str()?;
            Ok(())
        }
        b"choices" => {
            if !sc.null()? {
                sc.array(|sc| {
                    if sc.null()? {
                        return Ok(());
                    }
                    sc.object(|sc, k| match k {
                        b"delta" => {
                            if sc.null()? {
                                return Ok(());
                            }
                            sc.object(|sc, dk| match dk {
                                b"content" if want_text => text_into(sc, info),
                                b"content" => {
                                    info.content |= sites.answer(sc)?;
                                    Ok(())
                                }
                                b"reasoning_content" | b"reasoning" | b"tool_calls" => {
                                    info.other_tokens |= sc.non_empty()?;
                                    Ok(())
                                }
                                _ => sc.skip_value(0),
                            })
                        }
                        b"text" if want_text => text_into(sc, info),
                        b"text" => {
                            info.content |= sites.answer(sc)?;
                            Ok(())
                        }
                        b"finish_reason" => {
                            if let Some(r) = sc.opt_str()? {
                                info.finish = Some(FinishReason::parse(&r));
                            }
                            Ok(())
                        }
                        _ => sc.skip_value(0),
                    })
                })?;
            }
            Ok(())
        }
        b"usage" => {
            if !sc.null()? {
                sc.object(|sc, uk| match uk {
                    b"completion_tokens" => {
                        info.completion_tokens = sc.opt_u32()?;
                        Ok(())
                    }
                    b"prompt_tokens" => {
                        info.prompt_tokens = sc.opt_u32()?;
                        Ok(())
                    }
                    b"prompt_tokens_details" => {
                        if !sc.null()? {
                            sc.object(|sc, dk| match dk {
                                b"cached_tokens" => {
                                    if let Some(n) = sc.opt_u32()? {
                                        info.cached_tokens = Some(n);
                                    }
                                    Ok(())
                                }
                                _ => sc.skip_value(0),
                            })?;
                        }
                        Ok(())
                    }
                    _ => sc.skip_value(0),
                })?;
            }
            Ok(())
        }
        // llama.cpp's own figures, beside `usage` (and on the finish
        // chunk when usage was not asked for).
        b"timings" => {
            if !sc.null()? {
                sc.object(|sc, tk| match tk {
                    b"cache_n" => {
                        let n = sc.opt_u32()?;
                        info.cached_tokens = info.cached_tokens.or(n);
                        Ok(())
                    }
                    _ => sc.skip_value(0),
                })?;
            }
            Ok(())
        }
        b"error" => {
            info.error |= !sc.null()?;
            if info.error {
                sc.skip_value(0)?;
            }
            Ok(())
        }
        _ => sc.skip_value(0),
    }
}

/// Answer text: a string is decoded and appended to `info.text`
/// (content parts and other shapes only mark the chunk as content).
/// Leniently: text a single request would accept (a lone surrogate
/// escape, bytes that are not UTF-8) never fails a session's turn; it
/// is kept with U+FFFD in its place.
fn text_into<'a>(sc: &mut Scanner<'a>, info: &mut ChunkInfo<'a>) -> Res<()> {
    if sc.peek()? != b'"' {
        info.content |= sc.non_empty()?;
        return Ok(());
    }
    let at = sc.i;
    let (raw, escaped) = sc.raw_str()?;
    let s: Cow<'a, str> = if escaped {
        match serde_json::from_slice::<String>(&sc.b[at..sc.i]) {
            Ok(s) => Cow::Owned(s),
            Err(_) => Cow::Owned(String::from_utf8_lossy(raw).into_owned()),
        }
    } else {
        String::from_utf8_lossy(raw)
    };
    if !s.is_empty() {
        info.content = true;
        match &mut info.text {
            None => info.text = Some(s),
            Some(t) => t.to_mut().push_str(&s),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
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
    fn answer_text_is_decoded_only_when_asked_for() {
        let data = br#"{"choices":[{"delta":{"content":"h\u00e9 \"q\"","reasoning_content":"not this"}}]}"#;
        let Payload::Chunk(c) = parse_full(data, false, true).unwrap() else {
            panic!()
        };
        assert_eq!(c.text.as_deref(), Some("hé \"q\""));
        assert!(c.content && c.other_tokens);
        let Payload::Chunk(c) = parse_full(data, false, false).unwrap() else {
            panic!()
        };
        assert_eq!(c.text, None, "not decoded unless asked for");
        assert!(c.content);
        let Payload::Chunk(c) = parse_full(
            br#"{"choices":[{"text":" more","finish_reason":null}]}"#,
            false,
            true,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.text.as_deref(), Some(" more"));
        let Payload::Chunk(c) = parse_full(
            br#"{"choices":[{"delta":{"content":""}},{"delta":{"content":[{"type":"text"}]}}]}"#,
            false,
            true,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.text, None);
        assert!(c.content, "content parts still count as content");
    }

    #[test]
    fn undecodable_answer_text_never_fails_a_turn() {
        let Payload::Chunk(c) = parse_full(
            br#"{"choices":[{"delta":{"content":"a\ud800b"}}]}"#,
            false,
            true,
        )
        .unwrap() else {
            panic!()
        };
        assert!(c.content);
        assert!(c.text.is_some());
        let Payload::Chunk(c) = parse_full(
            b"{\"choices\":[{\"delta\":{\"content\":\"x\xffy\"}}]}",
            false,
            true,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.text.as_deref(), Some("x\u{fffd}y"));
    }

    #[test]
    fn cached_tokens_from_usage_details_or_llamacpp_timings() {
        let c = chunk(
            r#"{"choices":[],"usage":{"completion_tokens":16,"prompt_tokens":121,"total_tokens":137,"prompt_tokens_details":{"cached_tokens":81}},"timings":{"cache_n":80,"prompt_n":40}}"#,
        );
        assert_eq!((c.prompt_tokens, c.cached_tokens), (Some(121), Some(81)));
        let t = chunk(
            r#"{"choices":[{"finish_reason":"length","index":0,"delta":{}}],"timings":{"cache_n":120,"prompt_n":1}}"#,
        );
        assert_eq!(t.cached_tokens, Some(120));
        let n = chunk(r#"{"usage":{"prompt_tokens":3,"prompt_tokens_details":null}}"#);
        assert_eq!(n.cached_tokens, None);
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

    /// JSON for a chunk built from parts, keys in the given order.
    fn chunk_json(parts: &[(String, String)]) -> String {
        let body: Vec<String> = parts.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    }

    pub(crate) fn strategy() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let text = prop_oneof![
            Just("\"\"".to_string()),
            Just("null".to_string()),
            Just("\"hi\"".to_string()),
            Just("\"h\\\"i\\\\ \\u00e9\"".to_string()),
            Just("\"é€ 😀\"".to_string()),
            Just("[]".to_string()),
            Just("[{\"type\":\"text\",\"text\":\"x\"}]".to_string()),
            Just("{\"a\":1}".to_string()),
            Just("7".to_string()),
        ];
        let finish = prop_oneof![
            Just("null".to_string()),
            Just("\"stop\"".to_string()),
            Just("\"length\"".to_string()),
            Just("\"tool_calls\"".to_string()),
            Just("\"weird\"".to_string()),
        ];
        let extra = prop_oneof![
            Just(("logprobs".to_string(), "null".to_string())),
            Just(("index".to_string(), "0".to_string())),
            Just((
                "x\\\"y".to_string(),
                "[1,2.5e3,-4,true,false,{\"k\":[null]}]".to_string()
            )),
        ];
        let delta = (
            text.clone(),
            text.clone(),
            text.clone(),
            text.clone(),
            any::<[bool; 4]>(),
        )
            .prop_map(|(c, rc, r, tc, on)| {
                let mut p = Vec::new();
                if on[0] {
                    p.push(("content".to_string(), c));
                }
                if on[1] {
                    p.push(("reasoning_content".to_string(), rc));
                }
                if on[2] {
                    p.push(("reasoning".to_string(), r));
                }
                if on[3] {
                    p.push(("tool_calls".to_string(), tc));
                }
                chunk_json(&p)
            });
        let choice = (
            prop::option::of(delta),
            prop::option::of(text.clone()),
            prop::option::of(finish),
            prop::option::of(extra.clone()),
        )
            .prop_map(|(d, t, f, e)| {
                let mut p = Vec::new();
                if let Some(d) = d {
                    p.push(("delta".to_string(), d));
                }
                if let Some(t) = t {
                    p.push(("text".to_string(), t));
                }
                if let Some(f) = f {
                    p.push(("finish_reason".to_string(), f));
                }
                if let Some(e) = e {
                    p.push(e);
                }
                chunk_json(&p)
            });
        let usage = prop_oneof![
            Just("null".to_string()),
            (0u32..100_000, 0u32..100_000).prop_map(|(a, b)| format!(
                "{{\"prompt_tokens\":{a},\"completion_tokens\":{b},\"total_tokens\":{}}}",
                a as u64 + b as u64
            )),
        ];
        (
            prop::collection::vec(prop_oneof![choice, Just("null".to_string())], 0..3),
            prop::option::of(usage),
            prop::option::of(prop_oneof![
                Just("null".to_string()),
                Just("{\"message\":\"e\"}".to_string())
            ]),
            prop::option::of(prop_oneof![
                Just("\"chatcmpl-1\"".to_string()),
                Just("\"id\\u0041\"".to_string())
            ]),
            prop::option::of(extra),
            any::<u64>(),
        )
            .prop_map(|(choices, usage, error, id, extra, order)| {
                let mut p = vec![("choices".to_string(), format!("[{}]", choices.join(",")))];
                if let Some(u) = usage {
                    p.push(("usage".to_string(), u));
                }
                if let Some(e) = error {
                    p.push(("error".to_string(), e));
                }
                if let Some(i) = id {
                    p.push(("id".to_string(), i));
                }
                if let Some(x) = extra {
                    p.push(x);
                }
                p.push(("model".to_string(), "\"m\"".to_string()));
                // Shuffle deterministically by the drawn number.
                let n = p.len();
                for i in (1..n).rev() {
                    p.swap(i, (order as usize / (i + 1)) % (i + 1));
                }
                chunk_json(&p)
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// The scanner reads exactly what serde reads.
        #[test]
        fn scanner_agrees_with_serde(json in strategy()) {
            let fast = parse(json.as_bytes()).unwrap();
            let slow = crate::client::chunk_reference::parse(json.as_bytes()).unwrap();
            proptest::prop_assert_eq!(fast, slow, "{}", json);
        }

        /// A chunk cut anywhere is an error, never a silently wrong read.
        #[test]
        fn every_prefix_is_an_error(json in strategy()) {
            let b = json.as_bytes();
            for cut in 1..b.len() {
                proptest::prop_assert!(parse(&b[..cut]).is_err(), "prefix {:?}", &json[..cut.min(json.len())]);
            }
        }

        /// Arbitrary bytes never panic, and whatever serde accepts the
        /// scanner reads the same way.
        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let fast = parse(&bytes);
            if let Ok(slow) = crate::client::chunk_reference::parse(&bytes) {
                proptest::prop_assert_eq!(fast.unwrap(), slow);
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(parse(b"{not json").is_err());
        assert!(parse(br#"{"choices":[{"delta":{"content":"#).is_err());
    }
}
