//! The audit log's leaves and stored hashes in append-only files of their own, beside sled (which
//! keeps only the party index and the checkpoints): they are the bulk of what the log writes,
//! never change once written, and are read by index.
//!
//! - `audit/leaves`: the leaves (encoded `AuditEvent`s), one after the other;
//! - `audit/ends`: for leaf `i`, at byte `8 i`, the offset in `leaves` where it ends
//!   (big-endian `u64`; it starts where leaf `i - 1` ends);
//! - `audit/hashes`: the hash of every complete subtree of level 1 and up, 32 bytes each, in the
//!   order appends complete them ([`hash_position`]). Level 0 is computed from the leaves.
//!
//! Writes come from the journal: the writer applies a durable group's `L/` and `h/` writes here
//! (and a start replays them), always to a fixed position, so applying one twice is harmless.
//! The files are fsynced before the journal files that hold their writes are removed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::objects::open_positioned;
use crate::audit::merkle::Hash;

/// Bytes of one entry of `ends`.
const END_BYTES: u64 = 8;
/// Bytes of one stored hash.
const HASH_BYTES: u64 = 32;

/// The open files of the log (see the module documentation).
#[derive(Debug)]
pub(super) struct AuditFiles {
    leaves: File,
    ends: File,
    hashes: File,
}

impl AuditFiles {
    /// Opens (or creates, owner-only) the files in `dir`.
    pub(super) fn open(dir: &Path) -> io::Result<AuditFiles> {
        Ok(AuditFiles {
            leaves: open_positioned(dir, "leaves")?,
            ends: open_positioned(dir, "ends")?,
            hashes: open_positioned(dir, "hashes")?,
        })
    }

    /// How many leaves the files hold completely (a torn last entry of `ends` does not count).
    pub(super) fn size(&self) -> io::Result<u64> {
        Ok(self.ends.metadata()?.len() / END_BYTES)
    }

    /// Where the leaf after the first `size` ones starts in `leaves`.
    pub(super) fn end_of(&self, size: u64) -> io::Result<u64> {
        match size.checked_sub(1) {
            None => Ok(0),
            Some(last) => self.read_end(last),
        }
    }

    /// Empties the leaves (before they are rebuilt from another copy of the log). Stored hashes
    /// stay: each has one place, and rewriting it gives the same bytes.
    pub(super) fn clear_leaves(&self) -> io::Result<()> {
        self.leaves.set_len(0)?;
        self.ends.set_len(0)
    }

    /// Writes leaf `index`, which starts at byte `start` of `leaves`.
    pub(super) fn write_leaf(&self, index: u64, start: u64, leaf: &[u8]) -> io::Result<()> {
        self.leaves.write_all_at(leaf, start)?;
        let end = start + leaf.len() as u64;
        self.ends
            .write_all_at(&end.to_be_bytes(), index * END_BYTES)
    }

    /// Writes the hash of the complete subtree `index` of `level` (1 and up).
    pub(super) fn write_hash(&self, level: u8, index: u64, hash: &[u8]) -> io::Result<()> {
        self.hashes
            .write_all_at(hash, hash_position(level, index) * HASH_BYTES)
    }

    /// Leaf `index`, if the files hold it.
    pub(super) fn leaf(&self, index: u64) -> io::Result<Option<Vec<u8>>> {
        if index >= self.size()? {
            return Ok(None);
        }
        let (start, end) = (self.end_of(index)?, self.read_end(index)?);
        Ok(Some(self.read_leaves(start, end)?))
    }

    /// Up to `limit` leaves with `start <= index < end`, in order.
    pub(super) fn leaves(
        &self,
        start: u64,
        end: u64,
        limit: usize,
    ) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let end = end
            .min(self.size()?)
            .min(start.saturating_add(limit as u64));
        if start >= end {
            return Ok(Vec::new());
        }
        let mut ends = vec![0u8; ((end - start) * END_BYTES) as usize];
        self.ends.read_exact_at(&mut ends, start * END_BYTES)?;
        let first = self.end_of(start)?;
        let last = u64::from_be_bytes(ends[ends.len() - 8..].try_into().unwrap_or_default());
        let bytes = self.read_leaves(first, last)?;
        let mut leaves = Vec::with_capacity(ends.len() / 8);
        let mut from = first;
        for (index, end) in (start..end).zip(ends.chunks_exact(8)) {
            let to = u64::from_be_bytes(end.try_into().unwrap_or_default());
            let leaf = bytes
                .get(offset(from - first)?..offset(to - first)?)
                .ok_or_else(|| corrupt(format!("leaf {index} ends before it starts")))?;
            leaves.push((index, leaf.to_vec()));
            from = to;
        }
        Ok(leaves)
    }

    /// The stored hash of the complete subtree `index` of `level` (1 and up), if written.
    pub(super) fn hash(&self, level: u8, index: u64) -> io::Result<Option<Hash>> {
        let mut hash = [0u8; 32];
        match self
            .hashes
            .read_exact_at(&mut hash, hash_position(level, index) * HASH_BYTES)
        {
            Ok(()) => Ok(Some(hash)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes everything written so far durable.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.leaves.sync_data()?;
        self.ends.sync_data()?;
        self.hashes.sync_data()
    }

    fn read_end(&self, index: u64) -> io::Result<u64> {
        let mut end = [0u8; 8];
        self.ends.read_exact_at(&mut end, index * END_BYTES)?;
        Ok(u64::from_be_bytes(end))
    }

    fn read_leaves(&self, start: u64, end: u64) -> io::Result<Vec<u8>> {
        if end < start {
            return Err(corrupt(format!(
                "a leaf ends at {end} before it starts at {start}"
            )));
        }
        let mut bytes = vec![0u8; offset(end - start)?];
        self.leaves.read_exact_at(&mut bytes, start)?;
        Ok(bytes)
    }
}

fn offset(value: u64) -> io::Result<usize> {
    usize::try_from(value).map_err(|_| corrupt(format!("offset {value} out of range")))
}

fn corrupt(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("audit files: {reason}"))
}

/// The position of subtree `index` of `level` (1 and up) among the stored hashes, in the order
/// appends complete them. Counting level 0 too, it would be at tlog's "stored hash index"
/// (every level-`l` node comes right after level `l + 1`'s node `2n + 1`, down to level 0,
/// whose node `n` is at `n + n/2 + n/4 + ...`); the `(index + 1) << level` leaves appended
/// until it completes are not stored here.
pub(super) fn hash_position(level: u8, index: u64) -> u64 {
    let mut n = index;
    for _ in 0..level {
        n = 2 * n + 1;
    }
    let mut all = 0u64;
    while n > 0 {
        all += n;
        n >>= 1;
    }
    all + u64::from(level) - ((index + 1) << level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle;

    /// Appends complete subtrees of level 1 and up at positions 0, 1, 2, ... in order.
    #[test]
    fn stored_hashes_take_consecutive_positions_in_append_order() {
        let mut frontier = Vec::new();
        let mut expected = 0;
        for size in 0..1000u64 {
            for (level, index, _) in merkle::append(&mut frontier, size, [0u8; 32]) {
                if level >= 1 {
                    assert_eq!(hash_position(level, index), expected, "({level}, {index})");
                    expected += 1;
                }
            }
        }
    }

    #[test]
    fn leaves_and_hashes_read_back_by_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = AuditFiles::open(dir.path()).expect("open");
        let mut start = 0;
        for index in 0..5u64 {
            let leaf = vec![index as u8; index as usize + 1];
            files.write_leaf(index, start, &leaf).expect("leaf");
            start += leaf.len() as u64;
        }
        files.write_hash(1, 0, &[7u8; 32]).expect("hash");
        assert_eq!(files.size().expect("size"), 5);
        assert_eq!(files.leaf(3).expect("read"), Some(vec![3u8; 4]));
        assert_eq!(files.leaf(5).expect("read"), None);
        let leaves = files.leaves(1, 10, 3).expect("range");
        assert_eq!(
            leaves,
            vec![(1, vec![1u8; 2]), (2, vec![2u8; 3]), (3, vec![3u8; 4])]
        );
        assert_eq!(files.hash(1, 0).expect("hash"), Some([7u8; 32]));
        assert_eq!(files.hash(1, 1).expect("hash"), None);
        assert_eq!(files.end_of(5).expect("end"), 15);
    }
}
