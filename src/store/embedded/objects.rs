//! Message bodies too large to keep inline in sled, one file per message.
//!
//! sled 0.34 writes values larger than a fraction of its segment as separate blob files that it
//! never fsyncs, so large bodies live here instead: written and fsynced (file and directory)
//! before the batch that references them commits.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Bodies up to this many bytes stay inline in the sled record. Sixteen of them (a sled leaf)
/// stay well below sled's blob threshold of a quarter segment (128 KiB).
pub const INLINE_BODY_MAX: usize = 4 * 1024;

/// The directory of external bodies.
#[derive(Debug, Clone)]
pub(super) struct Objects {
    dir: PathBuf,
}

impl Objects {
    /// Opens (creating if needed) the object directory.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub(super) fn open(dir: PathBuf) -> io::Result<Objects> {
        crate::private_files::create_dir(&dir)?;
        Ok(Objects { dir })
    }

    fn path(&self, message_id: &str) -> PathBuf {
        self.dir.join(message_id)
    }

    /// Writes a body durably: temporary file, `fdatasync`, rename, directory `fsync`.
    ///
    /// # Errors
    /// Any I/O failure; nothing is left under the final name then.
    pub(super) fn put(&self, message_id: &str, body: &[u8]) -> io::Result<()> {
        let final_path = self.path(message_id);
        let tmp_path = self.dir.join(format!("{message_id}.tmp"));
        let mut file = crate::private_files::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)?;
        file.write_all(body)?;
        file.sync_data()?;
        fs::rename(&tmp_path, &final_path)?;
        sync_dir(&self.dir)
    }

    /// Reads a body.
    ///
    /// # Errors
    /// The file is missing or unreadable.
    pub(super) fn get(&self, message_id: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(message_id))
    }

    /// Removes a body whose message was never committed.
    ///
    /// # Errors
    /// The file exists but cannot be removed.
    pub(super) fn remove(&self, message_id: &str) -> io::Result<()> {
        match fs::remove_file(self.path(message_id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes bodies left by a crash between writing the body and committing its message:
    /// temporary files, and files for which `is_committed` says no. Run before serving.
    ///
    /// # Errors
    /// The directory cannot be listed or a file cannot be removed.
    pub(super) fn sweep(&self, is_committed: impl Fn(&str) -> bool) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || !is_committed(&name) {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// `fsync`s a directory so that a rename or creation in it survives a crash.
///
/// # Errors
/// The directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens `name` in `dir` (both created owner-only if missing) for reading and writing at
/// offsets, keeping what it holds.
pub(super) fn open_positioned(dir: &Path, name: &str) -> io::Result<File> {
    crate::private_files::create_dir(dir)?;
    let file = crate::private_files::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(name))?;
    sync_dir(dir)?;
    Ok(file)
}
