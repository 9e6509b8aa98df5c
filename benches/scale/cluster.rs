//! What the benchmark does to the control plane itself: namespaces, the CRD,
//! the write ceiling, creating and deleting credentials with their Secrets,
//! the watch that tells the provider each credential's schedule, and the
//! impersonating kubeconfigs that let the audit log tell whose writes are
//! whose.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use oauth_token_operator::input_secrets::{CLIENT_SECRET_TYPE, REFRESH_TOKEN_SECRET_TYPE};
use oauth_token_operator::resource::{OAuthCredential, READY};
use serde_json::json;

use crate::provider::{Provider, refresh_token};

pub const LABEL: &str = "app.kubernetes.io/part-of";
pub const LABEL_VALUE: &str = "oauth-token-operator-bench";
pub const FIELD_MANAGER: &str = "oauth-token-operator-bench";
pub const PER_NAMESPACE: usize = 1000;

/// A block of credentials with consecutive indices, in namespaces of their
/// own (`<prefix>-0`, `<prefix>-1`, ... of `PER_NAMESPACE` each). Objects are
/// named after the index (`c00042`, `c00042-refresh`, `c00042-token`), so
/// the audit log and the provider both map them back to it.
#[derive(Clone, Debug)]
pub struct Group {
    pub prefix: &'static str,
    pub start: usize,
    pub count: usize,
}

impl Group {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.count
    }
    pub fn namespace(&self, i: usize) -> String {
        format!("{}-{}", self.prefix, (i - self.start) / PER_NAMESPACE)
    }
    pub fn namespaces(&self) -> Vec<String> {
        (0..self.count.div_ceil(PER_NAMESPACE))
            .map(|k| format!("{}-{k}", self.prefix))
            .collect()
    }
}

pub fn name(i: usize) -> String {
    format!("c{i:05}")
}

pub async fn create_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {LABEL: LABEL_VALUE}}
    }))
    .unwrap();
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

pub async fn ensure_crd(client: &Client) {
    apply_crd(client, &OAuthCredential::crd()).await;
}

/// Server-side-applies a CRD and waits until it is established.
pub async fn apply_crd(client: &Client, crd: &CustomResourceDefinition) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(crd),
    )
    .await
    .unwrap_or_else(|e| panic!("apply the CRD {}: {e}", crd.name_any()));
    tokio::time::timeout(
        Duration::from_secs(60),
        kube::runtime::wait::await_condition(
            crds,
            &crd.name_any(),
            kube::runtime::wait::conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD established")
    .expect("watch CRD");
}

/// Applies Secrets in a scratch namespace with `in_flight` requests at once
/// and returns the writes per second the API server sustained.
pub async fn write_ceiling(client: &Client, in_flight: usize) -> f64 {
    const OBJECTS: usize = 500;
    const ROUNDS: usize = 4;
    let ns = format!("oto-bench-ceiling-{in_flight}");
    create_namespace(client, &ns).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    stream::iter((0..OBJECTS * ROUNDS).map(|n| {
        let secrets = secrets.clone();
        async move {
            let name = format!("s{:04}", n % OBJECTS);
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "labels": {LABEL: LABEL_VALUE}},
                "type": "Opaque",
                "stringData": {"access_token": format!("value-{n}"), "expiry": "2026-01-01T00:00:00Z"},
            });
            secrets
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await
                .expect("apply a Secret");
        }
    }))
    .buffer_unordered(in_flight)
    .collect::<Vec<()>>()
    .await;
    let rate = (OBJECTS * ROUNDS) as f64 / started.elapsed().as_secs_f64();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    rate
}

/// Creates `group`'s credentials for the operator: per namespace one client
/// Secret, per credential a refresh-token Secret and the credential; the
/// Secrets carry the input types the operator requires.
pub async fn create_credentials(client: &Client, endpoint: &str, group: &Group) {
    for ns in group.namespaces() {
        create_namespace(client, &ns).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let client_secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "oauth-client"},
            "type": CLIENT_SECRET_TYPE,
            "stringData": {"client_id": "bench-client", "client_secret": "bench-secret"},
        }))
        .unwrap();
        create_tolerating_conflict(&secrets, &client_secret).await;
    }
    stream::iter(group.range().map(|i| {
        let client = client.clone();
        async move {
            let ns = group.namespace(i);
            let name = name(i);
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-refresh")},
                "type": REFRESH_TOKEN_SECRET_TYPE,
                "stringData": {"refresh_token": refresh_token(i)},
            }))
            .unwrap();
            create_tolerating_conflict(&secrets, &secret).await;
            let credential: OAuthCredential = serde_json::from_value(json!({
                "apiVersion": "oauth.tokenoperator.io/v1alpha1",
                "kind": "OAuthCredential",
                "metadata": {"name": name, "labels": {LABEL: LABEL_VALUE}},
                "spec": {
                    "provider": {"tokenEndpoint": endpoint, "clientAuthentication": "client_secret_post"},
                    "clientSecretRef": {"name": "oauth-client"},
                    "refreshTokenSecretRef": {"name": format!("{name}-refresh")},
                    "scopes": ["https://www.googleapis.com/auth/gmail.send"],
                    "output": {"secretName": format!("{name}-token")},
                },
            }))
            .unwrap();
            create_tolerating_conflict(
                &Api::<OAuthCredential>::namespaced(client, &ns),
                &credential,
            )
            .await;
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<()>>()
    .await;
}

pub async fn create_tolerating_conflict<K>(api: &Api<K>, object: &K)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create {}: {e}", object.name_any()),
    }
}

/// Deletes `group`'s credentials, then (once no credential is left to write
/// an output Secret again) every Secret in its namespaces. The namespaces
/// stay, so that a later round can use them again at once.
pub async fn delete_credentials(client: &Client, group: &Group) {
    let everything = ListParams::default();
    for ns in group.namespaces() {
        let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &ns);
        credentials
            .delete_collection(&DeleteParams::default(), &everything)
            .await
            .expect("delete credentials");
    }
    for ns in group.namespaces() {
        let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &ns);
        wait_empty(&credentials).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        secrets
            .delete_collection(&DeleteParams::default(), &everything)
            .await
            .expect("delete Secrets");
        wait_empty(&secrets).await;
    }
}

async fn wait_empty<K>(api: &Api<K>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(600) {
        let left = api
            .list_metadata(&ListParams::default().limit(1))
            .await
            .map(|l| l.items.len())
            .unwrap_or(1);
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("objects were not deleted within 10 minutes");
}

/// Keeps the provider's view of each credential's `status.refreshAt` and
/// Ready condition current.
pub async fn watch_credentials(client: Client, provider: Arc<Provider>) {
    let api: Api<OAuthCredential> = Api::all(client);
    let config = watcher::Config::default().labels(&format!("{LABEL}={LABEL_VALUE}"));
    let stream = watcher(api, config).default_backoff().applied_objects();
    futures::pin_mut!(stream);
    while let Ok(Some(credential)) = stream.try_next().await {
        let Some(i) = index_of(&credential.name_any()) else {
            continue;
        };
        if i >= provider.ready.len() {
            continue;
        }
        let status = credential.status.unwrap_or_default();
        let at = status
            .refresh_at
            .as_ref()
            .map(|t| t.0.as_millisecond())
            .unwrap_or(0);
        provider.refresh_at[i].store(at, Ordering::Relaxed);
        provider.ready[i].store(status.is_true(READY), Ordering::Relaxed);
    }
}

/// The index in a name made by `name` (with or without a suffix).
pub fn index_of(name: &str) -> Option<usize> {
    let digits: String = name
        .strip_prefix('c')?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A kubeconfig (written to `out/<user>.kubeconfig`) that impersonates
/// `user`, bound cluster-wide to `cluster_role`.
pub async fn impersonating_kubeconfig(
    client: &Client,
    user: &str,
    cluster_role: &str,
    out: &Path,
) -> PathBuf {
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    bindings
        .patch(
            user,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&binding),
        )
        .await
        .expect("bind the user");
    let path = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let mut config: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for entry in config["users"].as_array_mut().unwrap() {
        entry["user"]["as"] = json!(user);
    }
    let file = out.join(format!("{user}.kubeconfig"));
    std::fs::write(&file, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    file
}

/// Reads (GET and LIST, not WATCH) the API server has served so far, from its
/// own metrics: the audit log records writes only.
pub async fn api_reads(client: &Client) -> f64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let Ok(text) = client.request_text(request).await else {
        return f64::NAN;
    };
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && (l.contains("verb=\"GET\"") || l.contains("verb=\"LIST\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}
