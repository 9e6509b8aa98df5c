//! Subcommands and flags. Every flag can also be set through the environment
//! variable named in its help (`OAUTH_TOKEN_OPERATOR_<FLAG>`).

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use std::num::NonZeroU32;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::admin::{self, Health};
use crate::authorize;
use crate::controller::{self, ControllerConfig};
use crate::keys::{self, KeySource, Keys};
use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::resource::OAuthCredential;
use crate::schedule::parse_duration;
use crate::summary;
use crate::token_client::TokenClientConfig;

#[derive(Debug, Parser)]
#[command(
    name = "oauth-token-operator",
    version,
    about = "Keeps OAuth access tokens fresh in Kubernetes Secrets"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller against the cluster of the current kubeconfig (or
    /// the in-cluster service account).
    Run(Box<RunArgs>),
    /// Print the OAuthCredential CustomResourceDefinition as YAML.
    Crd,
    /// Obtain a person's consent for a credential and store the new refresh
    /// token: the answer to `ReauthRequired`, and how a credential gets its
    /// first refresh token.
    Authorize(AuthorizeArgs),
    /// Summarise credentials: READY, REAUTH, EXPIRES IN, NEXT REFRESH, LAST
    /// FAILURE, and the command that fixes each one waiting for a person.
    Status(StatusArgs),
}

/// Which cluster the client commands talk to.
#[derive(Debug, Args)]
pub struct KubeArgs {
    /// Path of the kubeconfig. Default: `$KUBECONFIG`, else `~/.kube/config`.
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,

    /// Kubeconfig context to use. Default: the current context.
    #[arg(long)]
    pub context: Option<String>,
}

#[derive(Debug, Args)]
pub struct AuthorizeArgs {
    /// The credential, as `<namespace>/<name>`, or `<name>` in the namespace
    /// of `-n` or of the kubeconfig context.
    pub credential: String,

    /// Namespace of the credential when it is given without one.
    #[arg(short, long)]
    pub namespace: Option<String>,

    /// Do not open a browser: print the address to open elsewhere, and accept
    /// the address the browser ends on, pasted into the terminal.
    #[arg(long)]
    pub no_browser: bool,

    /// How long to wait for consent.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How long to wait for the operator to refresh with the new token; `0s`
    /// returns once the token is stored.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub wait: Duration,

    /// Accept `http://` authorization and token endpoints on loopback
    /// addresses. For tests and demos only.
    #[arg(long)]
    pub allow_insecure_loopback_http: bool,

    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Namespace to list. Default: the kubeconfig context's namespace.
    #[arg(short, long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,

    /// List credentials in every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Refreshes (reconciles) in flight at once.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Watch only this namespace instead of the whole cluster.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Accept `http://` token endpoints on loopback addresses (127.0.0.0/8,
    /// ::1, localhost). For tests and demos only; never in production.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_ALLOW_INSECURE_LOOPBACK_HTTP")]
    pub allow_insecure_loopback_http: bool,

    /// Time allowed to connect to a token endpoint, e.g. `5s`.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_TOKEN_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub token_connect_timeout: Duration,

    /// Time allowed for a whole token request, answer included, e.g. `10s`.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_TOKEN_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub token_request_timeout: Duration,

    /// Log format: `plain` for people, `json` for log pipelines. The level is
    /// set with `RUST_LOG` (default `info`).
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// This instance's name in events; in a cluster, the pod name.
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,

    /// The operator's own namespace, where it keeps its seal-key Secret (and,
    /// with leader election, its Lease). Default: the kubeconfig's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub operator_namespace: Option<String>,

    /// Read the seal key ring from this file (mount it from a Secret). The
    /// file is re-read every 10 s. Format: see the README, "Sealing".
    #[arg(
        long,
        env = "OAUTH_TOKEN_OPERATOR_SEAL_KEYS_FILE",
        conflicts_with = "seal_keys_secret"
    )]
    pub seal_keys_file: Option<std::path::PathBuf>,

    /// Elect a leader on a Lease in the operator's namespace; only the leader
    /// reconciles. Turn on whenever more than one replica runs.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "OAUTH_TOKEN_OPERATOR_LEASE_NAME",
        default_value = "oauth-token-operator"
    )]
    pub lease_name: String,

    /// How long a Lease holds without renewal; a standby takes over at most
    /// this long after the leader dies. Whole seconds.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_LEASE_DURATION", default_value = "30s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long before expiry the leader renews the Lease. Must exceed
    /// --token-request-timeout by at least 1 s: the leader starts a
    /// token-endpoint call only if its Lease outlasts the call.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_LEASE_RENEW_BEFORE", default_value = "15s", value_parser = parse_duration)]
    pub lease_renew_before: Duration,

    /// Token-endpoint calls per second allowed per endpoint host; calls
    /// beyond it wait (counted in oauth_token_operator_rate_limit_waits_total).
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_TOKEN_ENDPOINT_RATE", default_value_t = NonZeroU32::new(10).unwrap())]
    pub token_endpoint_rate: NonZeroU32,

    /// Calls allowed at once above that rate, per endpoint host.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_TOKEN_ENDPOINT_BURST", default_value_t = NonZeroU32::new(20).unwrap())]
    pub token_endpoint_burst: NonZeroU32,

    /// Address of the admin server (`/metrics`, `/livez`, `/readyz`).
    #[arg(
        long,
        env = "OAUTH_TOKEN_OPERATOR_ADMIN_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_address: std::net::SocketAddr,

    /// Without --seal-keys-file: the Secret in the operator's namespace that
    /// holds the key ring; created with a new random key if it does not exist.
    #[arg(
        long,
        env = "OAUTH_TOKEN_OPERATOR_SEAL_KEYS_SECRET",
        default_value = "oauth-token-operator-seal-keys"
    )]
    pub seal_keys_secret: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match cli.command {
        Command::Crd => {
            print!("{}", crd_yaml());
            Ok(())
        }
        Command::Run(args) => run(*args).await,
        Command::Authorize(args) => {
            let client = args.kube.client().await?;
            let (namespace, name) = match args.credential.split_once('/') {
                Some((namespace, name)) => (namespace.to_string(), name.to_string()),
                None => (
                    args.namespace
                        .clone()
                        .unwrap_or_else(|| client.default_namespace().to_string()),
                    args.credential.clone(),
                ),
            };
            if namespace.is_empty() || name.is_empty() || name.contains('/') {
                return Err(format!(
                    "expected <namespace>/<name> or <name>, got {:?}",
                    args.credential
                )
                .into());
            }
            let options = authorize::Options {
                namespace,
                name,
                no_browser: args.no_browser,
                timeout: args.timeout,
                wait: args.wait,
                allow_insecure_loopback_http: args.allow_insecure_loopback_http,
                program: program_name(),
            };
            authorize::run(client, options).await
        }
        Command::Status(args) => status(args).await,
    }
}

impl KubeArgs {
    /// A client for the chosen kubeconfig and context; inside a cluster
    /// without either, the pod's service account.
    async fn client(&self) -> Result<kube::Client, Box<dyn std::error::Error + Send + Sync>> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer().await?,
        };
        Ok(kube::Client::try_from(config)?)
    }
}

/// How the person invoked us: `kubectl oauth` when run as the kubectl
/// plugin (`kubectl-oauth` on the PATH), else `oauth-token-operator`.
pub fn program_name() -> String {
    let invoked = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    match invoked.strip_prefix("kubectl-") {
        Some(plugin) => format!("kubectl {plugin}"),
        None => "oauth-token-operator".into(),
    }
}

async fn status(args: StatusArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let client = args.kube.client().await?;
    let credentials: Api<OAuthCredential> = if args.all_namespaces {
        Api::all(client.clone())
    } else {
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        Api::namespaced(client.clone(), &namespace)
    };
    let list = credentials
        .list(&ListParams::default())
        .await
        .map_err(|e| authorize::api_error("cannot list OAuthCredentials", e))?;
    let now = Timestamp::now();
    let rows = summary::rows(&list.items, &program_name(), now);
    match args.output {
        OutputFormat::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "items": rows }))?
            );
        }
        OutputFormat::Table if rows.is_empty() => eprintln!("No OAuthCredentials found."),
        OutputFormat::Table => print!("{}", summary::table(&rows, args.all_namespaces, now)),
    }
    Ok(())
}

/// The CRD as committed in `crds/`.
pub fn crd_yaml() -> String {
    let yaml = serde_yaml_ng::to_string(&OAuthCredential::crd()).expect("the CRD serialises");
    format!("# Generated by `oauth-token-operator crd`; do not edit.\n---\n{yaml}")
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in files or pipelines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    init_logging(args.log_format);
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    admin::serve(args.admin_address, metrics.clone(), health.clone()).await?;
    let client = kube::Client::try_default().await?;
    let operator_namespace = args
        .operator_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let key_source = match args.seal_keys_file.clone() {
        Some(path) => KeySource::File(path),
        None => KeySource::Secret {
            namespace: operator_namespace.clone(),
            name: args.seal_keys_secret.clone(),
        },
    };
    let ring = keys::load(&client, &key_source).await?;
    info!(source = %key_source, primary = ring.primary(), key_ids = ?ring.key_ids(), "seal keys loaded");
    let keys = Keys::new(ring);
    let (keys_changed_tx, keys_changed) = tokio::sync::watch::channel(0u64);
    tokio::spawn(keys::keep_current(
        client.clone(),
        key_source,
        keys.clone(),
        keys_changed_tx,
    ));
    let mut config = ControllerConfig {
        concurrency: args.concurrency,
        watch_namespace: args.watch_namespace.clone(),
        token_client: TokenClientConfig {
            connect_timeout: args.token_connect_timeout,
            request_timeout: args.token_request_timeout,
            allow_insecure_loopback_http: args.allow_insecure_loopback_http,
        },
        instance: args.instance.clone(),
        fence: Fence::open(),
        metrics: metrics.clone(),
        health: health.clone(),
        endpoint_rate: args.token_endpoint_rate,
        endpoint_burst: args.token_endpoint_burst,
    };
    info!(
        concurrency = config.concurrency,
        namespace = config.watch_namespace.as_deref().unwrap_or("<all>"),
        insecure_loopback_http = config.token_client.allow_insecure_loopback_http,
        leader_election = args.leader_election,
        "starting"
    );

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    if !args.leader_election {
        metrics.set_leader(true);
        controller::run(client, config, keys, keys_changed, stopped(stop)).await;
        info!("stopped");
        return Ok(());
    }

    let identity = args.instance.clone().unwrap_or_else(default_identity);
    let budget = args.token_request_timeout + Duration::from_secs(1);
    if budget >= args.lease_renew_before || args.lease_renew_before >= args.lease_duration {
        return Err(format!(
            "need --token-request-timeout + 1s < --lease-renew-before < --lease-duration (got {:?}, {:?}, {:?})",
            args.token_request_timeout, args.lease_renew_before, args.lease_duration
        )
        .into());
    }
    config.fence = Fence::watching(
        client.clone(),
        &operator_namespace,
        &args.lease_name,
        &identity,
        budget,
    );
    loop {
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&operator_namespace)
            .with_identity(&identity)
            .with_duration(args.lease_duration.as_secs())
            .with_grace(args.lease_renew_before.as_secs())
            .with_field_manager(controller::FIELD_MANAGER)
            .build()
            .await?;
        let (mut leading, lease_task) = manager.watch().await;
        info!(
            identity,
            lease = format!("{operator_namespace}/{}", args.lease_name),
            "standing by for leadership"
        );
        // A standby that knows it is one is ready.
        metrics.set_leader(false);
        health.set_ready(true);
        let mut stopping = stop.clone();
        let became = tokio::select! {
            became = leading.wait_for(|leader| *leader) => Some(became.is_ok()),
            _ = stopping.wait_for(|stop| *stop) => None,
        };
        match became {
            Some(true) => {}
            Some(false) => return Err("the lease manager stopped".into()),
            None => {
                drop(leading);
                let _ = lease_task.await;
                info!("stopped");
                return Ok(());
            }
        }
        info!(identity, "became the leader");
        metrics.set_leader(true);
        health.set_ready(false);
        let mut watching = leading.clone();
        let lost = async move {
            let _ = watching.wait_for(|leader| !*leader).await;
        };
        let stop_or_lost = {
            let stopping = stopped(stop.clone());
            async move {
                tokio::select! {
                    _ = lost => {}
                    _ = stopping => {}
                }
            }
        };
        controller::run(
            client.clone(),
            config.clone(),
            keys.clone(),
            keys_changed.clone(),
            stop_or_lost,
        )
        .await;
        // Closing the channel makes the lease manager release the Lease, so a
        // standby takes over at once rather than when it expires.
        drop(leading);
        match lease_task.await {
            Ok(Ok(_)) => info!("released the lease"),
            Ok(Err(error)) => warn!(%error, "could not release the lease; it expires by itself"),
            Err(error) => warn!(%error, "lease task failed"),
        }
        if *stop.borrow() {
            info!("stopped");
            return Ok(());
        }
        warn!(identity, "lost leadership; standing by again");
    }
}

/// Completes once a shutdown was requested.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    info!("shutdown signal received; finishing in-flight refreshes");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_run_flag_has_an_environment_variable() {
        let command = Cli::command();
        let run = command.find_subcommand("run").expect("run subcommand");
        for arg in run.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_env().is_some(),
                "--{id} has no environment variable"
            );
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
