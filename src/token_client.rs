//! Calls to the token endpoint: the RFC 6749 §6 refresh-token grant the
//! operator makes, and the §4.1.3 authorization-code exchange (with the PKCE
//! verifier, RFC 7636) that `authorize` makes.
//!
//! Hand-written on reqwest rather than with a generic OAuth crate because the
//! decision needs what those crates drop: the HTTP status, `Retry-After`, and
//! the provider's `error_subtype`. The client refuses plain http (except to
//! loopback behind an explicit flag), follows no redirects, bounds connect and
//! total time, and reads at most `MAX_RESPONSE_BYTES` of an answer. It never
//! logs, and nothing it returns contains a token except the `Token` itself,
//! whose values are `SecretString`s.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use thiserror::Error;

use crate::classify::{self, Answer, Failure, FailureClass, Token};
use crate::resource::{ClientAuthentication, Provider};

/// Google's token endpoint.
pub const GOOGLE_TOKEN_ENDPOINT: &str = "https://oauth2.googleapis.com/token";
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
}

impl Default for TokenClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            allow_insecure_loopback_http: false,
        }
    }
}

/// A token endpoint that passed the transport policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEndpoint {
    url: Url,
    authentication: ClientAuthentication,
}

/// Why an endpoint is not acceptable; `field` names the spec field. No
/// secrets in here.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("provider has neither google nor {field} set")]
    Missing { field: &'static str },
    #[error("{field} is not a valid absolute URL")]
    InvalidUrl { field: &'static str },
    #[error("{field} must not carry credentials or a fragment")]
    UnexpectedParts { field: &'static str },
    #[error(
        "{field} must use https; plain http is accepted only for loopback addresses with --allow-insecure-loopback-http"
    )]
    Insecure { field: &'static str },
}

/// Checks an endpoint URL from the spec against the transport policy: an
/// absolute https URL without credentials or fragment, or plain http to a
/// loopback address when `allow_insecure_loopback_http` is set.
pub fn checked_endpoint(
    raw: &str,
    field: &'static str,
    allow_insecure_loopback_http: bool,
) -> Result<Url, EndpointError> {
    let url = Url::parse(raw).map_err(|_| EndpointError::InvalidUrl { field })?;
    if url.host().is_none() {
        return Err(EndpointError::InvalidUrl { field });
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(EndpointError::UnexpectedParts { field });
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_insecure_loopback_http && is_loopback(&url) => Ok(url),
        _ => Err(EndpointError::Insecure { field }),
    }
}

impl TokenEndpoint {
    /// The endpoint a provider spec names, if the transport policy allows it.
    pub fn from_provider(
        provider: &Provider,
        allow_insecure_loopback_http: bool,
    ) -> Result<Self, EndpointError> {
        if provider.google.is_some() {
            return Ok(Self {
                url: Url::parse(GOOGLE_TOKEN_ENDPOINT).expect("constant URL"),
                // Google documents credentials in the form body.
                authentication: ClientAuthentication::ClientSecretPost,
            });
        }
        const FIELD: &str = "tokenEndpoint";
        let raw = provider
            .token_endpoint
            .as_deref()
            .ok_or(EndpointError::Missing { field: FIELD })?;
        Ok(Self {
            url: checked_endpoint(raw, FIELD, allow_insecure_loopback_http)?,
            authentication: provider
                .client_authentication
                .unwrap_or(ClientAuthentication::ClientSecretBasic),
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The OAuth client, read from the client Secret.
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
}

/// The HTTP client for token endpoints. Cheap to clone; share one.
#[derive(Clone)]
pub struct TokenClient {
    http: reqwest::Client,
}

impl TokenClient {
    pub fn new(config: &TokenClientConfig) -> Result<Self, reqwest::Error> {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("oauth-token-operator/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
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
        self.grant(endpoint, client, form, now).await
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
        self.grant(endpoint, client, form, now).await
    }

    /// Posts a grant with the client's authentication and classifies the answer.
    async fn grant(
        &self,
        endpoint: &TokenEndpoint,
        client: &ClientCredentials,
        mut form: Vec<(&str, &str)>,
        now: impl Fn() -> Timestamp,
    ) -> Result<Token, Failure> {
        let mut request = self
            .http
            .post(endpoint.url.clone())
            .header("accept", "application/json");
        match endpoint.authentication {
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
                request = request.basic_auth(id, Some(secret));
            }
        }
        let response = request.form(&form).send().await.map_err(network_failure)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (body, truncated) = read_capped(response).await.map_err(network_failure)?;
        classify::classify(
            &Answer {
                status,
                retry_after: retry_after.as_deref(),
                body: &body,
                truncated,
            },
            now(),
        )
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
    let (reason, detail) = if error.is_timeout() {
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
        class: FailureClass::Transient,
        reason,
        detail,
        provider: Default::default(),
        http_status: None,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(url: &str) -> Provider {
        Provider {
            token_endpoint: Some(url.into()),
            ..Default::default()
        }
    }

    #[test]
    fn google_uses_its_preset_endpoint_with_credentials_in_the_body() {
        let provider = Provider {
            google: Some(Default::default()),
            ..Default::default()
        };
        let endpoint = TokenEndpoint::from_provider(&provider, false).unwrap();
        assert_eq!(endpoint.url().as_str(), GOOGLE_TOKEN_ENDPOINT);
        assert_eq!(
            endpoint.authentication,
            ClientAuthentication::ClientSecretPost
        );
    }

    #[test]
    fn generic_endpoints_must_be_https_unless_loopback_http_is_allowed() {
        assert!(
            TokenEndpoint::from_provider(&generic("https://login.example.com/token"), false)
                .is_ok()
        );
        assert_eq!(
            TokenEndpoint::from_provider(&generic("http://127.0.0.1:8080/token"), false),
            Err(EndpointError::Insecure {
                field: "tokenEndpoint"
            })
        );
        assert!(
            TokenEndpoint::from_provider(&generic("http://127.0.0.1:8080/token"), true).is_ok()
        );
        assert!(TokenEndpoint::from_provider(&generic("http://[::1]:8080/token"), true).is_ok());
        assert!(TokenEndpoint::from_provider(&generic("http://localhost/token"), true).is_ok());
        assert_eq!(
            TokenEndpoint::from_provider(&generic("http://10.0.0.1/token"), true),
            Err(EndpointError::Insecure {
                field: "tokenEndpoint"
            })
        );
        assert_eq!(
            TokenEndpoint::from_provider(&generic("ftp://127.0.0.1/token"), true),
            Err(EndpointError::Insecure {
                field: "tokenEndpoint"
            })
        );
        assert_eq!(
            TokenEndpoint::from_provider(
                &generic("https://user:pw@login.example.com/token"),
                false
            ),
            Err(EndpointError::UnexpectedParts {
                field: "tokenEndpoint"
            })
        );
        assert_eq!(
            TokenEndpoint::from_provider(&generic("not a url"), false),
            Err(EndpointError::InvalidUrl {
                field: "tokenEndpoint"
            })
        );
        assert_eq!(
            TokenEndpoint::from_provider(&Provider::default(), false),
            Err(EndpointError::Missing {
                field: "tokenEndpoint"
            })
        );
    }

    #[test]
    fn generic_endpoints_default_to_http_basic_client_authentication() {
        let endpoint =
            TokenEndpoint::from_provider(&generic("https://login.example.com/token"), false)
                .unwrap();
        assert_eq!(
            endpoint.authentication,
            ClientAuthentication::ClientSecretBasic
        );
    }
}
