//! One level from N shards' levels, exactly: the serialized HDR
//! histograms add bucket by bucket, so the merged percentiles are those of
//! every request together (within HDR precision), not an average of the
//! shards' percentiles. Counts and rates add; a level is client-bound or
//! interrupted if any shard's was. Pure.

use crate::analysis::level::ClientUsage;
use crate::analysis::level::{LevelResult, SerializedHistograms, TokenCounts};
use crate::analysis::stability::Stability;
use crate::analysis::stats::{Dist, decode, encode, round};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;

/// Add the histograms serialized in `get` across `levels`.
fn add(
    levels: &[&LevelResult],
    get: fn(&SerializedHistograms) -> &str,
) -> Result<Option<Histogram<u64>>, String> {
    let mut out: Option<Histogram<u64>> = None;
    for l in levels {
        let text = get(&l.histograms);
        if text.is_empty() {
            continue;
        }
        let h = decode(text)?;
        match &mut out {
            None => out = Some(h),
            Some(o) => o
                .add(&h)
                .map_err(|e| format!("histograms do not add: {e:?}"))?,
        }
    }
    Ok(out)
}

fn dist(h: &Option<Histogram<u64>>, scale: f64, decimals: i32) -> Dist {
    h.as_ref()
        .map(|h| Dist::from_histogram(h, scale, decimals))
        .unwrap_or_default()
}

fn ser(h: &Option<Histogram<u64>>) -> String {
    h.as_ref().map(encode).unwrap_or_default()
}

fn sum_map(
    levels: &[&LevelResult],
    get: fn(&LevelResult) -> &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in levels {
        for (k, v) in get(l) {
            *out.entry(k.clone()).or_default() += v;
        }
    }
    out
}

/// Merge the shards' results of one level. `attainment`: the SLO's
/// required share, to decide `slo_met` again (None without an SLO).
pub fn merge_level(
    levels: &[&LevelResult],
    attainment: Option<f64>,
) -> Result<LevelResult, String> {
    let first = *levels.first().ok_or("no level to merge")?;
    if levels.iter().any(|l| l.qps_target != first.qps_target) {
        return Err("the shards' levels have different target rates".into());
    }
    let sum = |f: fn(&LevelResult) -> u64| levels.iter().map(|l| f(l)).sum::<u64>();
    let fsum = |f: fn(&LevelResult) -> f64| levels.iter().map(|l| f(l)).sum::<f64>();
    let (scheduled, sent, succeeded, failed, dropped) = (
        sum(|l| l.scheduled),
        sum(|l| l.sent),
        sum(|l| l.succeeded),
        sum(|l| l.failed),
        sum(|l| l.dropped),
    );
    let h = |get| add(levels, get);
    let ttft = h(|s| &s.ttft_us)?;
    let e2e = h(|s| &s.e2e_us)?;
    let itl = h(|s| &s.itl_us)?;
    let tpot = h(|s| &s.tpot_us)?;
    let lag = h(|s| &s.schedule_lag_us)?;
    let tps = h(|s| &s.tokens_per_sec_milli)?;
    let out_tokens = h(|s| &s.output_tokens)?;
    let ttfc = h(|s| &s.ttfc_us)?;
    let decode_tps = h(|s| &s.decode_tokens_per_sec_milli)?;
    let tte = h(|s| &s.time_to_error_us)?;
    let e2e_all = h(|s| &s.e2e_all_us)?;
    let connect = h(|s| &s.connect_us)?;
    let queue = h(|s| &s.client_queue_us)?;
    let n = levels.len();
    // Weighted by each shard's successes: the share of summed TTFT spent
    // in connection set-up.
    let ok_weight = succeeded.max(1) as f64;
    let setup_share = round(
        levels
            .iter()
            .map(|l| l.connection_setup_share * l.succeeded as f64)
            .sum::<f64>()
            / ok_weight,
        4,
    );
    let client_bound_reason = if n == 1 {
        first.client_bound_reason.clone()
    } else {
        levels
            .iter()
            .enumerate()
            .filter(|(_, l)| l.client_bound)
            .map(|(i, l)| format!("shard {i}: {}", l.client_bound_reason))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let stability = merge_stability(levels);
    let good: f64 = levels
        .iter()
        .filter_map(|l| l.slo_attainment.map(|a| a * l.scheduled as f64))
        .sum();
    let slo_attainment = first.slo_attainment.map(|_| {
        if scheduled == 0 {
            0.0
        } else {
            round(good / scheduled as f64, 5)
        }
    });
    let sources: Vec<&str> = levels
        .iter()
        .map(|l| l.tokens.output_source.as_str())
        .collect();
    let output_source = if sources.iter().all(|s| *s == sources[0]) {
        sources[0].to_string()
    } else {
        "mixed".into()
    };
    // The shards' processes together: CPU and cores add up, the pacer's
    // worst stall is the worst shard's.
    let usages: Vec<ClientUsage> = levels.iter().filter_map(|l| l.client_usage).collect();
    let client_usage = (usages.len() == n).then(|| {
        let cpu: f64 = usages.iter().map(|u| u.cpu_seconds).sum();
        let throttled: Option<Vec<f64>> = usages.iter().map(|u| u.throttled_ms).collect();
        let nr: Option<Vec<u64>> = usages.iter().map(|u| u.nr_throttled).collect();
        ClientUsage {
            cpu_seconds: round(cpu, 3),
            cores_used: round(usages.iter().map(|u| u.cores_used).sum(), 3),
            cores_available: usages.iter().map(|u| u.cores_available).sum(),
            // Weighted by each shard's sends (one run merged gives its own
            // figure back exactly).
            cpu_us_per_request: if sent > 0 {
                let weighted: f64 = levels
                    .iter()
                    .zip(&usages)
                    .map(|(l, u)| u.cpu_us_per_request * l.sent as f64)
                    .sum();
                round(weighted / sent as f64, 1)
            } else {
                0.0
            },
            throttled_ms: throttled.map(|t| round(t.iter().sum(), 1)),
            nr_throttled: nr.map(|t| t.iter().sum()),
            pacer_stall_ms: usages.iter().map(|u| u.pacer_stall_ms).fold(0.0, f64::max),
            held_back: usages.iter().map(|u| u.held_back).sum(),
            send_quantum_us: usages.iter().map(|u| u.send_quantum_us).max().unwrap_or(0),
        }
    });
    Ok(LevelResult {
        client_usage,
        qps_target: first.qps_target,
        actual_qps: round(fsum(|l| l.actual_qps), 4),
        success_rate: if scheduled == 0 {
            0.0
        } else {
            round(100.0 * succeeded as f64 / scheduled as f64, 3)
        },
        ttft: dist(&ttft, 1e-6, 6),
        e2e_latency: dist(&e2e, 1e-6, 6),
        tokens_per_sec: dist(&tps, 1e-3, 3),
        errors: sum_map(levels, |l| &l.errors),
        completed_qps: round(fsum(|l| l.completed_qps), 4),
        scheduled,
        sent,
        succeeded,
        failed,
        dropped,
        duration: first.duration,
        send_window_s: levels.iter().map(|l| l.send_window_s).fold(0.0, f64::max),
        drain_s: levels.iter().map(|l| l.drain_s).fold(0.0, f64::max),
        ttfc: dist(&ttfc, 1e-6, 6),
        itl: dist(&itl, 1e-6, 6),
        tpot: dist(&tpot, 1e-6, 6),
        decode_tokens_per_sec: dist(&decode_tps, 1e-3, 3),
        output_throughput_tokens_per_sec: round(fsum(|l| l.output_throughput_tokens_per_sec), 3),
        tokens: TokenCounts {
            output_total: sum(|l| l.tokens.output_total),
            output_per_request: dist(&out_tokens, 1.0, 3),
            output_source,
            usage_chunk_mismatch: sum(|l| l.tokens.usage_chunk_mismatch),
            input_total: sum(|l| l.tokens.input_total),
            input_counted: sum(|l| l.tokens.input_counted),
            input_mismatch: sum(|l| l.tokens.input_mismatch),
            input_excess_mean: {
                let counted = sum(|l| l.tokens.input_counted);
                (counted > 0).then(|| {
                    let total: f64 = levels
                        .iter()
                        .map(|l| {
                            l.tokens.input_excess_mean.unwrap_or(0.0)
                                * l.tokens.input_counted as f64
                        })
                        .sum();
                    round(total / counted as f64, 2)
                })
            },
            cached_reported: sum(|l| l.tokens.cached_reported),
            cached_total: sum(|l| l.tokens.cached_total),
            cached_input_total: sum(|l| l.tokens.cached_input_total),
        },
        cache_hit_ratio: crate::analysis::sessions::ratio(
            sum(|l| l.tokens.cached_total),
            sum(|l| l.tokens.cached_input_total),
        ),
        sessions: {
            let parts: Vec<_> = levels.iter().filter_map(|l| l.sessions.as_ref()).collect();
            if parts.is_empty() {
                None
            } else {
                let window = levels
                    .iter()
                    .map(|l| l.send_window_s)
                    .fold(first.duration, f64::max);
                Some(crate::analysis::sessions::merge(
                    &parts,
                    std::time::Duration::from_secs_f64(window.max(0.0)),
                )?)
            }
        },
        schedule_lag: dist(&lag, 1e-6, 6),
        client_bound: levels.iter().any(|l| l.client_bound),
        finish_reasons: sum_map(levels, |l| &l.finish_reasons),
        interrupted: levels.iter().any(|l| l.interrupted),
        client_bound_reason,
        time_to_error: dist(&tte, 1e-6, 6),
        e2e_latency_all: dist(&e2e_all, 1e-6, 6),
        new_connections: sum(|l| l.new_connections),
        retried_stale_connection: sum(|l| l.retried_stale_connection),
        connect: dist(&connect, 1e-6, 6),
        connection_setup_share: setup_share,
        connection_bound: setup_share > crate::analysis::level::SETUP_BOUND_SHARE,
        stability: stability.clone(),
        goodput: first
            .goodput
            .map(|_| round(fsum(|l| l.goodput.unwrap_or(0.0)), 4)),
        slo_attainment,
        slo_met: match (slo_attainment, attainment) {
            (Some(a), Some(need)) => Some(
                scheduled > 0 && a >= need - 1e-9 && stability.as_ref().is_none_or(|s| s.stable),
            ),
            _ => None,
        },
        probe: None,
        server: levels.iter().find_map(|l| l.server.clone()),
        // A closed-loop level's shards each ran their share of its users.
        concurrency: first
            .concurrency
            .map(|_| levels.iter().filter_map(|l| l.concurrency).sum()),
        qps_ramp: first.qps_ramp,
        trace: first.trace,
        client_queue: queue.as_ref().map(|q| Dist::from_histogram(q, 1e-6, 6)),
        timeseries: crate::analysis::series::merge_points(
            &levels
                .iter()
                .map(|l| l.timeseries.as_slice())
                .collect::<Vec<_>>(),
        ),
        histograms: SerializedHistograms {
            encoding: first.histograms.encoding.clone(),
            ttft_us: ser(&ttft),
            e2e_us: ser(&e2e),
            itl_us: ser(&itl),
            tpot_us: ser(&tpot),
            schedule_lag_us: ser(&lag),
            tokens_per_sec_milli: ser(&tps),
            output_tokens: ser(&out_tokens),
            ttfc_us: ser(&ttfc),
            decode_tokens_per_sec_milli: ser(&decode_tps),
            time_to_error_us: ser(&tte),
            e2e_all_us: ser(&e2e_all),
            connect_us: ser(&connect),
            client_queue_us: ser(&queue),
        },
    })
}

/// Each shard saw its own share of the backlog: the level is unstable if
/// any shard's was, and the growth rates add.
fn merge_stability(levels: &[&LevelResult]) -> Option<Stability> {
    let all: Vec<&Stability> = levels.iter().filter_map(|l| l.stability.as_ref()).collect();
    if all.is_empty() {
        return None;
    }
    if all.len() == 1 {
        return Some(all[0].clone());
    }
    Some(Stability {
        stable: all.iter().all(|s| s.stable),
        backlog_slope: all.iter().map(|s| s.backlog_slope).sum(),
        backlog_t: all.iter().map(|s| s.backlog_t).fold(0.0, f64::max),
        ttft_slope: all.iter().map(|s| s.ttft_slope).sum::<f64>() / all.len() as f64,
        windows: all.iter().map(|s| s.windows).min().unwrap_or(0),
        evidence: all
            .iter()
            .enumerate()
            .map(|(i, s)| format!("shard {i}: {}", s.evidence))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::level::LevelTiming;
    use crate::analysis::stats::LevelStats;
    use crate::client::record::RequestRecord;
    use std::time::Duration;

    fn level(records: impl Iterator<Item = RequestRecord>) -> LevelResult {
        let mut s = LevelStats::new();
        for r in records {
            s.record(&r);
        }
        LevelResult::from_stats(
            &s,
            LevelTiming {
                qps_target: 10.0,
                duration: Duration::from_secs(10),
                send_window: Duration::from_secs(10),
                drain: Duration::from_millis(500),
                client: None,
                ..Default::default()
            },
        )
    }

    fn rec(i: u64) -> RequestRecord {
        let ms = Duration::from_millis;
        let mut r = RequestRecord::new(i, ms(i * 100), ms(i * 100));
        r.first_token_at = Some(ms(i * 100 + 20 + i * 37 % 200));
        r.done_at = ms(i * 100 + 400 + i * 53 % 300);
        r.token_chunks = 8;
        r.usage_output_tokens = Some(8);
        if i.is_multiple_of(17) {
            r.outcome = Err(crate::client::record::ErrorKind::Http(503));
        }
        r
    }

    #[test]
    fn shards_merge_to_the_whole() {
        let whole = level((0..400).map(rec));
        let shards: Vec<LevelResult> = (0..4)
            .map(|k| level((0..400).filter(|i| i % 4 == k).map(rec)))
            .collect();
        let refs: Vec<&LevelResult> = shards.iter().collect();
        let m = merge_level(&refs, None).unwrap();
        assert_eq!(
            (m.scheduled, m.sent, m.succeeded, m.failed),
            (whole.scheduled, whole.sent, whole.succeeded, whole.failed)
        );
        assert_eq!(m.errors, whole.errors);
        // Percentiles of every request together, exactly.
        assert_eq!(m.ttft, whole.ttft);
        assert_eq!(m.e2e_latency, whole.e2e_latency);
        assert_eq!(m.tokens_per_sec, whole.tokens_per_sec);
        assert_eq!(m.histograms.ttft_us, whole.histograms.ttft_us);
        assert_eq!(m.success_rate, whole.success_rate);
    }

    #[test]
    fn merging_one_gives_it_back() {
        let one = level((0..100).map(rec));
        assert_eq!(merge_level(&[&one], None).unwrap(), one);
    }
}
