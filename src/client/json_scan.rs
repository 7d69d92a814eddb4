//! A JSON scanner over borrowed bytes: just the steps [`super::chunk`]
//! needs to read a streamed chunk's few facts and skip the rest, without
//! building a tree or allocating for unescaped strings.

use std::borrow::Cow;

/// The first `"` or `\\` in `b`. Keys and most values are a few bytes
/// long, where SIMD set-up costs more than it saves: eight bytes at a time
/// in a word (the zero-byte trick on `w ^ '"'` and `w ^ '\\'`) for the
/// first 32, then memchr for long strings. This loop was half the chunk
/// scan's time as a byte-at-a-time search.
#[inline]
pub(super) fn quote_or_backslash(b: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const QUOTE: u64 = LO * b'"' as u64;
    const SLASH: u64 = LO * b'\\' as u64;
    let mut i = 0;
    while i + 8 <= b.len() {
        if i == 32 {
            return memchr::memchr2(b'"', b'\\', &b[i..]).map(|o| o + i);
        }
        let w = u64::from_le_bytes(b[i..i + 8].try_into().expect("eight bytes"));
        let (q, s) = (w ^ QUOTE, w ^ SLASH);
        // A byte of q or s is zero where w has the byte sought; the lowest
        // flagged byte is exact (borrows only run upwards from it).
        let hit = ((q.wrapping_sub(LO) & !q) | (s.wrapping_sub(LO) & !s)) & HI;
        if hit != 0 {
            return Some(i + (hit.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|o| o + i)
}

/// Nesting deeper than this is refused rather than recursed into.
pub(super) const MAX_DEPTH: usize = 64;

pub(super) struct Scanner<'a> {
    pub(super) b: &'a [u8],
    pub(super) i: usize,
}

/// Where and why a chunk is not the JSON it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk is not valid JSON: {what} at byte {at}")]
pub struct ChunkError {
    pub what: &'static str,
    pub at: usize,
}

pub(super) type Res<T> = Result<T, ChunkError>;

impl<'a> Scanner<'a> {
    pub(super) fn err(&self, what: &'static str) -> ChunkError {
        ChunkError { what, at: self.i }
    }

    #[inline]
    pub(super) fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    pub(super) fn peek(&mut self) -> Res<u8> {
        self.ws();
        self.b
            .get(self.i)
            .copied()
            .ok_or_else(|| self.err("unexpected end"))
    }

    pub(super) fn eat(&mut self, c: u8) -> Res<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err("unexpected character"))
        }
    }

    pub(super) fn literal(&mut self, word: &'static [u8]) -> Res<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("bad literal"))
        }
    }

    /// Consume `null` if it is next; report whether it was.
    pub(super) fn null(&mut self) -> Res<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// A string's raw bytes (escapes not decoded) and whether it had any.
    /// The opening quote must be next.
    pub(super) fn raw_str(&mut self) -> Res<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            let found = quote_or_backslash(&self.b[self.i..]);
            match found {
                None => {
                    self.i = self.b.len();
                    return Err(self.err("unterminated string"));
                }
                Some(off) => {
                    self.i += off;
                    if self.b[self.i] == b'"' {
                        let s = &self.b[start..self.i];
                        self.i += 1;
                        return Ok((s, escaped));
                    }
                    escaped = true;
                    // Skip the backslash and the escaped byte.
                    self.i += 2;
                    if self.i > self.b.len() {
                        return Err(self.err("unterminated escape"));
                    }
                }
            }
        }
    }

    /// A string or null, decoded only when it has escapes.
    pub(super) fn opt_str(&mut self) -> Res<Option<Cow<'a, str>>> {
        match self.peek()? {
            b'"' => {
                let at = self.i;
                let (raw, escaped) = self.raw_str()?;
                if escaped {
                    let quoted = &self.b[at..self.i];
                    serde_json::from_slice::<String>(quoted)
                        .map(|s| Some(Cow::Owned(s)))
                        .map_err(|_| self.err("bad string escape"))
                } else {
                    std::str::from_utf8(raw)
                        .map(|s| Some(Cow::Borrowed(s)))
                        .map_err(|_| self.err("invalid UTF-8"))
                }
            }
            b'n' => self.literal(b"null").map(|_| None),
            _ => self.skip_value(0).map(|_| None),
        }
    }

    /// Whether the value is a non-empty string, a non-empty array or an
    /// object (content parts, tool calls); consumes it either way.
    pub(super) fn non_empty(&mut self) -> Res<bool> {
        match self.peek()? {
            b'"' => self.raw_str().map(|(s, _)| !s.is_empty()),
            b'[' => {
                let mut any = false;
                self.array(|sc| {
                    any = true;
                    sc.skip_value(1)
                })?;
                Ok(any)
            }
            b'{' => self.skip_value(0).map(|_| true),
            _ => self.skip_value(0).map(|_| false),
        }
    }

    /// A non-negative integer that fits u32, or null; other numbers are
    /// skipped and read as absent.
    pub(super) fn opt_u32(&mut self) -> Res<Option<u32>> {
        match self.peek()? {
            b'0'..=b'9' => {
                let start = self.i;
                self.number()?;
                let text = &self.b[start..self.i];
                Ok(std::str::from_utf8(text).ok().and_then(|t| t.parse().ok()))
            }
            b'n' => self.literal(b"null").map(|_| None),
            _ => self.skip_value(0).map(|_| None),
        }
    }

    pub(super) fn number(&mut self) -> Res<()> {
        let start = self.i;
        while let Some(&c) = self.b.get(self.i) {
            if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E') {
                self.i += 1;
            } else {
                break;
            }
        }
        if self.i == start {
            Err(self.err("expected a value"))
        } else {
            Ok(())
        }
    }

    /// Iterate an object's keys; `f` must consume each value.
    pub(super) fn object(&mut self, mut f: impl FnMut(&mut Self, &[u8]) -> Res<()>) -> Res<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(());
        }
        loop {
            let (key, _) = self.raw_str()?;
            self.eat(b':')?;
            f(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    /// Iterate an array's elements; `f` must consume each element.
    pub(super) fn array(&mut self, mut f: impl FnMut(&mut Self) -> Res<()>) -> Res<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Ok(());
        }
        loop {
            f(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    pub(super) fn skip_value(&mut self, depth: usize) -> Res<()> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        match self.peek()? {
            b'"' => self.raw_str().map(|_| ()),
            b'{' => self.object(|sc, _| sc.skip_value(depth + 1)),
            b'[' => self.array(|sc| sc.skip_value(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time search finds what a byte loop finds, at every
    /// position and length, both bytes, and around the 32-byte hand-over.
    #[test]
    fn quote_or_backslash_finds_the_first() {
        for len in 0..80 {
            for at in 0..=len {
                for (c, other) in [(b'"', b'\\'), (b'\\', b'"')] {
                    let mut b = vec![b'a'; len];
                    // High bytes (UTF-8) and bytes next to the sought ones
                    // must not be taken for them.
                    for (k, x) in b.iter_mut().enumerate() {
                        *x = [b'a', 0xE2, b'#', b']', 0x21, 0x23][k % 6];
                    }
                    if at < len {
                        b[at] = c;
                        if at + 3 < len {
                            b[at + 3] = other;
                        }
                    }
                    let want = b.iter().position(|&x| x == b'"' || x == b'\\');
                    assert_eq!(quote_or_backslash(&b), want, "len {len} at {at}");
                }
            }
        }
    }
}
