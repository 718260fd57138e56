//! The export file of the audit log (`puente audit export`): JSON lines, a header holding the
//! latest signed checkpoint, then one line per entry below its size with the leaf exactly as
//! hashed into the log. [`ExportWriter`] writes one, [`ExportReader`] reads one back, and
//! [`verify_export`] checks it against its signed checkpoint, offline.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Lines, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use prost::Message as _;

use super::merkle::{self, Hash, MemoryTree};
use super::note::Checkpoint;
use super::verify::{find_altered, Pinned, Verdict, VerifyError};
use crate::pb::v1::AuditEvent;

/// Why an export cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The file to write exists or cannot be created.
    #[error("cannot create {} (an existing file is never overwritten; choose another --out)", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing the export failed; the caller removes the partial file.
    #[error(transparent)]
    Write(#[from] std::io::Error),
    /// A line could not be encoded as JSON.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    /// The file to verify cannot be opened.
    #[error("cannot open the export {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the file to verify failed.
    #[error("cannot read the export {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file has no header line.
    #[error("the export {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The first line is not an export header.
    #[error("the first line of {} is not the checkpoint of a `puente audit export`", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A later line is not an export entry.
    #[error("line {line} of the export is not an entry")]
    BadEntry {
        /// Its line number, from 1.
        line: u64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An entry's leaf is not base64.
    #[error("entry {index}: the leaf is not base64")]
    BadLeaf {
        /// The entry.
        index: u64,
        /// Why.
        #[source]
        source: base64::DecodeError,
    },
    /// The export's header is not its signed checkpoint.
    #[error("the export's header disagrees with its signed checkpoint: the file was edited")]
    HeaderEdited,
    /// An agency's export lacks entries.
    #[error("the export is partial: it has no entry {expected} (it goes on with entry {got}). An agency's export holds only the entries it is party to, so the checkpoint's root cannot be rebuilt from it; verify a complete export made with an auditor's certificate.")]
    ExportGap {
        /// The entry missing.
        expected: u64,
        /// The entry that follows.
        got: u64,
    },
    /// An export line holds an entry out of order.
    #[error("line {line} of the export holds entry {got}, expected entry {expected}")]
    ExportOutOfOrder {
        /// The line.
        line: u64,
        /// The entry it holds.
        got: u64,
        /// The entry expected.
        expected: u64,
    },
    /// The export goes on past its checkpoint.
    #[error("the export holds more entries than its checkpoint's {size}")]
    ExportTooLong {
        /// The checkpoint's size.
        size: u64,
    },
    /// The export ends before its checkpoint's size.
    #[error("the export is partial: it holds {held} of the checkpoint's {size} entries, so the root cannot be rebuilt; verify a complete export made with an auditor's certificate")]
    ExportShort {
        /// Entries held.
        held: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// The export's leaf hashes are authentic and name an altered leaf.
    #[error("entry {index} does not match the log's signed checkpoint: the export's leaf hashes give the signed root, and the leaf of entry {index} does not have its hash. The export was altered after it was made.")]
    ExportAltered {
        /// The altered entry.
        index: u64,
    },
    /// The export does not give its root, and an entry does not even decode.
    #[error("the entries do NOT give the checkpoint's root: the export or the log was altered. Entry {index} is the first that does not even decode as an audit event.")]
    ExportUndecodable {
        /// The first undecodable entry.
        index: u64,
    },
    /// The export does not give its root; which entry cannot be told offline.
    #[error("the entries do NOT give the checkpoint's root: the export or the log was altered. Which entry cannot be told offline; run `puente audit verify --full` against the exchange to name it.")]
    ExportUnlocated,
    /// The entries just exported do not give their checkpoint's root.
    #[error("the exported entries do NOT give the checkpoint's root: the log was altered. The file is kept as evidence; run `puente audit verify --full` to name the first altered entry.")]
    ExportedAltered,
    /// The pinned key, the checkpoint or a tree computation failed.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// An entry's listed leaf hash is not a hash.
    #[error("the leaf hash of entry {index} is not a 32-byte hex hash")]
    BadLeafHash {
        /// The entry.
        index: u64,
    },
}

/// First line of an export.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExportHeader {
    /// The signed note; the fields below repeat its content for readers, and are checked
    /// against it.
    pub checkpoint: String,
    /// The log's origin line.
    pub origin: String,
    /// Number of entries of the checkpoint.
    pub size: u64,
    /// Root, hex.
    pub root: String,
    /// The key the note was verified with when exported.
    pub verifier_key: String,
}

/// Every further line of an export.
#[derive(Debug, Serialize, Deserialize)]
struct ExportEntry {
    index: u64,
    /// The leaf, base64: the exact bytes hashed into the log.
    leaf: String,
    /// `HASH(0x00 || leaf)`, hex. Not trusted as such: only once the leaf hashes of the whole
    /// export give the signed root are they authentic, and then they name an altered leaf.
    leaf_hash: String,
}

/// An entry read back from an export.
#[derive(Debug)]
pub struct ReadEntry {
    /// Its index in the log.
    pub index: u64,
    /// The leaf, the exact bytes hashed into the log.
    pub leaf: Vec<u8>,
    /// The leaf hash the export lists (not checked against the leaf).
    pub claimed_hash: Hash,
}

// === impl ExportWriter ===

/// Writes an export to a new file.
pub struct ExportWriter {
    out: BufWriter<File>,
}

impl ExportWriter {
    /// Creates `path`, which must not exist.
    ///
    /// # Errors
    /// [`ExportError::Create`] if the file exists or cannot be created.
    pub fn create(path: &Path) -> Result<ExportWriter, ExportError> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| ExportError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(ExportWriter {
            out: BufWriter::new(file),
        })
    }

    /// Writes the header, the first line.
    ///
    /// # Errors
    /// A write failure.
    pub fn header(&mut self, header: &ExportHeader) -> Result<(), ExportError> {
        writeln!(self.out, "{}", serde_json::to_string(header)?)?;
        Ok(())
    }

    /// Appends entry `index` with its `leaf`; returns the leaf's hash.
    ///
    /// # Errors
    /// A write failure.
    pub fn entry(&mut self, index: u64, leaf: &[u8]) -> Result<Hash, ExportError> {
        let leaf_hash = merkle::hash_leaf(leaf);
        let line = ExportEntry {
            index,
            leaf: BASE64.encode(leaf),
            leaf_hash: hex::encode(leaf_hash),
        };
        writeln!(self.out, "{}", serde_json::to_string(&line)?)?;
        Ok(leaf_hash)
    }

    /// Flushes the file to disk.
    ///
    /// # Errors
    /// A write failure.
    pub fn finish(self) -> Result<(), ExportError> {
        self.out
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        Ok(())
    }
}

// === impl ExportReader ===

/// Reads an export: its header on opening, then its entries in file order.
pub struct ExportReader {
    path: PathBuf,
    lines: Lines<BufReader<File>>,
    /// Number of the last line read, from 1.
    line: u64,
    /// The header.
    pub header: ExportHeader,
}

impl ExportReader {
    /// Opens `path` and reads its header.
    ///
    /// # Errors
    /// The file cannot be read, is empty, or does not start with an export header.
    pub fn open(path: &Path) -> Result<ExportReader, ExportError> {
        let file = File::open(path).map_err(|source| ExportError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut lines = BufReader::new(file).lines();
        let first = lines
            .next()
            .transpose()
            .map_err(|source| ExportError::Read {
                path: path.to_path_buf(),
                source,
            })?
            .ok_or_else(|| ExportError::Empty {
                path: path.to_path_buf(),
            })?;
        let header = serde_json::from_str(&first).map_err(|source| ExportError::BadHeader {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ExportReader {
            path: path.to_path_buf(),
            lines,
            line: 1,
            header,
        })
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next entry, or `None` at the end of the file.
    ///
    /// # Errors
    /// The file cannot be read, or the line is not a well-formed entry.
    pub fn next_entry(&mut self) -> Result<Option<(u64, ExportLine)>, ExportError> {
        let Some(line) = self.lines.next() else {
            return Ok(None);
        };
        let line = line.map_err(|source| ExportError::Read {
            path: self.path.clone(),
            source,
        })?;
        self.line += 1;
        let entry: ExportEntry =
            serde_json::from_str(&line).map_err(|source| ExportError::BadEntry {
                line: self.line,
                source,
            })?;
        Ok(Some((self.line, ExportLine(entry))))
    }
}

/// An entry line as written, before its leaf and hash are decoded: its index is checked first,
/// so that a gap is reported as such rather than as a bad leaf.
#[derive(Debug)]
pub struct ExportLine(ExportEntry);

impl ExportLine {
    /// The index the line claims.
    pub fn index(&self) -> u64 {
        self.0.index
    }

    /// Decodes the leaf and the listed leaf hash.
    ///
    /// # Errors
    /// [`ExportError::BadLeaf`] or [`ExportError::BadLeafHash`].
    pub fn decode(self) -> Result<ReadEntry, ExportError> {
        let index = self.0.index;
        let leaf = BASE64
            .decode(&self.0.leaf)
            .map_err(|source| ExportError::BadLeaf { index, source })?;
        let claimed_hash = hex::decode(&self.0.leaf_hash)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(ExportError::BadLeafHash { index })?;
        Ok(ReadEntry {
            index,
            leaf,
            claimed_hash,
        })
    }
}

// === Verifying an export ===

/// An export read through and compared with its signed checkpoint; [`ExportCheck::conclude`]
/// turns the verdict into a result.
#[derive(Debug)]
pub struct ExportCheck {
    /// The export's checkpoint, signed by the pinned key.
    pub checkpoint: Checkpoint,
    /// What the comparison found.
    pub verdict: Verdict,
    /// The first entry that does not decode as an audit event, if any.
    pub first_undecodable: Option<u64>,
}

impl ExportCheck {
    /// The verdict as a result.
    ///
    /// # Errors
    /// [`ExportError::ExportAltered`], [`ExportError::ExportUndecodable`] or
    /// [`ExportError::ExportUnlocated`] unless the export is intact.
    pub fn conclude(&self) -> Result<(), ExportError> {
        match (&self.verdict, self.first_undecodable) {
            (Verdict::Intact, _) => Ok(()),
            (Verdict::Altered(index), _) => Err(ExportError::ExportAltered { index: *index }),
            (Verdict::Unlocated, Some(index)) => Err(ExportError::ExportUndecodable { index }),
            (Verdict::Unlocated, None) => Err(ExportError::ExportUnlocated),
        }
    }
}

/// Reads the export behind `reader` through, checks its header against its checkpoint signed
/// by `pinned`, and compares its entries with the checkpoint. `progress(read, size)` is called
/// every `progress_every` entries.
///
/// # Errors
/// The file is malformed, its checkpoint is not signed by `pinned`, or it is partial.
pub fn verify_export(
    mut reader: ExportReader,
    pinned: &Pinned,
    progress_every: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<ExportCheck, ExportError> {
    let header = &reader.header;
    let checkpoint = pinned.open(&header.checkpoint)?;
    if checkpoint.origin != header.origin
        || checkpoint.size != header.size
        || hex::encode(checkpoint.root) != header.root
    {
        return Err(ExportError::HeaderEdited);
    }

    // `leaves` hashes the leaves themselves; `claimed` the leaf hashes the export lists.
    let (mut leaves, mut claimed) = (MemoryTree::default(), MemoryTree::default());
    let mut first_undecodable = None;
    while let Some((line, entry)) = reader.next_entry()? {
        let expected = leaves.size();
        let got = entry.index();
        if got != expected {
            if got > expected && got < checkpoint.size {
                return Err(ExportError::ExportGap { expected, got });
            }
            return Err(ExportError::ExportOutOfOrder {
                line,
                got,
                expected,
            });
        }
        if expected >= checkpoint.size {
            return Err(ExportError::ExportTooLong {
                size: checkpoint.size,
            });
        }
        let entry = entry.decode()?;
        if first_undecodable.is_none() && AuditEvent::decode(entry.leaf.as_slice()).is_err() {
            first_undecodable = Some(expected);
        }
        leaves.push(merkle::hash_leaf(&entry.leaf));
        claimed.push(entry.claimed_hash);
        if leaves.size() % progress_every == 0 {
            progress(leaves.size(), checkpoint.size);
        }
    }
    if leaves.size() < checkpoint.size {
        return Err(ExportError::ExportShort {
            held: leaves.size(),
            size: checkpoint.size,
        });
    }
    let verdict = find_altered(&leaves, &claimed, &checkpoint)?;
    Ok(ExportCheck {
        checkpoint,
        verdict,
        first_undecodable,
    })
}
