//! Encryption of message bodies at rest: a keyring file of ChaCha20-Poly1305 data keys, each
//! with an id stored beside every body it sealed, so keys can rotate without re-encrypting.
//!
//! A message's body (content and attachments) and its free-text fields (subject, reasons,
//! conditions of use, hit notices) are sealed with the keyring's newest key, a random 96-bit
//! nonce each, and associated data naming the part and the message id, so a sealed part cannot
//! be moved to another message or part unnoticed. They are sealed before they reach the commit
//! journal, sled or the object directory: nothing on the data disk holds them in the clear.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of one data key.
const KEY_LEN: usize = 32;

/// First lines of a new keyring file.
const HEADER: &str = "\
# Puente data keys (ChaCha20-Poly1305), one per line: <key id> <base64 of 32 random bytes>.
# The last key seals new message bodies; every key listed opens the bodies it sealed.
# Add keys with `puente data-key new`; never remove a key while messages sealed with it are kept.
";

/// Why a keyring cannot be used, or a body cannot be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealingError {
    /// The keyring file does not exist.
    #[error("data keyring {0} does not exist: create it with `puente data-key new --keyring {0}`")]
    Missing(String),
    /// The keyring file cannot be read or written.
    #[error("cannot use the data keyring {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Users outside the file's owner and group may read it, or its group may change it.
    #[error("data keyring {0} is open to other users: run `chmod 600 {0}` (or 640, owned by root and the server's group)")]
    Exposed(String),
    /// A line of the keyring is not `<key id> <base64 key>`.
    #[error("data keyring {path}, line {line}: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The keyring holds no key.
    #[error("data keyring {0} holds no key: create one with `puente data-key new --keyring {0}`")]
    Empty(String),
    /// A body was sealed with a key the keyring does not hold.
    #[error("message body sealed with data key {0:?}, which is not in the keyring")]
    UnknownKey(String),
    /// A sealed body does not authenticate: altered on disk, or opened with the wrong key.
    #[error("message body of {0} fails authentication (altered on disk?)")]
    Unauthentic(String),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// Which part of a message is sealed: bound into the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The body: content and attachments.
    Body,
    /// The free-text fields kept beside the body (subject, reasons, conditions, hit notice).
    Fields,
}

impl Part {
    fn label(self) -> &'static [u8] {
        match self {
            Part::Body => b"puente body v1\0",
            Part::Fields => b"puente fields v1\0",
        }
    }
}

/// The associated data of one part of one message.
fn associated_data(part: Part, message_id: &str) -> Vec<u8> {
    [part.label(), message_id.as_bytes()].concat()
}

/// A sealed part and what is needed to open it again (besides the message id and part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Id of the key that sealed it.
    pub key_id: String,
    /// The nonce it was sealed with.
    pub nonce: Vec<u8>,
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// The data keys of a keyring file. Holds key bytes: its `Debug` prints only the key ids.
pub struct DataKeys {
    /// Keys in file order; the last one seals.
    keys: Vec<(String, LessSafeKey)>,
    random: SystemRandom,
}

impl fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("DataKeys")
            .field("key_ids", &ids)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl DataKeys {
    /// Reads a keyring file. Others must have no access to it and its group no write access
    /// (mode 0600, or 0640 with a group only the server is in).
    ///
    /// # Errors
    /// The file cannot be read, is exposed, malformed, or holds no key.
    pub fn load(path: &Path) -> Result<DataKeys, SealingError> {
        let shown = path.display().to_string();
        let io = |source| SealingError::Io {
            path: shown.clone(),
            source,
        };
        let metadata = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SealingError::Missing(shown))
            }
            metadata => metadata.map_err(io)?,
        };
        if crate::private_files::is_exposed(&metadata) {
            return Err(SealingError::Exposed(shown));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let mut keys: Vec<(String, LessSafeKey)> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = |reason: &str| SealingError::Malformed {
                path: shown.clone(),
                line: number + 1,
                reason: reason.to_string(),
            };
            let (id, encoded) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| malformed("expected `<key id> <base64 key>`"))?;
            if !valid_key_id(id) {
                return Err(malformed("a key id is 1 to 64 letters, digits or '-'"));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(malformed("key id listed twice"));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| malformed("the key is not base64"))?;
            if bytes.len() != KEY_LEN {
                return Err(malformed("a key is 32 bytes"));
            }
            let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
                .map_err(|_| malformed("not a ChaCha20-Poly1305 key"))?;
            keys.push((id.to_string(), LessSafeKey::new(key)));
        }
        if keys.is_empty() {
            return Err(SealingError::Empty(shown));
        }
        Ok(DataKeys {
            keys,
            random: SystemRandom::new(),
        })
    }

    /// Adds a fresh random key to a keyring file (created with mode 0600 if missing), which
    /// becomes the key that seals from the next start on. Returns its id.
    ///
    /// # Errors
    /// The existing file cannot be used (see [`DataKeys::load`]) or the file cannot be written.
    pub fn add_new(path: &Path) -> Result<String, SealingError> {
        let shown = path.display().to_string();
        let io = |source| SealingError::Io {
            path: shown.clone(),
            source,
        };
        let existing = match DataKeys::load(path) {
            Ok(keys) => Some(keys),
            Err(SealingError::Missing(_)) => None,
            Err(e) => return Err(e),
        };
        let random = SystemRandom::new();
        let mut key = [0u8; KEY_LEN];
        random.fill(&mut key).map_err(|_| SealingError::Random)?;
        let mut suffix = [0u8; 4];
        random.fill(&mut suffix).map_err(|_| SealingError::Random)?;
        let date = time::OffsetDateTime::now_utc().date();
        let id = format!("{date}-{}", hex::encode(suffix));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mut text = String::new();
        if existing.is_none() {
            text.push_str(HEADER);
        }
        text.push_str(&format!(
            "{id} {}\n",
            base64::engine::general_purpose::STANDARD.encode(key)
        ));
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(id)
    }

    /// Ids of the keys, in keyring order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// Id of the key that seals new bodies.
    pub fn current_id(&self) -> &str {
        self.keys
            .last()
            .map(|(id, _)| id.as_str())
            .unwrap_or_default()
    }

    /// Seals `part` of `message_id` with the current key and a fresh random nonce.
    ///
    /// # Errors
    /// `Random` if no nonce can be drawn.
    pub fn seal(
        &self,
        message_id: &str,
        part: Part,
        plaintext: Vec<u8>,
    ) -> Result<Sealed, SealingError> {
        let (key_id, key) = self.keys.last().ok_or(SealingError::Random)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealingError::Random)?;
        let mut ciphertext = plaintext;
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(part, message_id)),
            &mut ciphertext,
        )
        .map_err(|_| SealingError::Random)?;
        Ok(Sealed {
            key_id: key_id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens `part` of `message_id`, sealed by [`DataKeys::seal`].
    ///
    /// # Errors
    /// `UnknownKey` if its key is not in the keyring; `Unauthentic` if it was altered, belongs
    /// to another message or part, or the nonce is malformed.
    pub fn open(
        &self,
        message_id: &str,
        part: Part,
        sealed: Sealed,
    ) -> Result<Vec<u8>, SealingError> {
        let key = self
            .keys
            .iter()
            .find(|(id, _)| *id == sealed.key_id)
            .map(|(_, key)| key)
            .ok_or_else(|| SealingError::UnknownKey(sealed.key_id.clone()))?;
        let unauthentic = || SealingError::Unauthentic(message_id.to_string());
        let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce).map_err(|_| unauthentic())?;
        let mut data = sealed.ciphertext;
        let plain_len = key
            .open_in_place(
                nonce,
                Aad::from(associated_data(part, message_id)),
                &mut data,
            )
            .map_err(|_| unauthentic())?
            .len();
        data.truncate(plain_len);
        Ok(data)
    }
}

fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn keyring() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data.keys");
        (dir, path)
    }

    #[test]
    fn a_sealed_body_opens_only_for_its_message_and_unaltered() {
        let (_dir, path) = keyring();
        DataKeys::add_new(&path).expect("new key");
        let keys = DataKeys::load(&path).expect("load");
        let sealed = keys
            .seal("m-1", Part::Body, b"seized: 3 pistols".to_vec())
            .expect("seal");
        assert_eq!(sealed.key_id, keys.current_id());
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"pistols"));
        assert_eq!(
            keys.open("m-1", Part::Body, sealed.clone()).expect("open"),
            b"seized: 3 pistols"
        );
        for (id, part) in [("m-2", Part::Body), ("m-1", Part::Fields)] {
            assert!(matches!(
                keys.open(id, part, sealed.clone()),
                Err(SealingError::Unauthentic(_))
            ));
        }
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert!(matches!(
            keys.open("m-1", Part::Body, altered),
            Err(SealingError::Unauthentic(_))
        ));
        let mut unknown = sealed;
        unknown.key_id = "gone".into();
        assert!(matches!(
            keys.open("m-1", Part::Body, unknown),
            Err(SealingError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_new_key_seals_and_older_keys_still_open() {
        let (_dir, path) = keyring();
        let first = DataKeys::add_new(&path).expect("first key");
        let old = DataKeys::load(&path)
            .expect("load")
            .seal("m-1", Part::Body, b"old".to_vec())
            .expect("seal");
        let second = DataKeys::add_new(&path).expect("second key");
        assert_ne!(first, second);
        let keys = DataKeys::load(&path).expect("load");
        assert_eq!(keys.current_id(), second);
        assert_eq!(keys.open("m-1", Part::Body, old).expect("open"), b"old");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn exposed_malformed_and_empty_keyrings_are_refused() {
        let (_dir, path) = keyring();
        std::fs::write(&path, "# nothing yet\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(DataKeys::load(&path), Err(SealingError::Empty(_))));
        std::fs::write(&path, "k1 not-base64!\n").expect("write");
        assert!(matches!(
            DataKeys::load(&path),
            Err(SealingError::Malformed { line: 1, .. })
        ));
        std::fs::write(&path, "k1 AAAA\n").expect("write");
        assert!(matches!(
            DataKeys::load(&path),
            Err(SealingError::Malformed { .. })
        ));
        DataKeys::add_new(&path).map(drop).unwrap_err();
        std::fs::remove_file(&path).expect("rm");
        DataKeys::add_new(&path).expect("new");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            DataKeys::load(&path),
            Err(SealingError::Exposed(_))
        ));
        let refused = DataKeys::add_new(&path).expect_err("exposed keyring");
        assert!(refused.to_string().contains("chmod 600"));
    }

    #[test]
    fn debug_output_names_key_ids_only() {
        let (_dir, path) = keyring();
        let id = DataKeys::add_new(&path).expect("new");
        let shown = format!("{:?}", DataKeys::load(&path).expect("load"));
        assert!(shown.contains(&id) && shown.contains("<redacted>"));
        let secret = std::fs::read_to_string(&path).expect("read");
        let encoded = secret.lines().last().and_then(|l| l.split(' ').nth(1));
        assert!(!shown.contains(encoded.expect("key")));
    }
}
