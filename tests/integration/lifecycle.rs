//! The output Secret and the grant over their lifetime, against the real
//! control plane (its garbage collector included): each output shape read
//! back, labels and annotations kept across refreshes; `Orphan` keeps the
//! Secret and a re-created credential adopts it without a token call;
//! `Delete` still garbage-collects; an edited or deleted output is put back
//! within seconds without a token call (and, after a restart, with one);
//! `revokeOnDelete` revokes once and a failing revocation endpoint never
//! holds a deletion; a time-limited grant shows its expiry and warns at the
//! configured time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use oauth_token_operator::output_secret::{DATA_HASH_ANNOTATION, ORPHANED_LABEL, data_hash};
use oauth_token_operator::resource::{
    ClientAuthentication, DeletionPolicy, FINALIZER, OAuthCredential, OAuthCredentialSpec,
    OutputKeys, OutputTemplate, OutputType, READY,
};
use serde_json::json;

use crate::support::fixtures::*;
use crate::support::operator::Operator;
use crate::support::token_server::TokenServer;
use crate::support::{eventually, with_namespace};

/// Creates credential `name` (with its own grant) whose spec `change` adjusts.
async fn create_with(
    client: &Client,
    ns: &str,
    server: &TokenServer,
    name: &str,
    change: impl FnOnce(&mut OAuthCredentialSpec),
) -> String {
    let refresh_token = server.new_grant();
    put_refresh_token(client, ns, name, &refresh_token).await;
    let mut spec = credential_spec(server, name, ClientAuthentication::ClientSecretBasic);
    change(&mut spec);
    Api::<OAuthCredential>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &OAuthCredential::new(name, spec))
        .await
        .expect("create credential");
    refresh_token
}

async fn output(client: &Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("read output Secret")
}

fn text(secret: &Secret, key: &str) -> String {
    let data = secret.data.as_ref().expect("data");
    let value = data.get(key).unwrap_or_else(|| panic!("no key {key}"));
    String::from_utf8(value.0.clone()).unwrap()
}

async fn credential(client: &Client, ns: &str, name: &str) -> Option<OAuthCredential> {
    Api::<OAuthCredential>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("read credential")
}

/// Deletes a credential and waits until it is gone.
async fn delete_and_wait(client: &Client, ns: &str, name: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    Api::<OAuthCredential>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete credential");
    eventually(&format!("{name} to be gone"), limit, || async {
        credential(client, ns, name).await.is_none().then_some(())
    })
    .await;
    started.elapsed()
}

async fn wait_for_finalizer(client: &Client, ns: &str, name: &str) {
    eventually(
        &format!("the finalizer on {name}"),
        Duration::from_secs(20),
        || async {
            credential(client, ns, name)
                .await
                .filter(|c| c.finalizers().iter().any(|f| f == FINALIZER))
        },
    )
    .await;
}

#[tokio::test]
async fn each_output_shape_is_written_as_specified_and_keeps_its_metadata_across_refreshes() {
    with_namespace("shapes", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        create_client_secret(&client, &ns).await;
        let operator = Operator::start(&ns);
        create_with(&client, &ns, &server, "renamed", |spec| {
            spec.output.keys = Some(OutputKeys {
                access_token: "TOKEN".into(),
                token_type: "TYPE".into(),
                expiry: "EXPIRES".into(),
                scope: "SCOPES".into(),
            });
            spec.output.labels.insert("backup".into(), "daily".into());
            spec.output.annotations.insert("team".into(), "mail".into());
        })
        .await;
        create_with(&client, &ns, &server, "templated", |spec| {
            spec.output.template = Some(OutputTemplate {
                data: BTreeMap::from([
                    ("token.env".into(), "ACCESS_TOKEN={{ access_token }}\nEXPIRY={{ expiry }}\n".into()),
                    ("token.json".into(), r#"{"token": {{ access_token | tojson }}, "type": {{ token_type | tojson }}}"#.into()),
                ]),
            });
        })
        .await;
        create_with(&client, &ns, &server, "registry", |spec| {
            spec.output.type_ = OutputType::DockerConfigJson;
            spec.output.registries = vec!["europe-docker.pkg.dev".into(), "127.0.0.1:5000".into()];
        })
        .await;
        for name in ["renamed", "templated", "registry"] {
            wait_for_condition(&client, &ns, name, READY, "True", Duration::from_secs(40)).await;
        }
        let issued = server.issued_tokens();

        let renamed = output(&client, &ns, "renamed-token").await.unwrap();
        let keys: Vec<&String> = renamed.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["EXPIRES", "SCOPES", "TOKEN", "TYPE"]);
        assert!(issued.contains(&text(&renamed, "TOKEN")));
        assert_eq!(text(&renamed, "TYPE"), "Bearer");

        let templated = output(&client, &ns, "templated-token").await.unwrap();
        assert_eq!(templated.type_.as_deref(), Some("Opaque"));
        let env = text(&templated, "token.env");
        let token = env.lines().next().unwrap().strip_prefix("ACCESS_TOKEN=").unwrap();
        assert!(issued.iter().any(|t| t == token), "{env}");
        assert!(env.ends_with('\n') && env.contains("\nEXPIRY=20"), "{env:?}");
        let document: serde_json::Value =
            serde_json::from_str(&text(&templated, "token.json")).unwrap();
        assert_eq!(document, json!({"token": token, "type": "Bearer"}));

        let registry = output(&client, &ns, "registry-token").await.unwrap();
        assert_eq!(registry.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        let config: serde_json::Value =
            serde_json::from_str(&text(&registry, ".dockerconfigjson")).unwrap();
        for host in ["europe-docker.pkg.dev", "127.0.0.1:5000"] {
            let entry = &config["auths"][host];
            let auth = base64::engine::general_purpose::STANDARD
                .decode(entry["auth"].as_str().unwrap())
                .unwrap();
            let auth = String::from_utf8(auth).unwrap();
            let (user, password) = auth.split_once(':').unwrap();
            assert_eq!(user, "oauth2accesstoken");
            assert!(issued.iter().any(|t| t == password), "{host}");
            assert_eq!(entry["password"], password);
        }

        // A refresh keeps the labels and annotations and records the new data.
        let before = text(&renamed, "TOKEN");
        force_refresh(&client, &ns, "renamed", "again").await;
        let refreshed = eventually("a new token in renamed-token", Duration::from_secs(20), || async {
            output(&client, &ns, "renamed-token")
                .await
                .filter(|s| text(s, "TOKEN") != before)
        })
        .await;
        let labels = refreshed.labels();
        assert_eq!(labels.get("backup").map(String::as_str), Some("daily"));
        assert_eq!(
            labels.get("app.kubernetes.io/managed-by").map(String::as_str),
            Some("oauth-token-operator")
        );
        let annotations = refreshed.annotations();
        assert_eq!(annotations.get("team").map(String::as_str), Some("mail"));
        assert_eq!(
            annotations.get(DATA_HASH_ANNOTATION),
            Some(&data_hash(refreshed.data.as_ref().unwrap()))
        );
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn orphan_keeps_the_secret_a_new_credential_adopts_it_without_a_call_and_delete_still_collects()
 {
    with_namespace("orphan", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        create_client_secret(&client, &ns).await;
        let _operator = Operator::start(&ns);
        create_with(&client, &ns, &server, "kept", |spec| {
            spec.output.deletion_policy = DeletionPolicy::Orphan;
        })
        .await;
        create_credential(&client, &ns, &server, "dropped").await;
        for name in ["kept", "dropped"] {
            wait_for_condition(&client, &ns, name, READY, "True", Duration::from_secs(40)).await;
        }
        wait_for_finalizer(&client, &ns, "kept").await;
        let token = access_token_in(&client, &ns, "kept-token").await.unwrap();
        let calls = server.call_count();

        delete_and_wait(&client, &ns, "kept", Duration::from_secs(20)).await;
        delete_and_wait(&client, &ns, "dropped", Duration::from_secs(20)).await;
        eventually(
            "the garbage collector to delete dropped-token",
            Duration::from_secs(60),
            || async {
                output(&client, &ns, "dropped-token")
                    .await
                    .is_none()
                    .then_some(())
            },
        )
        .await;
        // Orphaned: still there after the collector ran, unowned, labelled.
        let orphan = output(&client, &ns, "kept-token")
            .await
            .expect("kept-token stays");
        assert!(
            orphan.owner_references().is_empty(),
            "{:?}",
            orphan.owner_references()
        );
        assert_eq!(
            orphan.labels().get(ORPHANED_LABEL).map(String::as_str),
            Some("true")
        );
        assert_eq!(text(&orphan, "access_token"), token);
        assert!(
            !events_with_reason(&client, &ns, "Orphaned")
                .await
                .is_empty()
        );

        // A new credential of that name adopts it, using its token.
        Api::<OAuthCredential>::namespaced(client.clone(), &ns)
            .create(
                &PostParams::default(),
                &OAuthCredential::new("kept", {
                    let mut spec =
                        credential_spec(&server, "kept", ClientAuthentication::ClientSecretBasic);
                    spec.output.deletion_policy = DeletionPolicy::Orphan;
                    spec
                }),
            )
            .await
            .unwrap();
        let status =
            wait_for_condition(&client, &ns, "kept", READY, "True", Duration::from_secs(20)).await;
        assert_eq!(server.call_count(), calls, "adopted without a token call");
        let adopted = output(&client, &ns, "kept-token").await.unwrap();
        let uid = credential(&client, &ns, "kept")
            .await
            .unwrap()
            .uid()
            .unwrap();
        assert_eq!(
            adopted
                .owner_references()
                .iter()
                .map(|r| r.uid.as_str())
                .collect::<Vec<_>>(),
            [uid.as_str()]
        );
        assert!(!adopted.labels().contains_key(ORPHANED_LABEL));
        assert_eq!(text(&adopted, "access_token"), token);
        assert!(
            status.refresh_at.is_some() && status.expires_at.is_some(),
            "{status:?}"
        );
        assert!(!events_with_reason(&client, &ns, "Adopted").await.is_empty());
        delete_and_wait(&client, &ns, "kept", Duration::from_secs(20)).await;
    })
    .await;
}

#[tokio::test]
async fn an_edited_or_deleted_output_is_put_back_within_seconds_without_a_token_call() {
    with_namespace("drift", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        create_client_secret(&client, &ns).await;
        let mut operator = Operator::start(&ns);
        create_credential(&client, &ns, &server, "drift").await;
        wait_for_condition(
            &client,
            &ns,
            "drift",
            READY,
            "True",
            Duration::from_secs(40),
        )
        .await;
        let token = access_token_in(&client, &ns, "drift-token").await.unwrap();
        let calls = server.call_count();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let edit = json!({"data": {
            "access_token": base64::engine::general_purpose::STANDARD.encode("forged"),
            "extra": base64::engine::general_purpose::STANDARD.encode("added"),
        }});
        let restored = |want: String| {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                output(&client, &ns, "drift-token").await.filter(|s| {
                    let data = s.data.clone().unwrap_or_default();
                    data.get("access_token") == Some(&ByteString(want.clone().into_bytes()))
                        && !data.contains_key("extra")
                })
            }
        };

        let started = Instant::now();
        secrets
            .patch("drift-token", &PatchParams::default(), &Patch::Merge(&edit))
            .await
            .unwrap();
        eventually("the edit undone", Duration::from_secs(5), || {
            restored(token.clone())
        })
        .await;
        eprintln!("edited output restored after {:?}", started.elapsed());
        assert_eq!(server.call_count(), calls, "restored without a token call");
        assert!(
            !events_with_reason(&client, &ns, "OutputRestored")
                .await
                .is_empty()
        );

        let started = Instant::now();
        secrets
            .delete("drift-token", &DeleteParams::default())
            .await
            .unwrap();
        eventually("the deleted output back", Duration::from_secs(5), || {
            restored(token.clone())
        })
        .await;
        eprintln!("deleted output restored after {:?}", started.elapsed());
        assert_eq!(server.call_count(), calls, "restored without a token call");

        // After a restart the token is no longer in memory: an edit is
        // noticed all the same, and undone with a fresh token.
        operator.restart().await;
        oauth_token_operator::tls::install_crypto_provider();
        let metrics = format!("{}/metrics", operator.admin_url().await);
        eventually(
            "the restarted operator to reconcile",
            Duration::from_secs(30),
            || async {
                let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
                text.contains("oauth_token_operator_credentials_scheduled 1")
                    .then_some(())
            },
        )
        .await;
        secrets
            .patch("drift-token", &PatchParams::default(), &Patch::Merge(&edit))
            .await
            .unwrap();
        let fixed = eventually(
            "the edit undone after a restart",
            Duration::from_secs(10),
            || async {
                output(&client, &ns, "drift-token").await.filter(|s| {
                    let data = s.data.clone().unwrap_or_default();
                    !data.contains_key("extra") && text(s, "access_token") != "forged"
                })
            },
        )
        .await;
        assert_eq!(
            server.call_count(),
            calls + 1,
            "one refresh after a restart"
        );
        assert_ne!(text(&fixed, "access_token"), token, "a new token");
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn revoke_on_delete_revokes_once_and_a_failing_revocation_never_holds_the_deletion() {
    with_namespace("revoke", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        create_client_secret(&client, &ns).await;
        let _operator = Operator::start(&ns);
        let revoking = |spec: &mut OAuthCredentialSpec| {
            spec.revoke_on_delete = true;
            spec.provider.revocation_endpoint = Some(server.revocation_url());
        };
        let revoked = create_with(&client, &ns, &server, "revoked", revoking).await;
        let stubborn = create_with(&client, &ns, &server, "stubborn", revoking).await;
        for name in ["revoked", "stubborn"] {
            wait_for_condition(&client, &ns, name, READY, "True", Duration::from_secs(40)).await;
            wait_for_finalizer(&client, &ns, name).await;
        }

        delete_and_wait(&client, &ns, "revoked", Duration::from_secs(20)).await;
        assert_eq!(
            server.revocations(),
            std::slice::from_ref(&revoked),
            "revoked once"
        );
        assert!(!server.is_live(&revoked));
        assert!(!events_with_reason(&client, &ns, "Revoked").await.is_empty());

        server.fail_revocations(1000);
        let took = delete_and_wait(&client, &ns, "stubborn", Duration::from_secs(60)).await;
        eprintln!("deletion with a failing revocation endpoint took {took:?}");
        let attempts = server
            .revocations()
            .iter()
            .filter(|t| **t == stubborn)
            .count();
        assert_eq!(attempts, 5, "a bounded number of attempts");
        assert!(server.is_live(&stubborn), "never revoked");
        let failed = events_with_reason(&client, &ns, "RevocationFailed").await;
        let note = failed
            .first()
            .and_then(|e| e.message.clone())
            .unwrap_or_default();
        assert!(
            note.contains("after 5 attempts") && note.contains("HTTP 503"),
            "{note}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_time_limited_grant_shows_its_expiry_and_warns_at_the_configured_time() {
    with_namespace("grant-expiry", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        server.refresh_token_expires_in(Some(40));
        create_client_secret(&client, &ns).await;
        let operator = Operator::start_with(&ns, &["--refresh-token-expiry-warning", "30s"]);
        create_credential(&client, &ns, &server, "limited").await;
        let status = wait_for_condition(
            &client,
            &ns,
            "limited",
            READY,
            "True",
            Duration::from_secs(40),
        )
        .await;
        let refreshed = status.last_refresh_time.clone().unwrap().0;
        let grant_ends = status
            .refresh_token
            .as_ref()
            .and_then(|r| r.expires_at.clone())
            .expect("status.refreshToken.expiresAt")
            .0;
        let lifetime = grant_ends.duration_since(refreshed).as_secs();
        assert!(
            (39..=41).contains(&lifetime),
            "expires {lifetime} s after the refresh"
        );
        assert_eq!(status.condition(READY).unwrap().reason, "TokenValid");

        let warned = eventually("RefreshTokenExpiring", Duration::from_secs(30), || async {
            let status = status_of(&client, &ns, "limited").await;
            let ready = status.condition(READY)?.clone();
            (ready.reason == "RefreshTokenExpiring").then_some(ready)
        })
        .await;
        assert_eq!(warned.status, "True", "still Ready");
        let at = k8s_openapi::jiff::Timestamp::now();
        let warned_after = at.duration_since(refreshed).as_secs();
        assert!(
            warned_after >= 9,
            "warned {warned_after} s after the refresh, before the warning time"
        );
        eprintln!("warned {warned_after} s after the refresh (configured: 10 s)");
        assert!(
            warned.message.contains(&grant_ends.to_string()),
            "{}",
            warned.message
        );
        eventually(
            "one RefreshTokenExpiring event",
            Duration::from_secs(10),
            || async {
                (events_with_reason(&client, &ns, "RefreshTokenExpiring")
                    .await
                    .len()
                    == 1)
                    .then_some(())
            },
        )
        .await;
        oauth_token_operator::tls::install_crypto_provider();
        let metrics = reqwest::get(format!("{}/metrics", operator.admin_url().await))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = format!(
            "oauth_token_operator_refresh_token_earliest_expiry_timestamp_seconds {}",
            grant_ends.as_second()
        );
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");

        let status_cli = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"))
            .args(["status", "-n", &ns, "-o", "wide"])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&status_cli.stdout);
        assert!(status_cli.status.success(), "{shown}");
        assert!(
            shown.contains("RefreshTokenExpiring") && shown.contains("REFRESH TOKEN EXPIRES"),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("fix: oauth-token-operator authorize {ns}/limited")),
            "{shown}"
        );
    })
    .await;
}
