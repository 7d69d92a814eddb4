//! The seed's dataset: a JSON array of `{prompt_content, cut_chat_history}`.
//!
//! Each sample becomes one chat: `prompt_content` is the system message,
//! then every turn of `cut_chat_history` except system turns (the seed
//! skips those). Extra fields on a sample or a turn are ignored, as the
//! seed documents. Every mistake is reported with the file, the sample
//! index and the field path, because datasets are exported by scripts and
//! a bare "invalid type" at byte 4,812,113 helps nobody.

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub messages: Vec<Message>,
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
    #[error(
        "{path}: expected a JSON array of samples like [{{\"prompt_content\": \"...\", \"cut_chat_history\": [...]}}], found {found}"
    )]
    NotArray { path: PathBuf, found: String },
    #[error("{path}:{line}:{column}: sample {index}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        index: usize,
        field: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: dataset is empty: add at least one sample")]
    Empty { path: PathBuf },
}

/// Load and convert a dataset file.
pub fn load(path: &Path) -> Result<Vec<Conversation>, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &bytes)
}

/// Parse dataset bytes; `path` only labels errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Conversation>, DatasetError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let raw: Vec<RawSample> = match serde_path_to_error::deserialize(de) {
        Ok(v) => v,
        Err(e) => return Err(describe(path, e)),
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
    Conversation { messages }
}

fn describe(path: &Path, e: serde_path_to_error::Error<serde_json::Error>) -> DatasetError {
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

    #[test]
    fn missing_file() {
        let e = load(Path::new("/nonexistent/x.json")).unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/x.json: cannot read dataset")
        );
    }
}
