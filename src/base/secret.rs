//! The API key, in a wrapper that never prints it.
//!
//! `Debug` and `Display` show `***`, so a key cannot leak through a log
//! line, a panic message or a `{:?}` of a config struct. The only way to
//! the value is [`ApiKey::expose`], used once, to build the header (which
//! is then marked sensitive so hyper and any tracing of headers hide it).

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw key. Call sites should be few and obvious.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `Authorization: Bearer …` header value, marked sensitive.
    pub fn bearer_header(&self) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
        let mut v = http::HeaderValue::from_str(&format!("Bearer {}", self.0))?;
        v.set_sensitive(true);
        Ok(v)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let k = ApiKey::new("sk-very-secret");
        assert_eq!(format!("{k}"), "***");
        assert_eq!(format!("{k:?}"), "ApiKey(***)");
        assert_eq!(format!("{:?}", Some(&k)), "Some(ApiKey(***))");
        let h = k.bearer_header().unwrap();
        assert!(h.is_sensitive());
        assert!(!format!("{h:?}").contains("sk-very"));
        assert_eq!(k.expose(), "sk-very-secret");
    }
}
