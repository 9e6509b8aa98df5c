//! The Helm chart: lints, renders with default and non-default values into
//! objects the real API server accepts (server-side dry run), refuses invalid
//! values through its schema, and ships the generated CRD.

use std::path::PathBuf;
use std::time::Duration;

use kube::Discovery;
use kube::api::{DynamicObject, Patch, PatchParams};
use serde_json::Value;

use crate::support::fixtures::ensure_crd;
use crate::support::objects::{CHART, api_for, gvk_of, helm, helm_template};
use crate::support::{eventually, operator_namespace, with_namespace};

fn chart() -> PathBuf {
    PathBuf::from(CHART)
}

fn render(namespace: &str, sets: &[&str]) -> Vec<Value> {
    helm_template("oto", namespace, sets)
}

#[test]
fn the_chart_lints() {
    let out = helm(&["lint", "--strict", chart().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_chart_ships_the_generated_crd() {
    let shipped = std::fs::read_to_string(chart().join("crds/oauthcredentials.yaml")).unwrap();
    assert!(
        shipped == oauth_token_operator::cli::crd_yaml(),
        "charts/oauth-token-operator/crds/oauthcredentials.yaml is stale: copy crds/oauthcredentials.yaml"
    );
}

#[test]
fn invalid_values_are_refused() {
    for (set, says) in [
        ("replicaCount=two", "replicaCount"),
        ("logFormat=xml", "logFormat"),
        ("tokenRequestTimeout=ten", "tokenRequestTimeout"),
        ("noSuchValue=1", "noSuchValue"),
        (
            "leaderElection.enabled=false",
            "leaderElection.enabled must be true when replicaCount > 1",
        ),
        ("extraCaCertificates.key=", "extraCaCertificates"),
        ("extraEnv[0].value=no-name", "extraEnv"),
        ("tests.image.pullPolicy=Sometimes", "pullPolicy"),
        ("leaderElection.shards=0", "shards"),
    ] {
        let out = helm(&["template", "oto", chart().to_str().unwrap(), "--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(stderr.contains(says), "{set}: {stderr}");
    }
}

#[test]
fn the_defaults_run_two_restricted_replicas_with_leader_election() {
    let objects = render("oto-system", &[]);
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["limits"]["memory"].is_string());
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--leader-election"), "{args:?}");
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert!(
        !kinds.contains(&"ServiceMonitor") && !kinds.contains(&"NetworkPolicy"),
        "optional objects are off by default"
    );
}

#[tokio::test]
async fn rendered_objects_pass_a_server_side_dry_run_with_default_and_other_values() {
    with_namespace("chart", |client, ns| async move {
        ensure_crd(&client).await;
        let discovery = eventually("discovery", Duration::from_secs(20), || async {
            Some(
                Discovery::new(client.clone())
                    .run()
                    .await
                    .expect("discovery"),
            )
        })
        .await;
        // Credentials in another namespace than the release.
        let watch = format!("watchNamespace={}", operator_namespace(&ns));
        let variants: [&[&str]; 3] = [
            &[],
            &["replicaCount=3", "leaderElection.shards=12"],
            &[
                "replicaCount=1",
                "leaderElection.enabled=false",
                "networkPolicy.enabled=true",
                "networkPolicy.apiServerCIDRs={10.0.0.1/32}",
                "serviceMonitor.enabled=true",
                "sealKeys.existingSecret=oto-seal-keys",
                &watch,
                "logFormat=plain",
                "serviceAccount.name=custom-sa",
                "grafanaDashboard.enabled=true",
                "extraCaCertificates.secretName=provider-ca",
                "extraEnv[0].name=HTTPS_PROXY",
                "extraEnv[0].value=http://proxy.example:3128",
                "extraVolumes[0].name=scratch",
                "extraVolumes[0].emptyDir.medium=Memory",
                "extraVolumeMounts[0].name=scratch",
                "extraVolumeMounts[0].mountPath=/scratch",
                "tests.enabled=false",
            ],
        ];
        for sets in variants {
            let objects = render(&ns, sets);
            for object in objects {
                let object: DynamicObject = serde_json::from_value(object).unwrap();
                let gvk = gvk_of(&object);
                if gvk.group == "monitoring.coreos.com" {
                    // Its CRD is the Prometheus Operator's, not installed here.
                    assert_eq!(gvk.kind, "ServiceMonitor");
                    continue;
                }
                let namespace = object.metadata.namespace.clone().unwrap_or(ns.clone());
                let (api, _) = api_for(&client, &discovery, &gvk, &namespace);
                let name = object.metadata.name.clone().unwrap();
                let params = PatchParams::apply("chart-test").dry_run();
                if let Err(e) = api.patch(&name, &params, &Patch::Apply(&object)).await {
                    panic!("{sets:?}: {gvk:?} {name} refused: {e}");
                }
            }
        }
    })
    .await;
}

#[test]
fn the_dashboard_queries_only_metrics_the_operator_exports() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("dashboards/oauth-token-operator.json")).unwrap(),
    )
    .expect("valid JSON");
    let metrics = oauth_token_operator::metrics::Metrics::new();
    metrics.refresh("success", Duration::from_millis(1));
    metrics.rate_limit_wait();
    metrics.reconcile_error("kubernetes-api");
    metrics.observe([]);
    let exported = metrics.encode();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                if word.starts_with("oauth_token_operator_") {
                    queried += 1;
                    assert!(
                        exported.contains(word),
                        "the dashboard queries {word}, which is not exported"
                    );
                }
            }
        }
    }
    assert!(queried >= 9, "only {queried} metric references");
}

#[test]
fn an_extra_ca_from_a_config_map_or_a_secret_is_mounted_and_passed_as_the_flag() {
    for (source, volume_key, name_key) in [
        ("configMapName", "configMap", "name"),
        ("secretName", "secret", "secretName"),
    ] {
        let objects = render(
            "oto-system",
            &[
                &format!("extraCaCertificates.{source}=provider-ca"),
                "extraCaCertificates.key=bundle.pem",
            ],
        );
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.contains(&"--extra-ca-file=/etc/oauth-token-operator/extra-ca/ca.crt"),
            "{args:?}"
        );
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "extra-ca")
            .expect("the extra-ca volume");
        assert_eq!(volume[volume_key][name_key], "provider-ca", "{source}");
        assert_eq!(volume[volume_key]["items"][0]["key"], "bundle.pem");
        assert_eq!(volume[volume_key]["items"][0]["path"], "ca.crt");
        let mounted = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| {
                m["name"] == "extra-ca" && m["mountPath"] == "/etc/oauth-token-operator/extra-ca"
            });
        assert!(mounted, "{source}: mounted where the flag points");
    }
    let both = helm(&[
        "template",
        "oto",
        chart().to_str().unwrap(),
        "--set",
        "extraCaCertificates.configMapName=a",
        "--set",
        "extraCaCertificates.secretName=b",
    ]);
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("not both"));
}

#[test]
fn the_test_hook_asks_readyz_through_the_metrics_service_without_dns() {
    let objects = render("oto-system", &[]);
    let pod = objects
        .iter()
        .find(|o| o["kind"] == "Pod")
        .expect("the test pod");
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    let script = pod["spec"]["containers"][0]["command"][2].as_str().unwrap();
    assert!(
        script.contains("$OTO_OAUTH_TOKEN_OPERATOR_METRICS_SERVICE_HOST"),
        "{script}"
    );
    assert!(script.contains("GET /readyz"), "{script}");
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let without_service = render("oto-system", &["service.enabled=false"]);
    assert!(
        !without_service.iter().any(|o| o["kind"] == "Pod"),
        "no Service, no test"
    );
}
