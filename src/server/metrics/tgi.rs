//! How TGI names the facts of a [`Reading`](super::Reading).

// TGI, huggingface/text-generation-inference
//   `docs/source/reference/metrics.md` at
//   53fdbe617d4f3cc358842ad96914393ad6b6e4ca: gauges `tgi_queue_size`,
//   `tgi_batch_current_size`; histograms `tgi_request_input_length` and
//   `tgi_request_generated_tokens` (router `server.rs` gives both explicit
//   buckets, so `_sum` is exposed). No TTFT histogram, no KV gauge and no
//   token counters: the histograms' `_sum`s are the token totals. Counters
//   carry no `_total` (metrics-exporter-prometheus).

use super::{Dialect, Family};

pub(super) const DIALECT: Dialect = Dialect {
    family: Family::Tgi,
    prefix: "tgi_",
    running: &["tgi_batch_current_size"],
    waiting: &["tgi_queue_size"],
    kv_cache: &[],
    preemptions: &[],
    // Recorded when a request passes validation (the generated tokens
    // when it ends): totals, though kept as histogram sums.
    prompt_tokens: &["tgi_request_input_length_sum"],
    generation_tokens: &["tgi_request_generated_tokens_sum"],
    cache_queries: &[],
    cache_hits: &[],
    ttft: None,
};

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn tgi_reads_queue_batch_and_token_sums() {
        let r = reading(TGI, None);
        assert_eq!(r.family, Some(Family::Tgi));
        assert_eq!(r.running, Some(14.0));
        assert_eq!(r.waiting, Some(6.0));
        assert_eq!(r.kv_cache, None);
        assert_eq!(r.preemptions, None);
        assert_eq!(r.prompt_tokens, Some(245_760.0));
        assert_eq!(r.generation_tokens, Some(131_072.0));
        assert_eq!(r.ttft_buckets, None);
    }
}
