//! Gather: what a reconcile reads before it decides or acts. The credential
//! as of our own last status write, the output Secret's owner, the versions
//! of the input Secrets, and (only when a refresh is planned) the input
//! Secrets themselves.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{Context, Error, kube_err};
use crate::decision::OutputSecret;
use crate::input_secrets::version_of;
use crate::output_secret;
use crate::resource::{Inputs, OAuthCredential};
use crate::seal::KeyRing;
use crate::validate;

/// The input Secrets of a refresh, as read.
pub(super) struct Gathered {
    pub client_secret: Option<Secret>,
    pub refresh_secret: Option<Secret>,
    pub inputs: Inputs,
}

impl Gathered {
    /// What validation looks at.
    pub fn input<'a>(
        &'a self,
        credential: &'a OAuthCredential,
        namespace: &'a str,
        keys: &'a KeyRing,
        allow_insecure_loopback_http: bool,
    ) -> validate::Input<'a> {
        validate::Input {
            namespace,
            name: credential.metadata.name.as_deref().unwrap_or_default(),
            spec: &credential.spec,
            client_secret: self.client_secret.as_ref(),
            refresh_secret: self.refresh_secret.as_ref(),
            keys,
            allow_insecure_loopback_http,
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

    /// Ours, someone else's, or absent. The cache answers for Secrets we
    /// labelled; anything else is looked up, because a foreign Secret carries
    /// no label of ours.
    pub(super) async fn output_secret(
        &self,
        credential: &OAuthCredential,
    ) -> Result<OutputSecret, Error> {
        let ns = credential.namespace().unwrap_or_default();
        let name = &credential.spec.output.secret_name;
        if let Some(cached) = self.owned_secrets.get(&ObjectRef::new(name).within(&ns)) {
            return Ok(output_secret::ownership(Some(&cached.metadata), credential));
        }
        let found = self
            .secrets(&ns)
            .get_metadata_opt(name)
            .await
            .map_err(kube_err("read output Secret metadata"))?;
        Ok(output_secret::ownership(
            found.as_ref().map(|s| &s.metadata),
            credential,
        ))
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
    pub(super) async fn gather(&self, credential: &OAuthCredential) -> Result<Gathered, Error> {
        let ns = credential.namespace().unwrap_or_default();
        let spec = &credential.spec;
        let secrets = self.secrets(&ns);
        let client_secret = secrets
            .get_opt(&spec.client_secret_ref.name)
            .await
            .map_err(kube_err("read client Secret"))?;
        let mut refresh_secret = secrets
            .get_opt(&spec.refresh_token_secret_ref.name)
            .await
            .map_err(kube_err("read refresh-token Secret"))?;
        if let Some(rotated) = self.memory.take_unstored_rotation(credential) {
            refresh_secret = self
                .store_unstored_rotation(credential, refresh_secret, rotated)
                .await?;
        }
        let inputs = Inputs {
            generation: credential.metadata.generation.unwrap_or(0),
            client_secret_version: version_of(client_secret.as_ref()),
            refresh_token_secret_version: version_of(refresh_secret.as_ref()),
        };
        Ok(Gathered {
            client_secret,
            refresh_secret,
            inputs,
        })
    }

    pub(super) fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }
}
