//! Where tokens may be sent. Two rules, both for token and authorization
//! endpoints named in a credential's spec:
//! - transport: an absolute https URL without credentials or a fragment, or
//!   plain http to a loopback address only behind an explicit flag (tests
//!   and demos);
//! - the platform's allowlist (`--allowed-endpoint`): Google's endpoints
//!   always, any other only if the platform team listed it, so that whoever
//!   may write a credential cannot send a token, a client secret or an
//!   authorization code to a host of their choosing.
//!
//! Pure; the reconcile loop, the token client and `authorize` all ask it.

use std::net::IpAddr;

use thiserror::Error;
use url::Url;

use crate::resource::{ClientAuthentication, Provider};

/// Google's token endpoint.
pub const GOOGLE_TOKEN_ENDPOINT: &str = "https://oauth2.googleapis.com/token";
/// Google's revocation endpoint.
pub const GOOGLE_REVOCATION_ENDPOINT: &str = "https://oauth2.googleapis.com/revoke";
/// Google's authorization endpoint for installed apps.
pub const GOOGLE_AUTHORIZATION_ENDPOINT: &str = "https://accounts.google.com/o/oauth2/v2/auth";

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
    #[error(
        "{field} {origin} is not among the endpoints this operator may send tokens to; a platform \
         administrator allows a provider with the operator's --allowed-endpoint flag (the chart \
         value allowedEndpoints)"
    )]
    NotAllowed { field: &'static str, origin: String },
}

/// One entry of the platform's allowlist: a scheme, a host, a port (or any
/// port, written `:*`) and a path prefix, e.g. `https://login.example.com/oauth2/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedEndpoint {
    scheme: String,
    host: String,
    /// `None`: any port.
    port: Option<u16>,
    path_prefix: String,
}

/// Why an allowlist entry does not parse.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "allowed endpoint {0:?} must be an http(s) URL with a host, an optional port or :*, an optional path, and nothing else"
)]
pub struct AllowedEndpointError(String);

impl std::str::FromStr for AllowedEndpoint {
    type Err = AllowedEndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || AllowedEndpointError(text.to_string());
        // `:*` (any port) is not URL syntax: take it out before parsing.
        let (any_port, parseable) = match text.split_once(":*") {
            // `scheme://host:*[/path]`, the host without a port of its own.
            Some((head, tail))
                if (tail.is_empty() || tail.starts_with('/'))
                    && head
                        .split_once("://")
                        .is_some_and(|(_, host)| !host.contains([':', '/', '@'])) =>
            {
                (true, format!("{head}{tail}"))
            }
            Some(_) => return Err(invalid()),
            None => (false, text.to_string()),
        };
        let url = Url::parse(&parseable).map_err(|_| invalid())?;
        let host = url.host_str().ok_or_else(invalid)?.to_ascii_lowercase();
        if !matches!(url.scheme(), "https" | "http")
            || !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
            || (any_port && url.port().is_some())
        {
            return Err(invalid());
        }
        Ok(AllowedEndpoint {
            scheme: url.scheme().to_string(),
            host,
            port: if any_port {
                None
            } else {
                url.port_or_known_default()
            },
            path_prefix: url.path().to_string(),
        })
    }
}

impl std::fmt::Display for AllowedEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let port = match self.port {
            None => ":*".to_string(),
            Some(port) => format!(":{port}"),
        };
        write!(
            f,
            "{}://{}{port}{}",
            self.scheme, self.host, self.path_prefix
        )
    }
}

impl AllowedEndpoint {
    fn allows(&self, url: &Url) -> bool {
        let path = url.path();
        let under_prefix = path == self.path_prefix
            || (path.starts_with(&self.path_prefix)
                && (self.path_prefix.ends_with('/')
                    || path[self.path_prefix.len()..].starts_with('/')));
        url.scheme() == self.scheme
            && url
                .host_str()
                .is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && self
                .port
                .is_none_or(|port| url.port_or_known_default() == Some(port))
            && under_prefix
    }
}

/// Where tokens may go: the transport rule and the platform's allowlist.
/// Google's endpoints are always allowed.
#[derive(Clone, Debug, Default)]
pub struct EndpointPolicy {
    pub allow_insecure_loopback_http: bool,
    pub allowed: Vec<AllowedEndpoint>,
}

impl EndpointPolicy {
    /// Whether the allowlist (Google included) lets `url` through.
    pub fn allows(&self, url: &Url) -> bool {
        let google = [
            GOOGLE_TOKEN_ENDPOINT,
            GOOGLE_AUTHORIZATION_ENDPOINT,
            GOOGLE_REVOCATION_ENDPOINT,
        ]
        .iter()
        .any(|g| Url::parse(g).is_ok_and(|g| &g == url));
        google || self.allowed.iter().any(|entry| entry.allows(url))
    }

    /// The credential's token endpoint, if both rules allow it.
    pub fn token_endpoint(&self, provider: &Provider) -> Result<TokenEndpoint, EndpointError> {
        let endpoint = TokenEndpoint::from_provider(provider, self.allow_insecure_loopback_http)?;
        self.check(endpoint.url(), "tokenEndpoint")?;
        Ok(endpoint)
    }

    /// The credential's revocation endpoint (RFC 7009), if both rules allow
    /// it; the client authenticates to it as to the token endpoint.
    pub fn revocation_endpoint(&self, provider: &Provider) -> Result<TokenEndpoint, EndpointError> {
        const FIELD: &str = "revocationEndpoint";
        let token = TokenEndpoint::from_provider(provider, self.allow_insecure_loopback_http)?;
        let url = if provider.google.is_some() {
            Url::parse(GOOGLE_REVOCATION_ENDPOINT).expect("constant URL")
        } else {
            let raw = provider
                .revocation_endpoint
                .as_deref()
                .ok_or(EndpointError::Missing { field: FIELD })?;
            checked_endpoint(raw, FIELD, self.allow_insecure_loopback_http)?
        };
        self.check(&url, FIELD)?;
        Ok(TokenEndpoint {
            url,
            authentication: token.authentication,
        })
    }

    /// The credential's authorization endpoint, if both rules allow it.
    pub fn authorization_endpoint(&self, provider: &Provider) -> Result<Url, EndpointError> {
        let url = authorization_endpoint(provider, self.allow_insecure_loopback_http)?;
        self.check(&url, "authorizationEndpoint")?;
        Ok(url)
    }

    fn check(&self, url: &Url, field: &'static str) -> Result<(), EndpointError> {
        if self.allows(url) {
            return Ok(());
        }
        Err(EndpointError::NotAllowed {
            field,
            origin: url.origin().ascii_serialization(),
        })
    }
}

/// Checks an endpoint URL from the spec against the transport policy.
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

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A token endpoint that passed the transport policy, and how the client
/// authenticates to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEndpoint {
    url: Url,
    authentication: ClientAuthentication,
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

    pub fn authentication(&self) -> ClientAuthentication {
        self.authentication
    }

    /// The host, which keys the per-host rate limit.
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or_default()
    }

    /// Scheme, host and port, which key the calls in flight and the circuit
    /// breaker: two endpoints on one host may well fail apart.
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }
}

/// The authorization endpoint a provider spec names, if the transport policy
/// allows it: Google's for `google: {}`, else `authorizationEndpoint`.
pub fn authorization_endpoint(
    provider: &Provider,
    allow_insecure_loopback_http: bool,
) -> Result<Url, EndpointError> {
    const FIELD: &str = "authorizationEndpoint";
    if provider.google.is_some() {
        return Ok(Url::parse(GOOGLE_AUTHORIZATION_ENDPOINT).expect("constant URL"));
    }
    let raw = provider
        .authorization_endpoint
        .as_deref()
        .ok_or(EndpointError::Missing { field: FIELD })?;
    checked_endpoint(raw, FIELD, allow_insecure_loopback_http)
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

    #[test]
    fn the_authorization_endpoint_follows_the_transport_policy() {
        let generic = |url: &str| Provider {
            token_endpoint: Some("https://login.example.com/token".into()),
            authorization_endpoint: Some(url.into()),
            ..Default::default()
        };
        assert!(authorization_endpoint(&generic("https://login.example.com/auth"), false).is_ok());
        assert_eq!(
            authorization_endpoint(&generic("http://127.0.0.1:9/auth"), false),
            Err(EndpointError::Insecure {
                field: "authorizationEndpoint"
            })
        );
        assert!(authorization_endpoint(&generic("http://127.0.0.1:9/auth"), true).is_ok());
        let without = Provider {
            token_endpoint: Some("https://login.example.com/token".into()),
            ..Default::default()
        };
        assert_eq!(
            authorization_endpoint(&without, false),
            Err(EndpointError::Missing {
                field: "authorizationEndpoint"
            })
        );
        let google = Provider {
            google: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(
            authorization_endpoint(&google, false).unwrap().as_str(),
            GOOGLE_AUTHORIZATION_ENDPOINT
        );
    }

    fn allow(entries: &[&str]) -> EndpointPolicy {
        EndpointPolicy {
            allow_insecure_loopback_http: true,
            allowed: entries.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn google_is_always_allowed_and_nothing_else_by_default() {
        let policy = EndpointPolicy::default();
        assert!(policy.allows(&url(GOOGLE_TOKEN_ENDPOINT)));
        assert!(policy.allows(&url(GOOGLE_AUTHORIZATION_ENDPOINT)));
        assert!(!policy.allows(&url("https://login.example.com/token")));
        assert_eq!(
            policy.token_endpoint(&generic("https://attacker.example/token")),
            Err(EndpointError::NotAllowed {
                field: "tokenEndpoint",
                origin: "https://attacker.example".into()
            })
        );
    }

    #[test]
    fn an_entry_allows_its_host_port_and_path_prefix_only() {
        let policy = allow(&["https://login.example.com/oauth2/"]);
        assert!(policy.allows(&url("https://login.example.com/oauth2/token")));
        assert!(policy.allows(&url("https://LOGIN.example.com:443/oauth2/v1/token")));
        assert!(!policy.allows(&url("https://login.example.com/other/token")));
        assert!(!policy.allows(&url("https://login.example.com:8443/oauth2/token")));
        assert!(!policy.allows(&url("http://login.example.com/oauth2/token")));
        assert!(!policy.allows(&url("https://login.example.com.evil.example/oauth2/token")));
        let exact = allow(&["https://login.example.com/token"]);
        assert!(exact.allows(&url("https://login.example.com/token")));
        assert!(!exact.allows(&url("https://login.example.com/token-evil")));
        assert!(exact.allows(&url("https://login.example.com/token/x")));
    }

    #[test]
    fn a_wildcard_port_allows_any_port_of_that_host() {
        let policy = allow(&["http://127.0.0.1:*"]);
        assert!(policy.allows(&url("http://127.0.0.1:41234/token")));
        assert!(!policy.allows(&url("http://127.0.0.2:41234/token")));
        assert!(
            policy
                .token_endpoint(&generic("http://127.0.0.1:9/token"))
                .is_ok()
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "login.example.com",
            "ftp://login.example.com/",
            "https://user:pw@login.example.com/",
            "https://login.example.com/?q=1",
            "https://login.example.com:443:*/",
        ] {
            assert!(bad.parse::<AllowedEndpoint>().is_err(), "{bad}");
        }
    }
}
