//! Scale and punctuality benchmark: the release-built operator against the
//! real control plane (`KUBECONFIG`) and a local token endpoint, with N
//! credentials, and optionally its peer (External Secrets Operator) doing the
//! same job against the same control plane and endpoint. Run it with
//! `scripts/bench`, which starts a private control plane, runs this, and
//! draws the plots. It prints figures; it asserts nothing (targets are judged
//! in the summary it writes).
//!
//! Phases, in one run:
//! 1. ceiling: a plain client server-side-applies Secrets as fast as the API
//!    server takes them (16 and 64 in flight), for the write ceiling;
//! 2. start: N credentials exist, the operator starts with no tokens;
//! 3. steady: the operator runs for `--steady` seconds; every refresh is timed
//!    against the `status.refreshAt` it published;
//! 4. echo: the endpoint sends the unchanged refresh token back in every
//!    answer (as some providers do) for `--echo-seconds`;
//! 5. restart: with every token valid, the operator restarts; calls and writes
//!    during its start-up pass are counted;
//! 6. outage: the operator is stopped until every credential is due, then
//!    started: how it spreads the load, and whether a token expires that the
//!    rate limit would have allowed to refresh in time;
//! 7. churn: the run's credentials are deleted, then `--churn-rounds` times
//!    `--churn-credentials` are created, refreshed and deleted, with the
//!    operator's RSS and its tracked-entries gauges read after each round;
//! 8. with `--peer eso`: ESO's start, steady and restart phases, with the
//!    same N, lifetime and endpoint (the operator is stopped by then).

mod audit;
mod churn;
mod cluster;
mod eso;
mod operator;
mod provider;
mod report;
mod sampler;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use kube::Client;

use cluster::Group;
use operator::{OPERATOR_NAMESPACE, OPERATOR_USER, OperatorConfig, Process};
use provider::{Provider, now_ms};
use report::{Peer, Phase, Results};
use sampler::Sampler;

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
    /// How long the echo phase runs, in seconds (default: one lifetime; 0
    /// skips it).
    #[arg(long)]
    pub echo_seconds: Option<u64>,
    /// Skip the outage phase (it waits until every token is due).
    #[arg(long)]
    pub skip_outage: bool,
    /// Rounds of the churn phase (0 skips it).
    #[arg(long, default_value_t = 3)]
    pub churn_rounds: usize,
    /// Credentials created and deleted in each churn round.
    #[arg(long, default_value_t = 10_000)]
    pub churn_credentials: usize,
    /// The operator's --token-endpoint-rate (calls per second).
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// The operator's --token-endpoint-burst.
    #[arg(long, default_value_t = 100)]
    pub burst: u32,
    /// The operator's --concurrency.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// An environment variable for the operator process (`KEY=VALUE`;
    /// repeat), e.g. `MALLOC_ARENA_MAX=2` to see what the allocator holds.
    #[arg(long = "operator-env")]
    pub operator_env: Vec<String>,
    /// Run the operator under this command (split on spaces), e.g.
    /// `heaptrack` for a heap profile of each start (heaptrack names its
    /// files after the pid). RSS and CPU are then the wrapper's.
    #[arg(long)]
    pub operator_wrapper: Option<String>,
    /// Also run a peer doing the same job: `eso`.
    #[arg(long)]
    pub peer: Option<String>,
    /// ESO's controller binary (scripts/peer-eso bin).
    #[arg(long)]
    pub eso_binary: Option<PathBuf>,
    /// ESO's CRDs (scripts/peer-eso crds).
    #[arg(long)]
    pub eso_crds: Option<PathBuf>,
    /// ESO's `refreshInterval` in seconds (default: three quarters of the
    /// lifetime, as 45 min for Google's one-hour tokens).
    #[arg(long)]
    pub eso_refresh_interval: Option<u64>,
    /// The control plane's audit log.
    #[arg(long)]
    pub audit_log: PathBuf,
    /// The control plane's state folder (its pid files): the API server's
    /// and etcd's CPU and memory are sampled from them.
    #[arg(long)]
    pub control_plane_dir: Option<PathBuf>,
    /// Where results go.
    #[arg(long)]
    pub out: PathBuf,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl Args {
    pub fn echo(&self) -> u64 {
        self.echo_seconds.unwrap_or(self.lifetime)
    }
    pub fn eso_interval(&self) -> u64 {
        self.eso_refresh_interval.unwrap_or(self.lifetime * 3 / 4)
    }
    fn churn(&self) -> usize {
        if self.churn_rounds == 0 {
            0
        } else {
            self.churn_credentials
        }
    }
    fn peers(&self) -> usize {
        if self.peer.is_some() {
            self.credentials
        } else {
            0
        }
    }
}

#[tokio::main]
async fn main() {
    oauth_token_operator::tls::install_crypto_provider();
    let args = Args::parse();
    if let Some(peer) = &args.peer {
        assert_eq!(peer, "eso", "the only peer is `eso`");
        assert!(
            args.eso_binary.is_some() && args.eso_crds.is_some(),
            "--peer eso needs --eso-binary and --eso-crds (scripts/bench passes them)"
        );
    }
    std::fs::create_dir_all(&args.out).expect("create the results folder");
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG names a reachable control plane (scripts/bench sets it)");
    let mut results = Results::new(&args);
    let sampler = Sampler::start();
    if let Some(dir) = &args.control_plane_dir {
        for component in ["kube-apiserver", "etcd"] {
            match sampler::pid_file(dir, component) {
                Some(pid) => sampler.follow(component, pid),
                None => say(&format!("no pid file for {component} in {}", dir.display())),
            }
        }
    }
    results.started_at = now_ms();
    say(&format!(
        "{} credentials, tokens live {} s, rate limit {}/s (burst {}), concurrency {}",
        args.credentials, args.lifetime, args.rate, args.burst, args.concurrency
    ));

    // Credentials 0..N are the run's, then the churn rounds', then the peer's.
    let peer_group = Group {
        prefix: "eso-bench",
        start: args.credentials + args.churn(),
        count: args.peers(),
    };
    let provider = Provider::new(peer_group.range().end, args.lifetime);
    let endpoint = provider.serve().await;

    say("ceiling: a plain client applying Secrets");
    for in_flight in [16usize, 64] {
        let rate = cluster::write_ceiling(&client, in_flight).await;
        say(&format!("  {in_flight} in flight: {rate:.0} writes/s"));
        results.ceiling.push((in_flight, rate));
    }

    run_operator(&args, &client, &provider, &endpoint, &sampler, &mut results).await;
    if args.peer.is_some() {
        let peer = run_eso(&args, &client, &provider, &endpoint, &peer_group, &sampler).await;
        results.reads.insert("eso-steady", peer.reads);
        results.peer = Some(peer);
    }

    // Let the last writes land in the audit log.
    tokio::time::sleep(Duration::from_secs(3)).await;
    results.calls = provider.calls();
    results.accepted = provider.accepted();
    results.writes = audit::writes_by(&args.audit_log, OPERATOR_USER);
    if let Some(peer) = results.peer.as_mut() {
        peer.writes = audit::writes_by(&args.audit_log, eso::ESO_USER);
    }
    results.samples = sampler.samples();
    results.load = sampler.load();
    results.finished_at = now_ms();
    results.machine = report::machine();
    let summary = results.write(&args.out);
    println!("\n{summary}");
    println!("results in {}", args.out.display());
}

/// The operator's phases: start, steady, echo, restart, outage, churn.
async fn run_operator(
    args: &Args,
    client: &Client,
    provider: &std::sync::Arc<Provider>,
    endpoint: &str,
    sampler: &Sampler,
    results: &mut Results,
) {
    let main_group = Group {
        prefix: "oto-bench",
        start: 0,
        count: args.credentials,
    };
    say("creating credentials");
    cluster::ensure_crd(client).await;
    let created = Instant::now();
    cluster::create_credentials(client, endpoint, &main_group).await;
    results.create_seconds = created.elapsed().as_secs_f64();
    say(&format!(
        "  {} credentials (and their Secrets) in {:.1} s",
        args.credentials, results.create_seconds
    ));
    let watch = tokio::spawn(cluster::watch_credentials(client.clone(), provider.clone()));
    cluster::create_namespace(client, OPERATOR_NAMESPACE).await;
    let config = OperatorConfig {
        kubeconfig: cluster::impersonating_kubeconfig(
            client,
            OPERATOR_USER,
            "cluster-admin",
            &args.out,
        )
        .await,
        admin: free_port(),
        log: args.out.join("operator.log"),
    };
    let admin = config.admin;
    let mut operator = operator::start(args, &config, sampler);

    let phase = Phase::begin("start");
    let started = Instant::now();
    let scheduled =
        operator::wait_scheduled(admin, args.credentials, started, Duration::from_secs(7200)).await;
    let ready = wait_ready(
        provider,
        main_group.range(),
        started,
        Duration::from_secs(7200),
    )
    .await;
    results.start_to_scheduled = scheduled;
    results.start_to_ready = ready;
    results.phases.push(phase.end());
    say(&format!(
        "  every credential Ready {ready:.1} s after the operator started (scheduled after {scheduled:.1} s)"
    ));

    say(&format!("steady: {} s", args.steady));
    let reads = cluster::api_reads(client).await;
    let phase = Phase::begin("steady");
    tokio::time::sleep(Duration::from_secs(args.steady)).await;
    results.phases.push(phase.end());
    results
        .reads
        .insert("steady", cluster::api_reads(client).await - reads);

    if args.echo() > 0 {
        say(&format!(
            "echo: {} s of answers that send the refresh token back unchanged",
            args.echo()
        ));
        provider.set_echo(true);
        let phase = Phase::begin("echo");
        tokio::time::sleep(Duration::from_secs(args.echo())).await;
        results.phases.push(phase.end());
        provider.set_echo(false);
    }

    say("restart with every token valid");
    operator.stop().await;
    let phase = Phase::begin("restart");
    operator = operator::start(args, &config, sampler);
    let scheduled = operator::wait_scheduled(
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

    if !args.skip_outage {
        operator = outage(
            args,
            provider,
            &main_group,
            operator,
            &config,
            sampler,
            results,
        )
        .await;
    }

    if args.churn_rounds > 0 {
        let churn_group = Group {
            prefix: "oto-churn",
            start: args.credentials,
            count: args.churn(),
        };
        let phase = Phase::begin("churn");
        let churn = churn::Churn {
            client,
            provider,
            endpoint,
            admin,
            sampler,
        };
        results.churn = churn
            .run(&main_group, &churn_group, args.churn_rounds)
            .await;
        results.phases.push(phase.end());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    operator.stop().await;
    watch.abort();
}

/// Stopped until every credential is due, then started again.
async fn outage(
    args: &Args,
    provider: &Provider,
    group: &Group,
    mut operator: Process,
    config: &OperatorConfig,
    sampler: &Sampler,
    results: &mut Results,
) -> Process {
    use std::sync::atomic::Ordering;
    say("outage: stopped until every credential is due");
    operator.stop().await;
    let due = provider.refresh_at[group.range()]
        .iter()
        .map(|t| t.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let wait = (due + 2_000 - now_ms()).max(0) as u64;
    say(&format!("  waiting {:.0} s", wait as f64 / 1000.0));
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let expiries: Vec<i64> = provider.expiry[group.range()]
        .iter()
        .map(|t| t.load(Ordering::Relaxed))
        .collect();
    let phase = Phase::begin("outage");
    let operator = operator::start(args, config, sampler);
    let recovered =
        wait_all_refreshed_since(provider, group, phase.start, Duration::from_secs(7200)).await;
    results.outage_recovery = recovered;
    results.outage_expiries = expiries;
    results.phases.push(phase.end());
    say(&format!(
        "  every credential refreshed {recovered:.1} s after the start"
    ));
    operator
}

/// ESO's phases, with the same N, lifetime and endpoint.
async fn run_eso(
    args: &Args,
    client: &Client,
    provider: &std::sync::Arc<Provider>,
    endpoint: &str,
    group: &Group,
    sampler: &Sampler,
) -> Peer {
    let binary = args.eso_binary.clone().unwrap();
    let interval = args.eso_interval();
    let mut peer = Peer::new(group.range(), interval);
    say(&format!(
        "peer: External Secrets Operator, {} ExternalSecrets with Webhook generators, refreshInterval {interval} s",
        group.count
    ));
    eso::install_crds(client, args.eso_crds.as_ref().unwrap()).await;
    let kubeconfig = eso::kubeconfig(client, &args.out).await;
    let created = Instant::now();
    eso::create(client, endpoint, group, interval).await;
    peer.create_seconds = created.elapsed().as_secs_f64();
    say(&format!(
        "  {} ExternalSecrets (with their generators and Secrets) in {:.1} s",
        group.count, peer.create_seconds
    ));
    let watch = tokio::spawn(eso::watch_outputs(client.clone(), provider.clone()));
    let metrics = free_port();
    let log = args.out.join("eso.log");
    let mut process = eso::start(&binary, &kubeconfig, metrics, &log, sampler);

    let phase = Phase::begin("eso-start");
    let started = Instant::now();
    peer.start_to_present =
        wait_ready(provider, group.range(), started, Duration::from_secs(7200)).await;
    peer.phases.push(phase.end());
    say(&format!(
        "  every target Secret present {:.1} s after ESO started",
        peer.start_to_present
    ));

    say(&format!("peer steady: {} s", args.steady));
    let reads = cluster::api_reads(client).await;
    let phase = Phase::begin("eso-steady");
    tokio::time::sleep(Duration::from_secs(args.steady)).await;
    peer.phases.push(phase.end());
    peer.reads = cluster::api_reads(client).await - reads;

    say("peer restart");
    process.stop().await;
    let phase = Phase::begin("eso-restart");
    let mut process = eso::start(&binary, &kubeconfig, metrics, &log, sampler);
    peer.restart_to_reconciled = eso::wait_reconciled(
        metrics,
        group.count,
        Instant::now(),
        Duration::from_secs(900),
    )
    .await;
    peer.phases.push(phase.end());
    say(&format!(
        "  every ExternalSecret reconciled {:.1} s after the start",
        peer.restart_to_reconciled
    ));
    process.stop().await;
    watch.abort();
    peer
}

pub fn say(text: &str) {
    let now = k8s_openapi::jiff::Timestamp::now();
    eprintln!("[bench {}] {text}", now.strftime("%H:%M:%S"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Seconds from `started` until every credential in `range` is ready.
async fn wait_ready(
    provider: &Provider,
    range: std::ops::Range<usize>,
    started: Instant,
    limit: Duration,
) -> f64 {
    while started.elapsed() < limit {
        if provider.all_ready(range.clone()) {
            return started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("not every credential became ready within {limit:?}");
}

/// Seconds from `since` (unix ms) until every credential of `group` was
/// refreshed.
async fn wait_all_refreshed_since(
    provider: &Provider,
    group: &Group,
    since: i64,
    limit: Duration,
) -> f64 {
    let started = Instant::now();
    while started.elapsed() < limit {
        let calls = provider.calls();
        let mut seen = vec![false; group.count];
        for call in calls.iter().filter(|c| c.at >= since) {
            if let Some(k) = (call.credential as usize).checked_sub(group.start)
                && k < group.count
            {
                seen[k] = true;
            }
        }
        if seen.iter().all(|s| *s) {
            let last = calls.iter().map(|c| c.at).max().unwrap_or(since);
            return (last - since) as f64 / 1000.0;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("not every credential was refreshed within {limit:?} after the outage");
}
