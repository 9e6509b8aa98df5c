//! The chart's RBAC is sufficient and minimal, and it and the admission
//! policy hold: the operator runs with exactly the chart's ServiceAccount
//! permissions (impersonated, the admission policy applied) through a
//! scenario that uses every permission; for each rule, the same scenario
//! with that rule removed fails with a Forbidden answer. As that
//! ServiceAccount, writes the operator never needs are denied: a
//! service-account-token Secret in kube-system, an unrelated Secret in
//! another namespace, and, with `watchNamespace`, any Secret outside it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, Discovery};
use oauth_token_operator::resource::{
    ClientAuthentication, DeletionPolicy, OAuthCredential, READY, REAUTH_REQUIRED,
};
use serde_json::{Value, json};

use crate::support::fixtures::*;
use crate::support::objects::{api_for, gvk_of, helm_template};
use crate::support::operator::Operator;
use crate::support::token_server::TokenServer;
use crate::support::{eventually, kubeconfig_as, operator_namespace, with_namespace};

/// The chart's ServiceAccount, RBAC and admission-policy objects for a
/// release named `ns` in the operator namespace of the test namespace `ns`.
fn rbac_objects(ns: &str, sets: &[&str]) -> Vec<Value> {
    helm_template(ns, &operator_namespace(ns), sets)
        .into_iter()
        .filter(|v| !is_aggregated(v))
        .filter(|v| {
            matches!(
                v["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                        | "ValidatingAdmissionPolicy"
                        | "ValidatingAdmissionPolicyBinding"
                )
            )
        })
        .collect()
}

/// Whether `object` is one of the roles the chart adds to the cluster's
/// `view` and `edit`: for people, not the operator.
fn is_aggregated(object: &Value) -> bool {
    object["metadata"]["labels"]
        .as_object()
        .is_some_and(|labels| {
            labels
                .keys()
                .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
        })
}

/// Every (kind, rule index) of the rendered roles.
fn rules(objects: &[Value]) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    for object in objects {
        let kind = object["kind"].as_str().unwrap();
        if let Some(rules) = object["rules"].as_array() {
            for (i, rule) in rules.iter().enumerate() {
                out.push((
                    kind.to_string(),
                    i,
                    format!("{} {} {}", kind, rule["resources"], rule["verbs"]),
                ));
            }
        }
    }
    out
}

async fn apply(client: &Client, objects: &[Value]) {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    for object in objects {
        let object: DynamicObject = serde_json::from_value(object.clone()).unwrap();
        let gvk = gvk_of(&object);
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let (api, _) = api_for(client, &discovery, &gvk, &namespace);
        api.patch(
            object.metadata.name.as_deref().unwrap(),
            &PatchParams::apply("rbac-test").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {gvk:?}: {e}"));
    }
}

async fn delete_cluster_scoped(client: &Client, objects: &[Value]) {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    for object in objects {
        let name = object["metadata"]["name"].as_str().unwrap();
        match object["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => drop(
                Api::<ValidatingAdmissionPolicy>::all(client.clone())
                    .delete(name, &DeleteParams::default())
                    .await,
            ),
            Some("ValidatingAdmissionPolicyBinding") => drop(
                Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
                    .delete(name, &DeleteParams::default())
                    .await,
            ),
            Some("ClusterRole") => drop(
                Api::<ClusterRole>::all(client.clone())
                    .delete(name, &DeleteParams::default())
                    .await,
            ),
            Some("ClusterRoleBinding") => drop(
                Api::<ClusterRoleBinding>::all(client.clone())
                    .delete(name, &DeleteParams::default())
                    .await,
            ),
            _ => {}
        }
    }
}

/// A kubeconfig that acts as the chart's ServiceAccount (in the operator
/// namespace of the test namespace `ns`).
fn impersonating_kubeconfig(ns: &str, service_account: &str) -> std::path::PathBuf {
    kubeconfig_as(
        &format!(
            "system:serviceaccount:{}:{service_account}",
            operator_namespace(ns)
        ),
        &format!("oto-{ns}.kubeconfig"),
    )
}

async fn until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("timed out waiting for {what}"))
}

/// Uses every permission: lease, credential watch and status, Secret
/// watch/read, output Secret create and patch, sealing (update), events and
/// their aggregation (a repeated event is patched); then the finalizer
/// (credential patch), orphaning and adopting the output Secret.
async fn scenario(client: &Client, ns: &str, server: &TokenServer) -> Result<(), String> {
    create_client_secret(client, ns).await;
    create_orphaning_credential(client, ns, server).await;
    let ready = || async { status_of(client, ns, "r").await.is_true(READY) };
    until(Duration::from_secs(25), "Ready", ready).await?;
    let sealed = || async {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let data = secrets
            .get("r-refresh")
            .await
            .unwrap()
            .data
            .unwrap_or_default();
        !data.contains_key("refresh_token") && data.contains_key("refresh_token.sealed")
    };
    until(Duration::from_secs(10), "the refresh token sealed", sealed).await?;
    until(Duration::from_secs(15), "a second refresh", || async {
        server.call_count() >= 2
    })
    .await?;
    until(
        Duration::from_secs(5),
        "Ready after the second refresh",
        ready,
    )
    .await?;
    for round in 1..=2u32 {
        server.revoke_all();
        force_refresh(client, ns, "r", &format!("revoke-{round}")).await;
        let reauth = || async { status_of(client, ns, "r").await.is_true(REAUTH_REQUIRED) };
        until(Duration::from_secs(15), "ReauthRequired", reauth).await?;
        let event = || async {
            events_with_reason(client, ns, "ReauthRequired")
                .await
                .iter()
                .any(|e| {
                    round == 1
                        || e.count.unwrap_or(1) >= 2
                        || e.series.as_ref().is_some_and(|s| s.count.unwrap_or(0) >= 2)
                })
        };
        let found = until(
            Duration::from_secs(10),
            "the ReauthRequired event (repeated: aggregated)",
            event,
        )
        .await;
        if let Err(why) = found {
            let seen: Vec<String> = events_with_reason(client, ns, "ReauthRequired")
                .await
                .iter()
                .map(|e| {
                    format!(
                        "{:?} count={:?} series={:?}",
                        e.metadata.name, e.count, e.series
                    )
                })
                .collect();
            return Err(format!("{why}; events: {seen:?}"));
        }
        if round == 1 {
            let grant = server.new_grant();
            put_refresh_token(client, ns, "r", &grant).await;
            let recovered = || async {
                status_of(client, ns, "r")
                    .await
                    .condition(REAUTH_REQUIRED)
                    .is_some_and(|c| c.status == "False")
            };
            if let Err(why) = until(Duration::from_secs(15), "recovery", recovered).await {
                let calls: Vec<String> = server
                    .calls()
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {}",
                            c.status,
                            if c.refresh_token == grant {
                                "new-grant"
                            } else {
                                "other"
                            }
                        )
                    })
                    .collect();
                return Err(format!("{why}; calls: {calls:?}"));
            }
        }
    }
    orphan_and_adopt(client, ns, server).await
}

/// The credential `r`, keeping its output when deleted (so it carries the
/// finalizer).
async fn create_orphaning_credential(client: &Client, ns: &str, server: &TokenServer) {
    let grant = server.new_grant();
    put_refresh_token(client, ns, "r", &grant).await;
    let mut spec = credential_spec(server, "r", ClientAuthentication::ClientSecretBasic);
    spec.output.deletion_policy = DeletionPolicy::Orphan;
    Api::<OAuthCredential>::namespaced(client.clone(), ns)
        .create(
            &Default::default(),
            &OAuthCredential::new("r", spec.clone()),
        )
        .await
        .expect("create credential");
}

/// Deletes `r` (the operator orphans its output and lifts its finalizer)
/// and creates it again (the operator adopts the output).
async fn orphan_and_adopt(client: &Client, ns: &str, server: &TokenServer) -> Result<(), String> {
    let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), ns);
    credentials
        .delete("r", &DeleteParams::default())
        .await
        .map_err(|e| e.to_string())?;
    until(Duration::from_secs(15), "r deleted", || async {
        credentials.get_opt("r").await.ok().flatten().is_none()
    })
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let orphaned = secrets.get("r-token").await.map_err(|e| e.to_string())?;
    if orphaned
        .metadata
        .owner_references
        .is_some_and(|r| !r.is_empty())
    {
        return Err("the output Secret was not orphaned".into());
    }
    create_orphaning_credential(client, ns, server).await;
    until(Duration::from_secs(15), "the output adopted", || async {
        secrets
            .get("r-token")
            .await
            .is_ok_and(|s| s.metadata.owner_references.is_some_and(|r| r.len() == 1))
    })
    .await?;
    credentials
        .delete("r", &DeleteParams::default())
        .await
        .map_err(|e| e.to_string())?;
    until(Duration::from_secs(15), "r deleted again", || async {
        credentials.get_opt("r").await.ok().flatten().is_none()
    })
    .await
}

const ARGS: &[&str] = &[
    "--leader-election",
    "--lease-duration",
    "8s",
    "--lease-renew-before",
    "5s",
];

async fn run_with(
    client: Client,
    ns: String,
    sets: &[&str],
    drop_rule: Option<(String, usize)>,
) -> (Result<(), String>, String) {
    ensure_crd(&client).await;
    let mut objects = rbac_objects(&ns, sets);
    if let Some((kind, index)) = &drop_rule {
        let role = objects
            .iter_mut()
            .find(|o| o["kind"] == kind.as_str())
            .unwrap();
        role["rules"].as_array_mut().unwrap().remove(*index);
    }
    apply(&client, &objects).await;
    let sa = objects
        .iter()
        .find(|o| o["kind"] == "ServiceAccount")
        .unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let kubeconfig = impersonating_kubeconfig(&ns, &sa);
    let lease = format!("{ns}-oauth-token-operator");
    let mut args = ARGS.to_vec();
    args.extend(["--lease-name", &lease]);
    let server = TokenServer::start(Duration::from_secs(6)).await;
    server.rotate(true);
    let operator = Operator::start_with_kubeconfig(&ns, &args, Some(&kubeconfig));
    let result = scenario(&client, &ns, &server).await;
    if result.is_ok() {
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    }
    let output = operator.output();
    drop(operator);
    delete_cluster_scoped(&client, &objects).await;
    let _ = std::fs::remove_file(kubeconfig);
    (result, output)
}

#[tokio::test]
async fn the_charts_rbac_is_sufficient_and_every_rule_is_needed() {
    with_namespace("rbac-full", |client, ns| async move {
        let (result, output) = run_with(client, ns, &[], None).await;
        if let Err(why) = result {
            panic!("with the chart's RBAC: {why}\n{output}");
        }
    })
    .await;
    let template: Vec<Value> = rbac_objects("rbac-x", &[])
        .into_iter()
        .filter(|o| o["kind"] != "ValidatingAdmissionPolicy")
        .collect();
    for (kind, index, description) in rules(&template) {
        with_namespace("rbac-less", |client, ns| {
            let (kind, description) = (kind.clone(), description.clone());
            async move {
                let (result, output) = run_with(client, ns, &[], Some((kind, index))).await;
                assert!(result.is_err(), "without [{description}] the scenario still passed: the rule is not needed");
                assert!(
                    output.contains("forbidden") || output.contains("Forbidden"),
                    "without [{description}] it failed ({:?}), but not for lack of permission:\n{output}",
                    result
                );
            }
        })
        .await;
    }
}

#[tokio::test]
async fn watching_one_namespace_the_chart_grants_secret_access_there_only_and_suffices() {
    with_namespace("rbac-ns", |client, ns| async move {
        let watch = format!("watchNamespace={ns}");
        let (result, output) = run_with(client, ns, &[&watch], None).await;
        if let Err(why) = result {
            panic!("with the chart's namespaced RBAC: {why}\n{output}");
        }
    })
    .await;
}

/// As the chart's ServiceAccount: a server-side dry run of `secret` in
/// `namespace` (created, or patched when `patch`); the error's text if
/// refused.
async fn try_write(client: &Client, namespace: &str, secret: Value, patch: bool) -> Option<String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = secret["metadata"]["name"].as_str().unwrap().to_string();
    let result = if patch {
        secrets
            .patch(
                &name,
                &PatchParams::default().dry_run(),
                &Patch::Merge(secret),
            )
            .await
            .map(drop)
    } else {
        let object: Secret = serde_json::from_value(secret).unwrap();
        secrets
            .create(
                &kube::api::PostParams {
                    dry_run: true,
                    field_manager: None,
                },
                &object,
            )
            .await
            .map(drop)
    };
    result.err().map(|e| e.to_string())
}

async fn as_service_account(client: &Client, ns: &str, sets: &[&str]) -> (Client, Vec<Value>) {
    let objects = rbac_objects(ns, sets);
    apply(client, &objects).await;
    let sa = objects
        .iter()
        .find(|o| o["kind"] == "ServiceAccount")
        .unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let path = impersonating_kubeconfig(ns, &sa);
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let _ = std::fs::remove_file(path);
    (Client::try_from(config).unwrap(), objects)
}

#[tokio::test]
async fn the_service_account_cannot_write_what_the_operator_never_writes() {
    with_namespace("rbac-deny", |client, ns| async move {
        // Some other namespace holds an unrelated Secret.
        let other = operator_namespace(&ns);
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&Default::default(), &secret("unrelated", &[("password", "x")]))
            .await
            .unwrap();
        let token_secret = json!({
            "metadata": {"name": "escalate", "annotations": {
                "kubernetes.io/service-account.name": "clusterrole-aggregation-controller"}},
            "type": "kubernetes.io/service-account-token",
        });
        let unrelated = json!({"metadata": {"name": "unrelated"}, "data": {"password": "eQ=="}});

        // Cluster-wide: RBAC allows Secret writes everywhere; the admission
        // policy does not.
        let (sa, objects) = as_service_account(&client, &ns, &[]).await;
        // The API server takes a moment to load a new policy.
        let denied = eventually("the admission policy in force", Duration::from_secs(20), || async {
            try_write(&sa, "kube-system", token_secret.clone(), false).await
        })
        .await;
        assert!(
            denied.contains("never writes a service-account-token"),
            "{denied}"
        );
        let denied = try_write(&sa, &ns, unrelated.clone(), true).await;
        assert!(
            denied.as_deref().is_some_and(|e| e.contains("may create and update only")),
            "{denied:?}"
        );
        // What it does write passes: an output Secret of a credential.
        let output = json!({
            "metadata": {"name": "out", "labels": {"app.kubernetes.io/managed-by": "oauth-token-operator"},
                "ownerReferences": [{"apiVersion": "oauth.tokenoperator.io/v1alpha1", "kind": "OAuthCredential",
                    "name": "c", "uid": "00000000-0000-0000-0000-000000000001", "controller": true}]},
            "data": {"access_token": "eQ=="},
        });
        assert_eq!(try_write(&sa, &ns, output, false).await, None);
        delete_cluster_scoped(&client, &objects).await;

        // Watching one namespace: no Secret write outside it at all.
        let watch = format!("watchNamespace={ns}");
        let (sa, objects) = as_service_account(&client, &ns, &[&watch]).await;
        for namespace in ["kube-system", "default"] {
            let denied = try_write(&sa, namespace, token_secret.clone(), false).await;
            assert!(denied.as_deref().is_some_and(|e| e.contains("forbidden")), "{denied:?}");
        }
        let mut elsewhere = unrelated.clone();
        elsewhere["metadata"]["name"] = json!("kubeconfig-like");
        let denied = try_write(&sa, "default", elsewhere, false).await;
        assert!(denied.as_deref().is_some_and(|e| e.contains("forbidden")), "{denied:?}");
        // Its own namespace: the seal-key Secret only.
        let denied = try_write(&sa, &other, unrelated.clone(), false).await;
        assert!(denied.is_some(), "an arbitrary Secret in the operator's namespace");
        delete_cluster_scoped(&client, &objects).await;
    })
    .await;
}

/// A client acting as the user `user` (impersonated by the admin).
async fn client_as(user: &str, file: &str) -> Client {
    let path = kubeconfig_as(user, file);
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let _ = std::fs::remove_file(path);
    Client::try_from(config).unwrap()
}

/// Whether the client's user may `verb` `resource` in `namespace` (all
/// namespaces when empty), as the API server answers a self-review.
async fn may(client: &Client, verb: &str, group: &str, resource: &str, namespace: &str) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: (!namespace.is_empty()).then(|| namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&Default::default(), &review)
        .await
        .expect("self review")
        .status
        .is_some_and(|s| s.allowed)
}

#[tokio::test]
async fn namespace_users_manage_credentials_through_the_standard_roles_and_gain_no_secret() {
    with_namespace("rbac-aggregate", |client, ns| async move {
        ensure_crd(&client).await;
        let roles: Vec<Value> = helm_template(&ns, &operator_namespace(&ns), &[])
            .into_iter()
            .filter(is_aggregated)
            .collect();
        assert_eq!(roles.len(), 2, "a view and an edit role");
        for role in &roles {
            let text = role["rules"].to_string();
            assert!(!text.contains("secrets"), "an aggregated role grants Secrets: {text}");
            for rule in role["rules"].as_array().unwrap() {
                assert_eq!(rule["apiGroups"], json!(["oauth.tokenoperator.io"]), "{rule}");
            }
        }
        apply(&client, &roles).await;
        let (editor, viewer) = (format!("editor-{ns}"), format!("viewer-{ns}"));
        for (user, role) in [(&editor, "edit"), (&viewer, "view")] {
            let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            }))
            .unwrap();
            Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &ns)
                .create(&Default::default(), &binding)
                .await
                .unwrap();
        }
        let as_editor = client_as(&editor, &format!("{ns}-editor.kubeconfig")).await;
        let as_viewer = client_as(&viewer, &format!("{ns}-viewer.kubeconfig")).await;
        let group = "oauth.tokenoperator.io";
        // The aggregation controller folds the roles in within moments.
        eventually("edit to include OAuthCredentials", Duration::from_secs(30), || async {
            may(&as_editor, "create", group, "oauthcredentials", &ns).await.then_some(())
        })
        .await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let spec = credential_spec(&server, "mine", ClientAuthentication::ClientSecretBasic);
        Api::<OAuthCredential>::namespaced(as_editor.clone(), &ns)
            .create(&Default::default(), &OAuthCredential::new("mine", spec))
            .await
            .expect("an editor creates a credential");
        for verb in ["patch", "delete"] {
            assert!(may(&as_editor, verb, group, "oauthcredentials", &ns).await, "edit: {verb}");
        }
        eventually("view to include OAuthCredentials", Duration::from_secs(30), || async {
            may(&as_viewer, "list", group, "oauthcredentials", &ns).await.then_some(())
        })
        .await;
        assert!(may(&as_viewer, "get", group, "oauthcredentials", &ns).await);
        assert!(!may(&as_viewer, "create", group, "oauthcredentials", &ns).await);
        assert!(!may(&as_viewer, "get", "", "secrets", &ns).await, "view reads no Secret");
        // No Secret beyond the namespace `edit` already covers.
        let elsewhere = operator_namespace(&ns);
        for verb in ["get", "list", "watch"] {
            assert!(!may(&as_editor, verb, "", "secrets", &elsewhere).await, "{verb} elsewhere");
            assert!(!may(&as_editor, verb, "", "secrets", "").await, "{verb} cluster-wide");
        }
        delete_cluster_scoped(&client, &roles).await;
    })
    .await;
}
