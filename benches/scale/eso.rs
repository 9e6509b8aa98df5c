//! The peer: External Secrets Operator doing the same job the way its docs
//! tell a user to, one `Webhook` generator and one `ExternalSecret` per
//! credential. The generator POSTs the refresh-token grant to the same token
//! endpoint, with the client and refresh token read from Secrets labelled
//! `external-secrets.io/type: webhook` (the label its docs require), and the
//! `ExternalSecret` writes the JSON answer's keys into its target Secret every
//! `refreshInterval`. ESO runs as a host process against the same control
//! plane (built by scripts/peer-eso), with its Helm chart's default flags and
//! the chart's controller ClusterRole, impersonated so that the audit log
//! tells its writes apart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;

use crate::cluster::{self, FIELD_MANAGER, Group, LABEL, LABEL_VALUE, name};
use crate::operator::Process;
use crate::provider::{Provider, refresh_token};
use crate::sampler::Sampler;

/// The user ESO acts as (impersonated).
pub const ESO_USER: &str = "external-secrets-bench";
const CLUSTER_ROLE: &str = "external-secrets-bench-controller";
/// The label ESO puts on the Secrets it manages.
const MANAGED: &str = "reconcile.external-secrets.io/managed";

/// Server-side-applies every CRD in `dir` (ESO's `config/crds/bases`).
pub async fn install_crds(client: &Client, dir: &Path) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let Ok(value) = serde_json::Value::deserialize(document) else {
                continue;
            };
            if value.get("kind").and_then(|k| k.as_str()) != Some("CustomResourceDefinition") {
                continue;
            }
            let crd: CustomResourceDefinition =
                serde_json::from_value(value).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            cluster::apply_crd(client, &crd).await;
        }
    }
}

/// The controller ClusterRole of ESO's Helm chart at its default values
/// (every reconciler on, no OpenShift finalizers), bound to `ESO_USER`;
/// returns a kubeconfig that impersonates it.
pub async fn kubeconfig(client: &Client, out: &Path) -> PathBuf {
    let es = "external-secrets.io";
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": CLUSTER_ROLE},
        "rules": [
            {"apiGroups": [es], "resources": ["secretstores", "clustersecretstores", "externalsecrets",
                "clusterexternalsecrets", "pushsecrets", "clusterpushsecrets"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": [es], "resources": ["externalsecrets", "externalsecrets/status",
                "secretstores", "secretstores/status", "clustersecretstores", "clustersecretstores/status",
                "clusterexternalsecrets", "clusterexternalsecrets/status", "pushsecrets", "pushsecrets/status",
                "clusterpushsecrets", "clusterpushsecrets/status"],
             "verbs": ["get", "update", "patch"]},
            {"apiGroups": ["generators.external-secrets.io"], "resources": ["generatorstates"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]},
            {"apiGroups": ["generators.external-secrets.io"], "resources": ["acraccesstokens",
                "clustergenerators", "ecrauthorizationtokens", "fakes", "gcraccesstokens",
                "githubaccesstokens", "quayaccesstokens", "passwords", "sshkeys", "stssessiontokens",
                "uuids", "vaultdynamicsecrets", "webhooks", "grafanas", "mfas"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["serviceaccounts", "namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"],
             "verbs": ["get", "list", "watch", "create", "update", "delete", "patch"]},
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
            {"apiGroups": [es], "resources": ["externalsecrets"], "verbs": ["create", "update", "delete"]},
            {"apiGroups": [es], "resources": ["pushsecrets"], "verbs": ["create", "update", "delete"]},
        ],
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .patch(
            CLUSTER_ROLE,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&role),
        )
        .await
        .expect("apply ESO's ClusterRole");
    cluster::impersonating_kubeconfig(client, ESO_USER, CLUSTER_ROLE, out).await
}

fn resource(group: &str, version: &str, kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// Creates `group`'s credentials the ESO way: per namespace the client
/// Secret, per credential its refresh-token Secret, a `Webhook` generator
/// that sends the refresh-token grant, and an `ExternalSecret` that runs it
/// every `refresh_interval` seconds into `<name>-token`.
pub async fn create(client: &Client, endpoint: &str, group: &Group, refresh_interval: u64) {
    let webhook = resource("generators.external-secrets.io", "v1alpha1", "Webhook");
    let external_secret = resource("external-secrets.io", "v1", "ExternalSecret");
    for ns in group.namespaces() {
        cluster::create_namespace(client, &ns).await;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "oauth-client", "labels": {"external-secrets.io/type": "webhook"}},
            "stringData": {"client_id": "bench-client", "client_secret": "bench-secret"},
        }))
        .unwrap();
        cluster::create_tolerating_conflict(&Api::namespaced(client.clone(), &ns), &secret).await;
    }
    stream::iter(group.range().map(|i| {
        let (client, webhook, external_secret) =
            (client.clone(), webhook.clone(), external_secret.clone());
        async move {
            let ns = group.namespace(i);
            let name = name(i);
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-refresh"), "labels": {"external-secrets.io/type": "webhook"}},
                "stringData": {"refresh_token": refresh_token(i)},
            }))
            .unwrap();
            cluster::create_tolerating_conflict(&Api::namespaced(client.clone(), &ns), &secret)
                .await;
            let generator: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "generators.external-secrets.io/v1alpha1",
                "kind": "Webhook",
                "metadata": {"name": name, "labels": {LABEL: LABEL_VALUE}},
                "spec": {
                    "url": endpoint,
                    "method": "POST",
                    "headers": {"Content-Type": "application/x-www-form-urlencoded"},
                    "body": "grant_type=refresh_token&refresh_token={{ .refresh.refresh_token | urlquery }}&client_id={{ .client.client_id | urlquery }}&client_secret={{ .client.client_secret | urlquery }}",
                    "result": {"jsonPath": "$"},
                    "secrets": [
                        {"name": "client", "secretRef": {"name": "oauth-client"}},
                        {"name": "refresh", "secretRef": {"name": format!("{name}-refresh")}},
                    ],
                },
            }))
            .unwrap();
            cluster::create_tolerating_conflict(
                &Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &webhook),
                &generator,
            )
            .await;
            let es: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "external-secrets.io/v1",
                "kind": "ExternalSecret",
                "metadata": {"name": name, "labels": {LABEL: LABEL_VALUE}},
                "spec": {
                    "refreshInterval": format!("{refresh_interval}s"),
                    "target": {"name": format!("{name}-token")},
                    "dataFrom": [{"sourceRef": {"generatorRef": {
                        "apiVersion": "generators.external-secrets.io/v1alpha1",
                        "kind": "Webhook",
                        "name": name,
                    }}}],
                },
            }))
            .unwrap();
            cluster::create_tolerating_conflict(
                &Api::<DynamicObject>::namespaced_with(client, &ns, &external_secret),
                &es,
            )
            .await;
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<()>>()
    .await;
}

/// ESO's controller, with the flags its Helm chart passes at default values
/// (`--concurrent=1`, `--loglevel=info`, `--zap-time-encoding=epoch`, leader
/// election off for one replica); only the metrics address differs, so that
/// it binds to loopback on a free port.
pub fn start(
    binary: &Path,
    kubeconfig: &Path,
    metrics: u16,
    log: &Path,
    sampler: &Sampler,
) -> Process {
    let mut command = Command::new(binary);
    command
        .args([
            "--concurrent=1",
            "--loglevel=info",
            "--zap-time-encoding=epoch",
        ])
        .arg(format!("--metrics-addr=127.0.0.1:{metrics}"))
        .env("KUBECONFIG", kubeconfig);
    Process::spawn(command, log, "eso", sampler)
}

/// Marks a credential ready once ESO's target Secret for it exists.
pub async fn watch_outputs(client: Client, provider: Arc<Provider>) {
    let api: Api<PartialObjectMeta<Secret>> = Api::all(client);
    let config = watcher::Config::default().labels(&format!("{MANAGED}=true"));
    let stream = watcher(api, config).default_backoff().applied_objects();
    futures::pin_mut!(stream);
    while let Ok(Some(secret)) = stream.try_next().await {
        if let Some(i) = cluster::index_of(&secret.name_any())
            && i < provider.ready.len()
        {
            provider.ready[i].store(true, Ordering::Relaxed);
        }
    }
}

/// ExternalSecret reconciles ESO has finished since it started, from its
/// controller-runtime metrics.
pub async fn reconciles(metrics: u16) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{metrics}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let total: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("controller_runtime_reconcile_total{")
                && l.contains("controller=\"externalsecret\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum();
    Some(total)
}

/// Seconds from `started` until ESO has reconciled `count` ExternalSecrets.
pub async fn wait_reconciled(metrics: u16, count: usize, started: Instant, limit: Duration) -> f64 {
    while started.elapsed() < limit {
        if reconciles(metrics).await.unwrap_or(0.0) >= count as f64 {
            return started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    f64::NAN
}
