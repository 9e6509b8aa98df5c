//! Calls to the token endpoint: the RFC 6749 §6 refresh-token grant the
//! operator makes, and the §4.1.3 authorization-code exchange (with the PKCE
//! verifier, RFC 7636) that `authorize` makes.
//!
//! Hand-written on reqwest rather than with a generic OAuth crate because the
//! decision needs what those crates drop: the HTTP status, `Retry-After`, and
//! the provider's `error_subtype`. The client refuses plain http (except to
//! loopback behind an explicit flag, see `endpoint`), follows no redirects, bounds connect and
//! total time, and reads at most `MAX_RESPONSE_BYTES` of an answer. It never
//! logs, and nothing it returns contains a token except the `Token` itself,
//! whose values are `SecretString`s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use thiserror::Error;

use crate::classify::{self, Answer, Failure, Token};
use crate::endpoint::TokenEndpoint;
use crate::input_secrets::ClientCredentials;
use crate::resource::{ClientAuthentication, FailureCategory};

/// Answers larger than this are not read (Google's tokens are at most a few
/// KiB; STS tokens up to 12 KB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Timeouts and transport policy of the token client.
#[derive(Clone, Debug)]
pub struct TokenClientConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Accept `http://` token endpoints on loopback addresses (tests, demos).
    pub allow_insecure_loopback_http: bool,
    /// CA certificates trusted besides the system's (`--extra-ca-file`).
    pub extra_roots: ExtraRoots,
}

impl Default for TokenClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            allow_insecure_loopback_http: false,
            extra_roots: ExtraRoots::default(),
        }
    }
}

/// How long an idle connection to a token endpoint is kept for reuse: below
/// the keep-alive of common servers and proxies (Node 5 s, nginx 75 s, many
/// proxies a few seconds; test servers here 1 s). A connection the server
/// closed while it sat idle would fail the next request after it was sent,
/// when nothing tells whether the server saw it; a retry could then replay a
/// refresh token that rotates. Reuse still serves bursts (an outage's
/// backlog), which is when it saves most.
pub const IDLE_CONNECTION_LIFETIME: Duration = Duration::from_millis(900);

/// CA certificates the token client trusts in addition to the system's, for
/// providers behind a private CA or a TLS-intercepting proxy. Read once, at
/// start, so that a missing or broken file stops the operator there rather
/// than failing each refresh.
#[derive(Clone, Default)]
pub struct ExtraRoots {
    certificates: Vec<reqwest::Certificate>,
    source: Option<PathBuf>,
}

/// Why the extra CA file cannot be used.
#[derive(Debug, Error)]
pub enum ExtraRootsError {
    #[error("cannot read the extra CA file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the extra CA file {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    Empty { path: PathBuf },
    #[error("the extra CA file {path} is not valid: certificate {index}: {reason}")]
    Invalid {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

impl ExtraRoots {
    /// Reads every certificate of a PEM file; other PEM sections (a key,
    /// say) are ignored. Each certificate must parse as a trust anchor.
    pub fn from_pem_file(path: &Path) -> Result<Self, ExtraRootsError> {
        let pem = std::fs::read(path).map_err(|source| ExtraRootsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |index, reason: String| ExtraRootsError::Invalid {
            path: path.to_path_buf(),
            index,
            reason,
        };
        let mut certificates = Vec::new();
        for (index, der) in CertificateDer::pem_slice_iter(&pem).enumerate() {
            let der = der.map_err(|e| invalid(index + 1, e.to_string()))?;
            // The same check the verifier makes later, made now, so that a
            // bad certificate is reported at start with its place in the file.
            rustls::RootCertStore::empty()
                .add(der.clone())
                .map_err(|e| invalid(index + 1, e.to_string()))?;
            certificates.push(
                reqwest::Certificate::from_der(&der)
                    .map_err(|e| invalid(index + 1, e.to_string()))?,
            );
        }
        if certificates.is_empty() {
            return Err(ExtraRootsError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            certificates,
            source: Some(path.to_path_buf()),
        })
    }

    /// How many certificates were read.
    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }
}

impl std::fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraRoots")
            .field("source", &self.source)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

/// The HTTP client for token endpoints. Cheap to clone; share one.
#[derive(Clone)]
pub struct TokenClient {
    http: reqwest::Client,
}

impl TokenClient {
    pub fn new(config: &TokenClientConfig) -> Result<Self, reqwest::Error> {
        crate::tls::install_crypto_provider();
        // Merged into the platform verifier's roots (the system's CA bundle,
        // or SSL_CERT_FILE), which stay trusted.
        let http = reqwest::Client::builder()
            .tls_certs_merge(config.extra_roots.certificates.iter().cloned())
            .user_agent(concat!("oauth-token-operator/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(IDLE_CONNECTION_LIFETIME)
            // The policy is enforced per endpoint in TokenEndpoint; this is a
            // second line for the common case.
            .https_only(!config.allow_insecure_loopback_http)
            .build()?;
        Ok(Self { http })
    }

    /// Exchanges `refresh_token` for a new access token and classifies the
    /// answer. `now` is read once the answer is complete, for `Retry-After`
    /// dates.
    pub async fn refresh(
        &self,
        endpoint: &TokenEndpoint,
        client: &ClientCredentials,
        refresh_token: &SecretString,
        now: impl Fn() -> Timestamp,
    ) -> Result<Token, Failure> {
        let form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        let secrets = [refresh_token.expose_secret()];
        self.grant(endpoint, client, form, &secrets, now).await
    }

    /// Exchanges an authorization code, with the PKCE verifier and the
    /// redirect URI it was issued for, for tokens (RFC 6749 §4.1.3, RFC 7636
    /// §4.5). The answer is classified as a refresh's would be.
    pub async fn exchange_code(
        &self,
        endpoint: &TokenEndpoint,
        client: &ClientCredentials,
        code: &SecretString,
        code_verifier: &SecretString,
        redirect_uri: &str,
        now: impl Fn() -> Timestamp,
    ) -> Result<Token, Failure> {
        let form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose_secret()),
            ("code_verifier", code_verifier.expose_secret()),
            ("redirect_uri", redirect_uri),
        ];
        let secrets = [code.expose_secret(), code_verifier.expose_secret()];
        self.grant(endpoint, client, form, &secrets, now).await
    }

    /// Revokes `refresh_token` at a revocation endpoint (RFC 7009 §2.1),
    /// authenticating the client as at the token endpoint. The token goes in
    /// the form body, never in the URL.
    pub async fn revoke(
        &self,
        endpoint: &TokenEndpoint,
        client: &ClientCredentials,
        refresh_token: &SecretString,
        now: impl Fn() -> Timestamp,
    ) -> Result<(), Failure> {
        let form = vec![
            ("token", refresh_token.expose_secret()),
            ("token_type_hint", "refresh_token"),
        ];
        let secrets = [refresh_token.expose_secret()];
        let answered = self.post(endpoint, client, form, &secrets).await?;
        classify::classify_revocation(&answered.answer(), now())
    }

    /// Posts a grant with the client's authentication and classifies the
    /// answer, with every secret the request carried (`secrets`, the client's
    /// id and secret, the Basic credentials) scrubbed from provider text.
    async fn grant(
        &self,
        endpoint: &TokenEndpoint,
        client: &ClientCredentials,
        form: Vec<(&str, &str)>,
        secrets: &[&str],
        now: impl Fn() -> Timestamp,
    ) -> Result<Token, Failure> {
        let answered = self.post(endpoint, client, form, secrets).await?;
        classify::classify(&answered.answer(), now())
    }

    /// Posts a form with the client's authentication and reads the answer.
    async fn post(
        &self,
        endpoint: &TokenEndpoint,
        client: &ClientCredentials,
        mut form: Vec<(&str, &str)>,
        secrets: &[&str],
    ) -> Result<Answered, Failure> {
        let mut sent: Vec<String> = Vec::new();
        for secret in secrets.iter().copied().chain([
            client.client_id.as_str(),
            client.client_secret.expose_secret(),
        ]) {
            sent.extend(classify::sent_forms(secret));
        }
        let mut request = self
            .http
            .post(endpoint.url().clone())
            .header("accept", "application/json");
        match endpoint.authentication() {
            ClientAuthentication::ClientSecretPost => {
                form.push(("client_id", &client.client_id));
                form.push(("client_secret", client.client_secret.expose_secret()));
            }
            ClientAuthentication::ClientSecretBasic => {
                // RFC 6749 §2.3.1: both parts are form-urlencoded first.
                let id: String =
                    url::form_urlencoded::byte_serialize(client.client_id.as_bytes()).collect();
                let secret: String = url::form_urlencoded::byte_serialize(
                    client.client_secret.expose_secret().as_bytes(),
                )
                .collect();
                sent.push(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{id}:{secret}"),
                ));
                request = request.basic_auth(id, Some(secret));
            }
        }
        let response = send_once_more_if_never_sent(request.form(&form))
            .await
            .map_err(network_failure)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (body, truncated) = read_capped(response).await.map_err(network_failure)?;
        Ok(Answered {
            status,
            retry_after,
            body,
            truncated,
            sent,
        })
    }
}

/// An HTTP answer as read, with the secrets its request carried.
struct Answered {
    status: u16,
    retry_after: Option<String>,
    body: Vec<u8>,
    truncated: bool,
    sent: Vec<String>,
}

impl Answered {
    fn answer(&self) -> Answer<'_> {
        Answer {
            status: self.status,
            retry_after: self.retry_after.as_deref(),
            body: &self.body,
            truncated: self.truncated,
            sent_secrets: &self.sent,
        }
    }
}

/// Sends the request; when no connection could be made, once more on a new
/// one. A connection error (refused, reset while connecting, no route) means
/// the connection never came up, so not a byte of the request was written:
/// the provider cannot have seen it, and sending it again replays nothing. A
/// timeout or any error after the connection was up is not retried.
async fn send_once_more_if_never_sent(
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    let again = request.try_clone();
    match request.send().await {
        Err(error) if error.is_connect() && !error.is_timeout() => match again {
            Some(again) => again.send().await,
            None => Err(error),
        },
        result => result,
    }
}

async fn read_capped(mut response: reqwest::Response) -> Result<(Vec<u8>, bool), reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Ok((Vec::new(), true));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Ok((Vec::new(), true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// A transport failure, described without the request (which holds tokens):
/// reqwest's errors name only the URL, but we keep to our own words.
fn network_failure(error: reqwest::Error) -> Failure {
    let (reason, detail) = if let Some(detail) = tls_failure(&error) {
        ("TlsHandshakeFailed", detail)
    } else if error.is_timeout() {
        ("Timeout", "the token endpoint did not answer in time")
    } else if error.is_connect() {
        (
            "ConnectionFailed",
            "could not connect to the token endpoint",
        )
    } else if error.is_redirect() {
        (
            "UnexpectedResponse",
            "the token endpoint answered with a redirect, which is not followed",
        )
    } else if error.is_body() || error.is_decode() {
        (
            "ConnectionFailed",
            "the connection broke while reading the token endpoint's answer",
        )
    } else {
        (
            "ConnectionFailed",
            "the request to the token endpoint failed",
        )
    };
    Failure {
        category: FailureCategory::Transient,
        reason,
        detail,
        provider: Default::default(),
        http_status: None,
        retry_after: None,
    }
}

/// What went wrong in a TLS handshake, if that is where `error` comes from.
/// reqwest reports a handshake failure as a connect error; the rustls error
/// that says why sits further down, wrapped in one or more `io::Error`s,
/// whose `source()` skips the error they wrap (hence `get_ref`).
fn tls_failure(error: &reqwest::Error) -> Option<&'static str> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = next {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls_detail(tls));
        }
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    None
}

fn tls_detail(error: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "TLS handshake failed: the token endpoint's certificate is not signed by a trusted CA"
        }
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => {
            "TLS handshake failed: the token endpoint's certificate has expired or is not valid yet"
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            "TLS handshake failed: the token endpoint's certificate is not valid for its host name"
        }
        rustls::Error::InvalidCertificate(_) => {
            "TLS handshake failed: the token endpoint's certificate was refused"
        }
        _ => "the TLS handshake with the token endpoint failed",
    }
}
