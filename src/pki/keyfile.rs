//! CA private keys on disk: PKCS#8 PEM, optionally encrypted with a passphrase (PBES2: scrypt
//! and AES-256-CBC, as `pkcs8` does by default).

use pkcs8::der::{Decode, EncodePem};
use pkcs8::{EncryptedPrivateKeyInfo, LineEnding, PrivateKeyInfo};
use rcgen::KeyPair;

use super::PkiError;

const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";

/// The key as PEM, encrypted under `passphrase` when one is given.
///
/// # Errors
/// The key does not re-parse as PKCS#8, or encryption failed.
pub fn encrypt_key(key: &KeyPair, passphrase: Option<&[u8]>) -> Result<String, PkiError> {
    let Some(passphrase) = passphrase else {
        return Ok(key.serialize_pem());
    };
    let der = key.serialize_der();
    let info = PrivateKeyInfo::from_der(&der)
        .map_err(|e| PkiError::Invalid(format!("CA key is not PKCS#8: {e}")))?;
    let encrypted = info
        .encrypt(rand_core::OsRng, passphrase)
        .map_err(|_| PkiError::Random)?;
    let encrypted = EncryptedPrivateKeyInfo::from_der(encrypted.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("encrypted key: {e}")))?;
    encrypted
        .to_pem(LineEnding::LF)
        .map_err(|e| PkiError::Invalid(format!("encrypted key: {e}")))
}

/// Reads a key written by [`encrypt_key`].
///
/// # Errors
/// `Passphrase` if it is encrypted and `passphrase` is missing or wrong; `Invalid` if the PEM
/// is not a key.
pub fn decrypt_key(pem: &str, passphrase: Option<&[u8]>) -> Result<KeyPair, PkiError> {
    if !pem.contains(ENCRYPTED_LABEL) {
        return KeyPair::from_pem(pem).map_err(PkiError::from);
    }
    let passphrase = passphrase.ok_or(PkiError::Passphrase(
        "the CA key is encrypted: give its passphrase with --passphrase-file or PUENTE_CA_PASSPHRASE",
    ))?;
    let (label, document) = pkcs8::SecretDocument::from_pem(pem)
        .map_err(|e| PkiError::Invalid(format!("CA key PEM: {e}")))?;
    if label != ENCRYPTED_LABEL {
        return Err(PkiError::Invalid(format!("unexpected PEM block {label}")));
    }
    let encrypted = EncryptedPrivateKeyInfo::from_der(document.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("CA key: {e}")))?;
    let plain = encrypted
        .decrypt(passphrase)
        .map_err(|_| PkiError::Passphrase("wrong passphrase for the CA key"))?;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(plain.as_bytes().to_vec());
    KeyPair::try_from(&der).map_err(PkiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_keys_round_trip_only_with_the_passphrase() {
        let key = KeyPair::generate().unwrap();
        let pem = encrypt_key(&key, Some(b"correct horse")).unwrap();
        assert!(pem.contains(ENCRYPTED_LABEL));
        assert!(!pem.contains("BEGIN PRIVATE KEY"));
        let back = decrypt_key(&pem, Some(b"correct horse")).unwrap();
        assert_eq!(back.serialize_der(), key.serialize_der());
        assert!(matches!(
            decrypt_key(&pem, Some(b"wrong")),
            Err(PkiError::Passphrase(_))
        ));
        assert!(matches!(
            decrypt_key(&pem, None),
            Err(PkiError::Passphrase(_))
        ));
    }

    #[test]
    fn plain_keys_need_no_passphrase() {
        let key = KeyPair::generate().unwrap();
        let pem = encrypt_key(&key, None).unwrap();
        assert_eq!(
            decrypt_key(&pem, None).unwrap().serialize_der(),
            key.serialize_der()
        );
    }
}
