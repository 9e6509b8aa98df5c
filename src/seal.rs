//! Sealing refresh tokens at rest with XChaCha20-Poly1305 (DESIGN §5).
//!
//! A key ring holds named 32-byte keys; the primary one seals, all of them
//! open (the scheme of kube-apiserver's encryption configuration). A sealed
//! value is text, so that it sits in a Secret like any other value:
//!
//! ```text
//! oto-sealed:v1:<key id>:<base64url(24-byte nonce ‖ ciphertext ‖ 16-byte tag)>
//! ```
//!
//! The associated data binds the value to its key id and to the credential
//! (namespace and name): a sealed value copied to another credential or
//! namespace does not open. Pure: no I/O except the system's random source.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, Generate, Key, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Prefix of every sealed value, with the format version.
pub const SEALED_PREFIX: &str = "oto-sealed:v1:";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Key ids: short, printable, safe in a Secret value and a metric label.
fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The key-ring file (or Secret key) format:
///
/// ```yaml
/// primary: k2
/// keys:
///   k1: <base64 of 32 random bytes>
///   k2: <base64 of 32 random bytes>
/// ```
#[derive(Deserialize, Serialize)]
struct KeyRingFile {
    primary: String,
    keys: BTreeMap<String, String>,
}

/// Named keys, one of them primary. Key bytes never print.
pub struct KeyRing {
    primary: String,
    keys: BTreeMap<String, SecretBox<[u8; 32]>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("primary", &self.primary)
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

/// Why a key ring could not be loaded. Never contains key material.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyRingError {
    #[error(
        "the key ring is not valid YAML of the form {{primary: <id>, keys: {{<id>: <base64>}}}}: {0}"
    )]
    Format(String),
    #[error("key id {0:?} is invalid: use 1-32 letters, digits, '-' or '_'")]
    KeyId(String),
    #[error("key {0:?} is not base64 of exactly 32 bytes")]
    KeyLength(String),
    #[error("the primary key {0:?} is not in the key ring")]
    NoPrimary(String),
}

/// Why a sealed value did not open. Never contains the value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("the value is not a sealed refresh token (expected the prefix {SEALED_PREFIX})")]
    NotSealed,
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("the sealed value names key {0:?}, which is not in the operator's key ring")]
    UnknownKey(String),
    #[error(
        "the sealed value does not open with key {0:?}: it was altered, or sealed for another credential or namespace"
    )]
    NotAuthentic(String),
}

impl KeyRing {
    /// Parses the key-ring format shown on `KeyRingFile`.
    pub fn from_yaml(text: &str) -> Result<Self, KeyRingError> {
        let file: KeyRingFile = serde_yaml_ng::from_str(text).map_err(|e| {
            // serde_yaml's messages quote no values for these shapes, only
            // positions and expected types.
            KeyRingError::Format(e.to_string())
        })?;
        let mut keys = BTreeMap::new();
        for (id, encoded) in file.keys {
            if !valid_key_id(&id) {
                return Err(KeyRingError::KeyId(id));
            }
            let bytes = STANDARD
                .decode(encoded.trim())
                .map_err(|_| KeyRingError::KeyLength(id.clone()))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| KeyRingError::KeyLength(id.clone()))?;
            keys.insert(id, SecretBox::new(Box::new(key)));
        }
        if !keys.contains_key(&file.primary) {
            return Err(KeyRingError::NoPrimary(file.primary));
        }
        Ok(Self {
            primary: file.primary,
            keys,
        })
    }

    /// A new ring with one random key.
    pub fn generate(id: &str) -> Self {
        assert!(valid_key_id(id), "generated key ids are valid");
        let key = Key::<XChaCha20Poly1305>::generate();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(key.as_slice());
        Self {
            primary: id.to_string(),
            keys: BTreeMap::from([(id.to_string(), SecretBox::new(Box::new(bytes)))]),
        }
    }

    /// The ring in its file format, for storing a generated ring.
    pub fn to_yaml(&self) -> SecretString {
        let file = KeyRingFile {
            primary: self.primary.clone(),
            keys: self
                .keys
                .iter()
                .map(|(id, key)| (id.clone(), STANDARD.encode(key.expose_secret())))
                .collect(),
        };
        SecretString::from(serde_yaml_ng::to_string(&file).expect("a key ring serialises"))
    }

    pub fn primary(&self) -> &str {
        &self.primary
    }

    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.keys().map(String::as_str).collect()
    }

    /// Seals `plaintext` for the credential `namespace/name` under the primary key.
    pub fn seal(&self, plaintext: &SecretString, namespace: &str, name: &str) -> String {
        let cipher = self
            .cipher(&self.primary)
            .expect("the primary key is in the ring");
        let nonce = XNonce::generate();
        let aad = associated_data(&self.primary, namespace, name);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption of a short message cannot fail");
        let mut envelope = Vec::with_capacity(NONCE_LEN + sealed.len());
        envelope.extend_from_slice(nonce.as_slice());
        envelope.extend_from_slice(&sealed);
        format!(
            "{SEALED_PREFIX}{}:{}",
            self.primary,
            URL_SAFE_NO_PAD.encode(envelope)
        )
    }

    /// Opens a value sealed for `namespace/name`.
    pub fn open(
        &self,
        sealed: &str,
        namespace: &str,
        name: &str,
    ) -> Result<SecretString, OpenError> {
        let (key_id, payload) = split(sealed)?;
        let cipher = self
            .cipher(key_id)
            .ok_or_else(|| OpenError::UnknownKey(key_id.to_string()))?;
        let envelope = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| OpenError::Malformed)?;
        if envelope.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = envelope.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| OpenError::Malformed)?;
        let aad = associated_data(key_id, namespace, name);
        let plaintext = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::NotAuthentic(key_id.to_string()))?;
        String::from_utf8(plaintext)
            .map(SecretString::from)
            .map_err(|_| OpenError::Malformed)
    }

    fn cipher(&self, key_id: &str) -> Option<XChaCha20Poly1305> {
        let key = self.keys.get(key_id)?;
        let key = Key::<XChaCha20Poly1305>::try_from(&key.expose_secret()[..])
            .expect("keys are 32 bytes");
        Some(XChaCha20Poly1305::new(&key))
    }
}

/// The key id a sealed value names, if it is one.
pub fn key_id_of(value: &str) -> Option<&str> {
    split(value).ok().map(|(id, _)| id)
}

fn split(sealed: &str) -> Result<(&str, &str), OpenError> {
    let rest = sealed
        .trim()
        .strip_prefix(SEALED_PREFIX)
        .ok_or(OpenError::NotSealed)?;
    let (key_id, payload) = rest.split_once(':').ok_or(OpenError::Malformed)?;
    if !valid_key_id(key_id) {
        return Err(OpenError::Malformed);
    }
    Ok((key_id, payload))
}

fn associated_data(key_id: &str, namespace: &str, name: &str) -> Vec<u8> {
    // NUL separators: none of the parts can contain one.
    format!("oauth-token-operator refresh token v1\0{key_id}\0{namespace}\0{name}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(primary: &str, ids: &[&str]) -> KeyRing {
        let keys: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| format!("  {id}: {}", STANDARD.encode([i as u8 + 1; 32])))
            .collect();
        KeyRing::from_yaml(&format!("primary: {primary}\nkeys:\n{}\n", keys.join("\n"))).unwrap()
    }

    fn token() -> SecretString {
        SecretString::from("1//0g-refresh-token-value")
    }

    #[test]
    fn a_sealed_token_opens_for_its_own_credential() {
        let keys = ring("k1", &["k1"]);
        let sealed = keys.seal(&token(), "team-a", "gmail");
        assert!(sealed.starts_with("oto-sealed:v1:k1:"));
        assert!(!sealed.contains("refresh-token-value"));
        assert_eq!(
            keys.open(&sealed, "team-a", "gmail")
                .unwrap()
                .expose_secret(),
            token().expose_secret()
        );
        assert_eq!(key_id_of(&sealed), Some("k1"));
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let keys = ring("k1", &["k1"]);
        assert_ne!(
            keys.seal(&token(), "ns", "c"),
            keys.seal(&token(), "ns", "c")
        );
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_to_open() {
        let keys = ring("k1", &["k1"]);
        let sealed = keys.seal(&token(), "ns", "c");
        let payload = sealed.rsplit_once(':').unwrap().1;
        let bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        for position in [0, NONCE_LEN, bytes.len() - 1] {
            let mut altered = bytes.clone();
            altered[position] ^= 0x01;
            let forged = format!("{SEALED_PREFIX}k1:{}", URL_SAFE_NO_PAD.encode(altered));
            assert_eq!(
                keys.open(&forged, "ns", "c").unwrap_err(),
                OpenError::NotAuthentic("k1".into()),
                "bit at {position}"
            );
        }
    }

    #[test]
    fn a_value_moved_to_another_namespace_or_credential_fails_to_open() {
        let keys = ring("k1", &["k1"]);
        let sealed = keys.seal(&token(), "team-a", "gmail");
        assert!(matches!(
            keys.open(&sealed, "team-b", "gmail"),
            Err(OpenError::NotAuthentic(_))
        ));
        assert!(matches!(
            keys.open(&sealed, "team-a", "drive"),
            Err(OpenError::NotAuthentic(_))
        ));
    }

    #[test]
    fn a_value_relabelled_with_another_key_id_fails_to_open() {
        let keys = ring("k1", &["k1", "k2"]);
        let sealed = keys.seal(&token(), "ns", "c");
        let relabelled = sealed.replacen(":k1:", ":k2:", 1);
        assert!(matches!(
            keys.open(&relabelled, "ns", "c"),
            Err(OpenError::NotAuthentic(_))
        ));
    }

    #[test]
    fn an_unknown_key_id_fails_with_a_clear_error() {
        let sealed = ring("old", &["old"]).seal(&token(), "ns", "c");
        let error = ring("new", &["new"]).open(&sealed, "ns", "c").unwrap_err();
        assert_eq!(error, OpenError::UnknownKey("old".into()));
        assert!(
            error
                .to_string()
                .contains("\"old\", which is not in the operator's key ring")
        );
    }

    #[test]
    fn any_key_in_the_ring_opens_and_the_primary_seals() {
        let before = ring("k1", &["k1"]).seal(&token(), "ns", "c");
        let rotated = ring("k2", &["k1", "k2"]);
        assert!(rotated.open(&before, "ns", "c").is_ok());
        assert_eq!(key_id_of(&rotated.seal(&token(), "ns", "c")), Some("k2"));
    }

    #[test]
    fn plaintext_and_garbage_are_not_sealed_values() {
        let keys = ring("k1", &["k1"]);
        assert_eq!(
            keys.open("1//0g-plaintext", "ns", "c").unwrap_err(),
            OpenError::NotSealed
        );
        assert_eq!(
            keys.open("oto-sealed:v1:k1:!!!", "ns", "c").unwrap_err(),
            OpenError::Malformed
        );
        assert_eq!(
            keys.open("oto-sealed:v1:k1:AAAA", "ns", "c").unwrap_err(),
            OpenError::Malformed
        );
    }

    #[test]
    fn key_rings_are_validated_without_echoing_key_material() {
        let short = STANDARD.encode([7u8; 16]);
        assert_eq!(
            KeyRing::from_yaml(&format!("primary: a\nkeys:\n  a: {short}\n")).unwrap_err(),
            KeyRingError::KeyLength("a".into())
        );
        let good = STANDARD.encode([7u8; 32]);
        assert_eq!(
            KeyRing::from_yaml(&format!("primary: b\nkeys:\n  a: {good}\n")).unwrap_err(),
            KeyRingError::NoPrimary("b".into())
        );
        assert_eq!(
            KeyRing::from_yaml(&format!("primary: 'a b'\nkeys:\n  'a b': {good}\n")).unwrap_err(),
            KeyRingError::KeyId("a b".into())
        );
        let debug = format!("{:?}", ring("k1", &["k1"]));
        assert!(!debug.contains(&STANDARD.encode([1u8; 32])), "{debug}");
    }

    #[test]
    fn a_generated_ring_round_trips_through_its_file_format() {
        let generated = KeyRing::generate("k20261121");
        let sealed = generated.seal(&token(), "ns", "c");
        let reloaded = KeyRing::from_yaml(generated.to_yaml().expose_secret()).unwrap();
        assert_eq!(reloaded.primary(), "k20261121");
        assert!(reloaded.open(&sealed, "ns", "c").is_ok());
    }
}
