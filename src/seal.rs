//! Sealing refresh tokens at rest with XChaCha20-Poly1305 (DESIGN §5).
//!
//! A key ring holds named 32-byte keys; the primary one seals, all of them
//! open (the scheme of kube-apiserver's encryption configuration). A sealed
//! value is text, so that it sits in a Secret like any other value:
//!
//! ```text
//! oto-sealed:v2:<key id>:<binding>:<base64url(24-byte nonce ‖ ciphertext ‖ 16-byte tag)>
//! ```
//!
//! The associated data binds the value to its key id, to the credential
//! (namespace and name), and to where the token may be sent (the token
//! endpoint and the client id): a sealed value copied to another credential
//! or namespace does not open, and neither does one whose credential was
//! edited to name another endpoint or client, so that such an edit needs a
//! new consent. `<binding>` is a short digest of endpoint and client id, in
//! clear, only so that this last case can be told apart and explained.
//!
//! Values of the first format, `oto-sealed:v1:<key id>:<payload>` (bound to
//! key id and credential only), still open; the operator re-seals them under
//! v2 on sight. Pure: no I/O except the system's random source.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, Generate, Key, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Prefix of every sealed value this version writes.
pub const SEALED_PREFIX: &str = "oto-sealed:v2:";
/// Prefix of values of the first format, still opened.
const SEALED_PREFIX_V1: &str = "oto-sealed:v1:";
/// Hex digits of the binding digest shown in clear.
const BINDING_TAG_LEN: usize = 12;
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

/// A new key's id: its creation time and a random suffix, so that two
/// keys made in the same second (a lost ring re-created at once, two
/// rotations) never share an id.
pub fn new_key_id(now: k8s_openapi::jiff::Timestamp) -> String {
    let mut suffix = [0u8; 2];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix)
        .expect("the system's random source works");
    format!(
        "k{}-{:02x}{:02x}",
        now.strftime("%Y%m%d%H%M%S"),
        suffix[0],
        suffix[1]
    )
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
    #[error("key id {0:?} already names other key bytes: a key id is never reused")]
    Reused(String),
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
    #[error(
        "the refresh token was sealed for another token endpoint or client id than the credential names now"
    )]
    OtherBinding,
}

/// What a sealed refresh token is bound to: the credential it belongs to and
/// where it may be sent.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub token_endpoint: &'a str,
    pub client_id: &'a str,
}

impl Binding<'_> {
    /// The short digest of endpoint and client id shown in the envelope.
    fn tag(&self) -> String {
        let text = format!(
            "oauth-token-operator binding v2\0{}\0{}",
            self.token_endpoint, self.client_id
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..BINDING_TAG_LEN]
            .to_string()
    }

    fn associated_data(&self, key_id: &str) -> Vec<u8> {
        // NUL separators: none of the parts can contain one.
        format!(
            "oauth-token-operator refresh token v2\0{key_id}\0{}\0{}\0{}\0{}",
            self.namespace, self.name, self.token_endpoint, self.client_id
        )
        .into_bytes()
    }
}

/// A sealed value's format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Bound to key id and credential only; re-sealed on sight.
    V1,
    /// Bound to key id, credential, token endpoint and client id.
    V2,
}

/// The parts of a sealed value.
struct Envelope<'a> {
    format: Format,
    key_id: &'a str,
    /// v2 only.
    tag: Option<&'a str>,
    payload: &'a str,
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

    /// This ring with `other`'s keys added and `other`'s primary as the
    /// primary (a restore from a backup), and the ids added. A key id both
    /// hold with different bytes is refused: an id names one key for ever.
    pub fn merge(mut self, other: KeyRing) -> Result<(Self, Vec<String>), KeyRingError> {
        let mut added = Vec::new();
        for (id, key) in other.keys {
            match self.keys.get(&id) {
                Some(ours) if ours.expose_secret() != key.expose_secret() => {
                    return Err(KeyRingError::Reused(id));
                }
                Some(_) => {}
                None => {
                    added.push(id.clone());
                    self.keys.insert(id, key);
                }
            }
        }
        self.primary = other.primary;
        Ok((self, added))
    }

    /// This ring with a new random key under `id`, made primary; the others
    /// stay, so that values sealed under them still open.
    pub fn rotate(mut self, id: &str) -> Result<Self, KeyRingError> {
        if !valid_key_id(id) {
            return Err(KeyRingError::KeyId(id.into()));
        }
        if self.keys.contains_key(id) {
            return Err(KeyRingError::Reused(id.into()));
        }
        self.keys.extend(KeyRing::generate(id).keys);
        self.primary = id.into();
        Ok(self)
    }

    pub fn primary(&self) -> &str {
        &self.primary
    }

    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.keys().map(String::as_str).collect()
    }

    /// Seals `plaintext` under the primary key, bound to `binding`.
    pub fn seal(&self, plaintext: &SecretString, binding: &Binding<'_>) -> String {
        let cipher = self
            .cipher(&self.primary)
            .expect("the primary key is in the ring");
        let nonce = XNonce::generate();
        let aad = binding.associated_data(&self.primary);
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
            "{SEALED_PREFIX}{}:{}:{}",
            self.primary,
            binding.tag(),
            URL_SAFE_NO_PAD.encode(envelope)
        )
    }

    /// Opens a value sealed for `binding` (a v1 value: for its namespace and
    /// name). Returns the token and the format it was sealed in.
    pub fn open(
        &self,
        sealed: &str,
        binding: &Binding<'_>,
    ) -> Result<(SecretString, Format), OpenError> {
        let envelope = split(sealed)?;
        let cipher = self
            .cipher(envelope.key_id)
            .ok_or_else(|| OpenError::UnknownKey(envelope.key_id.to_string()))?;
        let aad = match envelope.format {
            Format::V1 => associated_data_v1(envelope.key_id, binding.namespace, binding.name),
            Format::V2 if envelope.tag != Some(binding.tag().as_str()) => {
                return Err(OpenError::OtherBinding);
            }
            Format::V2 => binding.associated_data(envelope.key_id),
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(envelope.payload)
            .map_err(|_| OpenError::Malformed)?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| OpenError::Malformed)?;
        let plaintext = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::NotAuthentic(envelope.key_id.to_string()))?;
        let token = String::from_utf8(plaintext)
            .map(SecretString::from)
            .map_err(|_| OpenError::Malformed)?;
        Ok((token, envelope.format))
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
    split(value).ok().map(|e| e.key_id)
}

fn split(sealed: &str) -> Result<Envelope<'_>, OpenError> {
    let sealed = sealed.trim();
    let (format, rest) = if let Some(rest) = sealed.strip_prefix(SEALED_PREFIX) {
        (Format::V2, rest)
    } else if let Some(rest) = sealed.strip_prefix(SEALED_PREFIX_V1) {
        (Format::V1, rest)
    } else {
        return Err(OpenError::NotSealed);
    };
    let (key_id, rest) = rest.split_once(':').ok_or(OpenError::Malformed)?;
    if !valid_key_id(key_id) {
        return Err(OpenError::Malformed);
    }
    let (tag, payload) = match format {
        Format::V1 => (None, rest),
        Format::V2 => {
            let (tag, payload) = rest.split_once(':').ok_or(OpenError::Malformed)?;
            (Some(tag), payload)
        }
    };
    Ok(Envelope {
        format,
        key_id,
        tag,
        payload,
    })
}

fn associated_data_v1(key_id: &str, namespace: &str, name: &str) -> Vec<u8> {
    format!("oauth-token-operator refresh token v1\0{key_id}\0{namespace}\0{name}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_key_ids_are_valid_and_differ_within_a_second() {
        let now = "2026-11-22T08:00:00Z".parse().unwrap();
        let ids: std::collections::BTreeSet<String> = (0..20).map(|_| new_key_id(now)).collect();
        assert!(ids.len() > 15, "{ids:?}");
        assert!(
            ids.iter()
                .all(|id| valid_key_id(id) && id.starts_with("k20261122080000-"))
        );
    }

    #[test]
    fn a_restore_adds_keys_takes_the_primary_and_refuses_a_reused_id() {
        let a = KeyRing::generate("a");
        let backup = KeyRing::from_yaml(a.to_yaml().expose_secret()).unwrap();
        let live = a.rotate("b").unwrap();
        assert_eq!(live.primary(), "b");
        assert_eq!(live.key_ids(), ["a", "b"]);
        let binding = Binding {
            namespace: "ns",
            name: "n",
            token_endpoint: "https://oauth2.googleapis.com/token",
            client_id: "c",
        };
        let sealed_b = live.seal(&SecretString::from("rt"), &binding);
        let (restored, added) = live.merge(backup).unwrap();
        assert!(added.is_empty(), "{added:?}");
        assert_eq!(restored.primary(), "a", "the backup's primary");
        assert!(restored.open(&sealed_b, &binding).is_ok(), "b still opens");
        let (merged, added) = KeyRing::generate("c").merge(restored).unwrap();
        assert_eq!(added, ["a", "b"]);
        assert_eq!(merged.primary(), "a");
        assert_eq!(
            merged.merge(KeyRing::generate("b")).err(),
            Some(KeyRingError::Reused("b".into()))
        );
        assert_eq!(
            KeyRing::generate("x").rotate("x").err(),
            Some(KeyRingError::Reused("x".into()))
        );
        assert_eq!(
            KeyRing::generate("x").rotate("bad id").err(),
            Some(KeyRingError::KeyId("bad id".into()))
        );
    }

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

    const ENDPOINT: &str = "https://oauth2.googleapis.com/token";

    fn at<'a>(namespace: &'a str, name: &'a str) -> Binding<'a> {
        Binding {
            namespace,
            name,
            token_endpoint: ENDPOINT,
            client_id: "client-1",
        }
    }

    fn opened(keys: &KeyRing, sealed: &str, binding: &Binding<'_>) -> Result<String, OpenError> {
        keys.open(sealed, binding)
            .map(|(token, _)| token.expose_secret().to_string())
    }

    /// A value in the first format, as the previous release sealed it.
    fn seal_v1(keys: &KeyRing, namespace: &str, name: &str) -> String {
        let cipher = keys.cipher(keys.primary()).unwrap();
        let nonce = XNonce::generate();
        let aad = associated_data_v1(keys.primary(), namespace, name);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: token().expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            .unwrap();
        let mut envelope = nonce.as_slice().to_vec();
        envelope.extend_from_slice(&sealed);
        format!(
            "{SEALED_PREFIX_V1}{}:{}",
            keys.primary(),
            URL_SAFE_NO_PAD.encode(envelope)
        )
    }

    #[test]
    fn a_sealed_token_opens_for_its_own_credential() {
        let keys = ring("k1", &["k1"]);
        let sealed = keys.seal(&token(), &at("team-a", "gmail"));
        assert!(sealed.starts_with("oto-sealed:v2:k1:"));
        assert!(!sealed.contains("refresh-token-value"));
        let (opened, format) = keys.open(&sealed, &at("team-a", "gmail")).unwrap();
        assert_eq!(opened.expose_secret(), token().expose_secret());
        assert_eq!(format, Format::V2);
        assert_eq!(key_id_of(&sealed), Some("k1"));
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let keys = ring("k1", &["k1"]);
        assert_ne!(
            keys.seal(&token(), &at("ns", "c")),
            keys.seal(&token(), &at("ns", "c"))
        );
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_to_open() {
        let keys = ring("k1", &["k1"]);
        let sealed = keys.seal(&token(), &at("ns", "c"));
        let (head, payload) = sealed.rsplit_once(':').unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        for position in [0, NONCE_LEN, bytes.len() - 1] {
            let mut altered = bytes.clone();
            altered[position] ^= 0x01;
            let forged = format!("{head}:{}", URL_SAFE_NO_PAD.encode(altered));
            assert_eq!(
                opened(&keys, &forged, &at("ns", "c")).unwrap_err(),
                OpenError::NotAuthentic("k1".into()),
                "bit at {position}"
            );
        }
    }

    #[test]
    fn a_value_moved_to_another_namespace_or_credential_fails_to_open() {
        let keys = ring("k1", &["k1"]);
        let sealed = keys.seal(&token(), &at("team-a", "gmail"));
        assert!(matches!(
            opened(&keys, &sealed, &at("team-b", "gmail")),
            Err(OpenError::NotAuthentic(_))
        ));
        assert!(matches!(
            opened(&keys, &sealed, &at("team-a", "drive")),
            Err(OpenError::NotAuthentic(_))
        ));
    }

    #[test]
    fn a_value_for_another_endpoint_or_client_does_not_open_and_says_so() {
        let keys = ring("k1", &["k1"]);
        let sealed = keys.seal(&token(), &at("ns", "c"));
        let elsewhere = Binding {
            token_endpoint: "https://attacker.example/token",
            ..at("ns", "c")
        };
        assert_eq!(
            opened(&keys, &sealed, &elsewhere),
            Err(OpenError::OtherBinding)
        );
        let other_client = Binding {
            client_id: "client-2",
            ..at("ns", "c")
        };
        assert_eq!(
            opened(&keys, &sealed, &other_client),
            Err(OpenError::OtherBinding)
        );
        // Relabelling the digest does not help: the associated data decides.
        let relabelled = sealed.replacen(&at("ns", "c").tag(), &elsewhere.tag(), 1);
        assert_eq!(
            opened(&keys, &relabelled, &elsewhere),
            Err(OpenError::NotAuthentic("k1".into()))
        );
    }

    #[test]
    fn a_first_format_value_still_opens_for_its_credential_whatever_the_endpoint() {
        let keys = ring("k1", &["k1"]);
        let sealed = seal_v1(&keys, "ns", "c");
        let (token, format) = keys.open(&sealed, &at("ns", "c")).unwrap();
        assert_eq!(format, Format::V1);
        assert_eq!(token.expose_secret(), "1//0g-refresh-token-value");
        assert!(matches!(
            opened(&keys, &sealed, &at("ns", "other")),
            Err(OpenError::NotAuthentic(_))
        ));
        assert_eq!(key_id_of(&sealed), Some("k1"));
    }

    #[test]
    fn a_value_relabelled_with_another_key_id_fails_to_open() {
        let keys = ring("k1", &["k1", "k2"]);
        let sealed = keys.seal(&token(), &at("ns", "c"));
        let relabelled = sealed.replacen(":k1:", ":k2:", 1);
        assert!(matches!(
            opened(&keys, &relabelled, &at("ns", "c")),
            Err(OpenError::NotAuthentic(_))
        ));
    }

    #[test]
    fn an_unknown_key_id_fails_with_a_clear_error() {
        let sealed = ring("old", &["old"]).seal(&token(), &at("ns", "c"));
        let error = opened(&ring("new", &["new"]), &sealed, &at("ns", "c")).unwrap_err();
        assert_eq!(error, OpenError::UnknownKey("old".into()));
        assert!(
            error
                .to_string()
                .contains("\"old\", which is not in the operator's key ring")
        );
    }

    #[test]
    fn any_key_in_the_ring_opens_and_the_primary_seals() {
        let before = ring("k1", &["k1"]).seal(&token(), &at("ns", "c"));
        let rotated = ring("k2", &["k1", "k2"]);
        assert!(opened(&rotated, &before, &at("ns", "c")).is_ok());
        assert_eq!(
            key_id_of(&rotated.seal(&token(), &at("ns", "c"))),
            Some("k2")
        );
    }

    #[test]
    fn plaintext_and_garbage_are_not_sealed_values() {
        let keys = ring("k1", &["k1"]);
        let ns = at("ns", "c");
        assert_eq!(
            opened(&keys, "1//0g-plaintext", &ns).unwrap_err(),
            OpenError::NotSealed
        );
        assert_eq!(
            opened(&keys, "oto-sealed:v1:k1:!!!", &ns).unwrap_err(),
            OpenError::Malformed
        );
        assert_eq!(
            opened(&keys, "oto-sealed:v1:k1:AAAA", &ns).unwrap_err(),
            OpenError::Malformed
        );
        assert_eq!(
            opened(&keys, "oto-sealed:v2:k1:AAAA", &ns).unwrap_err(),
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
        let sealed = generated.seal(&token(), &at("ns", "c"));
        let reloaded = KeyRing::from_yaml(generated.to_yaml().expose_secret()).unwrap();
        assert_eq!(reloaded.primary(), "k20261121");
        assert!(reloaded.open(&sealed, &at("ns", "c")).is_ok());
    }
}
