//! Scale and punctuality benchmark: the release-built operator against the
//! real control plane (`KUBECONFIG`) and a local token endpoint, with N
//! credentials. Run it with `scripts/bench`, which starts a private control
//! plane, runs this, and draws the plots. It prints figures; it asserts
//! nothing (targets are judged in the summary it writes).
//!
//! Phases, in one run:
//! 1. ceiling: a plain client server-side-applies Secrets as fast as the API
//!    server takes them (16 and 64 in flight), for the write ceiling;
//! 2. start: N credentials exist, the operator starts with no tokens;
//! 3. steady: the operator runs for `--steady` seconds; every refresh is timed
//!    against the `status.refreshAt` it published;
//! 4. restart: with every token valid, the operator restarts; calls and writes
//!    during its start-up pass are counted;
//! 5. outage: the operator is stopped until every credential is due, then
//!    started: how it spreads the load, and whether a token expires that the
//!    rate limit would have allowed to refresh in time.

mod audit;
mod provider;
mod report;
mod sampler;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use oauth_token_operator::resource::{OAuthCredential, READY};
use serde_json::json;

use provider::{Provider, now_ms};
use report::{Phase, Results};
use sampler::Sampler;

/// Who the operator acts as (impersonated), to find its writes in the audit log.
const OPERATOR_USER: &str = "oauth-token-operator-bench";
const LABEL: &str = "app.kubernetes.io/part-of";
const LABEL_VALUE: &str = "oauth-token-operator-bench";
const PER_NAMESPACE: usize = 1000;

#[derive(Debug, Parser, Clone)]
#[command(about = "Scale and punctuality benchmark (run it with scripts/bench)")]
pub struct Args {
    /// Number of credentials.
    #[arg(long, default_value_t = 10_000)]
    pub credentials: usize,
    /// Lifetime of the access tokens the endpoint issues, in seconds.
    #[arg(long, default_value_t = 600)]
    pub lifetime: u64,
    /// How long the steady phase runs, in seconds.
    #[arg(long, default_value_t = 600)]
    pub steady: u64,
    /// The operator's --token-endpoint-rate (calls per second).
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// The operator's --token-endpoint-burst.
    #[arg(long, default_value_t = 100)]
    pub burst: u32,
    /// The operator's --concurrency.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// The control plane's audit log.
    #[arg(long)]
    pub audit_log: PathBuf,
    /// Where results go.
    #[arg(long)]
    pub out: PathBuf,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

#[tokio::main]
async fn main() {
    oauth_token_operator::tls::install_crypto_provider();
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).expect("create the results folder");
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG names a reachable control plane (scripts/bench sets it)");
    let mut results = Results::new(&args);
    let sampler = Sampler::start();
    let bench_start = now_ms();
    results.started_at = bench_start;

    say(&format!(
        "{} credentials, tokens live {} s, rate limit {}/s (burst {}), concurrency {}",
        args.credentials, args.lifetime, args.rate, args.burst, args.concurrency
    ));

    // 1. The API server's own write ceiling.
    say("ceiling: a plain client applying Secrets");
    for in_flight in [16usize, 64] {
        let rate = write_ceiling(&client, in_flight).await;
        say(&format!("  {in_flight} in flight: {rate:.0} writes/s"));
        results.ceiling.push((in_flight, rate));
    }

    // 2. Credentials, then the operator from nothing.
    say("creating credentials");
    let refresh_tokens: Vec<String> = (0..args.credentials)
        .map(|i| format!("bench-rt-{i}-{:016x}", seed(i)))
        .collect();
    let provider = Provider::new(&refresh_tokens, args.lifetime);
    let endpoint = provider.serve().await;
    ensure_crd(&client).await;
    let created = Instant::now();
    create_credentials(&client, &endpoint, &refresh_tokens).await;
    results.create_seconds = created.elapsed().as_secs_f64();
    say(&format!(
        "  {} credentials (and their Secrets) in {:.1} s",
        args.credentials, results.create_seconds
    ));
    let watch = tokio::spawn(watch_credentials(client.clone(), provider.clone()));
    let kubeconfig = operator_kubeconfig(&client, &args.out).await;
    let admin = free_port();
    let mut operator = Operator::start(&args, &kubeconfig, admin, &sampler);

    let phase = Phase::begin("start");
    let started = Instant::now();
    let scheduled =
        wait_scheduled(admin, args.credentials, started, Duration::from_secs(3600)).await;
    let ready = wait_all_ready(&provider, started, Duration::from_secs(3600)).await;
    results.start_to_scheduled = scheduled;
    results.start_to_ready = ready;
    results.phases.push(phase.end());
    say(&format!(
        "  every credential Ready {ready:.1} s after the operator started (scheduled after {scheduled:.1} s)"
    ));

    // 3. Steady state.
    say(&format!("steady: {} s", args.steady));
    let phase = Phase::begin("steady");
    tokio::time::sleep(Duration::from_secs(args.steady)).await;
    results.phases.push(phase.end());

    // 4. Restart with every token valid.
    say("restart with every token valid");
    operator.stop().await;
    let phase = Phase::begin("restart");
    operator = Operator::start(&args, &kubeconfig, admin, &sampler);
    let scheduled = wait_scheduled(
        admin,
        args.credentials,
        Instant::now(),
        Duration::from_secs(600),
    )
    .await;
    results.restart_to_scheduled = scheduled;
    results.phases.push(phase.end());
    say(&format!(
        "  every credential scheduled {scheduled:.1} s after the start"
    ));

    // 5. Outage: stopped until every credential is due.
    say("outage: stopped until every credential is due");
    operator.stop().await;
    let due = provider
        .refresh_at
        .iter()
        .map(|t| t.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let wait = (due + 2_000 - now_ms()).max(0) as u64;
    say(&format!("  waiting {:.0} s", wait as f64 / 1000.0));
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let expiries: Vec<i64> = provider
        .expiry
        .iter()
        .map(|t| t.load(Ordering::Relaxed))
        .collect();
    let phase = Phase::begin("outage");
    operator = Operator::start(&args, &kubeconfig, admin, &sampler);
    let recovered =
        wait_all_refreshed_since(&provider, phase.start, Duration::from_secs(3600)).await;
    results.outage_recovery = recovered;
    results.outage_expiries = expiries;
    results.phases.push(phase.end());
    say(&format!(
        "  every credential refreshed {recovered:.1} s after the start"
    ));
    // Let the last writes land in the audit log.
    tokio::time::sleep(Duration::from_secs(3)).await;
    operator.stop().await;
    watch.abort();

    results.calls = provider.calls();
    results.writes = audit::writes_by(&args.audit_log, OPERATOR_USER);
    results.samples = sampler.samples();
    results.finished_at = now_ms();
    results.machine = report::machine();
    let summary = results.write(&args.out);
    println!("\n{summary}");
    println!("results in {}", args.out.display());
}

fn say(text: &str) {
    let elapsed = k8s_openapi::jiff::Timestamp::now();
    eprintln!("[bench {}] {text}", elapsed.strftime("%H:%M:%S"));
}

/// A fixed pseudo-random number per credential.
fn seed(i: usize) -> u64 {
    (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn namespace_of(i: usize) -> String {
    format!("oto-bench-{}", i / PER_NAMESPACE)
}

async fn ensure_crd(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = OAuthCredential::crd();
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("oauth-token-operator-bench").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
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

async fn create_namespace(client: &Client, name: &str) {
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

/// Applies Secrets in a scratch namespace with `in_flight` requests at once
/// and returns the writes per second the API server sustained.
async fn write_ceiling(client: &Client, in_flight: usize) -> f64 {
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
                    &PatchParams::apply("oauth-token-operator-bench").force(),
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

async fn create_credentials(client: &Client, endpoint: &str, refresh_tokens: &[String]) {
    let count = refresh_tokens.len();
    for k in 0..count.div_ceil(PER_NAMESPACE) {
        let ns = namespace_of(k * PER_NAMESPACE);
        create_namespace(client, &ns).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let client_secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "oauth-client"},
            "stringData": {"client_id": "bench-client", "client_secret": "bench-secret"},
        }))
        .unwrap();
        match secrets.create(&PostParams::default(), &client_secret).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("create client Secret: {e}"),
        }
    }
    stream::iter(refresh_tokens.iter().enumerate().map(|(i, token)| {
        let client = client.clone();
        async move {
            let ns = namespace_of(i);
            let name = format!("c{i:05}");
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-refresh")},
                "stringData": {"refresh_token": token},
            }))
            .unwrap();
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .expect("create refresh-token Secret");
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
            Api::<OAuthCredential>::namespaced(client, &ns)
                .create(&PostParams::default(), &credential)
                .await
                .expect("create credential");
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<()>>()
    .await;
}

/// Keeps the provider's view of each credential's `status.refreshAt` and
/// Ready condition current.
async fn watch_credentials(client: Client, provider: Arc<Provider>) {
    let api: Api<OAuthCredential> = Api::all(client);
    let config = watcher::Config::default().labels(&format!("{LABEL}={LABEL_VALUE}"));
    let stream = watcher(api, config).default_backoff().applied_objects();
    futures::pin_mut!(stream);
    while let Ok(Some(credential)) = stream.try_next().await {
        let Some(i) = credential
            .name_any()
            .strip_prefix('c')
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
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

/// A kubeconfig that impersonates `OPERATOR_USER`, bound to cluster-admin.
async fn operator_kubeconfig(client: &Client, out: &std::path::Path) -> PathBuf {
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": OPERATOR_USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": OPERATOR_USER}],
    }))
    .unwrap();
    bindings
        .patch(
            OPERATOR_USER,
            &PatchParams::apply("oauth-token-operator-bench").force(),
            &Patch::Apply(&binding),
        )
        .await
        .expect("bind the operator's user");
    create_namespace(client, "oto-bench-system").await;
    let path = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let mut config: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for user in config["users"].as_array_mut().unwrap() {
        user["user"]["as"] = json!(OPERATOR_USER);
    }
    let file = out.join("operator.kubeconfig");
    std::fs::write(&file, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    file
}

/// The operator process.
struct Operator {
    child: Child,
    sampler: Sampler,
}

impl Operator {
    fn start(args: &Args, kubeconfig: &std::path::Path, admin: u16, sampler: &Sampler) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(args.out.join("operator.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"))
            .args(["run", "--operator-namespace", "oto-bench-system"])
            .arg("--allow-insecure-loopback-http")
            .args(["--admin-address", &format!("127.0.0.1:{admin}")])
            .args(["--token-endpoint-rate", &args.rate.to_string()])
            .args(["--token-endpoint-burst", &args.burst.to_string()])
            .args(["--concurrency", &args.concurrency.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the operator");
        sampler.follow(child.id());
        Operator {
            child,
            sampler: sampler.clone(),
        }
    }

    /// SIGTERM, as Kubernetes stops a pod, then wait.
    async fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..300 {
            if self.child.try_wait().ok().flatten().is_some() {
                self.sampler.follow(0);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.sampler.follow(0);
    }
}

/// Seconds from `started` until the operator's `credentials_scheduled` gauge
/// reaches `count`.
async fn wait_scheduled(admin: u16, count: usize, started: Instant, limit: Duration) -> f64 {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{admin}/metrics");
    while started.elapsed() < limit {
        if let Ok(response) = http.get(&url).send().await
            && let Ok(text) = response.text().await
        {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix("oauth_token_operator_credentials_scheduled "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if value >= count as f64 {
                return started.elapsed().as_secs_f64();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the operator did not schedule {count} credentials within {limit:?}");
}

/// Seconds from `started` until every credential is Ready.
async fn wait_all_ready(provider: &Provider, started: Instant, limit: Duration) -> f64 {
    while started.elapsed() < limit {
        if provider.ready.iter().all(|r| r.load(Ordering::Relaxed)) {
            return started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("not every credential became Ready within {limit:?}");
}

/// Seconds from `since` (unix ms) until every credential was refreshed.
async fn wait_all_refreshed_since(provider: &Provider, since: i64, limit: Duration) -> f64 {
    let started = Instant::now();
    while started.elapsed() < limit {
        let calls = provider.calls();
        let mut seen = vec![false; provider.expiry.len()];
        for call in calls.iter().filter(|c| c.at >= since) {
            seen[call.credential as usize] = true;
        }
        if seen.iter().all(|s| *s) {
            let last = calls.iter().map(|c| c.at).max().unwrap_or(since);
            return (last - since) as f64 / 1000.0;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("not every credential was refreshed within {limit:?} after the outage");
}
