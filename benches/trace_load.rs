//! How fast a large trace loads and how much memory it holds: writes a
//! synthetic Mooncake trace of `TRACE_LINES` lines (default 10⁶; each
//! with 1–8 hash ids, as Mooncake's own), reads it back through the same
//! loader `--trace` uses, and prints the time, lines per second, the
//! trace's own bytes and the process's peak RSS before and after.
//!
//! `cargo bench --bench trace_load` (release build). A figure, not a
//! pass/fail test: the machine is shared.

use std::io::Write;
use std::time::Instant;

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::var("TRACE_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("trace.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut t = 0u64;
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += x % 40;
            let input = 100 + x % 4000;
            let blocks = input.div_ceil(512);
            let ids: Vec<String> = (0..blocks)
                .map(|b| if i % 2 == 0 { b } else { (i as u64) * 8 + b }.to_string())
                .collect();
            writeln!(
                f,
                "{{\"timestamp\": {t}, \"input_length\": {input}, \"output_length\": {}, \"hash_ids\": [{}]}}",
                1 + x % 300,
                ids.join(", ")
            )
            .expect("write");
        }
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let before = peak_rss_kb();
    let t0 = Instant::now();
    let trace = llmload::workload::files::load_trace(&path, None).expect("the trace loads");
    let took = t0.elapsed();
    let after = peak_rss_kb();
    let t1 = Instant::now();
    let reuse = llmload::workload::trace::reuse_share(&trace, &trace.entries);
    let reuse_took = t1.elapsed();
    println!(
        "trace load: {n} lines ({:.0} MB of JSONL) in {:.2} s ({:.0} lines/s); trace holds {:.1} MB; \
         peak RSS {:.1} MB before, {:.1} MB after (+{:.1} MB); prefix reuse {:.1}% computed in {:.2} s",
        size as f64 / 1e6,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        trace.heap_bytes() as f64 / 1e6,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / 1024.0,
        reuse.unwrap_or(0.0) * 100.0,
        reuse_took.as_secs_f64()
    );
}
