//! Gather: what a reconcile reads before it decides or acts. The credential
//! as of our own last status write, the output Secret's owner, the versions
//! of the input Secrets, and (only when a refresh is planned) the input
//! Secrets themselves, and of those only the ones that opted in: the data of
//! a Secret without an input's `type` never crosses the wire.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{Context, Error, kube_err};
use crate::decision::OutputSecret;
use crate::endpoint::TokenEndpoint;
use crate::input_secrets::{InputKind, InputSecret, version_of};
use crate::output_secret;
use crate::resource::{Inputs, OAuthCredential};
use crate::seal::KeyRing;
use crate::validate;

/// The input Secrets of a refresh, as read.
pub(super) struct Gathered {
    pub client_secret: InputSecret,
    pub refresh_secret: InputSecret,
    pub inputs: Inputs,
}

impl Gathered {
    /// What validation looks at.
    pub fn input<'a>(
        &'a self,
        credential: &'a OAuthCredential,
        namespace: &'a str,
        endpoint: &'a TokenEndpoint,
        keys: &'a KeyRing,
    ) -> validate::Input<'a> {
        validate::Input {
            namespace,
            name: credential.metadata.name.as_deref().unwrap_or_default(),
            spec: &credential.spec,
            endpoint,
            client_secret: &self.client_secret,
            refresh_secret: &self.refresh_secret,
            keys,
        }
    }
}

impl Context {
    /// The credential as of our last status write: the cache may lag behind
    /// our own write, and deciding from a stale status would refresh twice.
    /// While it lags (for at most 5 s after the write), the status we wrote
    /// stands in for the cached one, rather than holding a concurrency slot
    /// while waiting for the cache to catch up.
    pub(super) fn current(&self, credential: Arc<OAuthCredential>) -> Arc<OAuthCredential> {
        const TRUST_OWN_WRITE: Duration = Duration::from_secs(5);
        let key = ObjectRef::from_obj(credential.as_ref());
        let latest = self.credentials.get(&key).unwrap_or(credential);
        match self.memory.newer_than_cache(
            &latest,
            latest.status.as_ref(),
            self.clock.instant(),
            TRUST_OWN_WRITE,
        ) {
            Some(written) => {
                let mut updated = (*latest).clone();
                updated.status = Some(written);
                Arc::new(updated)
            }
            None => latest,
        }
    }

    /// Ours (as we wrote it, or altered), an orphan to adopt, someone
    /// else's, or absent. The cache answers for Secrets we labelled; anything
    /// else is looked up, because a foreign Secret carries no label of ours.
    pub(super) async fn output_secret(
        &self,
        credential: &OAuthCredential,
    ) -> Result<OutputSecret, Error> {
        let ns = credential.namespace().unwrap_or_default();
        let name = &credential.spec.output.secret_name;
        let meta = match self.owned_secrets.get(&ns, name) {
            cached @ Some(_) => cached,
            None => self
                .secrets(&ns)
                .get_metadata_opt(name)
                .await
                .map_err(kube_err("read output Secret metadata"))?
                .map(|found| found.metadata),
        };
        match (output_secret::ownership(meta.as_ref(), credential), meta) {
            (OutputSecret::Owned, Some(meta)) => self.check_output(credential, &meta).await,
            (ownership, _) => Ok(ownership),
        }
    }

    /// Versions of the inputs, from the Secret watch (read when it has not
    /// reported them yet).
    pub(super) async fn input_versions(
        &self,
        credential: &OAuthCredential,
    ) -> Result<Inputs, Error> {
        Ok(Inputs {
            generation: credential.metadata.generation.unwrap_or(0),
            client_secret_version: self
                .secret_version(credential, &credential.spec.client_secret_ref.name)
                .await?,
            refresh_token_secret_version: self
                .secret_version(credential, &credential.spec.refresh_token_secret_ref.name)
                .await?,
            key_ring: String::new(),
        })
    }

    /// The current resourceVersion of a Secret in the credential's namespace,
    /// empty when it does not exist.
    pub(super) async fn secret_version(
        &self,
        credential: &OAuthCredential,
        name: &str,
    ) -> Result<String, Error> {
        let ns = credential.namespace().unwrap_or_default();
        if let Some(version) = self.references.version(&ns, name) {
            return Ok(version);
        }
        let found = self
            .secrets(&ns)
            .get_metadata_opt(name)
            .await
            .map_err(kube_err("read Secret metadata"))?;
        let version = found
            .and_then(|s| s.metadata.resource_version)
            .unwrap_or_default();
        self.references.remember_version(&ns, name, &version);
        Ok(version)
    }

    /// Reads the input Secrets of a refresh. A rotated token that an earlier
    /// attempt received but could not store is the grant's only valid token:
    /// it is stored before anything else, and the old one never exchanged.
    pub(super) async fn gather(
        &self,
        credential: &OAuthCredential,
        endpoint: &TokenEndpoint,
    ) -> Result<Gathered, Error> {
        let ns = credential.namespace().unwrap_or_default();
        let spec = &credential.spec;
        let client_secret = self
            .read_input(&ns, &spec.client_secret_ref.name, InputKind::Client)
            .await?;
        let refresh_name = &spec.refresh_token_secret_ref.name;
        let mut refresh_secret = self
            .read_input(&ns, refresh_name, InputKind::RefreshToken)
            .await?;
        if let Some(rotated) = self.memory.take_unstored_rotation(credential) {
            let current = refresh_secret.accepted().cloned();
            self.store_unstored_rotation(credential, current, rotated, &client_secret, endpoint)
                .await?;
            refresh_secret = self
                .read_input(&ns, refresh_name, InputKind::RefreshToken)
                .await?;
        }
        let inputs = Inputs {
            generation: credential.metadata.generation.unwrap_or(0),
            client_secret_version: self.version_read(
                &ns,
                &spec.client_secret_ref.name,
                &client_secret,
            ),
            refresh_token_secret_version: self.version_read(&ns, refresh_name, &refresh_secret),
            key_ring: String::new(),
        };
        Ok(Gathered {
            client_secret,
            refresh_secret,
            inputs,
        })
    }

    /// The version of an input Secret as just read.
    fn version_read(&self, namespace: &str, name: &str, secret: &InputSecret) -> String {
        match secret {
            InputSecret::Accepted(secret) => version_of(Some(secret)),
            InputSecret::Missing => String::new(),
            InputSecret::NotAccepted => {
                self.references.version(namespace, name).unwrap_or_default()
            }
        }
    }

    /// Reads the Secret `name` as an input of `kind`: its data only if it
    /// opted in (its `type` says it is such an input). A Secret the input
    /// watches reported is read; any other is asked for with a field selector
    /// on its type, so that a Secret that did not opt in is returned by
    /// nobody, and only its metadata is then read to tell "not an input" from
    /// "absent".
    pub(super) async fn read_input(
        &self,
        namespace: &str,
        name: &str,
        kind: InputKind,
    ) -> Result<InputSecret, Error> {
        let secrets = self.secrets(namespace);
        let found = if self.references.opted_in(namespace, name) == Some(kind) {
            let read = secrets
                .get_opt(name)
                .await
                .map_err(kube_err("read input Secret"))?;
            match read {
                Some(secret) => secret,
                None => {
                    self.references.remember(namespace, name, "", None);
                    return Ok(InputSecret::Missing);
                }
            }
        } else {
            let selector = format!("metadata.name={name},type={}", kind.secret_type());
            let params = ListParams::default().fields(&selector);
            let listed = secrets
                .list(&params)
                .await
                .map_err(kube_err("look up input Secret by type"))?;
            match listed.items.into_iter().next() {
                Some(secret) => secret,
                None => return self.not_an_input(namespace, name).await,
            }
        };
        // Checked again: the type is fixed at creation, but the Secret may
        // have been deleted and re-created since a watch reported it.
        if !kind.accepts(&found) {
            self.references
                .remember(namespace, name, &version_of(Some(&found)), None);
            return Ok(InputSecret::NotAccepted);
        }
        let version = version_of(Some(&found));
        self.references
            .remember(namespace, name, &version, Some(kind));
        Ok(InputSecret::Accepted(Box::new(found)))
    }

    /// Whether a Secret that is not an input exists, from its metadata only.
    async fn not_an_input(&self, namespace: &str, name: &str) -> Result<InputSecret, Error> {
        let meta = self
            .secrets(namespace)
            .get_metadata_opt(name)
            .await
            .map_err(kube_err("read Secret metadata"))?;
        let version = meta
            .as_ref()
            .and_then(|m| m.metadata.resource_version.clone())
            .unwrap_or_default();
        self.references.remember(namespace, name, &version, None);
        Ok(match meta {
            Some(_) => InputSecret::NotAccepted,
            None => InputSecret::Missing,
        })
    }

    pub(super) fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }
}
