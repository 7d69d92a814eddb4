//! When jobs fire: `at_start`, `every <duration>`, or a cron expression in
//! a time zone. Pure: given "now", say when next.

use chrono::{DateTime, Utc};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum FireSchedule {
    /// Once, when the daemon starts.
    AtStart,
    /// At start, then every interval after the previous fire.
    Every(Duration),
    /// A 5-field (or 6-field, with seconds) cron expression, in `tz`.
    Cron {
        expr: String,
        cron: Box<croner::Cron>,
        tz: chrono_tz::Tz,
    },
}

impl PartialEq for FireSchedule {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (Self::AtStart, Self::AtStart) => true,
            (Self::Every(a), Self::Every(b)) => a == b,
            (
                Self::Cron {
                    expr: a, tz: ta, ..
                },
                Self::Cron {
                    expr: b, tz: tb, ..
                },
            ) => a == b && ta == tb,
            _ => false,
        }
    }
}

impl FireSchedule {
    /// `at_start`, `every 6h`, `0 3 * * *`, or `CRON_TZ=Europe/Paris 0 3 * * *`.
    /// `timezone` (the job's key) applies to cron expressions; UTC if unset.
    pub fn parse(s: &str, timezone: Option<&str>) -> Result<Self, String> {
        let s = s.trim();
        if s == "at_start" {
            return Ok(Self::AtStart);
        }
        if let Some(rest) = s.strip_prefix("every ") {
            let d = crate::base::duration::parse(rest).map_err(|e| format!("'{s}': {e}"))?;
            if d < Duration::from_secs(1) {
                return Err(format!("'{s}': the interval must be at least 1s"));
            }
            return Ok(Self::Every(d));
        }
        let (tz_name, expr) = match s.strip_prefix("CRON_TZ=") {
            Some(rest) => {
                let (tz, expr) = rest.split_once(char::is_whitespace).ok_or_else(|| {
                    format!("'{s}': expected CRON_TZ=Zone followed by a cron expression")
                })?;
                (Some(tz), expr.trim())
            }
            None => (timezone, s),
        };
        let tz = match tz_name {
            None => chrono_tz::UTC,
            Some(name) => chrono_tz::Tz::from_str(name).map_err(|_| {
                format!("unknown time zone '{name}' (use an IANA name such as Europe/Paris)")
            })?,
        };
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "'{s}' is not a schedule: use \"at_start\", \"every 6h\", or a cron expression such as \"0 3 * * *\""
            ));
        }
        let cron = croner::Cron::from_str(expr).map_err(|e| format!("'{expr}': {e}"))?;
        Ok(Self::Cron {
            expr: expr.to_string(),
            cron: Box::new(cron),
            tz,
        })
    }

    /// The next fire strictly after `after`, given the previous fire (None
    /// if the job has not fired since the daemon started).
    pub fn next(
        &self,
        after: DateTime<Utc>,
        previous: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Self::AtStart => previous.is_none().then_some(after),
            Self::Every(d) => match previous {
                None => Some(after),
                Some(p) => Some(p + chrono::Duration::from_std(*d).ok()?),
            },
            Self::Cron { cron, tz, .. } => {
                let local = after.with_timezone(tz);
                cron.find_next_occurrence(&local, false)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
        }
    }

    /// The nominal interval, for "stale" judgements (cron: gap between the
    /// next two fires).
    pub fn interval(&self, now: DateTime<Utc>) -> Option<Duration> {
        match self {
            Self::AtStart => None,
            Self::Every(d) => Some(*d),
            Self::Cron { .. } => {
                let a = self.next(now, Some(now))?;
                let b = self.next(a, Some(a))?;
                (b - a).to_std().ok()
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::AtStart => "at_start".into(),
            Self::Every(d) => format!("every {}", crate::base::duration::format(*d)),
            Self::Cron { expr, tz, .. } => format!("cron '{expr}' ({tz})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn at_start_fires_once() {
        let s = FireSchedule::parse("at_start", None).unwrap();
        let now = utc(2026, 11, 24, 10, 0);
        assert_eq!(s.next(now, None), Some(now));
        assert_eq!(s.next(now, Some(now)), None);
    }

    #[test]
    fn every_fires_now_then_each_interval() {
        let s = FireSchedule::parse("every 6h", None).unwrap();
        let now = utc(2026, 11, 24, 10, 0);
        assert_eq!(s.next(now, None), Some(now));
        assert_eq!(s.next(now, Some(now)), Some(utc(2026, 11, 24, 16, 0)));
        assert_eq!(s.interval(now), Some(Duration::from_secs(6 * 3600)));
        assert!(FireSchedule::parse("every 10ms", None).is_err());
    }

    #[test]
    fn cron_in_utc_and_in_a_zone() {
        let s = FireSchedule::parse("0 3 * * *", None).unwrap();
        let now = utc(2026, 11, 24, 10, 0);
        assert_eq!(s.next(now, None), Some(utc(2026, 11, 25, 3, 0)));
        assert_eq!(s.interval(now), Some(Duration::from_secs(86_400)));
        // 03:00 in Paris is 02:00 UTC in winter.
        let p = FireSchedule::parse("0 3 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(p.next(now, None), Some(utc(2026, 11, 25, 2, 0)));
        let q = FireSchedule::parse("CRON_TZ=America/New_York 30 9 * * 1-5", None).unwrap();
        // Tue 24 Nov 2026 10:00 UTC = 05:00 New York; next 09:30 NY = 14:30 UTC.
        assert_eq!(q.next(now, None), Some(utc(2026, 11, 24, 14, 30)));
    }

    #[test]
    fn bad_schedules_say_why() {
        for (s, tz, needle) in [
            ("daily", None, "not a schedule"),
            ("61 3 * * *", None, "61 3"),
            (
                "0 3 * * *",
                Some("Mars/Base"),
                "unknown time zone 'Mars/Base'",
            ),
            ("every soon", None, "'every soon'"),
        ] {
            let e = FireSchedule::parse(s, tz).unwrap_err();
            assert!(e.contains(needle), "{s}: {e}");
        }
    }
}
