//! A Hugging Face `tokenizer.json`, read from a local file (never from
//! the network), for exact prompt lengths and client-side input token
//! counts.

use crate::workload::TokenizerInfo;
use crate::workload::synthetic::TokenCount;
use sha2::{Digest, Sha256};
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub info: TokenizerInfo,
}

impl Tokenizer {
    /// Load `path`; the error names the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| format!("{}: not a Hugging Face tokenizer.json: {e}", path.display()))?;
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            inner,
            info: TokenizerInfo {
                file: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256,
            },
        })
    }
}

impl TokenCount for Tokenizer {
    fn count(&self, text: &str) -> usize {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().len())
            .unwrap_or(0)
    }

    /// The vocabulary's whole words, as they decode after a space.
    fn words(&self) -> Vec<String> {
        let mut ids: Vec<u32> = self.inner.get_vocab(false).into_values().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.inner.decode(&[id], true).ok())
            .filter(|w| w.starts_with(' '))
            .collect()
    }
}
