//! How SGLang names the facts of a [`Reading`](super::Reading).

// SGLang, sgl-project/sglang `python/sglang/srt/metrics/collector.py` at
//   00ae9c1590d2d0bb6c0bfff39e312c34ae3dd538: scheduler gauges
//   `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage`
//   (share of the KV token pool in use), counter
//   `sglang:num_retracted_requests_total` (a running request pushed back
//   because the pool ran out: SGLang's name for a preemption); tokenizer
//   counters `sglang:prompt_tokens_total`, `sglang:generation_tokens_total`
//   and histogram `sglang:time_to_first_token_seconds`. Scheduler labels
//   (scheduler.py): `model_name`, `engine_type`, `tp_rank`, `pp_rank`,
//   `moe_ep_rank`, and `dp_rank` under data parallelism. Example output:
//   docs.sglang.io references/production_metrics.

use super::{Dialect, Family};

pub(super) const DIALECT: Dialect = Dialect {
    family: Family::Sglang,
    prefix: "sglang:",
    running: &["sglang:num_running_reqs"],
    waiting: &["sglang:num_queue_reqs"],
    kv_cache: &["sglang:token_usage"],
    preemptions: &["sglang:num_retracted_requests_total"],
    prompt_tokens: &["sglang:prompt_tokens_total"],
    generation_tokens: &["sglang:generation_tokens_total"],
    cache_queries: &[],
    cache_hits: &[],
    ttft: Some("sglang:time_to_first_token_seconds"),
};

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn sglang_sums_data_parallel_ranks() {
        let r = reading(SGLANG, Some(LLAMA_8B));
        assert_eq!(r.family, Some(Family::Sglang));
        assert_eq!(r.running, Some(20.0));
        assert_eq!(r.waiting, Some(6.0));
        assert!(close(r.kv_cache, 0.60), "{:?}", r.kv_cache);
        assert_eq!(r.preemptions, Some(3.0));
        assert_eq!(r.prompt_tokens, Some(8_128_902.0));
        assert_eq!(r.generation_tokens, Some(7_557_572.0));
        assert_sorted_inf_last(&r);
        assert_eq!(r.ttft_buckets.as_ref().unwrap().len(), 19);
        assert_eq!(bucket(&r, 0.1), 5000.0);
        assert_eq!(bucket(&r, 1.0), 19500.0);
        assert_eq!(bucket(&r, f64::INFINITY), 21028.0);
    }
}
