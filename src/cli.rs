//! Subcommands and flags. Every flag can also be set through the environment
//! variable named in its help (`OAUTH_TOKEN_OPERATOR_<FLAG>`).

use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, CustomResourceExt};
use thiserror::Error;

use crate::api_error::ApiError;
use crate::resource::OAuthCredential;
use crate::runtime::{self, RunArgs, RunError};
use crate::schedule::parse_duration;
use crate::summary;
use crate::{authorize, force_refresh, keys_command, opt_in};

/// The binary's own name; how messages name the tool unless it runs as the
/// kubectl plugin.
pub const PROGRAM: &str = "oauth-token-operator";

/// The kubectl plugin's command (`kubectl oauth-token ...`), served by the
/// binary under the name `kubectl-oauth_token`: kubectl finds a plugin
/// `kubectl foo-bar` as the executable `kubectl-foo_bar`.
pub const PLUGIN: &str = "kubectl oauth-token";

/// The version and the commit it was built from (see `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("OTO_GIT_COMMIT"),
    ")"
);

/// The commit the binary was built from, or `unknown`.
pub const GIT_COMMIT: &str = env!("OTO_GIT_COMMIT");

#[derive(Debug, Parser)]
#[command(
    name = "oauth-token-operator",
    version = VERSION,
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
    /// Re-create a credential's existing Opaque client and refresh-token
    /// Secrets with the types that opt them in as inputs, keeping their data.
    OptIn(OptInArgs),
    /// Ask the operator to refresh now (one credential, those matching a
    /// selector, or all), and wait for the outcome.
    Refresh(RefreshArgs),
    /// Back up, restore and rotate the seal key ring (the Secret the
    /// refresh tokens are sealed with).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a shell completion script: `source <(oauth-token-operator
    /// completion bash)`, or see the README for zsh and fish.
    Completion(CompletionArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print the key-ring Secret as a manifest on stdout, for a backup. It
    /// holds the keys themselves: store it as you store secrets. Restore it
    /// with `keys import`, or `kubectl apply -n <namespace> -f`.
    Export(KeysTarget),
    /// Restore keys from a backup (an exported manifest, a Secret from
    /// `kubectl get -o yaml`, or a bare key ring): its keys are added to the
    /// Secret (created if missing) and its primary key becomes primary. A
    /// key id that names other bytes on each side is refused.
    Import(KeysImportArgs),
    /// Add a new random key and make it primary: the operator re-seals every
    /// refresh token under it within seconds; the old keys stay until you
    /// remove them (README, "Sealing refresh tokens").
    Rotate(KeysTarget),
}

#[derive(Debug, Args)]
pub struct KeysTarget {
    /// Namespace of the key-ring Secret (the operator's). Default: the
    /// kubeconfig context's.
    #[arg(short, long)]
    pub namespace: Option<String>,

    /// Name of the key-ring Secret (`--seal-keys-secret` of the operator, or
    /// the chart's `sealKeys.existingSecret`).
    #[arg(long, default_value = keys_command::DEFAULT_SECRET)]
    pub secret: String,

    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct KeysImportArgs {
    #[command(flatten)]
    pub target: KeysTarget,

    /// The backup: a file, or `-` for stdin.
    #[arg(short, long)]
    pub file: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// The credential, as `<namespace>/<name>`, or `<name>` in the namespace
    /// of `-n` or of the kubeconfig context. Or use `-l` or `--all`.
    #[arg(required_unless_present_any = ["selector", "all"], conflicts_with_all = ["selector", "all", "all_namespaces"])]
    pub credential: Option<String>,

    /// Refresh the credentials matching this label selector.
    #[arg(short = 'l', long, conflicts_with = "all")]
    pub selector: Option<String>,

    /// Refresh every credential (in the namespace, or with -A everywhere).
    #[arg(long)]
    pub all: bool,

    /// Namespace of the credentials. Default: the kubeconfig context's.
    #[arg(short, long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,

    /// With -l or --all: in every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// How long to wait for the outcomes; `0s` returns once asked.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub wait: Duration,

    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct OptInArgs {
    /// The credential, as `<namespace>/<name>`, or `<name>` in the namespace
    /// of `-n` or of the kubeconfig context.
    pub credential: String,

    /// Namespace of the credential when it is given without one.
    #[arg(short, long)]
    pub namespace: Option<String>,

    #[command(flatten)]
    pub kube: KubeArgs,
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

    /// Port of the loopback redirect (`http://127.0.0.1:PORT/`), for
    /// providers that compare the registered redirect URI's port exactly.
    /// Default: any free port (what Google and RFC 8252 servers accept).
    #[arg(long, default_value_t = 0)]
    pub port: u16,

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

    /// Only credentials matching this label selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,

    /// Output format: `table`, `wide` (more columns), `json` or `yaml`.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Exit with status 3 when any listed credential needs a person
    /// (ReauthRequired=True), for scripts and CI.
    #[arg(long)]
    pub fail_on_reauth: bool,

    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Wide,
    Json,
    Yaml,
}

/// Why a command failed; printed as `error: <message>`.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Authorize(#[from] authorize::Error),
    #[error(transparent)]
    OptIn(#[from] opt_in::Error),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("expected <namespace>/<name> or <name>, got {0:?}")]
    CredentialName(String),
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error(transparent)]
    KubeconfigContext(#[from] kube::config::KubeconfigError),
    #[error(transparent)]
    InferConfig(#[from] kube::config::InferConfigError),
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("cannot print JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot print YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error(transparent)]
    Refresh(#[from] force_refresh::Error),
    #[error(transparent)]
    Keys(#[from] keys_command::Error),
    #[error("{0} credential(s) need a person (ReauthRequired=True)")]
    ReauthRequired(usize),
}

impl Error {
    /// The process exit status: 3 for `status --fail-on-reauth` finding a
    /// credential that needs a person, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::ReauthRequired(_) => 3,
            _ => 1,
        }
    }
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Crd => {
            print!("{}", crd_yaml());
            Ok(())
        }
        Command::Run(args) => Ok(runtime::run(*args).await?),
        Command::Authorize(args) => {
            let client = args.kube.client().await?;
            let (namespace, name) =
                credential_name(&args.credential, args.namespace.as_deref(), &client)?;
            let options = authorize::Options {
                namespace,
                name,
                no_browser: args.no_browser,
                timeout: args.timeout,
                wait: args.wait,
                allow_insecure_loopback_http: args.allow_insecure_loopback_http,
                port: args.port,
                program: program_name(),
            };
            Ok(authorize::run(client, options).await?)
        }
        Command::Status(args) => status(args).await,
        Command::Refresh(args) => refresh(args).await,
        Command::OptIn(args) => {
            let client = args.kube.client().await?;
            let (namespace, name) =
                credential_name(&args.credential, args.namespace.as_deref(), &client)?;
            Ok(opt_in::run(client, &namespace, &name).await?)
        }
        Command::Keys(command) => keys(command).await,
        Command::Completion(args) => {
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                PROGRAM,
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

/// `<namespace>/<name>`, or `<name>` in `namespace` or the client's default.
fn credential_name(
    given: &str,
    namespace: Option<&str>,
    client: &kube::Client,
) -> Result<(String, String), Error> {
    let (namespace, name) = match given.split_once('/') {
        Some((namespace, name)) => (namespace.to_string(), name.to_string()),
        None => (
            namespace.map_or_else(|| client.default_namespace().to_string(), str::to_string),
            given.to_string(),
        ),
    };
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return Err(Error::CredentialName(given.to_string()));
    }
    Ok((namespace, name))
}

impl KubeArgs {
    /// A client for the chosen kubeconfig and context; inside a cluster
    /// without either, the pod's service account.
    async fn client(&self) -> Result<kube::Client, Error> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                        path: path.display().to_string(),
                        source,
                    })?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer().await?,
        };
        Ok(kube::Client::try_from(config)?)
    }
}

/// How the person invoked us: `kubectl oauth-token` when run as the kubectl
/// plugin (`kubectl-oauth_token` on the PATH), else `oauth-token-operator`.
pub fn program_name() -> String {
    let invoked = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    program_for(&invoked)
}

/// The command a person typed, from the executable's file name: kubectl runs
/// the plugin `kubectl a-b` as `kubectl-a_b`, so underscores stand for dashes.
fn program_for(invoked: &str) -> String {
    let invoked = invoked.strip_suffix(".exe").unwrap_or(invoked);
    match invoked.strip_prefix("kubectl-") {
        Some(plugin) if !plugin.is_empty() => format!("kubectl {}", plugin.replace('_', "-")),
        _ => PROGRAM.into(),
    }
}

/// The command-line definition as `program` presents it: as a kubectl
/// plugin, usage lines read `kubectl oauth-token ...` and the commands only
/// an operator deployment uses (`run`, `crd`, `completion`) are hidden
/// (they still work).
pub fn command_for(program: &str) -> clap::Command {
    let command = Cli::command();
    if program == PROGRAM {
        return command;
    }
    ["run", "crd", "completion"]
        .into_iter()
        .fold(command, |command, name| {
            command.mut_subcommand(name, |sub| sub.hide(true))
        })
        .bin_name(program)
        .display_name(program)
        .about("Consent, status and refresh of OAuthCredentials (oauth-token-operator's kubectl plugin)")
}

/// Parses the process's arguments (exits on a usage error, `--help` and
/// `--version`, as clap does).
pub fn parse() -> Cli {
    let matches = command_for(&program_name()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

async fn status(args: StatusArgs) -> Result<(), Error> {
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
    let mut params = ListParams::default();
    if let Some(selector) = &args.selector {
        params = params.labels(selector);
    }
    let list = credentials
        .list(&params)
        .await
        .map_err(|e| ApiError::new("cannot list OAuthCredentials", e))?;
    let now = Timestamp::now();
    let rows = summary::rows(&list.items, &program_name(), now);
    let items = serde_json::json!({ "items": rows });
    let columns = summary::Columns {
        namespace: args.all_namespaces,
        wide: args.output == OutputFormat::Wide,
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&items)?),
        OutputFormat::Yaml => print!("{}", serde_yaml_ng::to_string(&items)?),
        _ if rows.is_empty() => eprintln!("No OAuthCredentials found."),
        OutputFormat::Table | OutputFormat::Wide => {
            print!("{}", summary::table(&rows, columns, now))
        }
    }
    let waiting = rows.iter().filter(|r| r.reauth_required == "True").count();
    if args.fail_on_reauth && waiting > 0 {
        return Err(Error::ReauthRequired(waiting));
    }
    Ok(())
}

async fn keys(command: KeysCommand) -> Result<(), Error> {
    let given = match &command {
        KeysCommand::Export(target) | KeysCommand::Rotate(target) => target,
        KeysCommand::Import(args) => &args.target,
    };
    let client = given.kube.client().await?;
    let target = keys_command::Target {
        namespace: given
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string()),
        secret: given.secret.clone(),
    };
    match &command {
        KeysCommand::Export(_) => print!("{}", keys_command::export(&client, &target).await?),
        KeysCommand::Import(args) => {
            let backup = keys_command::read_backup(&args.file)?;
            println!("{}", keys_command::import(&client, &target, backup).await?);
        }
        KeysCommand::Rotate(_) => {
            let id = keys_command::rotate(&client, &target, Timestamp::now()).await?;
            println!(
                "Secret {target}: new primary key {id}. The operator re-seals every refresh token under it within seconds; remove the old keys once `kubectl get oauthcredentials -A -o wide` lists only {id} under SEALED WITH."
            );
        }
    }
    Ok(())
}

async fn refresh(args: RefreshArgs) -> Result<(), Error> {
    let client = args.kube.client().await?;
    let namespace = || {
        (!args.all_namespaces).then(|| {
            args.namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string())
        })
    };
    let targets = match (&args.credential, &args.selector) {
        (Some(given), _) => {
            let (namespace, name) = credential_name(given, args.namespace.as_deref(), &client)?;
            force_refresh::Targets::One { namespace, name }
        }
        (None, Some(selector)) => force_refresh::Targets::Selected {
            namespace: namespace(),
            selector: selector.clone(),
        },
        (None, None) => force_refresh::Targets::All {
            namespace: namespace(),
        },
    };
    Ok(force_refresh::run(client, targets, args.wait).await?)
}

/// The CRD as committed in `crds/`.
pub fn crd_yaml() -> String {
    let yaml = serde_yaml_ng::to_string(&OAuthCredential::crd()).expect("the CRD serialises");
    format!("# Generated by `oauth-token-operator crd`; do not edit.\n---\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_executable_is_named_as_kubectl_calls_it() {
        assert_eq!(program_for("kubectl-oauth_token"), "kubectl oauth-token");
        assert_eq!(
            program_for("kubectl-oauth_token.exe"),
            "kubectl oauth-token"
        );
        assert_eq!(program_for("oauth-token-operator"), PROGRAM);
        assert_eq!(program_for("kubectl-"), PROGRAM);
    }

    #[test]
    fn plugin_help_shows_the_plugin_form_and_hides_operator_commands() {
        let mut command = command_for(PLUGIN);
        let help = command.render_help().to_string();
        assert!(
            help.contains("Usage: kubectl oauth-token <COMMAND>"),
            "{help}"
        );
        for shown in ["authorize", "status", "refresh", "opt-in"] {
            assert!(
                help.contains(&format!("  {shown} ")),
                "{shown} missing: {help}"
            );
        }
        for hidden in ["run", "crd", "completion"] {
            assert!(
                !help.contains(&format!("  {hidden} ")),
                "{hidden} shown: {help}"
            );
        }
        let mut own = command_for(PROGRAM);
        let help = own.render_help().to_string();
        assert!(
            help.contains("Usage: oauth-token-operator <COMMAND>"),
            "{help}"
        );
        assert!(help.contains("  run ") && help.contains("  crd "), "{help}");
    }

    #[test]
    fn the_version_names_the_commit() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION.contains(&format!("(commit {GIT_COMMIT})")));
        assert!(!GIT_COMMIT.is_empty());
    }

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
