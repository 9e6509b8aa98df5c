//! The operator end to end: the real binary against the real control plane
//! and a real token endpoint on loopback. Each test runs its own operator
//! process scoped to its own temporary namespace, and ends by searching the
//! operator's log, the events and the statuses for every token it issued.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use oauth_token_operator::resource::{
    ClientAuthentication, OAuthCredential, READY, REAUTH_REQUIRED,
};
use serde_json::json;

use crate::support::fixtures::*;
use crate::support::operator::Operator;
use crate::support::token_server::{Scripted, TokenServer};
use crate::support::{eventually, with_namespace};

const READY_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_credential_becomes_ready_with_its_token_in_an_owned_secret() {
    with_namespace("op-ready", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &server, "basic").await;
        create_credential_with(
            &client,
            &ns,
            &server,
            "post",
            ClientAuthentication::ClientSecretPost,
        )
        .await;

        for name in ["basic", "post"] {
            let status = wait_for_condition(&client, &ns, name, READY, "True", READY_WITHIN).await;
            assert_eq!(status.condition(READY).unwrap().reason, "TokenValid");
            assert_eq!(status.condition(REAUTH_REQUIRED).unwrap().status, "False");
            let expires = status.expires_at.expect("expiresAt").0;
            let refresh = status.refresh_at.expect("refreshAt").0;
            let issued = status.last_refresh_time.expect("lastRefreshTime").0;
            assert_eq!(expires.subsec_nanosecond(), 0, "whole seconds");
            assert!(
                issued < refresh && refresh < expires,
                "{issued} < {refresh} < {expires}"
            );
            let remaining = expires.duration_since(refresh).as_secs();
            assert!(
                (1200..=1320).contains(&remaining),
                "refresh when a third of the hour, plus at most 10% jitter, is left: {remaining}s"
            );
            assert_eq!(
                status.granted_scopes,
                vec!["https://www.googleapis.com/auth/gmail.send"]
            );
            assert_eq!(status.observed_generation, Some(1));

            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let secret = secrets
                .get(&format!("{name}-token"))
                .await
                .expect("output Secret");
            let data = secret.data.clone().unwrap();
            let token = String::from_utf8(data["access_token"].0.clone()).unwrap();
            assert!(
                server.issued_tokens().contains(&token),
                "the Secret holds a token the provider issued"
            );
            assert_eq!(data["token_type"].0, b"Bearer");
            assert_eq!(
                String::from_utf8(data["expiry"].0.clone()).unwrap(),
                expires.to_string()
            );
            let owner = &secret.owner_references()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.controller),
                ("OAuthCredential", name, Some(true))
            );
            assert_eq!(
                secret.labels()["app.kubernetes.io/managed-by"],
                "oauth-token-operator"
            );
            assert_eq!(secret.labels()["oauth.tokenoperator.io/credential"], name);
        }
        assert_eq!(
            server.call_count(),
            2,
            "one token-endpoint call per credential"
        );
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_before_they_expire_many_times_in_a_row() {
    with_namespace("op-short", |client, ns| async move {
        ensure_crd(&client).await;
        let lifetime = Duration::from_secs(15);
        let server = TokenServer::start(lifetime).await;
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &server, "short").await;

        let refreshes = 5;
        eventually("five refreshes", Duration::from_secs(90), || async {
            (server.call_count() > refreshes).then_some(())
        })
        .await;
        let calls = server.calls();
        for pair in calls.windows(2) {
            let gap = pair[1].at.duration_since(pair[0].at).unwrap();
            assert!(
                gap < lifetime,
                "refreshed {gap:?} after the previous token was issued; it lived {lifetime:?}"
            );
            assert!(gap >= lifetime / 2, "refreshed too early: {gap:?}");
            assert_eq!(pair[1].status, 200);
        }
        // The Secret always holds the latest token: at most one refresh can
        // be in flight between the two reads.
        let in_secret = access_token_in(&client, &ns, "short-token")
            .await
            .expect("token");
        let issued = server.issued_tokens();
        assert!(
            issued[issued.len().saturating_sub(2)..].contains(&in_secret),
            "the Secret holds a current token"
        );
        let status = status_of(&client, &ns, "short").await;
        assert!(status.is_true(READY));
        assert_eq!(status.failed_attempts, 0);
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn invalid_grant_sets_reauth_required_once_stops_calling_and_a_new_refresh_token_recovers() {
    with_namespace("op-reauth", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(8)).await;
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        let refresh_token = create_credential(&client, &ns, &server, "gmail").await;
        wait_for_condition(&client, &ns, "gmail", READY, "True", READY_WITHIN).await;
        let served = access_token_in(&client, &ns, "gmail-token").await.unwrap();

        server.revoke(&refresh_token);
        let status = wait_for_condition(
            &client,
            &ns,
            "gmail",
            REAUTH_REQUIRED,
            "True",
            Duration::from_secs(30),
        )
        .await;
        let reauth = status.condition(REAUTH_REQUIRED).unwrap();
        assert_eq!(reauth.reason, "InvalidGrant");
        assert!(
            reauth.message.contains("oauth-token-operator authorize"),
            "{}",
            reauth.message
        );
        assert!(
            status.refresh_at.is_none(),
            "nothing scheduled while waiting for a person"
        );

        // The old token is served until it expires, then Ready turns False.
        let calls = server.call_count();
        let status = wait_for_condition(
            &client,
            &ns,
            "gmail",
            READY,
            "False",
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(status.condition(READY).unwrap().reason, "TokenExpired");
        assert_eq!(
            access_token_in(&client, &ns, "gmail-token").await.unwrap(),
            served,
            "the Secret keeps the last token"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            server.call_count(),
            calls,
            "no token-endpoint call while ReauthRequired holds"
        );
        assert_eq!(
            events_with_reason(&client, &ns, "ReauthRequired")
                .await
                .len(),
            1,
            "exactly one event"
        );

        // A new refresh token is all it takes.
        let new_token = server.new_grant();
        put_refresh_token(&client, &ns, "gmail", &new_token).await;
        let status = wait_for_condition(
            &client,
            &ns,
            "gmail",
            READY,
            "True",
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(status.condition(REAUTH_REQUIRED).unwrap().status, "False");
        assert_ne!(
            access_token_in(&client, &ns, "gmail-token").await.unwrap(),
            served
        );
        assert!(
            server
                .calls()
                .last()
                .is_some_and(|c| c.refresh_token == new_token && c.status == 200)
        );
        assert_eq!(
            events_with_reason(&client, &ns, "ReauthRequired")
                .await
                .len(),
            1
        );
        assert_eq!(events_with_reason(&client, &ns, "Recovered").await.len(), 1);
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn outages_and_rate_limits_back_off_keep_the_current_token_and_never_ask_for_reauth() {
    with_namespace("op-backoff", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &server, "drive").await;
        wait_for_condition(&client, &ns, "drive", READY, "True", READY_WITHIN).await;
        let served = access_token_in(&client, &ns, "drive-token").await.unwrap();

        server.script([
            Scripted::html(503, "<html><body>Service Unavailable</body></html>"),
            Scripted::json(429, r#"{"error":"rate_limited"}"#).retry_after("12"),
            Scripted::json(500, r#"{"error":"internal_failure"}"#),
        ]);
        force_refresh(&client, &ns, "drive", "first").await;
        let status = eventually("two failed attempts", Duration::from_secs(30), || async {
            let status = status_of(&client, &ns, "drive").await;
            (status.failed_attempts >= 2).then_some(status)
        })
        .await;
        assert!(status.is_true(READY), "the current token is still valid");
        assert_eq!(status.condition(READY).unwrap().reason, "RefreshFailing");
        assert_eq!(status.condition(REAUTH_REQUIRED).unwrap().status, "False");
        let failure = status.last_failure.clone().unwrap();
        assert_eq!(
            (failure.reason.as_str(), failure.http_status),
            ("RateLimited", Some(429))
        );
        assert_eq!(
            access_token_in(&client, &ns, "drive-token").await.unwrap(),
            served,
            "the current token is kept"
        );

        // Then it recovers by itself.
        let status = eventually("recovery", Duration::from_secs(60), || async {
            let status = status_of(&client, &ns, "drive").await;
            (status.failed_attempts == 0
                && status.last_refresh_time.as_ref().map(|t| t.0) > Some(failure.time.0))
            .then_some(status)
        })
        .await;
        assert!(status.is_true(READY));
        let calls = server.calls();
        let n = calls.len();
        assert_eq!(
            calls[n - 4..].iter().map(|c| c.status).collect::<Vec<_>>(),
            vec![503, 429, 500, 200]
        );
        let after_429 = calls[n - 2].at.duration_since(calls[n - 3].at).unwrap();
        assert!(
            after_429 >= Duration::from_secs(12),
            "Retry-After: 12 was honoured ({after_429:?})"
        );
        let after_503 = calls[n - 3].at.duration_since(calls[n - 4].at).unwrap();
        assert!(
            after_503 >= Duration::from_secs(3),
            "exponential backoff, not a hot loop ({after_503:?})"
        );
        assert_eq!(
            events_with_reason(&client, &ns, "RefreshFailed")
                .await
                .len(),
            1,
            "one event for the outage"
        );
        assert!(
            events_with_reason(&client, &ns, "ReauthRequired")
                .await
                .is_empty()
        );
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn an_operator_restart_makes_no_token_endpoint_call_for_unexpired_tokens() {
    with_namespace("op-restart", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let mut operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        for name in ["one", "two", "three"] {
            create_credential(&client, &ns, &server, name).await;
        }
        for name in ["one", "two", "three"] {
            wait_for_condition(&client, &ns, name, READY, "True", READY_WITHIN).await;
        }
        assert_eq!(server.call_count(), 3);

        operator.restart().await;
        // A credential created after the restart proves the new process has
        // started and reconciled; only that one may call the provider.
        create_credential(&client, &ns, &server, "four").await;
        wait_for_condition(&client, &ns, "four", READY, "True", READY_WITHIN).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            server.call_count(),
            4,
            "the restart refreshed nothing that was not due"
        );
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn a_foreign_secret_with_the_output_name_is_never_touched() {
    with_namespace("op-conflict", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let foreign = secrets
            .create(
                &PostParams::default(),
                &secret("mine-token", &[("access_token", "not-yours")]),
            )
            .await
            .expect("foreign Secret");

        create_credential(&client, &ns, &server, "mine").await;
        let status = wait_for_condition(&client, &ns, "mine", READY, "False", READY_WITHIN).await;
        assert_eq!(status.condition(READY).unwrap().reason, "SecretConflict");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = secrets.get("mine-token").await.unwrap();
        assert_eq!(
            after.resource_version(),
            foreign.resource_version(),
            "the foreign Secret was not written"
        );
        assert_eq!(after.data.unwrap()["access_token"].0, b"not-yours");
        assert_eq!(
            server.call_count(),
            0,
            "no token is fetched that cannot be stored"
        );
        assert_eq!(
            events_with_reason(&client, &ns, "SecretConflict")
                .await
                .len(),
            1
        );

        // Once the name is free, the credential takes it.
        secrets
            .delete("mine-token", &DeleteParams::default())
            .await
            .unwrap();
        wait_for_condition(&client, &ns, "mine", READY, "True", READY_WITHIN).await;
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn an_idle_credential_causes_no_writes() {
    with_namespace("op-idle", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &server, "idle").await;
        wait_for_condition(&client, &ns, "idle", READY, "True", READY_WITHIN).await;
        tokio::time::sleep(Duration::from_secs(2)).await;

        let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        // Wake the reconciler three ways: a label on the credential, on the
        // client Secret and on the refresh-token Secret.
        let label = |v: &str| json!({"metadata": {"labels": {"touched": v}}});
        let touched = credentials
            .patch("idle", &PatchParams::default(), &Patch::Merge(label("1")))
            .await
            .unwrap();
        secrets
            .patch(
                CLIENT_SECRET_NAME,
                &PatchParams::default(),
                &Patch::Merge(label("1")),
            )
            .await
            .unwrap();
        secrets
            .patch(
                "idle-refresh",
                &PatchParams::default(),
                &Patch::Merge(label("1")),
            )
            .await
            .unwrap();
        let output_before = secrets.get("idle-token").await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;

        let after = credentials.get("idle").await.unwrap();
        assert_eq!(
            after.resource_version(),
            touched.resource_version(),
            "the credential (and its status) was not written"
        );
        let output_after = secrets.get("idle-token").await.unwrap();
        assert_eq!(
            output_after.resource_version(),
            output_before.resource_version(),
            "the output Secret was not written"
        );
        assert_eq!(server.call_count(), 1);
        assert!(
            operator.output().contains("decided"),
            "the operator did reconcile (debug log)"
        );
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn deleting_the_credential_removes_its_secret() {
    with_namespace("op-delete", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &server, "gone").await;
        wait_for_condition(&client, &ns, "gone", READY, "True", READY_WITHIN).await;

        let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &ns);
        credentials
            .delete("gone", &DeleteParams::background())
            .await
            .unwrap();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        // Garbage collection of a custom-resource-owned object can take until
        // kube-controller-manager's 30 s discovery rescan.
        eventually(
            "the output Secret to be collected",
            Duration::from_secs(90),
            || async {
                secrets
                    .get_opt("gone-token")
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            },
        )
        .await;
        assert!(
            secrets.get_opt("gone-refresh").await.unwrap().is_some(),
            "the person's refresh-token Secret stays"
        );
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn a_rotated_refresh_token_is_stored_and_used_for_the_next_refresh() {
    with_namespace("op-rotate", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(9)).await;
        server.rotate(true);
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        let first = create_credential(&client, &ns, &server, "rot").await;
        eventually("three refreshes", Duration::from_secs(40), || async {
            (server.call_count() >= 3).then_some(())
        })
        .await;
        assert_eq!(
            server.revoked_grants(),
            0,
            "no rotated token was ever replayed"
        );
        assert!(server.calls().iter().all(|c| c.status == 200));
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let data = secrets.get("rot-refresh").await.unwrap().data.unwrap();
        assert!(
            !data.contains_key("refresh_token"),
            "no plaintext copy is kept"
        );
        let stored = String::from_utf8(data["refresh_token.sealed"].0.clone()).unwrap();
        assert!(
            stored.starts_with("oto-sealed:v2:"),
            "the rotated token is stored sealed"
        );
        for token in server.issued_tokens().iter().chain([&first]) {
            assert!(!stored.contains(token.as_str()), "no token in clear");
        }
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn a_missing_refresh_token_asks_for_consent_and_its_arrival_is_enough() {
    with_namespace("op-missing", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &ns);
        credentials
            .create(
                &PostParams::default(),
                &OAuthCredential::new(
                    "later",
                    credential_spec(&server, "later", ClientAuthentication::ClientSecretBasic),
                ),
            )
            .await
            .unwrap();
        let status =
            wait_for_condition(&client, &ns, "later", REAUTH_REQUIRED, "True", READY_WITHIN).await;
        assert_eq!(
            status.condition(REAUTH_REQUIRED).unwrap().reason,
            "RefreshTokenMissing"
        );
        assert_eq!(status.condition(READY).unwrap().status, "False");
        assert_eq!(server.call_count(), 0);

        put_refresh_token(&client, &ns, "later", &server.new_grant()).await;
        wait_for_condition(&client, &ns, "later", READY, "True", READY_WITHIN).await;
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}
