//! The token client against a real HTTP server on 127.0.0.1 that plays every
//! row of DESIGN §4, plus a slow answer, an oversized body, a non-JSON 5xx
//! page, a refused connection and a redirect. (https endpoints: `tls`.)

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use oauth_token_operator::classify::{Failure, Token};
use oauth_token_operator::endpoint::TokenEndpoint;
use oauth_token_operator::input_secrets::ClientCredentials;
use oauth_token_operator::resource::{ClientAuthentication, FailureCategory, Provider};
use oauth_token_operator::token_client::{TokenClient, TokenClientConfig};
use secrecy::{ExposeSecret, SecretString};

use crate::support::token_server::{CLIENT_ID, CLIENT_SECRET, Scripted, TokenServer};

fn client() -> TokenClient {
    TokenClient::new(&TokenClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        allow_insecure_loopback_http: true,
        ..Default::default()
    })
    .expect("token client")
}

fn endpoint(url: &str, authentication: ClientAuthentication) -> TokenEndpoint {
    let provider = Provider {
        token_endpoint: Some(url.into()),
        client_authentication: Some(authentication),
        ..Default::default()
    };
    TokenEndpoint::from_provider(&provider, true).expect("loopback endpoint allowed")
}

fn credentials(secret: &str) -> ClientCredentials {
    ClientCredentials {
        client_id: CLIENT_ID.into(),
        client_secret: SecretString::from(secret.to_string()),
    }
}

async fn refresh_with(server: &TokenServer, refresh_token: &str) -> Result<Token, Failure> {
    client()
        .refresh(
            &endpoint(&server.url(), ClientAuthentication::ClientSecretBasic),
            &credentials(CLIENT_SECRET),
            &SecretString::from(refresh_token.to_string()),
            Timestamp::now,
        )
        .await
}

/// Plays one scripted answer and returns the client's reading of it.
async fn play(answer: Scripted) -> Result<Token, Failure> {
    let server = TokenServer::start(Duration::from_secs(3600)).await;
    let grant = server.new_grant();
    server.script([answer]);
    refresh_with(&server, &grant).await
}

#[tokio::test]
async fn a_success_returns_the_access_token_and_its_lifetime_with_either_client_authentication() {
    let server = TokenServer::start(Duration::from_secs(3599)).await;
    let grant = server.new_grant();
    for authentication in [
        ClientAuthentication::ClientSecretBasic,
        ClientAuthentication::ClientSecretPost,
    ] {
        let token = client()
            .refresh(
                &endpoint(&server.url(), authentication),
                &credentials(CLIENT_SECRET),
                &SecretString::from(grant.clone()),
                Timestamp::now,
            )
            .await
            .unwrap_or_else(|f| panic!("{authentication:?}: {f:?}"));
        assert_eq!(token.expires_in, Duration::from_secs(3599));
        assert!(
            server
                .issued_tokens()
                .contains(&token.access_token.expose_secret().to_string())
        );
        assert!(token.refresh_token.is_none());
    }
}

#[tokio::test]
async fn a_wrong_client_secret_is_a_configuration_failure() {
    // CLIENT_SECRET holds reserved characters, so the success below also
    // proves the RFC 6749 §2.3.1 encoding of HTTP Basic credentials.
    let server = TokenServer::start(Duration::from_secs(60)).await;
    let grant = server.new_grant();
    let wrong = client()
        .refresh(
            &endpoint(&server.url(), ClientAuthentication::ClientSecretBasic),
            &credentials("not-the-secret"),
            &SecretString::from(grant.clone()),
            Timestamp::now,
        )
        .await
        .unwrap_err();
    assert_eq!(
        (wrong.category, wrong.reason),
        (FailureCategory::Configuration, "InvalidClient")
    );
    assert!(refresh_with(&server, &grant).await.is_ok());
}

#[tokio::test]
async fn a_rotating_provider_returns_the_new_refresh_token() {
    let server = TokenServer::start(Duration::from_secs(60)).await;
    server.rotate(true);
    let grant = server.new_grant();
    let token = refresh_with(&server, &grant).await.expect("success");
    let rotated = token.refresh_token.expect("a rotated refresh token");
    assert_ne!(rotated.expose_secret(), grant);
    assert!(
        refresh_with(&server, rotated.expose_secret()).await.is_ok(),
        "the new token works"
    );
}

#[tokio::test]
async fn invalid_grant_in_every_form_needs_reauth() {
    for body in [
        r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
        r#"{"error":"invalid_grant","error_description":"Bad Request"}"#,
        r#"{"error":"invalid_grant","error_description":"reauth related error (invalid_rapt)","error_subtype":"invalid_rapt"}"#,
    ] {
        let failure = play(Scripted::json(400, body)).await.unwrap_err();
        assert_eq!(failure.category, FailureCategory::ReauthRequired, "{body}");
        assert_eq!(failure.http_status, Some(400));
    }
    // And from the real grant check, not a script:
    let server = TokenServer::start(Duration::from_secs(60)).await;
    let failure = refresh_with(&server, "never-issued").await.unwrap_err();
    assert_eq!(failure.category, FailureCategory::ReauthRequired);
    assert_eq!(
        failure.provider.description.as_deref(),
        Some("Token has been expired or revoked.")
    );
}

#[tokio::test]
async fn client_and_request_errors_are_configuration_failures() {
    let cases = [
        (401, "invalid_client", "InvalidClient"),
        (401, "unauthorized_client", "InvalidClient"),
        (401, "deleted_client", "InvalidClient"),
        (400, "invalid_scope", "InvalidScope"),
        (400, "invalid_request", "InvalidRequest"),
        (400, "unsupported_grant_type", "InvalidRequest"),
    ];
    for (status, error, reason) in cases {
        let failure = play(Scripted::json(status, &format!(r#"{{"error":"{error}"}}"#)))
            .await
            .unwrap_err();
        assert_eq!(
            (failure.category, failure.reason),
            (FailureCategory::Configuration, reason),
            "{error}"
        );
        assert_eq!(failure.provider.error.as_deref(), Some(error));
    }
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_transient_and_retry_after_is_read() {
    let failure = play(Scripted::json(429, r#"{"error":"rate_limit_exceeded"}"#).retry_after("17"))
        .await
        .unwrap_err();
    assert_eq!(
        (failure.category, failure.reason),
        (FailureCategory::Transient, "RateLimited")
    );
    assert_eq!(failure.retry_after, Some(Duration::from_secs(17)));
    for status in [408, 500, 502, 503, 504] {
        let failure = play(Scripted::json(status, "{}")).await.unwrap_err();
        assert_eq!(failure.category, FailureCategory::Transient, "{status}");
    }
    let failure = play(Scripted::html(
        403,
        "<html><title>Rate Limit Exceeded</title></html>",
    ))
    .await
    .unwrap_err();
    assert_eq!(
        (failure.category, failure.reason),
        (FailureCategory::Transient, "RateLimited")
    );
}

#[tokio::test]
async fn a_non_json_error_page_is_transient_and_its_body_is_not_repeated() {
    let page =
        "<html><body><h1>502 Bad Gateway</h1><p>upstream secret-looking-text</p></body></html>";
    let failure = play(Scripted::html(502, page)).await.unwrap_err();
    assert_eq!(
        (failure.category, failure.reason),
        (FailureCategory::Transient, "ProviderUnavailable")
    );
    assert!(
        !failure.message().contains("secret-looking-text"),
        "{}",
        failure.message()
    );
}

#[tokio::test]
async fn a_slow_answer_times_out_as_a_transient_failure() {
    let started = std::time::Instant::now();
    let failure = play(
        Scripted::json(200, r#"{"access_token":"late","expires_in":60}"#)
            .delayed(Duration::from_secs(5)),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (failure.category, failure.reason),
        (FailureCategory::Transient, "Timeout")
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the 2 s request timeout applied"
    );
}

#[tokio::test]
async fn an_oversized_answer_is_refused_unread() {
    let huge = format!(
        r#"{{"access_token":"{}","expires_in":60}}"#,
        "x".repeat(200 * 1024)
    );
    let failure = play(Scripted::json(200, &huge)).await.unwrap_err();
    assert_eq!(
        (failure.category, failure.reason),
        (FailureCategory::Transient, "ResponseTooLarge")
    );
}

#[tokio::test]
async fn a_malformed_success_is_transient() {
    let failure = play(Scripted::json(200, r#"{"token":"wrong-shape"}"#))
        .await
        .unwrap_err();
    assert_eq!(
        (failure.category, failure.reason),
        (FailureCategory::Transient, "MalformedResponse")
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    // Following it would reach a working endpoint and succeed.
    let server = TokenServer::start(Duration::from_secs(60)).await;
    let grant = server.new_grant();
    server.script([Scripted::json(307, "").redirect_to(&server.url())]);
    let failure = refresh_with(&server, &grant).await.unwrap_err();
    assert_eq!(failure.category, FailureCategory::Transient);
    assert_eq!(failure.http_status, Some(307));
    assert_eq!(server.call_count(), 1, "the redirect was not followed");
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    drop(listener);
    let failure = client()
        .refresh(
            &endpoint(&url, ClientAuthentication::ClientSecretBasic),
            &credentials(CLIENT_SECRET),
            &SecretString::from("rt".to_string()),
            Timestamp::now,
        )
        .await
        .unwrap_err();
    assert_eq!(
        (failure.category, failure.reason),
        (FailureCategory::Transient, "ConnectionFailed")
    );
}
