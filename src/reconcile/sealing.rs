//! Keeps stored refresh tokens sealed under the primary key, and stores
//! rotated ones. What to do is decided by `input_secrets::seal_action`; this
//! file reads the Secret, performs the action, and records it in status.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::PostParams;
use secrecy::SecretString;
use tracing::info;

use super::{Context, Error, FIELD_MANAGER, kube_err};
use crate::input_secrets::{self, SealAction, version_of};
use crate::refresh_token_store::{self, StoreError};
use crate::resource::{OAuthCredential, OAuthCredentialStatus, RefreshTokenState};
use crate::seal::KeyRing;

/// Writes to a refresh-token Secret tried before giving up on conflicts.
const STORE_ATTEMPTS: u32 = 5;

impl Context {
    /// Keeps the stored refresh token sealed under the primary key: a
    /// plaintext token (put there by a person) is sealed in place on first
    /// sight and its plaintext key removed; a token sealed under another key is
    /// re-sealed. Reads the Secret only when its version differs from the one
    /// last seen, or the primary key changed.
    pub(super) async fn keep_sealed(
        &self,
        credential: Arc<OAuthCredential>,
    ) -> Result<Arc<OAuthCredential>, Error> {
        let keys = self.keys.current();
        let name = &credential.spec.refresh_token_secret_ref.name;
        let version = self.secret_version(&credential, name).await?;
        let known = credential
            .status
            .as_ref()
            .and_then(|s| s.refresh_token.as_ref());
        let seen = known.is_some_and(|k| k.secret_version == version)
            || self.memory.inspected(&credential).as_ref() == Some(&version);
        let stale_key = known
            .and_then(|k| k.sealed_with.as_deref())
            .is_some_and(|id| id != keys.primary());
        if version.is_empty() || (seen && !stale_key) {
            return Ok(credential);
        }
        let ns = credential.namespace().unwrap_or_default();
        let Some(secret) = self
            .secrets(&ns)
            .get_opt(name)
            .await
            .map_err(kube_err("read refresh-token Secret"))?
        else {
            return Ok(credential);
        };
        let stored = input_secrets::stored_refresh_token(
            Some(&secret),
            &credential.spec.refresh_token_secret_ref.key,
            &keys,
            &ns,
            &credential.name_any(),
        );
        let recorded = known.map(|k| k.sealed_with.as_deref());
        match input_secrets::seal_action(stored, recorded, keys.primary()) {
            SealAction::Remember => {
                self.memory
                    .mark_inspected(&credential, version_of(Some(&secret)));
                Ok(credential)
            }
            SealAction::RecordKey(key_id) => {
                let status = with_refresh_token(&credential, version_of(Some(&secret)), key_id);
                self.with_status(credential, status).await
            }
            SealAction::Seal { token, resealing } => {
                self.seal_in_place(credential, secret, &token, resealing, &keys)
                    .await
            }
        }
    }

    /// Writes `token` sealed into the Secret it was read from, and records
    /// the new version and key in status.
    async fn seal_in_place(
        &self,
        credential: Arc<OAuthCredential>,
        secret: Secret,
        token: &SecretString,
        resealing: bool,
        keys: &KeyRing,
    ) -> Result<Arc<OAuthCredential>, Error> {
        let read_version = version_of(Some(&secret));
        let new_version = self.store_sealed(&credential, secret, token, keys).await?;
        info!(
            key_id = keys.primary(),
            resealed = resealing,
            "sealed the stored refresh token"
        );
        let mut status =
            with_refresh_token(&credential, new_version.clone(), keys.primary().to_string());
        // Re-sealing is our own write, not new input: a failure waiting for a
        // new refresh token keeps waiting.
        if resealing
            && let Some(failure) = status.last_failure.as_mut()
            && failure.inputs.refresh_token_secret_version == read_version
        {
            failure.inputs.refresh_token_secret_version = new_version;
        }
        self.with_status(credential, status).await
    }

    /// Stores a rotated refresh token that an earlier attempt could not
    /// store; returns the refresh-token Secret as it now is. Kept in memory
    /// again when it still cannot be stored.
    pub(super) async fn store_unstored_rotation(
        &self,
        credential: &OAuthCredential,
        refresh_secret: Option<Secret>,
        rotated: SecretString,
    ) -> Result<Option<Secret>, Error> {
        let Some(current) = refresh_secret else {
            self.memory.keep_unstored_rotation(credential, rotated);
            return Ok(None);
        };
        let keys = self.keys.current();
        if let Err(error) = self
            .store_sealed(credential, current, &rotated, &keys)
            .await
        {
            self.memory.keep_unstored_rotation(credential, rotated);
            return Err(error);
        }
        let ns = credential.namespace().unwrap_or_default();
        self.secrets(&ns)
            .get_opt(&credential.spec.refresh_token_secret_ref.name)
            .await
            .map_err(kube_err("read refresh-token Secret"))
    }

    /// Writes the refresh token, sealed under the primary key, into the
    /// refresh-token Secret (removing any plaintext copy), under a
    /// resourceVersion precondition; on a conflict it re-reads and writes the
    /// same token again, never exchanging anything a second time. Returns the
    /// Secret's new resourceVersion.
    pub(super) async fn store_sealed(
        &self,
        credential: &OAuthCredential,
        current: Secret,
        token: &SecretString,
        keys: &KeyRing,
    ) -> Result<String, Error> {
        let ns = credential.namespace().unwrap_or_default();
        let key = &credential.spec.refresh_token_secret_ref.key;
        let name = current.name_any();
        let sealed = keys.seal(token, &ns, &credential.name_any());
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let stored = refresh_token_store::write(
            &self.secrets(&ns),
            &name,
            &params,
            Some(current),
            STORE_ATTEMPTS,
            // Deleted meanwhile: nothing to seal into.
            |read| read.map(|secret| input_secrets::with_sealed_token(secret, key, &sealed)),
        )
        .await;
        match stored {
            Ok(Some(written)) => {
                let version = version_of(Some(&written));
                self.references.remember_version(&ns, &name, &version);
                Ok(version)
            }
            Ok(None) => Err(Error::RefreshTokenSecretGone),
            Err(StoreError::Conflicts(n)) => Err(Error::RotationNotStored(n)),
            Err(StoreError::Kube(error)) => Err(kube_err("store the sealed refresh token")(error)),
        }
    }
}

/// The credential's status with the refresh-token Secret's version and key.
fn with_refresh_token(
    credential: &OAuthCredential,
    secret_version: String,
    sealed_with: String,
) -> OAuthCredentialStatus {
    let mut status = credential.status.clone().unwrap_or_default();
    status.refresh_token = Some(RefreshTokenState {
        secret_version,
        sealed_with: Some(sealed_with),
    });
    status
}
