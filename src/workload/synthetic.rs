//! Synthetic prompts of a given token length, seeded and varied so that a
//! server cannot answer them all from one cache entry.
//!
//! A prompt is a run of words, each of which is one token when preceded by
//! a space. Byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, Mistral's
//! newer ones) split text into pre-tokens at word boundaries before
//! merging, so `" word"` pieces never merge with their neighbours and `n`
//! such words encode to `n` tokens. The count is then checked with the
//! tokenizer itself and words are added or dropped until it is exact: a
//! tokenizer that does not split that way still gets exact prompts, or an
//! error that says so.
//!
//! Without a tokenizer, lengths are approximate: 4 characters a token, the
//! same estimate the mock uses to count them.

use crate::workload::SyntheticSpec;
use crate::workload::dataset::{Conversation, Message, Role};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal};

/// What the generator needs from a tokenizer.
pub trait TokenCount {
    /// Tokens in `text`, without special tokens (BOS, chat template).
    fn count(&self, text: &str) -> usize;
    /// Candidate words: each one token when preceded by a space.
    fn words(&self) -> Vec<String>;
}

/// Plain English words, for prompts without a tokenizer and as the first
/// choice with one (real words read more like real prompts).
pub const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "she", "other", "its", "may",
    "these", "what", "them", "than", "some", "him", "time", "into", "only", "do", "could", "new",
    "about", "two", "then", "first", "also", "after", "any", "like", "should", "our", "made",
    "where", "over", "such", "years", "most", "used", "much", "how", "people", "out", "water",
    "world", "house", "river", "light", "market", "paper", "system", "number", "group", "place",
    "point", "state", "city", "school", "night", "story", "power", "party", "family", "music",
    "money", "field", "order", "table", "plant", "stone", "train", "energy", "garden", "window",
    "summer", "winter", "letter", "animal", "mountain", "village", "question", "answer", "history",
    "science", "nature", "country", "report", "change", "model", "value", "price", "level",
    "design", "simple", "strong", "small", "large", "early", "young", "green", "black", "white",
    "open", "clear", "quick", "slow", "warm", "cold", "bright", "dark", "short", "long", "write",
    "read", "build", "move", "turn", "start", "follow", "carry", "bring", "hold", "keep", "show",
    "find", "think", "know", "take", "give", "tell", "call", "work", "play", "run", "walk",
    "speak", "learn", "watch", "travel", "measure", "explain", "describe", "compare",
];

/// One sample's lengths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lengths {
    pub input: u32,
    pub output: u32,
}

/// A normal draw around `mean`, rounded, at least 1 (and at most `max`).
fn draw(rng: &mut StdRng, mean: u32, sd: f64, max: u32) -> u32 {
    if sd <= 0.0 {
        return mean;
    }
    let n = Normal::new(mean as f64, sd).expect("sd is finite and positive");
    (n.sample(rng).round().max(1.0) as u64).min(max as u64) as u32
}

/// Every sample's lengths, seeded.
pub fn lengths(spec: &SyntheticSpec, seed: u64) -> Vec<Lengths> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_1E46);
    (0..spec.samples)
        .map(|_| Lengths {
            input: draw(
                &mut rng,
                spec.input,
                spec.input_stddev,
                crate::workload::MAX_INPUT,
            )
            .max(spec.prefix + 1),
            output: draw(&mut rng, spec.output, spec.output_stddev, u32::MAX),
        })
        .collect()
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SyntheticError {
    #[error("the tokenizer has too few one-token words ({0}) to build varied prompts")]
    FewWords(usize),
    #[error("cannot build a prompt of exactly {want} tokens with this tokenizer (closest: {got})")]
    NotExact { want: u32, got: usize },
}

/// Build the prompts, each with its token count (exact with a
/// tokenizer). The shared prefix depends on `seed` only; each sample's
/// remainder on `seed` and its index.
pub fn generate(
    spec: &SyntheticSpec,
    seed: u64,
    tok: Option<&dyn TokenCount>,
) -> Result<Vec<(Conversation, u32)>, SyntheticError> {
    let words: Vec<String> = match tok {
        Some(t) => usable_words(t),
        None => WORDS.iter().map(|w| w.to_string()).collect(),
    };
    if words.len() < 16 {
        return Err(SyntheticError::FewWords(words.len()));
    }
    let mut prefix_rng = StdRng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15);
    let prefix_words = pick(&mut prefix_rng, &words, spec.prefix as usize);
    let mut samples = Vec::with_capacity(spec.samples);
    for (i, len) in lengths(spec, seed).into_iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x100_0000_01B3) ^ (i as u64 + 1));
        let (text, tokens) = match tok {
            Some(t) => exact(t, &words, &prefix_words, len.input, &mut rng)?,
            None => approximate(&words, &prefix_words, len.input, &mut rng),
        };
        samples.push((
            Conversation {
                messages: vec![Message {
                    role: Role::User,
                    content: text,
                }],
                max_tokens: Some(len.output),
            },
            tokens,
        ));
    }
    Ok(samples)
}

/// Sessions of `spec.turns` turns: the first turn is the single-turn
/// prompt of the same index (shared prefix included), each later turn
/// `turn_input` new tokens of its own. Every turn asks for a drawn
/// output length.
pub fn generate_sessions(
    spec: &SyntheticSpec,
    seed: u64,
    tok: Option<&dyn TokenCount>,
) -> Result<Vec<crate::workload::session::Session>, SyntheticError> {
    use crate::workload::session::{Session, Turn};
    let first = generate(spec, seed, tok)?;
    let words: Vec<String> = match tok {
        Some(t) => usable_words(t),
        None => WORDS.iter().map(|w| w.to_string()).collect(),
    };
    let mut out_rng = StdRng::seed_from_u64(seed ^ 0x7E57_0F75);
    let mut sessions = Vec::with_capacity(first.len());
    for (i, (conv, tokens)) in first.into_iter().enumerate() {
        let mut turns = Vec::with_capacity(spec.turns as usize);
        turns.push(Turn {
            max_tokens: conv.max_tokens,
            messages: conv.messages,
            new_tokens: Some(tokens),
        });
        for t in 1..spec.turns {
            let mut rng = StdRng::seed_from_u64(
                seed.wrapping_mul(0x100_0000_01B3) ^ ((i as u64 + 1) << 20) ^ t as u64,
            );
            let (text, n) = match tok {
                Some(tk) => exact(tk, &words, &[], spec.turn_input, &mut rng)?,
                None => approximate(&words, &[], spec.turn_input, &mut rng),
            };
            turns.push(Turn {
                messages: vec![Message {
                    role: Role::User,
                    content: text,
                }],
                max_tokens: Some(draw(
                    &mut out_rng,
                    spec.output,
                    spec.output_stddev,
                    u32::MAX,
                )),
                new_tokens: Some(n),
            });
        }
        sessions.push(Session { turns });
    }
    Ok(sessions)
}

/// Words that are one token after a space, and stay so alone at the start
/// of a prompt (the first word has no space before it). The built-in
/// words first, then the tokenizer's own.
pub fn usable_words(t: &dyn TokenCount) -> Vec<String> {
    let mut out: Vec<String> = WORDS
        .iter()
        .map(|w| w.to_string())
        .filter(|w| t.count(&format!(" {w}")) == 1 && t.count(w) == 1)
        .collect();
    if out.len() < 64 {
        for w in t.words() {
            if out.len() >= 512 {
                break;
            }
            let w = w.trim().to_string();
            if w.len() >= 2
                && w.chars().all(|c| c.is_ascii_alphabetic())
                && !out.contains(&w)
                && t.count(&format!(" {w}")) == 1
                && t.count(&w) == 1
            {
                out.push(w);
            }
        }
    }
    out
}

fn pick(rng: &mut StdRng, words: &[String], n: usize) -> Vec<String> {
    (0..n)
        .map(|_| words[rng.random_range(0..words.len())].clone())
        .collect()
}

fn join(words: &[String]) -> String {
    words.join(" ")
}

/// Exactly `want` tokens: one word a token, then checked and corrected.
fn exact(
    t: &dyn TokenCount,
    words: &[String],
    prefix: &[String],
    want: u32,
    rng: &mut StdRng,
) -> Result<(String, u32), SyntheticError> {
    let mut w: Vec<String> = prefix.to_vec();
    w.extend(pick(
        rng,
        words,
        (want as usize).saturating_sub(prefix.len()),
    ));
    let mut got = t.count(&join(&w));
    for _ in 0..64 {
        if got == want as usize {
            return Ok((join(&w), want));
        }
        if got > want as usize && w.len() > prefix.len().max(1) {
            w.pop();
        } else {
            w.push(words[rng.random_range(0..words.len())].clone());
        }
        got = t.count(&join(&w));
    }
    Err(SyntheticError::NotExact { want, got })
}

/// About `want` tokens at 4 characters a token.
fn approximate(words: &[String], prefix: &[String], want: u32, rng: &mut StdRng) -> (String, u32) {
    let target = want as usize * 4;
    let mut text = join(prefix);
    while text.len() < target {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&words[rng.random_range(0..words.len())]);
    }
    (text, want)
}

/// Characters to tokens, as everywhere without a tokenizer.
pub fn estimate_tokens(chars: usize) -> u32 {
    chars.div_ceil(4).max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in tokenizer: one token per whitespace-separated word,
    /// except that "xx" words cost two.
    struct Words;
    impl TokenCount for Words {
        fn count(&self, text: &str) -> usize {
            text.split_whitespace()
                .map(|w| if w.starts_with("xx") { 2 } else { 1 })
                .sum()
        }
        fn words(&self) -> Vec<String> {
            vec!["xxa".into(), "extra".into()]
        }
    }

    fn spec(input: u32, prefix: u32) -> SyntheticSpec {
        SyntheticSpec {
            input,
            output: 16,
            input_stddev: 0.0,
            output_stddev: 0.0,
            prefix,
            samples: 20,
            turns: 1,
            turn_input: 0,
        }
    }

    #[test]
    fn sessions_add_turn_input_tokens_a_turn() {
        let mut s = spec(30, 5);
        s.turns = 4;
        s.turn_input = 7;
        let g = generate_sessions(&s, 2, Some(&Words)).unwrap();
        assert_eq!(g.len(), 20);
        let single = generate(&spec(30, 5), 2, Some(&Words)).unwrap();
        for (sess, (one, _)) in g.iter().zip(&single) {
            assert_eq!(sess.turns.len(), 4);
            assert_eq!(sess.turns[0].messages, one.messages, "turn 1 is the prompt");
            for t in &sess.turns[1..] {
                assert_eq!(Words.count(&t.messages[0].content), 7);
                assert_eq!(t.new_tokens, Some(7));
                assert_eq!(t.max_tokens, Some(16));
            }
        }
        assert_ne!(g[0].turns[1], g[1].turns[1], "later turns vary too");
        assert_eq!(g, generate_sessions(&s, 2, Some(&Words)).unwrap());
    }

    #[test]
    fn prompts_have_exactly_the_asked_length_and_vary() {
        for n in [1, 7, 128, 1000] {
            let g = generate(&spec(n, 0), 3, Some(&Words)).unwrap();
            for (c, tokens) in &g {
                assert_eq!(Words.count(&c.messages[0].content), n as usize);
                assert_eq!(*tokens, n);
                assert_eq!(c.max_tokens, Some(16));
            }
            if n >= 7 {
                let texts: std::collections::BTreeSet<&str> =
                    g.iter().map(|s| s.0.messages[0].content.as_str()).collect();
                assert!(texts.len() > 15, "prompts vary");
            }
        }
    }

    #[test]
    fn the_prefix_is_shared_and_the_same_seed_gives_the_same_prompts() {
        let a = generate(&spec(50, 20), 9, Some(&Words)).unwrap();
        let b = generate(&spec(50, 20), 9, Some(&Words)).unwrap();
        let first: Vec<&str> = a[0].0.messages[0].content.split(' ').take(20).collect();
        for (s, t) in a.iter().zip(&b) {
            assert_eq!(s.0, t.0);
            let head: Vec<&str> = s.0.messages[0].content.split(' ').take(20).collect();
            assert_eq!(head, first);
        }
        let c = generate(&spec(50, 20), 10, Some(&Words)).unwrap();
        assert_ne!(a[0].0, c[0].0);
    }

    #[test]
    fn without_a_tokenizer_lengths_are_four_characters_a_token() {
        let g = generate(&spec(100, 0), 1, None).unwrap();
        for (c, _) in &g {
            let chars = c.messages[0].content.len();
            assert!((400..420).contains(&chars), "{chars}");
            assert_eq!(estimate_tokens(chars), (chars as u32).div_ceil(4));
        }
    }

    #[test]
    fn spread_lengths_are_seeded_and_positive() {
        let mut s = spec(100, 10);
        s.input_stddev = 50.0;
        s.output_stddev = 30.0;
        s.samples = 500;
        let a = lengths(&s, 4);
        assert_eq!(a, lengths(&s, 4));
        assert!(a.iter().all(|l| l.input > 10 && l.output >= 1));
        let mean = a.iter().map(|l| l.input as f64).sum::<f64>() / a.len() as f64;
        assert!((mean - 100.0).abs() < 10.0, "{mean}");
    }
}
