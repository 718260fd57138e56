//! An auditor's verification of the audit log, with no server state: pinning the log's verifier
//! key ([`pin`], [`VerifierState`]), opening its signed checkpoints, checking that the log only
//! grew and that an entry is included, rebuilding the tree from its entries ([`Rebuild`]), and
//! naming the first altered entry ([`Locator`] against the exchange's proofs, [`find_altered`]
//! offline, for [`super::export::verify_export`]). Sans I/O towards the exchange: callers fetch
//! proofs and entries and hand them in, so any client (the CLI, tests, other tools) can use it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::merkle::{self, Hash, HashReader as _, MemoryTree, MerkleError};
use super::note::{Checkpoint, NoteError, NoteVerifier};
use crate::pki::PkiError;

/// Why the log, a checkpoint, an entry or an export does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The state file cannot be read.
    #[error("cannot read the state file {}", path.display())]
    ReadState {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not a verifier's state.
    #[error("the state file {} is not a puente audit state; give another --state, or move it away to start over (pinning the key again)", path.display())]
    BadState {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The state cannot be encoded.
    #[error("cannot encode the state")]
    EncodeState(#[source] serde_json::Error),
    /// The state file cannot be written.
    #[error("cannot save the state file {}", path.display())]
    SaveState {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: PkiError,
    },
    /// A hash (in the state file or an export) is not hex of 32 bytes.
    #[error("{what} is not a 32-byte hex hash")]
    BadHash {
        /// Which hash.
        what: String,
    },
    /// A verifier key does not parse.
    #[error("{from} is not a verifier key (expected <name>+<hash>+<base64 key>): {key}")]
    BadKey {
        /// Where it came from.
        from: &'static str,
        /// The key, made safe for a terminal.
        key: String,
        /// Why.
        #[source]
        source: NoteError,
    },
    /// The key given is not the one pinned in the state file.
    #[error("--verifier-key is not the key pinned in {}:\n  pinned: {pinned}\n  given:  {given}\nA log's key never changes. If you are certain this is another log, use another --state file.", state.display())]
    KeyNotPinned {
        /// The state file.
        state: PathBuf,
        /// The pinned key.
        pinned: String,
        /// The key given.
        given: String,
    },
    /// The checkpoint is not signed by the pinned key.
    #[error("the checkpoint is NOT signed by the pinned key {key}: do not trust this log")]
    NotSigned {
        /// The pinned key.
        key: String,
    },
    /// The checkpoint is not a signed note.
    #[error("the checkpoint is not a valid signed note")]
    BadNote(#[source] NoteError),
    /// The signed checkpoint does not parse.
    #[error("the signed checkpoint is malformed")]
    BadCheckpoint(#[source] NoteError),
    /// The exchange offers another key than the pinned one.
    #[error("the exchange's log key is not the pinned key:\n  pinned:   {pinned}\n  exchange: {offered}\nEither this is another exchange (check --addr or --profile), or the log was replaced: a log's key never changes. Do not trust it until its operators explain.")]
    OtherKey {
        /// The pinned key.
        pinned: String,
        /// The key the exchange offers.
        offered: String,
    },
    /// The checkpoint is for another log than the exchange says.
    #[error(
        "the checkpoint is for log {checkpoint:?}, but the exchange says its log is {served:?}"
    )]
    OtherOrigin {
        /// The checkpoint's origin.
        checkpoint: String,
        /// The exchange's.
        served: String,
    },
    /// The exchange's size or root is not the signed one.
    #[error("the exchange's answer disagrees with the checkpoint it signed (size or root): do not trust this log")]
    Disagrees,
    /// The state file remembers another log.
    #[error("this is log {origin:?}, but {} remembers log {remembered:?}; use another --state file for another log", state.display())]
    OtherLog {
        /// The log's origin.
        origin: String,
        /// The state file.
        state: PathBuf,
        /// The origin it remembers.
        remembered: String,
    },
    /// The log has fewer entries than a checkpoint verified before.
    #[error("the log SHRANK: its latest checkpoint has {size} entries, but one of {old_size} entries was verified before. A log never shrinks: it was rolled back or replaced.")]
    Shrank {
        /// Size of the latest checkpoint.
        size: u64,
        /// Size verified before.
        old_size: u64,
    },
    /// The log does not extend the checkpoint verified before.
    #[error("the log is NOT consistent with the checkpoint of {old_size} entries verified before: entries were changed or removed since. Keep the state file as evidence.")]
    NotConsistent {
        /// Size verified before.
        old_size: u64,
        /// Why.
        #[source]
        source: MerkleError,
    },
    /// An entry as served is not in the signed checkpoint.
    #[error("entry {index} as the exchange serves it is NOT in the log's signed checkpoint: it was altered after it was logged")]
    NotIncluded {
        /// The entry.
        index: u64,
        /// Why.
        #[source]
        source: MerkleError,
    },
    /// The listing skipped entries, as an agency's does.
    #[error("the listing skips from entry {expected} to {got}: --full needs an auditor's certificate (agencies see only the entries they are party to)")]
    ListingSkips {
        /// The entry expected.
        expected: u64,
        /// The entry listed.
        got: u64,
    },
    /// The listing ended before the checkpoint's size.
    #[error("the exchange listed only {listed} entries, but its checkpoint has {size}: entries are missing")]
    ListingShort {
        /// Entries listed.
        listed: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// Rebuilding the tree found an altered entry.
    #[error("entry {index} does not match the log's signed checkpoint: the {index} entries before it are proven to be in it, but neither a consistency nor an inclusion proof puts entry {index}, as the exchange now serves it, there — it was altered after it was logged.\nReport this to the exchange's operators; `puente audit log --start {index} --limit 1` shows the entry as it now reads.")]
    AlteredServed {
        /// The first altered entry.
        index: u64,
    },
    /// The exchange's proofs contradict each other.
    #[error("the entries do not give the checkpoint's root, and the exchange's proofs contradict each other (entry {index} is both in and not in the checkpoint): do not trust this log")]
    ProofsContradict {
        /// The entry.
        index: u64,
    },
    /// A tree computation failed (an index out of range).
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

// === State ===

/// What a verifier remembers between runs: the pinned key and the last verified checkpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifierState {
    /// The log's origin line.
    pub origin: String,
    /// The pinned verifier key.
    pub verifier_key: String,
    /// Size of the last verified checkpoint.
    pub size: u64,
    /// Its root, hex.
    pub root: String,
    /// The signed note itself, so the state is evidence on its own.
    pub note: String,
}

impl VerifierState {
    /// Reads the state file; `None` if there is none yet.
    ///
    /// # Errors
    /// The file cannot be read or is not a state.
    pub fn load(path: &Path) -> Result<Option<VerifierState>, VerifyError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(VerifyError::ReadState {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| VerifyError::BadState {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Writes the state file (atomically, world-readable: it holds nothing secret).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), VerifyError> {
        let mut text = serde_json::to_string_pretty(self).map_err(VerifyError::EncodeState)?;
        text.push('\n');
        crate::pki::write_public(path, &text).map_err(|source| VerifyError::SaveState {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The remembered root.
    ///
    /// # Errors
    /// [`VerifyError::BadHash`] if the file holds no hash there.
    pub fn root(&self) -> Result<Hash, VerifyError> {
        parse_hash(&self.root, "the root in the state file")
    }
}

fn parse_hash(hex_hash: &str, what: &str) -> Result<Hash, VerifyError> {
    hex::decode(hex_hash)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| VerifyError::BadHash {
            what: what.to_string(),
        })
}

// === Keys and checkpoints ===

/// Where the verifier key in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Given by the user (`--verifier-key`).
    Flag,
    /// The state file.
    State,
    /// Nowhere: the key the exchange (or the export) offers, trusted on first use.
    Unpinned,
}

/// The verifier key checkpoints are checked with.
#[derive(Debug)]
pub struct Pinned {
    /// The key as written.
    pub key: String,
    /// The key parsed.
    pub verifier: NoteVerifier,
    /// Where it came from.
    pub source: KeySource,
}

/// The key to check with: `given`, else the one in `state` (read from `state_path`), else
/// `offered` (unpinned).
///
/// # Errors
/// A key does not parse, or `given` is not the key pinned in `state`.
pub fn pin(
    given: Option<&str>,
    state_path: &Path,
    state: Option<&VerifierState>,
    offered: &str,
) -> Result<Pinned, VerifyError> {
    let parse = |key: &str, from: &'static str| {
        NoteVerifier::parse(key).map_err(|source| VerifyError::BadKey {
            from,
            key: crate::text::line(key).into_owned(),
            source,
        })
    };
    if let (Some(flag), Some(state)) = (given, state) {
        if parse(flag, "--verifier-key")?
            != parse(&state.verifier_key, "the key in the state file")?
        {
            return Err(VerifyError::KeyNotPinned {
                state: state_path.to_path_buf(),
                pinned: state.verifier_key.clone(),
                given: flag.trim().to_string(),
            });
        }
    }
    let (key, source) = match (given, state) {
        (Some(flag), _) => (flag.trim(), KeySource::Flag),
        (None, Some(state)) => (state.verifier_key.trim(), KeySource::State),
        (None, None) => (offered.trim(), KeySource::Unpinned),
    };
    let from = match source {
        KeySource::Flag => "--verifier-key",
        KeySource::State => "the key in the state file",
        KeySource::Unpinned => "the key offered",
    };
    Ok(Pinned {
        verifier: parse(key, from)?,
        key: key.to_string(),
        source,
    })
}

// === impl Pinned ===

impl Pinned {
    /// Checks `note`'s signature and parses its checkpoint.
    ///
    /// # Errors
    /// The note is not signed by the pinned key, or is malformed.
    pub fn open(&self, note: &str) -> Result<Checkpoint, VerifyError> {
        let body = self.verifier.verify(note).map_err(|e| match e {
            NoteError::NotSigned(_) => VerifyError::NotSigned {
                key: self.key.clone(),
            },
            e => VerifyError::BadNote(e),
        })?;
        Checkpoint::parse(body).map_err(VerifyError::BadCheckpoint)
    }

    /// Checks that the exchange offers the pinned key.
    ///
    /// # Errors
    /// [`VerifyError::OtherKey`].
    pub fn check_offered(&self, offered: &str) -> Result<(), VerifyError> {
        if NoteVerifier::parse(offered).ok().as_ref() != Some(&self.verifier) {
            return Err(VerifyError::OtherKey {
                pinned: self.key.clone(),
                offered: offered.to_string(),
            });
        }
        Ok(())
    }

    /// Opens the checkpoint an exchange serves as `note`, for its log `origin`, with the
    /// `size` and `root` it states beside it.
    ///
    /// # Errors
    /// The note does not open, or is for another log, or disagrees with `size` and `root`.
    pub fn open_served(
        &self,
        note: &str,
        origin: &str,
        size: u64,
        root: &[u8],
    ) -> Result<Checkpoint, VerifyError> {
        let checkpoint = self.open(note)?;
        if checkpoint.origin != origin {
            return Err(VerifyError::OtherOrigin {
                checkpoint: checkpoint.origin,
                served: origin.to_string(),
            });
        }
        if size != checkpoint.size || root != checkpoint.root {
            return Err(VerifyError::Disagrees);
        }
        Ok(checkpoint)
    }
}

// === Proofs ===

/// Checks the state's origin against `checkpoint`'s and that the log did not shrink since.
///
/// # Errors
/// [`VerifyError::OtherLog`] or [`VerifyError::Shrank`].
pub fn check_not_shrunk(
    state: &VerifierState,
    state_path: &Path,
    checkpoint: &Checkpoint,
) -> Result<(), VerifyError> {
    if state.origin != checkpoint.origin {
        return Err(VerifyError::OtherLog {
            origin: checkpoint.origin.clone(),
            state: state_path.to_path_buf(),
            remembered: state.origin.clone(),
        });
    }
    if checkpoint.size < state.size {
        return Err(VerifyError::Shrank {
            size: checkpoint.size,
            old_size: state.size,
        });
    }
    Ok(())
}

/// Checks with `proof` that `checkpoint`'s log extends the one of `old_size` entries and
/// `old_root`.
///
/// # Errors
/// [`VerifyError::NotConsistent`].
pub fn check_grew(
    old_size: u64,
    old_root: &Hash,
    checkpoint: &Checkpoint,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    merkle::verify_consistency(old_size, checkpoint.size, proof, old_root, &checkpoint.root)
        .map_err(|source| VerifyError::NotConsistent { old_size, source })
}

/// Checks with `proof` that entry `index` with `leaf` is in `checkpoint`; returns its hash.
///
/// # Errors
/// [`VerifyError::NotIncluded`].
pub fn check_included(
    index: u64,
    leaf: &[u8],
    checkpoint: &Checkpoint,
    proof: &[Hash],
) -> Result<Hash, VerifyError> {
    let leaf_hash = merkle::hash_leaf(leaf);
    merkle::verify_inclusion(&leaf_hash, index, checkpoint.size, proof, &checkpoint.root)
        .map_err(|source| VerifyError::NotIncluded { index, source })?;
    Ok(leaf_hash)
}

// === impl Rebuild ===

/// Hashes the entries `0..size` of a complete listing into a tree, one [`Rebuild::push`] per
/// entry listed.
#[derive(Debug)]
pub struct Rebuild {
    size: u64,
    tree: MemoryTree,
}

impl Rebuild {
    /// A rebuild of the first `size` entries.
    pub fn new(size: u64) -> Rebuild {
        Rebuild {
            size,
            tree: MemoryTree::default(),
        }
    }

    /// Whether every entry below the size has been pushed.
    pub fn is_complete(&self) -> bool {
        self.tree.size() >= self.size
    }

    /// Entries pushed so far.
    pub fn len(&self) -> u64 {
        self.tree.size()
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.tree.size() == 0
    }

    /// Adds the entry listed as `index` with `leaf`.
    ///
    /// # Errors
    /// [`VerifyError::ListingSkips`] if it is not the next entry.
    pub fn push(&mut self, index: u64, leaf: &[u8]) -> Result<(), VerifyError> {
        if index != self.tree.size() {
            return Err(VerifyError::ListingSkips {
                expected: self.tree.size(),
                got: index,
            });
        }
        self.tree.push(merkle::hash_leaf(leaf));
        Ok(())
    }

    /// The tree, once every entry was pushed.
    ///
    /// # Errors
    /// [`VerifyError::ListingShort`] if entries are missing.
    pub fn finish(self) -> Result<MemoryTree, VerifyError> {
        if !self.is_complete() {
            return Err(VerifyError::ListingShort {
                listed: self.tree.size(),
                size: self.size,
            });
        }
        Ok(self.tree)
    }
}

// === impl Locator ===

/// Finds the first entry of a rebuilt tree that is not in a checkpoint whose root the tree does
/// not give.
///
/// The prefixes that are in the checkpoint are exactly those before the first altered entry,
/// so a binary search over prefix sizes `m` finds it: a prefix is in the checkpoint when the
/// consistency proof from `m` to the checkpoint's size verifies against the locally computed
/// root of the first `m` entries. A verifying proof is what makes "the entries before it are
/// intact" certain; that the entry found is itself the altered one rests on the exchange's
/// failing proofs being honest failures, so its inclusion proof is asked as a cross-check
/// ([`Locator::conclude`]) and proofs that contradict each other are reported as such rather
/// than blamed on an entry.
///
/// Sans I/O: while [`Locator::probe`] names a prefix size `m`, fetch the consistency proof from
/// `m` to the checkpoint's size and give it to [`Locator::record`]; then fetch the inclusion
/// proof of [`Locator::candidate`] and give it to [`Locator::conclude`].
#[derive(Debug)]
pub struct Locator<'a> {
    tree: &'a MemoryTree,
    checkpoint: &'a Checkpoint,
    /// The first `good` entries are in the checkpoint.
    good: u64,
    /// The first `bad` entries are not.
    bad: u64,
}

impl<'a> Locator<'a> {
    /// A search over `tree`, which does not give `checkpoint`'s root.
    pub fn new(tree: &'a MemoryTree, checkpoint: &'a Checkpoint) -> Locator<'a> {
        Locator {
            tree,
            checkpoint,
            good: 0,
            bad: checkpoint.size,
        }
    }

    /// The next prefix size to ask a consistency proof for, or `None` once found.
    pub fn probe(&self) -> Option<u64> {
        (self.bad - self.good > 1).then(|| self.good + (self.bad - self.good) / 2)
    }

    /// Records the consistency `proof` from prefix size `m` to the checkpoint.
    ///
    /// # Errors
    /// A [`MerkleError`] if `m` is beyond the tree.
    pub fn record(&mut self, m: u64, proof: &[Hash]) -> Result<(), VerifyError> {
        let prefix = merkle::root(self.tree, m)?;
        let n = self.checkpoint.size;
        if merkle::verify_consistency(m, n, proof, &prefix, &self.checkpoint.root).is_ok() {
            self.good = m;
        } else {
            self.bad = m;
        }
        Ok(())
    }

    /// The entry the search points at.
    pub fn candidate(&self) -> u64 {
        self.good
    }

    /// Cross-checks the candidate with its inclusion `proof`; returns it if the proof fails.
    ///
    /// # Errors
    /// [`VerifyError::ProofsContradict`] if the proof puts the entry in the checkpoint after
    /// all.
    pub fn conclude(&self, proof: &[Hash]) -> Result<u64, VerifyError> {
        let index = self.good;
        let leaf_hash = self.tree.hash(0, index)?;
        let (n, root) = (self.checkpoint.size, &self.checkpoint.root);
        if merkle::verify_inclusion(&leaf_hash, index, n, proof, root).is_ok() {
            return Err(VerifyError::ProofsContradict { index });
        }
        Ok(index)
    }
}

// === Exports ===

/// What comparing a rebuilt tree with its signed checkpoint found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The leaves give the signed root.
    Intact,
    /// The claimed leaf hashes give the signed root, so they are authentic, and this is the
    /// first leaf whose hash is not the claimed one.
    Altered(u64),
    /// Neither gives the signed root.
    Unlocated,
}

/// Compares the tree of the `leaves` and the tree of the leaf hashes an export `claimed` with
/// `checkpoint`.
///
/// # Errors
/// A [`MerkleError`] if either tree is smaller than the checkpoint.
pub fn find_altered(
    leaves: &MemoryTree,
    claimed: &MemoryTree,
    checkpoint: &Checkpoint,
) -> Result<Verdict, VerifyError> {
    if merkle::root(leaves, checkpoint.size)? == checkpoint.root {
        return Ok(Verdict::Intact);
    }
    if merkle::root(claimed, checkpoint.size)? != checkpoint.root {
        return Ok(Verdict::Unlocated);
    }
    for index in 0..checkpoint.size {
        if leaves.hash(0, index)? != claimed.hash(0, index)? {
            return Ok(Verdict::Altered(index));
        }
    }
    // Same leaf hashes give the same root; unreachable unless the trees disagree internally.
    Ok(Verdict::Unlocated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trees(leaves: &[Vec<u8>], claimed: &[Vec<u8>]) -> (MemoryTree, MemoryTree) {
        let mut a = MemoryTree::default();
        let mut b = MemoryTree::default();
        for leaf in leaves {
            a.push(merkle::hash_leaf(leaf));
        }
        for leaf in claimed {
            b.push(merkle::hash_leaf(leaf));
        }
        (a, b)
    }

    #[test]
    fn an_altered_leaf_is_named_only_when_the_claimed_hashes_give_the_signed_root() {
        let genuine: Vec<Vec<u8>> = (0..21u8).map(|i| vec![i; 3]).collect();
        let (tree, _) = trees(&genuine, &[]);
        let checkpoint = Checkpoint {
            origin: "test".into(),
            size: 21,
            root: merkle::root(&tree, 21).unwrap(),
        };
        let (leaves, claimed) = trees(&genuine, &genuine);
        assert_eq!(
            find_altered(&leaves, &claimed, &checkpoint).unwrap(),
            Verdict::Intact
        );

        let mut altered = genuine.clone();
        altered[13][1] ^= 1;
        let (leaves, claimed) = trees(&altered, &genuine);
        assert_eq!(
            find_altered(&leaves, &claimed, &checkpoint).unwrap(),
            Verdict::Altered(13)
        );
        // Leaf and its listed hash altered together: nothing authentic names the entry.
        let (leaves, claimed) = trees(&altered, &altered);
        assert_eq!(
            find_altered(&leaves, &claimed, &checkpoint).unwrap(),
            Verdict::Unlocated
        );
    }
}
