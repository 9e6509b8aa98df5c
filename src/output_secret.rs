//! The Secret that workloads mount: how it is built and how we tell ours from
//! someone else's. Pure; the reconciler does the writing.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use secrecy::ExposeSecret;

use crate::classify::Token;
use crate::decision::OutputSecret;
use crate::resource::{CREDENTIAL_LABEL, OAuthCredential};

/// `app.kubernetes.io/managed-by` value on every Secret this operator owns;
/// the operator watches only Secrets carrying it.
pub const MANAGED_BY: &str = "oauth-token-operator";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Keys of the output Secret.
pub const ACCESS_TOKEN_KEY: &str = "access_token";
pub const TOKEN_TYPE_KEY: &str = "token_type";
pub const EXPIRY_KEY: &str = "expiry";
pub const SCOPE_KEY: &str = "scope";

/// Label selector matching the output Secrets of every credential.
pub fn owned_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// Whether a Secret with this metadata is the output Secret of `credential`:
/// it must carry a controller owner reference to the credential's UID.
pub fn ownership(meta: Option<&ObjectMeta>, credential: &OAuthCredential) -> OutputSecret {
    let Some(meta) = meta else {
        return OutputSecret::Absent;
    };
    let uid = credential.meta().uid.as_deref();
    let owned = meta.owner_references.iter().flatten().any(|r| {
        r.controller == Some(true)
            && Some(r.uid.as_str()) == uid
            && r.kind == OAuthCredential::kind(&())
    });
    if owned {
        OutputSecret::Owned
    } else {
        OutputSecret::Foreign
    }
}

/// The output Secret for a freshly obtained token.
pub fn build(credential: &OAuthCredential, token: &Token, expires_at: Timestamp) -> Secret {
    let owner = OwnerReference {
        controller: Some(true),
        ..credential
            .controller_owner_ref(&())
            .expect("a stored credential has a name and uid")
    };
    let mut data = BTreeMap::new();
    data.insert(
        ACCESS_TOKEN_KEY.to_string(),
        ByteString(token.access_token.expose_secret().as_bytes().to_vec()),
    );
    data.insert(
        TOKEN_TYPE_KEY.to_string(),
        ByteString(token.token_type.clone().into_bytes()),
    );
    data.insert(
        EXPIRY_KEY.to_string(),
        ByteString(expires_at.to_string().into_bytes()),
    );
    data.insert(
        SCOPE_KEY.to_string(),
        ByteString(token.scope.clone().unwrap_or_default().into_bytes()),
    );
    Secret {
        metadata: ObjectMeta {
            name: Some(credential.spec.output.secret_name.clone()),
            namespace: credential.namespace(),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (CREDENTIAL_LABEL.to_string(), credential.name_any()),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::SecretString;

    use super::*;
    use crate::resource::{
        ClientSecretRef, OAuthCredentialSpec, Output, Provider, RefreshTokenSecretRef,
    };

    fn credential() -> OAuthCredential {
        let mut c = OAuthCredential::new(
            "gmail",
            OAuthCredentialSpec {
                provider: Provider {
                    google: Some(Default::default()),
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
                    secret_name: "gmail-token".into(),
                },
                refresh_before: None,
            },
        );
        c.metadata.namespace = Some("team-a".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }

    #[test]
    fn the_output_secret_carries_the_token_labels_and_a_controller_reference() {
        let token = Token {
            access_token: SecretString::from("ya29.token"),
            token_type: "Bearer".into(),
            expires_in: Duration::from_secs(3600),
            scope: Some("s".into()),
            refresh_token: None,
        };
        let secret = build(
            &credential(),
            &token,
            "2026-11-21T20:00:00Z".parse().unwrap(),
        );
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data[ACCESS_TOKEN_KEY].0, b"ya29.token");
        assert_eq!(data[EXPIRY_KEY].0, b"2026-11-21T20:00:00Z");
        assert_eq!(data[TOKEN_TYPE_KEY].0, b"Bearer");
        let labels = secret.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels[CREDENTIAL_LABEL], "gmail");
        assert_eq!(
            ownership(Some(&secret.metadata), &credential()),
            OutputSecret::Owned
        );
    }

    #[test]
    fn a_secret_without_our_controller_reference_is_foreign() {
        let c = credential();
        assert_eq!(ownership(None, &c), OutputSecret::Absent);
        assert_eq!(
            ownership(Some(&ObjectMeta::default()), &c),
            OutputSecret::Foreign
        );
        let mut other = c.clone();
        other.metadata.uid = Some("uid-2".into());
        let meta = ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                controller: Some(true),
                ..other.controller_owner_ref(&()).unwrap()
            }]),
            ..Default::default()
        };
        assert_eq!(
            ownership(Some(&meta), &c),
            OutputSecret::Foreign,
            "owned by another credential"
        );
    }
}
