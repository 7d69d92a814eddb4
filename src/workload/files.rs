//! Dataset files read from disk: the only I/O of the workload stage.
//! Parsing is [`super::dataset`]'s, pure, on the bytes read here.

use crate::workload::Format;
use crate::workload::dataset::{Conversation, DatasetError, Loaded, parse};
use std::path::Path;

/// Load a dataset file in `format`, or the format its content shows,
/// with its sessions when it has them; `sessions`: ShareGPT entries as
/// multi-turn sessions.
pub fn load_as(
    path: &Path,
    format: Option<Format>,
    sessions: bool,
) -> Result<(Loaded, Option<Vec<crate::workload::session::Session>>), DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })?;
    crate::workload::session::load(path, &bytes, format, sessions)
}

/// Load and convert a dataset file.
pub fn load(path: &Path) -> Result<Vec<Conversation>, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &bytes)
}

/// Read a trace file line by line (a million lines never sit in memory
/// as text). Errors name the file, the line and the field.
pub fn load_trace(
    path: &Path,
    format: Option<crate::workload::trace::TraceFormat>,
) -> Result<crate::workload::trace::Trace, String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("{}: cannot read trace: {e}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut parser = crate::workload::trace::TraceParser::new(format);
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|e| format!("{}: line {}: cannot read: {e}", path.display(), n + 1))?;
        if read == 0 {
            break;
        }
        n += 1;
        parser
            .line(n, &line)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    parser
        .finish(n)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file() {
        let e = load(Path::new("/nonexistent/x.json")).unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/x.json: cannot read dataset")
        );
    }
}
