//! Duration flags: plain seconds like the seed's `--duration 60`, or
//! humantime such as `90s`, `1.5s`, `50ms`, `2m`.

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("'{s}' must be a non-negative number of seconds"));
        }
        return Ok(Duration::from_secs_f64(secs));
    }
    // humantime has no fractional units ("1.5s"); handle them first.
    for (suffix, scale) in [("ms", 1e-3), ("s", 1.0)] {
        if let Some(num) = t
            .strip_suffix(suffix)
            .and_then(|n| n.trim().parse::<f64>().ok())
            && num >= 0.0
            && num.is_finite()
        {
            return Ok(Duration::from_secs_f64(num * scale));
        }
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("'{s}' is not a duration ({e}): use seconds (60) or units (90s, 500ms, 2m, 1h)")
    })
}

/// `60` → "60s", `0.05` → "50ms": for messages and configs.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse("0.1ms"), Ok(Duration::from_micros(100)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("50us"), Ok(Duration::from_micros(50)));
        assert!(parse("-1").is_err());
        assert!(parse("soon").unwrap_err().contains("'soon'"));
    }
}
