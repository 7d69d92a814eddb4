//! `llmload mock`: serve the built-in endpoint until Ctrl-C / SIGTERM.

use crate::analysis::saturation::fmt_qps;
use crate::base::error::{EXIT_OK, UsageError};
use crate::cli::MockArgs;
use crate::mock::MockServer;

pub async fn mock(args: MockArgs) -> anyhow::Result<u8> {
    let cfg = args.to_config().map_err(UsageError::new)?;
    if args.print_capacity {
        crate::out!(
            "{}",
            capacity_report(
                &cfg,
                args.assume_input_tokens,
                args.assume_max_tokens,
                args.assume_turns,
                args.assume_turn_input
            )
        );
        return Ok(EXIT_OK);
    }
    let server = MockServer::start(cfg, args.listen)
        .await
        .map_err(|e| UsageError::new(format!("cannot listen on {}: {e}", args.listen)))?;
    crate::errln!(
        "llmload mock listening on http://{} (POST /v1/chat/completions, /v1/completions; GET /v1/models /health /metrics /debug/requests)",
        server.addr
    );
    crate::base::signals::next().await;
    crate::errln!("llmload mock: stopping");
    server.shutdown().await;
    Ok(EXIT_OK)
}

/// The human-readable capacity statement plus one machine-readable line.
pub fn capacity_report(
    cfg: &crate::mock::MockConfig,
    first_input: u32,
    max_tokens: u32,
    turns: u32,
    turn_input: u32,
) -> String {
    let out = cfg.mean_output_tokens(max_tokens);
    let c = &cfg.capacity;
    let out_tokens = out.round().max(1.0) as u32;
    // Sessions: the prefill a request pays is its uncached tokens.
    let shape = crate::mock::capacity::SessionShape {
        turns: turns.max(1),
        first_input,
        turn_input,
        output: out,
    };
    let pre = shape.prefill(cfg.prefix_cache_tokens, c.slots);
    let input = pre.mean_uncached.round() as u32;
    let service = c.service_time(input, out_tokens, c.slots);
    let rps = c.capacity_rps(input, out_tokens);
    let low = c.service_time(input, out_tokens, 1);
    let mut json = serde_json::json!({
        "capacity_rps": (rps * 1000.0).round() / 1000.0,
        "slots": c.slots,
        "queue": if c.queue == crate::mock::capacity::UNBOUNDED {
            serde_json::Value::from("unbounded")
        } else {
            serde_json::Value::from(c.queue)
        },
        "input_tokens": input,
        "mean_output_tokens": out,
        "service_time_full_batch_s": service.as_secs_f64(),
        "service_time_single_s": low.as_secs_f64(),
        "ttft_unloaded_s": c.prefill(input).as_secs_f64(),
    });
    let mut sessions = String::new();
    if turns > 1 || cfg.prefix_cache_tokens > 0 {
        json["turns"] = turns.max(1).into();
        json["sessions_per_s"] = (((rps / turns.max(1) as f64) * 1000.0).round() / 1000.0).into();
        json["mean_prompt_tokens"] = ((pre.mean_input * 10.0).round() / 10.0).into();
        json["mean_prefill_tokens"] = ((pre.mean_uncached * 10.0).round() / 10.0).into();
        json["prefix_cache_tokens"] = cfg.prefix_cache_tokens.into();
        sessions = format!(
            "  sessions of {} turns: {} sessions/s; a request carries {:.0} prompt tokens on average and prefills {:.0}{}\n",
            turns.max(1),
            fmt_qps((rps / turns.max(1) as f64 * 100.0).round() / 100.0),
            pre.mean_input,
            pre.mean_uncached,
            match (cfg.prefix_cache_tokens, pre.cache_holds) {
                (0, _) => " (no prefix cache: --prefix-cache TOKENS)".to_string(),
                (_, true) => format!(
                    " (the cache holds {} histories of {:.0} tokens: one per slot)",
                    c.slots, pre.longest
                ),
                (n, false) => format!(
                    " -- optimistic: the cache ({n} tokens) is smaller than {} slots x the longest history ({:.0} tokens), so evictions cost prefill again",
                    c.slots, pre.longest
                ),
            }
        );
    }
    format!(
        "capacity: {} requests/s\n  = slots {} / service time at a full batch {:.4}s\n  \
         service = ttft {:?} + prefill {:?} x {} input tokens + ({:.1} - 1) output tokens x gap {:?}\n  \
         unloaded: TTFT {:.4}s, E2E {:.4}s\n{sessions}{}\n",
        fmt_qps((rps * 100.0).round() / 100.0),
        c.slots,
        service.as_secs_f64(),
        c.ttft,
        c.prefill_per_token,
        input,
        out,
        c.token_gap(c.slots),
        c.prefill(input).as_secs_f64(),
        low.as_secs_f64(),
        json
    )
}
