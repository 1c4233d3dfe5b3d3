//! Digests and labels: the identity of a file's bytes and the Stream Load label derived from it.
//!
//! The label formula is part of the outside interface: auditors recompute it with standard tools
//! and two hosts that see the same bytes must derive the same label. Never change it; a new
//! formula would need a new name and a migration.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Read size for digesting; large enough that the hash, not the syscalls, sets the pace.
const READ_CHUNK: usize = 1 << 20;

/// The prefix of every label unless a watch sets its own.
pub const DEFAULT_PREFIX: &str = "sluice_";

/// Longest label the cluster accepts (`^[-\w]{1,128}$`).
pub const MAX_LABEL_LEN: usize = 128;

/// Hex characters of the target hash in a label.
const TARGET_HASH_LEN: usize = 16;

/// The SHA-256 of a file's bytes, streamed, with the number of bytes read.
///
/// # Errors
///
/// Any read error of the file.
pub fn digest_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    digest_reader(&mut file)
}

/// The SHA-256 of everything `reader` yields, as lowercase hex, and the byte count.
///
/// # Errors
///
/// Any read error.
pub fn digest_reader(reader: &mut impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut block = AlignedBuffer::new(READ_CHUNK);
    let buf = block.as_mut();
    let mut total = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

/// The label of a file with digest `sha256` loaded into `database`.`table`:
///
/// `prefix + sha256 + "-" + first 16 hex of SHA-256("database.table")`
///
/// The digest makes the label follow the bytes; the target hash keeps the label distinct when
/// the same bytes go to two tables of one database (labels are unique per database).
pub fn label_for(prefix: &str, database: &str, table: &str, sha256: &str) -> String {
    let target = hex(&Sha256::digest(format!("{database}.{table}").as_bytes()));
    format!("{prefix}{sha256}-{}", &target[..TARGET_HASH_LEN])
}

/// Whether `label` is one the cluster accepts: 1 to 128 of ASCII letters, digits, `_` and `-`.
pub fn is_valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The longest prefix that still leaves room for the digest and target hash.
pub fn max_prefix_len() -> usize {
    MAX_LABEL_LEN - 64 - 1 - TARGET_HASH_LEN
}

/// A read buffer whose slice starts on a page boundary. Measured here: reading a file into a
/// fresh 1 MiB `Vec` (which the allocator maps 16 bytes past a page start) cost the kernel
/// about three times as much as reading into a page-aligned slice, making the digest pass a
/// third slower than `openssl dgst`.
pub(crate) struct AlignedBuffer {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuffer {
    const PAGE: usize = 4096;

    pub(crate) fn new(len: usize) -> AlignedBuffer {
        let bytes = vec![0u8; len + Self::PAGE];
        let start = bytes.as_ptr().align_offset(Self::PAGE).min(Self::PAGE);
        AlignedBuffer { bytes, start, len }
    }

    pub(crate) fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_bytes() {
        let (digest, len) = digest_reader(&mut &b"abc"[..]).unwrap();
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(len, 3);
    }

    #[test]
    fn label_is_distinct_per_table_and_valid() {
        let d = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let a = label_for(DEFAULT_PREFIX, "sales", "orders", d);
        let b = label_for(DEFAULT_PREFIX, "sales", "returns", d);
        assert_ne!(a, b);
        assert!(is_valid_label(&a), "{a}");
        assert!(a.starts_with("sluice_ba7816bf"));
        let long_prefix = "p".repeat(max_prefix_len());
        assert!(is_valid_label(&label_for(
            &long_prefix,
            "sales",
            "orders",
            d
        )));
        assert!(!is_valid_label(&label_for(
            &format!("{long_prefix}p"),
            "s",
            "o",
            d
        )));
    }

    #[test]
    fn rejects_labels_with_dots_or_colons() {
        assert!(!is_valid_label("a.b"));
        assert!(!is_valid_label("a:b"));
        assert!(!is_valid_label(""));
        assert!(is_valid_label("ok-label_1"));
    }
}
