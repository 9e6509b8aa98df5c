//! The layout of the two Secrets a credential reads, and what sealing should
//! do with what is stored. Pure: the shell reads and writes the Secrets.
//!
//! - The client Secret holds the OAuth client's id and secret under keys the
//!   credential names (`client_id` and `client_secret` by default).
//! - The refresh-token Secret holds the refresh token under `key` in plain
//!   text right after a person (or `authorize`) stored it, and under
//!   `<key>.sealed` once the operator has sealed it.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use secrecy::{ExposeSecret, SecretString};
use thiserror::Error;

use crate::resource::ClientSecretRef;
use crate::seal::{self, Binding, Format, KeyRing, OpenError};

/// Where a credential's refresh token is stored, sealed: `<key>.sealed`.
pub fn sealed_key(key: &str) -> String {
    format!("{key}.sealed")
}

/// The `type` a Secret must have to be read as a credential's OAuth client.
pub const CLIENT_SECRET_TYPE: &str = "oauth.tokenoperator.io/client";
/// The `type` a Secret must have to be read, and written, as a credential's
/// refresh-token Secret.
pub const REFRESH_TOKEN_SECRET_TYPE: &str = "oauth.tokenoperator.io/refresh-token";

/// Which input a Secret is to a credential. A Secret is an input only if it
/// says so itself, with its `type`: Kubernetes fixes a Secret's type when it
/// is created, so whoever made it an input also wrote its data; naming a
/// Secret in a credential never makes the operator read or change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputKind {
    Client,
    RefreshToken,
}

impl InputKind {
    /// The Secret `type` that opts a Secret in as this input.
    pub fn secret_type(self) -> &'static str {
        match self {
            InputKind::Client => CLIENT_SECRET_TYPE,
            InputKind::RefreshToken => REFRESH_TOKEN_SECRET_TYPE,
        }
    }

    /// What a person calls it.
    pub fn noun(self) -> &'static str {
        match self {
            InputKind::Client => "client",
            InputKind::RefreshToken => "refresh-token",
        }
    }

    /// Whether a Secret of this type opted in as this input.
    pub fn accepts(self, secret: &Secret) -> bool {
        secret.type_.as_deref() == Some(self.secret_type())
    }
}

/// An input Secret as gathered: its data only if it opted in.
#[derive(Clone, Debug)]
pub enum InputSecret {
    Missing,
    /// Exists without the input's type: its data was not read.
    NotAccepted,
    Accepted(Box<Secret>),
}

impl InputSecret {
    pub fn accepted(&self) -> Option<&Secret> {
        match self {
            InputSecret::Accepted(secret) => Some(secret),
            _ => None,
        }
    }
}

/// A value of a Secret as the operator can use it.
pub enum Value {
    /// No such key, or only whitespace under it.
    Absent,
    Text(SecretString),
    /// Bytes that are not UTF-8 text: no token or client secret.
    NotText,
}

/// The value under `key`, trimmed.
pub fn value_of(secret: Option<&Secret>, key: &str) -> Value {
    let Some(bytes) = secret
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(key))
    else {
        return Value::Absent;
    };
    match std::str::from_utf8(&bytes.0).map(str::trim) {
        Ok("") => Value::Absent,
        Ok(text) => Value::Text(SecretString::from(text.to_string())),
        Err(_) => Value::NotText,
    }
}

/// A value of the Secret, trimmed; `None` when absent, empty or not UTF-8.
pub fn secret_value(secret: Option<&Secret>, key: &str) -> Option<SecretString> {
    match value_of(secret, key) {
        Value::Text(text) => Some(text),
        Value::Absent | Value::NotText => None,
    }
}

/// The `resourceVersion` of a Secret; empty when it does not exist.
pub fn version_of(secret: Option<&Secret>) -> String {
    secret
        .and_then(|s| s.metadata.resource_version.clone())
        .unwrap_or_default()
}

/// The OAuth client, read from the client Secret. (Its `Debug` shows no
/// secret.)
#[derive(Debug)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
}

/// Why the client Secret gives no client. Names keys, never values.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClientSecretError {
    #[error("client Secret {name} does not exist")]
    Missing { name: String },
    #[error("client Secret {name} has no non-empty key {key:?}")]
    NoValue { name: String, key: String },
    #[error("client Secret {name} holds bytes under key {key:?} that are not UTF-8 text")]
    NotText { name: String, key: String },
}

/// The OAuth client from its Secret, or why it cannot be read.
pub fn client_credentials(
    secret: Option<&Secret>,
    reference: &ClientSecretRef,
) -> Result<ClientCredentials, ClientSecretError> {
    let Some(secret) = secret else {
        return Err(ClientSecretError::Missing {
            name: reference.name.clone(),
        });
    };
    let value = |key: &String| match value_of(Some(secret), key) {
        Value::Text(text) => Ok(text),
        Value::Absent => Err(ClientSecretError::NoValue {
            name: reference.name.clone(),
            key: key.clone(),
        }),
        Value::NotText => Err(ClientSecretError::NotText {
            name: reference.name.clone(),
            key: key.clone(),
        }),
    };
    let client_id = value(&reference.client_id_key)?;
    let client_secret = value(&reference.client_secret_key)?;
    Ok(ClientCredentials {
        client_id: client_id.expose_secret().to_string(),
        client_secret,
    })
}

/// The refresh token as stored in its Secret, not yet opened.
pub enum Stored {
    Missing,
    /// Bytes under the key that are not UTF-8 text.
    NotText,
    /// In plain text under the configured key: new, not yet sealed.
    Plain(SecretString),
    /// Sealed under `<key>.sealed`.
    Sealed {
        sealed: SecretString,
        key_id: String,
        format: Format,
    },
}

/// Reads the refresh token from its Secret. A plaintext value is a token a
/// person just supplied: it wins over a sealed one.
pub fn stored_refresh_token(secret: Option<&Secret>, key: &str) -> Stored {
    match value_of(secret, key) {
        Value::Text(token) => return Stored::Plain(token),
        Value::NotText => return Stored::NotText,
        Value::Absent => {}
    }
    let Some(sealed) = secret_value(secret, &sealed_key(key)) else {
        return Stored::Missing;
    };
    let text = sealed.expose_secret();
    let key_id = seal::key_id_of(text).unwrap_or_default().to_string();
    let format = if text.starts_with(seal::SEALED_PREFIX) {
        Format::V2
    } else {
        Format::V1
    };
    Stored::Sealed {
        sealed,
        key_id,
        format,
    }
}

/// Opens a stored refresh token for `binding`; a plaintext one as is.
/// `None` when there is none (or only bytes that are not text).
pub fn open_stored(
    stored: &Stored,
    keys: &KeyRing,
    binding: &Binding<'_>,
) -> Option<Result<(SecretString, Option<String>), OpenError>> {
    match stored {
        Stored::Missing | Stored::NotText => None,
        Stored::Plain(token) => Some(Ok((token.clone(), None))),
        Stored::Sealed { sealed, key_id, .. } => Some(
            keys.open(sealed.expose_secret(), binding)
                .map(|(token, _)| (token, Some(key_id.clone()))),
        ),
    }
}

/// What to do with a stored refresh token so that it stays sealed under the
/// primary key, in the current format.
#[derive(Debug, PartialEq, Eq)]
pub enum SealAction {
    /// Nothing to write; remember that this version was inspected.
    Remember,
    /// Already sealed under the primary key, but status names another key
    /// (or none): record the key id in status, write no Secret.
    RecordKey(String),
    /// Seal the plaintext token.
    Seal,
    /// Open the token and seal it again: under an older key, or in the
    /// first format.
    Reseal,
}

/// Decides what keeps `stored` sealed under `primary`. `recorded` is the key
/// id status names for the stored token (`None` inside `Some` when status
/// knows the Secret but no key); `None` when status knows nothing of it yet.
pub fn seal_action(stored: &Stored, recorded: Option<Option<&str>>, primary: &str) -> SealAction {
    match stored {
        Stored::Plain(_) => SealAction::Seal,
        Stored::Sealed { key_id, format, .. } if key_id != primary || *format == Format::V1 => {
            SealAction::Reseal
        }
        Stored::Sealed { key_id, .. } => match recorded {
            Some(recorded) if recorded != Some(key_id.as_str()) => {
                SealAction::RecordKey(key_id.clone())
            }
            _ => SealAction::Remember,
        },
        // Reported when a refresh is attempted.
        Stored::Missing | Stored::NotText => SealAction::Remember,
    }
}

/// The Secret with the token sealed under `<key>.sealed` and no plaintext
/// `key`; every other key kept.
pub fn with_sealed_token(mut secret: Secret, key: &str, sealed: &str) -> Secret {
    secret.string_data = None;
    let data = secret.data.get_or_insert_with(Default::default);
    data.remove(key);
    data.insert(sealed_key(key), ByteString(sealed.as_bytes().to_vec()));
    secret
}

/// The Secret `name` with a new token in plain text under `key` (the
/// operator seals it on sight) and the sealed value of an earlier token
/// removed; every other key kept. Created (with the refresh-token type) when
/// `secret` is `None`.
pub fn with_new_token(
    secret: Option<Secret>,
    name: &str,
    key: &str,
    token: &SecretString,
) -> Secret {
    let mut secret = secret.unwrap_or_else(|| Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        type_: Some(REFRESH_TOKEN_SECRET_TYPE.into()),
        ..Default::default()
    });
    secret.string_data = None;
    let data = secret.data.get_or_insert_with(Default::default);
    data.remove(&sealed_key(key));
    data.insert(
        key.to_string(),
        ByteString(token.expose_secret().as_bytes().to_vec()),
    );
    secret
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use base64::Engine;

    use super::*;

    fn secret(data: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    fn ring(primary: &str) -> KeyRing {
        let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        KeyRing::from_yaml(&format!(
            "primary: {primary}\nkeys:\n  k1: {key}\n  k2: {key}\n"
        ))
        .unwrap()
    }

    fn reference() -> ClientSecretRef {
        ClientSecretRef {
            name: "client".into(),
            client_id_key: "client_id".into(),
            client_secret_key: "client_secret".into(),
        }
    }

    #[test]
    fn the_client_is_read_from_its_keys_and_a_missing_value_is_named() {
        let ok = secret(&[("client_id", b"id "), ("client_secret", b"s")]);
        let client = client_credentials(Some(&ok), &reference()).unwrap();
        assert_eq!(client.client_id, "id");
        assert_eq!(
            client_credentials(None, &reference())
                .unwrap_err()
                .to_string(),
            "client Secret client does not exist"
        );
        let empty = secret(&[("client_id", b"id"), ("client_secret", b"  ")]);
        assert_eq!(
            client_credentials(Some(&empty), &reference())
                .unwrap_err()
                .to_string(),
            "client Secret client has no non-empty key \"client_secret\""
        );
    }

    fn binding() -> Binding<'static> {
        Binding {
            namespace: "ns",
            name: "c",
            token_endpoint: "https://oauth2.googleapis.com/token",
            client_id: "id",
        }
    }

    #[test]
    fn a_plaintext_token_wins_over_a_sealed_one() {
        let keys = ring("k1");
        let sealed = keys.seal(&SecretString::from("old"), &binding());
        let both = secret(&[
            ("refresh_token", b"new"),
            ("refresh_token.sealed", sealed.as_bytes()),
        ]);
        let stored = stored_refresh_token(Some(&both), "refresh_token");
        assert!(matches!(&stored, Stored::Plain(t) if t.expose_secret() == "new"));
        let only_sealed = secret(&[("refresh_token.sealed", sealed.as_bytes())]);
        let stored = stored_refresh_token(Some(&only_sealed), "refresh_token");
        assert!(matches!(
            &stored,
            Stored::Sealed { key_id, format: Format::V2, .. } if key_id == "k1"
        ));
        let (token, key) = open_stored(&stored, &keys, &binding()).unwrap().unwrap();
        assert_eq!((token.expose_secret(), key.as_deref()), ("old", Some("k1")));
        let elsewhere = Binding {
            name: "other",
            ..binding()
        };
        assert!(matches!(
            open_stored(&stored, &keys, &elsewhere),
            Some(Err(OpenError::NotAuthentic(_)))
        ));
        let stored = stored_refresh_token(None, "refresh_token");
        assert!(matches!(stored, Stored::Missing));
        assert!(open_stored(&stored, &keys, &binding()).is_none());
    }

    #[test]
    fn only_a_secret_of_the_inputs_type_is_accepted() {
        let mut typed = secret(&[("refresh_token", b"r")]);
        typed.type_ = Some(REFRESH_TOKEN_SECRET_TYPE.into());
        assert!(InputKind::RefreshToken.accepts(&typed));
        assert!(!InputKind::Client.accepts(&typed));
        let mut opaque = typed.clone();
        opaque.type_ = Some("Opaque".into());
        assert!(!InputKind::RefreshToken.accepts(&opaque));
        let mut service_account = typed.clone();
        service_account.type_ = Some("kubernetes.io/service-account-token".into());
        assert!(!InputKind::RefreshToken.accepts(&service_account));
        assert!(!InputKind::Client.accepts(&service_account));
    }

    fn sealed(key_id: &str, format: Format) -> Stored {
        Stored::Sealed {
            sealed: SecretString::from("oto-sealed:..."),
            key_id: key_id.into(),
            format,
        }
    }

    #[test]
    fn the_seal_action_for_each_stored_form() {
        use SealAction::*;
        let cases = [
            (
                Stored::Plain(SecretString::from("t")),
                Some(Some("k2")),
                Seal,
            ),
            (sealed("k1", Format::V2), Some(Some("k1")), Reseal),
            (sealed("k1", Format::V2), None, Reseal),
            (sealed("k2", Format::V1), Some(Some("k2")), Reseal),
            (sealed("k2", Format::V2), Some(Some("k2")), Remember),
            (sealed("k2", Format::V2), None, Remember),
            (
                sealed("k2", Format::V2),
                Some(Some("k1")),
                RecordKey("k2".into()),
            ),
            (sealed("k2", Format::V2), Some(None), RecordKey("k2".into())),
            (Stored::Missing, Some(Some("k2")), Remember),
        ];
        for (stored, recorded, expected) in cases {
            assert_eq!(
                seal_action(&stored, recorded, "k2"),
                expected,
                "{recorded:?}"
            );
        }
    }

    #[test]
    fn sealing_replaces_the_plaintext_and_a_new_token_replaces_the_sealed_value() {
        let plain = secret(&[("refresh_token", b"r"), ("other", b"kept")]);
        let sealed = with_sealed_token(plain, "refresh_token", "oto-sealed:v1:k1:x");
        let keys: Vec<&str> = sealed
            .data
            .as_ref()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["other", "refresh_token.sealed"]);
        let renewed = with_new_token(Some(sealed), "s", "refresh_token", &SecretString::from("n"));
        let data = renewed.data.as_ref().unwrap();
        assert_eq!(data["refresh_token"].0, b"n");
        assert!(!data.contains_key("refresh_token.sealed"));
        assert_eq!(data["other"].0, b"kept");
        let created = with_new_token(None, "s", "refresh_token", &SecretString::from("n"));
        assert_eq!(created.metadata.name.as_deref(), Some("s"));
        assert_eq!(created.type_.as_deref(), Some(REFRESH_TOKEN_SECRET_TYPE));
    }
}
