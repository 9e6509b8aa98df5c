//! Exact call sequences of the shell, on a mock API server (`tower-test`):
//! every request a reconcile makes is checked in order and answered by the
//! test, and a reconcile that should make none is seen to make none. These
//! are in addition to the tests against the real control plane.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Client, Resource};
use secrecy::SecretString;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

use super::{Context, ControllerConfig, reconcile};
use crate::admin::Health;
use crate::breaker::Shares;
use crate::clock::{ManualClock, SharedClock};
use crate::endpoint::EndpointPolicy;
use crate::input_secrets::{CLIENT_SECRET_TYPE, InputKind, REFRESH_TOKEN_SECRET_TYPE};
use crate::keys::Keys;
use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::references::SecretReferences;
use crate::resource::{
    ClientAuthentication, ClientSecretRef, OAuthCredential, OAuthCredentialSpec,
    OAuthCredentialStatus, Output, Provider, READY, RefreshTokenSecretRef, RefreshTokenState,
};
use crate::seal::{Binding, KeyRing};
use crate::status::{self, Success};
use crate::token_client::TokenClientConfig;

const NS: &str = "team-a";
const NAME: &str = "gmail";
const UID: &str = "uid-1";
const NOW: &str = "2026-11-21T19:00:00Z";

type Mock = Handle<Request<Body>, Response<Body>>;

/// A loopback token endpoint that answers every refresh with `answer` and
/// counts the calls.
struct Endpoint {
    address: SocketAddr,
    calls: Arc<AtomicUsize>,
}

impl Endpoint {
    async fn start(answer: Value) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let app = axum::Router::new().fallback(move || {
            let (calls, answer) = (counted.clone(), answer.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                ([("content-type", "application/json")], answer.to_string())
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Endpoint { address, calls }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn keys() -> KeyRing {
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [4u8; 32]);
    KeyRing::from_yaml(&format!("primary: k1\nkeys:\n  k1: {key}\n")).unwrap()
}

fn credential(endpoint: &Endpoint, status: Option<OAuthCredentialStatus>) -> OAuthCredential {
    let mut credential = OAuthCredential::new(
        NAME,
        OAuthCredentialSpec {
            provider: Provider {
                token_endpoint: Some(format!("http://{}/token", endpoint.address)),
                client_authentication: Some(ClientAuthentication::ClientSecretPost),
                ..Default::default()
            },
            client_secret_ref: ClientSecretRef {
                name: "client".into(),
                client_id_key: "client_id".into(),
                client_secret_key: "client_secret".into(),
            },
            refresh_token_secret_ref: RefreshTokenSecretRef {
                name: "refresh".into(),
                key: "refresh_token".into(),
            },
            scopes: vec!["s".into()],
            output: Output {
                secret_name: "out".into(),
                ..Default::default()
            },
            refresh_before: None,
            revoke_on_delete: false,
        },
    );
    credential.metadata.namespace = Some(NS.into());
    credential.metadata.uid = Some(UID.into());
    credential.metadata.generation = Some(1);
    credential.metadata.resource_version = Some("100".into());
    credential.status = status;
    credential
}

/// Status after a refresh at `issued` of a token that expires at `expires`,
/// due again at `due`; the refresh-token Secret at version 7, sealed with k1.
fn refreshed_status(issued: &str, expires: &str, due: &str) -> OAuthCredentialStatus {
    let mut status = status::after_success(
        None,
        Success {
            now: ts(issued),
            generation: 1,
            expires_at: ts(expires),
            refresh_at: ts(due),
            scope: Some("s"),
            output_secret: "out",
            forced: None,
            refresh_token: RefreshTokenState {
                secret_version: "7".into(),
                sealed_with: Some("k1".into()),
                expires_at: None,
                format: Some("v2".into()),
            },
            short_lifetime: None,
        },
    );
    // As stored: round-tripped through JSON.
    status = serde_json::from_value(serde_json::to_value(status).unwrap()).unwrap();
    status
}

fn secret(name: &str, type_: &str, version: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        type_: Some(type_.into()),
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            resource_version: Some(version.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

fn client_secret() -> Secret {
    secret(
        "client",
        CLIENT_SECRET_TYPE,
        "5",
        &[("client_id", "id"), ("client_secret", "client-secret")],
    )
}

/// The refresh-token Secret, its token sealed for `endpoint` and client `id`.
fn refresh_secret(endpoint: &Endpoint, version: &str) -> Secret {
    let url = format!("http://{}/token", endpoint.address);
    let binding = Binding {
        namespace: NS,
        name: NAME,
        token_endpoint: &url,
        client_id: "id",
    };
    let sealed = keys().seal(&SecretString::from("refresh-1"), &binding);
    secret(
        "refresh",
        REFRESH_TOKEN_SECRET_TYPE,
        version,
        &[("refresh_token.sealed", &sealed)],
    )
}

/// A context whose API server is the mock, whose caches hold the output
/// Secret (owned by the credential) and the input Secrets' versions, and
/// whose clock reads `NOW`.
fn context(client: Client) -> Arc<Context> {
    let clock: SharedClock = Arc::new(ManualClock::new(ts(NOW)));
    let config = ControllerConfig {
        concurrency: 4,
        watch_namespace: Some(NS.into()),
        token_client: TokenClientConfig {
            allow_insecure_loopback_http: true,
            ..Default::default()
        },
        instance: None,
        fence: Fence::open(),
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(Health::new(
            clock.clone(),
            Duration::from_secs(60),
            Duration::ZERO,
        )),
        endpoint_rate: NonZeroU32::new(10).unwrap(),
        endpoint_burst: NonZeroU32::new(10).unwrap(),
        clock,
        endpoints: EndpointPolicy {
            allow_insecure_loopback_http: true,
            allowed: vec!["http://127.0.0.1:*".parse().unwrap()],
        },
        operator_namespace: "oto-system".into(),
        shares: Shares {
            per_endpoint: 2,
            per_namespace: 3,
        },
        token_types: vec!["Bearer".into()],
        min_refresh_interval: Duration::from_secs(1),
        refresh_token_warning: Duration::from_secs(7 * 24 * 3600),
        shard_scope: None,
        memory: Default::default(),
    };
    let (credentials, _) = reflector::store();
    let owned = super::owned_outputs::OwnedOutputs::default();
    let output = PartialObjectMeta::<Secret> {
        metadata: ObjectMeta {
            name: Some("out".into()),
            namespace: Some(NS.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: OAuthCredential::api_version(&()).into(),
                kind: OAuthCredential::kind(&()).into(),
                name: NAME.into(),
                uid: UID.into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        ..Default::default()
    };
    owned.apply(&watcher::Event::Apply(output));
    let references = SecretReferences::default();
    references.remember(NS, "client", "5", Some(InputKind::Client));
    references.remember(NS, "refresh", "7", Some(InputKind::RefreshToken));
    Arc::new(Context::new(
        client,
        &config,
        Keys::new(keys()),
        credentials,
        owned,
        references,
    ))
}

/// The next request, its body as JSON (null when empty), and its responder.
async fn next(mock: &mut Mock) -> (Method, String, Value, SendResponse<Response<Body>>) {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(5), mock.next_request())
        .await
        .expect("a request within 5 s")
        .expect("the client is alive");
    let method = request.method().clone();
    let uri = request.uri().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (method, uri, body, respond)
}

fn reply(respond: SendResponse<Response<Body>>, code: StatusCode, body: &impl serde::Serialize) {
    let bytes = serde_json::to_vec(body).unwrap();
    respond.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(bytes))
            .unwrap(),
    );
}

fn error(respond: SendResponse<Response<Body>>, code: u16, reason: &str) {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("mock: {reason}"), "reason": reason, "code": code,
    });
    reply(respond, StatusCode::from_u16(code).unwrap(), &status);
}

/// Answers the status patch with the credential carrying that status, and
/// returns the status.
fn answer_status_patch(
    respond: SendResponse<Response<Body>>,
    credential: &OAuthCredential,
    body: &Value,
) -> OAuthCredentialStatus {
    let status: OAuthCredentialStatus = serde_json::from_value(body["status"].clone()).unwrap();
    let mut updated = credential.clone();
    updated.status = Some(status.clone());
    reply(respond, StatusCode::OK, &updated);
    status
}

/// Asserts that no request follows.
async fn no_more_requests(mock: &mut Mock) {
    let more = tokio::time::timeout(Duration::from_millis(300), mock.next_request()).await;
    if let Ok(Some((request, _))) = more {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

const SECRETS: &str = "/api/v1/namespaces/team-a/secrets";
const STATUS: &str =
    "/apis/oauth.tokenoperator.io/v1alpha1/namespaces/team-a/oauthcredentials/gmail/status";

#[tokio::test]
async fn an_idle_reconcile_makes_no_request_at_all() {
    let endpoint = Endpoint::start(json!({"access_token": "a", "expires_in": 3600})).await;
    let (service, mut mock) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    let status = refreshed_status(
        "2026-11-21T18:50:00Z",
        "2026-11-21T19:50:00Z",
        "2026-11-21T19:30:00Z",
    );
    let action = reconcile(Arc::new(credential(&endpoint, Some(status))), ctx)
        .await
        .unwrap();
    no_more_requests(&mut mock).await;
    assert_eq!(endpoint.calls(), 0);
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(30 * 60))
    );
}

#[tokio::test]
async fn a_due_refresh_reads_the_inputs_then_writes_the_output_secret_then_the_status() {
    let endpoint = Endpoint::start(json!({"access_token": "a2", "expires_in": 3600})).await;
    let (service, mut mock) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    let status = refreshed_status(
        "2026-11-21T18:00:00Z",
        "2026-11-21T19:00:30Z",
        "2026-11-21T18:40:00Z",
    );
    let credential = credential(&endpoint, Some(status));
    let run = tokio::spawn(reconcile(Arc::new(credential.clone()), ctx));

    let (method, uri, _, respond) = next(&mut mock).await;
    assert_eq!(
        (method, uri.as_str()),
        (Method::GET, &*format!("{SECRETS}/client"))
    );
    reply(respond, StatusCode::OK, &client_secret());
    let (method, uri, _, respond) = next(&mut mock).await;
    assert_eq!(
        (method, uri.as_str()),
        (Method::GET, &*format!("{SECRETS}/refresh"))
    );
    reply(respond, StatusCode::OK, &refresh_secret(&endpoint, "7"));
    let (method, uri, body, respond) = next(&mut mock).await;
    assert_eq!(method, Method::PATCH);
    assert!(uri.starts_with(&format!("{SECRETS}/out?")), "{uri}");
    assert_eq!(
        body["data"]["access_token"],
        json!("YTI="),
        "the new token, base64"
    );
    reply(respond, StatusCode::OK, &body);
    let (method, uri, body, respond) = next(&mut mock).await;
    assert_eq!(method, Method::PATCH);
    assert!(uri.starts_with(&format!("{STATUS}?")), "{uri}");
    let written = answer_status_patch(respond, &credential, &body);
    assert!(written.is_true(READY));
    assert_eq!(written.expires_at, Some(Time(ts("2026-11-21T20:00:00Z"))));

    run.await.unwrap().unwrap();
    no_more_requests(&mut mock).await;
    assert_eq!(endpoint.calls(), 1);
}

/// Runs a due refresh against an endpoint that rotates the refresh token;
/// `conflicts` of the refresh-token Secret's writes are answered 409 first.
async fn rotation(conflicts: usize) {
    let endpoint = Endpoint::start(json!({
        "access_token": "a2", "expires_in": 3600, "refresh_token": "refresh-2",
    }))
    .await;
    let (service, mut mock) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    let status = refreshed_status(
        "2026-11-21T18:00:00Z",
        "2026-11-21T19:00:30Z",
        "2026-11-21T18:40:00Z",
    );
    let credential = credential(&endpoint, Some(status));
    let run = tokio::spawn(reconcile(Arc::new(credential.clone()), ctx));

    let (_, uri, _, respond) = next(&mut mock).await;
    assert!(uri.ends_with("/secrets/client"), "{uri}");
    reply(respond, StatusCode::OK, &client_secret());
    let (_, uri, _, respond) = next(&mut mock).await;
    assert!(uri.ends_with("/secrets/refresh"), "{uri}");
    let read = refresh_secret(&endpoint, "7");
    reply(respond, StatusCode::OK, &read);
    for conflict in 0..=conflicts {
        // The first write after the token call: the rotated refresh token,
        // sealed, under the resourceVersion just read.
        let (method, uri, body, respond) = next(&mut mock).await;
        assert_eq!(method, Method::PUT, "{uri}");
        assert!(uri.starts_with(&format!("{SECRETS}/refresh")), "{uri}");
        let version = if conflict == 0 { "7" } else { "8" };
        assert_eq!(body["metadata"]["resourceVersion"], json!(version));
        let stored = body["data"]["refresh_token.sealed"].as_str().unwrap();
        assert!(
            !body.to_string().contains("refresh-2"),
            "no plaintext token"
        );
        if conflict < conflicts {
            error(respond, 409, "Conflict");
            // Re-read, then written again: never a second exchange.
            let (method, uri, _, respond) = next(&mut mock).await;
            assert_eq!(
                (method, uri.as_str()),
                (Method::GET, &*format!("{SECRETS}/refresh"))
            );
            // Same token, newer version (another field, say, changed).
            let mut again = read.clone();
            again.metadata.resource_version = Some("8".into());
            reply(respond, StatusCode::OK, &again);
        } else {
            assert!(!stored.is_empty());
            let mut written = body.clone();
            written["metadata"]["resourceVersion"] = json!("9");
            reply(respond, StatusCode::OK, &written);
        }
    }
    let (method, uri, body, respond) = next(&mut mock).await;
    assert_eq!(method, Method::PATCH);
    assert!(uri.starts_with(&format!("{SECRETS}/out?")), "{uri}");
    reply(respond, StatusCode::OK, &body);
    let (_, uri, body, respond) = next(&mut mock).await;
    assert!(uri.starts_with(STATUS), "{uri}");
    let written = answer_status_patch(respond, &credential, &body);
    let state = written.refresh_token.unwrap();
    assert_eq!(state.secret_version, "9");

    run.await.unwrap().unwrap();
    no_more_requests(&mut mock).await;
    assert_eq!(endpoint.calls(), 1, "one exchange, whatever the conflicts");
}

#[tokio::test]
async fn a_rotated_refresh_token_is_stored_before_anything_else() {
    rotation(0).await;
}

#[tokio::test]
async fn a_conflict_storing_the_rotated_token_rereads_and_retries_without_a_second_exchange() {
    rotation(2).await;
}

#[tokio::test]
async fn a_conflict_with_a_newer_token_stored_meanwhile_writes_nothing_over_it() {
    let endpoint = Endpoint::start(json!({
        "access_token": "a2", "expires_in": 3600, "refresh_token": "refresh-2",
    }))
    .await;
    let (service, mut mock) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    let status = refreshed_status(
        "2026-11-21T18:00:00Z",
        "2026-11-21T19:00:30Z",
        "2026-11-21T18:40:00Z",
    );
    let credential = credential(&endpoint, Some(status));
    let run = tokio::spawn(reconcile(Arc::new(credential.clone()), ctx));

    let (_, _, _, respond) = next(&mut mock).await;
    reply(respond, StatusCode::OK, &client_secret());
    let (_, _, _, respond) = next(&mut mock).await;
    reply(respond, StatusCode::OK, &refresh_secret(&endpoint, "7"));
    let (method, _, _, respond) = next(&mut mock).await;
    assert_eq!(method, Method::PUT);
    error(respond, 409, "Conflict");
    // Meanwhile a person (or authorize) stored a new grant's token.
    let (method, uri, _, respond) = next(&mut mock).await;
    assert_eq!(
        (method, uri.as_str()),
        (Method::GET, &*format!("{SECRETS}/refresh"))
    );
    let newer = secret(
        "refresh",
        REFRESH_TOKEN_SECRET_TYPE,
        "8",
        &[("refresh_token", "the-new-grant")],
    );
    reply(respond, StatusCode::OK, &newer);
    // No write over it: the access token is published, status recorded.
    let (method, uri, body, respond) = next(&mut mock).await;
    assert_eq!(method, Method::PATCH);
    assert!(uri.starts_with(&format!("{SECRETS}/out?")), "{uri}");
    reply(respond, StatusCode::OK, &body);
    let (method, uri, body, respond) = next(&mut mock).await;
    assert_eq!(method, Method::PATCH, "{uri}");
    assert!(uri.starts_with(STATUS), "{uri}");
    answer_status_patch(respond, &credential, &body);

    run.await.unwrap().unwrap();
    no_more_requests(&mut mock).await;
    assert_eq!(endpoint.calls(), 1);
}

#[tokio::test]
async fn a_validation_failure_makes_no_token_call() {
    let endpoint = Endpoint::start(json!({"access_token": "a2", "expires_in": 3600})).await;
    let (service, mut mock) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, NS));
    let status = refreshed_status(
        "2026-11-21T18:00:00Z",
        "2026-11-21T19:00:30Z",
        "2026-11-21T18:40:00Z",
    );
    let credential = credential(&endpoint, Some(status));
    let run = tokio::spawn(reconcile(Arc::new(credential.clone()), ctx));

    let (_, uri, _, respond) = next(&mut mock).await;
    assert!(uri.ends_with("/secrets/client"), "{uri}");
    error(respond, 404, "NotFound");
    let (_, uri, _, respond) = next(&mut mock).await;
    assert!(uri.ends_with("/secrets/refresh"), "{uri}");
    reply(respond, StatusCode::OK, &refresh_secret(&endpoint, "7"));
    let (method, uri, body, respond) = next(&mut mock).await;
    assert_eq!(method, Method::PATCH);
    assert!(uri.starts_with(STATUS), "{uri}");
    let written = answer_status_patch(respond, &credential, &body);
    let failure = written.last_failure.unwrap();
    assert_eq!(failure.reason, "ClientSecretMissing");
    // The first failure of a streak is one event.
    let (method, uri, body, respond) = next(&mut mock).await;
    assert_eq!(method, Method::POST);
    assert!(uri.contains("/events"), "{uri}");
    assert_eq!(body["reason"], json!("RefreshFailed"));
    reply(respond, StatusCode::CREATED, &body);

    run.await.unwrap().unwrap();
    no_more_requests(&mut mock).await;
    assert_eq!(endpoint.calls(), 0, "no token call");
}
