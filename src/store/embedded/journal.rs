//! The commit journal: the writes of each group commit, appended to a file and `fdatasync`ed
//! before the group is applied to sled or answered. sled itself is flushed only now and then
//! (when a journal file has grown past [`ROTATE_BYTES`]), in the background; opening the store
//! replays whatever journal files are left onto sled, so every answered write survives a crash.
//!
//! Why: flushing sled for every group costs two device round trips (its `sync_file_range` per
//! buffer, then our `fdatasync`) and wakes its I/O threads; one append and one `fdatasync` of
//! a single file is the least a durable answer can cost.
//!
//! A file is `<generation, 16 hex digits>.journal`, a sequence of records
//! `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]`; a payload is the group's
//! writes, each `[1][key length: u32 LE][key][value length: u32 LE][value]` (a put) or
//! `[0][key length: u32 LE][key]` (a removal). A write is blind (it does not depend on what it
//! replaces), so replaying records sled already holds changes nothing. Replay stops at the first
//! record that is cut short or fails its checksum: the tail of a write that a crash interrupted,
//! never answered.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::objects::sync_dir;
use super::Tables;
use crate::store::StoreError;

/// Size past which the writer moves to the next journal file and has sled flushed in the
/// background.
pub(super) const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Zeros written into a journal file before it is used (the rotation size plus room for the
/// last groups): overwriting allocated blocks lets `fdatasync` skip the metadata an append
/// would change (about 0.15 ms instead of 0.21 ms per sync on the development VM).
const PREALLOCATED_BYTES: u64 = ROTATE_BYTES + 4 * 1024 * 1024;

const PUT: u8 = 1;
const REMOVE: u8 = 0;

/// The journal file being written.
pub(super) struct Journal {
    dir: PathBuf,
    file: File,
    generation: u64,
    /// Where the next record goes.
    len: u64,
    preallocated: bool,
    /// A failed write could not be zeroed: what follows the last record is not known to be
    /// zeros, so nothing more may be appended after it.
    damaged: bool,
    encoded: Vec<u8>,
}

impl Journal {
    /// Replays every journal file in `dir` onto `tables` in order, makes them durable, removes the
    /// files and starts a new one. Returns the journal and how many records were replayed.
    ///
    /// # Errors
    /// The directory or a file cannot be read, or sled cannot apply or flush.
    pub(super) fn recover(dir: &Path, tables: &Tables) -> Result<(Journal, usize), StoreError> {
        crate::private_files::create_dir(dir)?;
        let generations = generations(dir)?;
        let mut replayed = 0;
        for generation in &generations {
            let mut bytes = Vec::new();
            File::open(file_name(dir, *generation))?.read_to_end(&mut bytes)?;
            for group in decode_groups(&bytes) {
                for (key, value) in group? {
                    tables.apply(key, value).map_err(|e| {
                        StoreError::Io(io::Error::other(format!("replaying the journal: {e}")))
                    })?;
                }
                replayed += 1;
            }
        }
        if replayed > 0 {
            tables.flush()?;
        }
        let next = generations.last().map_or(0, |last| last + 1);
        remove_before(dir, next)?;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                fs::remove_file(path)?;
            }
        }
        let journal = Journal::open(dir, next)?;
        Ok((journal, replayed))
    }

    /// Opens generation `generation`: the file `prepare` made, or else a new empty one.
    fn open(dir: &Path, generation: u64) -> io::Result<Journal> {
        let path = file_name(dir, generation);
        let (file, preallocated) = match OpenOptions::new().write(true).open(&path) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let file = crate::private_files::options()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                sync_dir(dir)?;
                (file, false)
            }
            Err(e) => return Err(e),
        };
        Ok(Journal {
            dir: dir.to_path_buf(),
            file,
            generation,
            len: 0,
            preallocated,
            damaged: false,
            encoded: Vec::new(),
        })
    }

    /// Writes one group's writes (`None` removes the key) after the last record; [`Journal::sync`]
    /// makes them durable. If the write fails, its bytes are zeroed, so the journal never holds
    /// a group that was not committed.
    ///
    /// # Errors
    /// The write failed. If zeroing it failed too, this and every later write fail: the store
    /// needs a restart.
    pub(super) fn write(&mut self, writes: &HashMap<Vec<u8>, Option<Vec<u8>>>) -> io::Result<()> {
        if self.damaged {
            return Err(io::Error::other(
                "an earlier journal write failed and could not be undone; restart the server",
            ));
        }
        self.encoded.clear();
        self.encoded.extend_from_slice(&[0; 8]);
        for (key, value) in writes {
            self.encoded
                .push(if value.is_some() { PUT } else { REMOVE });
            put_bytes(&mut self.encoded, key);
            if let Some(value) = value {
                put_bytes(&mut self.encoded, value);
            }
        }
        let payload_len = u32::try_from(self.encoded.len() - 8)
            .map_err(|_| io::Error::other("group commit larger than 4 GiB"))?;
        let checksum = crc32fast::hash(&self.encoded[8..]);
        self.encoded[..4].copy_from_slice(&payload_len.to_le_bytes());
        self.encoded[4..8].copy_from_slice(&checksum.to_le_bytes());
        if let Err(e) = self.file.write_all_at(&self.encoded, self.len) {
            let zeros = vec![0; self.encoded.len()];
            if let Err(z) = self.file.write_all_at(&zeros, self.len) {
                self.damaged = true;
                return Err(io::Error::other(format!(
                    "{e}; undoing the failed journal write failed too ({z})"
                )));
            }
            return Err(e);
        }
        self.len += self.encoded.len() as u64;
        Ok(())
    }

    /// Whether a failed write could not be undone: later writes are refused until a restart.
    pub(super) fn damaged(&self) -> bool {
        self.damaged
    }

    /// `fdatasync`s what [`Journal::write`] wrote.
    ///
    /// # Errors
    /// The sync failed: what was written may or may not be on stable storage.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Whether to move to the next file now that `prepared` (the latest generation `prepare`
    /// made) is ready: when this one is full, or was not preallocated.
    pub(super) fn wants_rotation(&self, prepared: Option<u64>) -> bool {
        prepared == Some(self.generation + 1)
            && (self.len >= ROTATE_BYTES || (!self.preallocated && self.len > 0))
    }

    /// Moves to the next file. Returns its generation: once sled is flushed, every file before
    /// it may be removed.
    ///
    /// # Errors
    /// The next file cannot be opened; the current one stays in use.
    pub(super) fn rotate(&mut self) -> io::Result<u64> {
        let next = Journal::open(&self.dir, self.generation + 1)?;
        *self = next;
        Ok(self.generation)
    }

    /// The directory of the journal files.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The generation of the current file.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }
}

/// Makes the file of generation `generation` ahead of use: zero-filled, synced, then renamed
/// into place. Does nothing if it exists.
///
/// # Errors
/// The file cannot be written or renamed.
pub(super) fn prepare(dir: &Path, generation: u64) -> io::Result<()> {
    let path = file_name(dir, generation);
    if path.exists() {
        return Ok(());
    }
    let temporary = path.with_extension("journal.tmp");
    let mut file = crate::private_files::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)?;
    let zeros = vec![0; 1024 * 1024];
    for _ in 0..PREALLOCATED_BYTES / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    fs::rename(&temporary, &path)?;
    sync_dir(dir)
}

/// Removes the journal files of generations before `generation` (their writes are in sled, on
/// stable storage).
///
/// # Errors
/// The directory cannot be read or a file cannot be removed.
pub(super) fn remove_before(dir: &Path, generation: u64) -> io::Result<()> {
    let mut removed = false;
    for old in generations(dir)?.into_iter().filter(|g| *g < generation) {
        fs::remove_file(file_name(dir, old))?;
        removed = true;
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

fn file_name(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{generation:016x}.journal"))
}

/// The generations of the journal files in `dir`, ascending.
fn generations(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(generation) = name
            .strip_suffix(".journal")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        {
            found.push(generation);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are bounded far below 4 GiB by the request size limit.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The payloads of the complete, intact records of a file, up to the first that is not.
fn records(mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let header = bytes.get(..8)?;
        let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
        let checksum = u32::from_le_bytes(header[4..].try_into().ok()?);
        if len == 0 {
            // The zeros of a preallocated file: no group is empty.
            return None;
        }
        let payload = bytes.get(8..8 + len)?;
        if crc32fast::hash(payload) != checksum {
            return None;
        }
        bytes = &bytes[8 + len..];
        Some(payload)
    })
}

/// The groups of one journal file's bytes, as a start replays them: each record whose
/// checksum matches, up to the first torn or zeroed one, decoded into its writes. A record whose
/// checksum matches but which does not decode is an error.
pub fn decode_groups(bytes: &[u8]) -> impl Iterator<Item = Result<Writes, StoreError>> + '_ {
    records(bytes).map(decode_writes)
}

/// The writes of one group commit, in journal order: each key with its new value, `None` to
/// remove it.
pub(crate) type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

fn decode_writes(mut payload: &[u8]) -> Result<Writes, StoreError> {
    fn take<'a>(payload: &mut &'a [u8], len: usize) -> Result<&'a [u8], StoreError> {
        if payload.len() < len {
            return Err(StoreError::Io(io::Error::other(
                "journal record ends inside a write although its checksum matches",
            )));
        }
        let (head, rest) = payload.split_at(len);
        *payload = rest;
        Ok(head)
    }
    fn take_bytes<'a>(payload: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
        let len = u32::from_le_bytes(take(payload, 4)?.try_into().unwrap_or_default());
        take(payload, len as usize)
    }
    let mut writes = Vec::new();
    while !payload.is_empty() {
        let tag = take(&mut payload, 1)?[0];
        let key = take_bytes(&mut payload)?.to_vec();
        match tag {
            PUT => writes.push((key, Some(take_bytes(&mut payload)?.to_vec()))),
            REMOVE => writes.push((key, None)),
            other => {
                return Err(StoreError::Io(io::Error::other(format!(
                    "journal record holds an unknown write kind {other}"
                ))))
            }
        }
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(pairs: &[(&str, Option<&str>)]) -> HashMap<Vec<u8>, Option<Vec<u8>>> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    fn commit(journal: &mut Journal, writes: &HashMap<Vec<u8>, Option<Vec<u8>>>) {
        journal.write(writes).expect("write");
        journal.sync().expect("sync");
    }

    fn open_tables(dir: &Path) -> Tables {
        let db = crate::store::embedded::tests::retry_while_locked(|| {
            sled::Config::new()
                .path(dir.join("store"))
                .flush_every_ms(None)
                .open()
        });
        Tables {
            db,
            db_file: File::open(dir.join("store").join("db")).expect("db file"),
            audit: super::super::AuditFiles::open(&dir.join("audit")).expect("audit files"),
            bodies: super::super::Bodies::open(&dir.join("bodies")).expect("bodies file"),
        }
    }

    #[test]
    fn replays_every_group_and_stops_at_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal_dir = dir.path().join("journal");
        {
            let tables = open_tables(dir.path());
            let (mut journal, replayed) = Journal::recover(&journal_dir, &tables).expect("open");
            assert_eq!(replayed, 0);
            commit(&mut journal, &writes(&[("a", Some("1")), ("b", Some("2"))]));
            commit(&mut journal, &writes(&[("b", None), ("c", Some("3"))]));
            // A third record cut short by a crash: never answered, must not be applied.
            let mut torn = OpenOptions::new()
                .append(true)
                .open(file_name(&journal_dir, journal.generation()))
                .expect("open journal");
            torn.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, PUT])
                .expect("torn write");
            // sled is dropped without a flush: only the journal holds the writes.
        }
        let tables = open_tables(dir.path());
        let (journal, replayed) = Journal::recover(&journal_dir, &tables).expect("recover");
        assert_eq!(replayed, 2);
        assert_eq!(
            tables.db.get("a").expect("get").as_deref(),
            Some(b"1".as_slice())
        );
        assert_eq!(tables.db.get("b").expect("get"), None);
        assert_eq!(
            tables.db.get("c").expect("get").as_deref(),
            Some(b"3".as_slice())
        );
        assert_eq!(
            generations(&journal_dir).expect("list"),
            vec![journal.generation()]
        );
        assert_eq!(journal.len, 0);
    }

    #[test]
    fn every_generation_is_replayed_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal_dir = dir.path().join("journal");
        {
            let tables = open_tables(dir.path());
            let (mut journal, _) = Journal::recover(&journal_dir, &tables).expect("open");
            commit(
                &mut journal,
                &writes(&[("a", Some("old")), ("b", Some("1"))]),
            );
            journal.rotate().expect("rotate");
            commit(&mut journal, &writes(&[("a", Some("new")), ("b", None)]));
        }
        let tables = open_tables(dir.path());
        let (journal, replayed) = Journal::recover(&journal_dir, &tables).expect("recover");
        assert_eq!(replayed, 2);
        assert_eq!(
            tables.db.get("a").expect("get").as_deref(),
            Some(b"new".as_slice())
        );
        assert_eq!(tables.db.get("b").expect("get"), None);
        assert_eq!(
            generations(&journal_dir).expect("list"),
            vec![journal.generation()]
        );
    }

    #[test]
    fn a_corrupted_record_ends_the_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal_dir = dir.path().join("journal");
        let generation;
        {
            let tables = open_tables(dir.path());
            let (mut journal, _) = Journal::recover(&journal_dir, &tables).expect("open");
            commit(&mut journal, &writes(&[("a", Some("1"))]));
            commit(&mut journal, &writes(&[("b", Some("2"))]));
            generation = journal.generation();
        }
        let path = file_name(&journal_dir, generation);
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).expect("write");
        let tables = open_tables(dir.path());
        let (_, replayed) = Journal::recover(&journal_dir, &tables).expect("recover");
        assert_eq!(replayed, 1);
        assert!(tables.db.get("a").expect("get").is_some());
        assert!(tables.db.get("b").expect("get").is_none());
    }

    #[test]
    fn rotation_into_a_preallocated_file_replays_up_to_its_zeros() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal_dir = dir.path().join("journal");
        {
            let tables = open_tables(dir.path());
            let (mut journal, _) = Journal::recover(&journal_dir, &tables).expect("open");
            commit(&mut journal, &writes(&[("a", Some("1"))]));
            assert!(!journal.wants_rotation(None));
            prepare(&journal_dir, journal.generation() + 1).expect("prepare");
            assert!(journal.wants_rotation(Some(journal.generation() + 1)));
            let next = journal.rotate().expect("rotate");
            assert!(journal.preallocated);
            commit(&mut journal, &writes(&[("b", Some("2"))]));
            assert_eq!(generations(&journal_dir).expect("list").len(), 2);
            remove_before(&journal_dir, next).expect("remove");
            assert_eq!(generations(&journal_dir).expect("list"), vec![next]);
            assert_eq!(
                fs::metadata(file_name(&journal_dir, next))
                    .expect("stat")
                    .len(),
                PREALLOCATED_BYTES
            );
        }
        let tables = open_tables(dir.path());
        let (_, replayed) = Journal::recover(&journal_dir, &tables).expect("recover");
        assert_eq!(replayed, 1);
        assert_eq!(
            tables.db.get("b").expect("get").as_deref(),
            Some(b"2".as_slice())
        );
    }
}
