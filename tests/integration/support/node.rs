//! The real node of the node tier (`scripts/node up`), the images
//! `scripts/image` imported into it, and Helm releases of the chart installed
//! there. Tests that need the node fail, saying how to start it, when it or
//! the images are missing; they never skip.

use std::net::IpAddr;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client};

use super::objects::{CHART, helm};

const HOW_TO_START_NODE: &str = "the node tier needs a node joined to the control plane and \
     the images imported into it: as root, `scripts/node up`, then \
     `scripts/image operator --import` and `scripts/image busybox --import`, and export \
     OTO_TEST_OPERATOR_IMAGE and OTO_TEST_BUSYBOX_IMAGE to the references they print \
     (second line); or run everything with `scripts/test`";

/// The node pods run on.
pub struct TestNode {
    /// Its InternalIP: the bridge address on this machine, which pods reach
    /// and test servers can listen on.
    pub address: IpAddr,
    /// kubelet's syncFrequency, as the kubelet itself reports it.
    pub sync_frequency: Duration,
}

/// The one Ready node, or a panic saying how to start it.
pub async fn ready_node(client: &Client) -> TestNode {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .expect("list nodes");
    let node = list
        .items
        .into_iter()
        .find(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .unwrap_or_else(|| panic!("no Ready node: {HOW_TO_START_NODE}"));
    let name = node.metadata.name.clone().expect("node name");
    let address = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.parse().expect("an IP address"))
        .unwrap_or_else(|| panic!("node {name} has no InternalIP"));
    let configz = client
        .request_text(
            http::Request::get(format!("/api/v1/nodes/{name}/proxy/configz"))
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("kubelet configuration of {name}: {e}"));
    let configz: serde_json::Value = serde_json::from_str(&configz).expect("configz JSON");
    let sync = configz["kubeletconfig"]["syncFrequency"]
        .as_str()
        .expect("syncFrequency in kubelet's configuration");
    let sync_frequency = oauth_token_operator::schedule::parse_duration(sync)
        .unwrap_or_else(|e| panic!("syncFrequency {sync}: {e}"));
    TestNode {
        address,
        sync_frequency,
    }
}

/// An image reference from the environment, split into repository and tag.
fn image(variable: &str) -> (String, String) {
    let reference = std::env::var(variable)
        .unwrap_or_else(|_| panic!("{variable} is not set: {HOW_TO_START_NODE}"));
    let (repository, tag) = reference
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{variable}={reference} has no tag"));
    (repository.to_string(), tag.to_string())
}

/// The operator image built from this tree and imported into the node.
pub fn operator_image() -> (String, String) {
    image("OTO_TEST_OPERATOR_IMAGE")
}

/// The busybox image for workloads and the chart's test pod.
pub fn busybox_image() -> (String, String) {
    image("OTO_TEST_BUSYBOX_IMAGE")
}

/// A Helm release of the chart; uninstalled when dropped, unless the test
/// did it.
pub struct Release {
    pub name: String,
    pub namespace: String,
    installed: bool,
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

impl Release {
    /// `helm install --wait` with these `--set` values; returns the release
    /// and helm's output (the NOTES among it). On failure the panic shows
    /// why the pods are not ready.
    pub async fn install(
        client: &Client,
        name: &str,
        namespace: &str,
        sets: &[String],
    ) -> (Self, String) {
        let mut args = vec!["install", name, CHART, "--namespace", namespace];
        args.extend(["--wait", "--timeout", "180s"]);
        for set in sets {
            args.extend(["--set", set]);
        }
        let output = helm(&args);
        let release = Release {
            name: name.to_string(),
            namespace: namespace.to_string(),
            installed: true,
        };
        if !output.status.success() {
            panic!(
                "helm install {name}: {}\npods: {}",
                text(&output),
                release.pod_states(client).await
            );
        }
        (release, text(&output))
    }

    /// `helm upgrade --reuse-values --wait` with more `--set` values.
    pub async fn upgrade(&self, client: &Client, sets: &[&str]) -> String {
        let mut args = vec!["upgrade", &self.name, CHART, "--namespace", &self.namespace];
        args.extend(["--reuse-values", "--wait", "--timeout", "180s"]);
        for set in sets {
            args.extend(["--set", set]);
        }
        let output = helm(&args);
        assert!(
            output.status.success(),
            "helm upgrade {}: {}\npods: {}",
            self.name,
            text(&output),
            self.pod_states(client).await
        );
        text(&output)
    }

    /// `helm test`: runs the chart's test hooks.
    pub fn test(&self) -> Output {
        helm(&["test", &self.name, "--namespace", &self.namespace, "--logs"])
    }

    pub fn uninstall(&mut self) -> Output {
        self.installed = false;
        helm(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--wait",
            "--timeout",
            "120s",
        ])
    }

    /// The operator's pods, by the chart's selector labels.
    pub async fn pods(&self, client: &Client) -> Vec<Pod> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let selector = format!(
            "app.kubernetes.io/name=oauth-token-operator,app.kubernetes.io/instance={},!app.kubernetes.io/component",
            self.name
        );
        pods.list(&ListParams::default().labels(&selector))
            .await
            .expect("list the operator's pods")
            .items
    }

    /// One line per pod: name, phase, and why a container waits, if it does.
    async fn pod_states(&self, client: &Client) -> String {
        let mut lines = Vec::new();
        for pod in self.pods(client).await {
            let status = pod.status.unwrap_or_default();
            let waiting: Vec<String> = status
                .container_statuses
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.state?.waiting)
                .map(|w| {
                    format!(
                        "{} {}",
                        w.reason.unwrap_or_default(),
                        w.message.unwrap_or_default()
                    )
                })
                .collect();
            lines.push(format!(
                "{} {} {}",
                pod.metadata.name.unwrap_or_default(),
                status.phase.unwrap_or_default(),
                waiting.join("; ")
            ));
        }
        lines.join("\n")
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.installed {
            // Its cluster-wide objects (RBAC, admission policy) outlive the
            // namespace otherwise.
            let _ = self.uninstall();
        }
    }
}

/// Whether a pod is Running with every container ready.
pub fn is_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && pod.metadata.deletion_timestamp.is_none()
}
