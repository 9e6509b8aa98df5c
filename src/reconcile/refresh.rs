//! Act: a refresh that `decide` asked for. Gathers the input Secrets,
//! validates them, and (when valid) passes the rate-limit gate and the fence,
//! calls the token endpoint, stores a rotated refresh token first, then
//! writes the output Secret. What came of it goes to `write` to be recorded.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::{debug, warn};

use super::gather::Gathered;
use super::sealing::SEALED_FORMAT;
use super::{Context, Error, FIELD_MANAGER, force_annotation, kube_err};
use crate::classify::{self, Token};
use crate::decision::{self, OutputSecret, RefreshReason};
use crate::endpoint::TokenEndpoint;
use crate::input_secrets::version_of;
use crate::output_secret;
use crate::resource::{OAuthCredential, RefreshTokenState};
use crate::schedule;
use crate::seal::{Format, KeyRing};
use crate::status::Attempt;
use crate::validate::{self, Ready};

/// What came of a refresh that got past validation.
pub(super) enum Outcome {
    /// Credentials whose tokens expire sooner wait for the same rate limit:
    /// come back after this.
    SteppedAside(Duration),
    /// This replica's hold on the Lease might end during the call.
    NotLeader,
    /// The output name turned out to belong to someone else.
    Conflict,
    /// The token endpoint refused, or could not be reached.
    Rejected {
        failure: classify::Failure,
        /// The precise time of the answer, which backoff counts from.
        answered_at: Timestamp,
        latency: Duration,
    },
    Refreshed(Refreshed),
}

pub(super) struct Refreshed {
    pub token: Token,
    /// When the call was made (whole seconds) and answered (precisely).
    pub sent_at: Timestamp,
    pub answered_at: Timestamp,
    pub expires_at: Timestamp,
    /// The refresh-token Secret after this refresh (and any rotation).
    pub refresh_token: RefreshTokenState,
    pub latency: Duration,
}

impl Context {
    /// Gather, validate, act, record: one refresh attempt.
    pub(super) async fn refresh(
        &self,
        credential: &OAuthCredential,
        endpoint: &TokenEndpoint,
        output: OutputSecret,
        why: RefreshReason,
    ) -> Result<Action, Error> {
        let gathered = self.gather(credential, endpoint).await?;
        let attempt = Attempt {
            now: self.now(),
            generation: credential.metadata.generation.unwrap_or(0),
            inputs: gathered.inputs.clone(),
            forced: decision::pending_force(
                force_annotation(credential),
                credential.status.as_ref(),
            ),
        };
        let keys = self.keys.current();
        let ns = credential.namespace().unwrap_or_default();
        let input = gathered.input(credential, &ns, endpoint, &keys);
        let ready = match validate::validate(&input) {
            Ok(ready) => ready,
            Err(invalid) => {
                let problem = (&invalid).into();
                return self
                    .record_failure(credential, attempt, problem, None, why.as_str())
                    .await;
            }
        };
        let outcome = self
            .act(credential, &gathered, &ready, output, &keys)
            .await?;
        self.record(credential, attempt, outcome, ready.refresh_before, why)
            .await
    }

    /// Rate-limit gate, fence, token call, rotation, output Secret.
    async fn act(
        &self,
        credential: &OAuthCredential,
        gathered: &Gathered,
        ready: &Ready,
        output: OutputSecret,
        keys: &KeyRing,
    ) -> Result<Outcome, Error> {
        if let Some(delay) = self
            .wait_for_rate_limit(credential, ready.endpoint.host())
            .await
        {
            return Ok(Outcome::SteppedAside(delay));
        }
        let sent_at = self.now();
        // Fencing: a replica whose hold on the Lease might end during the
        // call does not start it; the next leader will.
        if !self.fence.allows(self.clock.now()) {
            debug!("not calling the token endpoint: leadership not assured for the call");
            return Ok(Outcome::NotLeader);
        }
        let started = self.clock.instant();
        let clock = self.clock.clone();
        let result = self
            .tokens
            .refresh(&ready.endpoint, &ready.client, &ready.refresh_token, || {
                clock.now()
            })
            .await;
        let latency = self.clock.instant().saturating_duration_since(started);
        let answered_at = self.clock.now();
        let outcome = result.as_ref().map_or_else(|f| f.reason, |_| "success");
        self.metrics.refresh(outcome, latency);
        let token = match result {
            Ok(token) => token,
            Err(failure) => {
                return Ok(Outcome::Rejected {
                    failure,
                    answered_at,
                    latency,
                });
            }
        };
        let refresh_token = self
            .store_rotation(credential, gathered, ready, &token, keys)
            .await?;
        let lifetime =
            SignedDuration::try_from(token.expires_in).expect("classify bounds expires_in");
        let expires_at = schedule::whole_seconds(sent_at + lifetime);
        if !self
            .write_output(credential, output, &token, expires_at)
            .await?
        {
            return Ok(Outcome::Conflict);
        }
        Ok(Outcome::Refreshed(Refreshed {
            token,
            sent_at,
            answered_at,
            expires_at,
            refresh_token,
            latency,
        }))
    }

    /// A rotated refresh token is the only copy of the grant: stored, sealed,
    /// before anything else. Returns the refresh-token Secret's state after.
    async fn store_rotation(
        &self,
        credential: &OAuthCredential,
        gathered: &Gathered,
        ready: &Ready,
        token: &Token,
        keys: &KeyRing,
    ) -> Result<RefreshTokenState, Error> {
        let current = gathered.refresh_secret.accepted();
        let unchanged = RefreshTokenState {
            secret_version: version_of(current),
            sealed_with: ready.sealed_with.as_ref().map(|(id, _)| id.clone()),
            format: ready
                .sealed_with
                .as_ref()
                .map(|(_, format)| format_name(*format)),
        };
        let (Some(rotated), Some(current)) = (&token.refresh_token, current) else {
            return Ok(unchanged);
        };
        let ns = credential.namespace().unwrap_or_default();
        let name = credential.name_any();
        let binding = validate::binding(&ns, &name, &ready.endpoint, &ready.client.client_id);
        match self
            .store_sealed(credential, current, rotated, keys, &binding)
            .await
        {
            Ok(version) => Ok(RefreshTokenState {
                secret_version: version,
                sealed_with: Some(keys.primary().to_string()),
                format: Some(SEALED_FORMAT.into()),
            }),
            Err(Error::RefreshTokenSecretChanged) => {
                // A person (or authorize) stored a new grant's token while
                // this refresh ran: it wins, and the next reconcile uses it.
                warn!(
                    "the refresh-token Secret got a new token during the refresh; keeping that one"
                );
                Ok(unchanged)
            }
            Err(error) => {
                // Kept in memory and stored first on the next attempt.
                self.memory
                    .keep_unstored_rotation(credential, rotated.clone());
                Err(error)
            }
        }
    }

    /// Creates or updates the output Secret; `false` when its name turned
    /// out to belong to someone else (never written, then).
    async fn write_output(
        &self,
        credential: &OAuthCredential,
        output: OutputSecret,
        token: &Token,
        expires_at: Timestamp,
    ) -> Result<bool, Error> {
        let secret = output_secret::build(credential, token, expires_at);
        let secrets: Api<Secret> = self.secrets(&credential.namespace().unwrap_or_default());
        let written = match output {
            OutputSecret::Absent => secrets
                .create(&PostParams::default(), &secret)
                .await
                .map(drop),
            OutputSecret::Owned => secrets
                .patch(
                    &credential.spec.output.secret_name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await
                .map(drop),
            // `decide` plans no refresh into a foreign Secret; should one
            // appear anyway, it is reported, never written.
            OutputSecret::Foreign => return Ok(false),
        };
        match written {
            Ok(()) => Ok(true),
            // Someone created a Secret of that name since we looked.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(kube_err("write output Secret")(error)),
        }
    }

    /// While the rate limit of the credential's token endpoint binds:
    /// whether enough credentials whose tokens expire sooner are waiting that
    /// this one should come back later (see `backlog`). Decided before any
    /// read.
    pub(super) fn step_aside(
        &self,
        credential: &OAuthCredential,
        endpoint: &TokenEndpoint,
    ) -> Option<Duration> {
        if self.backlog.lock().expect("lock").is_empty() {
            return None;
        }
        self.defer(credential, endpoint.host(), self.clock.instant(), false)
    }

    /// Waits for the per-endpoint rate limit, unless the credential steps
    /// aside for those whose tokens expire sooner; then the delay after which
    /// to come back.
    async fn wait_for_rate_limit(
        &self,
        credential: &OAuthCredential,
        host: &str,
    ) -> Option<Duration> {
        let host = host.to_string();
        if self.rate_limit.check_key(&host).is_err() {
            // Waiting (before the fence check, since the wait may be long).
            if let Some(delay) = self.defer(credential, &host, self.clock.instant(), true) {
                return Some(delay);
            }
            self.metrics.rate_limit_wait();
            self.rate_limit.until_key_ready(&host).await;
        }
        self.backlog
            .lock()
            .expect("lock")
            .leave(&backlog_key(credential));
        None
    }

    /// The one backlog check: step aside when enough credentials that expire
    /// sooner wait for `host`; otherwise, when `will_wait`, join the backlog.
    fn defer(
        &self,
        credential: &OAuthCredential,
        host: &str,
        now: Instant,
        will_wait: bool,
    ) -> Option<Duration> {
        let key = backlog_key(credential);
        let place = backlog_place(credential, self.clock.now());
        let mut backlog = self.backlog.lock().expect("lock");
        let delay = backlog.step_aside(
            host,
            &key,
            place,
            now,
            self.waiting_slots,
            self.endpoint_rate,
        );
        match delay {
            Some(_) => self.metrics.rate_limit_deferral(),
            None if will_wait => backlog.enter(host, &key, place, now + Duration::from_secs(60)),
            None => {}
        }
        delay
    }
}

/// A credential's key in the rate-limit backlog.
fn backlog_key(credential: &OAuthCredential) -> String {
    format!(
        "{}/{}",
        credential.namespace().unwrap_or_default(),
        credential.name_any()
    )
}

/// The credential's place in the rate-limit backlog: when its access token
/// expires, in unix seconds, while it is valid. A token that has already
/// expired, or none at all, goes after every valid one: saving the tokens
/// that can still be saved keeps the most workloads running (measured with
/// 1,000 credentials due at once and 312 already expired: serving those first
/// let 667 valid tokens expire).
fn backlog_place(credential: &OAuthCredential, now: Timestamp) -> i64 {
    const AFTER_EVERY_VALID_TOKEN: i64 = 1 << 40;
    match credential
        .status
        .as_ref()
        .and_then(|s| s.expires_at.as_ref())
    {
        Some(expiry) if expiry.0 > now => expiry.0.as_second(),
        Some(expiry) => AFTER_EVERY_VALID_TOKEN + expiry.0.as_second(),
        None => AFTER_EVERY_VALID_TOKEN,
    }
}

/// The sealed format as status records it.
fn format_name(format: Format) -> String {
    match format {
        Format::V1 => "v1".into(),
        Format::V2 => SEALED_FORMAT.into(),
    }
}
