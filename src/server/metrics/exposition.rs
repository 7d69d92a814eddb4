//! The Prometheus text exposition (format 0.0.4, and what OpenMetrics
//! adds that a scrape may carry), read into [`Sample`]s within bounds.

/// Largest exposition [`parse`] accepts. A busy vLLM with a few engines
/// writes well under 1 MiB; 8 MiB leaves room and still bounds memory.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;

/// Most samples [`parse`] accepts; the same reasoning as [`MAX_BYTES`] for
/// many short lines.
pub const MAX_SAMPLES: usize = 200_000;

/// One sample line: name, labels in the order written, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Why an exposition was refused. `line` is 1-based; 0 means the input as a
/// whole (over [`MAX_BYTES`]).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Every sample; a malformed line is an error naming its 1-based line.
///
/// Reads the Prometheus text format 0.0.4 and tolerates what OpenMetrics
/// adds: `# EOF` (parsing stops there), `# UNIT`, a timestamp after the
/// value, and an exemplar after ` # `. Comment lines (`# HELP`, `# TYPE`)
/// and blank lines are skipped: the reducer knows its metrics by name, so
/// the declared types add nothing.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    if text.len() > MAX_BYTES {
        return Err(ParseError {
            line: 0,
            reason: format!(
                "the exposition is {} bytes, over the {MAX_BYTES}-byte limit",
                text.len()
            ),
        });
    }
    let mut samples = Vec::new();
    // `lines` also drops the `\r` of CRLF endings.
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if comment.trim() == "EOF" {
                break;
            }
            continue;
        }
        if samples.len() == MAX_SAMPLES {
            return Err(ParseError {
                line: line_no,
                reason: format!("more than {MAX_SAMPLES} samples"),
            });
        }
        let sample = parse_sample(line).map_err(|reason| ParseError {
            line: line_no,
            reason,
        })?;
        samples.push(sample);
    }
    Ok(samples)
}

/// A position in one line. Positions only ever stop on ASCII bytes or at
/// the end, so slicing at them stays on `char` boundaries.
struct Cursor<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.as_bytes().get(self.pos).copied()
    }

    fn rest(&self) -> &'a str {
        &self.line[self.pos..]
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        &self.line[start..self.pos]
    }

    /// Up to the next blank: a value or a timestamp.
    fn token(&mut self) -> &'a str {
        self.take_while(|b| b != b' ' && b != b'\t')
    }

    /// A label value after its opening quote, unescaped; leaves the cursor
    /// past the closing quote.
    fn label_value(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, other)) => {
                        return Err(format!("unknown escape \\{other} in a label value"));
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err("a label value has no closing quote".into())
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The start of a line for an error message: a garbage endpoint may send
/// megabytes on one line, and the message must stay readable.
fn excerpt(line: &str) -> String {
    const MAX: usize = 40;
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// A value as Prometheus writes it, `NaN` and `±Inf` included. Rust's own
/// float parser accepts more spellings (`infinity`); only numbers and the
/// exposition's words are taken.
pub(super) fn parse_value(token: &str) -> Option<f64> {
    match token {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ if token
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')) =>
        {
            token.parse().ok()
        }
        _ => None,
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let mut c = Cursor { line, pos: 0 };
    let name = c.take_while(is_name_byte);
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return Err(format!("expected a metric name: {:?}", excerpt(line)));
    }
    c.skip_blanks();
    let mut labels = Vec::new();
    if c.peek() == Some(b'{') {
        c.pos += 1;
        loop {
            c.skip_blanks();
            match c.peek() {
                Some(b'}') => {
                    c.pos += 1;
                    break;
                }
                None => return Err(format!("{name}'s label set has no closing brace")),
                Some(_) => {}
            }
            let key = c.take_while(is_label_byte);
            if key.is_empty() || key.as_bytes()[0].is_ascii_digit() {
                return Err(format!(
                    "expected a label name in {name}'s label set: {:?}",
                    excerpt(c.rest())
                ));
            }
            c.skip_blanks();
            if c.peek() != Some(b'=') {
                return Err(format!("expected '=' after label {key} of {name}"));
            }
            c.pos += 1;
            c.skip_blanks();
            if c.peek() != Some(b'"') {
                return Err(format!("label {key} of {name} has an unquoted value"));
            }
            c.pos += 1;
            let value = c.label_value()?;
            labels.push((key.to_string(), value));
            c.skip_blanks();
            match c.peek() {
                Some(b',') => c.pos += 1,
                Some(b'}') => {}
                _ => return Err(format!("expected ',' or '}}' after label {key} of {name}")),
            }
        }
        c.skip_blanks();
    }
    let token = c.token();
    if token.is_empty() {
        return Err(format!("{name} has no value"));
    }
    let value = parse_value(token)
        .ok_or_else(|| format!("{name}'s value {:?} is not a number", excerpt(token)))?;
    c.skip_blanks();
    // What may follow: a timestamp, then an exemplar (` # {…} v [ts]`),
    // which is ignored.
    if !c.rest().is_empty() && !c.rest().starts_with('#') {
        let stamp = c.token();
        if parse_value(stamp).is_none_or(|t| !t.is_finite()) {
            return Err(format!(
                "unexpected {:?} after {name}'s value",
                excerpt(stamp)
            ));
        }
        c.skip_blanks();
        if !c.rest().is_empty() && !c.rest().starts_with('#') {
            return Err(format!(
                "unexpected {:?} after {name}'s timestamp",
                excerpt(c.rest())
            ));
        }
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Sample {
        let mut s = parse(line).expect("parses");
        assert_eq!(s.len(), 1, "{s:?}");
        s.remove(0)
    }

    fn pairs(s: &Sample) -> Vec<(&str, &str)> {
        s.labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn parses_names_with_colons_and_labels_in_order() {
        let s = one("llamacpp:requests_processing 2");
        assert_eq!(
            (s.name.as_str(), s.value),
            ("llamacpp:requests_processing", 2.0)
        );
        let s = one("vllm:x{model_name=\"a/b\", engine = \"0\",} 1.5e3");
        assert_eq!(s.name, "vllm:x");
        assert_eq!(pairs(&s), [("model_name", "a/b"), ("engine", "0")]);
        assert_eq!(s.value, 1500.0);
        assert!(one("x{} 1").labels.is_empty());
    }

    #[test]
    fn unescapes_label_values() {
        let s = one(r#"m{a="q\"uote",b="back\\slash",c="new\nline",d="} , # é"} 1"#);
        assert_eq!(
            pairs(&s),
            [
                ("a", "q\"uote"),
                ("b", "back\\slash"),
                ("c", "new\nline"),
                ("d", "} , # é"),
            ]
        );
    }

    #[test]
    fn special_values() {
        assert!(one("a NaN").value.is_nan());
        assert_eq!(one("b +Inf").value, f64::INFINITY);
        assert_eq!(one("c -Inf").value, f64::NEG_INFINITY);
        assert_eq!(one("d -0.5").value, -0.5);
        assert_eq!(one("e 1.75432198121e+09").value, 1_754_321_981.21);
    }

    #[test]
    fn timestamps_and_exemplars_are_skipped() {
        assert_eq!(one("a 3 1712345678000").value, 3.0);
        assert_eq!(one("a 3 1712345678.5").value, 3.0);
        let s = one(r#"h_bucket{le="0.5"} 7 # {trace_id="abc 123"} 0.43 1712345678.1"#);
        assert_eq!((s.value, pairs(&s)), (7.0, vec![("le", "0.5")]));
        assert_eq!(one(r#"c_total 9 1712345678 # {id="x"} 1"#).value, 9.0);
    }

    #[test]
    fn comments_blank_lines_crlf_and_eof() {
        let text = "# HELP a The a.\r\n# TYPE a gauge\r\n# UNIT a seconds\r\n\r\n   \
                    a 1\r\n\t b{x=\"y\"}\t2\r\n# EOF\r\nthis is not a sample\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].name.as_str(), s[0].value), ("a", 1.0));
        assert_eq!((s[1].name.as_str(), s[1].value), ("b", 2.0));
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "ok 1\n\n# HELP x y\nbad{a=\"b\" 1\n",
                4,
                "expected ',' or '}'",
            ),
            ("ok 1\nnovalue\n", 2, "has no value"),
            ("ok 1\nok 2\nx abc\n", 3, "is not a number"),
            ("x{a=\"\\t\"} 1\n", 1, "unknown escape"),
            ("ok 1\nx{a=\"open} 1\n", 2, "no closing quote"),
            ("x{a=b} 1\n", 1, "unquoted value"),
            ("x{a=\"b\"\n", 1, "expected ',' or '}'"),
            ("x{a=\"b\",\n", 1, "no closing brace"),
            ("x{=\"b\"} 1\n", 1, "expected a label name"),
            ("x{a \"b\"} 1\n", 1, "expected '='"),
            ("9x 1\n", 1, "expected a metric name"),
            ("{a=\"b\"} 1\n", 1, "expected a metric name"),
            ("ok 1\nx 1 2 3\n", 2, "after x's timestamp"),
            ("x 1 soon\n", 1, "after x's value"),
            ("x infinity\n", 1, "is not a number"),
        ];
        for (text, line, reason) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, *line, "{text:?}: {err}");
            assert!(err.reason.contains(reason), "{text:?}: {err}");
        }
        let err = parse("ok 1\nx 1 2 3\n").unwrap_err();
        assert!(err.to_string().starts_with("line 2: "), "{err}");
    }

    #[test]
    fn error_messages_stay_short() {
        let long = format!("x {}\n", "z".repeat(10_000));
        let err = parse(&long).unwrap_err();
        assert!(err.reason.len() < 200, "{}", err.reason.len());
    }

    #[test]
    fn size_limits() {
        let big = "#".repeat(MAX_BYTES + 1);
        let err = parse(&big).unwrap_err();
        assert_eq!(err.line, 0);
        assert!(err.reason.contains("limit"), "{err}");
        assert!(parse(&"#".repeat(MAX_BYTES)).is_ok());

        let at_limit = "a 1\n".repeat(MAX_SAMPLES);
        assert_eq!(parse(&at_limit).unwrap().len(), MAX_SAMPLES);
        let over = format!("# HELP a x\n{at_limit}a 1\n");
        let err = parse(&over).unwrap_err();
        assert_eq!(err.line, MAX_SAMPLES + 2);
        assert!(err.reason.contains("samples"), "{err}");
    }
}
