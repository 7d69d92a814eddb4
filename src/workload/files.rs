//! Dataset files read from disk: the only I/O of the workload stage.
//! Parsing is [`super::dataset`]'s, pure, on the bytes read here.

use crate::workload::Format;
use crate::workload::dataset::{Conversation, DatasetError, Loaded, parse, parse_as};
use std::path::Path;

/// Load a dataset file in `format`, or the format its content shows.
pub fn load_as(path: &Path, format: Option<Format>) -> Result<Loaded, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_as(path, &bytes, format)
}

/// Load and convert a dataset file.
pub fn load(path: &Path) -> Result<Vec<Conversation>, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &bytes)
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
