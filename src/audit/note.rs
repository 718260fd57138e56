//! C2SP signed notes (`c2sp.org/signed-note`) with Ed25519, and C2SP checkpoints
//! (`c2sp.org/tlog-checkpoint`): the signed statement "the log of this origin had this many
//! entries and this root".

use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// Signature type byte of Ed25519 in signed notes.
const ED25519_TYPE: u8 = 0x01;

/// Why a note, key or checkpoint is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The key file cannot be read, parsed or written.
    #[error("log key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The verifier key string is malformed.
    #[error("malformed verifier key: {0}")]
    BadVerifierKey(String),
    /// The note is malformed.
    #[error("malformed signed note: {0}")]
    Malformed(String),
    /// No signature by the expected key verifies.
    #[error("the note carries no valid signature by {0}")]
    NotSigned(String),
    /// The checkpoint body is malformed.
    #[error("malformed checkpoint: {0}")]
    BadCheckpoint(String),
}

fn key_id(name: &str, public_key: &[u8]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ED25519_TYPE]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '+')
}

/// The log's Ed25519 signing key. Its own key, never the CA's.
pub struct LogKey {
    name: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogKey")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl LogKey {
    /// Loads the PKCS#8 key at `path`, or generates one there (mode 0600) on first start.
    ///
    /// # Errors
    /// The file cannot be read, parsed or written, or `name` is not a valid key name.
    pub fn load_or_generate(path: &Path, name: &str) -> Result<LogKey, NoteError> {
        let error = |reason: String| NoteError::Key {
            path: path.display().to_string(),
            reason,
        };
        if !valid_name(name) {
            return Err(error(format!("invalid key name {name:?}")));
        }
        let der = if path.exists() {
            rustls_pki_types::PrivatePkcs8KeyDer::from_pem_file(path)
                .map_err(|e| error(e.to_string()))?
                .secret_pkcs8_der()
                .to_vec()
        } else {
            let rng = ring::rand::SystemRandom::new();
            let der = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| error("cannot generate an Ed25519 key".into()))?
                .as_ref()
                .to_vec();
            let pem = pkcs8::der::pem::encode_string("PRIVATE KEY", pkcs8::LineEnding::LF, &der)
                .map_err(|e| error(e.to_string()))?;
            crate::pki::write_private(path, &pem).map_err(|e| error(e.to_string()))?;
            tracing::info!(path = %path.display(), "generated the audit log signing key");
            der
        };
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| error(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(LogKey {
            name: name.to_string(),
            pair,
        })
    }

    /// The verifier key: `<name>+<key id hex>+<base64(0x01 || public key)>`.
    pub fn verifier_key(&self) -> String {
        let public = self.pair.public_key().as_ref();
        let mut typed = vec![ED25519_TYPE];
        typed.extend_from_slice(public);
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(key_id(&self.name, public)),
            BASE64.encode(typed)
        )
    }

    /// Signs `text` (which must end with a newline) as a signed note.
    pub fn sign(&self, text: &str) -> String {
        let public = self.pair.public_key().as_ref();
        let mut blob = key_id(&self.name, public).to_vec();
        blob.extend_from_slice(self.pair.sign(text.as_bytes()).as_ref());
        format!("{text}\n\u{2014} {} {}\n", self.name, BASE64.encode(blob))
    }
}

/// A verifier for notes signed by one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    public_key: Vec<u8>,
}

impl NoteVerifier {
    /// Parses a verifier key `<name>+<key id hex>+<base64(0x01 || public key)>`.
    ///
    /// # Errors
    /// `BadVerifierKey` naming the part that is wrong.
    pub fn parse(vkey: &str) -> Result<NoteVerifier, NoteError> {
        let bad = |what: &str| NoteError::BadVerifierKey(what.to_string());
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <name>+<hash>+<key>"));
        };
        if !valid_name(name) {
            return Err(bad("invalid name"));
        }
        let id: [u8; 4] = hex::decode(id)
            .ok()
            .and_then(|id| id.try_into().ok())
            .ok_or_else(|| bad("the hash must be 8 hex digits"))?;
        let typed = BASE64
            .decode(key)
            .map_err(|_| bad("the key is not base64"))?;
        let (Some(&ED25519_TYPE), Some(public_key)) = (typed.first(), typed.get(1..)) else {
            return Err(bad("only Ed25519 keys are supported"));
        };
        if public_key.len() != 32 || key_id(name, public_key) != id {
            return Err(bad("the hash does not match the key"));
        }
        Ok(NoteVerifier {
            name: name.to_string(),
            id,
            public_key: public_key.to_vec(),
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the note's signature by this key and returns the signed text.
    ///
    /// # Errors
    /// `Malformed` or `NotSigned`.
    pub fn verify<'n>(&self, note: &'n str) -> Result<&'n str, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
        let (text, signatures) = (&note[..=split], &note[split + 2..]);
        let prefix = format!("\u{2014} {} ", self.name);
        let key = UnparsedPublicKey::new(&ED25519, &self.public_key);
        for line in signatures.lines() {
            let Some(encoded) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Ok(blob) = BASE64.decode(encoded) else {
                continue;
            };
            if blob.len() == 4 + 64
                && blob[..4] == self.id
                && key.verify(text.as_bytes(), &blob[4..]).is_ok()
            {
                return Ok(text);
            }
        }
        Err(NoteError::NotSigned(self.name.clone()))
    }
}

/// The content of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line.
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// Root hash of those entries.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint body: origin, size and base64 root, each on its own line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        )
    }

    /// Parses a checkpoint body (extension lines after the root are allowed and ignored).
    ///
    /// # Errors
    /// `BadCheckpoint` naming the line.
    pub fn parse(body: &str) -> Result<Checkpoint, NoteError> {
        let bad = |what: &str| NoteError::BadCheckpoint(what.to_string());
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin line"))?;
        let size = lines
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("the second line must be the tree size"))?;
        let root = lines
            .next()
            .and_then(|r| BASE64.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("the third line must be the base64 root hash"))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &Path) -> LogKey {
        LogKey::load_or_generate(&dir.join("log.key"), "puente.local/audit").unwrap()
    }

    #[test]
    fn a_signed_checkpoint_verifies_with_our_verifier_and_an_independent_one() {
        let dir = tempfile::tempdir().unwrap();
        let key = key(dir.path());
        let checkpoint = Checkpoint {
            origin: "puente.local/audit".into(),
            size: 42,
            root: [7; 32],
        };
        let note = key.sign(&checkpoint.body());
        let verifier = NoteVerifier::parse(&key.verifier_key()).unwrap();
        let text = verifier.verify(&note).unwrap();
        assert_eq!(Checkpoint::parse(text).unwrap(), checkpoint);

        // The `signed_note` crate (a port of Go's golang.org/x/mod/sumdb/note) as the oracle.
        let oracle = signed_note::StandardVerifier::new(&key.verifier_key()).unwrap();
        let parsed = signed_note::Note::from_bytes(note.as_bytes()).unwrap();
        let list = signed_note::VerifierList::new(vec![Box::new(oracle)]);
        let (verified, _) = parsed.verify(&list).unwrap();
        assert_eq!(verified.len(), 1);
        assert_eq!(parsed.text(), checkpoint.body().as_bytes());
    }

    #[test]
    fn tampered_notes_and_foreign_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let key = key(dir.path());
        let note = key.sign("puente.local/audit\n5\nAAAA\n");
        let verifier = NoteVerifier::parse(&key.verifier_key()).unwrap();
        let tampered = note.replacen("\n5\n", "\n6\n", 1);
        assert!(matches!(
            verifier.verify(&tampered),
            Err(NoteError::NotSigned(_))
        ));
        let other_dir = tempfile::tempdir().unwrap();
        let other = NoteVerifier::parse(&self::key(other_dir.path()).verifier_key()).unwrap();
        assert!(other.verify(&note).is_err());
    }

    #[test]
    fn the_key_persists_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = key(dir.path()).verifier_key();
        assert_eq!(key(dir.path()).verifier_key(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("log.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn malformed_verifier_keys_are_refused() {
        for vkey in ["", "name", "name+zz+AAAA", "name+00000000+AQID"] {
            assert!(NoteVerifier::parse(vkey).is_err(), "{vkey}");
        }
    }
}
