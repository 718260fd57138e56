//! Sealed message bodies up to [`INLINE_BODY_MAX`](super::INLINE_BODY_MAX) in one append-only
//! file beside sled (`bodies/data`), so that sled's records stay small: a record holds only
//! where its body starts and how long it is, sealed. Larger bodies have files of their own
//! (`objects`).
//!
//! Writes come from the journal as `B/<offset>` writes, applied at their offset (a replay
//! writes the same bytes). Erasing a message overwrites its body with zeros the same way; the
//! space is not reused. The file is fsynced before the journal files that hold its writes are
//! removed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// `B/` prefix of a body write in the journal.
const BODY_PREFIX: &[u8] = b"B/";

/// The journal key of a body written at `offset`.
pub(super) fn key(offset: u64) -> Vec<u8> {
    [BODY_PREFIX, &offset.to_be_bytes()].concat()
}

/// The offset a journal key names, if it is a body write.
pub(super) fn offset_of(key: &[u8]) -> Option<u64> {
    let offset: [u8; 8] = key.strip_prefix(BODY_PREFIX)?.try_into().ok()?;
    Some(u64::from_be_bytes(offset))
}

/// The open bodies file.
#[derive(Debug)]
pub(super) struct Bodies {
    file: File,
}

impl Bodies {
    /// Opens (or creates, owner-only) the file in `dir`.
    pub(super) fn open(dir: &Path) -> io::Result<Bodies> {
        Ok(Bodies {
            file: super::objects::open_positioned(dir, "data")?,
        })
    }

    /// Where the next body goes: the end of what is written.
    pub(super) fn end(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Writes `bytes` at `offset`.
    pub(super) fn write(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }

    /// The `len` bytes at `offset`.
    pub(super) fn read(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "body length out of range"))?;
        let mut bytes = vec![0u8; len];
        self.file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    }

    /// Makes everything written so far durable.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_back_where_they_were_written_and_keys_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bodies = Bodies::open(dir.path()).expect("open");
        bodies.write(0, b"first").expect("write");
        bodies.write(5, b"second").expect("write");
        assert_eq!(bodies.end().expect("end"), 11);
        assert_eq!(bodies.read(5, 6).expect("read"), b"second");
        bodies.write(0, &[0; 5]).expect("erase");
        assert_eq!(bodies.read(0, 5).expect("read"), [0; 5]);
        assert_eq!(offset_of(&key(4096)), Some(4096));
        assert_eq!(offset_of(b"m/4096"), None);
    }
}
