//! The composition root supervises its tasks: the operator, started in this
//! process against the real control plane, stops with an error naming the
//! task when the admin server or the Lease watch behind the fence dies (the
//! binary turns that error into a non-zero exit), stops cleanly when asked,
//! and turns unready while a watch keeps failing.

use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use oauth_token_operator::cli::{Cli, Command};
use oauth_token_operator::runtime::{self, RunArgs, RunError, task};
use serde_json::json;

use crate::support::fixtures::ensure_crd;
use crate::support::operator::Operator;
use crate::support::{eventually, kubeconfig_as, operator_namespace, with_namespace};

fn run_args(ns: &str, lease: &str) -> RunArgs {
    let cli = Cli::try_parse_from([
        "oauth-token-operator",
        "run",
        "--watch-namespace",
        ns,
        "--operator-namespace",
        &operator_namespace(ns),
        "--admin-address",
        "127.0.0.1:0",
        "--leader-election",
        "--lease-name",
        lease,
        "--lease-duration",
        "10s",
        "--lease-renew-before",
        "5s",
        "--token-request-timeout",
        "3s",
        "--lease-skew-margin",
        "1s",
    ])
    .expect("valid flags");
    match cli.command {
        Command::Run(args) => *args,
        other => panic!("parsed {other:?}"),
    }
}

async fn readyz(address: &str) -> Option<(u16, String)> {
    oauth_token_operator::tls::install_crypto_provider();
    let response = reqwest::get(format!("{address}/readyz")).await.ok()?;
    Some((response.status().as_u16(), response.text().await.ok()?))
}

#[tokio::test]
async fn killing_the_admin_server_or_the_lease_watch_stops_the_operator_with_an_error_naming_it() {
    with_namespace("supervise", |client, ns| async move {
        ensure_crd(&client).await;
        for (i, killed) in [task::ADMIN_SERVER, task::LEASE_WATCH]
            .into_iter()
            .enumerate()
        {
            let args = run_args(&ns, &format!("lease-{i}"));
            let running =
                runtime::start(&args, client.clone(), oauth_token_operator::clock::system())
                    .await
                    .expect("the operator starts");
            let admin = format!("http://{}", running.admin_address());
            eventually(
                "the replica to be ready",
                Duration::from_secs(30),
                || async { readyz(&admin).await.filter(|(code, _)| *code == 200) },
            )
            .await;
            assert!(running.abort(killed), "{killed} was running");
            let ended = tokio::time::timeout(
                Duration::from_secs(15),
                running.until_stopped(std::future::pending()),
            )
            .await
            .unwrap_or_else(|_| panic!("the operator went on without its {killed}"));
            match ended {
                Err(RunError::TaskEnded { task, .. }) => assert_eq!(task, killed),
                other => panic!("killing the {killed} ended with {other:?}"),
            }
            assert!(
                readyz(&admin).await.is_none(),
                "everything stopped with it, the admin server included"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_requested_stop_ends_the_operator_cleanly() {
    with_namespace("supervise-stop", |client, ns| async move {
        ensure_crd(&client).await;
        let running = runtime::start(
            &run_args(&ns, "lease"),
            client,
            oauth_token_operator::clock::system(),
        )
        .await
        .expect("the operator starts");
        let admin = format!("http://{}", running.admin_address());
        eventually(
            "the replica to be ready",
            Duration::from_secs(30),
            || async { readyz(&admin).await.filter(|(code, _)| *code == 200) },
        )
        .await;
        running.stop();
        let ended = tokio::time::timeout(
            Duration::from_secs(15),
            running.until_stopped(std::future::pending()),
        )
        .await
        .expect("stops within 15 s");
        assert!(ended.is_ok(), "{ended:?}");
    })
    .await;
}

#[tokio::test]
async fn a_watch_that_keeps_failing_makes_the_replica_unready() {
    with_namespace("supervise-watch", |client, ns| async move {
        ensure_crd(&client).await;
        // May read credentials and create its seal-key Secret, but may not
        // list or watch Secrets: the Secret watches fail with 403.
        let user = format!("system:serviceaccount:{ns}:partial");
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "partial"},
            "rules": [
                {"apiGroups": ["oauth.tokenoperator.io"], "resources": ["oauthcredentials"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["oauth.tokenoperator.io"], "resources": ["oauthcredentials/status"], "verbs": ["patch"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
            ],
        }))
        .unwrap();
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "partial"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "partial"},
            "subjects": [{"kind": "User", "name": user}],
        }))
        .unwrap();
        // In the credentials' namespace and in the operator's own (its
        // seal-key Secret).
        for namespace in [ns.clone(), operator_namespace(&ns)] {
            Api::<Role>::namespaced(client.clone(), &namespace)
                .create(&PostParams::default(), &role)
                .await
                .unwrap();
            Api::<RoleBinding>::namespaced(client.clone(), &namespace)
                .create(&PostParams::default(), &binding)
                .await
                .unwrap();
        }
        let kubeconfig = kubeconfig_as(&user, &format!("{ns}-partial.kubeconfig"));
        let operator = Operator::start_with_kubeconfig(
            &ns,
            &["--watch-failure-grace", "2s"],
            Some(&kubeconfig),
        );
        let admin = operator.admin_url().await;
        let (_, body) = eventually("/readyz to report the failing watch", Duration::from_secs(30), || async {
            readyz(&admin)
                .await
                .filter(|(code, body)| *code == 503 && body.contains("keeps failing"))
        })
        .await;
        assert!(body.contains("Secrets watch keeps failing"), "{body}");
        assert!(operator.output().contains("watch failing"));
    })
    .await;
}
