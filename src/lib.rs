//! llmload: finds how much traffic an LLM endpoint really holds.
//!
//! # Layout
//!
//! A pure core with no I/O, shells around it, two faces (`run` and the
//! daemon) on one engine, and thin commands on top. `tests/architecture.rs`
//! checks that arrows only point down.
//!
//! Pure core (no sockets, no clocks of its own):
//! * [`schedule`]: open-loop arrival offsets (constant, Poisson).
//! * [`sse`]: incremental Server-Sent Events decoder.
//! * [`chunk`]: the few facts read from each streamed OpenAI chunk.
//! * [`dataset`] / [`request`]: dataset files (seed, ShareGPT, JSONL) and
//!   request bodies (chat, completions, forced lengths, extra keys).
//! * [`workload`] / [`synthetic`]: what a run sends, and prompts of exact
//!   token lengths.
//! * [`record`]: `RequestRecord`, the one row later stages consume.
//! * [`stats`]: HDR histograms per level and the results JSON object.
//! * [`saturation`]: max QPS, saturation point, recommended limit.
//! * [`slo`] / [`stability`]: per-request SLOs and backlog growth.
//! * [`search`]: the capacity search (grow, bisect, confirm).
//! * [`summary`]: what a run concluded (`summary.json`).
//! * [`compare`]: regression verdicts with noise from the runs' histograms.
//! * [`merge`]: N shards' levels into one, exactly.
//! * [`server_metrics`] / [`server_view`]: the server's own Prometheus
//!   metrics (vLLM, SGLang, TGI, llama.cpp), parsed and reduced per level.
//! * [`keepalive`]: connection reuse rules (Keep-Alive, close detection).
//! * [`table`]: the seed's console table.
//! * [`duration`], [`secret`], [`clock`], [`error`]: small shared types.
//!
//! Shells:
//! * [`target`]: one endpoint and its settings, from flags or config.
//! * [`prompts`] / [`tokenizer`]: a run's prompts, read or generated and
//!   counted with a local `tokenizer.json`.
//! * [`capacity`]: the capacity search's probes, run through the engine.
//! * [`scrape`]: bounded scraping of the server's metrics.
//! * [`client`]: the streaming client and its own connection pool.
//! * [`sweep`]: the one executor: schedule → send → record, level by level.
//! * [`runner`]: a sweep plan run level by level.
//! * [`writer`] / [`results`]: the results directory, one writer for every
//!   kind of run; metadata and summary types.
//! * [`plot`]: the 3×2 PNG.
//! * [`requests_jsonl`]: the optional per-request log.
//! * [`metrics`]: Prometheus metrics fed by every request.
//! * [`telemetry`]: OpenTelemetry traces.
//! * [`mock`]: the built-in OpenAI-compatible endpoint with a capacity model.
//! * [`console`], [`progress`], [`logging`], [`signals`], [`serve`],
//!   [`limits`], [`alerts`]: process plumbing.
//!
//! Faces and commands:
//! * [`cli`]: command-line definitions (flags → [`target::Target`]).
//! * [`daemon`]: scheduled and continuous runs, `/metrics`, control API.
//! * [`selftest`]: the harness that measures llmload itself.
//! * [`commands`]: one thin module per subcommand.

pub mod alerts;
pub mod capacity;
pub mod chunk;
pub mod cli;
pub mod client;
pub mod clock;
pub mod commands;
pub mod compare;
pub mod console;
pub mod daemon;
pub mod dataset;
pub mod duration;
pub mod error;
pub mod keepalive;
pub mod limits;
pub mod logging;
pub mod merge;
pub mod metrics;
pub mod mock;
pub mod plot;
pub mod progress;
pub mod prompts;
pub mod record;
pub mod request;
pub mod requests_jsonl;
pub mod results;
pub mod runner;
pub mod saturation;
pub mod schedule;
pub mod scrape;
pub mod search;
pub mod secret;
pub mod selftest;
pub mod serve;
pub mod server_metrics;
pub mod server_view;
pub mod signals;
pub mod slo;
pub mod sse;
pub mod stability;
pub mod stats;
pub mod summary;
pub mod sweep;
pub mod synthetic;
pub mod table;
pub mod target;
pub mod telemetry;
pub mod tokenizer;
pub mod workload;
pub mod writer;
