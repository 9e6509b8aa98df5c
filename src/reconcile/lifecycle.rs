//! What happens when a credential goes. Most need nothing: the output Secret
//! carries a controller reference and Kubernetes garbage-collects it. A
//! credential that keeps its output (`output.deletionPolicy: Orphan`) or
//! revokes its grant (`revokeOnDelete`) carries the operator's finalizer, and
//! its deletion waits for that work:
//!
//! - orphaning: the output Secret loses our owner reference and gets the
//!   `oauth.tokenoperator.io/orphaned` label, so that the garbage collector
//!   leaves it and a new credential of the same name may adopt it;
//! - revocation (RFC 7009) at the provider's revocation endpoint, which the
//!   platform's allowlist must allow like the token endpoint. A failed
//!   attempt is recorded in status and retried a few times, with backoff;
//!   then the credential goes anyway, with a `RevocationFailed` event. A
//!   deletion is never held forever.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::output::notice;
use super::{Context, Error, FIELD_MANAGER, kube_err};
use crate::classify::Failure;
use crate::decision::OutputSecret;
use crate::output_secret;
use crate::resource::{
    DeletionPolicy, FINALIZER, OAuthCredential, OAuthCredentialSpec, Revocation,
};
use crate::{schedule, validate};

/// Revocation attempts before the credential is deleted without one.
pub const REVOCATION_ATTEMPTS: u32 = 5;

/// Whether deleting a credential with this spec has work to do first.
pub fn needs_finalizer(spec: &OAuthCredentialSpec) -> bool {
    spec.revoke_on_delete || spec.output.deletion_policy == DeletionPolicy::Orphan
}

fn has_finalizer(credential: &OAuthCredential) -> bool {
    credential.finalizers().iter().any(|f| f == FINALIZER)
}

/// How a revocation attempt ended.
enum Revoked {
    /// Done, or given up: the credential may go.
    Settled,
    /// Try again after this.
    RetryAfter(Duration),
}

impl Context {
    /// Puts the finalizer on a credential whose deletion has work to do, and
    /// takes it off one whose spec no longer asks for any.
    pub(super) async fn keep_finalizer(
        &self,
        credential: Arc<OAuthCredential>,
    ) -> Result<Arc<OAuthCredential>, Error> {
        let needed = needs_finalizer(&credential.spec);
        if needed == has_finalizer(&credential) {
            return Ok(credential);
        }
        let finalizers = self.set_finalizer(&credential, needed).await?;
        let mut credential = (*credential).clone();
        credential.metadata.finalizers = finalizers;
        Ok(Arc::new(credential))
    }

    /// Adds or removes our finalizer on the stored credential (read first:
    /// the cache may lag behind status writes) and returns the finalizers.
    async fn set_finalizer(
        &self,
        credential: &OAuthCredential,
        ours: bool,
    ) -> Result<Option<Vec<String>>, Error> {
        let api = self.credentials_api(credential);
        let Some(stored) = api
            .get_metadata_opt(&credential.name_any())
            .await
            .map_err(kube_err("read credential"))?
        else {
            return Ok(None);
        };
        let mut current = credential.clone();
        current.metadata = stored.metadata;
        let patch = finalizers_patch(&current, ours);
        let updated = api
            .patch_metadata(
                &credential.name_any(),
                &patch_params(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(kube_err("update finalizers"))?;
        Ok(updated.metadata.finalizers)
    }

    /// A credential being deleted: orphan its output, revoke its grant, as
    /// its spec says; then let it go.
    pub(super) async fn finalize(&self, credential: &OAuthCredential) -> Result<Action, Error> {
        if !has_finalizer(credential) {
            return Ok(Action::await_change());
        }
        if credential.spec.output.deletion_policy == DeletionPolicy::Orphan {
            self.orphan_output(credential).await?;
        }
        if credential.spec.revoke_on_delete
            && let Revoked::RetryAfter(delay) = self.revoke(credential).await?
        {
            return Ok(Action::requeue(delay));
        }
        self.set_finalizer(credential, false).await?;
        Ok(Action::await_change())
    }

    /// Takes our owner reference off the output Secret and labels it
    /// orphaned, so that it outlives the credential.
    async fn orphan_output(&self, credential: &OAuthCredential) -> Result<(), Error> {
        let ns = credential.namespace().unwrap_or_default();
        let name = &credential.spec.output.secret_name;
        let secrets = self.secrets(&ns);
        let found = secrets
            .get_metadata_opt(name)
            .await
            .map_err(kube_err("read output Secret metadata"))?;
        let Some(found) = found else {
            return Ok(());
        };
        if output_secret::ownership(Some(&found.metadata), credential) != OutputSecret::Owned {
            return Ok(());
        }
        let patch = output_secret::orphaning_patch(&found.metadata, credential);
        secrets
            .patch(name, &patch_params(), &Patch::Merge(&patch))
            .await
            .map_err(kube_err("orphan output Secret"))?;
        self.memory.forget_output(credential);
        info!(
            outcome = "orphaned",
            "output Secret kept after the credential"
        );
        let message = format!(
            "Secret {name} stays after this credential, labelled {}=true and no longer kept fresh; a new \
             OAuthCredential named {} adopts it",
            output_secret::ORPHANED_LABEL,
            credential.name_any()
        );
        self.publish(credential, vec![notice(false, "Orphaned", message)])
            .await;
        Ok(())
    }

    /// One revocation attempt, or the decision that none can be made.
    async fn revoke(&self, credential: &OAuthCredential) -> Result<Revoked, Error> {
        let spec = &credential.spec;
        let endpoints = self
            .endpoints
            .token_endpoint(&spec.provider)
            .and_then(|t| Ok((t, self.endpoints.revocation_endpoint(&spec.provider)?)));
        let (token_endpoint, revocation_endpoint) = match endpoints {
            Ok(endpoints) => endpoints,
            Err(refused) => return self.give_up(credential, &refused.to_string(), 0).await,
        };
        // Our own status write wakes the credential at once: the backoff
        // is kept in status, as a refresh's is.
        let retry_at = credential
            .status
            .as_ref()
            .and_then(|s| s.revocation.as_ref())
            .map(|r| r.retry_at.0);
        if let Some(wait) =
            retry_at.and_then(|at| Duration::try_from(at.duration_since(self.clock.now())).ok())
            && !wait.is_zero()
        {
            return Ok(Revoked::RetryAfter(wait));
        }
        let (ns, name) = (
            credential.namespace().unwrap_or_default(),
            credential.name_any(),
        );
        if !self.fence.allows_for(&ns, &name, self.clock.instant()) {
            return Ok(Revoked::RetryAfter(Duration::from_secs(1)));
        }
        let gathered = self.gather(credential, &token_endpoint).await?;
        let keys = self.keys.current();
        let ns = credential.namespace().unwrap_or_default();
        let ready =
            match validate::validate(&gathered.input(credential, &ns, &token_endpoint, &keys)) {
                Ok(ready) => ready,
                Err(invalid) => {
                    let why = format!("there is no refresh token to revoke: {invalid}");
                    return self.give_up(credential, &why, 0).await;
                }
            };
        let clock = self.clock.clone();
        let result = self
            .tokens
            .revoke(
                &revocation_endpoint,
                &ready.client,
                &ready.refresh_token,
                || clock.now(),
            )
            .await;
        let failed = credential
            .status
            .as_ref()
            .and_then(|s| s.revocation.as_ref())
            .map_or(0, |r| r.failed_attempts);
        match result {
            Ok(()) => {
                info!(outcome = "revoked", "refresh token revoked");
                self.metrics.revocation("revoked");
                let message = format!(
                    "revoked the refresh token at {}",
                    revocation_endpoint.origin()
                );
                self.publish(credential, vec![notice(false, "Revoked", message)])
                    .await;
                Ok(Revoked::Settled)
            }
            Err(failure) => {
                self.revocation_failed(credential, &failure, failed + 1)
                    .await
            }
        }
    }

    /// A failed attempt: retried with backoff while it may help and attempts
    /// remain; otherwise given up.
    async fn revocation_failed(
        &self,
        credential: &OAuthCredential,
        failure: &Failure,
        attempts: u32,
    ) -> Result<Revoked, Error> {
        let what = match failure.http_status {
            Some(code) => format!(
                "the revocation endpoint answered HTTP {code} ({})",
                failure.provider.summary()
            ),
            None => failure
                .detail
                .replace("token endpoint", "revocation endpoint"),
        };
        let transient = failure.category == crate::resource::FailureCategory::Transient;
        if !transient || attempts >= REVOCATION_ATTEMPTS {
            return self.give_up(credential, &what, attempts).await;
        }
        warn!(
            outcome = failure.reason,
            attempts, "revocation failed; retrying"
        );
        // 1, 2, 4, 8 s: all attempts within some 15 s, or as the provider
        // asks, up to a minute.
        let wait = failure
            .retry_after
            .unwrap_or(Duration::from_secs(1 << (attempts - 1).min(5)))
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let retry_at = self.clock.now() + SignedDuration::try_from(wait).expect("at most a minute");
        let mut status = credential.status.clone().unwrap_or_default();
        status.revocation = Some(Revocation {
            failed_attempts: attempts,
            message: what,
            // Rounded up: status keeps whole seconds.
            retry_at: Time(schedule::whole_seconds(retry_at) + SignedDuration::from_secs(1)),
        });
        self.write_status(credential, status).await?;
        Ok(Revoked::RetryAfter(wait))
    }

    /// No (more) revocation: say so, and let the credential go.
    async fn give_up(
        &self,
        credential: &OAuthCredential,
        why: &str,
        attempts: u32,
    ) -> Result<Revoked, Error> {
        warn!(
            outcome = "revocation-failed",
            attempts, "deleting without revocation"
        );
        self.metrics.revocation("failed");
        let tries = match attempts {
            0 => String::new(),
            1 => " after 1 attempt".into(),
            n => format!(" after {n} attempts"),
        };
        let message = format!(
            "the refresh token was not revoked{tries}: {why}; the credential is deleted anyway. \
             Revoke the grant by hand at the provider (for Google: https://myaccount.google.com/permissions)"
        );
        self.publish(credential, vec![notice(true, "RevocationFailed", message)])
            .await;
        Ok(Revoked::Settled)
    }

    fn credentials_api(&self, credential: &OAuthCredential) -> Api<OAuthCredential> {
        Api::namespaced(
            self.client.clone(),
            &credential.namespace().unwrap_or_default(),
        )
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// A merge patch that sets the finalizers of `credential` (as just read)
/// with ours added or removed; it applies only to the version read, so that
/// no other controller's change to the list is lost.
fn finalizers_patch(credential: &OAuthCredential, ours: bool) -> serde_json::Value {
    let mut finalizers: Vec<String> = credential
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if ours {
        finalizers.push(FINALIZER.to_string());
    }
    json!({
        "metadata": {
            "resourceVersion": credential.resource_version(),
            "finalizers": finalizers,
        }
    })
}
