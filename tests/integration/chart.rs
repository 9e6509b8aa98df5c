//! The Helm chart: lints, renders with default and non-default values into
//! objects the real API server accepts (server-side dry run), refuses invalid
//! values through its schema, and ships the generated CRD.

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, Discovery};
use serde_json::Value;

use crate::support::fixtures::ensure_crd;
use crate::support::objects::{CHART, api_for, apply_crds, gvk_of, helm, helm_template, tool};
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
        ("image.digest=latest", "digest"),
        ("podDisruptionBudget.maxUnavailable=1", "maxUnavailable"),
        ("prometheusRule.severity=page", "severity"),
        ("podLabels.team=1", "podLabels"),
        (
            "topologySpreadConstraints[0].maxSkew=1",
            "topologySpreadConstraints",
        ),
        ("extraArgs[0]=", "extraArgs"),
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
        // The Prometheus Operator's own CRDs, from its release files: the
        // ServiceMonitor and PrometheusRule are checked against them.
        apply_crds(&client, &tool("prometheus-crds")).await;
        let discovery = eventually("discovery", Duration::from_secs(20), || async {
            let discovery = Discovery::new(client.clone())
                .run()
                .await
                .expect("discovery");
            discovery
                .has_group("monitoring.coreos.com")
                .then_some(discovery)
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
                "prometheusRule.enabled=true",
                "prometheusRule.alertLabels.team=platform",
                "nameOverride=tokens",
                "podLabels.team=platform",
                "priorityClassName=system-cluster-critical",
                "topologySpreadConstraints[0].maxSkew=1",
                "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
                "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
                "extraArgs={--token-type=bearer}",
                "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "podSecurityContext.runAsUser=null",
                "podSecurityContext.runAsGroup=null",
                "global.imageRegistry=registry.example",
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

#[test]
fn the_values_table_in_the_chart_readme_is_generated_from_values_yaml() {
    let out = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/chart-values-table"
    ))
    .arg("--check")
    .output()
    .expect("run scripts/chart-values-table");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_chart_versions_and_addresses_follow_the_crate() {
    let chart: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["home"], env!("CARGO_PKG_REPOSITORY"));
    assert_eq!(chart["sources"][0], env!("CARGO_PKG_REPOSITORY"));
    assert!(chart["maintainers"][0]["name"].is_string());
}

fn kind<'a>(objects: &'a [Value], kind: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind)
}

#[test]
fn the_chart_follows_the_conventions_of_cluster_charts() {
    let objects = render(
        "oto-system",
        &[
            "fullnameOverride=tokens",
            "podLabels.team=platform",
            "priorityClassName=high",
            "revisionHistoryLimit=3",
            "topologySpreadConstraints[0].maxSkew=1",
            "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
            "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
            "extraArgs={--token-type=bearer,--max-calls-per-namespace=4}",
            "image.repository=registry.example/oto",
            "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "podSecurityContext.runAsUser=null",
            "podSecurityContext.runAsGroup=null",
            "containerSecurityContext.readOnlyRootFilesystem=false",
        ],
    );
    for object in &objects {
        let labels = &object["metadata"]["labels"];
        if object["kind"] != "CustomResourceDefinition" {
            assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{object}");
        }
    }
    let deployment = kind(&objects, "Deployment").unwrap();
    assert_eq!(deployment["metadata"]["name"], "tokens");
    assert_eq!(deployment["spec"]["revisionHistoryLimit"], 3);
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    assert!(
        deployment["spec"]["selector"]["matchLabels"]
            .get("team")
            .is_none(),
        "podLabels stay out of the immutable selector"
    );
    assert_eq!(pod["spec"]["priorityClassName"], "high");
    let spread = &pod["spec"]["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "topology.kubernetes.io/zone");
    assert_eq!(
        spread["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "oto"
    );
    let security = &pod["spec"]["securityContext"];
    assert!(security.get("runAsUser").is_none(), "{security}");
    assert!(security.get("runAsGroup").is_none(), "{security}");
    assert_eq!(security["runAsNonRoot"], true);
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example/oto@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"],
        false
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &args[args.len() - 2..],
        ["--token-type=bearer", "--max-calls-per-namespace=4"]
    );
    assert!(args.contains(&"--stall-timeout=5m"), "{args:?}");
    let budget = kind(&objects, "PodDisruptionBudget").expect("a PDB with 2 replicas");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert_eq!(
        budget["spec"]["selector"], deployment["spec"]["selector"],
        "the PDB selects the operator's pods"
    );

    let single = render(
        "oto-system",
        &["replicaCount=1", "leaderElection.enabled=false"],
    );
    assert!(
        kind(&single, "PodDisruptionBudget").is_none(),
        "no PDB that would block every drain of a single replica"
    );
    let renamed = render("oto-system", &["nameOverride=tokens"]);
    let deployment = kind(&renamed, "Deployment").unwrap();
    assert_eq!(deployment["metadata"]["name"], "oto-tokens");
    assert_eq!(
        deployment["metadata"]["labels"]["app.kubernetes.io/name"],
        "tokens"
    );
}

/// A parent chart that depends on this one, with `global` values.
fn parent_chart(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        format!(
            "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n  - name: oauth-token-operator\n    version: {}\n    repository: file://{CHART}\n    alias: tokens\n",
            env!("CARGO_PKG_VERSION")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("values.yaml"),
        "global:\n  imageRegistry: registry.example\n  imagePullSecrets: []\n  labels: {team: platform}\ntokens:\n  replicaCount: 1\n  leaderElection:\n    enabled: false\n  image:\n    pullPolicy: Never\n  tests:\n    enabled: false\n",
    )
    .unwrap();
}

#[tokio::test]
async fn the_chart_installs_as_a_subchart_with_global_values() {
    with_namespace("chart-sub", |client, ns| async move {
        ensure_crd(&client).await;
        let dir = std::env::temp_dir().join(format!("oto-{ns}-parent"));
        parent_chart(&dir);
        let dir_arg = dir.to_str().unwrap();
        let built = helm(&["dependency", "build", dir_arg]);
        assert!(
            built.status.success(),
            "helm dependency build: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let release = format!("sub-{}", &ns[ns.len() - 5..]);
        let installed = helm(&[
            "install",
            &release,
            dir_arg,
            "--namespace",
            &ns,
            "--render-subchart-notes",
        ]);
        let uninstall = || helm(&["uninstall", &release, "--namespace", &ns]);
        let stdout = String::from_utf8_lossy(&installed.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&installed.stderr).into_owned();
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(client.clone(), &ns);
        let listed = deployments.list(&Default::default()).await.unwrap();
        let gone = uninstall();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(installed.status.success(), "helm install: {stderr}");
        assert!(
            gone.status.success(),
            "helm uninstall: {}",
            String::from_utf8_lossy(&gone.stderr)
        );
        let names: Vec<String> = listed
            .items
            .iter()
            .filter_map(|d| d.metadata.name.clone())
            .collect();
        assert_eq!(names, vec![format!("{release}-tokens")], "{stdout}");
        let deployment = &listed.items[0];
        assert_eq!(deployment.spec.replicas, Some(1));
        assert!(
            stdout.contains("SEAL KEYS"),
            "the NOTES warn about the seal keys: {stdout}"
        );
    })
    .await;
}
