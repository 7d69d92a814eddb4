//! Credentials hidden from what llmload writes: an endpoint URL may carry
//! `user:pass@` or an `?api-key=` query, and URLs reach results, logs,
//! spans and error messages.

/// Hide credentials that may sit in an endpoint URL (user:pass@ and
/// query parameters such as `?api-key=`).
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let host_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            out = format!("{}***@{}", &out[..scheme_end + 3], &rest[at + 1..]);
        }
    }
    if let Some(q) = out.find('?') {
        out.truncate(q);
        out.push_str("?***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_queries_are_hidden() {
        assert_eq!(
            redact_url("https://u:p@h.example/v1/chat?api-key=s"),
            "https://***@h.example/v1/chat?***"
        );
        assert_eq!(redact_url("http://h:8000/v1"), "http://h:8000/v1");
    }
}
