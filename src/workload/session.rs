//! Sessions: conversations of several user turns, replayed turn by turn.
//!
//! A session is its user turns only. The model's answers are not taken
//! from the dataset: turn k is sent with the turns before it and **the
//! replies the server actually streamed** to them, so a server's prefix
//! cache sees exactly the history a real chat would hold (a replay that
//! pasted the dataset's recorded answers would never hit the KV of the
//! generated tokens). Pure: building sessions from parsed entries, and
//! the body of a turn from the replies so far.

use crate::workload::Format;
use crate::workload::dataset::{
    Conversation, DatasetError, JsonlEntry, Loaded, Message, Role, detect, jsonl_conversations,
    jsonl_lines, parse_as, sharegpt_entries,
};
use std::collections::HashMap;
use std::path::Path;

/// One user turn: the messages it adds (normally one user message; the
/// first turn may carry a system prompt or seeded history).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Turn {
    pub messages: Vec<Message>,
    /// This turn's own `max_tokens`; `None`: the run's.
    pub max_tokens: Option<u32>,
    /// The turn's new prompt tokens, counted with the run's tokenizer.
    pub new_tokens: Option<u32>,
}

/// A session: its turns, in order (at least one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Session {
    pub turns: Vec<Turn>,
}

impl Session {
    /// Turn `k` (0-based) as sent: every earlier turn followed by the
    /// reply the server gave it, then turn `k` itself.
    pub fn conversation(&self, k: usize, replies: &[String]) -> Conversation {
        let mut messages = Vec::new();
        for (j, turn) in self.turns[..=k].iter().enumerate() {
            messages.extend(turn.messages.iter().cloned());
            if j < k {
                messages.push(Message {
                    role: Role::Assistant,
                    content: replies.get(j).cloned().unwrap_or_default(),
                });
            }
        }
        Conversation {
            messages,
            max_tokens: self.turns[k].max_tokens,
        }
    }
}

/// The turn buckets results and metrics are split by: later turns of a
/// session should be cheaper on a server that caches prefixes. Bounded,
/// so a metric label never carries a session id or a raw turn number.
pub const TURN_BUCKETS: [&str; 3] = ["1", "2-4", "5+"];

/// The bucket of 1-based turn `turn`.
pub fn turn_bucket(turn: u32) -> usize {
    match turn {
        0 | 1 => 0,
        2..=4 => 1,
        _ => 2,
    }
}

/// One JSONL line that belongs to a session, as read.
#[derive(Debug)]
pub struct SessionLine {
    pub line: usize,
    /// `session_id` and `turn` (1-based), or a whole session (`turns`).
    pub key: Option<(String, u32)>,
    pub turns: Vec<Turn>,
}

/// Sessions from JSONL lines: a line with `turns` is a whole session; a
/// line with `session_id` and `turn` is one turn, and a session's turns
/// must come 1, 2, 3… in file order (other sessions' lines may come
/// between). A line with neither is a one-turn session.
pub fn from_lines(path: &Path, lines: Vec<SessionLine>) -> Result<Vec<Session>, DatasetError> {
    let mut out: Vec<Session> = Vec::new();
    let mut open: HashMap<String, (usize, u32)> = HashMap::new();
    for l in lines {
        let Some((id, turn)) = l.key else {
            out.push(Session { turns: l.turns });
            continue;
        };
        let bad = |message: String| DatasetError::Line {
            path: path.to_owned(),
            line: l.line,
            message,
        };
        match open.get_mut(&id) {
            None if turn != 1 => {
                return Err(bad(format!(
                    "session '{id}': turn {turn} comes before turn 1 (a session's turns go 1, 2, 3… in file order)"
                )));
            }
            None => {
                open.insert(id, (out.len(), 1));
                out.push(Session { turns: l.turns });
            }
            Some((at, last)) => {
                if turn != *last + 1 {
                    return Err(bad(format!(
                        "session '{id}': turn {turn} follows turn {last} (a session's turns go 1, 2, 3… in file order)"
                    )));
                }
                *last = turn;
                out[*at].turns.extend(l.turns);
            }
        }
    }
    if out.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// Sessions from ShareGPT entries (roles already mapped): each human
/// message starts a turn (consecutive ones share it), system messages
/// before the first go with it, and the recorded answers are dropped: the
/// server's own replace them. Entries without a human turn are skipped,
/// as for single-turn use; returns the sessions and how many were.
pub fn from_sharegpt(entries: Vec<Vec<Message>>) -> (Vec<Session>, usize) {
    let mut out = Vec::with_capacity(entries.len());
    let mut skipped = 0;
    for messages in entries {
        let mut turns: Vec<Turn> = Vec::new();
        let mut pending: Vec<Message> = Vec::new();
        let mut last_user = false;
        for m in messages {
            match m.role {
                Role::Assistant => last_user = false,
                Role::System => pending.push(m),
                Role::User => {
                    if last_user && pending.is_empty() {
                        turns
                            .last_mut()
                            .expect("a user turn was seen")
                            .messages
                            .push(m);
                    } else {
                        pending.push(m);
                        turns.push(Turn {
                            messages: std::mem::take(&mut pending),
                            ..Turn::default()
                        });
                    }
                    last_user = true;
                }
            }
        }
        if turns.is_empty() {
            skipped += 1;
        } else {
            out.push(Session { turns });
        }
    }
    (out, skipped)
}

/// Read dataset bytes as the run will send them: one request per sample,
/// or sessions when the file has them (JSONL with `session_id`/`turn` or
/// `turns`) or `sharegpt` asks for them. With sessions, the `Loaded`
/// conversations are their first turns (what a warm-up sends).
pub fn load(
    path: &Path,
    bytes: &[u8],
    format: Option<Format>,
    sharegpt: bool,
) -> Result<(Loaded, Option<Vec<Session>>), DatasetError> {
    let format = match format {
        Some(f) => f,
        None => detect(path, bytes)?,
    };
    let loaded = |s: &[Session], skipped| Loaded {
        conversations: s.iter().map(|s| s.conversation(0, &[])).collect(),
        format,
        skipped,
        multi_turn: 0,
    };
    match format {
        Format::Seed if sharegpt => Err(DatasetError::Setting(format!(
            "{}: the seed's format has one prompt per sample, no sessions (drop --sessions, or use ShareGPT or JSONL)",
            path.display()
        ))),
        Format::Sharegpt if sharegpt => {
            let (s, skipped) = from_sharegpt(sharegpt_entries(path, bytes)?);
            if s.is_empty() {
                return Err(DatasetError::Empty {
                    path: path.to_owned(),
                });
            }
            Ok((loaded(&s, skipped), Some(s)))
        }
        Format::Jsonl => {
            let lines = jsonl_lines(path, bytes)?;
            if lines.iter().any(|l| l.key.is_some() || l.turns.is_some()) {
                let lines = lines
                    .into_iter()
                    .map(|l| session_line(path, l))
                    .collect::<Result<Vec<_>, _>>()?;
                let s = from_lines(path, lines)?;
                return Ok((loaded(&s, 0), Some(s)));
            }
            if sharegpt {
                return Err(DatasetError::Setting(format!(
                    "{}: no line has `session_id` and `turn` or `turns`: nothing to replay as sessions (drop --sessions)",
                    path.display()
                )));
            }
            Ok((
                Loaded {
                    conversations: jsonl_conversations(lines),
                    format,
                    skipped: 0,
                    multi_turn: 0,
                },
                None,
            ))
        }
        _ => Ok((parse_as(path, bytes, Some(format))?, None)),
    }
}

/// A JSONL line as a session's part. A later turn's recorded answers
/// are dropped: the server's own replies take their place.
fn session_line(path: &Path, l: JsonlEntry) -> Result<SessionLine, DatasetError> {
    let max_tokens = l.max_tokens;
    if let Some(turns) = l.turns {
        return Ok(SessionLine {
            line: l.line,
            key: None,
            turns: turns
                .into_iter()
                .map(|m| Turn {
                    messages: vec![m],
                    max_tokens,
                    new_tokens: None,
                })
                .collect(),
        });
    }
    let own: Vec<Message> = match &l.key {
        Some((_, turn)) if *turn > 1 => l
            .messages
            .into_iter()
            .filter(|m| m.role != Role::Assistant)
            .collect(),
        _ => l.messages,
    };
    if own.is_empty()
        && let Some((id, turn)) = &l.key
    {
        return Err(DatasetError::Line {
            path: path.to_owned(),
            line: l.line,
            message: format!(
                "turn {turn} of session '{id}' has only the recorded answer: give the user's message"
            ),
        });
    }
    Ok(SessionLine {
        line: l.line,
        key: l.key,
        turns: vec![Turn {
            messages: own,
            max_tokens,
            new_tokens: None,
        }],
    })
}

/// Turns per session, for `metadata.json`.
pub fn turn_counts(sessions: &[Session]) -> impl Iterator<Item = u32> + '_ {
    sessions.iter().map(|s| s.turns.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: Role, content: &str) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }

    fn line(line: usize, id: &str, turn: u32, text: &str) -> SessionLine {
        SessionLine {
            line,
            key: Some((id.into(), turn)),
            turns: vec![Turn {
                messages: vec![msg(Role::User, text)],
                ..Turn::default()
            }],
        }
    }

    #[test]
    fn a_turn_carries_the_replies_the_server_gave() {
        let s = Session {
            turns: vec![
                Turn {
                    messages: vec![msg(Role::System, "be brief"), msg(Role::User, "hi")],
                    ..Turn::default()
                },
                Turn {
                    messages: vec![msg(Role::User, "and then?")],
                    max_tokens: Some(9),
                    ..Turn::default()
                },
            ],
        };
        let c = s.conversation(1, &["hello there".into()]);
        let got: Vec<(Role, &str)> = c
            .messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Role::System, "be brief"),
                (Role::User, "hi"),
                (Role::Assistant, "hello there"),
                (Role::User, "and then?")
            ]
        );
        assert_eq!(c.max_tokens, Some(9));
        assert_eq!(s.conversation(0, &[]).messages.len(), 2);
    }

    #[test]
    fn interleaved_lines_make_sessions_and_order_is_checked() {
        let p = Path::new("s.jsonl");
        let s = from_lines(
            p,
            vec![
                line(1, "a", 1, "a1"),
                line(2, "b", 1, "b1"),
                line(3, "a", 2, "a2"),
            ],
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].turns.len(), 2);
        assert_eq!(s[0].turns[1].messages[0].content, "a2");
        let e = from_lines(p, vec![line(1, "a", 1, "x"), line(2, "a", 3, "y")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("s.jsonl:2:") && e.contains("turn 3 follows turn 1"),
            "{e}"
        );
        let e = from_lines(p, vec![line(7, "z", 2, "x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("s.jsonl:7:") && e.contains("turn 2 comes before turn 1"),
            "{e}"
        );
    }

    #[test]
    fn sharegpt_entries_become_sessions_without_their_answers() {
        let (s, skipped) = from_sharegpt(vec![
            vec![
                msg(Role::System, "sys"),
                msg(Role::User, "q1"),
                msg(Role::Assistant, "recorded answer"),
                msg(Role::User, "q2"),
                msg(Role::User, "q2 more"),
                msg(Role::Assistant, "recorded"),
            ],
            vec![msg(Role::Assistant, "no question")],
        ]);
        assert_eq!(skipped, 1);
        assert_eq!(s.len(), 1);
        let t = &s[0].turns;
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].messages.len(), 2, "system goes with the first turn");
        assert_eq!(t[1].messages.len(), 2, "consecutive questions share a turn");
        assert!(
            t.iter()
                .flat_map(|t| &t.messages)
                .all(|m| m.role != Role::Assistant)
        );
    }

    #[test]
    fn turns_fall_in_three_buckets() {
        let b: Vec<usize> = (1..=7).map(turn_bucket).collect();
        assert_eq!(b, [0, 1, 1, 1, 2, 2, 2]);
    }
}
