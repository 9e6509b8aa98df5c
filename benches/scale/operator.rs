//! The operator process (the release build of this package) and what the
//! benchmark reads from its admin server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Args;
use crate::sampler::Sampler;

/// The user the operator acts as (impersonated), to find its writes in the
/// audit log.
pub const OPERATOR_USER: &str = "oauth-token-operator-bench";
/// The operator's own namespace (seal keys); it serves no credential there.
pub const OPERATOR_NAMESPACE: &str = "oto-bench-system";

/// A child process the benchmark started and samples under a role.
pub struct Process {
    child: Child,
    sampler: Sampler,
    role: &'static str,
    /// Started as the leader of its own process group (a wrapped
    /// operator): signalled with the whole group.
    pub signal_group: bool,
}

impl Process {
    pub fn spawn(mut command: Command, log: &Path, role: &'static str, sampler: &Sampler) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {role}: {e}"));
        sampler.follow(role, child.id());
        Process {
            child,
            sampler: sampler.clone(),
            role,
            signal_group: false,
        }
    }

    /// SIGTERM, as Kubernetes stops a pod, then wait (30 s at most).
    pub async fn stop(&mut self) {
        let pid = self.child.id();
        let target = if self.signal_group {
            format!("-{pid}")
        } else {
            pid.to_string()
        };
        let _ = Command::new("kill").args(["-TERM", "--", &target]).status();
        for _ in 0..300 {
            if self.child.try_wait().ok().flatten().is_some() {
                self.sampler.follow(self.role, 0);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.sampler.follow(self.role, 0);
    }
}

/// How the benchmark starts the operator.
#[derive(Clone)]
pub struct OperatorConfig {
    pub kubeconfig: PathBuf,
    pub admin: u16,
    pub log: PathBuf,
}

pub fn start(args: &Args, config: &OperatorConfig, sampler: &Sampler) -> Process {
    let binary = env!("CARGO_BIN_EXE_oauth-token-operator");
    let mut command = match args.operator_wrapper.as_deref() {
        Some(wrapper) => {
            let mut words = wrapper.split_whitespace();
            let mut command = Command::new(words.next().expect("a wrapper command"));
            command.args(words).arg(binary);
            // A process group of its own, so that the SIGTERM of a restart
            // reaches the operator under the wrapper (heaptrack runs it as
            // a child) and not only the wrapper.
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            command
        }
        None => Command::new(binary),
    };
    for pair in &args.operator_env {
        let (key, value) = pair.split_once('=').expect("--operator-env KEY=VALUE");
        command.env(key, value);
    }
    command
        .args(["run", "--operator-namespace", OPERATOR_NAMESPACE])
        // The benchmark's provider is on loopback, over plain http: allowed
        // only when both flags say so.
        .arg("--allow-insecure-loopback-http")
        .args(["--allowed-endpoint", "http://127.0.0.1:*"])
        .args(["--admin-address", &format!("127.0.0.1:{}", config.admin)])
        .args(["--token-endpoint-rate", &args.rate.to_string()])
        .args(["--token-endpoint-burst", &args.burst.to_string()])
        .args(["--concurrency", &args.concurrency.to_string()])
        .env("KUBECONFIG", &config.kubeconfig)
        .env("RUST_LOG", "info");
    let mut process = Process::spawn(command, &config.log, "operator", sampler);
    process.signal_group = args.operator_wrapper.is_some();
    process
}

/// The operator's Prometheus text, if its admin server answers.
pub async fn metrics(admin: u16) -> Option<String> {
    let response = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .ok()?;
    response.text().await.ok()
}

/// The sum of every sample of `name` (any labels) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// `oauth_token_operator_tracked_entries` by map.
pub fn tracked_entries(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("oauth_token_operator_tracked_entries{map=\"")?;
            let (map, rest) = rest.split_once('"')?;
            let value = rest.rsplit_once(' ')?.1.trim().parse().ok()?;
            Some((map.to_string(), value))
        })
        .collect()
}

/// Seconds from `started` until the operator's `credentials_scheduled` gauge
/// reaches `count`.
pub async fn wait_scheduled(admin: u16, count: usize, started: Instant, limit: Duration) -> f64 {
    while started.elapsed() < limit {
        if let Some(text) = metrics(admin).await
            && metric_sum(&text, "oauth_token_operator_credentials_scheduled") >= count as f64
        {
            return started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the operator did not schedule {count} credentials within {limit:?}");
}

/// Waits (up to `limit`) until every tracked map is empty; returns the last
/// sizes seen.
pub async fn wait_untracked(admin: u16, limit: Duration) -> Vec<(String, f64)> {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < limit {
        if let Some(text) = metrics(admin).await {
            last = tracked_entries(&text);
            if !last.is_empty() && last.iter().all(|(_, v)| *v == 0.0) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    last
}
