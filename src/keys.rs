//! Where the seal key ring comes from, and keeping it current.
//!
//! Either a file (mounted from a Secret; the kubelet updates it in place) or,
//! when none is configured, a Secret in the operator's own namespace that the
//! operator creates once with a random key. Both hold the format documented in
//! `seal`. The ring is re-read every `RELOAD_INTERVAL`; a change re-reconciles
//! every credential so that values under a non-primary key are re-sealed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use secrecy::ExposeSecret;
use thiserror::Error;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::output_secret::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::seal::{KeyRing, KeyRingError};

/// Key of the key-ring Secret that holds the ring.
pub const KEY_RING_KEY: &str = "keyring.yaml";
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub enum KeySource {
    File(PathBuf),
    Secret { namespace: String, name: String },
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "file {}", path.display()),
            KeySource::Secret { namespace, name } => write!(f, "Secret {namespace}/{name}"),
        }
    }
}

#[derive(Debug, Error)]
pub enum KeysError {
    #[error("seal keys from {source_name}: {error}")]
    Invalid {
        source_name: String,
        error: KeyRingError,
    },
    #[error("cannot read seal keys from {source_name}: {error}")]
    Read { source_name: String, error: String },
}

/// The current key ring, swapped whole on reload.
#[derive(Clone)]
pub struct Keys(Arc<RwLock<Arc<KeyRing>>>);

impl Keys {
    pub fn new(ring: KeyRing) -> Self {
        Keys(Arc::new(RwLock::new(Arc::new(ring))))
    }

    pub fn current(&self) -> Arc<KeyRing> {
        self.0.read().expect("keys lock").clone()
    }

    fn replace(&self, ring: KeyRing) {
        *self.0.write().expect("keys lock") = Arc::new(ring);
    }
}

/// Loads the ring, creating the Secret with a fresh key (named after `now`)
/// when the source is a Secret that does not exist yet.
pub async fn load(
    client: &Client,
    source: &KeySource,
    now: Timestamp,
) -> Result<KeyRing, KeysError> {
    match read(client, source).await? {
        Some(ring) => Ok(ring),
        None => {
            let KeySource::Secret { namespace, name } = source else {
                unreachable!("files are never created")
            };
            create_secret(client, namespace, name, now).await
        }
    }
}

/// Reads the ring; `None` when the Secret does not exist.
async fn read(client: &Client, source: &KeySource) -> Result<Option<KeyRing>, KeysError> {
    let source_name = source.to_string();
    let text = match source {
        KeySource::File(path) => {
            tokio::fs::read_to_string(path)
                .await
                .map_err(|e| KeysError::Read {
                    source_name: source_name.clone(),
                    error: e.to_string(),
                })?
        }
        KeySource::Secret { namespace, name } => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let secret = secrets.get_opt(name).await.map_err(|e| KeysError::Read {
                source_name: source_name.clone(),
                error: e.to_string(),
            })?;
            let Some(secret) = secret else {
                return Ok(None);
            };
            let bytes = secret
                .data
                .and_then(|mut d| d.remove(KEY_RING_KEY))
                .map(|b| b.0)
                .unwrap_or_default();
            String::from_utf8(bytes).map_err(|_| KeysError::Read {
                source_name: source_name.clone(),
                error: format!("key {KEY_RING_KEY} is not UTF-8"),
            })?
        }
    };
    KeyRing::from_yaml(&text)
        .map(Some)
        .map_err(|error| KeysError::Invalid { source_name, error })
}

/// The key-ring Secret holding `ring`, labelled as the operator's.
pub fn ring_secret(namespace: &str, name: &str, ring: &KeyRing) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
            ..Default::default()
        },
        data: Some(ring_data(ring)),
        ..Default::default()
    }
}

/// A key-ring Secret's data: `ring` under `KEY_RING_KEY`.
pub fn ring_data(ring: &KeyRing) -> BTreeMap<String, ByteString> {
    [(
        KEY_RING_KEY.to_string(),
        ByteString(ring.to_yaml().expose_secret().as_bytes().to_vec()),
    )]
    .into()
}

async fn create_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    now: Timestamp,
) -> Result<KeyRing, KeysError> {
    let id = crate::seal::new_key_id(now);
    let ring = KeyRing::generate(&id);
    let secret = ring_secret(namespace, name, &ring);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(
                secret = format!("{namespace}/{name}"),
                key_id = id,
                "no seal keys were configured: created a key ring Secret with one new key; back it up, since sealed refresh tokens cannot be opened without it"
            );
            Ok(ring)
        }
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let source = KeySource::Secret {
                namespace: namespace.into(),
                name: name.into(),
            };
            read(client, &source).await?.ok_or_else(|| KeysError::Read {
                source_name: source.to_string(),
                error: "created concurrently, then gone".into(),
            })
        }
        Err(e) => Err(KeysError::Read {
            source_name: format!("Secret {namespace}/{name}"),
            error: e.to_string(),
        }),
    }
}

/// Re-reads the ring every `RELOAD_INTERVAL`; on a change, swaps it in and
/// bumps `changed`. A ring that fails to load is logged and not used.
pub async fn keep_current(
    client: Client,
    source: KeySource,
    keys: Keys,
    changed: watch::Sender<u64>,
) {
    let mut interval = tokio::time::interval(RELOAD_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match read(&client, &source).await {
            Ok(Some(ring)) => {
                let current = keys.current();
                if ring.primary() != current.primary() || ring.key_ids() != current.key_ids() {
                    info!(source = %source, primary = ring.primary(), key_ids = ?ring.key_ids(), "seal keys changed");
                    keys.replace(ring);
                    changed.send_modify(|generation| *generation += 1);
                }
            }
            Ok(None) => {
                warn!(source = %source, "seal key Secret is gone; keeping the keys in memory")
            }
            Err(error) => {
                warn!(%error, "seal keys could not be reloaded; keeping the previous ones")
            }
        }
    }
}
