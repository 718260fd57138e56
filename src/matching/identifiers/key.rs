//! The exchange-wide matching key (generated, saved to and loaded from its private file) and
//! [`blind`], the HMAC that turns a canonical identifier into what the exchange stores.

use std::path::Path;

use base64::Engine as _;
use hmac::digest::Key;
use hmac::{Hmac, Mac};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use sha2::Sha256;

use super::{IdentifierError, KEY_LEN};
use crate::pb::v1::IdentifierKind;
use crate::pki::write_private;

// === The matching key ===

/// The exchange-wide matching key of one epoch: 32 random bytes that every agency holds and the
/// exchange's operators never do. Agencies rotate it by agreeing on a new key under the next
/// epoch and publishing again.
///
/// On disk it is a TOML file, mode 0600:
///
/// ```toml
/// epoch = 3
/// key = "<32 bytes, base64>"
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct MatchingKey {
    /// The epoch the key belongs to; sent with every request so the exchange compares only
    /// identifiers blinded under the same key.
    epoch: u32,
    /// The HMAC key.
    key: [u8; KEY_LEN],
}

/// The file form of a [`MatchingKey`], as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    epoch: u32,
    key: String,
}

/// The first lines of a key file, so whoever finds one knows what it is and where it must not go.
const KEY_FILE_HEADER: &str = "\
# Puente matching key. Every agency of the exchange holds the same key, handed over out of band.
# Never give it to the exchange's operators: with it, blinded identifiers can be tested.
";

impl MatchingKey {
    /// A new random key for `epoch`.
    ///
    /// # Errors
    /// [`IdentifierError::ZeroEpoch`] for epoch 0 (the wire's "not set"), or
    /// [`IdentifierError::Random`] if the system has no randomness.
    pub fn generate(epoch: u32) -> Result<MatchingKey, IdentifierError> {
        if epoch == 0 {
            return Err(IdentifierError::ZeroEpoch);
        }
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| IdentifierError::Random)?;
        Ok(MatchingKey { epoch, key })
    }

    /// The epoch of the key.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Reads a key file written by [`MatchingKey::save`].
    ///
    /// # Errors
    /// [`IdentifierError::Read`] if the file cannot be read, [`IdentifierError::BadKeyFile`] if it
    /// is not a key file with a non-zero epoch and 32 base64 bytes.
    pub fn load(path: &Path) -> Result<MatchingKey, IdentifierError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentifierError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let bad = |reason: String| IdentifierError::BadKeyFile {
            path: path.display().to_string(),
            reason,
        };
        let file: KeyFile = toml::from_str(&text).map_err(|e| bad(e.message().to_string()))?;
        if file.epoch == 0 {
            return Err(bad("the epoch must be at least 1".into()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(file.key.trim())
            .map_err(|_| bad("the key is not base64".into()))?;
        let key = <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
            bad(format!(
                "the key must be {KEY_LEN} bytes, not {}",
                bytes.len()
            ))
        })?;
        Ok(MatchingKey {
            epoch: file.epoch,
            key,
        })
    }

    /// Writes the key to a new file, readable only by its owner (0600).
    ///
    /// # Errors
    /// [`IdentifierError::KeyExists`] if `path` exists: a key is never overwritten.
    /// [`IdentifierError::Write`] if the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), IdentifierError> {
        if path.exists() {
            return Err(IdentifierError::KeyExists {
                path: path.display().to_string(),
            });
        }
        // Two plain fields (a number and base64, which needs no escaping), written by hand so
        // that the file can open with the comment saying what it is.
        let text = format!(
            "{KEY_FILE_HEADER}epoch = {}\nkey = \"{}\"\n",
            self.epoch,
            base64::engine::general_purpose::STANDARD.encode(self.key)
        );
        write_private(path, &text)?;
        Ok(())
    }
}

impl std::fmt::Debug for MatchingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatchingKey")
            .field("epoch", &self.epoch)
            .field("key", &"<redacted>")
            .finish()
    }
}

// === Blinding ===

/// The blinded form of an identifier:
/// HMAC-SHA-256(key, kind name || 0x00 || canonical), where the kind name is the proto enum name
/// (`IDENTIFIER_KIND_FIREARM`), so that equal strings of different kinds never match. The
/// 0x00 cannot occur in a kind name, so the split between name and value is unambiguous.
///
/// `canonical` should come from [`canonical`](super::canonical); anything else blinds to a value no other agency
/// produces.
pub fn blind(key: &MatchingKey, kind: IdentifierKind, canonical: &str) -> [u8; KEY_LEN] {
    // HMAC pads a key shorter than the hash's block to the block size with zeros (RFC 2104 §2);
    // doing so here gives the same MAC through the infallible constructor, instead of one that
    // checks a length that cannot be wrong.
    let mut block = Key::<Hmac<Sha256>>::default();
    block[..KEY_LEN].copy_from_slice(&key.key);
    let mut mac = <Hmac<Sha256> as Mac>::new(&block);
    mac.update(kind.as_str_name().as_bytes());
    mac.update(&[0]);
    mac.update(canonical.as_bytes());
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdentifierKind::*;

    fn key(epoch: u32, byte: u8) -> MatchingKey {
        MatchingKey {
            epoch,
            key: [byte; KEY_LEN],
        }
    }

    #[test]
    fn blinding_is_stable_and_separates_kinds_keys_and_epochs() {
        let k = key(1, 7);
        let a = blind(&k, Firearm, "GLOCK|BXR4471");
        assert_eq!(a, blind(&k.clone(), Firearm, "GLOCK|BXR4471"));
        let differs: &[(&str, [u8; KEY_LEN])] = &[
            ("other value", blind(&k, Firearm, "GLOCK|BXR4472")),
            ("other kind", blind(&k, Passport, "GLOCK|BXR4471")),
            ("other key", blind(&key(1, 8), Firearm, "GLOCK|BXR4471")),
            (
                "other epoch's key",
                blind(&key(2, 9), Firearm, "GLOCK|BXR4471"),
            ),
        ];
        for (what, other) in differs {
            assert_ne!(&a, other, "{what}");
        }
    }

    #[test]
    fn blinding_is_the_documented_hmac() {
        // An independent HMAC-SHA-256 (ring's) over kind name || 0x00 || canonical.
        let k = MatchingKey {
            epoch: 3,
            key: std::array::from_fn(|i| i as u8),
        };
        let ring_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k.key);
        let tag = ring::hmac::sign(&ring_key, b"IDENTIFIER_KIND_IBAN\0DE89370400440532013000");
        assert_eq!(
            blind(&k, Iban, "DE89370400440532013000").as_slice(),
            tag.as_ref()
        );
    }

    #[test]
    fn key_files_round_trip_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("matching.key");
        let k = MatchingKey::generate(3).unwrap();
        k.save(&path).unwrap();
        assert_eq!(MatchingKey::load(&path).unwrap(), k);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            MatchingKey::generate(3).unwrap().save(&path),
            Err(IdentifierError::KeyExists { .. })
        ));
        assert_eq!(MatchingKey::load(&path).unwrap(), k, "not overwritten");
        assert_ne!(MatchingKey::generate(3).unwrap(), k, "keys are random");
        assert!(matches!(
            MatchingKey::generate(0),
            Err(IdentifierError::ZeroEpoch)
        ));
    }

    #[test]
    fn bad_key_files_are_refused() {
        let good = base64::engine::general_purpose::STANDARD.encode([1u8; KEY_LEN]);
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let cases = [
            format!("epoch = 0\nkey = \"{good}\"\n"),
            format!("key = \"{good}\"\n"),
            "epoch = 1\nkey = \"not base64!\"\n".to_string(),
            format!("epoch = 1\nkey = \"{short}\"\n"),
            format!("epoch = 1\nkey = \"{good}\"\nextra = 1\n"),
            "epoch = -1\n".to_string(),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (i, text) in cases.iter().enumerate() {
            let path = dir.path().join(format!("{i}.key"));
            std::fs::write(&path, text).unwrap();
            assert!(
                matches!(
                    MatchingKey::load(&path),
                    Err(IdentifierError::BadKeyFile { .. })
                ),
                "{text}"
            );
        }
        assert!(matches!(
            MatchingKey::load(&dir.path().join("missing.key")),
            Err(IdentifierError::Read { .. })
        ));
    }

    #[test]
    fn debug_redacts_the_key() {
        let printed = format!("{:?}", key(4, 0xAB));
        assert!(
            printed.contains("<redacted>") && printed.contains('4'),
            "{printed}"
        );
        assert!(!printed.contains("171"), "{printed}");
    }
}
