//! The output Secret: writing it, noticing when someone else changed its
//! data (and putting ours back without a token call), and adopting one that a
//! deleted credential of the same name left behind.
//!
//! Drift costs nothing while nothing changes: the owned-Secret cache carries
//! each output's `resourceVersion`, and a version the operator wrote or
//! checked is known good. Any other version is read once and its data hashed
//! against what the operator wrote. The token last written stays in memory
//! (never the refresh token), so a deleted or edited output is written again
//! within seconds; after a restart, an edit costs one refresh instead.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::info;

use super::memory::Written;
use super::refresh::Refreshed;
use super::{Context, Error, FIELD_MANAGER, kube_err};
use crate::decision::{OutputSecret, RefreshReason};
use crate::endpoint::TokenEndpoint;
use crate::output_secret::{self, OutputError};
use crate::resource::OAuthCredential;
use crate::schedule;
use crate::status::{self, Notice};

/// Why a new token did not reach the output Secret.
#[derive(Debug, thiserror::Error)]
pub(super) enum NotWritten {
    #[error(transparent)]
    Render(#[from] OutputError),
    #[error(transparent)]
    Api(#[from] Error),
}

impl Context {
    /// Whether the output Secret `meta`, which is ours, still holds our data:
    /// `Owned`, or `Altered` when someone changed it.
    pub(super) async fn check_output(
        &self,
        credential: &OAuthCredential,
        meta: &ObjectMeta,
    ) -> Result<OutputSecret, Error> {
        let version = meta.resource_version.as_deref().unwrap_or_default();
        let recorded = output_secret::recorded_data_hash(meta);
        if self
            .memory
            .output_known(credential, version, recorded)
            .is_some()
        {
            return Ok(OutputSecret::Owned);
        }
        let Some(current) = self.read_output(credential).await? else {
            return Ok(OutputSecret::Absent);
        };
        let ownership = output_secret::ownership(Some(&current.metadata), credential);
        if ownership != OutputSecret::Owned {
            return Ok(ownership);
        }
        let hash = output_secret::data_hash(&current.data.clone().unwrap_or_default());
        if self.memory.output_hash(credential).as_deref() == Some(hash.as_str()) {
            let version = current.metadata.resource_version.unwrap_or_default();
            self.memory.output_checked(credential, version);
            return Ok(OutputSecret::Owned);
        }
        Ok(OutputSecret::Altered)
    }

    async fn read_output(&self, credential: &OAuthCredential) -> Result<Option<Secret>, Error> {
        self.secrets(&credential.namespace().unwrap_or_default())
            .get_opt(&credential.spec.output.secret_name)
            .await
            .map_err(kube_err("read output Secret"))
    }

    /// Writes `refreshed` to the output Secret: created when absent, applied
    /// when ours, replaced (our data exactly) when someone altered it.
    /// `false` when the name turned out to belong to someone else (never
    /// written, then).
    pub(super) async fn write_output(
        &self,
        credential: &OAuthCredential,
        output: OutputSecret,
        refreshed: &Refreshed,
    ) -> Result<bool, NotWritten> {
        let secret = output_secret::build(
            credential,
            &refreshed.token,
            refreshed.expires_at,
            refreshed.sent_at,
        )?;
        let hash = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(output_secret::DATA_HASH_ANNOTATION))
            .cloned()
            .unwrap_or_default();
        let secrets: Api<Secret> = self.secrets(&credential.namespace().unwrap_or_default());
        let name = &credential.spec.output.secret_name;
        let written = match output {
            OutputSecret::Absent => secrets.create(&PostParams::default(), &secret).await,
            OutputSecret::Owned => {
                let params = PatchParams::apply(FIELD_MANAGER).force();
                secrets.patch(name, &params, &Patch::Apply(&secret)).await
            }
            OutputSecret::Altered => match self.read_output(credential).await? {
                Some(current) => {
                    let put = output_secret::restored(&current, secret);
                    secrets.replace(name, &PostParams::default(), &put).await
                }
                None => secrets.create(&PostParams::default(), &secret).await,
            },
            // `decide` plans no write into a foreign Secret, and adopts an
            // orphan before it writes; should one appear anyway, it is
            // reported, never written.
            OutputSecret::Foreign | OutputSecret::Orphaned { .. } => return Ok(false),
        };
        match written {
            Ok(secret) => {
                let mut kept = refreshed.clone();
                // Only the access token is kept: the refresh token lives in
                // its Secret alone.
                kept.token.refresh_token = None;
                self.memory.wrote_output(
                    credential,
                    secret.metadata.resource_version.unwrap_or_default(),
                    hash,
                    Some((kept, Written::of(credential))),
                );
                Ok(true)
            }
            // Someone created a Secret of that name since we looked.
            Err(kube::Error::Api(status))
                if status.code == 409 && output == OutputSecret::Absent =>
            {
                Ok(false)
            }
            Err(error) => Err(kube_err("write output Secret")(error).into()),
        }
    }

    /// Writes the token this process last wrote to the output Secret again,
    /// after someone deleted the Secret or changed its data: no token call.
    pub(super) async fn restore(
        &self,
        credential: &OAuthCredential,
        output: OutputSecret,
    ) -> Result<Action, Error> {
        let now = self.now();
        let Some(held) = self.memory.restorable(credential, now) else {
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        let name = credential.spec.output.secret_name.clone();
        match self.write_output(credential, output, &held).await {
            Ok(true) => {}
            Ok(false) => return self.report_conflict(credential, now).await,
            Err(NotWritten::Api(error)) => return Err(error),
            // Rendered before: only a spec change makes it fail, and a spec
            // change is refreshed instead of restored.
            Err(NotWritten::Render(error)) => {
                info!(%error, "output not restored");
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
        }
        let what = match output {
            OutputSecret::Absent => "was deleted",
            _ => "had its data changed",
        };
        info!(outcome = "restored", "output Secret {what}; wrote it again");
        self.metrics.output_restored();
        let message = format!(
            "Secret {name} {what} by someone other than the operator; wrote the current access token \
             (valid until {}) into it again, without a call to the token endpoint",
            held.expires_at
        );
        self.publish(credential, vec![notice(true, "OutputRestored", message)])
            .await;
        let refresh_at = credential
            .status
            .as_ref()
            .and_then(|s| s.refresh_at.as_ref())
            .map(|t| t.0);
        self.settle(credential, now, refresh_at).await
    }

    /// Adopts the output Secret a deleted credential of this name left
    /// (`deletionPolicy: Orphan`), and uses its token while it is good and
    /// was made for this spec; otherwise refreshes into it.
    pub(super) async fn adopt(
        &self,
        credential: &OAuthCredential,
        endpoint: &TokenEndpoint,
        expires_at: Timestamp,
        refreshed_at: Timestamp,
    ) -> Result<Action, Error> {
        let now = self.now();
        let Some(current) = self.read_output(credential).await? else {
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        let orphan = matches!(
            output_secret::ownership(Some(&current.metadata), credential),
            OutputSecret::Orphaned { .. }
        );
        let wanted = output_secret::output_type(&credential.spec.output);
        if !orphan || current.type_.as_deref().unwrap_or("Opaque") != wanted {
            // Another type cannot be changed in place: not ours to take.
            return self.report_conflict(credential, now).await;
        }
        let stale = output_secret::stale_orphan(&current, credential);
        let patch = output_secret::adopting_patch(&current.metadata, credential);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let adopted = self
            .secrets(&credential.namespace().unwrap_or_default())
            .patch(
                &credential.spec.output.secret_name,
                &params,
                &Patch::Merge(&patch),
            )
            .await
            .map_err(kube_err("adopt output Secret"))?;
        let recorded = output_secret::recorded_data_hash(&current.metadata).map(str::to_owned);
        self.memory.wrote_output(
            credential,
            adopted.metadata.resource_version.unwrap_or_default(),
            recorded.unwrap_or_default(),
            None,
        );
        let message = format!(
            "adopted Secret {}, left by a deleted OAuthCredential of this name",
            credential.spec.output.secret_name
        );
        info!(outcome = "adopted", stale, "adopted the output Secret");
        self.publish(credential, vec![notice(false, "Adopted", message)])
            .await;
        let refresh_at = self.adopted_refresh_time(credential, refreshed_at, expires_at);
        match stale {
            None if now < refresh_at => {
                self.record_adoption(credential, now, refreshed_at, expires_at, refresh_at)
                    .await
            }
            None => {
                let why = RefreshReason::Adopted;
                self.refresh(credential, endpoint, OutputSecret::Owned, why)
                    .await
            }
            Some(_) => {
                let why = RefreshReason::Adopted;
                self.refresh(credential, endpoint, OutputSecret::Altered, why)
                    .await
            }
        }
    }

    /// When the token of an adopted Secret is refreshed: as if this
    /// credential had obtained it, and never before the minimum interval.
    fn adopted_refresh_time(
        &self,
        credential: &OAuthCredential,
        refreshed_at: Timestamp,
        expires_at: Timestamp,
    ) -> Timestamp {
        let refresh_before = credential
            .spec
            .refresh_before
            .as_deref()
            .and_then(|t| schedule::parse_duration(t).ok());
        let seed = format!("{}/{expires_at}", super::write::jitter_seed(credential));
        let scheduled = schedule::refresh_time(refreshed_at, expires_at, refresh_before, &seed);
        let floor = refreshed_at
            + SignedDuration::try_from(self.min_refresh_interval).expect("flag is bounded");
        scheduled.max(floor)
    }

    async fn record_adoption(
        &self,
        credential: &OAuthCredential,
        now: Timestamp,
        refreshed_at: Timestamp,
        expires_at: Timestamp,
        refresh_at: Timestamp,
    ) -> Result<Action, Error> {
        let generation = credential.metadata.generation.unwrap_or(0);
        let mut desired = status::after_adoption(
            credential.status.as_ref(),
            status::Adoption {
                now,
                generation,
                refreshed_at,
                expires_at,
                refresh_at,
                output_secret: &credential.spec.output.secret_name,
            },
        );
        status::refresh_token_expiry(&mut desired, now, self.refresh_token_warning);
        let next_change = status::next_status_change(&desired, now, self.refresh_token_warning);
        self.write_status(credential, desired).await?;
        Ok(self.requeue_at([Some(refresh_at), next_change].into_iter().flatten().min()))
    }
}

/// An event that no status transition calls for.
pub(super) fn notice(warning: bool, reason: &'static str, message: String) -> Notice {
    Notice {
        warning,
        reason,
        action: "WriteSecret",
        message: status::cap_bytes(&message, status::MAX_EVENT_NOTE_BYTES),
    }
}
