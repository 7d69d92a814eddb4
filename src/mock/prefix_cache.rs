//! The mock's prefix cache: what vLLM's automatic prefix caching and
//! llama.cpp's slot cache do, reduced to its arithmetic.
//!
//! A prompt is rendered as text (each message's role and content; the
//! completions API's prompt as is) and cut into blocks of
//! [`BLOCK_TOKENS`] tokens at the mock's 4 characters a token. A block is
//! keyed by the hash of the whole prefix up to its end (the previous
//! block's key chained with its bytes), so a block matches only when
//! everything before it matches too. A request's cached tokens are its
//! leading blocks found in the cache; its prefill is charged for the
//! rest. Blocks are inserted when prefill runs and, once the answer is
//! written, the blocks of prompt plus answer too: the next turn of a
//! session, which carries that answer, finds them. Least recently used
//! blocks are evicted first when the cache is full.

use std::collections::{BTreeMap, HashMap};

/// Tokens a block holds (vLLM's default block size).
pub const BLOCK_TOKENS: u32 = 16;
/// Bytes a block holds: 4 characters a token, as the mock counts them.
const BLOCK_BYTES: usize = BLOCK_TOKENS as usize * 4;

/// FNV-1a, 64 bits: a stable hash tests can compute too.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv_from(0xcbf2_9ce4_8422_2325, bytes)
}

/// [`fnv1a`] of earlier bytes (`h`) continued over `bytes`.
pub fn fnv_continue(h: u64, bytes: &[u8]) -> u64 {
    fnv_from(h, bytes)
}

fn fnv_from(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Cuts a rendered prompt into chained block keys as bytes arrive.
#[derive(Debug, Clone, Default)]
pub struct BlockHasher {
    chain: u64,
    partial: Vec<u8>,
    /// Keys of the full blocks so far, in order.
    pub blocks: Vec<u64>,
}

impl BlockHasher {
    pub fn new() -> Self {
        Self {
            chain: 0xcbf2_9ce4_8422_2325,
            partial: Vec::with_capacity(BLOCK_BYTES),
            blocks: Vec::new(),
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (BLOCK_BYTES - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == BLOCK_BYTES {
                self.chain = fnv_from(self.chain, &self.partial);
                self.blocks.push(self.chain);
                self.partial.clear();
            }
        }
    }

    /// One chat message as the cache sees it: role, then content.
    pub fn message(&mut self, role: &str, content: &str) {
        self.feed(role.as_bytes());
        self.feed(b"\n");
        self.feed(content.as_bytes());
        self.feed(b"\n\n");
    }
}

/// An LRU set of block keys, bounded in tokens.
#[derive(Debug)]
pub struct PrefixCache {
    capacity: usize,
    /// Key → the tick it was last used at.
    used: HashMap<u64, u64>,
    /// Tick → key, oldest first.
    order: BTreeMap<u64, u64>,
    tick: u64,
}

impl PrefixCache {
    /// A cache of `tokens` tokens (rounded down to whole blocks).
    pub fn new(tokens: usize) -> Self {
        Self {
            capacity: tokens / BLOCK_TOKENS as usize,
            used: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }

    /// Blocks held now.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// How many of `blocks`' leading blocks are cached; those are marked
    /// used, then every block is inserted (prefill computes the rest).
    pub fn lookup_and_insert(&mut self, blocks: &[u64]) -> usize {
        let hits = blocks
            .iter()
            .take_while(|b| self.used.contains_key(b))
            .count();
        self.insert(blocks);
        hits
    }

    /// Insert (or refresh) `blocks`, evicting the least recently used.
    pub fn insert(&mut self, blocks: &[u64]) {
        if self.capacity == 0 {
            return;
        }
        for &b in blocks {
            self.tick += 1;
            if let Some(old) = self.used.insert(b, self.tick) {
                self.order.remove(&old);
            }
            self.order.insert(self.tick, b);
        }
        while self.used.len() > self.capacity {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            self.used.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks_of(parts: &[(&str, &str)]) -> BlockHasher {
        let mut h = BlockHasher::new();
        for (r, c) in parts {
            h.message(r, c);
        }
        h
    }

    #[test]
    fn a_longer_history_shares_the_blocks_of_its_prefix() {
        let q1 = "what is the capital of france and why ".repeat(4);
        let a1 = "paris is the capital because history ".repeat(4);
        let turn1 = blocks_of(&[("user", &q1)]);
        let mut after = turn1.clone();
        after.message("assistant", &a1);
        let turn2 = blocks_of(&[("user", &q1), ("assistant", &a1), ("user", "more?")]);
        assert!(turn1.blocks.len() >= 2);
        assert_eq!(turn2.blocks[..after.blocks.len()], after.blocks[..]);
        // A changed first byte changes every key after it.
        let other = blocks_of(&[("user", &format!("W{}", &q1[1..]))]);
        assert!(other.blocks.iter().zip(&turn1.blocks).all(|(a, b)| a != b));
    }

    #[test]
    fn hits_are_leading_blocks_and_eviction_is_lru() {
        let mut c = PrefixCache::new(4 * BLOCK_TOKENS as usize);
        assert_eq!(c.lookup_and_insert(&[1, 2, 3]), 0);
        assert_eq!(c.lookup_and_insert(&[1, 2, 9]), 2);
        assert_eq!(
            c.lookup_and_insert(&[7, 2, 3]),
            0,
            "only a leading run counts"
        );
        // Full at 4 blocks: inserting 7 evicted 3, refreshing 3 evicted 1.
        assert_eq!(c.len(), 4);
        assert_eq!(c.lookup_and_insert(&[1]), 0, "evicted");
        let mut off = PrefixCache::new(0);
        assert_eq!(off.lookup_and_insert(&[1]), 0);
        assert_eq!(off.lookup_and_insert(&[1]), 0);
        assert!(off.is_empty());
    }
}
