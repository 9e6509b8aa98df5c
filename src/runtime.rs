//! The composition root of `oauth-token-operator run`: builds the admin
//! server, the key ring, the fence and the controller from the flags, and
//! supervises every long-lived task. If any of them ends (the admin server,
//! the seal-key reload, the Lease watch behind the fence, or the controller
//! before it was asked to stop), the process says which and exits non-zero,
//! so that Kubernetes restarts it rather than letting it run on degraded.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::admin::{Admin, Health};
use crate::breaker::Shares;
use crate::clock::SharedClock;
use crate::endpoint::{AllowedEndpoint, EndpointPolicy};
use crate::keys::{self, KeySource, Keys, KeysError};
use crate::leader::{Fence, LeaseRef};
use crate::metrics::Metrics;
use crate::reconcile::{self, ControllerConfig, FIELD_MANAGER, ShardScope};
use crate::schedule::parse_duration;
use crate::shards::ShardLeases;
use crate::supervisor::{Ended, Ending, Supervisor};
use crate::token_client::{ExtraRoots, ExtraRootsError, TokenClientConfig};

/// The flags of `run`. Every flag can also be set through the environment
/// variable named in its help.
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

    /// A token or authorization endpoint credentials may name, besides
    /// Google's (always allowed): an http(s) URL with a host, an optional
    /// port (`:*` for any) and an optional path prefix, e.g.
    /// `https://login.example.com/oauth2/`. Repeat the flag, or separate
    /// entries with commas in the environment variable.
    #[arg(
        long = "allowed-endpoint",
        env = "OAUTH_TOKEN_OPERATOR_ALLOWED_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub allowed_endpoints: Vec<AllowedEndpoint>,

    /// Time allowed to connect to a token endpoint, e.g. `5s`.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_TOKEN_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub token_connect_timeout: Duration,

    /// Time allowed for a whole token request, answer included, e.g. `10s`.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_TOKEN_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub token_request_timeout: Duration,

    /// A PEM file of CA certificates to trust for token endpoints, besides
    /// the system's (a provider behind a private CA, a TLS-inspecting proxy).
    /// Read once at start.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_EXTRA_CA_FILE", value_name = "PATH")]
    pub extra_ca_file: Option<std::path::PathBuf>,

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

    /// Name of the leader-election Lease; with --shards, the prefix of the
    /// shard and member Leases.
    #[arg(
        long,
        env = "OAUTH_TOKEN_OPERATOR_LEASE_NAME",
        default_value = "oauth-token-operator"
    )]
    pub lease_name: String,

    /// Split the credentials into this many shards (a stable hash of
    /// namespace/name), one Lease each, so that several replicas work at
    /// once, each on its share of the shards. 1: one leader does all.
    /// Needs --leader-election; every replica must use the same number.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: u32,

    /// How long a Lease holds without renewal; a standby takes over at most
    /// this long after the leader dies. Whole seconds.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_LEASE_DURATION", default_value = "30s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long before expiry the leader renews the Lease. Must be at least
    /// --token-request-timeout + 1 s + --lease-skew-margin: the leader starts
    /// a token-endpoint call only if its Lease outlasts the call by the
    /// margin.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_LEASE_RENEW_BEFORE", default_value = "20s", value_parser = parse_duration)]
    pub lease_renew_before: Duration,

    /// The clock skew between replicas the fence tolerates: the leader stops
    /// calling token endpoints this long before its Lease (measured on its
    /// monotonic clock from when it saw its last renewal) could expire.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_LEASE_SKEW_MARGIN", default_value = "5s", value_parser = parse_duration)]
    pub lease_skew_margin: Duration,

    /// Token-endpoint calls per second allowed per endpoint (scheme, host,
    /// port); calls beyond it wait (counted in
    /// oauth_token_operator_rate_limit_waits_total).
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_TOKEN_ENDPOINT_RATE", default_value_t = NonZeroU32::new(10).unwrap())]
    pub token_endpoint_rate: NonZeroU32,

    /// Calls allowed at once above that rate, per endpoint.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_TOKEN_ENDPOINT_BURST", default_value_t = NonZeroU32::new(20).unwrap())]
    pub token_endpoint_burst: NonZeroU32,

    /// Token-endpoint calls in flight at once to one endpoint. Default: half
    /// of --concurrency, so that an endpoint that does not answer cannot hold
    /// every slot.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_MAX_CALLS_PER_ENDPOINT", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_calls_per_endpoint: Option<u16>,

    /// Token-endpoint calls in flight at once from one namespace. Default:
    /// three quarters of --concurrency.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_MAX_CALLS_PER_NAMESPACE", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_calls_per_namespace: Option<u16>,

    /// The shortest interval between scheduled refreshes of one credential.
    /// A provider issuing tokens that live shorter gets this interval (and
    /// the reason LifetimeBelowMinimum), not a refresh loop. At least 1 s.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_MIN_REFRESH_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub min_refresh_interval: Duration,

    /// How long before a refresh token's own expiry (a time-limited grant,
    /// `status.refreshToken.expiresAt`) the credential turns to the Ready
    /// reason RefreshTokenExpiring, with a warning event.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_REFRESH_TOKEN_EXPIRY_WARNING", default_value = "168h", value_parser = parse_duration)]
    pub refresh_token_expiry_warning: Duration,

    /// A `token_type` accepted in token-endpoint answers (compared without
    /// case; written to output Secrets as given here). Repeat the flag for
    /// more; answers with another type are refused (InvalidTokenResponse).
    #[arg(
        long = "token-type",
        env = "OAUTH_TOKEN_OPERATOR_TOKEN_TYPES",
        value_delimiter = ',',
        default_value = "Bearer"
    )]
    pub token_types: Vec<String>,

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

    /// How long a watch of the API server may keep failing (for example
    /// with 403 Forbidden) before `/readyz` reports the replica unready.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_WATCH_FAILURE_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub watch_failure_grace: Duration,

    /// How long the leader may go without finishing a reconcile while a
    /// credential's refresh is due before `/livez` answers 503 (so the
    /// kubelet restarts it); `0s` never fails.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_STALL_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub stall_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Names of the supervised tasks.
pub mod task {
    pub const ADMIN_SERVER: &str = "admin server";
    pub const SEAL_KEY_RELOAD: &str = "seal-key reload";
    pub const LEASE_WATCH: &str = "lease watch";
    pub const CONTROLLER: &str = "controller";
    pub const SHARD_LEASES: &str = "shard leases";
}

/// Why the operator could not start, or stopped before it was asked to.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("cannot bind the admin server: {0}")]
    Admin(std::io::Error),
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    ExtraRoots(#[from] ExtraRootsError),
    #[error(
        "need --token-request-timeout + 1s + --lease-skew-margin (at least 1s) <= --lease-renew-before < --lease-duration (got {request:?}, {margin:?}, {renew_before:?}, {duration:?})"
    )]
    LeaseTimings {
        request: Duration,
        margin: Duration,
        renew_before: Duration,
        duration: Duration,
    },
    #[error("leader election: {0}")]
    Lease(#[from] LeaseManagerError),
    #[error("the lease manager stopped")]
    LeaseManagerStopped,
    #[error("--shards above 1 needs --leader-election: the shards are Leases")]
    ShardsWithoutLeaderElection,
    #[error(transparent)]
    Controller(#[from] reconcile::Stopped),
    #[error("the {task} task ended ({why}); exiting so that the operator is restarted")]
    TaskEnded { task: &'static str, why: String },
}

/// Runs the operator until SIGTERM or Ctrl-C (`Ok`), or until a task it
/// needs ends (`Err`).
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    init_logging(args.log_format);
    let client = Client::try_default().await?;
    let running = start(&args, client, crate::clock::system()).await?;
    running.until_stopped(shutdown_signal()).await
}

/// A started operator and its tasks.
pub struct Running {
    tasks: Supervisor,
    stop: watch::Sender<bool>,
    admin_address: SocketAddr,
}

/// Starts every task of the operator.
pub async fn start(
    args: &RunArgs,
    client: Client,
    clock: SharedClock,
) -> Result<Running, RunError> {
    let lease_budget = lease_budget(args)?;
    let extra_roots = extra_roots(args)?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(
        clock.clone(),
        args.watch_failure_grace,
        args.stall_timeout,
    ));
    let admin = Admin::bind(args.admin_address)
        .await
        .map_err(RunError::Admin)?;
    let admin_address = admin.address();
    let mut tasks = Supervisor::default();
    tasks.spawn(
        task::ADMIN_SERVER,
        admin.serve(metrics.clone(), health.clone()),
    );

    let operator_namespace = args
        .operator_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let (keys, keys_changed) =
        seal_keys(args, &client, &clock, &operator_namespace, &mut tasks).await?;

    let mut config = controller_config(args, metrics, health, clock, &operator_namespace);
    config.token_client.extra_roots = extra_roots;
    let (stop_tx, stop) = watch::channel(false);
    info!(
        concurrency = config.concurrency,
        namespace = config.watch_namespace.as_deref().unwrap_or("<all>"),
        insecure_loopback_http = config.token_client.allow_insecure_loopback_http,
        allowed_endpoints = ?args.allowed_endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
        leader_election = args.leader_election,
        "starting"
    );
    let controller = Controller {
        client,
        keys,
        keys_changed,
        stop,
    };
    spawn_controller(
        args,
        controller,
        config,
        lease_budget,
        operator_namespace,
        &mut tasks,
    );
    Ok(Running {
        tasks,
        stop: stop_tx,
        admin_address,
    })
}

impl Running {
    /// The bound address of the admin server.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// Kills one task, as a crash would; whether it was running.
    pub fn abort(&self, task: &str) -> bool {
        self.tasks.abort(task)
    }

    /// Asks the controller to finish its in-flight refreshes and stop.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Runs until the controller has stopped after `stop` or `signal`
    /// (`Ok`), or until any task ends first (`Err`, naming it). Every other
    /// task is stopped either way.
    pub async fn until_stopped(mut self, signal: impl Future<Output = ()>) -> Result<(), RunError> {
        tokio::pin!(signal);
        let mut signalled = false;
        let ended = loop {
            tokio::select! {
                () = &mut signal, if !signalled => {
                    signalled = true;
                    self.stop();
                }
                ended = self.tasks.next() => break ended,
            }
        };
        let stopping = *self.stop.borrow();
        self.tasks.shutdown().await;
        match ended {
            Some(Ended {
                task: task::CONTROLLER,
                ending: Ending::Finished,
            }) if stopping => {
                info!("stopped");
                Ok(())
            }
            Some(Ended { task, ending }) => {
                let why = match ending {
                    Ending::Finished => "it returned".to_string(),
                    Ending::Failed(why) | Ending::Died(why) => why,
                };
                error!(task, why, "a task the operator needs ended; exiting");
                Err(RunError::TaskEnded { task, why })
            }
            None => Err(RunError::TaskEnded {
                task: "every",
                why: "no task was left".into(),
            }),
        }
    }
}

/// Loads the seal key ring and supervises its reload; the ring, and what
/// tells of its changes.
async fn seal_keys(
    args: &RunArgs,
    client: &Client,
    clock: &SharedClock,
    operator_namespace: &str,
    tasks: &mut Supervisor,
) -> Result<(Keys, watch::Receiver<u64>), RunError> {
    let key_source = match args.seal_keys_file.clone() {
        Some(path) => KeySource::File(path),
        None => KeySource::Secret {
            namespace: operator_namespace.to_string(),
            name: args.seal_keys_secret.clone(),
        },
    };
    let ring = keys::load(client, &key_source, clock.now()).await?;
    info!(source = %key_source, primary = ring.primary(), key_ids = ?ring.key_ids(), "seal keys loaded");
    let keys = Keys::new(ring);
    let (keys_changed_tx, keys_changed) = watch::channel(0u64);
    let reload = keys::keep_current(client.clone(), key_source, keys.clone(), keys_changed_tx);
    tasks.spawn(task::SEAL_KEY_RELOAD, never_fails(reload));
    Ok((keys, keys_changed))
}

/// Runs the controller as the flags say: alone, as the leader of one Lease,
/// or on the shards this replica holds.
fn spawn_controller(
    args: &RunArgs,
    controller: Controller,
    mut config: ControllerConfig,
    lease_budget: Option<Duration>,
    operator_namespace: String,
    tasks: &mut Supervisor,
) {
    let Some(budget) = lease_budget else {
        config.metrics.set_leader(true);
        tasks.spawn(task::CONTROLLER, controller.run(config));
        return;
    };
    let lease = Lease::from_args(args, operator_namespace);
    if args.shards > 1 {
        let leases = ShardLeases::new(
            controller.client.clone(),
            &lease.namespace,
            &lease.name,
            &lease.identity,
            args.shards,
            (lease.duration, lease.renew_before, budget),
            config.clock.clone(),
        );
        config.fence = Fence::sharded(
            args.shards,
            leases.holds.clone(),
            budget,
            args.lease_skew_margin,
        );
        let (held_tx, held) = watch::channel(BTreeSet::new());
        let (done_tx, done) = watch::channel(false);
        tasks.spawn(task::SHARD_LEASES, leases.run(held_tx, done));
        tasks.spawn(
            task::CONTROLLER,
            controller.shard(config, args.shards, held, done_tx),
        );
        return;
    }
    let lease_ref = LeaseRef {
        namespace: &lease.namespace,
        name: &lease.name,
        identity: &lease.identity,
        margin: args.lease_skew_margin,
    };
    let (fence, watch) = Fence::watching(
        controller.client.clone(),
        lease_ref,
        budget,
        config.health.clone(),
        config.clock.clone(),
    );
    config.fence = fence;
    tasks.spawn(task::LEASE_WATCH, never_fails(watch));
    tasks.spawn(task::CONTROLLER, controller.lead(config, lease));
}

/// The longest a token-endpoint call may take plus a second, when leader
/// election is on (`None` when off); the Lease timings must leave room for it.
fn lease_budget(args: &RunArgs) -> Result<Option<Duration>, RunError> {
    if !args.leader_election {
        if args.shards > 1 {
            return Err(RunError::ShardsWithoutLeaderElection);
        }
        return Ok(None);
    }
    let budget = args.token_request_timeout + Duration::from_secs(1);
    if args.lease_skew_margin.is_zero()
        || budget + args.lease_skew_margin > args.lease_renew_before
        || args.lease_renew_before >= args.lease_duration
    {
        return Err(RunError::LeaseTimings {
            request: args.token_request_timeout,
            margin: args.lease_skew_margin,
            renew_before: args.lease_renew_before,
            duration: args.lease_duration,
        });
    }
    Ok(Some(budget))
}

fn controller_config(
    args: &RunArgs,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    clock: SharedClock,
    operator_namespace: &str,
) -> ControllerConfig {
    ControllerConfig {
        concurrency: args.concurrency,
        watch_namespace: args.watch_namespace.clone(),
        token_client: TokenClientConfig {
            connect_timeout: args.token_connect_timeout,
            request_timeout: args.token_request_timeout,
            allow_insecure_loopback_http: args.allow_insecure_loopback_http,
            // Read by `start`, which may fail; this function only maps flags.
            extra_roots: ExtraRoots::default(),
        },
        instance: args.instance.clone(),
        fence: Fence::open(),
        metrics,
        health,
        endpoint_rate: args.token_endpoint_rate,
        endpoint_burst: args.token_endpoint_burst,
        clock,
        endpoints: EndpointPolicy {
            allow_insecure_loopback_http: args.allow_insecure_loopback_http,
            allowed: args.allowed_endpoints.clone(),
        },
        operator_namespace: operator_namespace.to_string(),
        shares: Shares {
            per_endpoint: usize::from(
                args.max_calls_per_endpoint
                    .unwrap_or((args.concurrency / 2).max(1)),
            ),
            per_namespace: usize::from(
                args.max_calls_per_namespace
                    .unwrap_or((args.concurrency * 3 / 4).max(1)),
            ),
        },
        token_types: args.token_types.clone(),
        min_refresh_interval: args.min_refresh_interval.max(Duration::from_secs(1)),
        refresh_token_warning: args.refresh_token_expiry_warning,
        shard_scope: None,
        memory: Default::default(),
    }
}

/// The extra CA certificates of `--extra-ca-file`, read before anything
/// starts so that a file that cannot be used stops the operator at once.
fn extra_roots(args: &RunArgs) -> Result<ExtraRoots, RunError> {
    let Some(path) = &args.extra_ca_file else {
        return Ok(ExtraRoots::default());
    };
    let roots = ExtraRoots::from_pem_file(path)?;
    info!(file = %path.display(), certificates = roots.len(), "extra CA certificates loaded");
    Ok(roots)
}

/// A task that runs until the process ends: its ending at all is the failure.
async fn never_fails(task: impl Future<Output = ()>) -> Result<(), std::convert::Infallible> {
    task.await;
    Ok(())
}

/// The Lease this replica competes for.
struct Lease {
    namespace: String,
    name: String,
    identity: String,
    duration: Duration,
    renew_before: Duration,
}

impl Lease {
    fn from_args(args: &RunArgs, namespace: String) -> Self {
        Lease {
            namespace,
            name: args.lease_name.clone(),
            identity: args.instance.clone().unwrap_or_else(default_identity),
            duration: args.lease_duration,
            renew_before: args.lease_renew_before,
        }
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// What the controller task needs besides its configuration.
struct Controller {
    client: Client,
    keys: Keys,
    keys_changed: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
}

impl Controller {
    /// Without leader election: the controller, until stopped.
    async fn run(self, config: ControllerConfig) -> Result<(), RunError> {
        let stopping = stopped(self.stop.clone());
        reconcile::run(self.client, config, self.keys, self.keys_changed, stopping).await?;
        Ok(())
    }

    /// With leader election: stand by until this replica holds the Lease,
    /// run the controller while it does, and stand by again when it loses it.
    async fn lead(self, config: ControllerConfig, lease: Lease) -> Result<(), RunError> {
        loop {
            let manager = LeaseManagerBuilder::new(self.client.clone(), &lease.name)
                .with_namespace(&lease.namespace)
                .with_identity(&lease.identity)
                .with_duration(lease.duration.as_secs())
                .with_grace(lease.renew_before.as_secs())
                .with_field_manager(FIELD_MANAGER)
                .build()
                .await?;
            let (leading, lease_task) = manager.watch().await;
            info!(
                identity = lease.identity,
                lease = format!("{}/{}", lease.namespace, lease.name),
                "standing by for leadership"
            );
            // A standby that knows it is one is ready.
            config.metrics.set_leader(false);
            config.health.set_ready(true);
            let became = self.stand_by(leading.clone()).await;
            if became {
                info!(identity = lease.identity, "became the leader");
                self.while_leading(&config, leading.clone()).await?;
            }
            // Closing the channel makes the lease manager release the Lease,
            // so a standby takes over at once rather than when it expires.
            drop(leading);
            match lease_task.await {
                Ok(Ok(_)) if became => info!("released the lease"),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    warn!(%error, "could not release the lease; it expires by itself")
                }
                Err(error) => warn!(%error, "lease task failed"),
            }
            if *self.stop.borrow() {
                return Ok(());
            }
            if !became {
                return Err(RunError::LeaseManagerStopped);
            }
            warn!(
                identity = lease.identity,
                "lost leadership; standing by again"
            );
        }
    }

    /// Waits until this replica leads (`true`), or until a stop is asked for
    /// or the lease manager stops (`false`).
    async fn stand_by(&self, mut leading: watch::Receiver<bool>) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            became = leading.wait_for(|leader| *leader) => became.is_ok(),
            _ = stop.wait_for(|stop| *stop) => false,
        }
    }

    /// With sharding: the controller over the credentials of the shards
    /// this replica holds, started again whenever that set changes (a new
    /// set is a new list of credentials), idle while it holds none. Tells
    /// the shard Leases to go (`done`) once its last refresh has ended.
    async fn shard(
        self,
        config: ControllerConfig,
        shards: u32,
        mut held: watch::Receiver<BTreeSet<u32>>,
        done: watch::Sender<bool>,
    ) -> Result<(), RunError> {
        config.health.set_ready(true);
        let result = loop {
            let current = held.borrow_and_update().clone();
            config.metrics.set_shards_held(current.len());
            config.metrics.set_leader(!current.is_empty());
            let mut stop = self.stop.clone();
            if current.is_empty() {
                tokio::select! {
                    changed = held.changed() => match changed {
                        Ok(()) => continue,
                        Err(_) => break Err(RunError::LeaseManagerStopped),
                    },
                    _ = stop.wait_for(|s| *s) => break Ok(()),
                }
            }
            info!(shards = ?current, "serving shards");
            let mut scoped = config.clone();
            scoped.shard_scope = Some(ShardScope {
                shards,
                held: current,
            });
            let mut changes = held.clone();
            let until = async move {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            };
            let run = reconcile::run(
                self.client.clone(),
                scoped,
                self.keys.clone(),
                self.keys_changed.clone(),
                until,
            );
            if let Err(error) = run.await {
                break Err(error.into());
            }
            if *self.stop.borrow() {
                break Ok(());
            }
        };
        config.metrics.set_leader(false);
        let _ = done.send(true);
        result
    }

    /// Runs the controller until leadership is lost or a stop is asked for.
    async fn while_leading(
        &self,
        config: &ControllerConfig,
        mut leading: watch::Receiver<bool>,
    ) -> Result<(), RunError> {
        config.metrics.set_leader(true);
        config.health.set_ready(false);
        let stopping = stopped(self.stop.clone());
        let lost_or_stopped = async move {
            tokio::select! {
                _ = leading.wait_for(|leader| !*leader) => {}
                () = stopping => {}
            }
        };
        let run = reconcile::run(
            self.client.clone(),
            config.clone(),
            self.keys.clone(),
            self.keys_changed.clone(),
            lost_or_stopped,
        );
        run.await?;
        config.metrics.set_leader(false);
        Ok(())
    }
}

/// Completes once a stop was asked for.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
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
