//! `keys export|import|rotate`: back up, restore and rotate the seal key
//! ring Secret, as a person with access to the operator's namespace runs
//! them. The operator re-reads the ring every 10 s, so each takes effect
//! without a restart. Key bytes go to stdout only in `export`, whose purpose
//! they are; messages name key ids, never keys.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use secrecy::ExposeSecret;
use serde::Deserialize;
use thiserror::Error;

use crate::api_error::ApiError;
use crate::keys::{self, KEY_RING_KEY};
use crate::output_secret::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::seal::{KeyRing, KeyRingError};

/// The key-ring Secret the operator creates when none is configured.
pub const DEFAULT_SECRET: &str = "oauth-token-operator-seal-keys";

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "there is no Secret {0}: name the key-ring Secret with --secret (with sealKeys.existingSecret it is that Secret) and its namespace with -n"
    )]
    Missing(String),
    #[error("Secret {secret}: {error}")]
    Ring { secret: String, error: KeyRingError },
    #[error("Secret {0} has no key {KEY_RING_KEY} holding UTF-8 text")]
    NoRing(String),
    #[error("the backup {0}")]
    Backup(String),
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error(
        "Secret {0} changed while this command ran (another rotation or restore?): nothing was written; run it again"
    )]
    Changed(String),
}

/// Where the ring lives.
pub struct Target {
    pub namespace: String,
    pub secret: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.secret)
    }
}

/// The Secret and its ring; `None` when there is no such Secret.
async fn read(client: &Client, target: &Target) -> Result<Option<(Secret, KeyRing)>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let what = format!("cannot read Secret {target}");
    let Some(secret) = secrets
        .get_opt(&target.secret)
        .await
        .map_err(|e| ApiError::new(&what, e))?
    else {
        return Ok(None);
    };
    let text = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_RING_KEY))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .ok_or_else(|| Error::NoRing(target.to_string()))?;
    let ring = KeyRing::from_yaml(&text).map_err(|error| Error::Ring {
        secret: target.to_string(),
        error,
    })?;
    Ok(Some((secret, ring)))
}

/// A Secret manifest holding `ring`, without a namespace, so that
/// `kubectl apply -n <namespace> -f` or `keys import` restores it anywhere.
pub fn manifest(secret: &str, ring: &KeyRing, now: Timestamp) -> String {
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {"oauth.tokenoperator.io/exported-at": now.to_string()},
        },
        "type": "Opaque",
        "stringData": {KEY_RING_KEY: ring.to_yaml().expose_secret()},
    });
    serde_yaml_ng::to_string(&value).expect("a manifest serialises")
}

/// `keys export`: the manifest on stdout.
pub async fn export(client: &Client, target: &Target) -> Result<String, Error> {
    let (_, ring) = read(client, target)
        .await?
        .ok_or_else(|| Error::Missing(target.to_string()))?;
    eprintln!(
        "Secret {target}: keys {} (primary {}). The output holds the keys themselves: store it as you store secrets.",
        ring.key_ids().join(", "),
        ring.primary()
    );
    Ok(manifest(&target.secret, &ring, Timestamp::now()))
}

/// What a backup may be: an exported (or `kubectl get -o yaml`) Secret
/// manifest, or the bare key ring.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackupSecret {
    kind: String,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
    #[serde(default)]
    data: BTreeMap<String, ByteString>,
}

/// The ring in a backup's text.
pub fn parse_backup(text: &str) -> Result<KeyRing, Error> {
    let ring_text = match serde_yaml_ng::from_str::<BackupSecret>(text) {
        Ok(secret) if secret.kind == "Secret" => {
            match (
                secret.string_data.get(KEY_RING_KEY),
                secret.data.get(KEY_RING_KEY),
            ) {
                (Some(text), _) => text.clone(),
                (None, Some(bytes)) => String::from_utf8(bytes.0.clone()).map_err(|_| {
                    Error::Backup(format!("has a {KEY_RING_KEY} that is not UTF-8"))
                })?,
                (None, None) => {
                    return Err(Error::Backup(format!(
                        "is a Secret without the key {KEY_RING_KEY}"
                    )));
                }
            }
        }
        Ok(secret) => {
            return Err(Error::Backup(format!(
                "is a {}, not a Secret or a key ring",
                secret.kind
            )));
        }
        Err(_) => text.to_string(),
    };
    KeyRing::from_yaml(&ring_text).map_err(|error| Error::Backup(error.to_string()))
}

/// Reads a backup from a file, or stdin for `-`.
pub fn read_backup(file: &PathBuf) -> Result<KeyRing, Error> {
    let mut text = String::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text))
    };
    read.map_err(|e| Error::Backup(format!("{} cannot be read: {e}", file.display())))?;
    parse_backup(&text)
}

/// `keys import`: the backup's keys added to the Secret (created if it is
/// missing), the backup's primary made primary. Returns what to tell.
pub async fn import(client: &Client, target: &Target, backup: KeyRing) -> Result<String, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let Some((secret, live)) = read(client, target).await? else {
        let ids = backup.key_ids().join(", ");
        let primary = backup.primary().to_string();
        let secret = keys::ring_secret(&target.namespace, &target.secret, &backup);
        let what = format!("cannot create Secret {target}");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| ApiError::new(&what, e))?;
        return Ok(format!(
            "Secret {target} created with keys {ids} (primary {primary})"
        ));
    };
    let (merged, added) = live.merge(backup).map_err(|error| Error::Ring {
        secret: target.to_string(),
        error,
    })?;
    let message = format!(
        "Secret {target}: keys {} (primary {}); added: {}",
        merged.key_ids().join(", "),
        merged.primary(),
        if added.is_empty() {
            "none".to_string()
        } else {
            added.join(", ")
        }
    );
    write(&secrets, target, secret, &merged).await?;
    Ok(message)
}

/// `keys rotate`: a new random key, made primary. Returns its id.
pub async fn rotate(client: &Client, target: &Target, now: Timestamp) -> Result<String, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let (secret, live) = read(client, target)
        .await?
        .ok_or_else(|| Error::Missing(target.to_string()))?;
    let id = crate::seal::new_key_id(now);
    let rotated = live.rotate(&id).map_err(|error| Error::Ring {
        secret: target.to_string(),
        error,
    })?;
    write(&secrets, target, secret, &rotated).await?;
    Ok(id)
}

/// Replaces the ring under the `resourceVersion` it was read at: a
/// concurrent change is never overwritten.
async fn write(
    secrets: &Api<Secret>,
    target: &Target,
    mut secret: Secret,
    ring: &KeyRing,
) -> Result<(), Error> {
    secret
        .data
        .get_or_insert_with(BTreeMap::new)
        .extend(keys::ring_data(ring));
    let what = format!("cannot write Secret {target}");
    match secrets
        .replace(&target.secret, &PostParams::default(), &secret)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Err(Error::Changed(target.to_string()))
        }
        Err(e) => Err(ApiError::new(&what, e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_an_exported_manifest_a_secret_from_kubectl_or_a_bare_ring() {
        let ring = KeyRing::generate("k1");
        let now: Timestamp = "2026-11-22T08:00:00Z".parse().unwrap();
        let exported = manifest("seal-keys", &ring, now);
        assert!(!exported.contains("namespace"), "{exported}");
        assert_eq!(parse_backup(&exported).unwrap().key_ids(), ["k1"]);
        let bare = ring.to_yaml();
        assert_eq!(parse_backup(bare.expose_secret()).unwrap().primary(), "k1");
        let encoded = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            bare.expose_secret(),
        );
        let from_kubectl =
            format!("apiVersion: v1\nkind: Secret\ndata:\n  keyring.yaml: {encoded}\n");
        assert_eq!(parse_backup(&from_kubectl).unwrap().key_ids(), ["k1"]);
        let other = parse_backup("kind: ConfigMap\ndata: {}\n").err().unwrap();
        assert!(other.to_string().contains("is a ConfigMap"), "{other}");
        let empty = parse_backup("kind: Secret\n").err().unwrap();
        assert!(empty.to_string().contains("without the key"), "{empty}");
        let garbage = parse_backup("primary: k1\nkeys: {k1: c2hvcnQ=}\n")
            .err()
            .unwrap();
        assert!(!garbage.to_string().contains("c2hvcnQ"), "{garbage}");
    }
}
