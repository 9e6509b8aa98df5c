//! Whether a credential may lead to a token-endpoint call. Pure, in two
//! steps:
//!
//! - `admit`, before any Secret is read: the namespace is served, the output
//!   name is not another credential's input, the endpoints are allowed, the
//!   refresh-token Secret belongs to this credential alone, and the output's
//!   templates parse;
//! - `validate`, over the input Secrets as gathered: both opted in, the client
//!   complete, the refresh token present and sealed for this very credential,
//!   endpoint and client, and `refreshBefore` well-formed.
//!
//! The answer is a value with everything the next step needs, or an
//! `Invalid` that says who can fix what.

use std::time::Duration;

use secrecy::SecretString;
use thiserror::Error;

use crate::endpoint::{EndpointError, EndpointPolicy, TokenEndpoint};
use crate::input_secrets::{self, ClientCredentials, ClientSecretError, InputKind, InputSecret};
use crate::output_secret::{self, OutputError};
use crate::resource::{FailureCategory, OAuthCredentialSpec};
use crate::schedule;
use crate::seal::{Binding, Format, KeyRing, OpenError};
use crate::status::{Problem, reason};

/// What admission looks at: the credential and what the operator knows of
/// the other credentials in its namespace.
pub struct Admission<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a OAuthCredentialSpec,
    /// Where the operator keeps its seal keys; never served.
    pub operator_namespace: &'a str,
    pub policy: &'a EndpointPolicy,
    /// The credential that holds the refresh-token Secret, when another one
    /// (the oldest credential naming a refresh-token Secret holds it).
    pub refresh_secret_holder: Option<&'a str>,
    /// A credential that names this one's output Secret as an input.
    pub output_used_by: Option<&'a str>,
}

/// What validation looks at, after admission.
pub struct Input<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a OAuthCredentialSpec,
    pub endpoint: &'a TokenEndpoint,
    pub client_secret: &'a InputSecret,
    pub refresh_secret: &'a InputSecret,
    pub keys: &'a KeyRing,
}

/// Everything a token-endpoint call needs.
pub struct Ready {
    pub client: ClientCredentials,
    pub refresh_token: SecretString,
    /// The key the stored token is sealed with, and the sealed format;
    /// `None` for a plaintext one.
    pub sealed_with: Option<(String, Format)>,
    pub endpoint: TokenEndpoint,
    pub refresh_before: Option<Duration>,
}

/// Why no call is made: inputs only a person can supply or fix.
#[derive(Debug, Error)]
pub enum Invalid {
    #[error(
        "the operator does not serve credentials in its own namespace {0}, where it keeps its seal \
         keys; create the credential in a tenant namespace"
    )]
    NamespaceNotServed(String),
    #[error(
        "spec.output.secretName {secret} is an input Secret of OAuthCredential {user}; choose another \
         name, since the operator writes its output Secret"
    )]
    OutputNameInUse { secret: String, user: String },
    #[error(transparent)]
    Endpoint(EndpointError),
    #[error(
        "Secret {secret} is already the refresh-token Secret of OAuthCredential {holder}; give this \
         credential a Secret of its own: a refresh token serves one credential only, because \
         providers that rotate refresh tokens revoke the whole grant when a used one is presented again"
    )]
    RefreshTokenSecretShared { secret: String, holder: String },
    #[error(transparent)]
    ClientSecret(ClientSecretError),
    #[error(
        "Secret {secret} is not an OAuth {noun} Secret: the operator reads and changes only Secrets of \
         type {secret_type}, so it left this one alone. To opt it in, recreate it with that type and \
         the same data: `oauth-token-operator opt-in {namespace}/{name}` does that",
        noun = kind.noun(),
        secret_type = kind.secret_type()
    )]
    SecretNotAccepted {
        secret: String,
        kind: InputKind,
        namespace: String,
        name: String,
    },
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
        "Secret {secret} holds bytes under key {key:?} that are not UTF-8 text, so no refresh token; \
         store the token as text, for example with `oauth-token-operator authorize {namespace}/{name}`"
    )]
    RefreshTokenNotText {
        secret: String,
        key: String,
        namespace: String,
        name: String,
    },
    #[error(
        "the refresh token in Secret {secret} was granted for another token endpoint or client id than \
         the credential names now, so it is sent to neither; grant consent again: \
         `oauth-token-operator authorize {namespace}/{name}`"
    )]
    SealedForAnotherClient {
        secret: String,
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
    #[error("spec.refreshBefore: {0}")]
    RefreshBefore(String),
    #[error(transparent)]
    Output(OutputError),
}

impl Invalid {
    /// The CamelCase reason in conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::NamespaceNotServed(_) => reason::NAMESPACE_NOT_SERVED,
            Invalid::OutputNameInUse { .. } => reason::OUTPUT_NAME_IN_USE,
            Invalid::Endpoint(EndpointError::NotAllowed { .. }) => reason::ENDPOINT_NOT_ALLOWED,
            Invalid::Endpoint(_) => reason::INVALID_TOKEN_ENDPOINT,
            Invalid::RefreshTokenSecretShared { .. } => reason::REFRESH_TOKEN_SECRET_SHARED,
            Invalid::ClientSecret(_) => reason::CLIENT_SECRET_MISSING,
            Invalid::SecretNotAccepted { .. } => reason::SECRET_NOT_ACCEPTED,
            Invalid::RefreshTokenMissing { .. } | Invalid::RefreshTokenNotText { .. } => {
                reason::REFRESH_TOKEN_MISSING
            }
            Invalid::SealedForAnotherClient { .. } => reason::SEALED_FOR_ANOTHER_CLIENT,
            Invalid::SealedTokenUnreadable { .. } => reason::SEALED_TOKEN_UNREADABLE,
            Invalid::RefreshBefore(_) | Invalid::Output(_) => reason::INVALID_SPEC,
        }
    }

    /// Who can fix it: a new refresh token needs a person's consent; the rest
    /// is configuration.
    pub fn category(&self) -> FailureCategory {
        match self {
            Invalid::RefreshTokenMissing { .. }
            | Invalid::RefreshTokenNotText { .. }
            | Invalid::SealedForAnotherClient { .. }
            | Invalid::SealedTokenUnreadable { .. } => FailureCategory::ReauthRequired,
            _ => FailureCategory::Configuration,
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

/// Admits a credential, or says why not, without reading any Secret.
/// Returns its token endpoint.
pub fn admit(admission: &Admission<'_>) -> Result<TokenEndpoint, Invalid> {
    let spec = admission.spec;
    if admission.namespace == admission.operator_namespace {
        return Err(Invalid::NamespaceNotServed(admission.namespace.into()));
    }
    if let Some(user) = admission.output_used_by {
        return Err(Invalid::OutputNameInUse {
            secret: spec.output.secret_name.clone(),
            user: user.into(),
        });
    }
    let endpoint = admission
        .policy
        .token_endpoint(&spec.provider)
        .map_err(Invalid::Endpoint)?;
    if spec.provider.authorization_endpoint.is_some() {
        admission
            .policy
            .authorization_endpoint(&spec.provider)
            .map_err(Invalid::Endpoint)?;
    }
    if spec.revoke_on_delete {
        admission
            .policy
            .revocation_endpoint(&spec.provider)
            .map_err(Invalid::Endpoint)?;
    }
    output_secret::check_templates(&spec.output).map_err(Invalid::Output)?;
    if let Some(holder) = admission.refresh_secret_holder {
        return Err(Invalid::RefreshTokenSecretShared {
            secret: spec.refresh_token_secret_ref.name.clone(),
            holder: holder.into(),
        });
    }
    Ok(endpoint)
}

/// Checks the gathered inputs in the order a person fixes them.
pub fn validate(input: &Input<'_>) -> Result<Ready, Invalid> {
    let spec = input.spec;
    let client_secret = accepted(input, input.client_secret, InputKind::Client)?;
    let client = input_secrets::client_credentials(client_secret, &spec.client_secret_ref)
        .map_err(Invalid::ClientSecret)?;
    let (refresh_token, sealed_with) = refresh_token(input, &client)?;
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
        endpoint: input.endpoint.clone(),
        refresh_before,
    })
}

/// The Secret if it exists and opted in as `kind`; `None` when missing.
fn accepted<'a>(
    input: &Input<'_>,
    secret: &'a InputSecret,
    kind: InputKind,
) -> Result<Option<&'a k8s_openapi::api::core::v1::Secret>, Invalid> {
    match secret {
        InputSecret::Accepted(secret) => Ok(Some(secret)),
        InputSecret::Missing => Ok(None),
        InputSecret::NotAccepted => Err(Invalid::SecretNotAccepted {
            secret: match kind {
                InputKind::Client => input.spec.client_secret_ref.name.clone(),
                InputKind::RefreshToken => input.spec.refresh_token_secret_ref.name.clone(),
            },
            kind,
            namespace: input.namespace.into(),
            name: input.name.into(),
        }),
    }
}

/// The binding a refresh token of this credential is sealed with.
pub fn binding<'a>(
    namespace: &'a str,
    name: &'a str,
    endpoint: &'a TokenEndpoint,
    client_id: &'a str,
) -> Binding<'a> {
    Binding {
        namespace,
        name,
        token_endpoint: endpoint.url().as_str(),
        client_id,
    }
}

fn refresh_token(
    input: &Input<'_>,
    client: &ClientCredentials,
) -> Result<(SecretString, Option<(String, Format)>), Invalid> {
    let reference = &input.spec.refresh_token_secret_ref;
    let (namespace, name) = (input.namespace.to_string(), input.name.to_string());
    let secret = accepted(input, input.refresh_secret, InputKind::RefreshToken)?;
    let stored = input_secrets::stored_refresh_token(secret, &reference.key);
    if matches!(stored, input_secrets::Stored::NotText) {
        return Err(Invalid::RefreshTokenNotText {
            secret: reference.name.clone(),
            key: reference.key.clone(),
            namespace,
            name,
        });
    }
    let binding = binding(
        input.namespace,
        input.name,
        input.endpoint,
        &client.client_id,
    );
    match input_secrets::open_stored(&stored, input.keys, &binding) {
        Some(Ok((token, key_id))) => {
            let format = match &stored {
                input_secrets::Stored::Sealed { format, .. } => *format,
                _ => Format::V2,
            };
            Ok((token, key_id.map(|id| (id, format))))
        }
        None => Err(Invalid::RefreshTokenMissing {
            secret: reference.name.clone(),
            key: reference.key.clone(),
            namespace,
            name,
        }),
        Some(Err(OpenError::OtherBinding)) => Err(Invalid::SealedForAnotherClient {
            secret: reference.name.clone(),
            namespace,
            name,
        }),
        Some(Err(error)) => Err(Invalid::SealedTokenUnreadable {
            error,
            secret: reference.name.clone(),
            namespace,
            name,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use base64::Engine;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;

    use super::*;
    use crate::input_secrets::{CLIENT_SECRET_TYPE, REFRESH_TOKEN_SECRET_TYPE};
    use crate::resource::{ClientSecretRef, Output, Provider, RefreshTokenSecretRef};

    const ENDPOINT: &str = "https://login.example.com/token";

    fn secret(type_: &str, data: &[(&str, &str)]) -> InputSecret {
        InputSecret::Accepted(Box::new(Secret {
            type_: Some(type_.into()),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }))
    }

    fn client() -> InputSecret {
        secret(
            CLIENT_SECRET_TYPE,
            &[("client_id", "id"), ("client_secret", "s")],
        )
    }

    fn refresh(data: &[(&str, &str)]) -> InputSecret {
        secret(REFRESH_TOKEN_SECRET_TYPE, data)
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
                ..Default::default()
            },
            refresh_before: refresh_before.map(Into::into),
            revoke_on_delete: false,
        }
    }

    fn keys() -> KeyRing {
        let key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        KeyRing::from_yaml(&format!("primary: k1\nkeys:\n  k1: {key}\n")).unwrap()
    }

    fn policy() -> EndpointPolicy {
        EndpointPolicy {
            allow_insecure_loopback_http: false,
            allowed: vec!["https://login.example.com".parse().unwrap()],
        }
    }

    fn admission<'a>(spec: &'a OAuthCredentialSpec, policy: &'a EndpointPolicy) -> Admission<'a> {
        Admission {
            namespace: "ns",
            name: "c",
            spec,
            operator_namespace: "oto-system",
            policy,
            refresh_secret_holder: None,
            output_used_by: None,
        }
    }

    fn check(
        spec: &OAuthCredentialSpec,
        client: &InputSecret,
        refresh: &InputSecret,
    ) -> Result<Ready, Invalid> {
        let endpoint = admit(&admission(spec, &policy()))?;
        validate(&Input {
            namespace: "ns",
            name: "c",
            spec,
            endpoint: &endpoint,
            client_secret: client,
            refresh_secret: refresh,
            keys: &keys(),
        })
    }

    fn sealed_for(endpoint: &str, client_id: &str) -> String {
        let endpoint = TokenEndpoint::from_provider(
            &Provider {
                token_endpoint: Some(endpoint.into()),
                ..Default::default()
            },
            false,
        )
        .unwrap();
        keys().seal(
            &SecretString::from("r"),
            &binding("ns", "c", &endpoint, client_id),
        )
    }

    #[test]
    fn complete_inputs_are_ready() {
        let ready = check(
            &spec(ENDPOINT, Some("90s")),
            &client(),
            &refresh(&[("refresh_token.sealed", &sealed_for(ENDPOINT, "id"))]),
        )
        .unwrap();
        assert_eq!(ready.refresh_before, Some(Duration::from_secs(90)));
        assert_eq!(ready.sealed_with, Some(("k1".to_string(), Format::V2)));
        assert_eq!(ready.endpoint.host(), "login.example.com");
    }

    #[test]
    fn admission_refuses_before_any_secret_is_read() {
        let spec = spec(ENDPOINT, None);
        let policy = policy();
        let refused = |admission: Admission<'_>| admit(&admission).err().map(|i| i.reason());
        let in_operator_namespace = Admission {
            namespace: "oto-system",
            ..admission(&spec, &policy)
        };
        assert_eq!(refused(in_operator_namespace), Some("NamespaceNotServed"));
        let squatting = Admission {
            output_used_by: Some("other"),
            ..admission(&spec, &policy)
        };
        assert_eq!(refused(squatting), Some("OutputNameInUse"));
        let shared = Admission {
            refresh_secret_holder: Some("first"),
            ..admission(&spec, &policy)
        };
        assert_eq!(refused(shared), Some("RefreshTokenSecretShared"));
        let elsewhere = self::spec("https://attacker.example/token", None);
        assert_eq!(
            refused(admission(&elsewhere, &policy)),
            Some("EndpointNotAllowed")
        );
        let mut consent_elsewhere = spec.clone();
        consent_elsewhere.provider.authorization_endpoint =
            Some("https://attacker.example/auth".into());
        assert_eq!(
            refused(admission(&consent_elsewhere, &policy)),
            Some("EndpointNotAllowed")
        );
        assert_eq!(refused(admission(&spec, &policy)), None);
    }

    #[test]
    fn each_invalid_input_has_its_reason_and_category_in_the_order_a_person_fixes_them() {
        let good = spec(ENDPOINT, None);
        let token = refresh(&[("refresh_token", "r")]);
        let opaque = InputSecret::NotAccepted;
        let cases = [
            (
                &good,
                &InputSecret::Missing,
                &InputSecret::Missing,
                "ClientSecretMissing",
                FailureCategory::Configuration,
            ),
            (
                &good,
                &opaque,
                &token,
                "SecretNotAccepted",
                FailureCategory::Configuration,
            ),
            (
                &good,
                &client(),
                &opaque,
                "SecretNotAccepted",
                FailureCategory::Configuration,
            ),
            (
                &good,
                &client(),
                &InputSecret::Missing,
                "RefreshTokenMissing",
                FailureCategory::ReauthRequired,
            ),
            (
                &good,
                &client(),
                &refresh(&[("other", "x")]),
                "RefreshTokenMissing",
                FailureCategory::ReauthRequired,
            ),
        ];
        for (spec, client, refresh, reason, category) in cases {
            let Err(invalid) = check(spec, client, refresh) else {
                panic!("{reason}: accepted");
            };
            assert_eq!(invalid.reason(), reason);
            assert_eq!(invalid.category(), category, "{reason}");
        }
        let later = spec(ENDPOINT, Some("soon"));
        assert_eq!(
            check(&later, &client(), &token).err().map(|i| i.reason()),
            Some("InvalidSpec")
        );
    }

    #[test]
    fn a_token_sealed_for_another_endpoint_client_or_credential_is_not_used() {
        let good = spec(ENDPOINT, None);
        let for_other_client = refresh(&[(
            "refresh_token.sealed",
            &sealed_for(ENDPOINT, "other-client"),
        )]);
        let invalid = check(&good, &client(), &for_other_client).err().unwrap();
        assert_eq!(invalid.reason(), "SealedForAnotherClient");
        assert_eq!(invalid.category(), FailureCategory::ReauthRequired);
        let for_other_endpoint = refresh(&[(
            "refresh_token.sealed",
            &sealed_for("https://login.example.com/other", "id"),
        )]);
        assert_eq!(
            check(&good, &client(), &for_other_endpoint)
                .err()
                .map(|i| i.reason()),
            Some("SealedForAnotherClient")
        );
        let garbled = refresh(&[("refresh_token.sealed", "oto-sealed:v1:k1:AAAA")]);
        assert_eq!(
            check(&good, &client(), &garbled).err().map(|i| i.reason()),
            Some("SealedTokenUnreadable")
        );
    }

    #[test]
    fn messages_say_what_to_do_without_any_value() {
        let good = spec(ENDPOINT, None);
        let invalid = check(&good, &client(), &InputSecret::Missing)
            .err()
            .unwrap();
        let message = invalid.to_string();
        assert!(
            message.contains("oauth-token-operator authorize ns/c"),
            "{message}"
        );
        let not_accepted = check(&good, &InputSecret::NotAccepted, &InputSecret::Missing)
            .err()
            .unwrap()
            .to_string();
        assert!(
            not_accepted.contains("type oauth.tokenoperator.io/client")
                && not_accepted.contains("oauth-token-operator opt-in ns/c"),
            "{not_accepted}"
        );
    }

    #[test]
    fn a_token_or_client_secret_that_is_not_text_is_named_as_such() {
        let good = spec(ENDPOINT, None);
        let binary = InputSecret::Accepted(Box::new(Secret {
            type_: Some(REFRESH_TOKEN_SECRET_TYPE.into()),
            data: Some(
                [(
                    "refresh_token".to_string(),
                    ByteString(vec![0xff, 0xfe, 0x00]),
                )]
                .into(),
            ),
            ..Default::default()
        }));
        let invalid = check(&good, &client(), &binary).err().unwrap();
        assert_eq!(invalid.reason(), "RefreshTokenMissing");
        assert!(invalid.to_string().contains("not UTF-8 text"), "{invalid}");
        let binary_client = InputSecret::Accepted(Box::new(Secret {
            type_: Some(CLIENT_SECRET_TYPE.into()),
            data: Some(
                [
                    ("client_id".to_string(), ByteString(b"id".to_vec())),
                    ("client_secret".to_string(), ByteString(vec![0xc3, 0x28])),
                ]
                .into(),
            ),
            ..Default::default()
        }));
        let invalid = check(&good, &binary_client, &refresh(&[("refresh_token", "r")]))
            .err()
            .unwrap();
        assert_eq!(invalid.reason(), "ClientSecretMissing");
        assert!(invalid.to_string().contains("not UTF-8 text"), "{invalid}");
    }
}
