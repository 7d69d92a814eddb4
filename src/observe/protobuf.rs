//! The protobuf wire format, written: just what the OTLP encoders need
//! ([`super::otlp_encode`] for spans, [`super::chunk_gaps`] for the
//! per-chunk histogram). Proto3 rules are the callers': a scalar at its
//! default is left out by [`uint`], [`fixed64`], [`fixed32`] and
//! [`bytes`]; a `oneof` member is written by the `_always` forms.

pub const VARINT: u32 = 0;
pub const FIXED64: u32 = 1;
pub const LEN: u32 = 2;
pub const FIXED32: u32 = 5;

pub fn tag(b: &mut Vec<u8>, field: u32, wire: u32) {
    varint(b, ((field << 3) | wire) as u64);
}

pub fn varint(b: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        b.push(v as u8);
        return;
    }
    let (bytes, n) = varint_array(v);
    b.extend_from_slice(&bytes[..n]);
}

/// `v` as a varint on the stack: its bytes, and how many are used.
pub fn varint_array(mut v: u64) -> ([u8; 10], usize) {
    let (mut bytes, mut n) = ([0u8; 10], 0);
    while v >= 0x80 {
        bytes[n] = v as u8 | 0x80;
        v >>= 7;
        n += 1;
    }
    bytes[n] = v as u8;
    (bytes, n + 1)
}

/// How many bytes `v` takes as a varint.
pub fn varint_len(v: usize) -> usize {
    let bits = usize::BITS - (v | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

pub fn uint(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, VARINT);
        varint(b, v);
    }
}

pub fn fixed64(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, FIXED64);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

pub fn fixed32(b: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(b, field, FIXED32);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

pub fn double(b: &mut Vec<u8>, field: u32, v: f64) {
    tag(b, field, FIXED64);
    b.extend_from_slice(&v.to_bits().to_le_bytes());
}

pub fn bytes(b: &mut Vec<u8>, field: u32, v: &[u8]) {
    if !v.is_empty() {
        string_bytes(b, field, v);
    }
}

pub fn string(b: &mut Vec<u8>, field: u32, v: &str) {
    bytes(b, field, v.as_bytes());
}

pub fn string_always(b: &mut Vec<u8>, field: u32, v: &str) {
    string_bytes(b, field, v.as_bytes());
}

pub fn string_bytes(b: &mut Vec<u8>, field: u32, v: &[u8]) {
    tag(b, field, LEN);
    varint(b, v.len() as u64);
    b.extend_from_slice(v);
}

/// A present embedded message: its tag, its length, then what `f` writes.
/// One byte is kept for the length, which fits most messages here (an
/// attribute, an event); a longer message is moved up to make room for
/// its length's other bytes, once.
pub fn nested(b: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    tag(b, field, LEN);
    let at = b.len();
    b.push(0);
    f(b);
    let len = b.len() - at - 1;
    if len < 0x80 {
        b[at] = len as u8;
        return;
    }
    // The length's varint, on the stack (this runs once per span).
    let (prefix, n) = varint_array(len as u64);
    let extra = n - 1;
    b.resize(b.len() + extra, 0);
    b.copy_within(at + 1..at + 1 + len, at + 1 + extra);
    b[at..at + n].copy_from_slice(&prefix[..n]);
}
