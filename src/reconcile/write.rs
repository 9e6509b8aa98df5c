//! Record: the status an outcome calls for (built by the pure `status`
//! module), written only when it differs from the stored one; the events
//! its transitions call for; and when to come back.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::SignedDuration;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::refresh::{Outcome, Refreshed};
use super::{Context, Error, FIELD_MANAGER, force_annotation, kube_err};
use crate::decision::{self, RefreshReason};
use crate::resource::{FailureCategory, Inputs, OAuthCredential, OAuthCredentialStatus};
use crate::schedule;
use crate::status::{self, Attempt, Failed, Problem, Success, reason};
use crate::validate::Invalid;

/// How often a credential whose output name is taken looks again.
const CONFLICT_RECHECK: Duration = Duration::from_secs(10);

impl Context {
    /// Records what came of a refresh that got past validation.
    pub(super) async fn record(
        &self,
        credential: &OAuthCredential,
        mut attempt: Attempt<'_>,
        outcome: Outcome,
        refresh_before: Option<Duration>,
        why: RefreshReason,
    ) -> Result<Action, Error> {
        match outcome {
            Outcome::SteppedAside(delay) => Ok(Action::requeue(delay)),
            Outcome::NotLeader => Ok(Action::requeue(Duration::from_secs(1))),
            Outcome::Conflict => self.report_conflict(credential, attempt.now).await,
            Outcome::Rejected {
                failure,
                answered_at,
                latency,
            } => {
                let problem = Problem::from(&failure);
                info!(
                    outcome = failure.reason,
                    category = ?problem.category,
                    http_status = failure.http_status,
                    latency_ms = latency.as_millis() as u64,
                    trigger = why.as_str(),
                    "refresh failed"
                );
                attempt.now = schedule::whole_seconds(answered_at);
                let retry = Some((answered_at, failure.retry_after));
                self.record_failure(credential, attempt, problem, retry, why.as_str())
                    .await
            }
            Outcome::Refreshed(refreshed) => {
                self.record_success(credential, attempt, refreshed, refresh_before, why)
                    .await
            }
            Outcome::Paused(until) => {
                let origin =
                    crate::endpoint::TokenEndpoint::from_provider(&credential.spec.provider, true)
                        .map(|e| e.origin())
                        .unwrap_or_default();
                self.record_pause(credential, attempt, &origin, until, why)
                    .await
            }
            Outcome::OutputNotWritten(error) => {
                let problem = Problem {
                    category: FailureCategory::Transient,
                    reason: reason::OUTPUT_WRITE_FAILED,
                    message: format!(
                        "a new access token was obtained but could not be written to Secret {} ({error}); \
                         writing it again with backoff, without another call to the token endpoint",
                        credential.spec.output.secret_name
                    ),
                    provider: Default::default(),
                    http_status: None,
                };
                warn!(
                    outcome = problem.reason,
                    "output Secret not written; token kept"
                );
                self.record_failure(credential, attempt, problem, None, why.as_str())
                    .await
            }
        }
    }

    /// The endpoint is paused by its circuit breaker: no call, and a retry
    /// when the pause ends.
    pub(super) async fn record_pause(
        &self,
        credential: &OAuthCredential,
        attempt: Attempt<'_>,
        origin: &str,
        until: std::time::Instant,
        why: RefreshReason,
    ) -> Result<Action, Error> {
        let resume = self.wall_time_of(until);
        let problem = Problem {
            category: FailureCategory::Transient,
            reason: reason::ENDPOINT_PAUSED,
            message: format!(
                "the token endpoint {origin} did not answer {} times in a row; calls to it are paused \
                 until {resume} (other endpoints are not affected)",
                crate::breaker::OPEN_AFTER
            ),
            provider: Default::default(),
            http_status: None,
        };
        let retry_at = Some(schedule::whole_seconds(resume) + SignedDuration::from_secs(1));
        self.write_failure(credential, attempt, problem, retry_at, why.as_str())
            .await
    }

    async fn record_success(
        &self,
        credential: &OAuthCredential,
        attempt: Attempt<'_>,
        refreshed: Refreshed,
        refresh_before: Option<Duration>,
        why: RefreshReason,
    ) -> Result<Action, Error> {
        let expires_at = refreshed.expires_at;
        let scheduled = schedule::refresh_time(
            refreshed.sent_at,
            expires_at,
            refresh_before,
            &format!("{}/{expires_at}", jitter_seed(credential)),
        );
        // A provider issuing tokens shorter-lived than the floor gets the
        // floor, and says so, rather than a hot loop.
        let floor = refreshed.sent_at
            + SignedDuration::try_from(self.min_refresh_interval).expect("flag is bounded");
        let refresh_at = scheduled.max(floor);
        let short_lifetime = (scheduled < floor).then_some(self.min_refresh_interval);
        let now = schedule::whole_seconds(refreshed.answered_at);
        let mut desired = status::after_success(
            credential.status.as_ref(),
            Success {
                now,
                generation: attempt.generation,
                expires_at,
                refresh_at,
                scope: refreshed.token.scope.as_deref(),
                output_secret: &credential.spec.output.secret_name,
                forced: attempt.forced,
                refresh_token: refreshed.refresh_token,
                short_lifetime,
            },
        );
        info!(
            outcome = "success",
            trigger = why.as_str(),
            rotated = refreshed.token.refresh_token.is_some(),
            expires_at = %expires_at,
            refresh_at = %refresh_at,
            latency_ms = refreshed.latency.as_millis() as u64,
            "refreshed"
        );
        status::refresh_token_expiry(&mut desired, now, self.refresh_token_warning);
        let next_change = status::next_status_change(&desired, now, self.refresh_token_warning);
        self.write_status(credential, desired).await?;
        Ok(self.requeue_at([Some(refresh_at), next_change].into_iter().flatten().min()))
    }

    /// Records a failure (or an attempt that could not be made). `retry`
    /// is when the answer came and the provider's `Retry-After`; without it
    /// the backoff counts from the attempt's time.
    pub(super) async fn record_failure(
        &self,
        credential: &OAuthCredential,
        attempt: Attempt<'_>,
        problem: Problem,
        retry: Option<(Timestamp, Option<Duration>)>,
        trigger: &'static str,
    ) -> Result<Action, Error> {
        let (from, retry_after) = retry.unwrap_or((attempt.now, None));
        let attempts = status::failed_attempts_after_failure(
            credential.status.as_ref(),
            attempt.forced.is_some(),
        );
        let valid_until = credential
            .status
            .as_ref()
            .and_then(|s| s.expires_at.as_ref())
            .map(|t| t.0);
        // From the precise time of the answer: retry_time rounds up, so a
        // Retry-After is never cut short by the truncation.
        let retry_at = schedule::retry_time(
            from,
            problem.category,
            attempts,
            retry_after,
            &jitter_seed(credential),
            valid_until,
        );
        self.write_failure(credential, attempt, problem, retry_at, trigger)
            .await
    }

    /// Writes the status of a failure to retry at `retry_at` (never, when
    /// `None`), and says when to come back.
    async fn write_failure(
        &self,
        credential: &OAuthCredential,
        attempt: Attempt<'_>,
        problem: Problem,
        retry_at: Option<Timestamp>,
        trigger: &'static str,
    ) -> Result<Action, Error> {
        let now = attempt.now;
        debug!(
            outcome = problem.reason,
            trigger,
            ?retry_at,
            "recording a failure"
        );
        let failed = Failed {
            attempt,
            problem,
            retry_at,
        };
        let desired = status::after_failure(credential.status.as_ref(), failed);
        let next_change = status::next_status_change(&desired, now, self.refresh_token_warning);
        self.write_status(credential, desired).await?;
        Ok(self.requeue_at([retry_at, next_change].into_iter().flatten().min()))
    }

    /// A credential refused at admission: status says why (written once, not
    /// on every reconcile), and nothing else happens. It is looked at again
    /// when it changes, or when the credentials it conflicts with do.
    pub(super) async fn refuse(
        &self,
        credential: &OAuthCredential,
        refused: &Invalid,
    ) -> Result<Action, Error> {
        let problem = Problem::from(refused);
        let now = self.now();
        let generation = credential.metadata.generation.unwrap_or(0);
        let recorded = credential.status.as_ref().is_some_and(|s| {
            s.failed_attempts > 0
                && s.observed_generation == Some(generation)
                && s.last_failure
                    .as_ref()
                    .is_some_and(|f| f.reason == problem.reason && f.message == problem.message)
        });
        if recorded {
            return self.settle(credential, now, None).await;
        }
        info!(
            outcome = problem.reason,
            "credential refused; nothing read, nothing called"
        );
        let attempt = Attempt {
            now,
            generation,
            // No Secret was read: any version of the inputs counts as new
            // once the refusal is lifted.
            inputs: Inputs {
                generation,
                ..Default::default()
            },
            forced: decision::pending_force(
                force_annotation(credential),
                credential.status.as_ref(),
            ),
        };
        self.record_failure(credential, attempt, problem, None, "admission")
            .await
    }

    /// The output name belongs to someone else: say so and look again later.
    pub(super) async fn report_conflict(
        &self,
        credential: &OAuthCredential,
        now: Timestamp,
    ) -> Result<Action, Error> {
        let mut desired = status::after_conflict(
            credential.status.as_ref(),
            now,
            credential.metadata.generation.unwrap_or(0),
            &credential.spec.output.secret_name,
        );
        // A forced refresh is answered too (`refresh` waits for it): with
        // the conflict.
        let status = credential.status.as_ref();
        if let Some(forced) = decision::pending_force(force_annotation(credential), status) {
            desired.last_forced_refresh = Some(forced.to_string());
        }
        self.write_status(credential, desired).await?;
        // A foreign Secret is not watched (only Secrets the operator owns or
        // that opted in as inputs are), so its going is noticed by looking
        // again: one metadata read per conflicted credential every 10 s.
        Ok(Action::requeue(CONFLICT_RECHECK))
    }

    /// Nothing to call: bring the status up to date with the clock (a token
    /// may have expired) and sleep until the next thing that can happen.
    pub(super) async fn settle(
        &self,
        credential: &OAuthCredential,
        now: Timestamp,
        wake: Option<Timestamp>,
    ) -> Result<Action, Error> {
        let generation = credential.metadata.generation.unwrap_or(0);
        let warning = self.refresh_token_warning;
        let desired = credential.status.as_ref().map(|s| {
            let mut desired = status::at_time(s, now, generation);
            status::refresh_token_expiry(&mut desired, now, warning);
            desired
        });
        let next_change = desired
            .as_ref()
            .and_then(|s| status::next_status_change(s, now, warning));
        if let Some(desired) = desired {
            self.write_status(credential, desired).await?;
        }
        Ok(self.requeue_at([wake, next_change].into_iter().flatten().min()))
    }

    /// Writes `status` (if changed) and returns the credential as it now is.
    pub(super) async fn with_status(
        &self,
        credential: Arc<OAuthCredential>,
        status: OAuthCredentialStatus,
    ) -> Result<Arc<OAuthCredential>, Error> {
        self.write_status(&credential, status).await?;
        let mut updated = (*credential).clone();
        if let Some(written) = self.memory.last_written(&credential) {
            updated.status = Some(written);
        }
        Ok(Arc::new(updated))
    }

    /// Writes the status if it differs from the stored one, then emits the
    /// events its transitions call for.
    pub(super) async fn write_status(
        &self,
        credential: &OAuthCredential,
        desired: OAuthCredentialStatus,
    ) -> Result<(), Error> {
        let old = credential.status.as_ref();
        // Compare in stored form, as the API server will return it.
        let desired = stored_form(desired);
        if old == Some(&desired) {
            return Ok(());
        }
        let api: Api<OAuthCredential> = Api::namespaced(
            self.client.clone(),
            &credential.namespace().unwrap_or_default(),
        );
        let patch = json!({
            "apiVersion": OAuthCredential::api_version(&()),
            "kind": OAuthCredential::kind(&()),
            "status": desired,
        });
        api.patch_status(
            &credential.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kube_err("write status"))?;
        let notices = status::notices(old, &desired);
        self.memory.wrote(credential, desired, self.clock.instant());
        self.publish(credential, notices).await;
        Ok(())
    }

    pub(super) async fn publish(&self, credential: &OAuthCredential, notices: Vec<status::Notice>) {
        // Without the resourceVersion, a repeat of the same event is
        // recognised and aggregated (a series) instead of created anew.
        let mut reference = credential.object_ref(&());
        reference.resource_version = None;
        for notice in notices {
            let event = Event {
                type_: if notice.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: notice.reason.into(),
                note: Some(notice.message),
                action: notice.action.into(),
                secondary: None,
            };
            if let Err(error) = self.recorder.publish(&event, &reference).await {
                warn!(%error, "could not publish event");
            }
        }
    }
}

/// Seeds the jitter of a credential's schedule and backoff: stable for one
/// spec of one credential.
pub(super) fn jitter_seed(credential: &OAuthCredential) -> String {
    format!(
        "{}/{}",
        credential.uid().unwrap_or_default(),
        credential.metadata.generation.unwrap_or(0)
    )
}

fn stored_form(status: OAuthCredentialStatus) -> OAuthCredentialStatus {
    serde_json::to_value(&status)
        .and_then(serde_json::from_value)
        .expect("status round-trips through JSON")
}
