//! Whether what the shell gathered allows a call to the token endpoint: the
//! client Secret, the stored refresh token, the endpoint and `refreshBefore`,
//! checked in that order. Pure: the answer is a `Ready` value with everything
//! the call needs, or an `Invalid` one that says who can fix what.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use secrecy::SecretString;
use thiserror::Error;

use crate::endpoint::{EndpointError, TokenEndpoint};
use crate::input_secrets::{self, ClientCredentials, ClientSecretError, Stored};
use crate::resource::{FailureCategory, OAuthCredentialSpec};
use crate::schedule;
use crate::seal::{KeyRing, OpenError};
use crate::status::{Problem, reason};

/// What validation looks at.
pub struct Input<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a OAuthCredentialSpec,
    pub client_secret: Option<&'a Secret>,
    pub refresh_secret: Option<&'a Secret>,
    pub keys: &'a KeyRing,
    pub allow_insecure_loopback_http: bool,
}

/// Everything a token-endpoint call needs.
pub struct Ready {
    pub client: ClientCredentials,
    pub refresh_token: SecretString,
    /// The key the stored token is sealed with; `None` for a plaintext one.
    pub sealed_with: Option<String>,
    pub endpoint: TokenEndpoint,
    pub refresh_before: Option<Duration>,
}

/// Inputs that only a person can supply or fix: no provider call.
#[derive(Debug, Error)]
pub enum Invalid {
    #[error(transparent)]
    ClientSecret(ClientSecretError),
    #[error(
        "Secret {secret} has no non-empty key {key:?}; store a refresh token there, for example with \
         `oauth-token-operator authorize {namespace}/{name}`"
    )]
    RefreshTokenMissing {
        secret: String,
        key: String,
        namespace: String,
        name: String,
    },
    #[error(
        "{error}; store a new refresh token in Secret {secret} (for example with `oauth-token-operator \
         authorize {namespace}/{name}`), or restore the seal key"
    )]
    SealedTokenUnreadable {
        error: OpenError,
        secret: String,
        namespace: String,
        name: String,
    },
    #[error(transparent)]
    TokenEndpoint(EndpointError),
    #[error("spec.refreshBefore: {0}")]
    RefreshBefore(String),
}

impl Invalid {
    /// The CamelCase reason in conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::ClientSecret(_) => reason::CLIENT_SECRET_MISSING,
            Invalid::RefreshTokenMissing { .. } => reason::REFRESH_TOKEN_MISSING,
            Invalid::SealedTokenUnreadable { .. } => reason::SEALED_TOKEN_UNREADABLE,
            Invalid::TokenEndpoint(_) => reason::INVALID_TOKEN_ENDPOINT,
            Invalid::RefreshBefore(_) => reason::INVALID_SPEC,
        }
    }

    /// Who can fix it: a new refresh token needs a person; the rest is
    /// configuration.
    pub fn category(&self) -> FailureCategory {
        match self {
            Invalid::RefreshTokenMissing { .. } | Invalid::SealedTokenUnreadable { .. } => {
                FailureCategory::ReauthRequired
            }
            Invalid::ClientSecret(_) | Invalid::TokenEndpoint(_) | Invalid::RefreshBefore(_) => {
                FailureCategory::Configuration
            }
        }
    }
}

impl From<&Invalid> for Problem {
    fn from(invalid: &Invalid) -> Self {
        Problem {
            category: invalid.category(),
            reason: invalid.reason(),
            message: invalid.to_string(),
            provider: Default::default(),
            http_status: None,
        }
    }
}

/// Checks the inputs in the order a person fixes them.
pub fn validate(input: &Input<'_>) -> Result<Ready, Invalid> {
    let spec = input.spec;
    let client = input_secrets::client_credentials(input.client_secret, &spec.client_secret_ref)
        .map_err(Invalid::ClientSecret)?;
    let (refresh_token, sealed_with) = refresh_token(input)?;
    let endpoint = TokenEndpoint::from_provider(&spec.provider, input.allow_insecure_loopback_http)
        .map_err(Invalid::TokenEndpoint)?;
    let refresh_before = spec
        .refresh_before
        .as_deref()
        .map(schedule::parse_duration)
        .transpose()
        .map_err(Invalid::RefreshBefore)?;
    Ok(Ready {
        client,
        refresh_token,
        sealed_with,
        endpoint,
        refresh_before,
    })
}

fn refresh_token(input: &Input<'_>) -> Result<(SecretString, Option<String>), Invalid> {
    let reference = &input.spec.refresh_token_secret_ref;
    let stored = input_secrets::stored_refresh_token(
        input.refresh_secret,
        &reference.key,
        input.keys,
        input.namespace,
        input.name,
    );
    match stored {
        Stored::Plain(token) => Ok((token, None)),
        Stored::Sealed { token, key_id } => Ok((token, Some(key_id))),
        Stored::Missing => Err(Invalid::RefreshTokenMissing {
            secret: reference.name.clone(),
            key: reference.key.clone(),
            namespace: input.namespace.into(),
            name: input.name.into(),
        }),
        Stored::Unreadable(error) => Err(Invalid::SealedTokenUnreadable {
            error,
            secret: reference.name.clone(),
            namespace: input.namespace.into(),
            name: input.name.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use base64::Engine;
    use k8s_openapi::ByteString;

    use super::*;
    use crate::resource::{ClientSecretRef, Output, Provider, RefreshTokenSecretRef};

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    fn spec(endpoint: &str, refresh_before: Option<&str>) -> OAuthCredentialSpec {
        OAuthCredentialSpec {
            provider: Provider {
                token_endpoint: Some(endpoint.into()),
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
            },
            refresh_before: refresh_before.map(Into::into),
        }
    }

    fn keys() -> KeyRing {
        let key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        KeyRing::from_yaml(&format!("primary: k1\nkeys:\n  k1: {key}\n")).unwrap()
    }

    fn check(
        spec: &OAuthCredentialSpec,
        client: Option<&Secret>,
        refresh: Option<&Secret>,
    ) -> Result<Ready, Invalid> {
        validate(&Input {
            namespace: "ns",
            name: "c",
            spec,
            client_secret: client,
            refresh_secret: refresh,
            keys: &keys(),
            allow_insecure_loopback_http: false,
        })
    }

    #[test]
    fn complete_inputs_are_ready() {
        let client = secret(&[("client_id", "id"), ("client_secret", "s")]);
        let refresh = secret(&[("refresh_token", "r")]);
        let ready = check(
            &spec("https://login.example.com/token", Some("90s")),
            Some(&client),
            Some(&refresh),
        )
        .unwrap();
        assert_eq!(ready.refresh_before, Some(Duration::from_secs(90)));
        assert_eq!(ready.sealed_with, None);
        assert_eq!(ready.endpoint.host(), "login.example.com");
    }

    #[test]
    fn each_invalid_input_has_its_reason_and_category_in_the_order_a_person_fixes_them() {
        let client = secret(&[("client_id", "id"), ("client_secret", "s")]);
        let refresh = secret(&[("refresh_token", "r")]);
        let foreign = secret(&[(
            "refresh_token.sealed",
            &keys().seal(&SecretString::from("r"), "other", "c"),
        )]);
        let good = spec("https://login.example.com/token", None);
        type Case<'a> = (
            OAuthCredentialSpec,
            Option<&'a Secret>,
            Option<&'a Secret>,
            &'a str,
            FailureCategory,
        );
        let cases: [Case; 5] = [
            (
                good.clone(),
                None,
                None,
                "ClientSecretMissing",
                FailureCategory::Configuration,
            ),
            (
                good.clone(),
                Some(&client),
                None,
                "RefreshTokenMissing",
                FailureCategory::ReauthRequired,
            ),
            (
                good.clone(),
                Some(&client),
                Some(&foreign),
                "SealedTokenUnreadable",
                FailureCategory::ReauthRequired,
            ),
            (
                spec("http://login.example.com/token", None),
                Some(&client),
                Some(&refresh),
                "InvalidTokenEndpoint",
                FailureCategory::Configuration,
            ),
            (
                spec("https://login.example.com/token", Some("soon")),
                Some(&client),
                Some(&refresh),
                "InvalidSpec",
                FailureCategory::Configuration,
            ),
        ];
        for (spec, client, refresh, reason, category) in cases {
            let Err(invalid) = check(&spec, client, refresh) else {
                panic!("{reason}: accepted");
            };
            assert_eq!(invalid.reason(), reason);
            assert_eq!(invalid.category(), category, "{reason}");
        }
    }

    #[test]
    fn messages_say_what_to_do_without_any_value() {
        let client = secret(&[
            ("client_id", "id"),
            ("client_secret", "client-secret-value"),
        ]);
        let Err(invalid) = check(
            &spec("https://login.example.com/token", None),
            Some(&client),
            None,
        ) else {
            panic!("accepted without a refresh token");
        };
        let message = invalid.to_string();
        assert!(
            message.contains("oauth-token-operator authorize ns/c"),
            "{message}"
        );
        assert!(!message.contains("client-secret-value"));
    }
}
