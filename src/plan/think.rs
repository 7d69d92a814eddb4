//! Think time: the pause between the end of a reply and the user's next
//! turn. Users read before they answer; without the pause a session's
//! turns arrive back to back and the server's cache holds each history
//! for less time than it would in production. Pure: parsing and seeded
//! draws.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `--think-time`: a fixed pause, or exponentially distributed around a
/// mean (`exp:2s`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ThinkTime {
    /// No pause: the next turn goes as soon as the reply ends.
    #[default]
    None,
    Fixed(Duration),
    Exponential(Duration),
}

/// Longest think time accepted: an hour is already a session left open.
pub const MAX_THINK: Duration = Duration::from_secs(3600);

impl ThinkTime {
    /// `2s`, `500ms`, `0`, or `exp:2s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (exp, d) = match s.strip_prefix("exp:") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let d = crate::base::duration::parse(d).map_err(|e| {
            format!("'{s}': {e} (give a duration like 2s, or exp:2s for an exponential pause)")
        })?;
        if d > MAX_THINK {
            return Err(format!("'{s}': think time above one hour"));
        }
        Ok(match (exp, d.is_zero()) {
            (_, true) => Self::None,
            (false, false) => Self::Fixed(d),
            (true, false) => Self::Exponential(d),
        })
    }

    /// The pause before turn `turn` (1-based, ≥ 2) of session instance
    /// `session`: the same for the same seed, so two runs pause alike.
    pub fn draw(&self, seed: u64, session: u64, turn: u32) -> Duration {
        match *self {
            Self::None => Duration::ZERO,
            Self::Fixed(d) => d,
            Self::Exponential(mean) => {
                let mut rng = StdRng::seed_from_u64(
                    seed ^ session.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((turn as u64) << 48),
                );
                let e = Exp::new(1.0).expect("rate 1 is valid");
                let x: f64 = e.sample(&mut rng);
                mean.mul_f64(x.min(50.0))
            }
        }
    }

    /// The mean pause.
    pub fn mean(&self) -> Duration {
        match *self {
            Self::None => Duration::ZERO,
            Self::Fixed(d) | Self::Exponential(d) => d,
        }
    }

    /// For `metadata.json` and the console: `2s`, `exp:2s`, `0`.
    pub fn describe(&self) -> String {
        let f = |d: Duration| crate::base::duration::format(d);
        match *self {
            Self::None => "0".into(),
            Self::Fixed(d) => f(d),
            Self::Exponential(d) => format!("exp:{}", f(d)),
        }
    }
}

impl Serialize for ThinkTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.describe())
    }
}

impl<'de> Deserialize<'de> for ThinkTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_exponential_and_none() {
        assert_eq!(
            ThinkTime::parse("2s").unwrap(),
            ThinkTime::Fixed(Duration::from_secs(2))
        );
        assert_eq!(ThinkTime::parse("0").unwrap(), ThinkTime::None);
        let e = ThinkTime::parse("exp:500ms").unwrap();
        assert_eq!(e, ThinkTime::Exponential(Duration::from_millis(500)));
        assert_eq!(e.describe(), "exp:500ms");
        assert!(ThinkTime::parse("soon").unwrap_err().contains("exp:2s"));
        assert!(ThinkTime::parse("2h").unwrap_err().contains("one hour"));
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<ThinkTime>(&json).unwrap(), e);
    }

    #[test]
    fn exponential_draws_are_seeded_and_average_the_mean() {
        let e = ThinkTime::Exponential(Duration::from_millis(100));
        assert_eq!(e.draw(1, 2, 3), e.draw(1, 2, 3));
        assert_ne!(e.draw(1, 2, 3), e.draw(1, 2, 4));
        let n = 4000;
        let mean: f64 = (0..n).map(|i| e.draw(7, i, 2).as_secs_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.1).abs() < 0.01, "{mean}");
        let f = ThinkTime::Fixed(Duration::from_millis(40));
        assert_eq!(f.draw(0, 9, 9), Duration::from_millis(40));
    }
}
