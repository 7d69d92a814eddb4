//! Production traces: when each request came and how long it was.
//!
//! Two public formats are read:
//! - **Mooncake** (JSONL): `{"timestamp": ms, "input_length": n,
//!   "output_length": m, "hash_ids": [..]}`. A hash id names a 512-token
//!   block of prompt; the same id in two requests is the same content,
//!   which is how the trace records prefix reuse.
//! - **Azure** LLM inference traces (CSV): a header naming `TIMESTAMP`,
//!   `ContextTokens` and `GeneratedTokens`, timestamps as
//!   `2023-11-16 18:15:46.6805900` (or plain seconds).
//!
//! Lines are parsed one at a time ([`TraceParser::line`]) so a file of a
//! million lines is never held as text: a request costs 24 bytes plus 8
//! per hash id. Pure: the file is read in [`super::files`].
//!
//! Prompts are made at send time ([`TracePrompts`]): the blocks of a hash
//! id are the same words wherever the id appears, so a server's prefix
//! cache sees the trace's real reuse, and the rest of each prompt is the
//! line's own.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Tokens in one Mooncake hash block.
pub const BLOCK_TOKENS: u32 = 512;

/// A trace file's format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TraceFormat {
    Mooncake,
    Azure,
}

impl TraceFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mooncake => "mooncake",
            Self::Azure => "azure",
        }
    }

    /// The format the first non-blank line shows, if any.
    pub fn detect(first_line: &str) -> Option<Self> {
        let l = first_line.trim_start_matches('\u{feff}').trim();
        if l.starts_with('{') {
            Some(Self::Mooncake)
        } else if l.to_ascii_uppercase().contains("TIMESTAMP") {
            Some(Self::Azure)
        } else {
            None
        }
    }
}

impl std::str::FromStr for TraceFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mooncake" => Ok(Self::Mooncake),
            "azure" => Ok(Self::Azure),
            o => Err(format!(
                "unknown trace format '{o}': expected mooncake or azure"
            )),
        }
    }
}

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Microseconds after the trace's first request.
    pub at_us: u64,
    pub input: u32,
    pub output: u32,
    /// Its hash ids: `hash_ids[hash_start..hash_start + hash_len]`.
    hash_start: u32,
    hash_len: u32,
}

/// A whole trace, in memory in compact form.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub format: TraceFormat,
    pub entries: Vec<Entry>,
    hash_ids: Vec<u64>,
}

impl Trace {
    pub fn hash_ids(&self, e: &Entry) -> &[u64] {
        &self.hash_ids[e.hash_start as usize..(e.hash_start + e.hash_len) as usize]
    }

    /// Seconds from the first request to the last.
    pub fn span_s(&self) -> f64 {
        self.entries.last().map_or(0.0, |e| e.at_us as f64 * 1e-6)
    }

    /// Bytes the trace holds (for the memory figure).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>() + self.hash_ids.capacity() * 8
    }
}

/// A line that is not a trace request: which line, which field, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {}{message}", field.map(|f| format!("'{f}': ")).unwrap_or_default())]
pub struct TraceError {
    /// 1-based line number in the file.
    pub line: usize,
    pub field: Option<&'static str>,
    pub message: String,
}

impl TraceError {
    fn new(line: usize, field: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            line,
            field,
            message: message.into(),
        }
    }
}

/// Reads a trace line by line.
#[derive(Debug)]
pub struct TraceParser {
    format: Option<TraceFormat>,
    /// Azure: the columns of TIMESTAMP, ContextTokens, GeneratedTokens.
    columns: Option<[usize; 3]>,
    /// The first request's timestamp, in the file's unit (µs).
    origin_us: Option<i128>,
    last_us: i128,
    last_line: usize,
    entries: Vec<Entry>,
    hash_ids: Vec<u64>,
}

#[derive(serde::Deserialize)]
struct MooncakeLine {
    timestamp: Option<serde_json::Value>,
    input_length: Option<serde_json::Value>,
    output_length: Option<serde_json::Value>,
    #[serde(default)]
    hash_ids: Option<Vec<serde_json::Value>>,
}

impl TraceParser {
    /// `format: None` detects it from the first non-blank line.
    pub fn new(format: Option<TraceFormat>) -> Self {
        Self {
            format,
            columns: None,
            origin_us: None,
            last_us: i128::MIN,
            last_line: 0,
            entries: Vec::new(),
            hash_ids: Vec::new(),
        }
    }

    /// Feed line `n` (1-based).
    pub fn line(&mut self, n: usize, text: &str) -> Result<(), TraceError> {
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            return Ok(());
        }
        let format = match self.format {
            Some(f) => f,
            None => {
                let f = TraceFormat::detect(text).ok_or_else(|| {
                    TraceError::new(
                        n,
                        None,
                        "not a trace: expected a Mooncake JSON line ({\"timestamp\": ...}) \
                         or an Azure CSV header (TIMESTAMP,ContextTokens,GeneratedTokens); \
                         give --trace-format",
                    )
                })?;
                self.format = Some(f);
                f
            }
        };
        match format {
            TraceFormat::Mooncake => self.mooncake(n, text),
            TraceFormat::Azure => self.azure(n, text),
        }
    }

    fn mooncake(&mut self, n: usize, text: &str) -> Result<(), TraceError> {
        let l: MooncakeLine = serde_json::from_str(text)
            .map_err(|e| TraceError::new(n, None, format!("not a JSON object: {e}")))?;
        let ts = l
            .timestamp
            .ok_or_else(|| TraceError::new(n, Some("timestamp"), "missing"))?;
        let ts = ts.as_f64().filter(|v| v.is_finite()).ok_or_else(|| {
            TraceError::new(n, Some("timestamp"), format!("{ts} is not a number"))
        })?;
        if ts < 0.0 {
            return Err(TraceError::new(
                n,
                Some("timestamp"),
                format!("{ts} is negative"),
            ));
        }
        let input = length(n, "input_length", l.input_length)?;
        let output = length(n, "output_length", l.output_length)?;
        let start = self.hash_ids.len();
        for h in l.hash_ids.unwrap_or_default() {
            let id = h.as_u64().ok_or_else(|| {
                TraceError::new(
                    n,
                    Some("hash_ids"),
                    format!("{h} is not a block id (an integer >= 0)"),
                )
            })?;
            self.hash_ids.push(id);
        }
        let len = self.hash_ids.len() - start;
        self.push(
            n,
            "timestamp",
            (ts * 1000.0).round() as i128,
            input,
            output,
            start,
            len,
        )
    }

    fn azure(&mut self, n: usize, text: &str) -> Result<(), TraceError> {
        let cells: Vec<&str> = text
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        let Some([ti, ci, gi]) = self.columns else {
            let find = |name: &str| cells.iter().position(|c| c.eq_ignore_ascii_case(name));
            let cols = [
                ("TIMESTAMP", find("TIMESTAMP")),
                ("ContextTokens", find("ContextTokens")),
                ("GeneratedTokens", find("GeneratedTokens")),
            ];
            let mut idx = [0; 3];
            for (k, (name, at)) in cols.iter().enumerate() {
                idx[k] = at.ok_or_else(|| {
                    TraceError::new(
                        n,
                        None,
                        format!("the header has no '{name}' column (expected TIMESTAMP,ContextTokens,GeneratedTokens)"),
                    )
                })?;
            }
            self.columns = Some(idx);
            return Ok(());
        };
        let cell = |i: usize, name: &'static str| {
            cells
                .get(i)
                .copied()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| TraceError::new(n, Some(name), "missing"))
        };
        let ts = cell(ti, "TIMESTAMP")?;
        let us = azure_time_us(ts).ok_or_else(|| {
            TraceError::new(
                n,
                Some("TIMESTAMP"),
                format!(
                    "'{ts}' is not a time (expected e.g. 2023-11-16 18:15:46.6805900, or seconds)"
                ),
            )
        })?;
        if us < 0 {
            return Err(TraceError::new(
                n,
                Some("TIMESTAMP"),
                format!("'{ts}' is negative"),
            ));
        }
        let parse = |v: &str, name: &'static str| -> Result<u32, TraceError> {
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() => length(n, name, Some(serde_json::Value::from(x))),
                _ => Err(TraceError::new(
                    n,
                    Some(name),
                    format!("'{v}' is not a number"),
                )),
            }
        };
        let input = parse(cell(ci, "ContextTokens")?, "ContextTokens")?;
        let output = parse(cell(gi, "GeneratedTokens")?, "GeneratedTokens")?;
        let start = self.hash_ids.len();
        self.push(n, "TIMESTAMP", us, input, output, start, 0)
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        n: usize,
        ts_field: &'static str,
        us: i128,
        input: u32,
        output: u32,
        hash_start: usize,
        hash_len: usize,
    ) -> Result<(), TraceError> {
        if us < self.last_us {
            return Err(TraceError::new(
                n,
                Some(ts_field),
                format!(
                    "goes back in time: {:.3} s before line {}'s (a trace must be in time order)",
                    (self.last_us - us) as f64 * 1e-6,
                    self.last_line
                ),
            ));
        }
        let origin = *self.origin_us.get_or_insert(us);
        self.last_us = us;
        self.last_line = n;
        self.entries.push(Entry {
            at_us: (us - origin) as u64,
            input,
            output,
            hash_start: hash_start as u32,
            hash_len: hash_len as u32,
        });
        Ok(())
    }

    /// The trace, or why there is none. `lines` is how many were read.
    pub fn finish(mut self, lines: usize) -> Result<Trace, TraceError> {
        if self.entries.is_empty() {
            return Err(TraceError::new(
                lines.max(1),
                None,
                "the trace has no requests",
            ));
        }
        self.entries.shrink_to_fit();
        self.hash_ids.shrink_to_fit();
        Ok(Trace {
            format: self.format.unwrap_or(TraceFormat::Mooncake),
            entries: self.entries,
            hash_ids: self.hash_ids,
        })
    }
}

/// A token length: an integer >= 1.
fn length(n: usize, field: &'static str, v: Option<serde_json::Value>) -> Result<u32, TraceError> {
    let v = v.ok_or_else(|| TraceError::new(n, Some(field), "missing"))?;
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x >= 1.0 && x <= crate::workload::MAX_INPUT as f64 => {
            Ok(x as u32)
        }
        Some(x) if x.is_finite() => Err(TraceError::new(
            n,
            Some(field),
            format!(
                "{x} is not a length (a whole number of tokens, 1 to {})",
                crate::workload::MAX_INPUT
            ),
        )),
        _ => Err(TraceError::new(
            n,
            Some(field),
            format!("{v} is not a number"),
        )),
    }
}

/// Azure's `2023-11-16 18:15:46.6805900`, or a number of seconds, in µs.
fn azure_time_us(s: &str) -> Option<i128> {
    if let Ok(secs) = s.parse::<f64>() {
        return secs.is_finite().then(|| (secs * 1e6).round() as i128);
    }
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()?;
    let t = t.and_utc();
    Some(t.timestamp() as i128 * 1_000_000 + t.timestamp_subsec_micros() as i128)
}

/// Makes each trace request's prompt: hash blocks shared, the rest its own.
#[derive(Debug, Clone)]
pub struct TracePrompts {
    words: Vec<String>,
    /// With a tokenizer every word is one token; without, lengths are
    /// 4 characters a token, as the mock and the estimates count them.
    exact: bool,
    seed: u64,
}

impl TracePrompts {
    /// `words`: one token each after a space (the synthetic generator's
    /// words for the run's tokenizer), or `None` for approximate lengths.
    pub fn new(words: Option<Vec<String>>, seed: u64) -> Self {
        match words {
            Some(w) if w.len() >= 16 => Self {
                words: w,
                exact: true,
                seed,
            },
            _ => Self {
                words: crate::workload::synthetic::WORDS
                    .iter()
                    .map(|w| w.to_string())
                    .collect(),
                exact: false,
                seed,
            },
        }
    }

    pub fn exact(&self) -> bool {
        self.exact
    }

    /// The same words, drawn with another seed: other text everywhere.
    pub fn with_seed(&self, seed: u64) -> Self {
        Self {
            seed,
            ..self.clone()
        }
    }

    /// The prompt of request `line` (its index in the trace): `input`
    /// tokens, the first of them the blocks of `hash_ids`.
    pub fn prompt(&self, line: u64, input: u32, hash_ids: &[u64]) -> String {
        let mut out = String::with_capacity(input as usize * 6);
        let mut left = input;
        for &id in hash_ids {
            if left == 0 {
                break;
            }
            let n = left.min(BLOCK_TOKENS);
            self.block(
                &mut out,
                StdRng::seed_from_u64(self.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xB10C),
                n,
            );
            left -= n;
        }
        if left > 0 {
            let rng = StdRng::seed_from_u64(
                self.seed.wrapping_mul(0x100_0000_01B3) ^ line.wrapping_add(1) ^ 0x7ACE,
            );
            self.block(&mut out, rng, left);
        }
        if out.ends_with(' ') {
            out.pop();
        }
        out
    }

    /// `tokens` tokens of words drawn from `rng`, each followed by a space.
    fn block(&self, out: &mut String, mut rng: StdRng, tokens: u32) {
        if self.exact {
            for _ in 0..tokens {
                out.push_str(&self.words[rng.random_range(0..self.words.len())]);
                out.push(' ');
            }
            return;
        }
        // Exactly 4 characters a token: words, the last one cut to fit,
        // and a space to end the block (so blocks join without changing
        // each other's length).
        let want = out.len() + tokens as usize * 4;
        while out.len() < want {
            let w = &self.words[rng.random_range(0..self.words.len())];
            let room = want - out.len();
            if w.len() < room {
                out.push_str(w);
                out.push(' ');
            } else {
                out.push_str(&w[..room.saturating_sub(1).min(w.len())]);
                while out.len() < want {
                    out.push(' ');
                }
            }
        }
    }
}

/// The share of a trace's input tokens that sit in a hash block an
/// earlier request already named: the prefix reuse the trace records.
pub fn reuse_share(trace: &Trace, entries: &[Entry]) -> Option<f64> {
    let mut seen = std::collections::HashSet::new();
    let (mut reused, mut total, mut any) = (0u64, 0u64, false);
    for e in entries {
        total += e.input as u64;
        let mut left = e.input;
        for &id in trace.hash_ids(e) {
            any = true;
            let n = left.min(BLOCK_TOKENS);
            if !seen.insert(id) {
                reused += n as u64;
            }
            left -= n;
            if left == 0 {
                break;
            }
        }
    }
    (any && total > 0).then(|| reused as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, f: Option<TraceFormat>) -> Result<Trace, TraceError> {
        let mut p = TraceParser::new(f);
        let mut n = 0;
        for (i, l) in text.lines().enumerate() {
            n = i + 1;
            p.line(n, l)?;
        }
        p.finish(n)
    }

    #[test]
    fn mooncake_lines_read() {
        let t = parse(
            "{\"timestamp\": 1000, \"input_length\": 700, \"output_length\": 20, \"hash_ids\": [1, 2]}\n\n\
             {\"timestamp\": 1500.5, \"input_length\": 10, \"output_length\": 5}\n",
            None,
        )
        .unwrap();
        assert_eq!(t.format, TraceFormat::Mooncake);
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.entries[0].at_us, 0, "offsets from the first request");
        assert_eq!(t.entries[1].at_us, 500_500);
        assert_eq!(t.hash_ids(&t.entries[0]), &[1, 2]);
        assert!(t.hash_ids(&t.entries[1]).is_empty());
        assert_eq!((t.entries[0].input, t.entries[0].output), (700, 20));
    }

    #[test]
    fn azure_lines_read() {
        let t = parse(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n\
             2023-11-16 18:15:46.6805900,4808,10\n\
             2023-11-16 18:15:50.9951690,3180,8\n",
            None,
        )
        .unwrap();
        assert_eq!(t.format, TraceFormat::Azure);
        assert_eq!(t.entries[1].at_us, 4_314_579);
        assert_eq!((t.entries[1].input, t.entries[1].output), (3180, 8));
        // Columns in another order, times in seconds.
        let t = parse(
            "GeneratedTokens,TIMESTAMP,ContextTokens\n5,10.5,100\n6,11,200\n",
            None,
        )
        .unwrap();
        assert_eq!(t.entries[1].at_us, 500_000);
        assert_eq!(t.entries[1].input, 200);
    }

    #[test]
    fn bad_lines_name_the_line_and_the_field() {
        let m = |s: &str| {
            parse(s, Some(TraceFormat::Mooncake))
                .unwrap_err()
                .to_string()
        };
        let ok = "{\"timestamp\": 5, \"input_length\": 1, \"output_length\": 1}\n";
        let cases = [
            (
                format!("{ok}{{\"timestamp\": 6, \"input_length\": 1}}"),
                "line 2: 'output_length': missing",
            ),
            (format!("{ok}not json"), "line 2: not a JSON object"),
            (
                "{\"timestamp\": -1, \"input_length\": 1, \"output_length\": 1}".to_string(),
                "line 1: 'timestamp': -1 is negative",
            ),
            (
                format!("{ok}{{\"timestamp\": 4, \"input_length\": 1, \"output_length\": 1}}"),
                "line 2: 'timestamp': goes back in time: 0.001 s before line 1's",
            ),
            (
                "{\"timestamp\": 1, \"input_length\": 0, \"output_length\": 1}".to_string(),
                "line 1: 'input_length': 0 is not a length",
            ),
            (
                "{\"timestamp\": \"x\", \"input_length\": 1, \"output_length\": 1}".to_string(),
                "line 1: 'timestamp': \"x\" is not a number",
            ),
            (
                "{\"timestamp\": 1, \"input_length\": 2.5, \"output_length\": 1}".to_string(),
                "'input_length': 2.5 is not a length",
            ),
            (
                "{\"timestamp\": 1, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [-3]}"
                    .to_string(),
                "'hash_ids': -3 is not a block id",
            ),
            ("\n\n".to_string(), "line 2: the trace has no requests"),
        ];
        for (text, want) in cases {
            let got = m(&text);
            assert!(got.contains(want), "{text:?}: {got}");
        }
        let a = |s: &str| parse(s, None).unwrap_err().to_string();
        assert!(
            a("TIMESTAMP,ContextTokens\n")
                .contains("line 1: the header has no 'GeneratedTokens' column")
        );
        assert!(
            a("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n")
                .contains("line 2: 'TIMESTAMP': 'yesterday' is not a time")
        );
        assert!(
            a("TIMESTAMP,ContextTokens,GeneratedTokens\n1,,1\n")
                .contains("line 2: 'ContextTokens': missing")
        );
        assert!(
            a("TIMESTAMP,ContextTokens,GeneratedTokens\n1,x,1\n")
                .contains("line 2: 'ContextTokens': 'x' is not a number"),
            "{}",
            a("TIMESTAMP,ContextTokens,GeneratedTokens\n1,x,1\n")
        );
        assert!(
            a("TIMESTAMP,ContextTokens,GeneratedTokens\n2,1,1\n1,1,1\n")
                .contains("line 3: 'TIMESTAMP': goes back in time")
        );
        assert!(a("hello\n").contains("line 1: not a trace"));
    }

    #[test]
    fn shared_blocks_are_the_same_text_and_lengths_are_exact() {
        let p = TracePrompts::new(None, 1);
        let a = p.prompt(0, 1100, &[7, 8, 9]);
        let b = p.prompt(1, 600, &[7, 3]);
        // 4 characters a token, exactly (the mock counts that way).
        assert_eq!(crate::workload::synthetic::estimate_tokens(a.len()), 1100);
        assert_eq!(crate::workload::synthetic::estimate_tokens(b.len()), 600);
        // Block 7 opens both.
        assert_eq!(a[..2048], b[..2048]);
        assert_ne!(a[2048..2100], b[2048..2100]);
        // Without hash ids every line is its own.
        assert_ne!(p.prompt(2, 50, &[]), p.prompt(3, 50, &[]));
        assert_eq!(p.prompt(2, 50, &[]), p.prompt(2, 50, &[]), "seeded");
        // With one-token words: one word a token, blocks shared word for word.
        let words: Vec<String> = crate::workload::synthetic::WORDS
            .iter()
            .map(|w| w.to_string())
            .collect();
        let e = TracePrompts::new(Some(words), 1);
        let x = e.prompt(0, 700, &[7, 8]);
        let y = e.prompt(5, 520, &[7]);
        assert_eq!(x.split(' ').count(), 700);
        assert_eq!(y.split(' ').count(), 520);
        let xs: Vec<&str> = x.split(' ').take(512).collect();
        let ys: Vec<&str> = y.split(' ').take(512).collect();
        assert_eq!(xs, ys);
    }

    #[test]
    fn reuse_counts_tokens_in_blocks_seen_before() {
        let t = parse(
            "{\"timestamp\": 0, \"input_length\": 1024, \"output_length\": 1, \"hash_ids\": [1, 2]}\n\
             {\"timestamp\": 1, \"input_length\": 1000, \"output_length\": 1, \"hash_ids\": [1, 3]}\n",
            None,
        )
        .unwrap();
        // 512 of 2024 input tokens were in a block seen before.
        let r = reuse_share(&t, &t.entries).unwrap();
        assert!((r - 512.0 / 2024.0).abs() < 1e-12, "{r}");
        let none = parse(
            "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1}",
            None,
        )
        .unwrap();
        assert_eq!(reuse_share(&none, &none.entries), None);
    }
}
