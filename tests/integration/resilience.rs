//! Keeping every token fresh when the world misbehaves, against the real
//! control plane: servers that close idle connections, outages that end
//! before the token does, providers that echo tokens or issue them for a
//! second, endpoints that never answer, output Secrets that cannot be
//! written, hostile answers, and churn that must leave nothing behind.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use oauth_token_operator::resource::{
    ClientAuthentication, OAuthCredential, OAuthCredentialSpec, READY,
};
use serde_json::json;

use crate::support::fixtures::*;
use crate::support::keepalive_server::KeepAliveServer;
use crate::support::operator::Operator;
use crate::support::token_server::{Scripted, TokenServer};
use crate::support::{eventually, with_namespace};

async fn create(client: &Client, ns: &str, name: &str, spec: OAuthCredentialSpec) {
    Api::<OAuthCredential>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &OAuthCredential::new(name, spec))
        .await
        .expect("create credential");
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn a_server_that_closes_idle_connections_after_a_second_costs_no_token() {
    with_namespace("res-keepalive", |client, ns| async move {
        ensure_crd(&client).await;
        let server = KeepAliveServer::start(Duration::from_secs(1), Duration::from_secs(3)).await;
        // Any loopback server is allowed; the spec's endpoint is this one.
        let stand_in = TokenServer::start(Duration::from_secs(3)).await;
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        put_refresh_token(&client, &ns, "ka", "any-refresh-token").await;
        let mut spec = credential_spec(&stand_in, "ka", ClientAuthentication::ClientSecretBasic);
        spec.provider.token_endpoint = Some(server.url());
        create(&client, &ns, "ka", spec).await;
        wait_for_condition(&client, &ns, "ka", READY, "True", Duration::from_secs(20)).await;
        // Refreshes 1-2 s apart for 15 s: each would reuse a connection the
        // server has dropped, were idle connections kept longer.
        let until = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::time::Instant::now() < until {
            let status = status_of(&client, &ns, "ka").await;
            assert!(status.is_true(READY), "the token lapsed: {status:?}");
            assert_eq!(status.failed_attempts, 0, "a refresh failed: {status:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(server.answered() >= 7, "{} refreshes", server.answered());
        assert_eq!(
            server.dropped(),
            0,
            "a request went out on a closed connection"
        );
        assert!(!operator.output().contains("refresh failed"));
    })
    .await;
}

#[tokio::test]
async fn five_transient_failures_are_retried_in_time_to_replace_the_token_before_it_expires() {
    with_namespace("res-deadline", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(45)).await;
        let _operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        let grant = server.new_grant();
        put_refresh_token(&client, &ns, "slow", &grant).await;
        let mut spec = credential_spec(&server, "slow", ClientAuthentication::ClientSecretBasic);
        spec.refresh_before = Some("30s".into());
        create(&client, &ns, "slow", spec).await;
        let first =
            wait_for_condition(&client, &ns, "slow", READY, "True", Duration::from_secs(20)).await;
        let expires = first.expires_at.unwrap().0;
        server.script([
            Scripted::html(503, "down"),
            Scripted::html(503, "down"),
            Scripted::html(503, "down"),
            Scripted::json(429, r#"{"error":"rate_limited"}"#).retry_after("1"),
            Scripted::json(429, r#"{"error":"rate_limited"}"#).retry_after("1"),
        ]);
        let recovered = eventually(
            "a success after five failures",
            Duration::from_secs(60),
            || async {
                let calls = server.calls();
                (calls.len() >= 7 && calls[6].status == 200).then(|| calls[6].at)
            },
        )
        .await;
        let statuses: Vec<u16> = server.calls().iter().map(|c| c.status).collect();
        assert_eq!(&statuses[..7], &[200, 503, 503, 503, 429, 429, 200]);
        let retries: Vec<f64> = server
            .calls()
            .windows(2)
            .map(|w| secs(w[1].at) - secs(w[0].at))
            .collect();
        assert!(
            secs(recovered) < expires.as_second() as f64,
            "replaced at {} after the token expired at {expires}; gaps {retries:?}",
            secs(recovered)
        );
        assert!(
            retries[4..6].iter().all(|gap| *gap >= 1.0),
            "Retry-After honoured: {retries:?}"
        );
        let status = status_of(&client, &ns, "slow").await;
        assert!(status.is_true(READY));
        assert_eq!(status.failed_attempts, 0);
    })
    .await;
}

#[tokio::test]
async fn an_unchanged_refresh_token_sent_back_is_no_rotation_and_writes_nothing() {
    with_namespace("res-echo", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(6)).await;
        server.echo_refresh_token(true);
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &server, "echo").await;
        wait_for_condition(&client, &ns, "echo", READY, "True", Duration::from_secs(20)).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let sealed = eventually("the token sealed", Duration::from_secs(10), || async {
            let s = secrets.get("echo-refresh").await.ok()?;
            s.data
                .as_ref()?
                .contains_key("refresh_token.sealed")
                .then_some(s)
        })
        .await;
        let calls = server.call_count();
        eventually("three more refreshes", Duration::from_secs(30), || async {
            (server.call_count() >= calls + 3).then_some(())
        })
        .await;
        let after = secrets.get("echo-refresh").await.unwrap();
        assert_eq!(
            after.metadata.resource_version, sealed.metadata.resource_version,
            "the refresh-token Secret was rewritten"
        );
        assert!(!operator.output().contains("rotated=true"));
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn sixty_four_credentials_on_an_endpoint_that_never_answers_do_not_delay_a_healthy_one() {
    with_namespace("res-fair", |client, ns| async move {
        ensure_crd(&client).await;
        let healthy = TokenServer::start(Duration::from_secs(12)).await;
        let hole = TokenServer::start(Duration::from_secs(3600)).await;
        hole.black_hole(true);
        // The default request timeout: each silent call holds its slot 10 s.
        let _operator = Operator::start_with(&ns, &["--token-request-timeout", "10s"]);
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &healthy, "healthy").await;
        wait_for_condition(
            &client,
            &ns,
            "healthy",
            READY,
            "True",
            Duration::from_secs(20),
        )
        .await;
        for i in 0..64 {
            create_credential(&client, &ns, &hole, &format!("hole{i}")).await;
        }
        // Watch the healthy credential's schedule and its calls for 40 s.
        let mut scheduled: Vec<f64> = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(40);
        while tokio::time::Instant::now() < until {
            let status = status_of(&client, &ns, "healthy").await;
            assert!(
                !status.conditions.iter().any(|c| c.reason == "TokenExpired"),
                "the healthy token expired: {status:?}"
            );
            if let Some(at) = status.refresh_at {
                let at = at.0.as_second() as f64;
                if scheduled.last() != Some(&at) {
                    scheduled.push(at);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let calls: Vec<f64> = healthy.calls().iter().map(|c| secs(c.at)).collect();
        let mut late = Vec::new();
        for at in &scheduled {
            if let Some(call) = calls.iter().find(|c| **c >= *at - 0.5) {
                late.push(call - at);
            }
        }
        assert!(
            late.len() >= 3,
            "refreshes seen: {late:?} for {scheduled:?}"
        );
        assert!(late.iter().all(|l| *l <= 1.0), "lateness {late:?}");
        let paused = eventually(
            "the silent endpoint paused",
            Duration::from_secs(30),
            || async {
                let all = Api::<OAuthCredential>::namespaced(client.clone(), &ns)
                    .list(&ListParams::default())
                    .await
                    .ok()?;
                all.items
                    .iter()
                    .filter_map(|c| c.status.as_ref()?.last_failure.as_ref())
                    .find(|f| f.reason == "EndpointPaused")
                    .map(|f| f.message.clone())
            },
        )
        .await;
        assert!(paused.contains("did not answer"), "{paused}");
    })
    .await;
}

#[tokio::test]
async fn a_provider_issuing_one_second_tokens_is_held_to_the_minimum_interval() {
    with_namespace("res-floor", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(1)).await;
        let _operator = Operator::start_with(&ns, &["--min-refresh-interval", "4s"]);
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &server, "brief").await;
        let reason = eventually(
            "the short lifetime reported",
            Duration::from_secs(20),
            || async {
                let status = status_of(&client, &ns, "brief").await;
                status
                    .condition(READY)
                    .filter(|c| c.reason == "LifetimeBelowMinimum")
                    .map(|c| c.message.clone())
            },
        )
        .await;
        assert!(reason.contains("--min-refresh-interval"), "{reason}");
        let start = server.call_count();
        tokio::time::sleep(Duration::from_secs(14)).await;
        let made = server.call_count() - start;
        assert!(
            (2..=4).contains(&made),
            "{made} calls in 14 s at one per 4 s at most"
        );
    })
    .await;
}

#[tokio::test]
async fn an_output_secret_that_cannot_be_written_costs_one_call_then_only_write_retries() {
    with_namespace("res-immutable", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let _operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &server, "frozen").await;
        let before = wait_for_condition(
            &client,
            &ns,
            "frozen",
            READY,
            "True",
            Duration::from_secs(20),
        )
        .await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        secrets
            .patch(
                "frozen-token",
                &PatchParams::default(),
                &Patch::Merge(json!({"immutable": true})),
            )
            .await
            .unwrap();
        force_refresh(&client, &ns, "frozen", "now").await;
        let failure = eventually("OutputWriteFailed", Duration::from_secs(20), || async {
            let status = status_of(&client, &ns, "frozen").await;
            status
                .last_failure
                .filter(|f| f.reason == "OutputWriteFailed" && status.failed_attempts > 0)
        })
        .await;
        assert!(
            failure.message.contains("without another call"),
            "{}",
            failure.message
        );
        assert_eq!(
            events_with_reason(&client, &ns, "RefreshFailed")
                .await
                .len(),
            1
        );
        let calls = server.call_count();
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(
            server.call_count(),
            calls,
            "write retries only, no token call"
        );
        let status = status_of(&client, &ns, "frozen").await;
        assert_eq!(
            status.expires_at, before.expires_at,
            "expiresAt names the token the Secret holds"
        );
        assert!(status.failed_attempts >= 2, "the write was retried");
        // Once the Secret can be written, the kept token lands without a call.
        secrets
            .delete("frozen-token", &DeleteParams::default())
            .await
            .unwrap();
        eventually(
            "the kept token written",
            Duration::from_secs(40),
            || async {
                let status = status_of(&client, &ns, "frozen").await;
                (status.failed_attempts == 0 && status.is_true(READY)).then_some(())
            },
        )
        .await;
        assert_eq!(server.call_count(), calls);
        assert!(
            access_token_in(&client, &ns, "frozen-token")
                .await
                .is_some()
        );
    })
    .await;
}

#[tokio::test]
async fn hostile_token_content_is_refused_and_the_secret_keeps_the_good_token() {
    with_namespace("res-hostile", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let _operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &server, "h").await;
        wait_for_condition(&client, &ns, "h", READY, "True", Duration::from_secs(20)).await;
        let good = access_token_in(&client, &ns, "h-token").await.unwrap();
        for (i, body) in [
            r#"{"access_token":"abc\r\nX-Evil: 1","expires_in":3600,"token_type":"Bearer"}"#,
            r#"{"access_token":"abc","expires_in":3600,"token_type":"Bearer\r\nEvil: 1"}"#,
        ]
        .into_iter()
        .enumerate()
        {
            server.script([Scripted::json(200, body)]);
            force_refresh(&client, &ns, "h", &format!("hostile-{i}")).await;
            eventually("InvalidTokenResponse", Duration::from_secs(20), || async {
                let status = status_of(&client, &ns, "h").await;
                (status.last_forced_refresh.as_deref() == Some(&format!("hostile-{i}"))
                    && status
                        .last_failure
                        .is_some_and(|f| f.reason == "InvalidTokenResponse"))
                .then_some(())
            })
            .await;
            assert_eq!(
                access_token_in(&client, &ns, "h-token").await.unwrap(),
                good
            );
        }
    })
    .await;
}

#[tokio::test]
async fn deleted_credentials_leave_nothing_behind_in_memory() {
    with_namespace("res-churn", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start(&ns);
        let admin = operator.admin_url().await;
        create_client_secret(&client, &ns).await;
        let names = create_ready_credentials(&client, &ns, &server, "churn", 20).await;
        let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &ns);
        for name in &names {
            credentials
                .delete(name, &DeleteParams::default())
                .await
                .unwrap();
        }
        oauth_token_operator::tls::install_crypto_provider();
        let entries = eventually("every map empty", Duration::from_secs(40), || async {
            let metrics = reqwest::get(format!("{admin}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let entries: Vec<(String, f64)> = metrics
                .lines()
                .filter(|l| l.starts_with("oauth_token_operator_tracked_entries{"))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_string(), value.parse().ok()?))
                })
                .collect();
            (entries.len() >= 9 && entries.iter().all(|(_, v)| *v == 0.0)).then_some(entries)
        })
        .await;
        assert!(
            entries.iter().any(|(s, _)| s.contains("secret_versions")),
            "{entries:?}"
        );
    })
    .await;
}
