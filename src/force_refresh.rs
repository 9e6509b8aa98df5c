//! Asking the operator to refresh now: `refresh`, and `authorize` once it has
//! stored a new refresh token. The request is a new value of the
//! force-refresh annotation; the operator acts on each value once and
//! records it in `status.lastForcedRefresh`, which is how the waiting side
//! knows the outcome is in. Only `get`/`list` and `patch` on credentials:
//! no Secret is read.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use thiserror::Error;

use crate::api_error::ApiError;
use crate::reconcile::FIELD_MANAGER;
use crate::resource::{FORCE_REFRESH_ANNOTATION, OAuthCredential, READY};
use crate::summary::short;

/// Which credentials to refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    One {
        namespace: String,
        name: String,
    },
    /// Those matching a label selector, in a namespace or (`None`) all.
    Selected {
        namespace: Option<String>,
        selector: String,
    },
    /// Every credential in a namespace or (`None`) all.
    All {
        namespace: Option<String>,
    },
}

/// Why `refresh` did not succeed for every credential.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("no OAuthCredential matched")]
    NoneMatched,
    #[error("{failed} of {total} credentials did not refresh; see above")]
    Failed { failed: usize, total: usize },
}

/// A request value never used before: the current time, to the nanosecond.
pub fn new_value() -> String {
    Timestamp::now().to_string()
}

/// Sets the force-refresh annotation of `name` to `value` (or tries to, with
/// `dry_run`).
pub async fn request(
    credentials: &Api<OAuthCredential>,
    name: &str,
    value: &str,
    dry_run: bool,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"metadata": {"annotations": {FORCE_REFRESH_ANNOTATION: value}}});
    let mut params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    params.dry_run = dry_run;
    credentials
        .patch(name, &params, &Patch::Merge(patch))
        .await
        .map(|_| ())
}

/// Whether the operator has acted on the request `value`.
fn acted_on(credential: &OAuthCredential, value: &str) -> bool {
    credential
        .status
        .as_ref()
        .and_then(|s| s.last_forced_refresh.as_deref())
        == Some(value)
}

/// `namespace/name` of a credential.
fn key(credential: &OAuthCredential) -> String {
    format!(
        "{}/{}",
        credential.namespace().unwrap_or_default(),
        credential.name_any()
    )
}

/// Waits until the operator has acted on `value` for each of `targets`
/// (`namespace/name`), polling once a second (one read per namespace), for
/// at most `wait`. Returns what was seen of each: the credential once acted
/// on, `None` when it was deleted; targets still waiting are missing.
pub async fn wait_for(
    client: &Client,
    targets: &[String],
    value: &str,
    wait: Duration,
) -> Result<BTreeMap<String, Option<OAuthCredential>>, kube::Error> {
    let mut seen: BTreeMap<String, Option<OAuthCredential>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + wait;
    while seen.len() < targets.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut by_namespace: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for target in targets.iter().filter(|t| !seen.contains_key(*t)) {
            let (namespace, name) = target.split_once('/').unwrap_or(("", target));
            by_namespace.entry(namespace).or_default().push(name);
        }
        for (namespace, names) in by_namespace {
            let api: Api<OAuthCredential> = Api::namespaced(client.clone(), namespace);
            let found: Vec<OAuthCredential> = match names.as_slice() {
                [name] => api.get_opt(name).await?.into_iter().collect(),
                _ => api.list(&ListParams::default()).await?.items,
            };
            for name in names {
                let target = format!("{namespace}/{name}");
                match found.iter().find(|c| c.name_any() == name) {
                    Some(c) if acted_on(c, value) => {
                        seen.insert(target, Some(c.clone()));
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(target, None);
                    }
                }
            }
        }
    }
    Ok(seen)
}

/// Whether a credential the operator acted on is now Ready with a fresh
/// token (no failure since).
pub fn refreshed(credential: &OAuthCredential) -> bool {
    let status = credential.status.clone().unwrap_or_default();
    status.failed_attempts == 0 && status.is_true(READY)
}

/// A line for a person about a credential the operator acted on.
pub fn outcome_line(target: &str, credential: &OAuthCredential, now: Timestamp) -> String {
    let status = credential.status.clone().unwrap_or_default();
    if refreshed(credential) {
        let expires = status
            .expires_at
            .map(|t| {
                let left = t.0.duration_since(now).as_secs();
                format!(": the access token expires at {} (in {})", t.0, short(left))
            })
            .unwrap_or_default();
        return format!("{target} refreshed{expires}");
    }
    let failure = status
        .last_failure
        .filter(|_| status.failed_attempts > 0)
        .map(|f| format!("{}: {}", f.reason, f.message))
        .or_else(|| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == READY)
                .map(|c| format!("{}: {}", c.reason, c.message))
        })
        .unwrap_or_else(|| "no outcome recorded".into());
    format!("{target} did not refresh: {failure}")
}

/// `refresh`: requests a refresh of each target, then (unless `wait` is
/// zero) waits for each outcome and prints it. Fails when any credential did
/// not refresh in time.
pub async fn run(client: Client, targets: Targets, wait: Duration) -> Result<(), Error> {
    let names = resolve(&client, &targets).await?;
    if names.is_empty() {
        return Err(Error::NoneMatched);
    }
    let value = new_value();
    for target in &names {
        let (namespace, name) = target.split_once('/').unwrap_or_default();
        let api: Api<OAuthCredential> = Api::namespaced(client.clone(), namespace);
        request(&api, name, &value, false)
            .await
            .map_err(|e| ApiError::new(format!("cannot ask for a refresh of {target}"), e))?;
    }
    if wait.is_zero() {
        for target in &names {
            println!("{target}: refresh requested");
        }
        return Ok(());
    }
    eprintln!(
        "Asked the operator to refresh {} credential(s); waiting up to {}.",
        names.len(),
        short(wait.as_secs() as i64)
    );
    let seen = wait_for(&client, &names, &value, wait)
        .await
        .map_err(|e| ApiError::new("cannot read the credentials while waiting", e))?;
    let now = Timestamp::now();
    let mut failed = 0;
    for target in &names {
        let line = match seen.get(target) {
            Some(Some(credential)) => outcome_line(target, credential, now),
            Some(None) => format!("{target} was deleted"),
            None => format!(
                "{target} was not acted on within {}: is the operator running?",
                short(wait.as_secs() as i64)
            ),
        };
        if !matches!(seen.get(target), Some(Some(c)) if refreshed(c)) {
            failed += 1;
        }
        println!("{line}");
    }
    match failed {
        0 => Ok(()),
        failed => Err(Error::Failed {
            failed,
            total: names.len(),
        }),
    }
}

/// The `namespace/name` of each target, sorted.
async fn resolve(client: &Client, targets: &Targets) -> Result<Vec<String>, Error> {
    let (namespace, params) = match targets {
        Targets::One { namespace, name } => return Ok(vec![format!("{namespace}/{name}")]),
        Targets::Selected {
            namespace,
            selector,
        } => (namespace, ListParams::default().labels(selector)),
        Targets::All { namespace } => (namespace, ListParams::default()),
    };
    let api: Api<OAuthCredential> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = api
        .list(&params)
        .await
        .map_err(|e| ApiError::new("cannot list OAuthCredentials", e))?;
    let mut names: Vec<String> = list.items.iter().map(key).collect();
    names.sort();
    Ok(names)
}
