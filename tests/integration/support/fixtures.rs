//! Objects the operator tests create: the CRD, the client and refresh-token
//! Secrets, credentials; and the checks every operator test ends with.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use oauth_token_operator::input_secrets::{CLIENT_SECRET_TYPE, REFRESH_TOKEN_SECRET_TYPE};
use oauth_token_operator::resource::{
    ClientAuthentication, ClientSecretRef, FORCE_REFRESH_ANNOTATION, OAuthCredential,
    OAuthCredentialSpec, OAuthCredentialStatus, Output, Provider, READY, RefreshTokenSecretRef,
};

use super::eventually;
use super::operator::Operator;
use super::token_server::{CLIENT_ID, CLIENT_SECRET, TokenServer};

pub const CLIENT_SECRET_NAME: &str = "oauth-client";

/// Applies the OAuthCredential CRD (idempotent) and waits until it is served.
pub async fn ensure_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = OAuthCredential::crd();
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("oauth-token-operator-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the OAuthCredential CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &crd.name_any(), conditions::is_crd_established()),
    )
    .await
    .expect("CRD established within 30 s")
    .expect("watch CRD");
}

/// A Secret of `type_` (an input's type, or `Opaque`) with `data`.
pub fn typed_secret(name: &str, type_: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        type_: Some(type_.into()),
        ..secret(name, data)
    }
}

pub fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

pub async fn create_client_secret(client: &Client, ns: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &typed_secret(
                CLIENT_SECRET_NAME,
                CLIENT_SECRET_TYPE,
                &[("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)],
            ),
        )
        .await
        .expect("create client Secret");
}

/// Stores `refresh_token` in the Secret `<name>-refresh`, creating it or
/// replacing its value.
pub async fn put_refresh_token(client: &Client, ns: &str, name: &str, refresh_token: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let body = typed_secret(
        &format!("{name}-refresh"),
        REFRESH_TOKEN_SECRET_TYPE,
        &[("refresh_token", refresh_token)],
    );
    secrets
        .patch(
            &format!("{name}-refresh"),
            &PatchParams::apply("oauth-token-operator-tests").force(),
            &Patch::Apply(&body),
        )
        .await
        .expect("store refresh token");
}

pub fn credential_spec(
    server: &TokenServer,
    name: &str,
    authentication: ClientAuthentication,
) -> OAuthCredentialSpec {
    OAuthCredentialSpec {
        provider: Provider {
            token_endpoint: Some(server.url()),
            client_authentication: Some(authentication),
            ..Default::default()
        },
        client_secret_ref: ClientSecretRef {
            name: CLIENT_SECRET_NAME.into(),
            client_id_key: "client_id".into(),
            client_secret_key: "client_secret".into(),
        },
        refresh_token_secret_ref: RefreshTokenSecretRef {
            name: format!("{name}-refresh"),
            key: "refresh_token".into(),
        },
        scopes: vec!["https://www.googleapis.com/auth/gmail.send".into()],
        output: Output {
            secret_name: format!("{name}-token"),
            ..Default::default()
        },
        refresh_before: None,
        revoke_on_delete: false,
    }
}

/// Creates a credential `name` with its own grant and refresh-token Secret;
/// returns the refresh token.
pub async fn create_credential(
    client: &Client,
    ns: &str,
    server: &TokenServer,
    name: &str,
) -> String {
    create_credential_with(
        client,
        ns,
        server,
        name,
        ClientAuthentication::ClientSecretBasic,
    )
    .await
}

pub async fn create_credential_with(
    client: &Client,
    ns: &str,
    server: &TokenServer,
    name: &str,
    authentication: ClientAuthentication,
) -> String {
    let refresh_token = server.new_grant();
    put_refresh_token(client, ns, name, &refresh_token).await;
    let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), ns);
    credentials
        .create(
            &PostParams::default(),
            &OAuthCredential::new(name, credential_spec(server, name, authentication)),
        )
        .await
        .expect("create credential");
    refresh_token
}

pub async fn status_of(client: &Client, ns: &str, name: &str) -> OAuthCredentialStatus {
    let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), ns);
    credentials
        .get(name)
        .await
        .expect("get credential")
        .status
        .unwrap_or_default()
}

/// Waits until the credential's condition `type_` has `value`.
pub async fn wait_for_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    value: &str,
    limit: Duration,
) -> OAuthCredentialStatus {
    eventually(&format!("{name}: {type_}={value}"), limit, || async {
        let status = status_of(client, ns, name).await;
        status
            .condition(type_)
            .is_some_and(|c| c.status == value)
            .then_some(status)
    })
    .await
}

pub async fn access_token_in(client: &Client, ns: &str, secret_name: &str) -> Option<String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets
        .get_opt(secret_name)
        .await
        .expect("get output Secret")?;
    let bytes = secret.data?.get("access_token")?.0.clone();
    Some(String::from_utf8(bytes).expect("utf-8 token"))
}

pub async fn events_with_reason(client: &Client, ns: &str, reason: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// Fails if any token the server issued appears in the operator's output, in
/// the namespace's events, or in any credential's status.
pub async fn assert_no_token_leaked(
    client: &Client,
    ns: &str,
    server: &TokenServer,
    operator: &Operator,
) {
    let tokens = server.issued_tokens();
    assert!(
        !tokens.is_empty(),
        "the test issued no tokens, so the leak check would prove nothing"
    );
    let logs = operator.output();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let events = serde_json::to_string(
        &events
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items,
    )
    .unwrap();
    let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), ns);
    let statuses: Vec<_> = credentials
        .list(&ListParams::default())
        .await
        .expect("list credentials")
        .items
        .into_iter()
        .map(|c| c.status)
        .collect();
    let statuses = serde_json::to_string(&statuses).unwrap();
    for token in &tokens {
        assert!(
            !logs.contains(token.as_str()),
            "a token issued by the provider appears in the operator's log"
        );
        assert!(
            !events.contains(token.as_str()),
            "a token issued by the provider appears in an event"
        );
        assert!(
            !statuses.contains(token.as_str()),
            "a token issued by the provider appears in a status"
        );
    }
    assert!(
        !logs.contains(CLIENT_SECRET),
        "the client secret appears in the operator's log"
    );
}

/// Asks for a refresh now through the force-refresh annotation.
pub async fn force_refresh(client: &Client, ns: &str, name: &str, value: &str) {
    let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), ns);
    let annotation =
        serde_json::json!({"metadata": {"annotations": {FORCE_REFRESH_ANNOTATION: value}}});
    credentials
        .patch(name, &PatchParams::default(), &Patch::Merge(annotation))
        .await
        .expect("annotate credential");
}

/// Creates `count` credentials named `<prefix>1`.. and waits until all are Ready.
pub async fn create_ready_credentials(
    client: &Client,
    ns: &str,
    server: &TokenServer,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    let names: Vec<String> = (1..=count).map(|i| format!("{prefix}{i}")).collect();
    for name in &names {
        create_credential(client, ns, server, name).await;
    }
    for name in &names {
        wait_for_condition(client, ns, name, READY, "True", Duration::from_secs(40)).await;
    }
    names
}
