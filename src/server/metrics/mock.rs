//! How llmload's own mock names the facts of a [`Reading`](super::Reading).

// llmload's mock: `src/mock/metrics.rs` (vLLM's names under
//   `llmload_mock_`).

use super::{Dialect, Family};

pub(super) const DIALECT: Dialect = Dialect {
    family: Family::Llmload,
    prefix: "llmload_mock_",
    running: &["llmload_mock_num_requests_running"],
    waiting: &["llmload_mock_num_requests_waiting"],
    kv_cache: &[],
    preemptions: &[],
    prompt_tokens: &["llmload_mock_prompt_tokens_total"],
    generation_tokens: &["llmload_mock_generation_tokens_total"],
    cache_queries: &["llmload_mock_prefix_cache_queries_total"],
    cache_hits: &["llmload_mock_prefix_cache_hits_total"],
    ttft: None,
};

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn llmload_mock() {
        let r = reading(MOCK, None);
        assert_eq!(r.family, Some(Family::Llmload));
        assert_eq!(r.running, Some(4.0));
        assert_eq!(r.waiting, Some(9.0));
        assert_eq!(r.kv_cache, None);
        assert_eq!(r.prompt_tokens, Some(52_000.0));
        assert_eq!(r.generation_tokens, Some(31_000.0));
        assert_eq!(r.ttft_buckets, None);
    }
}
