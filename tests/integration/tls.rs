//! TLS to token endpoints, the path Google's endpoint takes: the token client
//! against https servers on 127.0.0.1 whose certificates come from CAs made in
//! the test. A certificate from a CA in the extra CA file is trusted; one from
//! any other CA, an expired one, one for another name, or a server that does
//! not speak TLS fails with the reason `TlsHandshakeFailed` before anything
//! is sent. The operator trusts the extra CA file besides the system's roots,
//! not instead of them, and refuses to start with a file it cannot use.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use oauth_token_operator::classify::{Failure, Token};
use oauth_token_operator::endpoint::TokenEndpoint;
use oauth_token_operator::input_secrets::ClientCredentials;
use oauth_token_operator::resource::{ClientAuthentication, FailureCategory, Provider, READY};
use oauth_token_operator::token_client::{
    ExtraRoots, ExtraRootsError, TokenClient, TokenClientConfig,
};
use secrecy::{ExposeSecret, SecretString};

use crate::support::eventually;
use crate::support::fixtures::*;
use crate::support::operator::Operator;
use crate::support::tls::{ServerCert, TestCa};
use crate::support::token_server::{CLIENT_ID, CLIENT_SECRET, TokenServer};
use crate::support::with_namespace;

const TLS_REASON: &str = "TlsHandshakeFailed";

/// A directory for a test's files, removed when dropped.
struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("oto-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// A client that trusts the system's roots plus those in `ca_file`, if any.
fn client(ca_file: Option<&Path>) -> TokenClient {
    let extra_roots = ca_file
        .map(|path| ExtraRoots::from_pem_file(path).expect("extra CA file"))
        .unwrap_or_default();
    TokenClient::new(&TokenClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        allow_insecure_loopback_http: false,
        extra_roots,
    })
    .expect("token client")
}

async fn https_server(cert: &ServerCert) -> TokenServer {
    TokenServer::start_https(
        Duration::from_secs(3600),
        "127.0.0.1:0".parse().unwrap(),
        cert,
    )
    .await
}

async fn refresh(client: &TokenClient, url: &str, refresh_token: &str) -> Result<Token, Failure> {
    let provider = Provider {
        token_endpoint: Some(url.into()),
        client_authentication: Some(ClientAuthentication::ClientSecretBasic),
        ..Default::default()
    };
    let endpoint = TokenEndpoint::from_provider(&provider, false).expect("https endpoint");
    client
        .refresh(
            &endpoint,
            &ClientCredentials {
                client_id: CLIENT_ID.into(),
                client_secret: SecretString::from(CLIENT_SECRET.to_string()),
            },
            &SecretString::from(refresh_token.to_string()),
            Timestamp::now,
        )
        .await
}

/// Asserts a TLS failure whose message says `says`, and that the server
/// received no request (so no secret was sent).
fn assert_tls_failure(outcome: Result<Token, Failure>, server: &TokenServer, says: &str) {
    let failure = outcome.expect_err("the handshake must fail");
    assert_eq!(
        (failure.category, failure.reason),
        (FailureCategory::Transient, TLS_REASON)
    );
    assert!(
        failure.message().contains(says),
        "{:?} does not say {says:?}",
        failure.message()
    );
    assert_eq!(server.call_count(), 0, "no request reached the server");
}

#[tokio::test]
async fn an_endpoint_whose_certificate_comes_from_the_extra_ca_is_trusted() {
    let ca = TestCa::new("extra CA");
    let server = https_server(&ca.issue(&["127.0.0.1"])).await;
    let dir = temp_dir("trusted");
    let client = client(Some(&ca.write_pem(&dir, "ca.pem")));
    let grant = server.new_grant();
    let token = refresh(&client, &server.url(), &grant)
        .await
        .unwrap_or_else(|f| panic!("{}: {}", f.reason, f.message()));
    assert!(
        server
            .issued_tokens()
            .contains(&token.access_token.expose_secret().to_string())
    );
    assert_eq!(server.handshake_failures(), 0);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_with_the_tls_reason_and_sends_nothing() {
    let server = https_server(&TestCa::new("unknown CA").issue(&["127.0.0.1"])).await;
    let grant = server.new_grant();
    // The system's roots alone, then with an unrelated extra CA.
    let dir = temp_dir("untrusted");
    let other = TestCa::new("another CA").write_pem(&dir, "other.pem");
    for client in [client(None), client(Some(&other))] {
        let outcome = refresh(&client, &server.url(), &grant).await;
        assert_tls_failure(outcome, &server, "not signed by a trusted CA");
    }
    eventually(
        "the server to count the refused handshakes",
        Duration::from_secs(5),
        || async { (server.handshake_failures() >= 2).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn an_expired_certificate_or_one_for_another_name_fails_with_the_tls_reason() {
    let ca = TestCa::new("extra CA");
    let dir = temp_dir("invalid");
    let client = client(Some(&ca.write_pem(&dir, "ca.pem")));
    let expired = https_server(&ca.issue_expired(&["127.0.0.1"])).await;
    let grant = expired.new_grant();
    let outcome = refresh(&client, &expired.url(), &grant).await;
    assert_tls_failure(outcome, &expired, "has expired or is not valid yet");

    // A valid certificate, but for names this endpoint does not have.
    let elsewhere = https_server(&ca.issue(&["10.255.255.1", "token.example.test"])).await;
    let grant = elsewhere.new_grant();
    let outcome = refresh(&client, &elsewhere.url(), &grant).await;
    assert_tls_failure(outcome, &elsewhere, "not valid for its host name");
}

#[tokio::test]
async fn an_https_url_to_a_server_without_tls_is_a_tls_failure() {
    let plain = TokenServer::start(Duration::from_secs(60)).await;
    let grant = plain.new_grant();
    let url = plain.url().replacen("http://", "https://", 1);
    let outcome = refresh(&client(None), &url, &grant).await;
    assert_tls_failure(outcome, &plain, "TLS handshake");
}

#[test]
fn an_extra_ca_file_that_cannot_be_used_is_refused_with_its_path() {
    let dir = temp_dir("files");
    let missing = dir.join("missing.pem");
    assert!(matches!(
        ExtraRoots::from_pem_file(&missing),
        Err(ExtraRootsError::Read { .. })
    ));
    let no_certificate = dir.join("key-only.pem");
    std::fs::write(
        &no_certificate,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    assert!(matches!(
        ExtraRoots::from_pem_file(&no_certificate),
        Err(ExtraRootsError::Empty { .. })
    ));
    // The second block is well-formed PEM around bytes that are no certificate.
    let garbage = dir.join("garbage.pem");
    let good = TestCa::new("good CA").pem();
    std::fs::write(
        &garbage,
        format!("{good}-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n"),
    )
    .unwrap();
    let error = ExtraRoots::from_pem_file(&garbage).unwrap_err();
    assert!(
        matches!(error, ExtraRootsError::Invalid { index: 2, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("garbage.pem"), "{error}");
    // Two CAs in one file are both read.
    let two = dir.join("two.pem");
    std::fs::write(&two, format!("{good}{}", TestCa::new("second CA").pem())).unwrap();
    assert_eq!(ExtraRoots::from_pem_file(&two).unwrap().len(), 2);
}

#[test]
fn the_operator_does_not_start_with_an_extra_ca_file_it_cannot_read() {
    // The file is read before the API server is ever called, so an
    // unreachable one will do.
    let dir = temp_dir("start");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         users: [{name: u, user: {token: x}}]\n\
         contexts: [{name: c, context: {cluster: c, user: u, namespace: default}}]\ncurrent-context: c\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"))
        .env("KUBECONFIG", &kubeconfig)
        .args(["run", "--extra-ca-file", "/nonexistent/oto-extra-ca.pem"])
        .args(["--admin-address", "127.0.0.1:0"])
        .output()
        .expect("run the operator");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("/nonexistent/oto-extra-ca.pem"),
        "the error names the file: {stderr}"
    );
}

/// The operator process trusts its extra CA file *and* the system's roots
/// (here a stand-in system bundle through `SSL_CERT_FILE`, which the
/// platform verifier reads), and reports an endpoint that neither signed
/// with the TLS reason in status.
#[tokio::test]
async fn the_operator_trusts_the_extra_ca_besides_the_system_roots() {
    with_namespace("tls", |client, ns| async move {
        ensure_crd(&client).await;
        create_client_secret(&client, &ns).await;
        let (system, extra, unknown) = (
            TestCa::new("system CA"),
            TestCa::new("extra CA"),
            TestCa::new("unknown CA"),
        );
        let dir = temp_dir(&ns);
        let by_system = https_server(&system.issue(&["127.0.0.1"])).await;
        let by_extra = https_server(&extra.issue(&["127.0.0.1"])).await;
        let by_unknown = https_server(&unknown.issue(&["127.0.0.1"])).await;
        let system_bundle = system.write_pem(&dir, "system-bundle.pem");
        let extra_file = extra.write_pem(&dir, "extra.pem");
        let operator = Operator::start_with_env(
            &ns,
            &[
                "--extra-ca-file",
                extra_file.to_str().unwrap(),
                "--allowed-endpoint",
                "https://127.0.0.1:*",
            ],
            &[
                ("SSL_CERT_FILE", Some(system_bundle.to_str().unwrap())),
                ("SSL_CERT_DIR", None),
            ],
        );
        create_credential(&client, &ns, &by_system, "system").await;
        create_credential(&client, &ns, &by_extra, "extra").await;
        create_credential(&client, &ns, &by_unknown, "unknown").await;
        for name in ["system", "extra"] {
            wait_for_condition(&client, &ns, name, READY, "True", Duration::from_secs(40)).await;
        }
        let failure = eventually(
            "the TLS failure in status",
            Duration::from_secs(40),
            || async {
                status_of(&client, &ns, "unknown")
                    .await
                    .last_failure
                    .filter(|f| f.reason == TLS_REASON)
            },
        )
        .await;
        assert!(
            failure.message.contains("not signed by a trusted CA"),
            "{}",
            failure.message
        );
        assert_eq!(by_unknown.call_count(), 0, "nothing was sent to it");
        assert!(
            !status_of(&client, &ns, "unknown").await.is_true(READY),
            "not Ready without a token"
        );
        assert_no_token_leaked(&client, &ns, &by_extra, &operator).await;
    })
    .await;
}
