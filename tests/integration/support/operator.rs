//! The real operator binary, run as a child process against the control
//! plane, scoped to one test namespace, with its output captured so that tests
//! can read it and search it for leaked tokens.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub struct Operator {
    child: Option<Child>,
    namespace: String,
    /// The namespace it watches: `namespace`, unless a test says otherwise.
    watch: String,
    extra_args: Vec<String>,
    /// Whether to allow every loopback port as a token endpoint.
    allow_loopback_endpoints: bool,
    /// Everything every run of this operator printed.
    output: Arc<Mutex<String>>,
    /// Where in `output` the latest run's begins.
    run_start: usize,
    kubeconfig: Option<std::path::PathBuf>,
    /// Environment variables set (`Some`) or removed (`None`) for the process.
    env: Vec<(String, Option<String>)>,
}

impl Operator {
    /// Starts `oauth-token-operator run` watching `namespace` (its own
    /// namespace beside it), allowed to use the loopback http token endpoints
    /// of the tests.
    pub fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &[])
    }

    pub fn start_with(namespace: &str, extra_args: &[&str]) -> Self {
        Self::start_with_kubeconfig(namespace, extra_args, None)
    }

    /// As `start_with`, with another kubeconfig (for example one that
    /// impersonates a service account).
    pub fn start_with_kubeconfig(
        namespace: &str,
        extra_args: &[&str],
        kubeconfig: Option<&std::path::Path>,
    ) -> Self {
        Self::spawned(namespace, namespace, extra_args, kubeconfig, true)
    }

    /// Starts an operator that allows only the endpoints `extra_args` name
    /// with `--allowed-endpoint` (and Google's).
    pub fn start_with_own_allowlist(namespace: &str, extra_args: &[&str]) -> Self {
        Self::spawned(namespace, namespace, extra_args, None, false)
    }

    /// As `start_with`, with environment variables set (`Some`) or removed
    /// (`None`).
    pub fn start_with_env(
        namespace: &str,
        extra_args: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Self {
        let mut operator = Self::unstarted(namespace, namespace, extra_args, None, true);
        operator.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect();
        operator.spawn();
        operator
    }

    /// Starts the operator of `namespace` (its own namespace beside it),
    /// watching `watch` instead.
    pub fn start_watching(namespace: &str, watch: &str) -> Self {
        Self::spawned(namespace, watch, &[], None, true)
    }

    fn spawned(
        namespace: &str,
        watch: &str,
        extra_args: &[&str],
        kubeconfig: Option<&std::path::Path>,
        allow_loopback_endpoints: bool,
    ) -> Self {
        let mut operator = Self::unstarted(
            namespace,
            watch,
            extra_args,
            kubeconfig,
            allow_loopback_endpoints,
        );
        operator.spawn();
        operator
    }

    fn unstarted(
        namespace: &str,
        watch: &str,
        extra_args: &[&str],
        kubeconfig: Option<&std::path::Path>,
        allow_loopback_endpoints: bool,
    ) -> Self {
        Operator {
            child: None,
            namespace: namespace.to_string(),
            watch: watch.to_string(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            allow_loopback_endpoints,
            output: Arc::new(Mutex::new(String::new())),
            run_start: 0,
            kubeconfig: kubeconfig.map(|p| p.to_path_buf()),
            env: Vec::new(),
        }
    }

    fn spawn(&mut self) {
        self.run_start = self.output.lock().unwrap().len();
        let mut command = Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"));
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut child = command
            .args([
                "run",
                "--watch-namespace",
                &self.watch,
                "--operator-namespace",
                &super::operator_namespace(&self.namespace),
                "--allow-insecure-loopback-http",
                "--admin-address",
                "127.0.0.1:0",
            ])
            // The tests' token endpoints listen on loopback ports.
            .args(
                self.allow_loopback_endpoints
                    .then_some(["--allowed-endpoint", "http://127.0.0.1:*"])
                    .into_iter()
                    .flatten(),
            )
            .args(self.default_unless_given("--token-request-timeout", "3s"))
            // Tests use tokens of seconds, and leases of seconds with a
            // 3 s request timeout; each test may say otherwise.
            .args(self.default_unless_given("--min-refresh-interval", "1s"))
            .args(self.default_unless_given("--lease-skew-margin", "1s"))
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("OTO_TEST_OPERATOR_LOG")
                    .unwrap_or_else(|_| "info,oauth_token_operator=debug".into()),
            )
            .envs(
                self.kubeconfig
                    .iter()
                    .map(|path| ("KUBECONFIG", path.as_os_str())),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the operator binary");
        capture(child.stdout.take().unwrap(), self.output.clone());
        capture(child.stderr.take().unwrap(), self.output.clone());
        self.child = Some(child);
    }

    /// `[flag, value]` unless the test's own arguments set `flag`.
    fn default_unless_given(&self, flag: &'static str, value: &'static str) -> Vec<&'static str> {
        if self.extra_args.iter().any(|a| a == flag) {
            Vec::new()
        } else {
            vec![flag, value]
        }
    }

    /// Stops with SIGTERM and waits, as Kubernetes would.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..100 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills with SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn();
    }

    /// The admin server's base URL, once the operator (its latest run) has
    /// logged it.
    pub async fn admin_url(&self) -> String {
        for _ in 0..100 {
            let output = self.output();
            // The latest run's, after a restart.
            let found = output[self.run_start..]
                .lines()
                .filter(|l| l.contains("admin server listening"))
                .find_map(|line| {
                    let rest = &line[line.find("address=")? + "address=".len()..];
                    Some(rest.split_whitespace().next()?.to_string())
                });
            if let Some(address) = found {
                return format!("http://{address}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the operator never logged its admin address");
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the operator said.
        if thread::panicking() {
            let output = self.output();
            let lines: Vec<&str> = output.lines().collect();
            eprintln!(
                "--- last operator output ({} lines in all) ---",
                lines.len()
            );
            for line in &lines[lines.len().saturating_sub(150)..] {
                eprintln!("{line}");
            }
        }
    }
}

fn capture(stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if std::env::var_os("OTO_TEST_ECHO_OPERATOR").is_some() {
                eprintln!("[operator] {line}");
            }
            let mut out = into.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
        }
    });
}
