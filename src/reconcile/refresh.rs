//! Act: a refresh that `decide` asked for. Gathers the input Secrets,
//! validates them, and (when valid) passes the rate-limit gate and the fence,
//! calls the token endpoint, stores a rotated refresh token first, then
//! writes the output Secret. What came of it goes to `write` to be recorded.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, info, warn};

use super::gather::Gathered;
use super::sealing::SEALED_FORMAT;
use super::{Context, Error, force_annotation};
use crate::breaker::{Answered, Refused};
use crate::classify::{self, Token};
use crate::decision::{self, OutputSecret, RefreshReason};
use crate::endpoint::TokenEndpoint;
use crate::input_secrets::version_of;
use crate::resource::{OAuthCredential, REFRESH_TOKEN_EXPIRES_AT_ANNOTATION, RefreshTokenState};
use crate::schedule;
use crate::seal::{Format, KeyRing};
use crate::status::{Attempt, Problem};
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
    /// The endpoint is paused (it kept not answering) until then.
    Paused(Instant),
    /// The new token could not be written to the output Secret (why); it is
    /// kept in memory and written again without another call.
    OutputNotWritten(String),
    /// The token endpoint refused, or could not be reached.
    Rejected {
        failure: classify::Failure,
        /// The precise time of the answer, which backoff counts from.
        answered_at: Timestamp,
        latency: Duration,
    },
    Refreshed(Refreshed),
}

/// A good answer of the token endpoint.
pub(super) struct Called {
    token: Token,
    sent_at: Timestamp,
    answered_at: Timestamp,
    latency: Duration,
}

#[derive(Clone)]
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

/// How soon a credential whose endpoint or namespace has its share of calls
/// in flight comes back: after 1-2 s, spread by credential.
fn busy_retry(credential: &OAuthCredential) -> Duration {
    let spread = schedule::unit_interval(&credential.uid().unwrap_or_default());
    Duration::from_millis(1_000 + (spread * 1_000.0) as u64)
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
        if let Some(pending) = self.memory.take_pending_output(credential)
            && pending.expires_at > self.now()
        {
            return self.deliver(credential, pending, output, why).await;
        }
        if self.share_full(credential, endpoint) {
            return Ok(Action::requeue(busy_retry(credential)));
        }
        if let Some(until) = self.paused_until(endpoint) {
            let attempt = Attempt {
                now: self.now(),
                generation: credential.metadata.generation.unwrap_or(0),
                inputs: self.input_versions(credential).await?,
                forced: None,
            };
            return self
                .record_pause(credential, attempt, &endpoint.origin(), until, why)
                .await;
        }
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
                let problem: Problem = (&invalid).into();
                let mut attempt = attempt;
                if matches!(invalid, validate::Invalid::SealedTokenUnreadable { .. }) {
                    attempt.inputs.key_ring = key_ring_ids(&keys);
                }
                info!(
                    outcome = problem.reason,
                    trigger = why.as_str(),
                    "refresh not attempted"
                );
                return self
                    .record_failure(credential, attempt, problem, None, why.as_str())
                    .await;
            }
        };
        let outcome = match self.call(credential, &ready).await {
            Ok(called) => {
                self.act(credential, &gathered, &ready, output, &keys, called)
                    .await?
            }
            Err(outcome) => outcome,
        };
        self.record(credential, attempt, outcome, ready.refresh_before, why)
            .await
    }

    /// Rate-limit gate, fence, the call's share, the token call, and the
    /// answer's content: the new token, or what to record instead.
    async fn call(&self, credential: &OAuthCredential, ready: &Ready) -> Result<Called, Outcome> {
        let endpoint = &ready.endpoint;
        if let Some(delay) = self.wait_for_rate_limit(credential, endpoint).await {
            return Err(Outcome::SteppedAside(delay));
        }
        let sent_at = self.now();
        // Fencing: a replica whose hold on the Lease might end during the
        // call does not start it; the next leader will.
        let (ns, name) = (
            credential.namespace().unwrap_or_default(),
            credential.name_any(),
        );
        if !self.fence.allows_for(&ns, &name, self.clock.instant()) {
            debug!("not calling the token endpoint: leadership not assured for the call");
            return Err(Outcome::NotLeader);
        }
        let mut slot = match self.start_call(credential, endpoint, self.shares) {
            Ok(slot) => slot,
            Err(Refused::Busy) => return Err(Outcome::SteppedAside(busy_retry(credential))),
            Err(Refused::Paused(until)) => return Err(Outcome::Paused(until)),
        };
        let started = self.clock.instant();
        let clock = self.clock.clone();
        let result = self
            .tokens
            .refresh(endpoint, &ready.client, &ready.refresh_token, || {
                clock.now()
            })
            .await
            .and_then(|token| classify::check_content(token, &self.token_types));
        let latency = self.clock.instant().saturating_duration_since(started);
        slot.answered(answered(&result), self.clock.instant());
        drop(slot);
        let answered_at = self.clock.now();
        let outcome = result.as_ref().map_or_else(|f| f.reason, |_| "success");
        self.metrics.refresh(outcome, latency);
        match result {
            Ok(token) => Ok(Called {
                token: without_echo(token, &ready.refresh_token),
                sent_at,
                answered_at,
                latency,
            }),
            Err(failure) => Err(Outcome::Rejected {
                failure,
                answered_at,
                latency,
            }),
        }
    }

    /// After a good answer: the rotated token stored first, then the output
    /// Secret. A failed output write keeps the new token in memory, to be
    /// written again without another call.
    async fn act(
        &self,
        credential: &OAuthCredential,
        gathered: &Gathered,
        ready: &Ready,
        output: OutputSecret,
        keys: &KeyRing,
        called: Called,
    ) -> Result<Outcome, Error> {
        let mut refresh_token = self
            .store_rotation(credential, gathered, ready, &called.token, keys)
            .await?;
        refresh_token.expires_at = refresh_token_expiry(&called, gathered).map(Time);
        let lifetime =
            SignedDuration::try_from(called.token.expires_in).expect("classify bounds expires_in");
        let refreshed = Refreshed {
            expires_at: schedule::whole_seconds(called.sent_at + lifetime),
            token: called.token,
            sent_at: called.sent_at,
            answered_at: called.answered_at,
            refresh_token,
            latency: called.latency,
        };
        self.publish_output(credential, refreshed, output).await
    }

    /// Writes the output Secret with a token obtained earlier whose write
    /// failed, without calling the token endpoint again.
    async fn deliver(
        &self,
        credential: &OAuthCredential,
        pending: Refreshed,
        output: OutputSecret,
        why: RefreshReason,
    ) -> Result<Action, Error> {
        let attempt = Attempt {
            now: self.now(),
            generation: credential.metadata.generation.unwrap_or(0),
            inputs: self.input_versions(credential).await?,
            forced: decision::pending_force(
                force_annotation(credential),
                credential.status.as_ref(),
            ),
        };
        let refresh_before = credential
            .spec
            .refresh_before
            .as_deref()
            .and_then(|t| schedule::parse_duration(t).ok());
        let outcome = self.publish_output(credential, pending, output).await?;
        self.record(credential, attempt, outcome, refresh_before, why)
            .await
    }

    /// Writes the output Secret: refreshed, a conflict, or kept for later.
    async fn publish_output(
        &self,
        credential: &OAuthCredential,
        refreshed: Refreshed,
        output: OutputSecret,
    ) -> Result<Outcome, Error> {
        match self.write_output(credential, output, &refreshed).await {
            Ok(true) => Ok(Outcome::Refreshed(refreshed)),
            Ok(false) => Ok(Outcome::Conflict),
            Err(error) => {
                let reason = error.to_string();
                self.memory.keep_pending_output(credential, refreshed);
                Ok(Outcome::OutputNotWritten(reason))
            }
        }
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
            expires_at: None,
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
                expires_at: None,
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
}

/// When the refresh token itself expires: as the provider said in this
/// answer, else as it said at consent (the annotation `authorize` left on the
/// refresh-token Secret); unknown otherwise.
fn refresh_token_expiry(called: &Called, gathered: &Gathered) -> Option<Timestamp> {
    let answered = called.token.refresh_token_expires_in.and_then(|lifetime| {
        let lifetime = SignedDuration::try_from(lifetime).ok()?;
        Some(schedule::whole_seconds(called.sent_at + lifetime))
    });
    answered.or_else(|| {
        gathered
            .refresh_secret
            .accepted()?
            .metadata
            .annotations
            .as_ref()?
            .get(REFRESH_TOKEN_EXPIRES_AT_ANNOTATION)?
            .parse()
            .ok()
    })
}

/// The sealed format as status records it.
fn format_name(format: Format) -> String {
    match format {
        Format::V1 => "v1".into(),
        Format::V2 => SEALED_FORMAT.into(),
    }
}

/// Whether the endpoint answered at all, for its circuit breaker: any HTTP
/// status counts; a timeout or a failed connection does not.
fn answered(result: &Result<Token, classify::Failure>) -> Answered {
    match result {
        Err(failure) if failure.http_status.is_none() && failure.unanswered() => Answered::No,
        _ => Answered::Yes,
    }
}

/// Some providers send the refresh token back unchanged on every refresh:
/// that is no rotation, and nothing needs storing.
fn without_echo(mut token: Token, sent: &SecretString) -> Token {
    if token
        .refresh_token
        .as_ref()
        .is_some_and(|r| r.expose_secret() == sent.expose_secret())
    {
        token.refresh_token = None;
    }
    token
}

/// The key ids a `SealedTokenUnreadable` failure records (see
/// `Inputs::key_ring`).
pub(super) fn key_ring_ids(keys: &crate::seal::KeyRing) -> String {
    keys.key_ids().join(",")
}
