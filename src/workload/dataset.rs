//! Dataset files: the seed's JSON array of `{prompt_content,
//! cut_chat_history}`, ShareGPT dumps, and JSONL chat logs (see
//! [`Format`]); the format is detected when not given.
//!
//! A seed sample becomes one chat: `prompt_content` is the system message,
//! then every turn of `cut_chat_history` except system turns (the seed
//! skips those). Extra fields on a sample or a turn are ignored, as the
//! seed documents. Every mistake is reported with the file, the sample
//! index and the field path, because datasets are exported by scripts and
//! a bare "invalid type" at byte 4,812,113 helps nobody.

use crate::workload::Format;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// One sample as the file spells it.
#[derive(Debug, Deserialize)]
struct RawSample {
    prompt_content: String,
    cut_chat_history: Vec<Message>,
}

/// One conversation, ready to send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conversation {
    pub messages: Vec<Message>,
    /// This sample's own `max_tokens` (a JSONL line's, a synthetic
    /// sample's drawn output length); `None`: the run's.
    pub max_tokens: Option<u32>,
}

impl Conversation {
    /// Characters of text sent, for the rough input-token estimate
    /// (4 characters a token) shown where the server reports no usage.
    pub fn text_chars(&self) -> usize {
        self.messages
            .iter()
            .map(|m| m.content.chars().count())
            .sum()
    }
}

#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("{path}: cannot read dataset: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: invalid JSON: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: expected a JSON array of samples like {example}, found {found}")]
    NotArray {
        path: PathBuf,
        found: String,
        example: &'static str,
    },
    #[error("{path}:{line}:{column}: sample {index}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        index: usize,
        field: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: sample {index}: field `{field}`: {message}")]
    Sample {
        path: PathBuf,
        index: usize,
        field: String,
        message: String,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{path}: cannot tell the dataset's format: {message} (give --dataset-format seed|sharegpt|jsonl)"
    )]
    Unknown { path: PathBuf, message: String },
    #[error("{path}: dataset is empty: add at least one sample")]
    Empty { path: PathBuf },
    /// A synthetic spec or tokenizer that cannot be used.
    #[error("{0}")]
    Setting(String),
}

/// A dataset file read: its conversations, its format, and how many of
/// its entries had nothing to send (ShareGPT entries without a human turn).
#[derive(Debug)]
pub struct Loaded {
    pub conversations: Vec<Conversation>,
    pub format: Format,
    pub skipped: usize,
    /// ShareGPT entries with several human turns (a notice says that
    /// `--sessions` would replay them turn by turn).
    pub multi_turn: usize,
}

const SEED_EXAMPLE: &str = r#"[{"prompt_content": "...", "cut_chat_history": [...]}]"#;
const SHAREGPT_EXAMPLE: &str = r#"[{"conversations": [{"from": "human", "value": "..."}]}]"#;

/// Parse dataset bytes in `format` (detected when `None`), one request
/// per sample (sessions are read by the session module's `load`).
pub fn parse_as(path: &Path, bytes: &[u8], format: Option<Format>) -> Result<Loaded, DatasetError> {
    let format = match format {
        Some(f) => f,
        None => detect(path, bytes)?,
    };
    let mut multi_turn = 0;
    let (conversations, skipped) = match format {
        Format::Seed => (parse(path, bytes)?, 0),
        Format::Sharegpt => {
            let entries = sharegpt_entries(path, bytes)?;
            multi_turn = entries
                .iter()
                .filter(|e| e.iter().filter(|m| m.role == Role::User).count() > 1)
                .count();
            last_human_turns(path, entries)?
        }
        Format::Jsonl => (jsonl_conversations(jsonl_lines(path, bytes)?), 0),
    };
    Ok(Loaded {
        conversations,
        format,
        skipped,
        multi_turn,
    })
}

/// One request per JSONL line: its messages (a whole-session line: its
/// first turn).
pub(crate) fn jsonl_conversations(lines: Vec<JsonlEntry>) -> Vec<Conversation> {
    lines
        .into_iter()
        .map(|l| Conversation {
            messages: match l.turns {
                Some(mut t) => vec![t.swap_remove(0)],
                None => l.messages,
            },
            max_tokens: l.max_tokens,
        })
        .collect()
}

/// `[` starts a JSON array: ShareGPT when its first sample's keys say
/// `conversations` before any seed key, else the seed's format. `{` starts
/// JSONL.
pub(crate) fn detect(path: &Path, bytes: &[u8]) -> Result<Format, DatasetError> {
    let unknown = |message: &str| DatasetError::Unknown {
        path: path.to_owned(),
        message: message.into(),
    };
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') => Ok(Format::Jsonl),
        Some(b'[') => {
            let head = &bytes[..bytes.len().min(1 << 20)];
            let at = |needle: &[u8]| memchr::memmem::find(head, needle);
            match (
                at(b"\"conversations\""),
                at(b"\"prompt_content\"").or(at(b"\"cut_chat_history\"")),
            ) {
                (Some(c), Some(s)) if c < s => Ok(Format::Sharegpt),
                (Some(_), None) => Ok(Format::Sharegpt),
                _ => Ok(Format::Seed),
            }
        }
        None => Err(DatasetError::Empty {
            path: path.to_owned(),
        }),
        Some(_) => Err(unknown(
            "it starts with neither '[' (a JSON array) nor '{' (JSONL)",
        )),
    }
}

/// Parse dataset bytes; `path` only labels errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Conversation>, DatasetError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let raw: Vec<RawSample> = match serde_path_to_error::deserialize(de) {
        Ok(v) => v,
        Err(e) => return Err(describe(path, e, SEED_EXAMPLE)),
    };
    if raw.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(raw.into_iter().map(convert).collect())
}

fn convert(s: RawSample) -> Conversation {
    let mut messages = Vec::with_capacity(s.cut_chat_history.len() + 1);
    messages.push(Message {
        role: Role::System,
        content: s.prompt_content,
    });
    messages.extend(
        s.cut_chat_history
            .into_iter()
            .filter(|t| t.role != Role::System),
    );
    Conversation {
        messages,
        max_tokens: None,
    }
}

#[derive(Debug, Deserialize)]
struct ShareGptSample {
    conversations: Vec<ShareGptTurn>,
}

#[derive(Debug, Deserialize)]
struct ShareGptTurn {
    from: String,
    value: String,
}

/// ShareGPT entries with their roles mapped (`human`/`user` to user,
/// `gpt`/`assistant`/`chatgpt`/`bard`/`model` to assistant, `system`);
/// an unknown role is an error naming the entry and the turn.
pub(crate) fn sharegpt_entries(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<Vec<Message>>, DatasetError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let raw: Vec<ShareGptSample> = match serde_path_to_error::deserialize(de) {
        Ok(v) => v,
        Err(e) => return Err(describe(path, e, SHAREGPT_EXAMPLE)),
    };
    let mut out = Vec::with_capacity(raw.len());
    for (index, sample) in raw.into_iter().enumerate() {
        let mut messages = Vec::with_capacity(sample.conversations.len());
        for (t, turn) in sample.conversations.into_iter().enumerate() {
            let role = match turn.from.as_str() {
                "human" | "user" => Role::User,
                "gpt" | "assistant" | "chatgpt" | "bard" | "model" => Role::Assistant,
                "system" => Role::System,
                other => {
                    return Err(DatasetError::Sample {
                        path: path.to_owned(),
                        index,
                        field: format!("conversations[{t}].from"),
                        message: format!("unknown speaker '{other}' (human, gpt or system)"),
                    });
                }
            };
            messages.push(Message {
                role,
                content: turn.value,
            });
        }
        out.push(messages);
    }
    Ok(out)
}

/// ShareGPT as single requests: each entry's turns up to its last human
/// turn. An entry without a human turn has nothing to ask and is skipped
/// (real dumps have some).
fn last_human_turns(
    path: &Path,
    entries: Vec<Vec<Message>>,
) -> Result<(Vec<Conversation>, usize), DatasetError> {
    let mut out = Vec::with_capacity(entries.len());
    let mut skipped = 0;
    for mut messages in entries {
        match messages.iter().rposition(|m| m.role == Role::User) {
            Some(i) => {
                messages.truncate(i + 1);
                out.push(Conversation {
                    messages,
                    max_tokens: None,
                });
            }
            None => skipped += 1,
        }
    }
    if out.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_owned(),
        });
    }
    Ok((out, skipped))
}

#[derive(Debug, Deserialize)]
struct JsonlLine {
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    /// A session's id (a string or a number) and this line's turn in it.
    #[serde(default)]
    session_id: Option<serde_json::Value>,
    #[serde(default)]
    turn: Option<u32>,
    /// A whole session on one line: its user turns, each a string or a
    /// `{"role", "content"}` message.
    #[serde(default)]
    turns: Option<Vec<serde_json::Value>>,
}

/// One JSONL line, checked.
pub(crate) struct JsonlEntry {
    pub(crate) line: usize,
    pub(crate) messages: Vec<Message>,
    pub(crate) max_tokens: Option<u32>,
    /// A session's turn: its id and number.
    pub(crate) key: Option<(String, u32)>,
    /// A whole session on one line: one message a turn.
    pub(crate) turns: Option<Vec<Message>>,
}

/// JSONL: one `{"messages": [...]}` or `{"prompt": "..."}` per line, with
/// an optional `max_tokens`; other keys (ids, timestamps) are ignored and
/// blank lines skipped. A session's turn adds `session_id` and `turn`; a
/// whole session is `{"turns": [...]}`. Errors name the line.
pub(crate) fn jsonl_lines(path: &Path, bytes: &[u8]) -> Result<Vec<JsonlEntry>, DatasetError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DatasetError::Line {
        path: path.to_owned(),
        line: bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1,
        message: "not valid UTF-8".into(),
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| DatasetError::Line {
            path: path.to_owned(),
            line: line_no,
            message,
        };
        let de = &mut serde_json::Deserializer::from_str(line);
        let raw: JsonlLine = serde_path_to_error::deserialize(de).map_err(|e| {
            use serde_json::error::Category;
            let msg = strip_position(&e.inner().to_string());
            match e.inner().classify() {
                Category::Data => bad(format!("field `{}`: {msg}", e.path())),
                _ => bad(format!(
                    "invalid JSON line (column {}): {msg}",
                    e.inner().column()
                )),
            }
        })?;
        if raw.max_tokens == Some(0) {
            return Err(bad("field `max_tokens`: must be at least 1".into()));
        }
        let key = match (&raw.session_id, raw.turn) {
            (None, None) => None,
            (Some(id), Some(turn)) => {
                if turn == 0 {
                    return Err(bad("field `turn`: turns count from 1".into()));
                }
                let id = match id {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    other => {
                        return Err(bad(format!(
                            "field `session_id`: expected a string or a number, found {other}"
                        )));
                    }
                };
                Some((id, turn))
            }
            (Some(_), None) => {
                return Err(bad(
                    "has `session_id` but no `turn`: give the turn's number (1, 2, 3…)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "has `turn` but no `session_id`: say which session the turn is of".into(),
                ));
            }
        };
        if let Some(turns) = raw.turns {
            if key.is_some() || raw.messages.is_some() || raw.prompt.is_some() {
                return Err(bad(
                    "has `turns` (a whole session) and `session_id`, `messages` or `prompt`: give one form"
                        .into(),
                ));
            }
            if turns.is_empty() {
                return Err(bad(
                    "field `turns`: empty session: give at least one turn".into()
                ));
            }
            let turns = turns
                .into_iter()
                .enumerate()
                .map(|(t, v)| {
                    let message = match v {
                        serde_json::Value::String(content) => Message {
                            role: Role::User,
                            content,
                        },
                        v => serde_json::from_value::<Message>(v).map_err(|e| {
                            bad(format!(
                                "field `turns[{t}]`: {} (a turn is a string or a {{\"role\", \"content\"}} message)",
                                strip_position(&e.to_string())
                            ))
                        })?,
                    };
                    Ok(message)
                })
                .collect::<Result<Vec<_>, DatasetError>>()?;
            out.push(JsonlEntry {
                line: line_no,
                messages: Vec::new(),
                max_tokens: raw.max_tokens,
                key: None,
                turns: Some(turns),
            });
            continue;
        }
        let messages = match (raw.messages, raw.prompt) {
            (Some(_), Some(_)) => {
                return Err(bad("has both `messages` and `prompt`: give one".into()));
            }
            (None, None) => {
                return Err(bad(
                    "needs `messages` (a list of {\"role\", \"content\"}) or `prompt` (a string)"
                        .into(),
                ));
            }
            (Some(m), None) if m.is_empty() => {
                return Err(bad(
                    "field `messages`: empty: give at least one message".into()
                ));
            }
            (Some(m), None) => m,
            (None, Some(p)) => vec![Message {
                role: Role::User,
                content: p,
            }],
        };
        out.push(JsonlEntry {
            line: line_no,
            messages,
            max_tokens: raw.max_tokens,
            key,
            turns: None,
        });
    }
    if out.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

fn describe(
    path: &Path,
    e: serde_path_to_error::Error<serde_json::Error>,
    example: &'static str,
) -> DatasetError {
    use serde_json::error::Category;
    use serde_path_to_error::Segment;
    // `[3]` for sequence steps, `.key` for map keys; the first step is the
    // sample index and is reported separately.
    let field: String = e
        .path()
        .iter()
        .skip(1)
        .map(|seg| match seg {
            Segment::Seq { index } => format!("[{index}]"),
            Segment::Map { key } | Segment::Enum { variant: key } => format!(".{key}"),
            Segment::Unknown => ".?".to_string(),
        })
        .collect();
    let inner = e.inner();
    let (line, column) = (inner.line(), inner.column());
    let path = path.to_owned();
    match inner.classify() {
        Category::Io | Category::Syntax | Category::Eof => DatasetError::Syntax {
            path,
            line,
            column,
            message: strip_position(&inner.to_string()),
        },
        Category::Data => {
            let index = e.path().iter().next().and_then(|seg| match seg {
                Segment::Seq { index } => Some(*index),
                _ => None,
            });
            match index {
                None => DatasetError::NotArray {
                    path,
                    example,
                    found: strip_position(&inner.to_string())
                        .trim_start_matches("invalid type: ")
                        .split(", expected")
                        .next()
                        .unwrap_or("something else")
                        .to_string(),
                },
                Some(index) => {
                    let field = field.trim_start_matches('.').to_string();
                    let message = strip_position(&inner.to_string());
                    DatasetError::Invalid {
                        path,
                        index,
                        field: if field.is_empty() {
                            "(the sample itself)".into()
                        } else {
                            field
                        },
                        line,
                        column,
                        message,
                    }
                }
            }
        }
    }
}

/// serde_json appends " at line L column C"; we print the position ourselves.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        parse(Path::new("d.json"), json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn converts_like_the_seed() {
        let convs = parse(
            Path::new("d.json"),
            br#"[{"prompt_content":"sys","isAssistantMessage":true,"cut_chat_history":[
                {"role":"system","content":"skipped"},
                {"role":"user","content":"hi","turnXp":3},
                {"role":"assistant","content":"hello"},
                {"role":"user","content":"bye"}]}]"#,
        )
        .unwrap();
        let roles: Vec<_> = convs[0].messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::User]
        );
        assert_eq!(convs[0].messages[0].content, "sys");
        assert_eq!(convs[0].text_chars(), 3 + 2 + 5 + 3);
    }

    #[test]
    fn each_mistake_names_the_place() {
        let cases: &[(&str, &[&str])] = &[
            ("", &["d.json:1:0", "invalid JSON", "EOF"]),
            (
                "[{\"prompt_content\": \"a\",\n ]",
                &["d.json:2:", "invalid JSON"],
            ),
            ("{\"a\": 1}", &["expected a JSON array", "found map"]),
            ("[]", &["dataset is empty"]),
            (
                r#"[{"prompt_content":"a","cut_chat_history":[]},{"cut_chat_history":[]}]"#,
                &["sample 1", "missing field `prompt_content`"],
            ),
            (
                r#"[{"prompt_content":"a","cut_chat_history":[]},{"prompt_content":"a"}]"#,
                &["sample 1", "missing field `cut_chat_history`"],
            ),
            (
                r#"[{"prompt_content":5,"cut_chat_history":[]}]"#,
                &[
                    "sample 0",
                    "field `prompt_content`",
                    "invalid type: integer",
                ],
            ),
            (
                r#"[{"prompt_content":"a","cut_chat_history":"hi"}]"#,
                &[
                    "sample 0",
                    "field `cut_chat_history`",
                    "expected a sequence",
                ],
            ),
            (
                r#"[{"prompt_content":"a","cut_chat_history":[{"role":"user","content":"x"},{"role":"bot","content":"y"}]}]"#,
                &[
                    "sample 0",
                    "field `cut_chat_history[1].role`",
                    "unknown variant `bot`",
                ],
            ),
            (
                r#"[{"prompt_content":"a","cut_chat_history":[{"role":"user"}]}]"#,
                &["sample 0", "cut_chat_history[0]", "missing field `content`"],
            ),
            (
                r#"[{"prompt_content":"a","cut_chat_history":[{"role":"user","content":null}]}]"#,
                &[
                    "sample 0",
                    "cut_chat_history[0].content",
                    "invalid type: null",
                ],
            ),
            (
                "[1]",
                &["sample 0", "(the sample itself)", "invalid type: integer"],
            ),
        ];
        for (json, needles) in cases {
            let msg = err(json);
            for n in *needles {
                assert!(msg.contains(n), "{json:?}: {msg:?} lacks {n:?}");
            }
            assert!(msg.starts_with("d.json"), "{msg}");
        }
    }

    proptest::proptest! {
        /// Fuzz: any bytes either load or fail with a message that names
        /// the file; never a panic.
        #[test]
        fn any_bytes_load_or_explain(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Err(e) = parse(Path::new("f.json"), &bytes) {
                proptest::prop_assert!(e.to_string().starts_with("f.json"));
            }
        }

        /// Fuzz: structurally plausible JSON with wrong types in random
        /// places always names a sample index when it fails inside one.
        #[test]
        fn wrong_types_name_the_sample(
            n in 1usize..5,
            bad in 0usize..5,
            which in 0usize..4,
        ) {
            let bad = bad % n;
            let mut samples = Vec::new();
            for i in 0..n {
                let s = if i == bad {
                    match which {
                        0 => r#"{"prompt_content":1,"cut_chat_history":[]}"#,
                        1 => r#"{"prompt_content":"a","cut_chat_history":{}}"#,
                        2 => r#"{"prompt_content":"a","cut_chat_history":[{"role":"user","content":[]}]}"#,
                        _ => r#"{"prompt_content":"a","cut_chat_history":[{"role":"x","content":"y"}]}"#,
                    }
                } else {
                    r#"{"prompt_content":"a","cut_chat_history":[{"role":"user","content":"y"}]}"#
                };
                samples.push(s);
            }
            let json = format!("[{}]", samples.join(","));
            let e = parse(Path::new("f.json"), json.as_bytes()).unwrap_err().to_string();
            let needle = format!("sample {bad}:");
            proptest::prop_assert!(e.contains(&needle), "{}", e);
        }
    }
}
