//! llmload: finds how much traffic an LLM endpoint really holds.
//!
//! # Layout
//!
//! A pure core with no I/O, and thin shells around it.
//!
//! Pure core:
//! * [`schedule`]: open-loop arrival offsets (constant, Poisson).
//! * [`sse`]: incremental Server-Sent Events decoder.
//! * [`chunk`]: the few facts we read from each streamed OpenAI chunk.
//! * [`dataset`] / [`request`]: the seed's dataset format and request body.
//! * [`record`]: `RequestRecord`, the one row later stages consume.
//! * [`stats`]: HDR histograms per level and the results JSON object.
//! * [`saturation`]: max QPS, saturation point, recommended limit.
//! * [`table`]: the seed's console table.
//!
//! Shells:
//! * [`client`]: hyper streaming client that turns a request into a record.
//! * [`sweep`]: the one executor: schedule → send → record, level by level.
//! * [`results`]: the timestamped results directory, written atomically.
//! * [`plot`]: the 3×2 PNG.
//! * [`mock`]: the built-in OpenAI-compatible endpoint with a capacity model.
//! * [`cli`]: command-line definitions and the `run` glue.

pub mod alerts;
pub mod chunk;
pub mod cli;
pub mod client;
pub mod clock;
pub mod commands;
pub mod console;
pub mod daemon;
pub mod dataset;
pub mod duration;
pub mod error;
pub mod keepalive;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod mock;
pub mod plot;
pub mod progress;
pub mod record;
pub mod request;
pub mod requests_jsonl;
pub mod results;
pub mod runner;
pub mod saturation;
pub mod schedule;
pub mod secret;
pub mod selftest;
pub mod serve;
pub mod signals;
pub mod sse;
pub mod stats;
pub mod sweep;
pub mod table;
pub mod target;
pub mod telemetry;
pub mod writer;
