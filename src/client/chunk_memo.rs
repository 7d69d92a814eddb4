//! Reading a stream's chunks with what the previous one taught: the
//! shared envelope and, past it, everything around the answer string are
//! skipped when their bytes agree (see [`Memo`]). Property tests below
//! hold the result equal to reading each chunk alone
//! ([`super::chunk::parse_full`]).

use super::chunk::{ChunkError, ChunkInfo, Payload, Sites, top_level};
use super::json_scan::Scanner;

/// What a stream's previous chunk looked like, so that the next one
/// skips the part it shares with it.
///
/// A server sends the same envelope on every chunk of a stream: `id`,
/// `object`, `created`, `model`, `system_fingerprint` come first and only
/// `choices` differs. Those members tell the client nothing (unless it
/// asks for the ids), yet were half of each chunk's scan. The memo keeps
/// the previous chunk's bytes and the offsets just after each of its
/// leading members that left the facts untouched; a chunk whose bytes
/// agree up to and past such an offset starts scanning there, as the
/// bytes before it would have brought the scanner to exactly that point
/// with exactly those (empty) facts. The byte *at* the offset must agree
/// too: a number's end is found by reading the byte after it.
///
/// Past the envelope, a stream's content chunks differ only inside their
/// one answer string: `"choices":[{"index":0,"delta":{"content":"` and
/// what follows the string are the same bytes each time. When the
/// previous chunk had exactly one place that could carry answer text,
/// and it held a string (the *hole*), the memo also keeps the facts the
/// rest of that chunk gave. A chunk that agrees with the previous one
/// up to and including the hole's opening quote, and again byte for
/// byte after its own string ends, is read by scanning that string
/// alone: the bytes around it bring the scanner to the same places with
/// the same facts, and only `content` (is the string non-empty) can
/// differ.
#[derive(Debug, Default)]
pub struct Memo {
    prev: Vec<u8>,
    /// Offsets in `prev` just after a leading member that left the facts
    /// empty, in increasing order.
    marks: Vec<usize>,
    /// The previous chunk's answer string, when it was the only place
    /// answer text could be.
    hole: Option<Hole>,
    /// Chunks read by scanning their answer string alone.
    pub(crate) through_hole: u64,
    /// Chunks whose scan started past the shared envelope.
    pub(crate) resumed: u64,
}

/// Where the previous chunk's answer string was, and what the rest of
/// the chunk said.
#[derive(Debug, Clone)]
struct Hole {
    /// The opening quote's offset.
    start: usize,
    /// Just past the closing quote.
    end: usize,
    /// The chunk's facts without the string (`content` false; no ids or
    /// text: the hole is only kept when neither is asked for).
    facts: ChunkInfo<'static>,
}

/// The hole, when exactly one place could carry text and it was a
/// string; `info`'s other facts are kept with it.
fn hole(sites: &Sites, info: &ChunkInfo<'_>) -> Option<Hole> {
    let (start, end) = sites.string.filter(|_| sites.count == 1)?;
    Some(Hole {
        start,
        end,
        facts: ChunkInfo {
            content: false,
            other_tokens: info.other_tokens,
            finish: info.finish,
            completion_tokens: info.completion_tokens,
            prompt_tokens: info.prompt_tokens,
            cached_tokens: info.cached_tokens,
            text: None,
            error: info.error,
            id: None,
            model: None,
        },
    })
}

/// [`super::chunk::parse_full`], skipping what the chunk shares with the stream's
/// previous one (see [`Memo`]); gives exactly what [`super::chunk::parse_full`] gives.
pub fn parse_memo<'a>(
    data: &'a [u8],
    want_ids: bool,
    want_text: bool,
    memo: &mut Memo,
) -> Result<Payload<'a>, ChunkError> {
    let trimmed = data.trim_ascii();
    if trimmed == b"[DONE]" {
        return Ok(Payload::Done);
    }
    // With the ids wanted, `id` and `model` are facts: scan them (no
    // envelope skipped). With the text wanted, the answer string is
    // decoded, not just looked at (no hole).
    let same = if want_ids {
        0
    } else {
        common_prefix(trimmed, &memo.prev)
    };
    let plain = !want_ids && !want_text;
    if plain
        && let Some(h) = memo.hole.take_if(|h| same > h.start)
        && let Some((info, end)) = through_hole(trimmed, &memo.prev, &h)
    {
        memo.prev.clear();
        memo.prev.extend_from_slice(trimmed);
        // Marks past the hole moved with the string's length.
        memo.marks.retain(|&m| m <= h.start);
        memo.hole = Some(Hole { end, ..h });
        memo.through_hole += 1;
        return Ok(Payload::Chunk(info));
    }
    let mut sc = Scanner { b: trimmed, i: 0 };
    let mut info = ChunkInfo::default();
    let mut sites = Sites::default();
    let mut marks = std::mem::take(&mut memo.marks);
    let resume = if want_ids {
        None
    } else {
        marks.iter().rposition(|&m| m < same)
    };
    let r = match resume {
        Some(k) => {
            sc.i = marks[k];
            marks.truncate(k + 1);
            memo.resumed += 1;
            let (sc, i, m, s) = (&mut sc, &mut info, &mut marks, &mut sites);
            top_level(sc, i, want_ids, want_text, true, m, s)
        }
        None => {
            marks.clear();
            let (sc, i, m, s) = (&mut sc, &mut info, &mut marks, &mut sites);
            top_level(sc, i, want_ids, want_text, false, m, s)
        }
    };
    match r {
        Ok(()) => {
            memo.prev.clear();
            memo.prev.extend_from_slice(trimmed);
            memo.marks = marks;
            memo.hole = if plain { hole(&sites, &info) } else { None };
            Ok(Payload::Chunk(info))
        }
        Err(e) => {
            // Nothing of a broken chunk is kept.
            memo.prev.clear();
            memo.hole = None;
            Err(e)
        }
    }
}

/// The chunk read through the previous chunk's hole (see [`Memo`]), and
/// where its own string ends; `None` when it cannot be (the string is
/// broken, or the bytes after it differ), and the chunk is scanned.
fn through_hole<'a>(data: &'a [u8], prev: &[u8], h: &Hole) -> Option<(ChunkInfo<'a>, usize)> {
    let mut sc = Scanner {
        b: data,
        i: h.start,
    };
    let content = sc.non_empty().ok()?;
    (data[sc.i..] == prev[h.end..]).then(|| {
        let mut info = h.facts.clone();
        info.content = content;
        (info, sc.i)
    })
}

/// How many leading bytes `a` and `b` share.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().expect("eight bytes"));
        let y = u64::from_le_bytes(b[i..i + 8].try_into().expect("eight bytes"));
        if x != y {
            return i + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..n]
        .iter()
        .zip(&b[i..n])
        .take_while(|(x, y)| x == y)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::chunk::parse_full;
    use crate::client::chunk::tests::strategy;

    proptest::proptest! {
        /// A stream read with the memo gives, chunk by chunk, exactly
        /// what each chunk read alone gives: the same facts, the same
        /// errors at the same bytes. The stream is one envelope with small
        /// changes (a digit more, a key moved, a byte broken), as servers
        /// send and as they break.
        #[test]
        fn the_memo_changes_nothing(
            base in strategy(),
            edits in proptest::collection::vec((0usize..400, 0u8..6, proptest::prelude::any::<u8>()), 1..12),
            wants in proptest::collection::vec(proptest::prelude::any::<(bool, bool)>(), 12),
        ) {
            let mut memo = Memo::default();
            let mut cur = base.into_bytes();
            for (k, (at, op, byte)) in edits.into_iter().enumerate() {
                let (want_ids, want_text) = wants[k];
                let alone = parse_full(&cur, want_ids, want_text);
                let with = parse_memo(&cur, want_ids, want_text, &mut memo);
                proptest::prop_assert_eq!(&with, &alone, "{:?}", String::from_utf8_lossy(&cur));
                // The next chunk: this one with a small change.
                let at = at % (cur.len() + 1);
                match op {
                    0 if at < cur.len() => cur[at] = byte,
                    1 => cur.insert(at, b"0123456789 \",\"x"[byte as usize % 15]),
                    2 if at < cur.len() => { cur.remove(at); }
                    3 => cur.splice(at..at, b"\"k\":1,".iter().copied()).for_each(drop),
                    _ => {}
                }
            }
        }

        /// Chunks that differ only in their answer string (any bytes
        /// there, escapes and stray quotes included), now and then in
        /// what follows it, read with the memo exactly as alone.
        #[test]
        fn the_hole_changes_nothing(
            steps in proptest::collection::vec(
                (proptest::collection::vec(proptest::sample::select(vec![
                    "a", "é", " ", "\\", "\"", "\\\"", "\\u00e9", "}", "]", ",",
                ]), 0..6), 0u8..4, proptest::prelude::any::<(bool, bool)>()),
                1..16,
            ),
        ) {
            let mut memo = Memo::default();
            for (text, tail, (want_ids, want_text)) in steps {
                let text: String = text.concat();
                let value = match tail {
                    3 => "null".to_string(),
                    _ => format!("\"{text}\""),
                };
                let finish = if tail == 1 { "\"stop\"" } else { "null" };
                let usage = if tail == 2 { r#","usage":{"completion_tokens":3}"# } else { "" };
                let chunk = format!(
                    r#"{{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":{value}}},"finish_reason":{finish}}}]{usage}}}"#
                );
                let alone = parse_full(chunk.as_bytes(), want_ids, want_text);
                let with = parse_memo(chunk.as_bytes(), want_ids, want_text, &mut memo);
                proptest::prop_assert_eq!(&with, &alone, "{}", chunk);
            }
        }
    }

    /// A real stream: the envelope is skipped from the second chunk on,
    /// and a chunk that differs inside the envelope (a longer `created`)
    /// is still read whole.
    #[test]
    fn the_memo_skips_the_shared_envelope() {
        let env = |created: &str, content: &str| {
            format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":{created},"model":"m","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}]}}"#
            )
        };
        let mut memo = Memo::default();
        let a = env("17", "a");
        assert!(
            matches!(parse_memo(a.as_bytes(), false, false, &mut memo), Ok(Payload::Chunk(c)) if c.content)
        );
        // id, object, created, model: four leading members marked.
        assert_eq!(memo.marks.len(), 4);
        let b = env("17", "");
        assert!(
            matches!(parse_memo(b.as_bytes(), false, false, &mut memo), Ok(Payload::Chunk(c)) if !c.content)
        );
        let c = env("170", "c");
        assert!(
            matches!(parse_memo(c.as_bytes(), false, false, &mut memo), Ok(Payload::Chunk(c)) if c.content)
        );
        // With the ids wanted, they are read, memo or not.
        let d = env("170", "d");
        match parse_memo(d.as_bytes(), true, false, &mut memo) {
            Ok(Payload::Chunk(c)) => assert_eq!(c.id.as_deref(), Some("chatcmpl-1")),
            other => panic!("{other:?}"),
        }
        let broken = env("170", "e").replace("\"model\"", "\"model\"x");
        assert!(parse_memo(broken.as_bytes(), false, false, &mut memo).is_err());
        assert!(parse_memo(b"[DONE]", false, false, &mut memo).is_ok());
    }

    /// A session turn wants the answer's text: no hole then, but the
    /// envelope is still skipped, and the text is read whole.
    #[test]
    fn with_the_text_wanted_the_envelope_is_still_skipped() {
        let env = |content: &str| {
            format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":17,"model":"m","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}]}}"#
            )
        };
        let mut memo = Memo::default();
        for (k, word) in ["Hel", "lo", " there"].into_iter().enumerate() {
            let c = env(word);
            let got = parse_memo(c.as_bytes(), false, true, &mut memo);
            assert_eq!(got, parse_full(c.as_bytes(), false, true));
            match got {
                Ok(Payload::Chunk(i)) => assert_eq!(i.text.as_deref(), Some(word)),
                other => panic!("{other:?}"),
            }
            assert_eq!(memo.resumed, k as u64, "chunk {k}");
        }
        assert_eq!(memo.through_hole, 0);
    }

    /// A stream recorded from llama.cpp's `llama-server`: `choices` comes
    /// first and the envelope after it, so no envelope member is skipped,
    /// but every content chunk after the first is read through the hole,
    /// and each reads as it does alone.
    #[test]
    fn a_llamacpp_stream_is_read_through_the_hole() {
        let stream = include_str!("../../tests/fixtures/streams/llamacpp-chat.sse");
        let mut memo = Memo::default();
        let mut content = 0;
        for data in stream.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let alone = parse_full(data.as_bytes(), false, false);
            if matches!(&alone, Ok(Payload::Chunk(c)) if c.content) {
                content += 1;
            }
            let with = parse_memo(data.as_bytes(), false, false, &mut memo);
            assert_eq!(with, alone, "{data}");
        }
        assert_eq!(content, 12);
        assert_eq!(memo.through_hole, content - 1);
    }

    /// A stream's content chunks are read through the hole: only the
    /// answer string is scanned, and the facts are a full scan's. A
    /// chunk whose bytes after the string differ (the finish chunk), or
    /// whose answer is not a string, is scanned whole.
    #[test]
    fn content_chunks_are_read_through_the_hole() {
        let env = |content: &str, finish: &str| {
            format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":17,"model":"m","choices":[{{"index":0,"delta":{{"content":{content}}},"finish_reason":{finish}}}]}}"#
            )
        };
        let stream = [
            (env(r#""""#, "null"), false),
            (env(r#""Hel""#, "null"), true),
            (env(r#""lo \"you\"""#, "null"), true),
            (env(r#""""#, "null"), true),
            (env(r#""\\""#, "null"), true),
            (env("null", "null"), false),
            (env(r#""x""#, "null"), false),
            (env(r#""""#, r#""stop""#), false),
            (env(r#""y""#, r#""stop""#), true),
            (env(r#""unterminated"#, r#""stop""#), false),
            (env(r#""z""#, r#""stop""#), false),
        ];
        let mut memo = Memo::default();
        for (k, (chunk, through)) in stream.iter().enumerate() {
            let before = memo.through_hole;
            let with = parse_memo(chunk.as_bytes(), false, false, &mut memo);
            assert_eq!(with, parse_full(chunk.as_bytes(), false, false), "{chunk}");
            assert_eq!(
                memo.through_hole - before,
                u64::from(*through),
                "chunk {k}: {chunk}"
            );
        }
        // Two answer places (two choices): no hole, every chunk scanned
        // (the first one's text counts whatever the second holds).
        let two = |a: &str| {
            format!(
                r#"{{"choices":[{{"delta":{{"content":"x"}}}},{{"delta":{{"content":"{a}"}}}}]}}"#
            )
        };
        let mut memo = Memo::default();
        for a in ["", "", "b", ""] {
            let c = two(a);
            let with = parse_memo(c.as_bytes(), false, false, &mut memo);
            assert_eq!(with, parse_full(c.as_bytes(), false, false));
        }
        assert_eq!(memo.through_hole, 0);
        // With the ids or the text wanted, the string is read in full.
        let mut memo = Memo::default();
        for (content, ids, text) in [("a", false, false), ("b", true, false), ("c", false, true)] {
            let c = env(&format!("\"{content}\""), "null");
            let with = parse_memo(c.as_bytes(), ids, text, &mut memo);
            assert_eq!(with, parse_full(c.as_bytes(), ids, text));
        }
        assert_eq!(memo.through_hole, 0);
    }
}
