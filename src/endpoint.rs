//! Where tokens may be sent: the transport policy for token and
//! authorization endpoints named in a credential's spec. An absolute https
//! URL without credentials or a fragment, or plain http to a loopback address
//! only behind an explicit flag (tests and demos). Pure; the token client and
//! the consent flow both ask it.

use std::net::IpAddr;

use thiserror::Error;
use url::Url;

use crate::resource::{ClientAuthentication, Provider};

/// Google's token endpoint.
pub const GOOGLE_TOKEN_ENDPOINT: &str = "https://oauth2.googleapis.com/token";
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

    /// The host, which keys the per-endpoint rate limit.
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or_default()
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
}
