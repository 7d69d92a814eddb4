//! How llama.cpp names the facts of a [`Reading`](super::Reading).

// llama.cpp `llama-server --metrics`: the running server on
//   127.0.0.1:8002 (`build_info` "b0-unknown"; its output is the fixture
//   `llamacpp.txt`) and ggml-org/llama.cpp `examples/server/server.cpp` at
//   03d4bccb685f1fff604c56abe4cddf0348c26417 (`handle_metrics`):
//   `llamacpp:requests_processing`, `llamacpp:requests_deferred`,
//   `llamacpp:prompt_tokens_total`, `llamacpp:tokens_predicted_total`, and
//   `llamacpp:kv_cache_usage_ratio` (used cells / n_ctx) which newer servers
//   no longer export. Newer servers (`tools/server/server-task.cpp`,
//   `server_task_result_metrics::to_metrics`) count prompt tokens
//   "excluding cached tokens" and add `llamacpp:prompt_tokens_cached_total`.

use super::{Dialect, Family};

pub(super) const DIALECT: Dialect = Dialect {
    family: Family::LlamaCpp,
    prefix: "llamacpp:",
    running: &["llamacpp:requests_processing"],
    waiting: &["llamacpp:requests_deferred"],
    kv_cache: &["llamacpp:kv_cache_usage_ratio"],
    preemptions: &[],
    prompt_tokens: &[
        "llamacpp:prompt_tokens_total",
        "llamacpp:prompt_tokens_cached_total",
    ],
    generation_tokens: &["llamacpp:tokens_predicted_total"],
    cache_queries: &[
        "llamacpp:prompt_tokens_total",
        "llamacpp:prompt_tokens_cached_total",
    ],
    cache_hits: &["llamacpp:prompt_tokens_cached_total"],
    ttft: None,
};

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn llamacpp_real_output() {
        let r = reading(LLAMACPP, Some("tiny"));
        assert_eq!(r.family, Some(Family::LlamaCpp));
        assert_eq!(r.running, Some(0.0));
        assert_eq!(r.waiting, Some(0.0));
        assert_eq!(r.kv_cache, None, "this build exports no KV gauge");
        assert_eq!(r.preemptions, None);
        // Processed plus reused from the cache: every prompt token sent.
        assert_eq!(r.prompt_tokens, Some(11_509.0 + 459_646.0));
        assert_eq!(r.generation_tokens, Some(201_616.0));
        assert_eq!(r.prefix_cache_queries, Some(11_509.0 + 459_646.0));
        assert_eq!(r.prefix_cache_hits, Some(459_646.0));
        assert_eq!(r.ttft_buckets, None);
    }

    #[test]
    fn llamacpp_older_kv_ratio() {
        let text = "# TYPE llamacpp:kv_cache_usage_ratio gauge\n\
                    llamacpp:kv_cache_usage_ratio 0.25\n\
                    llamacpp:requests_processing 3\n\
                    llamacpp:prompt_tokens_total 100\n";
        let r = reading(text, None);
        assert_eq!(r.kv_cache, Some(0.25));
        assert_eq!(r.running, Some(3.0));
        assert_eq!(r.prompt_tokens, Some(100.0));
    }
}
