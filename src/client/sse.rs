//! Incremental Server-Sent Events decoder: bytes in, events out, no I/O.
//!
//! The client feeds whatever frames the socket hands it; an event may be
//! split anywhere (inside a field name, between `\r` and `\n`, inside a
//! UTF-8 sequence). The decoder keeps the unfinished tail and reports every
//! complete event through a callback that borrows the data, so the hot path
//! allocates nothing once the internal buffers have grown to the largest
//! event seen.
//!
//! It follows the WHATWG event-stream rules that matter for LLM streaming:
//! lines end in CRLF, LF or CR; lines starting with `:` are comments;
//! `data:` lines are joined with `\n`; a blank line dispatches; one leading
//! space after the colon is dropped; `event:` names the event type.
//! Unlike the browser algorithm it also dispatches an event left pending at
//! end of stream (servers that end with `data: [DONE]\n` and close), which
//! the caller learns about through [`SseDecoder::finish`].

use thiserror::Error;

/// Default ceiling on one line or one event's data. A server that sends
/// more than this without a line break is broken; we stop reading rather
/// than buffer it all (a 10 MB line must not cost 10 MB per request).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// One decoded event. `data` is valid until the next call into the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, empty when absent (the "message" type).
    pub event: &'a [u8],
    /// The joined `data:` lines, without the final newline.
    pub data: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SseError {
    #[error("SSE line or event longer than {limit} bytes")]
    TooLong { limit: usize },
}

/// Incremental decoder; see the module docs.
#[derive(Debug)]
pub struct SseDecoder {
    /// Bytes of a line not yet terminated.
    line: Vec<u8>,
    /// Accumulated `data:` values of the current event, each followed by `\n`.
    data: Vec<u8>,
    event: Vec<u8>,
    /// The previous byte was a `\r` that ended a line; a following `\n`
    /// belongs to that same line ending.
    after_cr: bool,
    has_data: bool,
    max_bytes: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            event: Vec::new(),
            after_cr: false,
            has_data: false,
            max_bytes,
        }
    }

    /// Feed the next bytes of the stream; `on_event` runs for every event
    /// completed by them, in order. It returns `false` to stop early (the
    /// caller saw `[DONE]` or an error), which leaves the rest unread.
    pub fn feed<F>(&mut self, mut bytes: &[u8], mut on_event: F) -> Result<(), SseError>
    where
        F: FnMut(SseEvent<'_>) -> bool,
    {
        if self.after_cr && !bytes.is_empty() {
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
            self.after_cr = false;
        }
        while !bytes.is_empty() {
            // Fast path, the common LLM shape: a lone `data:` line and its
            // blank line both complete in this buffer. Dispatch straight
            // from the caller's bytes, no copy.
            if self.line.is_empty()
                && !self.has_data
                && self.event.is_empty()
                && bytes.starts_with(b"data:")
                && let Some(end) = memchr::memchr2(b'\n', b'\r', bytes)
            {
                let after = blank_line_after(bytes, end);
                if let Some(next) = after {
                    let value = &bytes[5..end];
                    let value = value.strip_prefix(b" ").unwrap_or(value);
                    if value.len() > self.max_bytes {
                        return Err(SseError::TooLong {
                            limit: self.max_bytes,
                        });
                    }
                    let keep_going = on_event(SseEvent {
                        event: b"",
                        data: value,
                    });
                    bytes = &bytes[next..];
                    if !keep_going {
                        return Ok(());
                    }
                    continue;
                }
            }
            match memchr::memchr2(b'\n', b'\r', bytes) {
                Some(i) => {
                    let keep_going = if self.line.is_empty() {
                        self.process_line(&bytes[..i], &mut on_event)?
                    } else {
                        self.push_line(&bytes[..i])?;
                        let line = std::mem::take(&mut self.line);
                        let r = self.process_line(&line, &mut on_event);
                        self.line = line;
                        self.line.clear();
                        r?
                    };
                    let ended_by_cr = bytes[i] == b'\r';
                    bytes = &bytes[i + 1..];
                    if ended_by_cr {
                        match bytes.first() {
                            Some(b'\n') => bytes = &bytes[1..],
                            Some(_) => {}
                            None => self.after_cr = true,
                        }
                    }
                    if !keep_going {
                        return Ok(());
                    }
                }
                None => {
                    self.push_line(bytes)?;
                    break;
                }
            }
        }
        Ok(())
    }

    /// End of stream: dispatch an event whose blank line never came.
    /// Returns whether one was dispatched.
    pub fn finish<F>(&mut self, mut on_event: F) -> Result<bool, SseError>
    where
        F: FnMut(SseEvent<'_>) -> bool,
    {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut on_event)?;
        }
        if self.has_data {
            self.dispatch(&mut on_event);
            return Ok(true);
        }
        Ok(false)
    }

    /// Bytes buffered but not yet part of a dispatched event.
    pub fn pending_bytes(&self) -> usize {
        self.line.len() + self.data.len()
    }

    fn push_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.max_bytes {
            return Err(SseError::TooLong {
                limit: self.max_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Handle one complete line; returns the callback's keep-going flag.
    fn process_line<F>(&mut self, line: &[u8], on_event: &mut F) -> Result<bool, SseError>
    where
        F: FnMut(SseEvent<'_>) -> bool,
    {
        if line.is_empty() {
            if self.has_data {
                return Ok(self.dispatch(on_event));
            }
            self.event.clear();
            return Ok(true);
        }
        if line[0] == b':' {
            return Ok(true);
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_bytes {
                    return Err(SseError::TooLong {
                        limit: self.max_bytes,
                    });
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            // `id` and `retry` matter to reconnecting browsers, not to us.
            _ => {}
        }
        Ok(true)
    }

    fn dispatch<F>(&mut self, on_event: &mut F) -> bool
    where
        F: FnMut(SseEvent<'_>) -> bool,
    {
        let data = &self.data[..self.data.len().saturating_sub(1)];
        let keep_going = on_event(SseEvent {
            event: &self.event,
            data,
        });
        self.data.clear();
        self.event.clear();
        self.has_data = false;
        keep_going
    }
}

/// If a line ends at `end` and a blank line follows it completely inside
/// `b`, the index just past that blank line. Only unambiguous endings
/// qualify: `\n\n`, `\r\n\r\n`; anything else takes the general path.
#[inline]
fn blank_line_after(b: &[u8], end: usize) -> Option<usize> {
    match &b[end..] {
        [b'\n', b'\n', ..] => Some(end + 2),
        [b'\r', b'\n', b'\r', b'\n', ..] => Some(end + 4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, |e| {
                out.push((
                    String::from_utf8(e.event.to_vec()).unwrap(),
                    String::from_utf8(e.data.to_vec()).unwrap(),
                ));
                true
            })
            .unwrap();
        }
        d.finish(|e| {
            out.push((
                String::from_utf8(e.event.to_vec()).unwrap(),
                String::from_utf8(e.data.to_vec()).unwrap(),
            ));
            true
        })
        .unwrap();
        out
    }

    fn data_only(chunks: &[&[u8]]) -> Vec<String> {
        decode_all(chunks).into_iter().map(|(_, d)| d).collect()
    }

    /// A realistic OpenAI stream, with UTF-8 content, a comment and CRLF.
    const STREAM: &[u8] = b": keep-alive\r\n\r\n\
data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\r\n\r\n\
data: {\"choices\":[{\"delta\":{\"content\":\"h\xc3\xa9llo \xe2\x82\xac\"}}]}\n\n\
event: error\n\
data: {\"error\":{\"message\":\"x\"}}\n\n\
data: line1\r\
data: line2\r\r\
data: [DONE]\n\n";

    #[test]
    fn decodes_every_kind_of_line() {
        let got = decode_all(&[STREAM]);
        assert_eq!(
            got,
            vec![
                (
                    "".into(),
                    "{\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}".into()
                ),
                (
                    "".into(),
                    "{\"choices\":[{\"delta\":{\"content\":\"héllo €\"}}]}".into()
                ),
                ("error".into(), "{\"error\":{\"message\":\"x\"}}".into()),
                ("".into(), "line1\nline2".into()),
                ("".into(), "[DONE]".into()),
            ]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let whole = decode_all(&[STREAM]);
        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            assert_eq!(decode_all(&[a, b]), whole, "split at {i}");
        }
        // Every pair of split points too: covers a CR and its LF arriving
        // in three different frames.
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let (a, rest) = STREAM.split_at(i);
                let (b, c) = rest.split_at(j - i);
                assert_eq!(decode_all(&[a, b, c]), whole, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(decode_all(&chunks), decode_all(&[STREAM]));
    }

    #[test]
    fn field_rules() {
        // No space after the colon; a field with no colon; unknown fields;
        // blank lines with no data dispatch nothing.
        assert_eq!(
            data_only(&[b"data:a\nid: 7\nretry: 10\nfoo\ndata\n\n\n\ndata:  b\n\n"]),
            vec!["a\n".to_string(), " b".to_string()]
        );
    }

    #[test]
    fn pending_event_at_end_of_stream_is_dispatched() {
        assert_eq!(data_only(&[b"data: [DONE]\n"]), vec!["[DONE]"]);
        assert_eq!(data_only(&[b"data: [DONE]"]), vec!["[DONE]"]);
        assert!(data_only(&[b": only a comment"]).is_empty());
    }

    #[test]
    fn callback_can_stop_early() {
        let mut d = SseDecoder::default();
        let mut n = 0;
        d.feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\n", |_| {
            n += 1;
            n < 2
        })
        .unwrap();
        assert_eq!(n, 2);
    }

    proptest::proptest! {
        /// Fuzz: events written with any line endings, comments and field
        /// noise, delivered in any chunking, decode to the same data.
        #[test]
        fn any_chunking_any_line_endings(
            events in proptest::collection::vec("[a-z{}\":,\\[\\] 0-9éü€]{0,40}", 1..8),
            endings in proptest::collection::vec(0usize..3, 64),
            cuts in proptest::collection::vec(0usize..400, 0..12),
            comments in proptest::collection::vec(proptest::bool::ANY, 8),
        ) {
            // A CR followed by an LF is one CRLF line ending, not two; the
            // generator must not write that by accident.
            let mut prev_cr = false;
            let mut eol = |i: usize| {
                let mut e = ["\n", "\r\n", "\r"][endings[i % endings.len()]];
                if prev_cr && e.starts_with('\n') {
                    e = "\r";
                }
                prev_cr = e == "\r";
                e
            };
            let mut wire = String::new();
            let mut k = 0;
            for (i, e) in events.iter().enumerate() {
                if comments[i % comments.len()] {
                    wire.push_str(": ping");
                    wire.push_str(eol(k)); k += 1;
                }
                wire.push_str("data: ");
                wire.push_str(e);
                wire.push_str(eol(k)); k += 1;
                wire.push_str(eol(k)); k += 1;
            }
            let bytes = wire.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for c in cuts {
                pieces.push(&bytes[last..c]);
                last = c;
            }
            pieces.push(&bytes[last..]);
            let got = data_only(&pieces);
            proptest::prop_assert_eq!(got, events);
        }

        /// Fuzz: arbitrary bytes in arbitrary pieces never panic and give
        /// the same events as one piece.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cut in 0usize..600,
        ) {
            let cut = cut % (bytes.len() + 1);
            let mut a = SseDecoder::new(256);
            let mut b = SseDecoder::new(256);
            let mut ea = Vec::new();
            let mut eb = Vec::new();
            let ra = a.feed(&bytes, |e| { ea.push(e.data.to_vec()); true });
            let rb1 = b.feed(&bytes[..cut], |e| { eb.push(e.data.to_vec()); true });
            let rb = rb1.and_then(|_| b.feed(&bytes[cut..], |e| { eb.push(e.data.to_vec()); true }));
            if ra.is_ok() && rb.is_ok() {
                proptest::prop_assert_eq!(ea, eb);
            }
            proptest::prop_assert!(a.pending_bytes() <= 256 + 2 && b.pending_bytes() <= 256 + 2);
        }
    }

    #[test]
    fn overlong_line_is_an_error_not_a_buffer() {
        let mut d = SseDecoder::new(1024);
        let big = vec![b'x'; 600];
        d.feed(b"data: ", |_| true).unwrap();
        d.feed(&big, |_| true).unwrap();
        let err = d.feed(&big, |_| true).unwrap_err();
        assert_eq!(err, SseError::TooLong { limit: 1024 });
        assert!(d.pending_bytes() <= 1024);
        // Many short data lines that add up past the limit are caught too.
        let mut d = SseDecoder::new(64);
        let r = d.feed(&b"data: 0123456789\n".repeat(10), |_| true);
        assert!(r.is_err());
    }
}
