//! "Should we call the token endpoint now?" An ordered chain of pure checks
//! over what the reconciler gathered, each with a named reason, the clock
//! passed in. Acting on the answer is the reconciler's job, not this module's.

use k8s_openapi::jiff::Timestamp;

use crate::resource::{FailureCategory, Inputs, OAuthCredentialStatus};

/// What is known about the Secret named by `spec.output.secretName`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputSecret {
    Absent,
    /// Exists, with a controller owner reference to this credential.
    Owned,
    /// Ours, but its data is not what the operator wrote: someone edited it.
    Altered,
    /// Left by a deleted credential of the same name (`deletionPolicy:
    /// Orphan`), holding a token obtained at `refreshed_at`, valid until
    /// `expires_at`: this credential adopts it.
    Orphaned {
        expires_at: Timestamp,
        refreshed_at: Timestamp,
    },
    /// Exists and belongs to someone else: never touched.
    Foreign,
}

/// Everything the decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub generation: i64,
    pub status: Option<&'a OAuthCredentialStatus>,
    /// Value of the force-refresh annotation, if present.
    pub force_refresh: Option<&'a str>,
    pub output: OutputSecret,
    /// This process still holds the valid token it last wrote to the output
    /// Secret, for this generation: a missing or altered Secret can be
    /// written again without a call.
    pub restorable: bool,
}

/// Why the provider is called now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshReason {
    /// The force-refresh annotation has a value not yet acted on.
    Forced,
    /// The credential is new, or its spec changed since the last attempt.
    SpecChanged,
    /// No access token has been obtained yet.
    NoToken,
    /// The output Secret is gone and must be written again.
    OutputSecretMissing,
    /// The output Secret's data was changed by someone else, and the token
    /// it held is not in this process's memory (it restarted since).
    OutputAltered,
    /// The scheduled refresh time (or the end of a backoff) has come.
    Due,
    /// A failure waited for new inputs, and the refresh-token Secret, the
    /// client Secret or the spec changed.
    InputsChanged,
    /// An adopted output Secret's token is due, or was not made for this
    /// credential's spec.
    Adopted,
}

impl RefreshReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshReason::Forced => "forced",
            RefreshReason::SpecChanged => "spec-changed",
            RefreshReason::NoToken => "no-token",
            RefreshReason::OutputSecretMissing => "output-secret-missing",
            RefreshReason::OutputAltered => "output-altered",
            RefreshReason::Due => "due",
            RefreshReason::InputsChanged => "inputs-changed",
            RefreshReason::Adopted => "adopted",
        }
    }
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The output name belongs to a Secret we do not own.
    Conflict,
    /// The output Secret was left by a deleted credential of this name:
    /// adopt it, and use its token while it is valid.
    Adopt {
        expires_at: Timestamp,
        refreshed_at: Timestamp,
    },
    /// The output Secret was deleted or altered: write the token this process
    /// last wrote there again, without a call.
    Restore,
    /// Call the token endpoint now.
    Refresh(RefreshReason),
    /// A failure that a person or a configuration change must fix holds.
    /// Call the provider only if the inputs differ from `since`; otherwise
    /// wait for a change, or until `retry_at` (configuration failures are
    /// retried after a long backoff; failures that need a person never are).
    RefreshIfInputsChanged {
        since: Inputs,
        retry_at: Option<Timestamp>,
    },
    /// Nothing to do before `at`.
    WaitUntil(Timestamp),
}

/// The force-refresh request not yet acted on: the annotation's value, unless
/// status records it as done.
pub fn pending_force<'a>(
    annotation: Option<&'a str>,
    status: Option<&OAuthCredentialStatus>,
) -> Option<&'a str> {
    annotation.filter(|value| status.and_then(|s| s.last_forced_refresh.as_deref()) != Some(*value))
}

/// Decides what to do at `now`.
pub fn decide(view: &View<'_>, now: Timestamp) -> Plan {
    match view.output {
        OutputSecret::Foreign => return Plan::Conflict,
        OutputSecret::Orphaned {
            expires_at,
            refreshed_at,
        } => {
            return Plan::Adopt {
                expires_at,
                refreshed_at,
            };
        }
        OutputSecret::Absent | OutputSecret::Altered if view.restorable => return Plan::Restore,
        _ => {}
    }
    let Some(status) = view.status else {
        return Plan::Refresh(RefreshReason::SpecChanged);
    };
    if pending_force(view.force_refresh, Some(status)).is_some() {
        return Plan::Refresh(RefreshReason::Forced);
    }
    if status.observed_generation != Some(view.generation) {
        return Plan::Refresh(RefreshReason::SpecChanged);
    }
    let refresh_at = status.refresh_at.as_ref().map(|t| t.0);
    if status.failed_attempts > 0
        && let Some(failure) = &status.last_failure
    {
        match failure.category {
            FailureCategory::ReauthRequired => {
                return Plan::RefreshIfInputsChanged {
                    since: failure.inputs.clone(),
                    retry_at: None,
                };
            }
            FailureCategory::Configuration => {
                if refresh_at.is_none_or(|at| now < at) {
                    return Plan::RefreshIfInputsChanged {
                        since: failure.inputs.clone(),
                        retry_at: refresh_at,
                    };
                }
                return Plan::Refresh(RefreshReason::Due);
            }
            FailureCategory::Transient => {
                if let Some(at) = refresh_at
                    && now < at
                {
                    return Plan::WaitUntil(at);
                }
            }
        }
    }
    match view.output {
        OutputSecret::Absent => return Plan::Refresh(RefreshReason::OutputSecretMissing),
        OutputSecret::Altered => return Plan::Refresh(RefreshReason::OutputAltered),
        _ => {}
    }
    if status.expires_at.is_none() {
        return Plan::Refresh(RefreshReason::NoToken);
    }
    match refresh_at {
        Some(at) if now < at => Plan::WaitUntil(at),
        _ => Plan::Refresh(RefreshReason::Due),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::resource::Failure;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn ready_status() -> OAuthCredentialStatus {
        OAuthCredentialStatus {
            observed_generation: Some(1),
            expires_at: Some(Time(ts("2026-11-21T20:00:00Z"))),
            refresh_at: Some(Time(ts("2026-11-21T19:40:00Z"))),
            last_refresh_time: Some(Time(ts("2026-11-21T19:00:00Z"))),
            ..Default::default()
        }
    }

    fn failing(
        mut status: OAuthCredentialStatus,
        category: FailureCategory,
        retry_at: Option<&str>,
    ) -> OAuthCredentialStatus {
        status.failed_attempts = 2;
        status.refresh_at = retry_at.map(|t| Time(ts(t)));
        status.last_failure = Some(Box::new(Failure {
            time: Time(ts("2026-11-21T19:41:00Z")),
            category,
            reason: "X".into(),
            message: "m".into(),
            error: None,
            error_description: None,
            error_subtype: None,
            http_status: None,
            inputs: Inputs {
                generation: 1,
                client_secret_version: "5".into(),
                refresh_token_secret_version: "7".into(),
                key_ring: String::new(),
            },
        }));
        status
    }

    fn view(status: Option<&OAuthCredentialStatus>) -> View<'_> {
        View {
            generation: 1,
            status,
            force_refresh: None,
            output: OutputSecret::Owned,
            restorable: false,
        }
    }

    #[test]
    fn a_deleted_or_altered_output_is_restored_from_memory_even_while_waiting_for_a_person() {
        let status = failing(ready_status(), FailureCategory::ReauthRequired, None);
        for output in [OutputSecret::Absent, OutputSecret::Altered] {
            let mut v = view(Some(&status));
            v.output = output;
            v.restorable = true;
            assert_eq!(decide(&v, ts("2026-11-21T19:45:00Z")), Plan::Restore);
        }
        let status = ready_status();
        let mut v = view(Some(&status));
        v.output = OutputSecret::Altered;
        assert_eq!(
            decide(&v, ts("2026-11-21T19:10:00Z")),
            Plan::Refresh(RefreshReason::OutputAltered),
            "without the token in memory (after a restart), a new one"
        );
    }

    #[test]
    fn an_orphan_is_adopted_whatever_the_status() {
        let orphan = OutputSecret::Orphaned {
            expires_at: ts("2026-11-21T20:00:00Z"),
            refreshed_at: ts("2026-11-21T19:00:00Z"),
        };
        let mut v = view(None);
        v.output = orphan;
        assert_eq!(
            decide(&v, ts("2026-11-21T19:10:00Z")),
            Plan::Adopt {
                expires_at: ts("2026-11-21T20:00:00Z"),
                refreshed_at: ts("2026-11-21T19:00:00Z"),
            }
        );
    }

    #[test]
    fn a_new_credential_is_refreshed_at_once() {
        assert_eq!(
            decide(&view(None), ts("2026-11-21T19:00:00Z")),
            Plan::Refresh(RefreshReason::SpecChanged)
        );
    }

    #[test]
    fn a_valid_token_waits_for_its_refresh_time() {
        let status = ready_status();
        assert_eq!(
            decide(&view(Some(&status)), ts("2026-11-21T19:10:00Z")),
            Plan::WaitUntil(ts("2026-11-21T19:40:00Z"))
        );
        assert_eq!(
            decide(&view(Some(&status)), ts("2026-11-21T19:40:00Z")),
            Plan::Refresh(RefreshReason::Due)
        );
    }

    #[test]
    fn a_foreign_output_secret_is_a_conflict_whatever_else_holds() {
        let status = ready_status();
        let mut v = view(Some(&status));
        v.output = OutputSecret::Foreign;
        v.force_refresh = Some("now");
        assert_eq!(decide(&v, ts("2026-11-21T19:50:00Z")), Plan::Conflict);
    }

    #[test]
    fn the_force_annotation_refreshes_once_per_value_even_in_backoff_or_reauth() {
        let status = failing(ready_status(), FailureCategory::ReauthRequired, None);
        let mut v = view(Some(&status));
        v.force_refresh = Some("2026-11-21T19:45:00Z");
        assert_eq!(
            decide(&v, ts("2026-11-21T19:45:01Z")),
            Plan::Refresh(RefreshReason::Forced)
        );

        let mut acted = ready_status();
        acted.last_forced_refresh = Some("2026-11-21T19:45:00Z".into());
        acted.refresh_at = Some(Time(ts("2026-11-21T20:25:00Z")));
        let mut v = view(Some(&acted));
        v.force_refresh = Some("2026-11-21T19:45:00Z");
        assert_eq!(
            decide(&v, ts("2026-11-21T19:46:00Z")),
            Plan::WaitUntil(ts("2026-11-21T20:25:00Z"))
        );
    }

    #[test]
    fn a_spec_change_bypasses_backoff_and_reauth() {
        let status = failing(ready_status(), FailureCategory::ReauthRequired, None);
        let mut v = view(Some(&status));
        v.generation = 2;
        assert_eq!(
            decide(&v, ts("2026-11-21T19:45:00Z")),
            Plan::Refresh(RefreshReason::SpecChanged)
        );
    }

    #[test]
    fn reauth_required_waits_for_new_inputs_and_never_retries_on_a_timer() {
        let status = failing(ready_status(), FailureCategory::ReauthRequired, None);
        match decide(&view(Some(&status)), ts("2026-11-22T19:45:00Z")) {
            Plan::RefreshIfInputsChanged {
                since,
                retry_at: None,
            } => assert_eq!(since.refresh_token_secret_version, "7"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_configuration_failure_waits_for_new_inputs_or_its_long_backoff() {
        let status = failing(
            ready_status(),
            FailureCategory::Configuration,
            Some("2026-11-21T20:41:00Z"),
        );
        assert!(matches!(
            decide(&view(Some(&status)), ts("2026-11-21T19:45:00Z")),
            Plan::RefreshIfInputsChanged {
                retry_at: Some(_),
                ..
            }
        ));
        assert_eq!(
            decide(&view(Some(&status)), ts("2026-11-21T20:41:00Z")),
            Plan::Refresh(RefreshReason::Due)
        );
    }

    #[test]
    fn a_transient_failure_waits_out_its_backoff_even_without_an_output_secret() {
        let status = failing(
            ready_status(),
            FailureCategory::Transient,
            Some("2026-11-21T19:41:20Z"),
        );
        let mut v = view(Some(&status));
        v.output = OutputSecret::Absent;
        assert_eq!(
            decide(&v, ts("2026-11-21T19:41:05Z")),
            Plan::WaitUntil(ts("2026-11-21T19:41:20Z"))
        );
        assert_eq!(
            decide(&v, ts("2026-11-21T19:41:20Z")),
            Plan::Refresh(RefreshReason::OutputSecretMissing)
        );
    }

    #[test]
    fn a_deleted_output_secret_is_written_again() {
        let status = ready_status();
        let mut v = view(Some(&status));
        v.output = OutputSecret::Absent;
        assert_eq!(
            decide(&v, ts("2026-11-21T19:10:00Z")),
            Plan::Refresh(RefreshReason::OutputSecretMissing)
        );
    }
}
