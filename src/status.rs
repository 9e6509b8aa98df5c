//! The status the credential should have after an outcome: conditions, times,
//! failure record. Pure builders from the previous status; the reconciler
//! writes the result only when it differs from what is stored.
//!
//! `lastTransitionTime` changes only when a condition's status flips, so an
//! unchanged situation yields an identical status and no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::classify;
use crate::resource::{
    Condition, Failure, FailureCategory, Inputs, OAuthCredentialStatus, READY, REAUTH_REQUIRED,
    RefreshTokenState,
};

/// Reasons of the `Ready` condition that are not failure reasons.
pub mod reason {
    pub const TOKEN_VALID: &str = "TokenValid";
    pub const REFRESH_FAILING: &str = "RefreshFailing";
    pub const TOKEN_EXPIRED: &str = "TokenExpired";
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    pub const REFRESH_SUCCEEDED: &str = "RefreshSucceeded";
    pub const NOT_YET_REFRESHED: &str = "NotYetRefreshed";
    pub const RETRYING: &str = "Retrying";
    pub const REFRESH_TOKEN_MISSING: &str = "RefreshTokenMissing";
    pub const CLIENT_SECRET_MISSING: &str = "ClientSecretMissing";
    pub const INVALID_TOKEN_ENDPOINT: &str = "InvalidTokenEndpoint";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SEALED_TOKEN_UNREADABLE: &str = "SealedTokenUnreadable";
    pub const SEALED_FOR_ANOTHER_CLIENT: &str = "SealedForAnotherClient";
    pub const SECRET_NOT_ACCEPTED: &str = "SecretNotAccepted";
    pub const ENDPOINT_NOT_ALLOWED: &str = "EndpointNotAllowed";
    pub const NAMESPACE_NOT_SERVED: &str = "NamespaceNotServed";
    pub const REFRESH_TOKEN_SECRET_SHARED: &str = "RefreshTokenSecretShared";
    pub const OUTPUT_NAME_IN_USE: &str = "OutputNameInUse";
    pub const OUTPUT_WRITE_FAILED: &str = "OutputWriteFailed";
    pub const ENDPOINT_PAUSED: &str = "EndpointPaused";
    pub const LIFETIME_BELOW_MINIMUM: &str = "LifetimeBelowMinimum";
    pub const REFRESH_TOKEN_EXPIRING: &str = "RefreshTokenExpiring";
}

/// A refresh that succeeded.
pub struct Success<'a> {
    pub now: Timestamp,
    pub generation: i64,
    pub expires_at: Timestamp,
    pub refresh_at: Timestamp,
    pub scope: Option<&'a str>,
    pub output_secret: &'a str,
    /// The force-refresh annotation value this attempt acted on.
    pub forced: Option<&'a str>,
    /// The refresh-token Secret after this refresh (and any rotation).
    pub refresh_token: RefreshTokenState,
    /// The minimum refresh interval, when the token lives shorter than it
    /// allows (the next refresh then waits for the floor).
    pub short_lifetime: Option<std::time::Duration>,
}

/// What went wrong, whichever stage found it: who can fix it, the reason, a
/// sentence for a person, and the provider's own words when it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub category: FailureCategory,
    pub reason: &'static str,
    pub message: String,
    pub provider: classify::ProviderError,
    pub http_status: Option<u16>,
}

impl From<&classify::Failure> for Problem {
    fn from(failure: &classify::Failure) -> Self {
        Problem {
            category: failure.category,
            reason: failure.reason,
            message: failure.message(),
            provider: (*failure.provider).clone(),
            http_status: failure.http_status,
        }
    }
}

/// The attempt an outcome belongs to: when, with which inputs, and which
/// force-refresh request it acts on.
#[derive(Clone, Debug)]
pub struct Attempt<'a> {
    pub now: Timestamp,
    pub generation: i64,
    pub inputs: Inputs,
    pub forced: Option<&'a str>,
}

/// A failed attempt, or an attempt that could not be made.
pub struct Failed<'a> {
    pub attempt: Attempt<'a>,
    pub problem: Problem,
    /// When to try again; `None` for failures that wait for a person.
    pub retry_at: Option<Timestamp>,
}

/// Consecutive failures after one more failure. A forced refresh resets the
/// count (and so the backoff) first.
pub fn failed_attempts_after_failure(old: Option<&OAuthCredentialStatus>, forced: bool) -> u32 {
    let previous = if forced {
        0
    } else {
        old.map_or(0, |s| s.failed_attempts)
    };
    previous.saturating_add(1)
}

pub fn after_success(old: Option<&OAuthCredentialStatus>, s: Success<'_>) -> OAuthCredentialStatus {
    let mut status = old.cloned().unwrap_or_default();
    status.observed_generation = Some(s.generation);
    status.expires_at = Some(Time(s.expires_at));
    status.refresh_at = Some(Time(s.refresh_at));
    status.last_refresh_time = Some(Time(s.now));
    status.failed_attempts = 0;
    status.granted_scopes = s.scope.map(split_scopes).unwrap_or_default();
    status.refresh_token = Some(s.refresh_token);
    if let Some(forced) = s.forced {
        status.last_forced_refresh = Some(forced.to_string());
    }
    let (ready_reason, message) = match s.short_lifetime {
        None => (
            reason::TOKEN_VALID,
            format!(
                "Secret {} holds an access token valid until {}",
                s.output_secret, s.expires_at
            ),
        ),
        Some(floor) => (
            reason::LIFETIME_BELOW_MINIMUM,
            format!(
                "Secret {} holds an access token valid until {}, but the provider issues tokens that \
                 live shorter than the minimum refresh interval ({} s, --min-refresh-interval): the next \
                 refresh waits for it, so the token is expired part of the time; ask for longer-lived \
                 tokens",
                s.output_secret,
                s.expires_at,
                floor.as_secs()
            ),
        ),
    };
    set_condition(
        &mut status,
        READY,
        "True",
        ready_reason,
        message,
        s.now,
        s.generation,
    );
    set_condition(
        &mut status,
        REAUTH_REQUIRED,
        "False",
        reason::REFRESH_SUCCEEDED,
        "the provider accepted the refresh token".into(),
        s.now,
        s.generation,
    );
    status
}

pub fn after_failure(old: Option<&OAuthCredentialStatus>, f: Failed<'_>) -> OAuthCredentialStatus {
    let Failed {
        attempt,
        problem,
        retry_at,
    } = f;
    let (now, generation) = (attempt.now, attempt.generation);
    let mut status = old.cloned().unwrap_or_default();
    status.failed_attempts = failed_attempts_after_failure(old, attempt.forced.is_some());
    status.observed_generation = Some(generation);
    status.refresh_at = retry_at.map(Time);
    if let Some(forced) = attempt.forced {
        status.last_forced_refresh = Some(forced.to_string());
    }
    status.last_failure = Some(Box::new(Failure {
        time: Time(now),
        category: problem.category,
        reason: problem.reason.to_string(),
        message: problem.message.clone(),
        error: problem.provider.error.clone(),
        error_description: problem.provider.description.clone(),
        error_subtype: problem.provider.subtype.clone(),
        http_status: problem.http_status,
        inputs: attempt.inputs,
    }));

    set_ready_after_failure(&mut status, &problem, now, generation);
    set_reauth_after_failure(&mut status, problem, now, generation);
    status
}

/// `Ready` stays `True` while the current token is valid; after that it is
/// `False`, for `TokenExpired` or, before any token, the failure's reason.
fn set_ready_after_failure(
    status: &mut OAuthCredentialStatus,
    problem: &Problem,
    now: Timestamp,
    generation: i64,
) {
    let valid_until = status.expires_at.as_ref().map(|t| t.0).filter(|t| *t > now);
    match valid_until {
        Some(until) => set_condition(
            status,
            READY,
            "True",
            reason::REFRESH_FAILING,
            format!(
                "the current access token is valid until {until}, but refreshing failed: {}",
                problem.message
            ),
            now,
            generation,
        ),
        None => {
            let reason = if status.expires_at.is_some() {
                reason::TOKEN_EXPIRED
            } else {
                problem.reason
            };
            set_condition(
                status,
                READY,
                "False",
                reason,
                problem.message.clone(),
                now,
                generation,
            );
        }
    }
}

/// `ReauthRequired` turns `True` for a failure only a person can fix; after
/// other failures nothing is known about the grant, and a grant that needed
/// a person is retried only because its inputs changed.
fn set_reauth_after_failure(
    status: &mut OAuthCredentialStatus,
    problem: Problem,
    now: Timestamp,
    generation: i64,
) {
    if problem.category == FailureCategory::ReauthRequired {
        set_condition(
            status,
            REAUTH_REQUIRED,
            "True",
            problem.reason,
            problem.message,
            now,
            generation,
        );
        return;
    }
    let reauth = status.condition(REAUTH_REQUIRED).map(|c| c.status.clone());
    let (reason, message) = match reauth.as_deref() {
        None => (reason::NOT_YET_REFRESHED, "no refresh has succeeded yet"),
        Some("True") => (
            reason::RETRYING,
            "the refresh token or the spec changed; waiting for a refresh to succeed",
        ),
        Some(_) => return,
    };
    set_condition(
        status,
        REAUTH_REQUIRED,
        "Unknown",
        reason,
        message.into(),
        now,
        generation,
    );
}

/// An orphaned output Secret adopted with the token it holds.
pub struct Adoption<'a> {
    pub now: Timestamp,
    pub generation: i64,
    pub refreshed_at: Timestamp,
    pub expires_at: Timestamp,
    pub refresh_at: Timestamp,
    pub output_secret: &'a str,
}

/// The status of a new credential that adopted an orphaned output Secret
/// whose token is still good: `Ready`, with nothing yet known of the grant.
pub fn after_adoption(
    old: Option<&OAuthCredentialStatus>,
    a: Adoption<'_>,
) -> OAuthCredentialStatus {
    let mut status = old.cloned().unwrap_or_default();
    status.observed_generation = Some(a.generation);
    status.expires_at = Some(Time(a.expires_at));
    status.refresh_at = Some(Time(a.refresh_at));
    status.last_refresh_time = Some(Time(a.refreshed_at));
    status.failed_attempts = 0;
    set_condition(
        &mut status,
        READY,
        "True",
        reason::TOKEN_VALID,
        format!(
            "Secret {} (adopted from a deleted credential of this name) holds an access token valid until {}",
            a.output_secret, a.expires_at
        ),
        a.now,
        a.generation,
    );
    if status.condition(REAUTH_REQUIRED).is_none() {
        set_condition(
            &mut status,
            REAUTH_REQUIRED,
            "Unknown",
            reason::NOT_YET_REFRESHED,
            "no refresh has succeeded yet".into(),
            a.now,
            a.generation,
        );
    }
    status
}

/// When the refresh token's own expiry starts to be warned about: `warning`
/// before it.
fn refresh_token_warning_time(
    status: &OAuthCredentialStatus,
    warning: std::time::Duration,
) -> Option<Timestamp> {
    let expires = status.refresh_token.as_ref()?.expires_at.as_ref()?.0;
    let warning = k8s_openapi::jiff::SignedDuration::try_from(warning).ok()?;
    Some(expires.checked_sub(warning).unwrap_or(expires))
}

/// A credential whose refresh token itself expires within `warning` (a
/// time-limited grant) stays `Ready`, with the reason
/// `RefreshTokenExpiring` and a message that says until when and what to do.
pub fn refresh_token_expiry(
    status: &mut OAuthCredentialStatus,
    now: Timestamp,
    warning: std::time::Duration,
) {
    let Some(warn_at) = refresh_token_warning_time(status, warning) else {
        return;
    };
    let Some(ready) = status.condition(READY).cloned() else {
        return;
    };
    if now < warn_at || ready.status != "True" || ready.reason != reason::TOKEN_VALID {
        return;
    }
    let expires = status
        .refresh_token
        .as_ref()
        .and_then(|r| r.expires_at.as_ref())
        .map(|t| t.0)
        .expect("a warning time implies an expiry");
    let message = format!(
        "{}; but the refresh token itself expires at {expires} (a time-limited grant): grant consent \
         again before then, for example with `oauth-token-operator authorize`",
        ready.message
    );
    let generation = ready.observed_generation.unwrap_or(0);
    set_condition(
        status,
        READY,
        "True",
        reason::REFRESH_TOKEN_EXPIRING,
        message,
        now,
        generation,
    );
}

/// The output name is taken by a Secret the operator does not own.
pub fn after_conflict(
    old: Option<&OAuthCredentialStatus>,
    now: Timestamp,
    generation: i64,
    output_secret: &str,
) -> OAuthCredentialStatus {
    let mut status = old.cloned().unwrap_or_default();
    status.observed_generation = Some(generation);
    status.refresh_at = None;
    set_condition(
        &mut status,
        READY,
        "False",
        reason::SECRET_CONFLICT,
        format!(
            "Secret {output_secret} exists and is not owned by this OAuthCredential, so it is left untouched; \
             delete or rename it, or set another spec.output.secretName"
        ),
        now,
        generation,
    );
    status
}

/// `Ready` flips to `False` once the token in the output Secret has expired
/// without a successful refresh.
pub fn at_time(
    old: &OAuthCredentialStatus,
    now: Timestamp,
    generation: i64,
) -> OAuthCredentialStatus {
    let mut status = old.clone();
    let expired = status.expires_at.as_ref().is_some_and(|t| t.0 <= now);
    if expired && status.is_true(READY) {
        let why = status
            .last_failure
            .as_ref()
            .filter(|_| status.failed_attempts > 0)
            .map(|f| format!(": {}", f.message))
            .unwrap_or_default();
        let at = status
            .expires_at
            .as_ref()
            .map(|t| t.0)
            .expect("expired implies set");
        set_condition(
            &mut status,
            READY,
            "False",
            reason::TOKEN_EXPIRED,
            format!("the access token expired at {at} and has not been refreshed{why}"),
            now,
            generation,
        );
    }
    status
}

/// When the status itself changes next without any outside event: the
/// `Ready` condition turns at expiry, and its reason turns when the refresh
/// token's own expiry comes within `warning`.
pub fn next_status_change(
    status: &OAuthCredentialStatus,
    now: Timestamp,
    warning: std::time::Duration,
) -> Option<Timestamp> {
    let expiry = status
        .expires_at
        .as_ref()
        .map(|t| t.0)
        .filter(|at| *at > now && status.is_true(READY));
    let warn = refresh_token_warning_time(status, warning).filter(|at| {
        *at > now
            && status
                .condition(READY)
                .is_some_and(|c| c.status == "True" && c.reason == reason::TOKEN_VALID)
    });
    [expiry, warn].into_iter().flatten().min()
}

/// An event to publish because the status changed in a way people care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    /// Stable CamelCase reason: `ReauthRequired`, `SecretConflict`,
    /// `RefreshFailed`, `RefreshTokenExpiring` or `Recovered`.
    pub reason: &'static str,
    pub action: &'static str,
    pub message: String,
}

/// Events for the transitions from `old` to `new`: one per transition, never
/// one per successful refresh and never one per retry.
pub fn notices(old: Option<&OAuthCredentialStatus>, new: &OAuthCredentialStatus) -> Vec<Notice> {
    let was = |type_: &str, value: &str| {
        old.and_then(|s| s.condition(type_))
            .is_some_and(|c| c.status == value)
    };
    let was_ready_reason = |r: &str| {
        old.and_then(|s| s.condition(READY))
            .is_some_and(|c| c.reason == r)
    };
    let ready = new.condition(READY);
    let mut out = Vec::new();
    if new.is_true(REAUTH_REQUIRED) && !was(REAUTH_REQUIRED, "True") {
        let condition = new.condition(REAUTH_REQUIRED).expect("checked above");
        out.push(Notice {
            warning: true,
            reason: "ReauthRequired",
            action: "Refresh",
            message: condition.message.clone(),
        });
    }
    if let Some(ready) = ready
        && ready.reason == reason::SECRET_CONFLICT
        && !was_ready_reason(reason::SECRET_CONFLICT)
    {
        out.push(Notice {
            warning: true,
            reason: "SecretConflict",
            action: "WriteSecret",
            message: ready.message.clone(),
        });
    }
    if let Some(ready) = ready
        && ready.reason == reason::REFRESH_TOKEN_EXPIRING
        && !was_ready_reason(reason::REFRESH_TOKEN_EXPIRING)
    {
        out.push(Notice {
            warning: true,
            reason: "RefreshTokenExpiring",
            action: "Refresh",
            message: ready.message.clone(),
        });
    }
    if new.failed_attempts == 1
        && let Some(failure) = &new.last_failure
        && failure.category != FailureCategory::ReauthRequired
        && old.is_none_or(|o| o.failed_attempts != 1 || o.last_failure != new.last_failure)
    {
        out.push(Notice {
            warning: true,
            reason: "RefreshFailed",
            action: "Refresh",
            message: failure.message.clone(),
        });
    }
    let troubled = old.is_some_and(|o| {
        o.failed_attempts > 0
            || o.is_true(REAUTH_REQUIRED)
            || o.condition(READY)
                .is_some_and(|c| c.reason == reason::SECRET_CONFLICT || c.status != "True")
    });
    if troubled
        && new.failed_attempts == 0
        && ready.is_some_and(|c| c.status == "True" && c.reason == reason::TOKEN_VALID)
    {
        // No time in it: a repeat within minutes is aggregated into the
        // first event, whose message must stay true.
        out.push(Notice {
            warning: false,
            reason: "Recovered",
            action: "Refresh",
            message: "refreshed again: the output Secret holds a valid access token".into(),
        });
    }
    for notice in &mut out {
        notice.message = cap_bytes(&notice.message, MAX_EVENT_NOTE_BYTES);
    }
    out
}

/// Kubernetes refuses event notes longer than this many bytes.
pub const MAX_EVENT_NOTE_BYTES: usize = 1024;

/// `text` cut to at most `limit` bytes of UTF-8 (never inside a character),
/// an ellipsis marking the cut.
pub fn cap_bytes(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    const ELLIPSIS: &str = "…";
    let mut end = limit - ELLIPSIS.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..end])
}

fn split_scopes(scope: &str) -> Vec<String> {
    let mut scopes: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
    scopes.sort();
    scopes.dedup();
    scopes
}

/// Sets a condition, keeping `lastTransitionTime` unless the status flips.
pub fn set_condition(
    status: &mut OAuthCredentialStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: String,
    now: Timestamp,
    generation: i64,
) {
    let transition = match status.condition(type_) {
        Some(existing) if existing.status == value => existing.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status: value.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: transition,
        observed_generation: Some(generation),
    };
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => *existing = condition,
        None => status.conditions.push(condition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn success(now: &str, expires: &str) -> Success<'static> {
        Success {
            now: ts(now),
            generation: 1,
            expires_at: ts(expires),
            refresh_at: ts(expires),
            scope: Some("b a"),
            output_secret: "out",
            forced: None,
            refresh_token: RefreshTokenState::default(),
            short_lifetime: None,
        }
    }

    fn failed(now: &str, category: FailureCategory, reason: &'static str) -> Failed<'static> {
        Failed {
            attempt: Attempt {
                now: ts(now),
                generation: 1,
                inputs: Inputs::default(),
                forced: None,
            },
            problem: Problem {
                category,
                reason,
                message: "it failed".into(),
                provider: Default::default(),
                http_status: Some(400),
            },
            retry_at: None,
        }
    }

    #[test]
    fn success_sets_ready_and_clears_the_failure_count() {
        let s = after_success(
            None,
            success("2026-11-21T19:00:00Z", "2026-11-21T20:00:00Z"),
        );
        assert!(s.is_true(READY));
        assert_eq!(s.condition(REAUTH_REQUIRED).unwrap().status, "False");
        assert_eq!(s.granted_scopes, vec!["a", "b"]);
        assert_eq!(s.failed_attempts, 0);
        assert_eq!(s.observed_generation, Some(1));
    }

    #[test]
    fn last_transition_time_moves_only_when_the_status_flips() {
        let first = after_success(
            None,
            success("2026-11-21T19:00:00Z", "2026-11-21T20:00:00Z"),
        );
        let second = after_success(
            Some(&first),
            success("2026-11-21T19:40:00Z", "2026-11-21T20:40:00Z"),
        );
        assert_eq!(
            first.condition(READY).unwrap().last_transition_time,
            second.condition(READY).unwrap().last_transition_time
        );
        let failing = after_failure(
            Some(&second),
            failed(
                "2026-11-21T20:50:00Z",
                FailureCategory::Transient,
                "ProviderUnavailable",
            ),
        );
        let ready = failing.condition(READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, reason::TOKEN_EXPIRED);
        assert_eq!(ready.last_transition_time, Time(ts("2026-11-21T20:50:00Z")));
    }

    #[test]
    fn a_transient_failure_keeps_ready_true_while_the_token_is_valid() {
        let ok = after_success(
            None,
            success("2026-11-21T19:00:00Z", "2026-11-21T20:00:00Z"),
        );
        let s = after_failure(
            Some(&ok),
            failed(
                "2026-11-21T19:40:00Z",
                FailureCategory::Transient,
                "RateLimited",
            ),
        );
        assert!(s.is_true(READY));
        assert_eq!(s.condition(READY).unwrap().reason, reason::REFRESH_FAILING);
        assert_eq!(s.condition(REAUTH_REQUIRED).unwrap().status, "False");
        assert_eq!(s.failed_attempts, 1);
        let s = after_failure(
            Some(&s),
            failed(
                "2026-11-21T19:41:00Z",
                FailureCategory::Transient,
                "RateLimited",
            ),
        );
        assert_eq!(s.failed_attempts, 2);
    }

    #[test]
    fn invalid_grant_sets_reauth_required_and_keeps_serving_the_valid_token() {
        let ok = after_success(
            None,
            success("2026-11-21T19:00:00Z", "2026-11-21T20:00:00Z"),
        );
        let s = after_failure(
            Some(&ok),
            failed(
                "2026-11-21T19:40:00Z",
                FailureCategory::ReauthRequired,
                "InvalidGrant",
            ),
        );
        assert!(s.is_true(REAUTH_REQUIRED));
        assert_eq!(s.condition(REAUTH_REQUIRED).unwrap().reason, "InvalidGrant");
        assert!(s.is_true(READY));
        assert_eq!(s.refresh_at, None);
        let later = at_time(&s, ts("2026-11-21T20:00:00Z"), 1);
        assert_eq!(later.condition(READY).unwrap().status, "False");
        assert_eq!(
            later.condition(READY).unwrap().reason,
            reason::TOKEN_EXPIRED
        );
        assert!(
            later
                .condition(READY)
                .unwrap()
                .message
                .contains("it failed")
        );
    }

    #[test]
    fn a_failure_before_any_token_uses_its_own_reason() {
        let s = after_failure(
            None,
            failed(
                "2026-11-21T19:00:00Z",
                FailureCategory::Configuration,
                "InvalidClient",
            ),
        );
        assert_eq!(s.condition(READY).unwrap().reason, "InvalidClient");
        assert_eq!(s.condition(REAUTH_REQUIRED).unwrap().status, "Unknown");
    }

    #[test]
    fn a_forced_refresh_resets_the_failure_count() {
        let mut f = failed(
            "2026-11-21T19:00:00Z",
            FailureCategory::Transient,
            "RateLimited",
        );
        let s = after_failure(
            None,
            failed(
                "2026-11-21T18:59:00Z",
                FailureCategory::Transient,
                "RateLimited",
            ),
        );
        let s = after_failure(
            Some(&s),
            failed(
                "2026-11-21T18:59:30Z",
                FailureCategory::Transient,
                "RateLimited",
            ),
        );
        assert_eq!(s.failed_attempts, 2);
        f.attempt.forced = Some("now");
        let s = after_failure(Some(&s), f);
        assert_eq!(s.failed_attempts, 1);
        assert_eq!(s.last_forced_refresh.as_deref(), Some("now"));
    }

    #[test]
    fn at_time_changes_nothing_before_expiry() {
        let ok = after_success(
            None,
            success("2026-11-21T19:00:00Z", "2026-11-21T20:00:00Z"),
        );
        assert_eq!(at_time(&ok, ts("2026-11-21T19:59:59Z"), 1), ok);
        assert_eq!(
            next_status_change(&ok, ts("2026-11-21T19:00:00Z"), WEEK),
            Some(ts("2026-11-21T20:00:00Z"))
        );
    }

    const WEEK: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

    #[test]
    fn a_time_limited_grant_warns_a_configured_time_before_its_refresh_token_expires() {
        let mut ok = after_success(
            None,
            success("2026-11-21T19:00:00Z", "2026-11-21T20:00:00Z"),
        );
        ok.refresh_token = Some(RefreshTokenState {
            expires_at: Some(Time(ts("2026-11-30T19:00:00Z"))),
            ..Default::default()
        });
        // Nine days left: the wake-up is at the start of the warning, a week
        // before the end, unless the access token expires first.
        let warn_at = ts("2026-11-23T19:00:00Z");
        assert_eq!(
            next_status_change(&ok, ts("2026-11-21T19:00:01Z"), WEEK),
            Some(ts("2026-11-21T20:00:00Z"))
        );
        let mut before = ok.clone();
        refresh_token_expiry(&mut before, ts("2026-11-23T18:59:59Z"), WEEK);
        assert_eq!(before, ok, "nothing before the warning time");
        let mut unexpired = ok.clone();
        unexpired.expires_at = Some(Time(ts("2026-11-24T00:00:00Z")));
        assert_eq!(
            next_status_change(&unexpired, ts("2026-11-23T00:00:00Z"), WEEK),
            Some(warn_at)
        );
        let mut warned = ok.clone();
        refresh_token_expiry(&mut warned, warn_at, WEEK);
        let ready = warned.condition(READY).unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.reason, reason::REFRESH_TOKEN_EXPIRING);
        assert!(
            ready.message.contains("2026-11-30T19:00:00Z"),
            "{}",
            ready.message
        );
        let events = notices(Some(&ok), &warned);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].reason, "RefreshTokenExpiring");
        assert!(events[0].warning);
        assert!(notices(Some(&warned), &warned).is_empty(), "said once");
        let mut again = warned.clone();
        refresh_token_expiry(&mut again, ts("2026-11-24T00:00:00Z"), WEEK);
        assert_eq!(again, warned, "applied once");
        let mut short = ok.clone();
        refresh_token_expiry(&mut short, warn_at, std::time::Duration::from_secs(3600));
        assert_eq!(short, ok, "a shorter warning says nothing yet");
    }

    #[test]
    fn events_mark_transitions_only() {
        let reasons = |old: Option<&OAuthCredentialStatus>, new: &OAuthCredentialStatus| {
            notices(old, new)
                .into_iter()
                .map(|n| n.reason)
                .collect::<Vec<_>>()
        };
        let ok = after_success(
            None,
            success("2026-11-21T19:00:00Z", "2026-11-21T20:00:00Z"),
        );
        assert!(
            reasons(None, &ok).is_empty(),
            "no event for a first success"
        );
        let ok2 = after_success(
            Some(&ok),
            success("2026-11-21T19:40:00Z", "2026-11-21T20:40:00Z"),
        );
        assert!(
            reasons(Some(&ok), &ok2).is_empty(),
            "no event per successful refresh"
        );

        let reauth = after_failure(
            Some(&ok2),
            failed(
                "2026-11-21T20:20:00Z",
                FailureCategory::ReauthRequired,
                "InvalidGrant",
            ),
        );
        assert_eq!(reasons(Some(&ok2), &reauth), vec!["ReauthRequired"]);
        let expired = at_time(&reauth, ts("2026-11-21T20:40:00Z"), 1);
        assert!(
            reasons(Some(&reauth), &expired).is_empty(),
            "one event per transition into ReauthRequired"
        );

        let back = after_success(
            Some(&expired),
            success("2026-11-21T21:00:00Z", "2026-11-21T22:00:00Z"),
        );
        assert_eq!(reasons(Some(&expired), &back), vec!["Recovered"]);

        let t1 = after_failure(
            Some(&back),
            failed(
                "2026-11-21T21:40:00Z",
                FailureCategory::Transient,
                "RateLimited",
            ),
        );
        assert_eq!(reasons(Some(&back), &t1), vec!["RefreshFailed"]);
        let t2 = after_failure(
            Some(&t1),
            failed(
                "2026-11-21T21:40:10Z",
                FailureCategory::Transient,
                "RateLimited",
            ),
        );
        assert!(reasons(Some(&t1), &t2).is_empty(), "no event per retry");

        let conflict = after_conflict(Some(&back), ts("2026-11-21T21:10:00Z"), 1, "out");
        assert_eq!(reasons(Some(&back), &conflict), vec!["SecretConflict"]);
        assert!(reasons(Some(&conflict), &conflict).is_empty());
    }

    #[test]
    fn a_conflict_is_not_ready_and_schedules_nothing() {
        let ok = after_success(
            None,
            success("2026-11-21T19:00:00Z", "2026-11-21T20:00:00Z"),
        );
        let s = after_conflict(Some(&ok), ts("2026-11-21T19:10:00Z"), 1, "out");
        assert_eq!(s.condition(READY).unwrap().reason, reason::SECRET_CONFLICT);
        assert!(s.refresh_at.is_none());
    }

    #[test]
    fn event_notes_are_capped_at_1024_bytes_never_inside_a_character() {
        let long = "é".repeat(600); // 1,200 bytes
        let capped = cap_bytes(&long, MAX_EVENT_NOTE_BYTES);
        assert!(capped.len() <= MAX_EVENT_NOTE_BYTES, "{}", capped.len());
        assert!(capped.ends_with('…'));
        assert_eq!(cap_bytes("short", MAX_EVENT_NOTE_BYTES), "short");
        let mut failing = failed(
            "2026-11-21T19:00:00Z",
            FailureCategory::Transient,
            "ProviderUnavailable",
        );
        failing.problem.message = long;
        let status = after_failure(None, failing);
        for notice in notices(None, &status) {
            assert!(notice.message.len() <= MAX_EVENT_NOTE_BYTES);
        }
    }
}
