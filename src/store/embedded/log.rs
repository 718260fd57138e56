//! The audit log's storage: its leaves (`l/`), the index of the entries each agency is party
//! to (`p/`), the stored complete-subtree hashes (`h/`) and the signed checkpoints (`c/`); the
//! writer's state of the log (size, Merkle frontier, last time) and how it appends entries.
//! What an entry says, and which agencies it concerns, is the audit module's vocabulary: the
//! store files each [`LogEntry`] under the parties it comes with.

use std::sync::atomic::Ordering;

use prost::Message as _;

use super::keys::trailing_u64;
use super::writer::Op;
use super::SledStore;
use crate::audit::merkle::{self, Hash, HashReader, MerkleError};
use crate::pb::v1::AuditEvent;
use crate::store::{LogEntry, StoreError};
use crate::time::now_micros;

/// Key layout of the log in the store's single tree.
mod keys {
    /// `l/` prefix of the leaves.
    pub(super) const LEAF_PREFIX: &[u8] = b"l/";

    /// `l/<index, 8 bytes big-endian>` → the audit leaf (an encoded `AuditEvent`).
    pub(super) fn leaf(index: u64) -> Vec<u8> {
        [LEAF_PREFIX, &index.to_be_bytes()].concat()
    }

    /// `h/<level, 1 byte><index, 8 bytes big-endian>` → the hash of a complete subtree, for
    /// levels from `FIRST_STORED_HASH_LEVEL` up (lower ones are computed from the leaves).
    pub(super) fn hash(level: u8, index: u64) -> Vec<u8> {
        [b"h/".as_slice(), &[level], &index.to_be_bytes()].concat()
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

/// The stored complete-subtree hashes of the audit log, for `audit::merkle`.
struct StoredHashes<'a>(&'a sled::Db);

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
            let mut hashes = self
                .0
                .range(keys::leaf(start)..keys::leaf(end))
                .map(|item| item.map(|(_, leaf)| merkle::hash_leaf(&leaf)))
                .collect::<Result<Vec<Hash>, _>>()
                .map_err(|e| unavailable(e.to_string()))?;
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
        let value = self
            .0
            .get(keys::hash(level, index))
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| unavailable("not stored".into()))?;
        value
            .as_ref()
            .try_into()
            .map_err(|_| unavailable("stored value is not 32 bytes".into()))
    }
}

/// The writer's view of the audit log: assigned (maybe not yet durable) size, the right edge of
/// the Merkle tree, and the last timestamp so times never decrease along the log.
#[derive(Debug, Clone, Default)]
pub(super) struct LogState {
    pub(super) size: u64,
    pub(super) frontier: Vec<(u8, Hash)>,
    pub(super) last_time: i64,
}

impl LogState {
    /// The state after a restart: size from the last leaf, frontier from the stored hashes,
    /// time from the last entry.
    pub(super) fn load(db: &sled::Db) -> Result<LogState, StoreError> {
        let Some(last) = db.scan_prefix(keys::LEAF_PREFIX).next_back() else {
            return Ok(LogState::default());
        };
        let (key, leaf) = last?;
        let size = trailing_u64(&key).unwrap_or_default() + 1;
        let last_time = super::decode::<AuditEvent>(&key, &leaf)?.time_unix_micros;
        let frontier = merkle::frontier(&StoredHashes(db), size).map_err(StoreError::LogHashes)?;
        Ok(LogState {
            size,
            frontier,
            last_time,
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
            put(keys::leaf(index), leaf);
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
        StoredHashes(&self.db)
            .hash(0, index)
            .map_err(StoreError::LogHashes)
    }

    /// The root of the first `size` entries.
    pub(super) fn audit_root(&self, size: u64) -> Result<Hash, StoreError> {
        merkle::root(&StoredHashes(&self.db), size).map_err(StoreError::LogHashes)
    }

    /// The inclusion proof of leaf `index` in the tree of size `size`.
    pub(super) fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        merkle::inclusion_proof(&StoredHashes(&self.db), index, size).map_err(StoreError::LogHashes)
    }

    /// The consistency proof between the trees of sizes `from` and `to`.
    pub(super) fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        merkle::consistency_proof(&StoredHashes(&self.db), from, to).map_err(StoreError::LogHashes)
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
        if start >= end {
            return Ok(Vec::new());
        }
        self.db
            .range(keys::leaf(start)..keys::leaf(end))
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                Ok((trailing_u64(&key).unwrap_or_default(), value.to_vec()))
            })
            .collect()
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
        Ok(self.db.get(keys::leaf(index))?.map(|v| v.to_vec()))
    }
}
