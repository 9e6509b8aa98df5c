//! The Secret that workloads mount: how it is built in each of its shapes,
//! and how we tell ours from someone else's (or from one left behind by a
//! deleted credential, which a new one of the same name may adopt). Pure;
//! the reconciler does the writing.
//!
//! Shapes (`spec.output`): `Opaque` with the standard keys, renamed by
//! `keys`, or with the keys a `template` renders; or
//! `kubernetes.io/dockerconfigjson`, for image pulls with the token as the
//! password of `oauth2accesstoken`. Templates are Jinja (minijinja): no
//! loader, so no file; no environment; only the four variables given; strict
//! about unknown ones; and a fuel limit bounds every render.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use secrecy::ExposeSecret;
use thiserror::Error;

use crate::classify::Token;
use crate::decision::OutputSecret;
use crate::resource::{CREDENTIAL_LABEL, OAuthCredential, Output, OutputType};

/// `app.kubernetes.io/managed-by` value on every Secret this operator owns;
/// the operator watches only Secrets carrying it.
pub const MANAGED_BY: &str = "oauth-token-operator";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Set on an output Secret whose credential was deleted with
/// `deletionPolicy: Orphan`: no longer managed, adoptable by a new credential
/// of the same name.
pub const ORPHANED_LABEL: &str = "oauth.tokenoperator.io/orphaned";
/// When the access token in the Secret expires, and when it was obtained
/// (RFC 3339): metadata, so that adopting an orphan reads no data.
pub const EXPIRES_AT_ANNOTATION: &str = "oauth.tokenoperator.io/expires-at";
pub const REFRESHED_AT_ANNOTATION: &str = "oauth.tokenoperator.io/refreshed-at";
/// SHA-256 of the data the operator wrote: an edit by anyone else shows.
pub const DATA_HASH_ANNOTATION: &str = "oauth.tokenoperator.io/data-sha256";
/// SHA-256 of what the data was made from (provider, scopes, output shape):
/// an orphan is adopted without a token call only by a credential that
/// would write the same.
pub const SPEC_HASH_ANNOTATION: &str = "oauth.tokenoperator.io/spec-sha256";

/// Keys of the output Secret, by default.
pub const ACCESS_TOKEN_KEY: &str = "access_token";
pub const TOKEN_TYPE_KEY: &str = "token_type";
pub const EXPIRY_KEY: &str = "expiry";
pub const SCOPE_KEY: &str = "scope";
/// The username Google's Artifact Registry expects with an access token.
pub const REGISTRY_USERNAME: &str = "oauth2accesstoken";

/// Steps a template render may take.
const TEMPLATE_FUEL: u64 = 100_000;
/// All rendered templates together may be at most this long.
const MAX_RENDERED: usize = 256 * 1024;

/// Why an output cannot be built. Names keys, never values.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OutputError {
    #[error("spec.output.template.data[{key:?}]: {error}")]
    Template { key: String, error: String },
    #[error("spec.output.template renders more than {MAX_RENDERED} bytes")]
    TooLarge,
}

/// Label selector matching the output Secrets of every credential.
pub fn owned_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// Whether a Secret with this metadata is the output Secret of `credential`
/// (a controller owner reference to its UID), an orphan it may adopt, or
/// someone else's.
pub fn ownership(meta: Option<&ObjectMeta>, credential: &OAuthCredential) -> OutputSecret {
    let Some(meta) = meta else {
        return OutputSecret::Absent;
    };
    let uid = credential.meta().uid.as_deref();
    let references = meta.owner_references.iter().flatten();
    let owned = references.clone().any(|r| {
        r.controller == Some(true)
            && Some(r.uid.as_str()) == uid
            && r.kind == OAuthCredential::kind(&())
    });
    if owned {
        return OutputSecret::Owned;
    }
    let label = |key: &str| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
    };
    let annotation = |key: &str| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .and_then(|t| t.parse::<Timestamp>().ok())
    };
    let orphan = references.clone().next().is_none()
        && label(MANAGED_BY_LABEL) == Some(MANAGED_BY)
        && label(ORPHANED_LABEL) == Some("true")
        && label(CREDENTIAL_LABEL) == credential.metadata.name.as_deref();
    match (
        orphan,
        annotation(EXPIRES_AT_ANNOTATION),
        annotation(REFRESHED_AT_ANNOTATION),
    ) {
        (true, Some(expires_at), Some(refreshed_at)) => OutputSecret::Orphaned {
            expires_at,
            refreshed_at,
        },
        _ => OutputSecret::Foreign,
    }
}

/// Checks the output's templates by rendering them with a sample token of
/// Google's largest size, so that a broken one (a syntax error, an unknown
/// variable, a runaway loop, too much output) costs no token call.
pub fn check_templates(output: &Output) -> Result<(), OutputError> {
    if let Some(template) = &output.template {
        let sample = Token {
            access_token: secrecy::SecretString::from("x".repeat(2048)),
            token_type: "Bearer".into(),
            expires_in: std::time::Duration::from_secs(3600),
            scope: Some("https://www.googleapis.com/auth/gmail.send".into()),
            refresh_token: None,
            refresh_token_expires_in: None,
        };
        render_templates(&template.data, &sample, Timestamp::UNIX_EPOCH)?;
    }
    Ok(())
}

/// The Secret's type and data for `token`.
pub fn render(
    output: &Output,
    token: &Token,
    expires_at: Timestamp,
) -> Result<(&'static str, BTreeMap<String, ByteString>), OutputError> {
    let access = token.access_token.expose_secret();
    let bytes = |text: &str| ByteString(text.as_bytes().to_vec());
    match (output.type_, &output.template) {
        (OutputType::DockerConfigJson, _) => {
            let auth = base64::engine::general_purpose::STANDARD
                .encode(format!("{REGISTRY_USERNAME}:{access}"));
            let auths: serde_json::Map<String, serde_json::Value> = output
                .registries
                .iter()
                .map(|registry| {
                    let entry = serde_json::json!({
                        "username": REGISTRY_USERNAME, "password": access, "auth": auth,
                    });
                    (registry.clone(), entry)
                })
                .collect();
            let config = serde_json::json!({ "auths": auths }).to_string();
            let data = BTreeMap::from([(".dockerconfigjson".to_string(), bytes(&config))]);
            Ok(("kubernetes.io/dockerconfigjson", data))
        }
        (OutputType::Opaque, Some(template)) => {
            let data = render_templates(&template.data, token, expires_at)?;
            Ok(("Opaque", data))
        }
        (OutputType::Opaque, None) => {
            let keys = output.keys.clone().unwrap_or_else(default_keys);
            let data = BTreeMap::from([
                (keys.access_token, bytes(access)),
                (keys.token_type, bytes(&token.token_type)),
                (keys.expiry, bytes(&expires_at.to_string())),
                (
                    keys.scope,
                    bytes(token.scope.as_deref().unwrap_or_default()),
                ),
            ]);
            Ok(("Opaque", data))
        }
    }
}

fn default_keys() -> crate::resource::OutputKeys {
    crate::resource::OutputKeys {
        access_token: ACCESS_TOKEN_KEY.into(),
        token_type: TOKEN_TYPE_KEY.into(),
        expiry: EXPIRY_KEY.into(),
        scope: SCOPE_KEY.into(),
    }
}

fn environment(
    templates: &BTreeMap<String, String>,
) -> Result<minijinja::Environment<'static>, OutputError> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // An env file ends with a newline; what the template says is what is written.
    env.set_keep_trailing_newline(true);
    env.set_fuel(Some(TEMPLATE_FUEL));
    for (key, source) in templates {
        env.add_template_owned(key.clone(), source.clone())
            .map_err(|e| OutputError::Template {
                key: key.clone(),
                error: e.to_string(),
            })?;
    }
    Ok(env)
}

fn render_templates(
    templates: &BTreeMap<String, String>,
    token: &Token,
    expires_at: Timestamp,
) -> Result<BTreeMap<String, ByteString>, OutputError> {
    let env = environment(templates)?;
    let context = minijinja::context! {
        access_token => token.access_token.expose_secret(),
        token_type => token.token_type,
        expiry => expires_at.to_string(),
        scope => token.scope.clone().unwrap_or_default(),
    };
    let mut data = BTreeMap::new();
    let mut total = 0;
    for key in templates.keys() {
        let rendered = env
            .get_template(key)
            .and_then(|t| t.render(&context))
            .map_err(|e| OutputError::Template {
                key: key.clone(),
                error: e.to_string(),
            })?;
        total += rendered.len();
        if total > MAX_RENDERED {
            return Err(OutputError::TooLarge);
        }
        data.insert(key.clone(), ByteString(rendered.into_bytes()));
    }
    Ok(data)
}

/// SHA-256 (hex) of a Secret's data, in key order.
pub fn data_hash(data: &BTreeMap<String, ByteString>) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for (key, value) in data {
        context.update(&(key.len() as u64).to_be_bytes());
        context.update(key.as_bytes());
        context.update(&(value.0.len() as u64).to_be_bytes());
        context.update(&value.0);
    }
    hex(context.finish().as_ref())
}

/// SHA-256 (hex) of the parts of a credential's spec its output data is
/// made from: the provider, the scopes (as a set) and the output's shape.
/// Labels, annotations and the deletion policy are not part of it.
pub fn spec_hash(credential: &OAuthCredential) -> String {
    let spec = &credential.spec;
    let mut scopes = spec.scopes.clone();
    scopes.sort();
    scopes.dedup();
    let output = &spec.output;
    let shape = serde_json::json!({
        "provider": spec.provider,
        "scopes": scopes,
        "type": output.type_,
        "registries": output.registries,
        "keys": output.keys,
        "template": output.template,
    });
    hex(ring::digest::digest(&ring::digest::SHA256, shape.to_string().as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The annotation with the hash of the data the operator wrote, if any.
pub fn recorded_data_hash(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(DATA_HASH_ANNOTATION))
        .map(String::as_str)
}

/// Why an orphan is adopted with a fresh token rather than as it is.
pub fn stale_orphan(secret: &Secret, credential: &OAuthCredential) -> Option<&'static str> {
    let annotation = |key: &str| {
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    };
    let data = secret.data.clone().unwrap_or_default();
    if annotation(SPEC_HASH_ANNOTATION) != Some(spec_hash(credential).as_str()) {
        return Some("it was written for another provider, other scopes or another output shape");
    }
    if annotation(DATA_HASH_ANNOTATION) != Some(data_hash(&data).as_str()) {
        return Some("its data was changed after the operator wrote it");
    }
    None
}

/// The Secret's type as the credential's output would have it.
pub fn output_type(output: &Output) -> &'static str {
    match output.type_ {
        OutputType::Opaque => "Opaque",
        OutputType::DockerConfigJson => "kubernetes.io/dockerconfigjson",
    }
}

/// `current` with the operator's `desired` data, type, labels, annotations
/// and owner: what an update puts back after someone changed the data. Keys
/// someone added are dropped; labels and annotations of others are kept.
pub fn restored(current: &Secret, desired: Secret) -> Secret {
    let mut meta = current.metadata.clone();
    meta.managed_fields = None;
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.extend(desired.metadata.labels.unwrap_or_default());
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.extend(desired.metadata.annotations.unwrap_or_default());
    meta.owner_references = desired.metadata.owner_references;
    Secret {
        metadata: meta,
        type_: current.type_.clone(),
        data: desired.data,
        immutable: current.immutable,
        string_data: None,
    }
}

/// The output Secret for a freshly obtained token (obtained at
/// `refreshed_at`, valid until `expires_at`).
pub fn build(
    credential: &OAuthCredential,
    token: &Token,
    expires_at: Timestamp,
    refreshed_at: Timestamp,
) -> Result<Secret, OutputError> {
    let output = &credential.spec.output;
    let (type_, data) = render(output, token, expires_at)?;
    let owner = OwnerReference {
        controller: Some(true),
        ..credential
            .controller_owner_ref(&())
            .expect("a stored credential has a name and uid")
    };
    let mut labels = output.labels.clone();
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    labels.insert(CREDENTIAL_LABEL.to_string(), credential.name_any());
    let mut annotations = output.annotations.clone();
    annotations.insert(EXPIRES_AT_ANNOTATION.into(), expires_at.to_string());
    annotations.insert(REFRESHED_AT_ANNOTATION.into(), refreshed_at.to_string());
    annotations.insert(DATA_HASH_ANNOTATION.into(), data_hash(&data));
    annotations.insert(SPEC_HASH_ANNOTATION.into(), spec_hash(credential));
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(output.secret_name.clone()),
            namespace: credential.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(data),
        ..Default::default()
    })
}

/// The metadata patch (JSON merge) that orphans the output Secret `meta` of
/// `credential`: its owner reference removed (others kept), and the label
/// that says so. Applies only to the version read.
pub fn orphaning_patch(meta: &ObjectMeta, credential: &OAuthCredential) -> serde_json::Value {
    let uid = credential.meta().uid.clone().unwrap_or_default();
    let others: Vec<&OwnerReference> = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != uid)
        .collect();
    serde_json::json!({
        "metadata": {
            "resourceVersion": meta.resource_version,
            "ownerReferences": if others.is_empty() { serde_json::Value::Null } else { serde_json::json!(others) },
            "labels": { ORPHANED_LABEL: "true" },
        }
    })
}

/// The metadata patch (JSON merge) with which `credential` adopts the
/// orphan `meta`. Applies only to the version read.
pub fn adopting_patch(meta: &ObjectMeta, credential: &OAuthCredential) -> serde_json::Value {
    let owner = OwnerReference {
        controller: Some(true),
        ..credential
            .controller_owner_ref(&())
            .expect("a stored credential has a name and uid")
    };
    serde_json::json!({
        "metadata": {
            "resourceVersion": meta.resource_version,
            "ownerReferences": [owner],
            "labels": { ORPHANED_LABEL: null },
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::SecretString;

    use super::*;
    use crate::resource::{
        ClientSecretRef, OAuthCredentialSpec, OutputKeys, OutputTemplate, Provider,
        RefreshTokenSecretRef,
    };

    fn credential(output: Output) -> OAuthCredential {
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
                output,
                refresh_before: None,
                revoke_on_delete: false,
            },
        );
        c.metadata.namespace = Some("team-a".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }

    fn standard() -> Output {
        Output {
            secret_name: "gmail-token".into(),
            ..Default::default()
        }
    }

    fn token() -> Token {
        Token {
            access_token: SecretString::from("ya29.token"),
            token_type: "Bearer".into(),
            expires_in: Duration::from_secs(3600),
            scope: Some("s".into()),
            refresh_token: None,
            refresh_token_expires_in: None,
        }
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn built(output: Output) -> Secret {
        build(
            &credential(output),
            &token(),
            ts("2026-11-21T20:00:00Z"),
            ts("2026-11-21T19:00:00Z"),
        )
        .unwrap()
    }

    #[test]
    fn the_output_secret_carries_the_token_labels_and_a_controller_reference() {
        let mut output = standard();
        output.labels.insert("backup".into(), "daily".into());
        output.annotations.insert("team".into(), "mail".into());
        let secret = built(output.clone());
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data[ACCESS_TOKEN_KEY].0, b"ya29.token");
        assert_eq!(data[EXPIRY_KEY].0, b"2026-11-21T20:00:00Z");
        assert_eq!(data[TOKEN_TYPE_KEY].0, b"Bearer");
        let labels = secret.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels[CREDENTIAL_LABEL], "gmail");
        assert_eq!(labels["backup"], "daily");
        let annotations = secret.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["team"], "mail");
        assert_eq!(annotations[DATA_HASH_ANNOTATION], data_hash(data));
        assert_eq!(annotations[EXPIRES_AT_ANNOTATION], "2026-11-21T20:00:00Z");
        assert_eq!(
            ownership(Some(&secret.metadata), &credential(output)),
            OutputSecret::Owned
        );
    }

    #[test]
    fn renamed_keys_a_template_and_a_docker_config_are_each_what_they_say() {
        let mut renamed = standard();
        renamed.keys = Some(OutputKeys {
            access_token: "token".into(),
            token_type: "type".into(),
            expiry: "expires".into(),
            scope: "scopes".into(),
        });
        let data = built(renamed).data.unwrap();
        assert_eq!(data["token"].0, b"ya29.token");
        assert!(!data.contains_key(ACCESS_TOKEN_KEY));

        let mut templated = standard();
        templated.template = Some(OutputTemplate {
            data: BTreeMap::from([
                (
                    "token.env".into(),
                    "TOKEN={{ access_token }}\nEXPIRY={{ expiry }}\n".into(),
                ),
                (
                    "token.json".into(),
                    r#"{"token": {{ access_token | tojson }}}"#.into(),
                ),
            ]),
        });
        let data = built(templated).data.unwrap();
        assert_eq!(data.len(), 2, "a template names the keys");
        assert_eq!(
            std::str::from_utf8(&data["token.env"].0).unwrap(),
            "TOKEN=ya29.token\nEXPIRY=2026-11-21T20:00:00Z\n"
        );
        let json: serde_json::Value = serde_json::from_slice(&data["token.json"].0).unwrap();
        assert_eq!(json["token"], "ya29.token");

        let docker = Output {
            type_: OutputType::DockerConfigJson,
            registries: vec!["europe-docker.pkg.dev".into()],
            ..standard()
        };
        let secret = built(docker);
        assert_eq!(
            secret.type_.as_deref(),
            Some("kubernetes.io/dockerconfigjson")
        );
        let config: serde_json::Value =
            serde_json::from_slice(&secret.data.unwrap()[".dockerconfigjson"].0).unwrap();
        let entry = &config["auths"]["europe-docker.pkg.dev"];
        assert_eq!(entry["username"], REGISTRY_USERNAME);
        let auth = base64::engine::general_purpose::STANDARD
            .decode(entry["auth"].as_str().unwrap())
            .unwrap();
        assert_eq!(auth, b"oauth2accesstoken:ya29.token");
    }

    #[test]
    fn a_template_reads_nothing_but_its_variables_and_a_broken_one_is_named() {
        let template = |source: &str| Output {
            template: Some(OutputTemplate {
                data: BTreeMap::from([("k".into(), source.into())]),
            }),
            ..standard()
        };
        for source in [
            "{{ secret_value }}",
            "{% include 'other' %}",
            "{{ env.HOME }}",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        ] {
            let result = build(
                &credential(template(source)),
                &token(),
                ts("2026-11-21T20:00:00Z"),
                ts("2026-11-21T19:00:00Z"),
            );
            assert!(result.is_err(), "{source} rendered");
        }
        let broken = template("{{ access_token ");
        let error = check_templates(&broken.clone()).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("spec.output.template.data[\"k\"]"),
            "{error}"
        );
        assert!(check_templates(&template("{{ access_token }}")).is_ok());
        for refused in ["{{ refresh_token }}", "{{ access_token * 1000 }}"] {
            assert!(check_templates(&template(refused)).is_err(), "{refused}");
        }
    }

    #[test]
    fn an_orphan_is_taken_as_it_is_only_when_unchanged_and_made_for_the_same_spec() {
        let secret = built(standard());
        assert_eq!(stale_orphan(&secret, &credential(standard())), None);
        let mut edited = secret.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert(ACCESS_TOKEN_KEY.into(), ByteString(b"forged".to_vec()));
        assert!(stale_orphan(&edited, &credential(standard())).is_some());
        let mut other_scopes = credential(standard());
        other_scopes.spec.scopes.push("another".into());
        assert!(stale_orphan(&secret, &other_scopes).is_some());
        let mut other_keys = standard();
        other_keys.keys = Some(OutputKeys {
            access_token: "token".into(),
            token_type: TOKEN_TYPE_KEY.into(),
            expiry: EXPIRY_KEY.into(),
            scope: SCOPE_KEY.into(),
        });
        assert!(stale_orphan(&secret, &credential(other_keys)).is_some());
        let mut labelled = standard();
        labelled.labels.insert("team".into(), "mail".into());
        assert_eq!(
            stale_orphan(&secret, &credential(labelled)),
            None,
            "labels are not part of the data"
        );
    }

    #[test]
    fn a_restore_puts_back_exactly_our_data_and_keeps_the_metadata_of_others() {
        let desired = built(standard());
        let mut current = desired.clone();
        let data = current.data.as_mut().unwrap();
        data.insert(ACCESS_TOKEN_KEY.into(), ByteString(b"edited".to_vec()));
        data.insert("extra".into(), ByteString(b"added".to_vec()));
        current
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("backup".into(), "yes".into());
        current.metadata.resource_version = Some("42".into());
        let put = restored(&current, desired.clone());
        assert_eq!(put.data, desired.data);
        assert_eq!(put.metadata.labels.as_ref().unwrap()["backup"], "yes");
        assert_eq!(put.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(
            put.metadata.owner_references,
            desired.metadata.owner_references
        );
    }

    #[test]
    fn an_orphan_of_the_same_name_is_adoptable_and_nothing_else_foreign_is() {
        let c = credential(standard());
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
            "another credential's"
        );
        let orphan = |credential_label: &str| ObjectMeta {
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.into(), MANAGED_BY.into()),
                (ORPHANED_LABEL.into(), "true".into()),
                (CREDENTIAL_LABEL.into(), credential_label.into()),
            ])),
            annotations: Some(BTreeMap::from([
                (EXPIRES_AT_ANNOTATION.into(), "2026-11-21T20:00:00Z".into()),
                (
                    REFRESHED_AT_ANNOTATION.into(),
                    "2026-11-21T19:00:00Z".into(),
                ),
            ])),
            ..Default::default()
        };
        assert_eq!(
            ownership(Some(&orphan("gmail")), &c),
            OutputSecret::Orphaned {
                expires_at: ts("2026-11-21T20:00:00Z"),
                refreshed_at: ts("2026-11-21T19:00:00Z"),
            }
        );
        assert_eq!(ownership(Some(&orphan("drive")), &c), OutputSecret::Foreign);
    }
}
