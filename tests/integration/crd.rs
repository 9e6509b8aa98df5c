//! The CRD: generated from the Rust types and committed in `crds/`; every
//! field described; invalid input refused by the real API server with a
//! message a person understands; the examples accepted.

use std::time::Duration;

use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::{ApiResource, Scope};
use kube::{Api, CustomResourceExt, Discovery};
use oauth_token_operator::resource::OAuthCredential;
use serde_json::{Value, json};

use crate::support::fixtures::ensure_crd;
use crate::support::objects::{api_for, gvk_of, yaml_documents};
use crate::support::{eventually, with_namespace};

#[test]
fn the_committed_crd_matches_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/oauthcredentials.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/oauthcredentials.yaml");
    assert!(
        committed == oauth_token_operator::cli::crd_yaml(),
        "crds/oauthcredentials.yaml is stale: run `cargo run -- crd > crds/oauthcredentials.yaml`"
    );
}

#[test]
fn every_field_has_a_description() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, child) in properties {
                let child_path = format!("{path}.{name}");
                if child
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    missing.push(child_path.clone());
                }
                walk(&child_path, child, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let crd = serde_json::to_value(OAuthCredential::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut missing = Vec::new();
    for root in ["spec", "status"] {
        walk(root, &schema["properties"][root], &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a description (kubectl explain shows nothing): {missing:?}"
    );
}

fn credential_api(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<OAuthCredential>(&());
    Api::namespaced_with(client, ns, &resource)
}

fn valid_spec() -> Value {
    json!({
        "provider": {"google": {}},
        "clientSecretRef": {"name": "client"},
        "refreshTokenSecretRef": {"name": "refresh"},
        "scopes": ["https://www.googleapis.com/auth/gmail.send"],
        "output": {"secretName": "token"}
    })
}

fn with(path: &[&str], value: Value) -> Value {
    let mut spec = valid_spec();
    let mut at = &mut spec;
    for key in &path[..path.len() - 1] {
        at = at.get_mut(*key).unwrap();
    }
    if value.is_null() {
        at.as_object_mut().unwrap().remove(path[path.len() - 1]);
    } else {
        at[path[path.len() - 1]] = value;
    }
    spec
}

#[tokio::test]
async fn invalid_credentials_are_refused_with_messages_a_person_understands() {
    with_namespace("crd-validation", |client, ns| async move {
        ensure_crd(&client).await;
        let api = credential_api(client, &ns);
        let object = |name: &str, spec: Value| -> DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "oauth.tokenoperator.io/v1alpha1",
                "kind": "OAuthCredential",
                "metadata": {"name": name},
                "spec": spec,
            }))
            .unwrap()
        };
        api.create(&PostParams::default(), &object("valid", valid_spec())).await.expect("a valid credential is accepted");

        let cases: Vec<(&str, Value, &str)> = vec![
            ("both-providers", with(&["provider", "tokenEndpoint"], json!("https://login.example.com/token")), "set exactly one of provider.google or provider.tokenEndpoint"),
            ("no-provider", with(&["provider", "google"], Value::Null), "set exactly one of provider.google or provider.tokenEndpoint"),
            ("not-a-url", json!({"provider": {"tokenEndpoint": "login.example.com"}, "clientSecretRef": {"name": "c"}, "refreshTokenSecretRef": {"name": "r"}, "scopes": ["s"], "output": {"secretName": "t"}}), "tokenEndpoint must be an absolute https URL"),
            ("google-with-auth", with(&["provider", "clientAuthentication"], json!("client_secret_basic")), "apply only to a generic provider"),
            ("bad-auth", json!({"provider": {"tokenEndpoint": "https://x.example/token", "clientAuthentication": "private_key_jwt"}, "clientSecretRef": {"name": "c"}, "refreshTokenSecretRef": {"name": "r"}, "scopes": ["s"], "output": {"secretName": "t"}}), "supported values: \"client_secret_basic\", \"client_secret_post\""),
            ("same-secret", with(&["output", "secretName"], json!("refresh")), "output.secretName must differ from the refresh-token and client Secrets"),
            ("bad-duration", with(&["refreshBefore"], json!("20 minutes")), "refreshBefore"),
            ("no-scopes", with(&["scopes"], json!([])), "scopes"),
            ("bad-name", with(&["output", "secretName"], json!("Not_A_Name")), "secretName"),
            ("no-output", with(&["output"], Value::Null), "output: Required value"),
            ("docker-without-registries", with(&["output", "type"], json!("kubernetes.io/dockerconfigjson")), "output.registries is required with type kubernetes.io/dockerconfigjson"),
            ("registries-on-opaque", with(&["output", "registries"], json!(["europe-docker.pkg.dev"])), "output.registries is required with type kubernetes.io/dockerconfigjson, and only then"),
            ("other-type", with(&["output", "type"], json!("kubernetes.io/tls")), "supported values: \"Opaque\", \"kubernetes.io/dockerconfigjson\""),
            ("keys-and-template", with(&["output"], json!({"secretName": "t", "keys": {"accessToken": "a"}, "template": {"data": {"k": "{{ access_token }}"}}})), "set output.keys or output.template, not both"),
            ("template-key", with(&["output", "template"], json!({"data": {"not a key": "x"}})), "output.template.data keys must be Secret keys"),
            ("template-size", with(&["output", "template"], json!({"data": {"k": "x".repeat(4097)}})), "at most 4096 characters"),
            ("our-label", with(&["output", "labels"], json!({"oauth.tokenoperator.io/orphaned": "true"})), "output.labels may not set"),
            ("our-annotation", with(&["output", "annotations"], json!({"oauth.tokenoperator.io/data-sha256": "x"})), "output.annotations may not set"),
            ("bad-deletion-policy", with(&["output", "deletionPolicy"], json!("Keep")), "supported values: \"Delete\", \"Orphan\""),
            ("revoke-without-endpoint", json!({"provider": {"tokenEndpoint": "https://x.example/token"}, "clientSecretRef": {"name": "c"}, "refreshTokenSecretRef": {"name": "r"}, "scopes": ["s"], "output": {"secretName": "t"}, "revokeOnDelete": true}), "revokeOnDelete needs provider.revocationEndpoint"),
            ("google-revocation-endpoint", with(&["provider", "revocationEndpoint"], json!("https://x.example/revoke")), "apply only to a generic provider"),
        ];
        for (name, spec, expected) in cases {
            let error = api.create(&PostParams::default(), &object(name, spec)).await.expect_err(name);
            let kube::Error::Api(status) = &error else { panic!("{name}: unexpected error {error}") };
            assert_eq!(status.code, 422, "{name}: {}", status.message);
            assert!(status.message.contains(expected), "{name}: {:?} does not say {expected:?}", status.message);
        }
        // The output's type stays with its Secret's name.
        let patch = |output: Value| json!({"spec": {"output": output}});
        let change_type = patch(json!({"secretName": "token", "type": "kubernetes.io/dockerconfigjson", "registries": ["x.pkg.dev"]}));
        let error = api
            .patch("valid", &PatchParams::default(), &Patch::Merge(&change_type))
            .await
            .expect_err("the type changed in place");
        assert!(error.to_string().contains("output.type cannot change for the same secretName"), "{error}");
        let renamed = patch(json!({"secretName": "pull", "type": "kubernetes.io/dockerconfigjson", "registries": ["x.pkg.dev"]}));
        api.patch("valid", &PatchParams::default(), &Patch::Merge(&renamed))
            .await
            .expect("a new type with a new name");
    })
    .await;
}

#[tokio::test]
async fn the_examples_are_accepted_by_the_api_server() {
    with_namespace("crd-examples", |client, ns| async move {
        ensure_crd(&client).await;
        // Discovery may lag a just-created CRD by a moment.
        let discovery = eventually(
            "discovery to list OAuthCredential",
            Duration::from_secs(20),
            || async {
                let discovery = Discovery::new(client.clone())
                    .run()
                    .await
                    .expect("discovery");
                discovery
                    .has_group("oauth.tokenoperator.io")
                    .then_some(discovery)
            },
        )
        .await;
        for file in [
            "google-gmail-sender.yaml",
            "local-demo.yaml",
            "output-shapes.yaml",
            "rbac/authorize-role.yaml",
        ] {
            let path = format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("DEMO_TOKEN_ENDPOINT", "http://127.0.0.1:8080/token");
            for value in yaml_documents(&text) {
                let mut object: DynamicObject = serde_json::from_value(value).unwrap();
                let gvk = gvk_of(&object);
                // Namespaced objects go to the test's namespace: a dry run
                // cannot create the example's own.
                let (api, scope) = api_for(&client, &discovery, &gvk, &ns);
                if scope == Scope::Namespaced {
                    object.metadata.namespace = Some(ns.clone());
                }
                let params = PostParams {
                    dry_run: true,
                    ..Default::default()
                };
                match api.create(&params, &object).await {
                    Ok(_) => {}
                    // The demo may have created its namespace already.
                    Err(kube::Error::Api(s)) if s.code == 409 && gvk.kind == "Namespace" => {}
                    Err(e) => panic!("{file}: {gvk:?} refused: {e}"),
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn the_api_server_lists_the_kind_under_the_operators_category() {
    let client = kube::Client::try_default().await.expect("kubeconfig");
    ensure_crd(&client).await;
    // What `kubectl get oauth-token-operator` expands: the discovery
    // document's categories.
    let categories = eventually(
        "discovery to list the category",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move {
                let list = client
                    .list_api_group_resources("oauth.tokenoperator.io/v1alpha1")
                    .await
                    .ok()?;
                let resource = list
                    .resources
                    .into_iter()
                    .find(|r| r.name == "oauthcredentials")?;
                resource.categories
            }
        },
    )
    .await;
    assert_eq!(categories, vec!["oauth-token-operator".to_string()]);
}
