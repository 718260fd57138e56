//! The audit log's storage: its leaves and stored complete-subtree hashes (in their own files,
//! `audit_files`, written through the journal as `L/` and `h/` writes), the index of the entries
//! each agency is party to (`p/`) and the signed checkpoints (`c/`) in sled; the writer's state
//! of the log (size, Merkle frontier, last time, end of the leaves) and how it appends entries.
//! What an entry says, and which agencies it concerns, is the audit module's vocabulary: the
//! store files each [`LogEntry`] under the parties it comes with.

use std::sync::atomic::Ordering;

use prost::Message as _;

use super::audit_files::AuditFiles;
use super::keys::trailing_u64;
use super::writer::Op;
use super::{ApplyError, SledStore};
use crate::audit::merkle::{self, Hash, HashReader, MerkleError};
use crate::pb::v1::AuditEvent;
use crate::store::{LogEntry, StoreError};
use crate::time::now_micros;

/// Key layout of the log: in sled, and in the journal for what goes to the audit files.
mod keys {
    /// `l/` prefix of the leaves as release 1 kept them in sled (moved to the audit files at
    /// the first start that finds them).
    pub(super) const LEGACY_LEAF_PREFIX: &[u8] = b"l/";

    /// `L/` prefix of a leaf write in the journal.
    pub(super) const LEAF_PREFIX: &[u8] = b"L/";

    /// `L/<index, 8 bytes big-endian>` → `<start, 8 bytes big-endian><leaf>`: leaf `index`
    /// (an encoded `AuditEvent`), written at byte `start` of the leaves file.
    pub(super) fn leaf(index: u64) -> Vec<u8> {
        [LEAF_PREFIX, &index.to_be_bytes()].concat()
    }

    /// `h/` prefix of the stored hashes: journal writes to the audit files (and, from release
    /// 1, sled keys moved there at the first start that finds them).
    pub(super) const HASH_PREFIX: &[u8] = b"h/";

    /// `h/<level, 1 byte><index, 8 bytes big-endian>` → the hash of a complete subtree, for
    /// levels from `FIRST_STORED_HASH_LEVEL` up (lower ones are computed from the leaves).
    pub(super) fn hash(level: u8, index: u64) -> Vec<u8> {
        [HASH_PREFIX, &[level], &index.to_be_bytes()].concat()
    }

    /// `p/<agency>/<index, 8 bytes big-endian>` → empty: the agency is party to that entry.
    pub(super) fn party(agency: &str, index: u64) -> Vec<u8> {
        [b"p/", agency.as_bytes(), b"/", &index.to_be_bytes()].concat()
    }

    /// `c/` prefix of the signed checkpoints.
    pub(super) const CHECKPOINT_PREFIX: &[u8] = b"c/";

    /// `c/<tree size, 8 bytes big-endian>` → the signed checkpoint note.
    pub(super) fn checkpoint(size: u64) -> Vec<u8> {
        [CHECKPOINT_PREFIX, &size.to_be_bytes()].concat()
    }
}

/// The key under which the writer stores the signed checkpoint of tree size `size`.
pub(super) fn checkpoint_key(size: u64) -> Vec<u8> {
    keys::checkpoint(size)
}

/// Audit subtree hashes are stored from this level up; below it they are computed from the
/// 2^level stored leaves they cover. Level 1 saves the leaf-hash key of every audit entry.
/// Level 4 would save almost every hash key (+12 % durable rate at 32 senders / 32 readers,
/// BENCHMARKS.md) but then `audit verify --full` could only name the 16-entry block, not the
/// entry, that was altered when only leaves are rewritten: the server's proofs would be
/// computed from the altered leaves.
pub(crate) const FIRST_STORED_HASH_LEVEL: u8 = 1;

/// Applies one write of a durable group: leaf and hash writes to the audit files, every other
/// key to sled. Writing the same group twice (a replay) leaves the same result.
pub(super) fn apply_write(
    db: &sled::Db,
    audit: &AuditFiles,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
) -> Result<(), ApplyError> {
    if let (Some(index), Some(value)) = (key.strip_prefix(keys::LEAF_PREFIX), &value) {
        let index = trailing_u64(index).ok_or(ApplyError::Malformed("leaf key"))?;
        let (start, leaf) = value
            .split_at_checked(8)
            .ok_or(ApplyError::Malformed("leaf"))?;
        let start = trailing_u64(start).ok_or(ApplyError::Malformed("leaf start"))?;
        return Ok(audit.write_leaf(index, start, leaf)?);
    }
    if let (Some(node), Some(value)) = (key.strip_prefix(keys::HASH_PREFIX), &value) {
        let (level, index) = hash_node(node).ok_or(ApplyError::Malformed("hash key"))?;
        return Ok(audit.write_hash(level, index, value)?);
    }
    match value {
        Some(value) => db.insert(key, value).map(drop)?,
        None => db.remove(key).map(drop)?,
    }
    Ok(())
}

/// The level and index a hash key names after its `h/` prefix.
fn hash_node(node: &[u8]) -> Option<(u8, u64)> {
    let (&level, index) = node.split_first()?;
    Some((level, trailing_u64(index)?))
}

/// Moves the leaves and stored hashes release 1 kept in sled (`l/`, `h/`) into the audit files,
/// then removes them from sled. A start interrupted half-way finds them in sled again and
/// starts over. Returns how many leaves moved.
pub(super) fn move_legacy_entries(db: &sled::Db, audit: &AuditFiles) -> Result<u64, StoreError> {
    if db.scan_prefix(keys::LEGACY_LEAF_PREFIX).next().is_none() {
        return Ok(0);
    }
    // Hashes a journal of release 1 held were replayed into the files already (`h/` writes
    // go there); its leaves went to sled with the others.
    audit.clear_leaves()?;
    let (mut moved, mut start) = (0u64, 0u64);
    for item in db.scan_prefix(keys::LEGACY_LEAF_PREFIX) {
        let (key, leaf) = item?;
        let index = trailing_u64(&key).unwrap_or_default();
        if index != moved {
            return Err(StoreError::Io(std::io::Error::other(format!(
                "audit leaf {moved} is missing from the store (the next one is {index})"
            ))));
        }
        audit.write_leaf(index, start, &leaf)?;
        start += leaf.len() as u64;
        moved += 1;
    }
    for item in db.scan_prefix(keys::HASH_PREFIX) {
        let (key, hash) = item?;
        if let Some((level, index)) = hash_node(&key[keys::HASH_PREFIX.len()..]) {
            audit.write_hash(level, index, &hash)?;
        }
    }
    audit.sync()?;
    let mut batch = sled::Batch::default();
    for prefix in [keys::LEGACY_LEAF_PREFIX, keys::HASH_PREFIX] {
        for item in db.scan_prefix(prefix) {
            batch.remove(item?.0);
        }
    }
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(moved)
}

/// The stored complete-subtree hashes of the audit log, for `audit::merkle`.
struct StoredHashes<'a>(&'a AuditFiles);

impl HashReader for StoredHashes<'_> {
    /// Levels below [`FIRST_STORED_HASH_LEVEL`] are computed from the stored leaves; higher
    /// levels are stored.
    fn hash(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        let unavailable = |reason: String| MerkleError::Unavailable {
            level,
            index,
            reason,
        };
        if level < FIRST_STORED_HASH_LEVEL {
            let (start, end) = (index << level, (index + 1) << level);
            let mut hashes: Vec<Hash> = self
                .0
                .leaves(start, end, usize::MAX)
                .map_err(|e| unavailable(e.to_string()))?
                .iter()
                .map(|(_, leaf)| merkle::hash_leaf(leaf))
                .collect();
            if hashes.len() as u64 != end - start {
                return Err(unavailable("leaf not stored".into()));
            }
            while hashes.len() > 1 {
                hashes = hashes
                    .chunks_exact(2)
                    .map(|pair| merkle::hash_children(&pair[0], &pair[1]))
                    .collect();
            }
            return Ok(hashes[0]);
        }
        self.0
            .hash(level, index)
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| unavailable("not stored".into()))
    }
}

/// The writer's view of the audit log: assigned (maybe not yet durable) size, the right edge of
/// the Merkle tree, and the last timestamp so times never decrease along the log.
#[derive(Debug, Clone, Default)]
pub(super) struct LogState {
    pub(super) size: u64,
    pub(super) frontier: Vec<(u8, Hash)>,
    pub(super) last_time: i64,
    /// Where the next leaf goes in the leaves file.
    pub(super) leaves_end: u64,
}

impl LogState {
    /// The state after a restart: size from the last leaf, frontier from the stored hashes,
    /// time from the last entry.
    pub(super) fn load(audit: &AuditFiles) -> Result<LogState, StoreError> {
        let size = audit.size()?;
        let Some(last) = size.checked_sub(1) else {
            return Ok(LogState::default());
        };
        let leaf = audit.leaf(last)?.unwrap_or_default();
        let last_time = super::decode::<AuditEvent>(&keys::leaf(last), &leaf)?.time_unix_micros;
        let frontier =
            merkle::frontier(&StoredHashes(audit), size).map_err(StoreError::LogHashes)?;
        Ok(LogState {
            size,
            frontier,
            last_time,
            leaves_end: audit.end_of(size)?,
        })
    }

    /// Appends `entries` (their times made non-decreasing) and returns their indices; `put`
    /// receives each key and value to write. Hashes of subtrees below
    /// [`FIRST_STORED_HASH_LEVEL`] are not stored: readers compute them from the leaves.
    pub(super) fn append(
        &mut self,
        entries: Vec<LogEntry>,
        mut put: impl FnMut(Vec<u8>, Vec<u8>),
    ) -> Vec<u64> {
        let mut indices = Vec::with_capacity(entries.len());
        for LogEntry { mut event, parties } in entries {
            self.last_time = self.last_time.max(event.time_unix_micros).max(now_micros());
            event.time_unix_micros = self.last_time;
            let leaf = event.encode_to_vec();
            let index = self.size;
            for (level, node, hash) in
                merkle::append(&mut self.frontier, index, merkle::hash_leaf(&leaf))
            {
                if level >= FIRST_STORED_HASH_LEVEL {
                    put(keys::hash(level, node), hash.to_vec());
                }
            }
            for party in &parties {
                put(keys::party(party, index), Vec::new());
            }
            let start = self.leaves_end;
            self.leaves_end += leaf.len() as u64;
            put(
                keys::leaf(index),
                [start.to_be_bytes().as_slice(), &leaf].concat(),
            );
            self.size += 1;
            indices.push(index);
        }
        indices
    }
}

// === impl SledStore: the audit log ===

impl SledStore {
    /// Appends audit entries durably and returns their indices.
    ///
    /// # Errors
    /// I/O and sled errors; `Closed` when shutting down.
    pub(super) async fn record(&self, entries: Vec<LogEntry>) -> Result<Vec<u64>, StoreError> {
        self.submit(|reply| Op::Audit {
            entries,
            reply: Some(reply),
        })
        .await
    }

    /// Queues an audit entry without waiting for durability; waits only while the writer's
    /// queue is full.
    ///
    /// # Errors
    /// `Closed` when the store is shutting down.
    pub(super) async fn record_later(&self, entry: LogEntry) -> Result<(), StoreError> {
        let op = Op::Audit {
            entries: vec![entry],
            reply: None,
        };
        self.ops.send(op).await.map_err(|_| StoreError::Closed)
    }

    /// The latest stored checkpoint: its tree size and signed note.
    ///
    /// # Errors
    /// sled errors.
    pub(super) fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        match self.db.scan_prefix(keys::CHECKPOINT_PREFIX).next_back() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item?;
                let size = trailing_u64(&key).unwrap_or_default();
                Ok(Some((size, String::from_utf8_lossy(&value).into_owned())))
            }
        }
    }

    /// Number of audit entries on stable storage.
    pub(super) fn audit_size(&self) -> u64 {
        self.durable_log_size.load(Ordering::Acquire)
    }

    /// The hash the tree holds for leaf `index`.
    pub(super) fn leaf_hash(&self, index: u64) -> Result<Hash, StoreError> {
        StoredHashes(&self.tables.audit)
            .hash(0, index)
            .map_err(StoreError::LogHashes)
    }

    /// The root of the first `size` entries.
    pub(super) fn audit_root(&self, size: u64) -> Result<Hash, StoreError> {
        merkle::root(&StoredHashes(&self.tables.audit), size).map_err(StoreError::LogHashes)
    }

    /// The inclusion proof of leaf `index` in the tree of size `size`.
    pub(super) fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        merkle::inclusion_proof(&StoredHashes(&self.tables.audit), index, size)
            .map_err(StoreError::LogHashes)
    }

    /// The consistency proof between the trees of sizes `from` and `to`.
    pub(super) fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        merkle::consistency_proof(&StoredHashes(&self.tables.audit), from, to)
            .map_err(StoreError::LogHashes)
    }

    /// Up to `limit` audit leaves with `start <= index < end`, in order.
    ///
    /// # Errors
    /// sled errors.
    pub(super) fn audit_leaves(
        &self,
        start: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(self.tables.audit.leaves(start, end, limit)?)
    }

    /// Up to `limit` indices, `start <= index < end`, of audit entries `agency` is party to.
    ///
    /// # Errors
    /// sled errors.
    pub(super) fn audit_party_indices(
        &self,
        agency: &str,
        start: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.db
            .range(keys::party(agency, start)..keys::party(agency, end))
            .take(limit)
            .map(|item| Ok(trailing_u64(&item?.0).unwrap_or_default()))
            .collect()
    }

    /// One audit leaf.
    ///
    /// # Errors
    /// sled errors.
    pub(super) fn audit_leaf(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tables.audit.leaf(index)?)
    }
}
