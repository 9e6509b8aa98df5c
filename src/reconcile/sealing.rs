//! Keeps stored refresh tokens sealed under the primary key in the current
//! format, and stores rotated ones. What to do is decided by
//! `input_secrets::seal_action`; this file reads the Secret, performs the
//! action, and records it in status.
//!
//! Every write goes to a refresh-token Secret that opted in (its type), under
//! the resourceVersion of the read it was decided on. On a conflict the Secret
//! is read again; if its token changed meanwhile (a person, `authorize`, or
//! another writer stored a new one), nothing is written and the next
//! reconcile decides afresh: a newer token is never overwritten.

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::PostParams;
use secrecy::SecretString;
use tracing::{info, warn};

use super::{Context, Error, FIELD_MANAGER, kube_err};
use crate::endpoint::TokenEndpoint;
use crate::input_secrets::{
    self, InputKind, InputSecret, SealAction, Stored, sealed_key, version_of,
};
use crate::refresh_token_store::{self, StoreError};
use crate::resource::{OAuthCredential, OAuthCredentialStatus, RefreshTokenState};
use crate::seal::{Binding, KeyRing};
use crate::validate;

/// Writes to a refresh-token Secret tried before giving up on conflicts.
const STORE_ATTEMPTS: u32 = 5;
/// The sealed format this version writes, as recorded in status.
pub(super) const SEALED_FORMAT: &str = "v2";

impl Context {
    /// Keeps the stored refresh token sealed under the primary key: a
    /// plaintext token (put there by a person) is sealed in place on first
    /// sight and its plaintext key removed; a token sealed under another key,
    /// or in the first format, is re-sealed. Reads the Secret only when its
    /// version differs from the one last seen, or the key or format changed.
    pub(super) async fn keep_sealed(
        &self,
        credential: Arc<OAuthCredential>,
        endpoint: &TokenEndpoint,
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
        let stale = known.is_some_and(|k| {
            k.sealed_with
                .as_deref()
                .is_some_and(|id| id != keys.primary())
                || (k.sealed_with.is_some() && k.format.as_deref() != Some(SEALED_FORMAT))
        });
        if version.is_empty() || (seen && !stale) {
            return Ok(credential);
        }
        let ns = credential.namespace().unwrap_or_default();
        let InputSecret::Accepted(secret) =
            self.read_input(&ns, name, InputKind::RefreshToken).await?
        else {
            // Absent or not an input: nothing to seal, reported when a
            // refresh is attempted.
            self.memory.mark_inspected(&credential, version);
            return Ok(credential);
        };
        let stored = input_secrets::stored_refresh_token(
            Some(&secret),
            &credential.spec.refresh_token_secret_ref.key,
        );
        // A key recorded for an older format counts as none recorded.
        let recorded = known.map(|k| {
            k.sealed_with
                .as_deref()
                .filter(|_| k.format.as_deref() == Some(SEALED_FORMAT))
        });
        match input_secrets::seal_action(&stored, recorded, keys.primary()) {
            SealAction::Remember => {
                self.memory
                    .mark_inspected(&credential, version_of(Some(&secret)));
                Ok(credential)
            }
            SealAction::RecordKey(key_id) => {
                let status = with_refresh_token(&credential, version_of(Some(&secret)), key_id);
                self.with_status(credential, status).await
            }
            action @ (SealAction::Seal | SealAction::Reseal) => {
                let resealing = action == SealAction::Reseal;
                self.seal_in_place(credential, *secret, &stored, resealing, endpoint, &keys)
                    .await
            }
        }
    }

    /// Seals the stored token, bound to the credential's endpoint and client,
    /// into the Secret it was read from, and records the new version and key
    /// in status. Waits (writes nothing) while the client is not readable,
    /// and leaves a token that does not open to the refresh to report.
    async fn seal_in_place(
        &self,
        credential: Arc<OAuthCredential>,
        secret: Secret,
        stored: &Stored,
        resealing: bool,
        endpoint: &TokenEndpoint,
        keys: &KeyRing,
    ) -> Result<Arc<OAuthCredential>, Error> {
        let ns = credential.namespace().unwrap_or_default();
        let client = self
            .read_input(
                &ns,
                &credential.spec.client_secret_ref.name,
                InputKind::Client,
            )
            .await?;
        let Some(client_id) = client_id(&credential, &client) else {
            return Ok(credential);
        };
        let name = credential.name_any();
        let binding = validate::binding(&ns, &name, endpoint, &client_id);
        let Some(Ok((token, _))) = input_secrets::open_stored(stored, keys, &binding) else {
            self.memory
                .mark_inspected(&credential, version_of(Some(&secret)));
            return Ok(credential);
        };
        let read_version = version_of(Some(&secret));
        let new_version = match self
            .store_sealed(&credential, &secret, &token, keys, &binding)
            .await
        {
            Ok(version) => version,
            // Changed since read: the next reconcile looks at the new token.
            Err(Error::RefreshTokenSecretChanged) => return Ok(credential),
            Err(error) => return Err(error),
        };
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
    /// store. Kept in memory again when it still cannot be stored.
    pub(super) async fn store_unstored_rotation(
        &self,
        credential: &OAuthCredential,
        current: Option<Secret>,
        rotated: SecretString,
        client: &InputSecret,
        endpoint: &TokenEndpoint,
    ) -> Result<(), Error> {
        let (Some(current), Some(client_id)) = (current, client_id(credential, client)) else {
            self.memory.keep_unstored_rotation(credential, rotated);
            return Ok(());
        };
        let ns = credential.namespace().unwrap_or_default();
        let name = credential.name_any();
        let binding = validate::binding(&ns, &name, endpoint, &client_id);
        let keys = self.keys.current();
        match self
            .store_sealed(credential, &current, &rotated, &keys, &binding)
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::RefreshTokenSecretChanged) => {
                warn!(
                    "a new refresh token was stored while a rotated one waited; keeping the new one"
                );
                Ok(())
            }
            Err(error) => {
                self.memory.keep_unstored_rotation(credential, rotated);
                Err(error)
            }
        }
    }

    /// Writes the refresh token, sealed under the primary key for `binding`,
    /// into the refresh-token Secret as `read` (removing any plaintext copy),
    /// under `read`'s resourceVersion. On a conflict it reads the Secret
    /// again and writes the same token only if the stored token is still the
    /// one `read` held; never exchanging anything a second time. Returns the
    /// Secret's new resourceVersion.
    pub(super) async fn store_sealed(
        &self,
        credential: &OAuthCredential,
        read: &Secret,
        token: &SecretString,
        keys: &KeyRing,
        binding: &Binding<'_>,
    ) -> Result<String, Error> {
        let ns = credential.namespace().unwrap_or_default();
        let key = &credential.spec.refresh_token_secret_ref.key;
        let name = read.name_any();
        let sealed = keys.seal(token, binding);
        let decided_on = token_fields(read, key);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let mut changed = false;
        let stored = refresh_token_store::write(
            &self.secrets(&ns),
            &name,
            &params,
            Some(read.clone()),
            STORE_ATTEMPTS,
            |current| {
                // Never a Secret that did not opt in; never over a token
                // that is not the one this write was decided on.
                let current = current.filter(|s| InputKind::RefreshToken.accepts(s))?;
                if token_fields(&current, key) != decided_on {
                    changed = true;
                    return None;
                }
                Some(input_secrets::with_sealed_token(current, key, &sealed))
            },
        )
        .await;
        match stored {
            Ok(Some(written)) => {
                let version = version_of(Some(&written));
                self.references.remember_version(&ns, &name, &version);
                Ok(version)
            }
            Ok(None) if changed => Err(Error::RefreshTokenSecretChanged),
            Ok(None) => Err(Error::RefreshTokenSecretGone),
            Err(StoreError::Conflicts(n)) => Err(Error::RotationNotStored(n)),
            Err(StoreError::Kube(error)) => Err(kube_err("store the sealed refresh token")(error)),
        }
    }
}

/// The client id, when the client Secret is an input and complete.
fn client_id(credential: &OAuthCredential, client: &InputSecret) -> Option<String> {
    input_secrets::client_credentials(client.accepted(), &credential.spec.client_secret_ref)
        .ok()
        .map(|c| c.client_id)
}

/// The two values that hold a stored refresh token.
fn token_fields(secret: &Secret, key: &str) -> [Option<ByteString>; 2] {
    let data = secret.data.as_ref();
    [
        data.and_then(|d| d.get(key).cloned()),
        data.and_then(|d| d.get(&sealed_key(key)).cloned()),
    ]
}

/// The credential's status with the refresh-token Secret's version and key.
fn with_refresh_token(
    credential: &OAuthCredential,
    secret_version: String,
    sealed_with: String,
) -> OAuthCredentialStatus {
    let mut status = credential.status.clone().unwrap_or_default();
    // The refresh token's own expiry is known again at the next refresh;
    // until then the one recorded stands.
    let expires_at = status.refresh_token.take().and_then(|r| r.expires_at);
    status.refresh_token = Some(RefreshTokenState {
        secret_version,
        sealed_with: Some(sealed_with),
        expires_at,
        format: Some(SEALED_FORMAT.into()),
    });
    status
}
