//! The reconcile loop: the I/O shell around the pure core. One reconcile of
//! one credential runs these stages, each in its own file:
//!
//! 1. **admit** (`crate::validate::admit`, pure, before any Secret is read):
//!    the namespace is served, the endpoints allowed, the refresh-token Secret
//!    this credential's alone, its output name no other credential's input;
//! 2. **gather** (`gather`): the credential as of our last write, the output
//!    Secret's owner, and, only when a refresh is planned, the input Secrets
//!    that opted in (their `type`); the stored refresh token is kept sealed
//!    first (`sealing`);
//!    then **validate** (`crate::validate`, pure): client, refresh token;
//! 3. **decide** (`crate::decision`, pure): whether to call the token endpoint;
//! 4. **act** (`refresh`): rate-limit gate, fence, token call, rotated token
//!    stored first, then the output Secret;
//! 5. **record** (`write`): status, events, and when to come back.
//!
//! The operator writes only its own output Secrets and refresh-token Secrets
//! that opted in; it sends tokens only to endpoints the platform allows.
//!
//! `watches` sets up the caches and watches that feed it. Writes: an idle
//! reconcile writes nothing; a refresh writes the output Secret and the
//! status, plus the refresh-token Secret (first) when the provider rotated it.

mod gate;
mod gather;
mod lifecycle;
mod memory;
mod output;
mod owned_outputs;
mod refresh;
mod sealing;
mod watches;
mod write;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::DefaultKeyedRateLimiter;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use thiserror::Error;
use tracing::{Instrument, debug, info_span, warn};

use crate::backlog::Backlog;
use crate::breaker::{Calls, Shares};
use crate::clock::SharedClock;
use crate::decision::{self, Plan, View};
use crate::endpoint::{EndpointPolicy, TokenEndpoint};
use crate::keys::Keys;
use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::references::SecretReferences;
use crate::resource::{FORCE_REFRESH_ANNOTATION, OAuthCredential};
use crate::schedule;
use crate::token_client::TokenClient;
use crate::validate;

pub use memory::Memory;
pub use watches::{ControllerConfig, ShardScope, Stopped, run};

/// Field manager of every write, and the event reporter.
pub const FIELD_MANAGER: &str = "oauth-token-operator";

/// Everything a reconcile needs. Built once, shared.
pub struct Context {
    client: Client,
    tokens: TokenClient,
    recorder: Recorder,
    credentials: Store<OAuthCredential>,
    owned_secrets: owned_outputs::OwnedOutputs,
    references: SecretReferences,
    keys: Keys,
    fence: Fence,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    /// Where tokens may be sent.
    endpoints: EndpointPolicy,
    /// The operator's own namespace, never served.
    operator_namespace: String,
    /// What this process remembers per credential between reconciles.
    memory: Arc<memory::Memory>,
    /// Token-endpoint calls per second per host (the rate limit).
    rate_limit: DefaultKeyedRateLimiter<String>,
    /// Credentials waiting for a rate limit, by token expiry.
    backlog: Mutex<Backlog>,
    /// Token-endpoint calls in flight, per endpoint and namespace, and each
    /// endpoint's circuit breaker.
    calls: Mutex<Calls>,
    shares: Shares,
    /// The `token_type`s accepted from providers, as written to outputs.
    token_types: Vec<String>,
    /// How long before a refresh token's own expiry the credential warns.
    refresh_token_warning: Duration,
    /// The shortest interval between scheduled refreshes.
    min_refresh_interval: Duration,
    endpoint_rate: f64,
    /// Reconciles that may wait for a rate limit at once; the rest of the
    /// backlog steps aside.
    waiting_slots: usize,
}

/// A reconcile that could not finish; retried by `error_policy`. Carries no
/// secret: Kubernetes API errors name objects, never Secret data.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the rotated refresh token could not be stored after {0} conflicting writes")]
    RotationNotStored(u32),
    #[error("the refresh-token Secret was deleted while a refresh token was being stored in it")]
    RefreshTokenSecretGone,
    #[error("the refresh-token Secret changed while a refresh token was being stored in it")]
    RefreshTokenSecretChanged,
}

impl Error {
    /// A fixed, small set, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. }
            | Error::RefreshTokenSecretGone
            | Error::RefreshTokenSecretChanged => "kubernetes-api",
            Error::RotationNotStored(_) => "rotation-conflict",
        }
    }
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

/// One reconcile of one credential, in one span that names it.
pub async fn reconcile(
    credential: Arc<OAuthCredential>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let span = info_span!(
        "reconcile",
        namespace = credential.namespace().unwrap_or_default(),
        credential = credential.name_any()
    );
    stages(credential, &ctx).instrument(span).await
}

/// The stages, in order.
async fn stages(credential: Arc<OAuthCredential>, ctx: &Context) -> Result<Action, Error> {
    let credential = ctx.current(credential);
    // A credential being deleted gets its cleanup (`lifecycle`) and nothing
    // else; one whose deletion will need cleanup gets the finalizer.
    if credential.metadata.deletion_timestamp.is_some() {
        return ctx.finalize(&credential).await;
    }
    let credential = ctx.keep_finalizer(credential).await?;
    // Admit, before any Secret is read.
    let endpoint = match ctx.admit(&credential) {
        Ok(endpoint) => endpoint,
        Err(refused) => return ctx.refuse(&credential, &refused).await,
    };
    // Gather: a sealed refresh token, the output's owner and state.
    let credential = ctx.keep_sealed(credential, &endpoint).await?;
    let output = ctx.output_secret(&credential).await?;
    // Decide.
    let now = ctx.now();
    let generation = credential.metadata.generation.unwrap_or(0);
    let plan = decision::decide(
        &View {
            generation,
            status: credential.status.as_ref(),
            force_refresh: force_annotation(&credential),
            output,
            restorable: ctx.memory.can_restore(&credential, now),
        },
        now,
    );
    debug!(?plan, "decided");
    // Act and record.
    let action = match plan {
        Plan::Conflict => ctx.report_conflict(&credential, now).await,
        Plan::Adopt {
            expires_at,
            refreshed_at,
        } => {
            ctx.adopt(&credential, &endpoint, expires_at, refreshed_at)
                .await
        }
        Plan::Restore => ctx.restore(&credential, output).await,
        Plan::WaitUntil(at) => ctx.settle(&credential, now, Some(at)).await,
        Plan::RefreshIfInputsChanged { since, retry_at } => {
            let mut current = ctx.input_versions(&credential).await?;
            if !since.key_ring.is_empty() {
                current.key_ring = refresh::key_ring_ids(&ctx.keys.current());
            }
            if current == since {
                ctx.settle(&credential, now, retry_at).await
            } else {
                let why = decision::RefreshReason::InputsChanged;
                ctx.refresh(&credential, &endpoint, output, why).await
            }
        }
        Plan::Refresh(reason) => match ctx.step_aside(&credential, &endpoint) {
            Some(delay) => Ok(Action::requeue(delay)),
            None => ctx.refresh(&credential, &endpoint, output, reason).await,
        },
    }?;
    ctx.memory.mark_scheduled(&credential, &ctx.metrics);
    Ok(action)
}

/// The force-refresh annotation's value, if any.
fn force_annotation(credential: &OAuthCredential) -> Option<&str> {
    credential
        .annotations()
        .get(FORCE_REFRESH_ANNOTATION)
        .map(String::as_str)
}

/// Retries a reconcile that failed on the Kubernetes API after 5-10 s.
pub fn error_policy(credential: Arc<OAuthCredential>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error(error.category());
    warn!(
        namespace = credential.namespace().unwrap_or_default(),
        name = credential.name_any(),
        category = error.category(),
        %error,
        "reconcile failed; retrying"
    );
    let jitter = schedule::unit_interval(&format!(
        "{}{}",
        credential.name_any(),
        ctx.clock.now().as_millisecond()
    ));
    Action::requeue(Duration::from_millis(5_000 + (jitter * 5_000.0) as u64))
}

impl Context {
    /// Admission: whether this credential may lead to any read, write or
    /// call at all; its token endpoint if so.
    fn admit(&self, credential: &OAuthCredential) -> Result<TokenEndpoint, validate::Invalid> {
        let namespace = credential.namespace().unwrap_or_default();
        let name = credential.name_any();
        let spec = &credential.spec;
        let holder = self
            .references
            .refresh_secret_holder(&namespace, &spec.refresh_token_secret_ref.name)
            .filter(|holder| *holder != name);
        let user = self
            .references
            .input_user(&namespace, &spec.output.secret_name, &name);
        validate::admit(&validate::Admission {
            namespace: &namespace,
            name: &name,
            spec,
            operator_namespace: &self.operator_namespace,
            policy: &self.endpoints,
            refresh_secret_holder: holder.as_deref(),
            output_used_by: user.as_deref(),
        })
    }

    /// The current time in whole seconds: status stores whole seconds, and a
    /// status rebuilt from the same facts must compare equal to the stored one.
    fn now(&self) -> Timestamp {
        schedule::whole_seconds(self.clock.now())
    }

    /// Requeue at `at`, or wait for a change when nothing is scheduled. The
    /// wait is measured from the precise clock, not the whole second that
    /// decisions use: from a truncated `now` the wake-up would come late by
    /// the fraction of a second truncated away (measured: up to 1 s).
    fn requeue_at(&self, at: Option<Timestamp>) -> Action {
        match at {
            Some(at) => {
                let wait = Duration::try_from(at.duration_since(self.clock.now()))
                    .unwrap_or(Duration::ZERO);
                Action::requeue(wait)
            }
            None => Action::await_change(),
        }
    }
}
