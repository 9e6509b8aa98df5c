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
