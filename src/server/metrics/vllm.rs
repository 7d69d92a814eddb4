//! How vLLM names the facts of a [`Reading`](super::Reading).

// vLLM V1, vllm-project/vllm `vllm/v1/metrics/loggers.py`
//   (PrometheusStatLogger) at 005a810bc40faa25b8870fbc8559c3462581eee3:
//   gauges `vllm:num_requests_running`, `vllm:num_requests_waiting`,
//   `vllm:kv_cache_usage_perc` (help text: "1 means 100 percent usage", so a
//   0..1 fraction despite `_perc`) and the deprecated
//   `vllm:gpu_cache_usage_perc` it replaced in 0.9; counters declared as
//   `vllm:num_preemptions`, `vllm:prompt_tokens`, `vllm:generation_tokens`,
//   which prometheus_client exposes with a `_total` suffix; histogram
//   `vllm:time_to_first_token_seconds`. Labels: `model_name`, `engine`.
// * vLLM V0, `vllm/engine/metrics.py` (copies found by exact search) and the
//   docs.vllm.ai v0.4.0 / v0.5.3 metrics pages: `vllm:gpu_cache_usage_perc`,
//   counters declared with the suffix (`vllm:num_preemptions_total`,
//   `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`), label
//   `model_name` only.

use super::{Dialect, Family};

pub(super) const DIALECT: Dialect = Dialect {
    family: Family::Vllm,
    prefix: "vllm:",
    running: &["vllm:num_requests_running"],
    waiting: &["vllm:num_requests_waiting"],
    kv_cache: &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
    preemptions: &["vllm:num_preemptions_total"],
    prompt_tokens: &["vllm:prompt_tokens_total"],
    generation_tokens: &["vllm:generation_tokens_total"],
    cache_queries: &["vllm:prefix_cache_queries_total"],
    cache_hits: &["vllm:prefix_cache_hits_total"],
    ttft: Some("vllm:time_to_first_token_seconds"),
};

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn vllm_one_model_sums_its_engines() {
        let r = reading(VLLM, Some(LLAMA_8B));
        assert_eq!(r.family, Some(Family::Vllm));
        assert_eq!(r.running, Some(12.0));
        assert_eq!(r.waiting, Some(4.0));
        assert!(close(r.kv_cache, 0.40), "{:?}", r.kv_cache);
        assert_eq!(r.preemptions, Some(3.0));
        assert_eq!(r.prompt_tokens, Some(1_602_346.0));
        assert_eq!(r.generation_tokens, Some(801_076.0));
        assert_sorted_inf_last(&r);
        assert_eq!(r.ttft_buckets.as_ref().unwrap().len(), 23);
        assert_eq!(bucket(&r, 0.001), 0.0);
        assert_eq!(bucket(&r, 0.01), 1.0);
        assert_eq!(bucket(&r, 0.25), 3014.0);
        assert_eq!(bucket(&r, f64::INFINITY), 4871.0);
    }

    #[test]
    fn vllm_model_filter_keeps_only_that_model() {
        let r = reading(VLLM, Some(QWEN));
        assert_eq!(r.running, Some(2.0));
        assert_eq!(r.waiting, Some(0.0));
        assert!(close(r.kv_cache, 0.1));
        assert_eq!(r.preemptions, Some(0.0));
        assert_eq!(r.prompt_tokens, Some(1000.0));
        assert_eq!(r.generation_tokens, Some(500.0));
        assert_eq!(bucket(&r, 0.005), 2.0);
        assert_eq!(bucket(&r, f64::INFINITY), 100.0);
    }

    #[test]
    fn vllm_without_or_with_unknown_model_sums_everything() {
        let all = reading(VLLM, None);
        assert_eq!(all.running, Some(14.0));
        assert_eq!(all.waiting, Some(4.0));
        assert!(close(all.kv_cache, 0.30), "{:?}", all.kv_cache);
        assert_eq!(all.prompt_tokens, Some(1_603_346.0));
        assert_eq!(bucket(&all, f64::INFINITY), 4971.0);
        assert_eq!(reading(VLLM, Some("no/such-model")), all);
    }

    #[test]
    fn vllm_old_reads_gpu_cache_usage() {
        let r = reading(VLLM_OLD, Some("mistralai/Mistral-7B-Instruct-v0.3"));
        assert_eq!(r.family, Some(Family::Vllm));
        assert_eq!(r.running, Some(24.0));
        assert_eq!(r.waiting, Some(17.0));
        assert_eq!(r.kv_cache, Some(0.9871));
        assert_eq!(r.preemptions, Some(58.0));
        assert_eq!(r.prompt_tokens, Some(2_481_203.0));
        assert_eq!(r.generation_tokens, Some(1_209_877.0));
        assert_sorted_inf_last(&r);
        assert_eq!(r.ttft_buckets.as_ref().unwrap().len(), 17);
        assert_eq!(bucket(&r, 0.04), 12.0);
        assert_eq!(bucket(&r, f64::INFINITY), 1926.0);
        assert_eq!(r, reading(VLLM_OLD, None));
    }

    #[test]
    fn vllm_prefers_the_new_kv_name_when_both_are_exported() {
        let text = "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.9\n\
                    vllm:kv_cache_usage_perc{model_name=\"m\"} 0.5\n";
        assert_eq!(reading(text, None).kv_cache, Some(0.5));
    }
}
