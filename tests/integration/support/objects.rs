//! Arbitrary Kubernetes objects from YAML (examples, rendered Helm charts):
//! rendering the chart with the helm the control-plane script built, and
//! finding the API for an object by its kind.

use std::process::{Command, Output};

use kube::api::DynamicObject;
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Api, Client, Discovery};
use serde_json::Value;

pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/oauth-token-operator");

/// Runs the helm named by `HELM` (set by `scripts/test`).
pub fn helm(args: &[&str]) -> Output {
    let helm = std::env::var("HELM").unwrap_or_else(|_| {
        panic!("HELM is not set: run `scripts/test`, or `export HELM=\"$(scripts/control-plane bin)/helm\"`")
    });
    Command::new(helm).args(args).output().expect("run helm")
}

/// The chart rendered as release `release` in `namespace`, one value a document.
pub fn helm_template(release: &str, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", release, CHART, "--namespace", namespace];
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8(out.stdout).unwrap())
}

/// Every non-empty document of a multi-document YAML text.
pub fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

pub fn gvk_of(object: &DynamicObject) -> GroupVersionKind {
    GroupVersionKind::try_from(object.types.as_ref().expect("apiVersion and kind")).unwrap()
}

/// The API serving `gvk`, in `namespace` when the kind is namespaced, and
/// that scope. Panics, naming the kind, when the server does not serve it.
pub fn api_for(
    client: &Client,
    discovery: &Discovery,
    gvk: &GroupVersionKind,
    namespace: &str,
) -> (Api<DynamicObject>, Scope) {
    let (resource, capabilities) = discovery
        .resolve_gvk(gvk)
        .unwrap_or_else(|| panic!("the API server does not serve {gvk:?}"));
    let api = match capabilities.scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    (api, capabilities.scope)
}

/// The path of a pinned tool (`scripts/tools path NAME`): built on first use
/// into the cache outside the repository.
pub fn tool(name: &str) -> std::path::PathBuf {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tools"))
        .args(["path", name])
        .output()
        .expect("run scripts/tools");
    assert!(
        out.status.success(),
        "scripts/tools path {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Applies the CRDs in `dir` (every `*.yaml`) and waits until each is
/// established.
pub async fn apply_crds(client: &Client, dir: &std::path::Path) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    use kube::runtime::wait::{await_condition, conditions};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for entry in std::fs::read_dir(dir).expect("CRD directory") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let crd: CustomResourceDefinition =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("oauth-token-operator-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {}: {e}", path.display()));
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD established within 30 s")
        .expect("watch CRD");
    }
}
