//! llmload: finds how much traffic an LLM endpoint really holds.
//!
//! # Layout
//!
//! One folder per stage a request goes through, in pipeline order; a
//! folder uses only the folders above it in this list, no two files import
//! each other in a circle, and pure files do no I/O. `tests/architecture.rs`
//! checks all three.
//!
//! * [`base`]: small shared types (durations, secrets, clocks, exit codes,
//!   URL redaction) and process plumbing (console, logging, signals, limits).
//! * [`workload`]: what is sent: the workload spec, dataset files, request
//!   bodies, synthetic prompts of exact token lengths, the tokenizer.
//! * [`client`]: how it is sent: the streaming HTTP client and its pool,
//!   SSE decoding, the facts read from each chunk, keep-alive rules, and the
//!   [`client::record::RequestRecord`] every later stage consumes.
//! * [`server`]: what the server says about itself: its `/metrics` parsed
//!   per server family, reduced per level, scraped within bounds.
//! * [`analysis`]: what is concluded, all pure: statistics, SLOs,
//!   stability, saturation, the capacity search, compare, merge, summary.
//! * [`plan`]: where and when: the target and its settings, arrival
//!   schedules, a run's prompts.
//! * [`results`]: what is written: the results directory, the console
//!   table, the PNG.
//! * [`engine`]: the executor: sweep levels, runs, capacity probes.
//! * [`observe`]: what is watched live: Prometheus metrics, OTel traces,
//!   alert rules, the per-request log.
//! * [`mock`], [`daemon`], [`selftest`], [`cli`]: the faces: the built-in
//!   endpoint, the daemon with its API, the harness that measures llmload
//!   itself, and the command line with one module per subcommand.

pub mod analysis;
pub mod base;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod engine;
pub mod mock;
pub mod observe;
pub mod plan;
pub mod results;
pub mod selftest;
pub mod server;
pub mod workload;
