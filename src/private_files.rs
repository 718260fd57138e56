//! Owner-only files: the directories (0700) and files (0600) the server and the CA create,
//! whatever the umask, and the check that refuses key files others can read.
//!
//! The data directory holds metadata in the clear (who wrote to whom, when, under which
//! handling code) and the audit log's signing key; a permissive umask must not expose them.

use std::fs::{DirBuilder, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the directories made here.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of the files made here.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Permission bits that make a key file exposed: any access for others, or write access for
/// the group. (0640, with a group only the server is in, is allowed.)
pub(crate) const EXPOSED_BITS: u32 = 0o027;

/// The umask the server runs with: what it creates is its user's alone, including the files
/// libraries create for it (sled's snapshots).
pub(crate) const SERVER_UMASK: u32 = 0o077;

/// Creates `dir` and its missing parents, new ones with mode 0700, and narrows `dir` itself to
/// 0700 if it existed with more.
///
/// # Errors
/// A directory cannot be created, or its mode not changed.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    restrict(dir)
}

/// Options that create a file with mode 0600 (add `write`, `create`... as needed). An existing
/// file keeps its mode: follow with [`restrict`] when it may have been made otherwise.
pub(crate) fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Narrows the mode of `path` to its owner's bits (0700 for a directory, 0600 for a file, or
/// less): nothing for the group or others.
///
/// # Errors
/// Its metadata cannot be read or its mode changed.
pub(crate) fn restrict(path: &Path) -> io::Result<()> {
    let mode = std::fs::symlink_metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// [`restrict`] on `dir` and everything under it (symbolic links are not followed): for
/// directories a library filled (sled's).
///
/// # Errors
/// A directory cannot be read or a mode changed.
pub(crate) fn restrict_tree(dir: &Path) -> io::Result<()> {
    restrict(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            restrict_tree(&entry.path())?;
        } else if !entry.file_type()?.is_symlink() {
            restrict(&entry.path())?;
        }
    }
    Ok(())
}

/// Whether a key file with this metadata is exposed (see [`EXPOSED_BITS`]).
pub(crate) fn is_exposed(metadata: &Metadata) -> bool {
    metadata.permissions().mode() & EXPOSED_BITS != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Directories and files come out owner-only, also when they existed wider.
    #[test]
    fn made_and_restricted_paths_are_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!((mode(&root.path().join("a")), mode(&dir)), (0o700, 0o700));
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let file = dir.join("f");
        options().write(true).create(true).open(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        restrict_tree(root.path()).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert!(!is_exposed(&std::fs::metadata(&file).unwrap()));
        std::fs::set_permissions(&file, Permissions::from_mode(0o604)).unwrap();
        assert!(is_exposed(&std::fs::metadata(&file).unwrap()));
    }
}
