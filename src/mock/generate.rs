//! One admitted request's life inside the mock: wait for a slot, prefill,
//! then emit tokens at the model's pace, as OpenAI-format SSE bytes.
//!
//! The stream is a small state machine driven by `futures::stream::unfold`
//! (no task or channel per request): hyper polls it when the socket can
//! take more. If the client goes away hyper drops the stream, and the
//! [`Occupancy`] guard gives the slot and the queue place back.

use super::faults::FaultKind;
use super::state::MockState;
use super::truth::Truth;
use crate::base::clock::mono_ns;
use bytes::Bytes;
use futures_util::Stream;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::io;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

/// Which OpenAI API shape to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completions,
}

/// Words the mock "generates", one per token. Plain ASCII without quotes
/// or backslashes, so they go into JSON unescaped.
const VOCAB: [&str; 48] = [
    "the",
    "model",
    "answers",
    "with",
    "a",
    "steady",
    "stream",
    "of",
    "tokens",
    "that",
    "look",
    "like",
    "text",
    "and",
    "cost",
    "nothing",
    "to",
    "make",
    "while",
    "queue",
    "slots",
    "fill",
    "up",
    "under",
    "load",
    "so",
    "latency",
    "grows",
    "as",
    "batch",
    "size",
    "rises",
    "until",
    "requests",
    "are",
    "turned",
    "away",
    "at",
    "capacity",
    "which",
    "is",
    "what",
    "this",
    "benchmark",
    "measures",
    "for",
    "you",
    "today",
];

/// Seed for request `seq`: SplitMix64 of the run seed and the sequence
/// number, so each request's draws are independent and reproducible.
pub fn request_seed(seed: u64, seq: u64) -> u64 {
    let mut z = seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Holds a place in the system (queue or slot) and keeps the gauges right,
/// however the request ends.
pub struct Occupancy {
    st: Arc<MockState>,
    running: bool,
}

impl Occupancy {
    /// Take a place in the queue, or `None` when slots and queue are full.
    pub fn admit(st: &Arc<MockState>) -> Option<Self> {
        let limit = st.cfg.capacity.slots.saturating_add(st.cfg.capacity.queue);
        st.in_system
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        st.metrics.waiting.inc();
        Some(Self {
            st: st.clone(),
            running: false,
        })
    }

    fn start_running(&mut self) {
        self.running = true;
        self.st.running.fetch_add(1, Ordering::AcqRel);
        self.st.metrics.waiting.dec();
        self.st.metrics.running.inc();
    }

    fn running_now(&self) -> usize {
        self.st.running.load(Ordering::Acquire)
    }
}

impl Drop for Occupancy {
    fn drop(&mut self) {
        if self.running {
            self.st.running.fetch_sub(1, Ordering::AcqRel);
            self.st.metrics.running.dec();
        } else {
            self.st.metrics.waiting.dec();
        }
        self.st.in_system.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything decided about a request before it streams.
pub struct Job {
    pub seq: u64,
    pub api: Api,
    /// The model name as a JSON string literal, quotes included.
    pub model_json: String,
    pub created: u64,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// `finish_reason` is `length` when `max_tokens` cut the output.
    pub hit_max_tokens: bool,
    pub include_usage: bool,
    pub fault: Option<FaultKind>,
    pub rng: StdRng,
    pub truth: Truth,
    /// With `--prefix-cache`: the prompt's block keys, continued over the
    /// answer as it is written.
    pub cache: Option<JobCache>,
    /// Prompt tokens the prefix cache held (known once prefill starts).
    pub cached_tokens: u32,
    /// FNV-1a of the answer text so far.
    pub reply_hash: u64,
}

/// A request's blocks for the prefix cache.
pub struct JobCache {
    /// The prompt's blocks, then the answer's as it is written.
    pub blocks: super::prefix_cache::BlockHasher,
    /// How many of `blocks.blocks` are the prompt's.
    pub prompt_blocks: usize,
}

impl Job {
    /// `{"id":…,"object":…,"created":…,"model":…` (no closing brace).
    fn envelope(&self) -> String {
        let (id, object) = match self.api {
            Api::Chat => ("chatcmpl", "chat.completion.chunk"),
            Api::Completions => ("cmpl", "text_completion"),
        };
        format!(
            r#"{{"id":"{id}-mock-{}","object":"{object}","created":{},"model":{}"#,
            self.seq, self.created, self.model_json
        )
    }

    fn finish_reason(&self) -> &'static str {
        if self.hit_max_tokens {
            "length"
        } else {
            "stop"
        }
    }

    fn usage_json(&self) -> String {
        let details = if self.cache.is_some() {
            format!(
                r#","prompt_tokens_details":{{"cached_tokens":{}}}"#,
                self.cached_tokens
            )
        } else {
            String::new()
        };
        format!(
            r#"{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{}{details}}}"#,
            self.input_tokens,
            self.output_tokens,
            self.input_tokens + self.output_tokens
        )
    }

    fn push_words(&mut self, out: &mut Vec<u8>, n: u32, first: bool) {
        let from = out.len();
        for i in 0..n {
            if !(first && i == 0) {
                out.push(b' ');
            }
            out.extend_from_slice(VOCAB[self.rng.random_range(0..VOCAB.len())].as_bytes());
        }
        let text = &out[from..];
        self.reply_hash = super::prefix_cache::fnv_continue(self.reply_hash, text);
        if let Some(c) = &mut self.cache {
            c.blocks.feed(text);
        }
    }

    /// Prefill starts: look the prompt up in the prefix cache (its blocks
    /// go in), and return the prompt tokens prefill must compute.
    fn prefill_tokens(&mut self, st: &MockState) -> u32 {
        let (Some(cache), Some(c)) = (&st.prefix, &mut self.cache) else {
            return self.input_tokens;
        };
        let hits = cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lookup_and_insert(&c.blocks.blocks[..c.prompt_blocks]);
        let cached = (hits as u32)
            .saturating_mul(super::prefix_cache::BLOCK_TOKENS)
            .min(self.input_tokens);
        self.cached_tokens = cached;
        self.truth.cached_tokens = Some(cached);
        st.metrics.prefix_queries.inc_by(self.input_tokens as u64);
        st.metrics.prefix_hits.inc_by(cached as u64);
        // The answer follows as the assistant's message (chat), or after
        // a blank line (completions: how a client joins the history).
        match self.api {
            Api::Chat => c.blocks.feed(b"assistant\n"),
            Api::Completions => c.blocks.feed(b"\n\n"),
        }
        self.input_tokens - cached
    }

    /// The answer is written: its blocks (prompt and answer) go into the
    /// cache, for the session's next turn.
    fn cache_answer(&mut self, st: &MockState) {
        if let (Some(cache), Some(c)) = (&st.prefix, &mut self.cache) {
            c.blocks.feed(b"\n\n");
            cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(&c.blocks.blocks);
        }
    }
}

enum Phase {
    Queued,
    Tokens,
    /// Send an error on the next poll (connection reset).
    Abort,
    End,
}

struct Gen {
    st: Arc<MockState>,
    job: Job,
    occupancy: Occupancy,
    _permit: Option<OwnedSemaphorePermit>,
    phase: Phase,
    /// `data: {envelope},"choices":[{"index":0,` reused for every event.
    head: String,
    emitted: u32,
    next_at: Instant,
    fault_fired: bool,
}

impl Drop for Gen {
    fn drop(&mut self) {
        // Logged here so requests whose client went away count too.
        let mut t = std::mem::replace(
            &mut self.job.truth,
            Truth {
                seq: 0,
                received_ns: 0,
                first_token_ns: 0,
                last_byte_ns: 0,
                input_tokens: 0,
                output_tokens: 0,
                status: 0,
                fault: None,
                traceparent: None,
                cached_tokens: None,
                assistant_hashes: Vec::new(),
                reply_hash: 0,
            },
        );
        t.output_tokens = self.emitted;
        t.reply_hash = self.job.reply_hash;
        self.st
            .metrics
            .generation_tokens
            .inc_by(self.emitted as u64);
        self.st.truth.push(t);
    }
}

/// The SSE body of an admitted streaming request.
pub fn sse(
    st: Arc<MockState>,
    job: Job,
    occupancy: Occupancy,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send {
    let head = format!(r#"data: {},"choices":[{{"index":0,"#, job.envelope());
    let g = Gen {
        st,
        job,
        occupancy,
        _permit: None,
        phase: Phase::Queued,
        head,
        emitted: 0,
        next_at: Instant::now(),
        fault_fired: false,
    };
    futures_util::stream::unfold(g, step)
}

async fn step(mut g: Gen) -> Option<(Result<Bytes, io::Error>, Gen)> {
    loop {
        match g.phase {
            Phase::Queued => {
                let permit = g.st.slots.clone().acquire_owned().await.ok()?;
                g._permit = Some(permit);
                g.occupancy.start_running();
                let uncached = g.job.prefill_tokens(&g.st);
                let cap = &g.st.cfg.capacity;
                let k = g.st.cfg.chunk_tokens.min(g.job.output_tokens);
                // The first event goes out when its last token exists.
                g.next_at = Instant::now()
                    + cap.prefill(uncached)
                    + cap.token_gap(g.occupancy.running_now()) * k.saturating_sub(1);
                g.phase = Phase::Tokens;
                if g.job.api == Api::Chat {
                    // Like OpenAI, the role arrives before any token: a
                    // client that times it as the first token is wrong.
                    let frame = format!(
                        "{}\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n",
                        g.head
                    );
                    return Some((Ok(Bytes::from(frame)), g));
                }
            }
            Phase::Tokens => {
                g.st.timer.sleep_until(g.next_at).await;
                let midway = g.emitted >= g.job.output_tokens / 2;
                if g.job.fault == Some(FaultKind::Stall) && midway && !g.fault_fired {
                    g.fault_fired = true;
                    tokio::time::sleep(g.st.cfg.stall_for).await;
                }
                if g.job.fault == Some(FaultKind::Reset) && midway && g.emitted > 0 {
                    g.phase = Phase::Abort;
                    continue;
                }
                let mut out = Vec::with_capacity(g.head.len() * 3 + 64);
                // Events already due go out in this one write, as a server
                // with several tokens ready writes them at once (with no
                // gap between tokens: the whole answer). Not while a
                // fault is to be injected midway: one event per write.
                loop {
                    let k = g.st.cfg.chunk_tokens.min(g.job.output_tokens - g.emitted);
                    let first = g.emitted == 0;
                    out.extend_from_slice(g.head.as_bytes());
                    match g.job.api {
                        Api::Chat => out.extend_from_slice(br#""delta":{"content":""#),
                        Api::Completions => out.extend_from_slice(br#""text":""#),
                    }
                    g.job.push_words(&mut out, k, first);
                    match g.job.api {
                        Api::Chat => out.extend_from_slice(
                            b"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
                        ),
                        Api::Completions => out.extend_from_slice(
                            b"\",\"logprobs\":null,\"finish_reason\":null}]}\n\n",
                        ),
                    }
                    g.emitted += k;
                    let now_ns = mono_ns();
                    if first {
                        g.job.truth.first_token_ns = now_ns;
                    }
                    g.job.truth.last_byte_ns = now_ns;

                    if g.job.fault == Some(FaultKind::Malformed) && midway && !g.fault_fired {
                        g.fault_fired = true;
                        out.extend_from_slice(
                            b"data: {\"choices\":[{\"delta\":{\"content\":\"oops\n\n",
                        );
                    }
                    if g.job.fault == Some(FaultKind::Truncate) && midway && !g.fault_fired {
                        // Stop after this event: no finish chunk, no [DONE].
                        g.phase = Phase::End;
                        return Some((Ok(Bytes::from(out)), g));
                    }
                    if g.emitted >= g.job.output_tokens {
                        finish(&mut g, &mut out);
                        g.phase = Phase::End;
                        break;
                    }
                    let next_k = g.st.cfg.chunk_tokens.min(g.job.output_tokens - g.emitted);
                    g.next_at += g.st.cfg.capacity.token_gap(g.occupancy.running_now()) * next_k;
                    if g.job.fault.is_some() || g.next_at > Instant::now() {
                        break;
                    }
                }
                return Some((Ok(Bytes::from(out)), g));
            }
            Phase::Abort => {
                g.phase = Phase::End;
                return Some((
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "mock fault: reset mid-stream",
                    )),
                    g,
                ));
            }
            Phase::End => return None,
        }
    }
}

/// Append the finish chunk, the usage chunk if asked, and `[DONE]`: they go
/// out in the same write as the last token, as fast servers do.
fn finish(g: &mut Gen, out: &mut Vec<u8>) {
    g.job.cache_answer(&g.st);
    let reason = g.job.finish_reason();
    let _ = match g.job.api {
        Api::Chat => write!(
            out,
            "{}\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"{reason}\"}}]}}\n\n",
            g.head
        ),
        Api::Completions => write!(
            out,
            "{}\"text\":\"\",\"logprobs\":null,\"finish_reason\":\"{reason}\"}}]}}\n\n",
            g.head
        ),
    };
    if g.job.include_usage {
        let _ = write!(
            out,
            "data: {},\"choices\":[],\"usage\":{}}}\n\n",
            g.job.envelope(),
            g.job.usage_json()
        );
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
}

/// The whole answer as one JSON object (`"stream": false`), after the same
/// queueing and generation time a stream would take.
pub async fn non_streaming(st: Arc<MockState>, mut job: Job, mut occupancy: Occupancy) -> Bytes {
    let _permit = st.slots.clone().acquire_owned().await.ok();
    occupancy.start_running();
    let uncached = job.prefill_tokens(&st);
    let cap = &st.cfg.capacity;
    let mut at = Instant::now() + cap.prefill(uncached);
    st.timer.sleep_until(at).await;
    job.truth.first_token_ns = mono_ns();
    for _ in 1..job.output_tokens {
        at += cap.token_gap(occupancy.running_now());
        st.timer.sleep_until(at).await;
    }
    if job.fault == Some(FaultKind::Stall) {
        tokio::time::sleep(st.cfg.stall_for).await;
    }
    let mut text = Vec::new();
    let n = job.output_tokens;
    job.push_words(&mut text, n, true);
    job.cache_answer(&st);
    job.truth.reply_hash = job.reply_hash;
    let text = String::from_utf8(text).expect("vocabulary is ASCII");
    let reason = job.finish_reason();
    let body = match job.api {
        Api::Chat => format!(
            r#"{},"object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"logprobs":null,"finish_reason":"{reason}"}}],"usage":{}}}"#,
            job.envelope()
                .replace(r#","object":"chat.completion.chunk""#, ""),
            job.usage_json()
        ),
        Api::Completions => format!(
            r#"{},"choices":[{{"index":0,"text":"{text}","logprobs":null,"finish_reason":"{reason}"}}],"usage":{}}}"#,
            job.envelope(),
            job.usage_json()
        ),
    };
    job.truth.last_byte_ns = mono_ns();
    job.truth.output_tokens = job.output_tokens;
    st.metrics
        .generation_tokens
        .inc_by(job.output_tokens as u64);
    st.truth.push(job.truth);
    Bytes::from(body)
}

/// A fresh RNG for request `seq`.
pub fn request_rng(seed: u64, seq: u64) -> StdRng {
    StdRng::seed_from_u64(request_seed(seed, seq))
}
