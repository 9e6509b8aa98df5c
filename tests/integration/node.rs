//! The node tier: the chart installed with the image built from this tree on
//! a real node (`scripts/node`), with only the values a user sets, against an
//! https token endpoint that this test process serves on the node's bridge
//! address with a certificate from a test CA. Two replicas run and one
//! leads; `helm test` passes; credentials become Ready; deleting the leader
//! hands over within the lease duration without any refresh token exchanged
//! twice; an upgrade that adds a proxy (`extraEnv`) and a volume rolls the
//! pods without a token call, and the next refresh goes through that proxy;
//! an uninstall keeps
//! the CRD, the credentials and their Secrets. A workload reading the output
//! Secret from a volume sees a refreshed token within the kubelet's sync
//! period; one reading it through a `subPath` mount never does.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::{Api, Client};
use oauth_token_operator::resource::{OAuthCredential, READY};

use crate::support::connect_proxy::ConnectProxy;
use crate::support::fixtures::*;
use crate::support::node::{
    Release, TestNode, busybox_image, is_ready, operator_image, ready_node,
};
use crate::support::tls::TestCa;
use crate::support::token_server::TokenServer;
use crate::support::{eventually, operator_namespace, with_namespace};

/// The chart's default `leaderElection.leaseDuration`.
const LEASE_DURATION: Duration = Duration::from_secs(30);
const CA_CONFIG_MAP: &str = "token-endpoint-ca";

/// A release name unique to the test's namespace (`node-x7k2p` → `oto-x7k2p`).
fn release_name(ns: &str) -> String {
    format!("oto-{}", ns.rsplit('-').next().unwrap())
}

/// An https token endpoint on the node's bridge address, its certificate
/// signed by `ca`, which the release is given through a ConfigMap.
async fn endpoint_on_the_bridge(node: &TestNode, ca: &TestCa, lifetime: Duration) -> TokenServer {
    let address = node.address.to_string();
    TokenServer::start_https(
        lifetime,
        SocketAddr::new(node.address, 0),
        &ca.issue(&[&address]),
    )
    .await
}

async fn put_ca_config_map(client: &Client, namespace: &str, ca: &TestCa) {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let map = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(CA_CONFIG_MAP.into()),
            ..Default::default()
        },
        data: Some([("ca.crt".to_string(), ca.pem())].into()),
        ..Default::default()
    };
    maps.create(&PostParams::default(), &map)
        .await
        .expect("create the CA ConfigMap");
}

/// The values a platform engineer sets: the image they loaded, where
/// credentials live, the provider's endpoint and its CA; and the image of
/// the chart's test pod, since no registry is reachable here.
fn user_values(ns: &str, server: &TokenServer, extra: &[&str]) -> Vec<String> {
    let (repository, tag) = operator_image();
    let (test_repository, test_tag) = busybox_image();
    let mut values = vec![
        format!("image.repository={repository}"),
        format!("image.tag={tag}"),
        "image.pullPolicy=Never".into(),
        format!("watchNamespace={ns}"),
        format!("allowedEndpoints[0]={}", server.url()),
        format!("extraCaCertificates.configMapName={CA_CONFIG_MAP}"),
        format!("tests.image.repository={test_repository}"),
        format!("tests.image.tag={test_tag}"),
        "tests.image.pullPolicy=Never".into(),
        // The tests' tokens live seconds; the default floor (60 s) would
        // hold every refresh back to once a minute.
        "minRefreshInterval=1s".into(),
    ];
    values.extend(extra.iter().map(|v| v.to_string()));
    values
}

async fn lease_holder(client: &Client, release: &Release) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release.namespace);
    let name = format!("{}-oauth-token-operator", release.name);
    leases
        .get_opt(&name)
        .await
        .expect("get the Lease")?
        .spec?
        .holder_identity
}

/// Waits until exactly `count` operator pods run, all Ready, none of them
/// in `gone`; returns their names.
async fn ready_replicas(
    client: &Client,
    release: &Release,
    count: usize,
    gone: &[String],
) -> Vec<String> {
    eventually(
        &format!("{count} Ready replicas"),
        Duration::from_secs(120),
        || async {
            let pods = release.pods(client).await;
            let names: Vec<String> = pods
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            (pods.len() == count
                && pods.iter().all(is_ready)
                && !names.iter().any(|n| gone.contains(n)))
            .then_some(names)
        },
    )
    .await
}

/// One of the pod's metrics, read through the API server's pod proxy.
async fn metric(client: &Client, namespace: &str, pod: &str, name: &str) -> Option<f64> {
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{namespace}/pods/{pod}:8080/proxy/metrics"
    ))
    .body(Vec::new())
    .unwrap();
    let text = client.request_text(request).await.ok()?;
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every refresh succeeded and no refresh token was presented twice: with
/// this rotating endpoint a replay would also have revoked the grant.
fn assert_no_refresh_token_exchanged_twice(server: &TokenServer) {
    let calls = server.calls();
    assert_eq!(
        server.revoked_grants(),
        0,
        "a rotated refresh token was replayed"
    );
    assert!(
        calls.iter().all(|c| c.status == 200),
        "every exchange succeeded: {calls:?}"
    );
    let mut seen = HashSet::new();
    for call in &calls {
        assert!(
            seen.insert(call.refresh_token.clone()),
            "a refresh token was exchanged twice"
        );
    }
}

#[tokio::test]
async fn the_chart_on_a_real_node_refreshes_over_tls_hands_over_and_survives_upgrade_and_uninstall()
{
    with_namespace("node", |client, ns| async move {
        let node = ready_node(&client).await;
        ensure_crd(&client).await;
        let release_ns = operator_namespace(&ns);
        let ca = TestCa::new("node tier test CA");
        let server = endpoint_on_the_bridge(&node, &ca, Duration::from_secs(15)).await;
        // Rotating and strict: presenting a rotated-away token revokes the grant.
        server.rotate(true);
        put_ca_config_map(&client, &release_ns, &ca).await;

        let started = Instant::now();
        let (mut release, output) =
            Release::install(&client, &release_name(&ns), &release_ns, &user_values(&ns, &server, &[])).await;
        let install_time = started.elapsed();
        assert!(
            output.contains(&format!("helm test {} -n {release_ns}", release.name)),
            "helm printed the chart's NOTES: {output}"
        );
        let replicas = ready_replicas(&client, &release, 2, &[]).await;
        let leader = eventually("a leader", Duration::from_secs(30), || lease_holder(&client, &release)).await;
        assert!(replicas.contains(&leader), "the leader {leader} is one of {replicas:?}");

        let test = release.test();
        let test_output = String::from_utf8_lossy(&test.stdout).to_string() + &String::from_utf8_lossy(&test.stderr);
        assert!(test.status.success(), "helm test: {test_output}");
        assert!(test_output.contains("/readyz: HTTP/1.0 200"), "{test_output}");

        create_client_secret(&client, &ns).await;
        let names = create_ready_credentials(&client, &ns, &server, "svc", 4).await;

        let takeovers = delete_the_leader_twice(&client, &release).await;
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(server.call_count() >= names.len() * 3, "refreshes went on: {} calls", server.call_count());
        assert_no_refresh_token_exchanged_twice(&server);
        for name in &names {
            assert!(status_of(&client, &ns, name).await.is_true(READY), "{name}");
        }

        let proxy = ConnectProxy::start(SocketAddr::new(node.address, 0)).await;
        let upgrade_time =
            upgrade_without_a_token_call(&client, &release, &server, &proxy, &ns, &names).await;
        refreshes_go_through_the_proxy(&client, &server, &proxy, &ns, &names[0]).await;
        assert_no_refresh_token_exchanged_twice(&server);

        let out = release.uninstall();
        assert!(out.status.success(), "helm uninstall: {}", String::from_utf8_lossy(&out.stderr));
        what_uninstall_leaves(&client, &release, &ns, &names).await;
        eprintln!(
            "node tier: helm install --wait {install_time:?}; takeovers after deleting the leader {takeovers:?}; \
             helm upgrade --wait {upgrade_time:?}; {} token calls",
            server.call_count()
        );
    })
    .await;
}

/// Deletes the leading pod twice; each time another replica holds the Lease
/// within the lease duration. Returns how long each takeover took.
async fn delete_the_leader_twice(client: &Client, release: &Release) -> Vec<Duration> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release.namespace);
    let mut takeovers = Vec::new();
    for round in 1..=2 {
        let leader = lease_holder(client, release).await.expect("a leader");
        pods.delete(&leader, &DeleteParams::default())
            .await
            .expect("delete the leader");
        let deleted = Instant::now();
        let next = eventually(
            "another replica to take the Lease",
            LEASE_DURATION + Duration::from_secs(10),
            || async { lease_holder(client, release).await.filter(|h| *h != leader) },
        )
        .await;
        let takeover = deleted.elapsed();
        assert!(
            takeover <= LEASE_DURATION,
            "round {round}: {next} took over {takeover:?} after {leader} was deleted"
        );
        takeovers.push(takeover);
        // The ReplicaSet's replacement comes up as a standby; tokens expire
        // and are refreshed meanwhile.
        ready_replicas(client, release, 2, std::slice::from_ref(&leader)).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    takeovers
}

/// Makes every token long-lived, then upgrades the release with changed
/// values (an `HTTPS_PROXY` in `extraEnv`, an extra volume): the pods are
/// replaced, the new leader schedules every credential, and no
/// token-endpoint call is made. Returns how long the upgrade took.
async fn upgrade_without_a_token_call(
    client: &Client,
    release: &Release,
    server: &TokenServer,
    proxy: &ConnectProxy,
    ns: &str,
    names: &[String],
) -> Duration {
    server.set_lifetime(Duration::from_secs(3600));
    for name in names {
        force_refresh(client, ns, name, "long-lived-tokens").await;
    }
    let in_half_an_hour = Timestamp::now() + Duration::from_secs(1800);
    for name in names {
        eventually(
            &format!("{name}: a long-lived token"),
            Duration::from_secs(30),
            || async {
                let status = status_of(client, ns, name).await;
                status
                    .expires_at
                    .filter(|t| t.0 > in_half_an_hour)
                    .map(|_| ())
            },
        )
        .await;
    }
    let calls = server.call_count();
    let old = release
        .pods(client)
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect::<Vec<_>>();
    let started = Instant::now();
    let proxy_url = format!("extraEnv[0].value=http://{}", proxy.addr);
    let changed = [
        "extraEnv[0].name=HTTPS_PROXY",
        &proxy_url,
        "extraVolumes[0].name=scratch",
        "extraVolumes[0].emptyDir.medium=Memory",
        "extraVolumeMounts[0].name=scratch",
        "extraVolumeMounts[0].mountPath=/scratch",
    ];
    release.upgrade(client, &changed).await;
    let upgrade_time = started.elapsed();
    let new = ready_replicas(client, release, 2, &old).await;
    let leader = eventually("a new leader", Duration::from_secs(60), || async {
        lease_holder(client, release)
            .await
            .filter(|h| new.contains(h))
    })
    .await;
    let scheduled = names.len() as f64;
    eventually(
        "the new leader to schedule every credential",
        Duration::from_secs(60),
        || async {
            let value = metric(
                client,
                &release.namespace,
                &leader,
                "oauth_token_operator_credentials_scheduled",
            )
            .await;
            (value == Some(scheduled)).then_some(())
        },
    )
    .await;
    assert_eq!(
        server.call_count(),
        calls,
        "the upgrade made no token call for unexpired tokens"
    );
    upgrade_time
}

/// A forced refresh after the upgrade reaches the token endpoint through the
/// proxy of `extraEnv`, and the proxy sees nothing else (the in-cluster API
/// client does not use it).
async fn refreshes_go_through_the_proxy(
    client: &Client,
    server: &TokenServer,
    proxy: &ConnectProxy,
    ns: &str,
    name: &str,
) {
    let calls = server.call_count();
    force_refresh(client, ns, name, "through-the-proxy").await;
    eventually(
        "a refresh after the upgrade",
        Duration::from_secs(30),
        || async { (server.call_count() > calls).then_some(()) },
    )
    .await;
    let endpoint = server.addr.to_string();
    let targets = proxy.targets();
    assert!(!targets.is_empty(), "the token client used HTTPS_PROXY");
    assert!(
        targets.iter().all(|t| *t == endpoint),
        "only the token endpoint went through the proxy: {targets:?}"
    );
}

/// After `helm uninstall`: the operator is gone; the CRD, the credentials and
/// their output Secrets stay.
async fn what_uninstall_leaves(client: &Client, release: &Release, ns: &str, names: &[String]) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release.namespace);
    let deployment = format!("{}-oauth-token-operator", release.name);
    assert!(
        deployments.get_opt(&deployment).await.unwrap().is_none(),
        "the Deployment is gone"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(
        crds.get_opt("oauthcredentials.oauth.tokenoperator.io")
            .await
            .unwrap()
            .is_some(),
        "the CRD stays"
    );
    let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), ns);
    assert_eq!(
        credentials
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        names.len(),
        "the credentials stay"
    );
    // Give a garbage collector that wrongly cascaded the time to show it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for name in names {
        assert!(
            access_token_in(client, ns, &format!("{name}-token"))
                .await
                .is_some(),
            "{name}'s output Secret stays"
        );
    }
}

// ---------------------------------------------------------------- workload --

/// A restricted pod that prints a fingerprint of the mounted token each
/// time it changes: the output Secret as a volume, or its one key through a
/// `subPath` mount.
fn reader_pod(name: &str, secret: &str, sub_path: bool) -> Pod {
    let (repository, tag) = busybox_image();
    let mount = if sub_path {
        serde_json::json!({"name": "token", "mountPath": "/token/access_token", "subPath": "access_token", "readOnly": true})
    } else {
        serde_json::json!({"name": "token", "mountPath": "/token", "readOnly": true})
    };
    let script = "last=''; while true; do \
        now=$(sha256sum < /token/access_token | cut -c1-16); \
        if [ \"$now\" != \"$last\" ]; then echo \"token $now\"; last=$now; fi; \
        sleep 0.1; done";
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65534, "runAsGroup": 65534,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "reader",
                "image": format!("{repository}:{tag}"),
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [mount],
            }],
            "volumes": [{"name": "token", "secret": {"secretName": secret}}],
        }
    }))
    .expect("a Pod")
}

fn fingerprint(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The (time, fingerprint) lines a reader pod printed, by the container
/// runtime's timestamps.
async fn readings(client: &Client, ns: &str, pod: &str) -> Vec<(Timestamp, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let Ok(logs) = pods
        .logs(
            pod,
            &LogParams {
                timestamps: true,
                ..Default::default()
            },
        )
        .await
    else {
        return Vec::new();
    };
    logs.lines()
        .filter_map(|line| {
            let (time, rest) = line.split_once(' ')?;
            Some((time.parse().ok()?, rest.strip_prefix("token ")?.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn a_workload_sees_a_refreshed_token_in_its_volume_within_the_sync_period_but_never_through_subpath()
 {
    with_namespace("workload", |client, ns| async move {
        let node = ready_node(&client).await;
        ensure_crd(&client).await;
        let release_ns = operator_namespace(&ns);
        let ca = TestCa::new("workload test CA");
        let server = endpoint_on_the_bridge(&node, &ca, Duration::from_secs(3600)).await;
        put_ca_config_map(&client, &release_ns, &ca).await;
        let (_release, _) = Release::install(
            &client,
            &release_name(&ns),
            &release_ns,
            &user_values(&ns, &server, &["replicaCount=1"]),
        )
        .await;
        create_client_secret(&client, &ns).await;
        create_ready_credentials(&client, &ns, &server, "mailer", 1).await;
        let secret = "mailer1-token";
        let first = fingerprint(
            &access_token_in(&client, &ns, secret)
                .await
                .expect("a token"),
        );

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        for (name, sub_path) in [("volume-reader", false), ("subpath-reader", true)] {
            pods.create(&PostParams::default(), &reader_pod(name, secret, sub_path))
                .await
                .expect("create reader");
        }
        for name in ["volume-reader", "subpath-reader"] {
            eventually(
                &format!("{name} to read the first token"),
                Duration::from_secs(60),
                || async {
                    readings(&client, &ns, name)
                        .await
                        .iter()
                        .any(|(_, f)| *f == first)
                        .then_some(())
                },
            )
            .await;
        }

        force_refresh(&client, &ns, "mailer1", "workload").await;
        // Polled more often than `eventually` does: this time is the start
        // of the measured delay.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (changed_at, second) = loop {
            let token = access_token_in(&client, &ns, secret)
                .await
                .expect("a token");
            if fingerprint(&token) != first {
                break (Timestamp::now(), fingerprint(&token));
            }
            assert!(
                Instant::now() < deadline,
                "no new token in the Secret after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // kubelet rewrites a Secret volume when it next syncs the pod: every
        // syncFrequency, jittered by up to half of it.
        let bound = node.sync_frequency * 3 / 2 + Duration::from_secs(5);
        let seen_at = eventually(
            "the volume reader to see the new token",
            bound + Duration::from_secs(30),
            || async {
                readings(&client, &ns, "volume-reader")
                    .await
                    .into_iter()
                    .find(|(_, f)| *f == second)
                    .map(|(t, _)| t)
            },
        )
        .await;
        // Negative when kubelet was quicker than this test's poll.
        let signed = seen_at.duration_since(changed_at);
        let delay = Duration::try_from(signed).unwrap_or_default();
        assert!(
            delay <= bound,
            "the file changed {delay:?} after the Secret; kubelet's sync period is {:?}",
            node.sync_frequency
        );

        // Twice the longest sync interval later, the subPath copy is still old.
        tokio::time::sleep(node.sync_frequency * 3 + Duration::from_secs(2)).await;
        let through_sub_path = readings(&client, &ns, "subpath-reader").await;
        assert_eq!(
            through_sub_path
                .iter()
                .map(|(_, f)| f.as_str())
                .collect::<Vec<_>>(),
            vec![first.as_str()],
            "a subPath mount keeps the token the pod started with"
        );
        eprintln!(
            "node tier: the refreshed token reached the volume {signed:?} after the Secret changed \
             (kubelet syncFrequency {:?})",
            node.sync_frequency
        );
    })
    .await;
}

// ----------------------------------------------------------- the README --

/// The README's "Install in a cluster" section, from its heading to the next.
fn install_section() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("## Install in a cluster")
        .expect("the install section");
    let end = start + 3 + readme[start + 3..].find("\n## ").expect("a next section");
    readme[start..end].to_string()
}

#[test]
fn the_readmes_helm_values_are_the_charts() {
    let section = install_section();
    let mut sets = Vec::new();
    for word in section.split_whitespace() {
        if let Some(set) = sets.last_mut().filter(|s: &&mut String| s.is_empty()) {
            *set = word.trim_matches('\'').to_string();
        } else if word == "--set" {
            sets.push(String::new());
        }
    }
    assert!(sets.len() >= 4, "found {sets:?}");
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    // The schema refuses unknown keys, so a renamed value fails here.
    crate::support::objects::helm_template("oto", "oto-system", &sets);
}

#[tokio::test]
async fn the_readmes_credential_is_accepted_by_the_api_server() {
    with_namespace("readme", |client, ns| async move {
        ensure_crd(&client).await;
        let section = install_section();
        let start = section.find("<<'EOF'\n").expect("a here-document") + "<<'EOF'\n".len();
        let end = start + section[start..].find("\nEOF").expect("its end");
        let mut credential: OAuthCredential =
            serde_yaml_ng::from_str(&section[start..end]).expect("an OAuthCredential");
        credential.metadata.namespace = Some(ns.clone());
        let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &ns);
        let params = PostParams {
            dry_run: true,
            ..Default::default()
        };
        credentials
            .create(&params, &credential)
            .await
            .unwrap_or_else(|e| panic!("the README's credential is refused: {e}"));
    })
    .await;
}
