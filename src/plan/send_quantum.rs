//! The send quantum: how finely a fast level's sends are timed.
//!
//! An open loop sends each request at its own instant, so below its
//! limit the client sleeps between sends and wakes once for each. On a
//! VM a wake costs more than the request's parsing: measured against
//! nginx at 10,000 req/s (2 cores), waking per send made up half of the
//! client's CPU per request, and every send also woke the idle server
//! (the kernel charges that to the sender). wrk, at full speed, never
//! sleeps.
//!
//! With a quantum `q`, the pacer wakes at most once per `q` and sends
//! every request due by then: a send planned at `t` goes at the first
//! multiple of `q` (from the level's start) at or after `t`. Nothing is
//! sent early, and nothing is hidden: each request's schedule lag still
//! counts from its own planned instant, so the lag the results report
//! includes the quantum. What the server sees changes only below `q`,
//! far below the time any LLM request takes.
//!
//! `auto` (the default) is [`AUTO`] for a level paced on the runtime
//! (from 2,000 req/s, see the pacer), where the sends are at most 500 µs
//! apart and wakes are what limits the client, and exact timing for
//! slower levels and trace replays, where a wake per send costs nothing
//! that matters.

use std::sync::OnceLock;
use std::time::Duration;

/// The quantum `auto` gives a level paced on the runtime.
pub const AUTO: Duration = Duration::from_millis(1);
/// The largest quantum accepted: half of what marks a send late
/// (`analysis::stats::LATE_SEND`), so the quantum alone never makes a
/// level client-bound.
pub const MAX: Duration = Duration::from_millis(5);

/// `--send-quantum`: `auto`, or a duration (`0` times every send exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendQuantum {
    #[default]
    Auto,
    Fixed(Duration),
}

impl SendQuantum {
    /// The quantum for one level: `runtime_paced` when its pacer is a
    /// task on the runtime (fast, flat or curved schedules).
    pub fn resolve(self, runtime_paced: bool) -> Duration {
        match self {
            Self::Auto if runtime_paced => AUTO,
            Self::Auto => Duration::ZERO,
            Self::Fixed(q) => q,
        }
    }
}

impl std::fmt::Display for SendQuantum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(q) if q.is_zero() => f.write_str("0"),
            Self::Fixed(q) => write!(f, "{}us", q.as_micros()),
        }
    }
}

/// `auto`, `0`, or a duration of at most [`MAX`] (`500us`, `1ms`).
pub fn parse(s: &str) -> Result<SendQuantum, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Ok(SendQuantum::Auto);
    }
    let q = crate::base::duration::parse(t).map_err(|e| {
        format!("{e}; or 'auto' (1ms from 2000 req/s, exact below), or 0 (every send exact)")
    })?;
    if q > MAX {
        return Err(format!(
            "'{s}' is longer than the {}ms allowed: sends would be late enough to flag the level client-bound (a bare number is seconds; write 500us or 1ms)",
            MAX.as_millis()
        ));
    }
    Ok(SendQuantum::Fixed(q))
}

/// When a send planned `offset` after the level's start goes: the first
/// multiple of `q` at or after it (`offset` itself when `q` is zero).
pub fn quantize(offset: Duration, q: Duration) -> Duration {
    let q = q.as_nanos();
    if q == 0 {
        return offset;
    }
    let t = offset.as_nanos().div_ceil(q) * q;
    Duration::from_nanos(u64::try_from(t).unwrap_or(u64::MAX))
}

static SETTING: OnceLock<SendQuantum> = OnceLock::new();

/// Fix the process's setting (once, from `--send-quantum`); returns it.
pub fn init(asked: Option<SendQuantum>) -> SendQuantum {
    *SETTING.get_or_init(|| asked.unwrap_or_default())
}

/// The setting [`init`] fixed (`auto` when none was).
pub fn get() -> SendQuantum {
    *SETTING.get_or_init(SendQuantum::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn parse_takes_auto_zero_and_short_durations() {
        assert_eq!(parse("auto"), Ok(SendQuantum::Auto));
        assert_eq!(parse(" AUTO "), Ok(SendQuantum::Auto));
        assert_eq!(parse("0"), Ok(SendQuantum::Fixed(Duration::ZERO)));
        assert_eq!(parse("500us"), Ok(SendQuantum::Fixed(us(500))));
        assert_eq!(parse("1ms"), Ok(SendQuantum::Fixed(us(1000))));
        assert_eq!(parse("5ms"), Ok(SendQuantum::Fixed(MAX)));
        // A bare number is seconds, as everywhere else: far too long.
        let e = parse("1").unwrap_err();
        assert!(
            e.contains("longer than the 5ms") && e.contains("1ms"),
            "{e}"
        );
        assert!(parse("6ms").is_err());
        let e = parse("soon").unwrap_err();
        assert!(e.contains("'soon'") && e.contains("auto"), "{e}");
        assert!(parse("-1ms").is_err());
        for q in ["auto", "0", "250us", "1ms"] {
            let v = parse(q).unwrap();
            assert_eq!(parse(&v.to_string()), Ok(v), "{q}");
        }
    }

    #[test]
    fn auto_is_a_millisecond_on_the_runtime_and_exact_elsewhere() {
        assert_eq!(SendQuantum::Auto.resolve(true), AUTO);
        assert_eq!(SendQuantum::Auto.resolve(false), Duration::ZERO);
        let q = SendQuantum::Fixed(us(250));
        assert_eq!(q.resolve(true), us(250));
        assert_eq!(q.resolve(false), us(250));
        assert_eq!(
            SendQuantum::Fixed(Duration::ZERO).resolve(true),
            Duration::ZERO
        );
    }

    #[test]
    fn a_send_goes_at_the_first_multiple_at_or_after_its_instant() {
        let q = us(1000);
        assert_eq!(quantize(Duration::ZERO, q), Duration::ZERO);
        assert_eq!(quantize(us(1), q), us(1000));
        assert_eq!(quantize(us(999), q), us(1000));
        assert_eq!(quantize(us(1000), q), us(1000));
        assert_eq!(quantize(Duration::from_nanos(1_000_001), q), us(2000));
        assert_eq!(quantize(us(123_456), Duration::ZERO), us(123_456));
        // Never early, and never more than one quantum late.
        for n in (0..50_000u64).step_by(37) {
            let t = Duration::from_nanos(n * 1013);
            let s = quantize(t, q);
            assert!(s >= t && s - t < q, "{t:?} -> {s:?}");
        }
    }
}
