//! From a hyper / io / TLS error to the stable [`ErrorKind`] users see.
//! Only error types and fixed library messages are inspected, never text
//! a server sent.

use crate::client::record::ErrorKind;
use std::error::Error as StdError;

/// Walk the cause chain for the first error that says what happened.
pub fn classify(err: &(dyn StdError + 'static)) -> ErrorKind {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return ErrorKind::Tls;
        }
        // `io::Error::source` skips the error it wraps (it returns the
        // wrapped error's *source*), so descend through `get_ref`:
        // TLS errors sit inside io::Errors.
        let mut next = e.source();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::ConnectionRefused => return ErrorKind::ConnectionRefused,
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    return ErrorKind::ConnectionReset;
                }
                _ => {}
            }
            if let Some(inner) = io.get_ref() {
                next = Some(inner as &(dyn StdError + 'static));
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            return ErrorKind::ConnectionReset;
        }
        cur = next;
    }
    ErrorKind::ConnectionReset
}

/// Whether a request that failed this way before any response may be
/// sent again on a fresh connection: the connection went away under it
/// (reset, closed, never written). Timeouts and protocol errors are the
/// server's answer and are not retried.
pub fn is_stale_connection(err: &hyper::Error) -> bool {
    if err.is_timeout() || err.is_parse() || err.is_user() {
        return false;
    }
    matches!(classify(err), ErrorKind::ConnectionReset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug)]
    struct Wrap(Box<dyn StdError + Send + Sync>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapper")
        }
    }
    impl StdError for Wrap {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(self.0.as_ref())
        }
    }

    #[test]
    fn io_kinds_map_to_their_keys() {
        let cases = [
            (
                io::ErrorKind::ConnectionRefused,
                ErrorKind::ConnectionRefused,
            ),
            (io::ErrorKind::ConnectionReset, ErrorKind::ConnectionReset),
            (io::ErrorKind::ConnectionAborted, ErrorKind::ConnectionReset),
            (io::ErrorKind::BrokenPipe, ErrorKind::ConnectionReset),
            (io::ErrorKind::UnexpectedEof, ErrorKind::ConnectionReset),
        ];
        for (io_kind, want) in cases {
            let e = io::Error::new(io_kind, "x");
            assert_eq!(classify(&e), want, "{io_kind:?}");
            // Found however deep it sits.
            let w = Wrap(Box::new(Wrap(Box::new(io::Error::new(io_kind, "x")))));
            assert_eq!(classify(&w), want, "{io_kind:?} wrapped");
        }
    }

    #[test]
    fn tls_errors_inside_io_errors_are_tls() {
        // tokio-rustls nests the rustls error in an io::Error, which
        // `source()` skips: it must still be found.
        let inner = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let outer = io::Error::other(inner);
        assert_eq!(classify(&outer), ErrorKind::Tls);
        assert_eq!(classify(&Wrap(Box::new(outer))), ErrorKind::Tls);
    }

    #[test]
    fn anything_else_after_connecting_is_a_reset() {
        let e = io::Error::other("something odd");
        assert_eq!(classify(&e), ErrorKind::ConnectionReset);
    }
}
