//! Shared helpers: a client for the real control plane and a temporary
//! namespace per test, deleted afterwards even when the test fails.

pub mod connect_proxy;
pub mod fixtures;
pub mod keepalive_server;
pub mod node;
pub mod objects;
pub mod operator;
pub mod tls;
pub mod token_server;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

const HOW_TO_START: &str = "start the control plane with `scripts/control-plane up` and \
     `eval \"$(scripts/control-plane env)\"`, or run everything with `scripts/test`";

/// A client for the control plane named by `KUBECONFIG`. Panics with
/// instructions when it is not set or the API server does not answer: a test
/// that needs the control plane never passes without one.
pub async fn client() -> Client {
    let path = std::env::var_os("KUBECONFIG")
        .unwrap_or_else(|| panic!("KUBECONFIG is not set: {HOW_TO_START}"));
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read KUBECONFIG {}: {e}; {HOW_TO_START}",
            path.to_string_lossy()
        )
    });
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("invalid KUBECONFIG: {e}; {HOW_TO_START}"));
    let client = Client::try_from(config).expect("client from kubeconfig");
    if let Err(e) = client.apiserver_version().await {
        panic!("the API server in KUBECONFIG does not answer ({e}): {HOW_TO_START}");
    }
    client
}

/// Runs the CLI (`oauth-token-operator ARGS`) off the test's runtime thread,
/// which serves the token endpoint meanwhile.
pub async fn run_cli(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"))
            .args(args)
            .output()
            .expect("run the CLI")
    })
    .await
    .unwrap()
}

/// The namespace the operator of a test in `ns` runs in (its seal keys, its
/// Lease): never the credentials' namespace, which the operator refuses to
/// serve. `with_namespace` creates it along with `ns`.
pub fn operator_namespace(ns: &str) -> String {
    format!("{ns}-op")
}

/// Runs `body` in a fresh namespace whose name starts with `prefix` (and
/// creates its operator namespace beside it), then deletes both, also when
/// `body` panics (the panic is re-raised).
pub async fn with_namespace<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let client = client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.generate_name = Some(format!("{prefix}-"));
    ns.metadata.labels =
        Some([("oauth-token-operator.test/temporary".into(), "true".into())].into());
    let created = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create temporary namespace");
    let name = created.metadata.name.expect("generated namespace name");
    let mut operator_ns = Namespace::default();
    operator_ns.metadata.name = Some(operator_namespace(&name));
    operator_ns.metadata.labels = ns.metadata.labels.clone();
    namespaces
        .create(&PostParams::default(), &operator_ns)
        .await
        .expect("create the operator's temporary namespace");

    let outcome = AssertUnwindSafe(body(client.clone(), name.clone()))
        .catch_unwind()
        .await;

    release_credentials(&client, &name).await;
    for namespace in [name.clone(), operator_namespace(&name)] {
        if let Err(e) = namespaces
            .delete(&namespace, &DeleteParams::default())
            .await
        {
            eprintln!("warning: could not delete temporary namespace {namespace}: {e}");
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Takes the finalizers off the credentials left in `ns`: no operator runs
/// any more to do the cleanup they wait for, and the namespace could not go.
async fn release_credentials(client: &Client, ns: &str) {
    use oauth_token_operator::resource::OAuthCredential;
    let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), ns);
    let Ok(list) = credentials.list(&Default::default()).await else {
        return;
    };
    for credential in list.items {
        if credential
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty())
        {
            let patch = serde_json::json!({"metadata": {"finalizers": null}});
            let name = credential.metadata.name.unwrap_or_default();
            let _ = credentials
                .patch(&name, &Default::default(), &kube::api::Patch::Merge(patch))
                .await;
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after
/// `limit` with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A copy of `KUBECONFIG`, written to `file` in the temporary directory, whose
/// users impersonate `user` (for RBAC tests; the admin may impersonate).
pub fn kubeconfig_as(user: &str, file: &str) -> std::path::PathBuf {
    let admin = std::fs::read_to_string(std::env::var("KUBECONFIG").unwrap()).unwrap();
    let mut config: serde_json::Value = serde_yaml_ng::from_str(&admin).unwrap();
    for entry in config["users"].as_array_mut().unwrap() {
        entry["user"]["as"] = serde_json::Value::String(user.to_string());
    }
    let path = std::env::temp_dir().join(file);
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    path
}

/// A number in [0, 1) that differs from run to run, for random kill moments.
pub fn random_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    f64::from(nanos % 1_000_000) / 1_000_000.0
}
