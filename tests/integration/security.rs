//! Attacks on the operator as a tenant would try them, against the real
//! control plane; each must fail. The operator is not a deputy: a credential
//! makes it read, change or send only Secrets that opted in, only to allowed
//! endpoints, and never anything of its own namespace; shared and squatted
//! Secrets are named, not fought over; echoed secrets reach nobody.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use oauth_token_operator::input_secrets::{CLIENT_SECRET_TYPE, REFRESH_TOKEN_SECRET_TYPE};
use oauth_token_operator::resource::{
    ClientAuthentication, OAuthCredential, OAuthCredentialSpec, READY, REAUTH_REQUIRED,
};
use serde_json::json;

use crate::support::fixtures::*;
use crate::support::operator::Operator;
use crate::support::token_server::{CLIENT_ID, CLIENT_SECRET, TokenServer};
use crate::support::{eventually, operator_namespace, with_namespace};

const WITHIN: Duration = Duration::from_secs(30);

async fn create(client: &Client, ns: &str, name: &str, spec: OAuthCredentialSpec) {
    Api::<OAuthCredential>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &OAuthCredential::new(name, spec))
        .await
        .expect("create credential");
}

/// Waits until the credential's current failure has `reason`; returns its
/// message.
async fn refused(client: &Client, ns: &str, name: &str, reason: &str) -> String {
    eventually(&format!("{name} refused with {reason}"), WITHIN, || async {
        let status = status_of(client, ns, name).await;
        let failure = status.last_failure.filter(|_| status.failed_attempts > 0)?;
        (failure.reason == reason).then_some(failure.message)
    })
    .await
}

async fn get_secret(client: &Client, ns: &str, name: &str) -> Secret {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("get Secret")
}

/// Asserts that a Secret is exactly as it was: same version, same data.
async fn untouched(client: &Client, ns: &str, before: &Secret) {
    let now = get_secret(client, ns, before.metadata.name.as_deref().unwrap()).await;
    assert_eq!(
        now.metadata.resource_version, before.metadata.resource_version,
        "{:?} was written",
        before.metadata.name
    );
    assert_eq!(now.data, before.data);
}

#[tokio::test]
async fn an_ordinary_secret_and_a_service_account_token_named_as_inputs_are_neither_sent_nor_changed()
 {
    with_namespace("sec-deputy", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start(&ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        // A database password, and a ServiceAccount token the control plane fills in.
        let password = "hunter2-database-password";
        secrets
            .create(
                &PostParams::default(),
                &secret("db-creds", &[("password", password)]),
            )
            .await
            .unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "victim"}})).unwrap(),
            )
            .await
            .unwrap();
        let sa_token: Secret = serde_json::from_value(json!({
            "metadata": {"name": "victim-token",
                         "annotations": {"kubernetes.io/service-account.name": "victim"}},
            "type": "kubernetes.io/service-account-token",
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &sa_token)
            .await
            .unwrap();
        let sa_token = eventually("the ServiceAccount token", WITHIN, || async {
            let s = secrets.get("victim-token").await.ok()?;
            s.data.as_ref()?.contains_key("token").then_some(s)
        })
        .await;
        let db_creds = get_secret(&client, &ns, "db-creds").await;

        // The tenant names both as inputs of a credential of its own.
        let mut spec = credential_spec(&server, "deputy", ClientAuthentication::ClientSecretPost);
        spec.client_secret_ref.name = "victim-token".into();
        spec.client_secret_ref.client_id_key = "namespace".into();
        spec.client_secret_ref.client_secret_key = "token".into();
        spec.refresh_token_secret_ref.name = "db-creds".into();
        spec.refresh_token_secret_ref.key = "password".into();
        create(&client, &ns, "deputy", spec.clone()).await;
        let message = refused(&client, &ns, "deputy", "SecretNotAccepted").await;
        assert!(message.contains("victim-token"), "{message}");
        assert!(
            message.contains(&format!("oauth-token-operator opt-in {ns}/deputy")),
            "{message}"
        );

        // With a genuine client, the password is the next thing refused.
        create_client_secret(&client, &ns).await;
        spec.client_secret_ref =
            credential_spec(&server, "x", ClientAuthentication::ClientSecretPost).client_secret_ref;
        Api::<OAuthCredential>::namespaced(client.clone(), &ns)
            .patch(
                "deputy",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"clientSecretRef": spec.client_secret_ref}})),
            )
            .await
            .unwrap();
        let message = eventually("db-creds refused", WITHIN, || async {
            let status = status_of(&client, &ns, "deputy").await;
            let failure = status.last_failure?;
            (failure.reason == "SecretNotAccepted" && failure.message.contains("db-creds"))
                .then_some(failure.message)
        })
        .await;
        assert!(
            message.contains("oauth.tokenoperator.io/refresh-token"),
            "{message}"
        );

        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(server.call_count(), 0, "nothing was sent anywhere");
        untouched(&client, &ns, &db_creds).await;
        untouched(&client, &ns, &sa_token).await;
        let token = String::from_utf8(sa_token.data.unwrap()["token"].0.clone()).unwrap();
        let said = format!(
            "{}{}",
            operator.output(),
            serde_json::to_string(&status_of(&client, &ns, "deputy").await).unwrap()
        );
        assert!(!said.contains(password) && !said.contains(&token));
    })
    .await;
}

#[tokio::test]
async fn an_opaque_secret_from_before_is_opted_in_by_the_one_command_the_status_names() {
    with_namespace("sec-optin", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start(&ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let grant = server.new_grant();
        for (name, data) in [
            ("oauth-client", vec![("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)]),
            ("old-refresh", vec![("refresh_token", grant.as_str())]),
        ] {
            let mut s = secret(name, &data);
            s.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
            secrets.create(&PostParams::default(), &s).await.unwrap();
        }
        create(
            &client,
            &ns,
            "old",
            credential_spec(&server, "old", ClientAuthentication::ClientSecretBasic),
        )
        .await;
        let message = refused(&client, &ns, "old", "SecretNotAccepted").await;
        let command = format!("oauth-token-operator opt-in {ns}/old");
        assert!(message.contains(&command), "{message}");

        let ran = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"))
            .args(["opt-in", &format!("{ns}/old")])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&ran.stdout).to_string()
            + &String::from_utf8_lossy(&ran.stderr);
        assert!(ran.status.success(), "{said}");
        assert!(!said.contains(&grant) && !said.contains(CLIENT_SECRET), "{said}");
        for (name, type_) in [("oauth-client", CLIENT_SECRET_TYPE), ("old-refresh", REFRESH_TOKEN_SECRET_TYPE)] {
            let now = get_secret(&client, &ns, name).await;
            assert_eq!(now.type_.as_deref(), Some(type_));
            assert_eq!(now.metadata.labels.unwrap()["team"], "a", "labels kept");
        }
        wait_for_condition(&client, &ns, "old", READY, "True", WITHIN).await;
        assert_eq!(server.calls()[0].refresh_token, grant, "the same token, now used");
        assert_no_token_leaked(&client, &ns, &server, &operator).await;

        // A ServiceAccount token is never turned into an input.
        let sa_token: Secret = serde_json::from_value(json!({
            "metadata": {"name": "sa", "annotations": {"kubernetes.io/service-account.name": "default"}},
            "type": "kubernetes.io/service-account-token",
        }))
        .unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap())
            .await
            .ok();
        secrets.create(&PostParams::default(), &sa_token).await.unwrap();
        let mut spec = credential_spec(&server, "sa", ClientAuthentication::ClientSecretBasic);
        spec.refresh_token_secret_ref.name = "sa".into();
        create(&client, &ns, "sa", spec).await;
        let ran = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"))
            .args(["opt-in", &format!("{ns}/sa")])
            .output()
            .unwrap();
        assert!(!ran.status.success());
        let said = String::from_utf8_lossy(&ran.stderr);
        assert!(said.contains("kubernetes.io/service-account-token"), "{said}");
        assert_eq!(
            get_secret(&client, &ns, "sa").await.type_.as_deref(),
            Some("kubernetes.io/service-account-token")
        );
    })
    .await;
}

#[tokio::test]
async fn the_seal_key_secret_is_neither_sent_nor_changed_and_the_operators_namespace_is_not_served()
{
    with_namespace("sec-keys", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let own = operator_namespace(&ns);
        // An operator that watches its own namespace, as one watching every
        // namespace does.
        let mut operator = Operator::start_watching(&ns, &own);
        let keys = eventually("the seal-key Secret", WITHIN, || async {
            Api::<Secret>::namespaced(client.clone(), &own)
                .get_opt("oauth-token-operator-seal-keys")
                .await
                .ok()
                .flatten()
        })
        .await;
        let mut spec = credential_spec(&server, "thief", ClientAuthentication::ClientSecretPost);
        spec.client_secret_ref.name = "oauth-token-operator-seal-keys".into();
        spec.client_secret_ref.client_id_key = "keyring.yaml".into();
        spec.client_secret_ref.client_secret_key = "keyring.yaml".into();
        spec.refresh_token_secret_ref.name = "oauth-token-operator-seal-keys".into();
        spec.refresh_token_secret_ref.key = "keyring.yaml".into();
        create(&client, &own, "thief", spec).await;
        let message = refused(&client, &own, "thief", "NamespaceNotServed").await;
        assert!(message.contains("seal keys"), "{message}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(server.call_count(), 0);
        untouched(&client, &own, &keys).await;
        // And the key ring still loads.
        operator.restart().await;
        operator.admin_url().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(operator.is_running(), "{}", operator.output());
        assert!(!operator.output().contains("missing field"));
    })
    .await;
}

#[tokio::test]
async fn a_swapped_endpoint_or_client_receives_nothing_and_needs_a_new_consent() {
    with_namespace("sec-swap", |client, ns| async move {
        ensure_crd(&client).await;
        let first = TokenServer::start(Duration::from_secs(3600)).await;
        let second = TokenServer::start(Duration::from_secs(3600)).await;
        let unlisted = TokenServer::start(Duration::from_secs(3600)).await;
        let allow = |s: &TokenServer| format!("http://{}", s.addr);
        let (a, b) = (allow(&first), allow(&second));
        let _operator = Operator::start_with_own_allowlist(
            &ns,
            &["--allowed-endpoint", &a, "--allowed-endpoint", &b],
        );
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &first, "mail").await;
        wait_for_condition(&client, &ns, "mail", READY, "True", WITHIN).await;
        let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &ns);
        let point_to = |url: String| {
            let credentials = credentials.clone();
            async move {
                credentials
                    .patch(
                        "mail",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"provider": {"tokenEndpoint": url}}})),
                    )
                    .await
                    .unwrap();
            }
        };

        // Someone who may edit the credential points it at another allowed
        // host: the sealed token is bound to the first.
        point_to(second.url()).await;
        let message = refused(&client, &ns, "mail", "SealedForAnotherClient").await;
        assert!(
            message.contains(&format!("authorize {ns}/mail")),
            "{message}"
        );
        assert!(
            status_of(&client, &ns, "mail")
                .await
                .is_true(REAUTH_REQUIRED)
        );
        // ...or at a host the platform never allowed.
        point_to(unlisted.url()).await;
        refused(&client, &ns, "mail", "EndpointNotAllowed").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            second.call_count(),
            0,
            "the swapped endpoint received nothing"
        );
        assert_eq!(
            unlisted.call_count(),
            0,
            "the unlisted endpoint received nothing"
        );
        assert_eq!(first.call_count(), 1, "and the old one nothing more");

        // Back to the first endpoint, but with another client id: refused too.
        point_to(first.url()).await;
        wait_for_condition(&client, &ns, "mail", READY, "True", WITHIN).await;
        Api::<Secret>::namespaced(client.clone(), &ns)
            .patch(
                CLIENT_SECRET_NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"client_id": "someone-elses-client"}})),
            )
            .await
            .unwrap();
        force_refresh(&client, &ns, "mail", "after-client-swap").await;
        refused(&client, &ns, "mail", "SealedForAnotherClient").await;
        assert!(
            first.calls().iter().skip(1).all(|c| c.status == 200),
            "no call carried the token for the other client"
        );
    })
    .await;
}

#[tokio::test]
async fn a_thousand_credentials_sharing_one_refresh_token_secret_end_with_one_holder_and_a_reason()
{
    with_namespace("sec-shared", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        let grant = server.new_grant();
        put_refresh_token(&client, &ns, "shared", &grant).await;
        let spec = |name: &str| {
            let mut spec = credential_spec(&server, name, ClientAuthentication::ClientSecretBasic);
            spec.refresh_token_secret_ref.name = "shared-refresh".into();
            spec
        };
        // The first, alone and a second earlier than the rest, holds it.
        create(&client, &ns, "c0000", spec("c0000")).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        futures::stream::iter(1..1000)
            .map(|i| {
                let (client, ns, name) = (client.clone(), ns.clone(), format!("c{i:04}"));
                let spec = spec(&name);
                async move { create(&client, &ns, &name, spec).await }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
        let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &ns);
        let (ready, shared) = eventually(
            "every credential settled",
            Duration::from_secs(180),
            || async {
                let all = credentials.list(&ListParams::default()).await.ok()?.items;
                let ready: Vec<String> = all
                    .iter()
                    .filter(|c| c.status.as_ref().is_some_and(|s| s.is_true(READY)))
                    .filter_map(|c| c.metadata.name.clone())
                    .collect();
                let shared = all
                    .iter()
                    .filter(|c| {
                        c.status
                            .as_ref()
                            .and_then(|s| s.last_failure.as_ref())
                            .is_some_and(|f| {
                                f.reason == "RefreshTokenSecretShared"
                                    && f.message.contains("c0000")
                            })
                    })
                    .count();
                (ready.len() + shared == 1000).then_some((ready, shared))
            },
        )
        .await;
        assert_eq!(ready, vec!["c0000".to_string()]);
        assert_eq!(shared, 999);
        assert_eq!(server.revoked_grants(), 0);
        assert_eq!(
            server.call_count(),
            1,
            "the refresh token was used once, by its holder"
        );
        let stored = get_secret(&client, &ns, "shared-refresh").await;
        assert!(
            stored.data.unwrap().contains_key("refresh_token.sealed"),
            "kept, sealed"
        );
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn an_output_name_that_is_another_credentials_input_is_refused() {
    with_namespace("sec-squat", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let _operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        // The victim's refresh-token Secret does not exist yet.
        create(
            &client,
            &ns,
            "victim",
            credential_spec(&server, "victim", ClientAuthentication::ClientSecretBasic),
        )
        .await;
        let grant = server.new_grant();
        put_refresh_token(&client, &ns, "squatter", &grant).await;
        let mut spec =
            credential_spec(&server, "squatter", ClientAuthentication::ClientSecretBasic);
        spec.output.secret_name = "victim-refresh".into();
        create(&client, &ns, "squatter", spec).await;
        let message = refused(&client, &ns, "squatter", "OutputNameInUse").await;
        assert!(message.contains("victim"), "{message}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            Api::<Secret>::namespaced(client.clone(), &ns)
                .get_opt("victim-refresh")
                .await
                .unwrap()
                .is_none(),
            "the squatter's output was never created"
        );
        assert_eq!(server.call_count(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_provider_that_echoes_the_request_leaves_no_secret_in_status_events_logs_or_the_cli() {
    with_namespace("sec-echo", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        server.echo(true);
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        let basic = create_credential(&client, &ns, &server, "basic").await;
        let post = create_credential_with(
            &client,
            &ns,
            &server,
            "post",
            ClientAuthentication::ClientSecretPost,
        )
        .await;
        for name in ["basic", "post"] {
            refused(&client, &ns, name, "InvalidRequest").await;
        }
        let cli = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"))
            .args(["status", "-n", &ns, "-o", "json"])
            .output()
            .unwrap();
        assert!(cli.status.success());
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
        let events = events.list(&ListParams::default()).await.unwrap().items;
        assert!(!events.is_empty(), "the failures made events");
        let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &ns);
        let statuses: Vec<_> = credentials
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|c| c.status)
            .collect();
        let everything = format!(
            "{}\n{}\n{}\n{}",
            serde_json::to_string(&statuses).unwrap(),
            serde_json::to_string(&events).unwrap(),
            String::from_utf8_lossy(&cli.stdout),
            operator.output()
        );
        assert!(
            everything.contains("[redacted]"),
            "the echo was seen and scrubbed"
        );
        for secret in [basic.as_str(), post.as_str(), CLIENT_SECRET, CLIENT_ID] {
            assert!(!everything.contains(secret), "{secret:?} leaked");
            let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
            assert!(
                !everything.contains(&encoded),
                "{secret:?} leaked form-encoded"
            );
        }
        assert!(
            !everything.contains('\u{202e}'),
            "no bidirectional override"
        );
        assert!(!everything.contains("\\u202e"), "not even escaped");
    })
    .await;
}
