//! The reconcile loop: gathers what a credential needs, asks `decision` what
//! to do, calls the token endpoint when due, and writes the output Secret and
//! the status.
//!
//! Watches and caches are sized for tens of thousands of credentials: the
//! credentials themselves (managedFields stripped), the metadata of the output
//! Secrets this operator labels, and a metadata-only, uncached watch of other
//! Secrets that is mapped through `references` to the credentials naming them.
//! No Secret data is cached; Secret data is read only to refresh.
//!
//! Writes: an idle reconcile writes nothing; a refresh writes the output
//! Secret and the status, plus the refresh-token Secret when the provider
//! rotated it (that one first, under a resourceVersion precondition).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as RuntimeConfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::admin::Health;
use crate::backlog::Backlog;
use crate::classify::FailureClass;
use crate::decision::{self, OutputSecret, Plan, RefreshReason, View};
use crate::keys::Keys;
use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::output_secret::{self, MANAGED_BY, MANAGED_BY_LABEL};
use crate::references::SecretReferences;
use crate::resource::{
    ClientSecretRef, FORCE_REFRESH_ANNOTATION, FailureCategory, Inputs, OAuthCredential,
    OAuthCredentialStatus, RefreshTokenState,
};
use crate::schedule::{self, BackoffClass};
use crate::seal::{self, KeyRing, OpenError};
use crate::status::{self, Failed, Success, reason};
use crate::token_client::{ClientCredentials, TokenClient, TokenClientConfig, TokenEndpoint};

/// Field manager of every write, and the event reporter.
pub const FIELD_MANAGER: &str = "oauth-token-operator";

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Reconciles (and so token-endpoint calls) in flight at once.
    pub concurrency: u16,
    /// Watch one namespace only; all namespaces when `None`.
    pub watch_namespace: Option<String>,
    pub token_client: TokenClientConfig,
    /// Name of this instance in events (pod name in a cluster).
    pub instance: Option<String>,
    /// Whether this replica may call token endpoints right now.
    pub fence: Fence,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Token-endpoint calls per second allowed per endpoint host, and burst.
    pub endpoint_rate: NonZeroU32,
    pub endpoint_burst: NonZeroU32,
}

/// Everything a reconcile needs. Built once, shared.
pub struct Context {
    client: Client,
    tokens: TokenClient,
    recorder: Recorder,
    credentials: Store<OAuthCredential>,
    owned_secrets: Store<PartialObjectMeta<Secret>>,
    references: SecretReferences,
    keys: Keys,
    fence: Fence,
    metrics: Arc<Metrics>,
    rate_limit: DefaultKeyedRateLimiter<String>,
    /// Rotated refresh tokens received but not yet stored (the write failed).
    unstored_rotations: Mutex<HashMap<ObjectRef<OAuthCredential>, SecretString>>,
    /// Refresh-token Secret versions already inspected with nothing to do.
    inspected: Mutex<HashMap<ObjectRef<OAuthCredential>, String>>,
    allow_insecure_loopback_http: bool,
    clock: fn() -> Timestamp,
    /// Status we wrote that the credential cache may not show yet.
    /// (The status, and when it was written.)
    written: Mutex<HashMap<ObjectRef<OAuthCredential>, (OAuthCredentialStatus, Instant)>>,
    /// Credentials reconciled at least once by this process.
    scheduled: Mutex<HashSet<ObjectRef<OAuthCredential>>>,
    /// Credentials waiting for a rate limit, by token expiry.
    backlog: Mutex<Backlog>,
    /// Token-endpoint calls per second per host (the rate limit).
    endpoint_rate: f64,
    /// Reconciles that may wait for a rate limit at once; the rest of the
    /// backlog steps aside.
    waiting_slots: usize,
}

/// A reconcile that could not finish; retried by `error_policy`. Carries no
/// secret: Kubernetes API errors name objects, never Secret data.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the rotated refresh token could not be stored after {0} conflicting writes")]
    RotationNotStored(u32),
}

impl Error {
    /// A fixed, small set, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kubernetes-api",
            Error::RotationNotStored(_) => "rotation-conflict",
        }
    }
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    keys: Keys,
    keys_changed: tokio::sync::watch::Receiver<u64>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // `Api<PartialObjectMeta<_>>` requests metadata only: no Secret data
    // crosses the wire for these watches.
    let (credentials_api, secrets_api): (Api<OAuthCredential>, Api<PartialObjectMeta<Secret>>) =
        match &config.watch_namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    let references = SecretReferences::default();

    let (credentials, credentials_writer) = reflector::store();
    let index = references.clone();
    let synced = config.health.clone();
    let credential_stream = watcher(credentials_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(strip_cached_fields)
        .inspect_ok(move |event| {
            index.observe(event);
            // Ready once the first full list is in the cache.
            if matches!(event, watcher::Event::InitDone) {
                synced.set_ready(true);
            }
        })
        .reflect(credentials_writer)
        .applied_objects();

    let (owned_secrets, owned_writer) = reflector::store();
    let owned_stream = watcher(
        secrets_api.clone(),
        watcher::Config::default()
            .labels(&output_secret::owned_selector())
            .any_semantic(),
    )
    .default_backoff()
    .modify(strip_cached_fields)
    .reflect(owned_writer)
    .touched_objects();

    // Every other Secret's metadata streams through without being stored;
    // only the versions of referenced ones are remembered.
    let versions = references.clone();
    let referenced_stream = watcher(secrets_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .inspect_ok(move |event| versions.observe_secret(event))
        .touched_objects();
    // A new key ring re-reconciles everything, so old keys go out of use.
    let rekeyed = futures::stream::unfold(keys_changed, |mut rx| async move {
        rx.changed().await.ok().map(|()| ((), rx))
    });

    let tokens = TokenClient::new(&config.token_client).expect("the token HTTP client builds");
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: config.instance.clone(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        tokens,
        recorder: Recorder::new(client, reporter),
        credentials: credentials.clone(),
        owned_secrets,
        references: references.clone(),
        keys,
        inspected: Mutex::new(HashMap::new()),
        fence: config.fence.clone(),
        metrics: config.metrics.clone(),
        rate_limit: RateLimiter::keyed(
            Quota::per_second(config.endpoint_rate).allow_burst(config.endpoint_burst),
        ),
        unstored_rotations: Mutex::new(HashMap::new()),
        allow_insecure_loopback_http: config.token_client.allow_insecure_loopback_http,
        clock: Timestamp::now,
        written: Mutex::new(HashMap::new()),
        scheduled: Mutex::new(HashSet::new()),
        backlog: Mutex::new(Backlog::default()),
        endpoint_rate: f64::from(config.endpoint_rate.get()),
        waiting_slots: usize::from(config.concurrency / 2).max(1),
    });

    // Gauges follow the cache. (Never await the store's readiness here:
    // kube-runtime wakes only its most recent waiter, and the controller
    // itself waits on it.)
    let background = {
        let (store, ctx) = (credentials.clone(), ctx.clone());
        tokio::spawn(async move {
            loop {
                let state = store.state();
                ctx.metrics.observe(state.iter().map(|c| c.as_ref()));
                ctx.forget_deleted(&state);
                ctx.backlog.lock().expect("lock").prune(Instant::now());
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };

    Controller::for_stream(credential_stream, credentials)
        .owns_stream(owned_stream)
        .watches_stream(
            referenced_stream,
            move |secret: PartialObjectMeta<Secret>| {
                let ours = secret
                    .labels()
                    .get(MANAGED_BY_LABEL)
                    .is_some_and(|v| v == MANAGED_BY);
                match (ours, secret.namespace()) {
                    (false, Some(ns)) => references.credentials_for(&ns, &secret.name_any()),
                    _ => Vec::new(),
                }
            },
        )
        .reconcile_all_on(rekeyed)
        .with_config(RuntimeConfig::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                debug!(%error, "controller event");
            }
        })
        .await;
    background.abort();
    config.health.set_ready(false);
}

/// Cached copies keep only what reconciles read.
fn strip_cached_fields<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

fn error_policy(credential: Arc<OAuthCredential>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error(error.category());
    warn!(
        namespace = credential.namespace().unwrap_or_default(),
        name = credential.name_any(),
        category = error.category(),
        %error,
        "reconcile failed; retrying"
    );
    let jitter = schedule::unit_interval(&format!(
        "{}{}",
        credential.name_any(),
        Timestamp::now().as_millisecond()
    ));
    Action::requeue(Duration::from_millis(5_000 + (jitter * 5_000.0) as u64))
}

/// One reconcile of one credential.
pub async fn reconcile(
    credential: Arc<OAuthCredential>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let credential = ctx.current(credential);
    let credential = ctx.keep_sealed(credential).await?;
    let now = ctx.now();
    let output = ctx.output_secret(&credential).await?;
    let status = credential.status.as_ref();
    let generation = credential.metadata.generation.unwrap_or(0);
    let force_refresh = credential
        .annotations()
        .get(FORCE_REFRESH_ANNOTATION)
        .map(String::as_str);
    let plan = decision::decide(
        &View {
            generation,
            status,
            force_refresh,
            output,
        },
        now,
    );
    debug!(
        namespace = credential.namespace(),
        name = credential.name_any(),
        ?plan,
        "decided"
    );
    let action = match plan {
        Plan::Conflict => ctx.report_conflict(&credential, now).await,
        Plan::WaitUntil(at) => ctx.settle(&credential, now, Some(at)).await,
        Plan::RefreshIfInputsChanged { since, retry_at } => {
            let inputs = ctx.input_versions(&credential).await?;
            if inputs != since {
                ctx.refresh(&credential, output, RefreshReason::InputsChanged)
                    .await
            } else {
                ctx.settle(&credential, now, retry_at).await
            }
        }
        Plan::Refresh(reason) => match ctx.step_aside(&credential) {
            Some(delay) => Ok(Action::requeue(delay)),
            None => ctx.refresh(&credential, output, reason).await,
        },
    }?;
    ctx.mark_scheduled(&credential);
    Ok(action)
}

impl Context {
    /// While the rate limit of the credential's token endpoint binds: whether
    /// enough credentials whose tokens expire sooner are waiting that this
    /// one should come back later (see `backlog`). Decided before any read.
    fn step_aside(&self, credential: &OAuthCredential) -> Option<Duration> {
        let mut backlog = self.backlog.lock().expect("lock");
        if backlog.is_empty() {
            return None;
        }
        let endpoint = TokenEndpoint::from_provider(
            &credential.spec.provider,
            self.allow_insecure_loopback_http,
        )
        .ok()?;
        let delay = backlog.step_aside(
            endpoint.url().host_str().unwrap_or_default(),
            &backlog_key(credential),
            backlog_place(credential, (self.clock)()),
            Instant::now(),
            self.waiting_slots,
            self.endpoint_rate,
        );
        if delay.is_some() {
            self.metrics.rate_limit_deferral();
        }
        delay
    }

    /// Counts a credential as scheduled by this process.
    fn mark_scheduled(&self, credential: &OAuthCredential) {
        let mut scheduled = self.scheduled.lock().expect("lock");
        if scheduled.insert(ObjectRef::from_obj(credential)) {
            self.metrics.set_scheduled(scheduled.len());
        }
    }

    /// Drops deleted credentials from the scheduled set.
    fn forget_deleted(&self, present: &[Arc<OAuthCredential>]) {
        let present: HashSet<ObjectRef<OAuthCredential>> = present
            .iter()
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect();
        let mut scheduled = self.scheduled.lock().expect("lock");
        scheduled.retain(|key| present.contains(key));
        self.metrics.set_scheduled(scheduled.len());
    }

    /// The current time in whole seconds: status stores whole seconds, and a
    /// status rebuilt from the same facts must compare equal to the stored one.
    fn now(&self) -> Timestamp {
        schedule::whole_seconds((self.clock)())
    }

    /// The credential as of our last status write: the cache may lag behind
    /// our own write, and deciding from a stale status would refresh twice.
    /// While it lags (for at most 5 s after the write), the status we wrote
    /// stands in for the cached one, rather than holding a concurrency slot
    /// while waiting for the cache to catch up.
    fn current(&self, credential: Arc<OAuthCredential>) -> Arc<OAuthCredential> {
        const TRUST_OWN_WRITE: Duration = Duration::from_secs(5);
        let key = ObjectRef::from_obj(credential.as_ref());
        let latest = self.credentials.get(&key).unwrap_or(credential);
        let mut written = self.written.lock().expect("lock");
        let Some((expected, at)) = written.get(&key) else {
            return latest;
        };
        if latest.status.as_ref() == Some(expected) || at.elapsed() > TRUST_OWN_WRITE {
            written.remove(&key);
            return latest;
        }
        let mut updated = (*latest).clone();
        updated.status = Some(expected.clone());
        Arc::new(updated)
    }

    /// Ours, someone else's, or absent. The cache answers for Secrets we
    /// labelled; anything else is looked up, because a foreign Secret carries
    /// no label of ours.
    async fn output_secret(&self, credential: &OAuthCredential) -> Result<OutputSecret, Error> {
        let ns = credential.namespace().unwrap_or_default();
        let name = &credential.spec.output.secret_name;
        if let Some(cached) = self.owned_secrets.get(&ObjectRef::new(name).within(&ns)) {
            return Ok(output_secret::ownership(Some(&cached.metadata), credential));
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let found = secrets
            .get_metadata_opt(name)
            .await
            .map_err(kube_err("read output Secret metadata"))?;
        Ok(output_secret::ownership(
            found.as_ref().map(|s| &s.metadata),
            credential,
        ))
    }

    /// Versions of the inputs, from the Secret watch (read when it has not
    /// reported them yet).
    async fn input_versions(&self, credential: &OAuthCredential) -> Result<Inputs, Error> {
        Ok(Inputs {
            generation: credential.metadata.generation.unwrap_or(0),
            client_secret_version: self
                .secret_version(credential, &credential.spec.client_secret_ref.name)
                .await?,
            refresh_token_secret_version: self
                .secret_version(credential, &credential.spec.refresh_token_secret_ref.name)
                .await?,
        })
    }

    /// The current resourceVersion of a Secret in the credential's namespace,
    /// empty when it does not exist.
    async fn secret_version(
        &self,
        credential: &OAuthCredential,
        name: &str,
    ) -> Result<String, Error> {
        let ns = credential.namespace().unwrap_or_default();
        if let Some(version) = self.references.version(&ns, name) {
            return Ok(version);
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let found = secrets
            .get_metadata_opt(name)
            .await
            .map_err(kube_err("read Secret metadata"))?;
        let version = found
            .and_then(|s| s.metadata.resource_version)
            .unwrap_or_default();
        self.references.remember_version(&ns, name, &version);
        Ok(version)
    }

    /// Keeps the stored refresh token sealed under the primary key: a
    /// plaintext token (put there by a person) is sealed in place on first
    /// sight and its plaintext key removed; a token sealed under another key is
    /// re-sealed. Reads the Secret only when its version differs from the one
    /// last seen, or the primary key changed.
    async fn keep_sealed(
        &self,
        credential: Arc<OAuthCredential>,
    ) -> Result<Arc<OAuthCredential>, Error> {
        let keys = self.keys.current();
        let name = &credential.spec.refresh_token_secret_ref.name;
        let version = self.secret_version(&credential, name).await?;
        let known = credential
            .status
            .as_ref()
            .and_then(|s| s.refresh_token.as_ref());
        let key = ObjectRef::from_obj(credential.as_ref());
        let seen = known.is_some_and(|k| k.secret_version == version)
            || self.inspected.lock().expect("lock").get(&key) == Some(&version);
        let stale_key = known
            .and_then(|k| k.sealed_with.as_deref())
            .is_some_and(|id| id != keys.primary());
        if version.is_empty() || (seen && !stale_key) {
            return Ok(credential);
        }

        let ns = credential.namespace().unwrap_or_default();
        let cred_name = credential.name_any();
        let field = &credential.spec.refresh_token_secret_ref.key;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let Some(secret) = secrets
            .get_opt(name)
            .await
            .map_err(kube_err("read refresh-token Secret"))?
        else {
            return Ok(credential);
        };
        let current_version = version_of(Some(&secret));
        let (token, resealing) =
            match stored_refresh_token(Some(&secret), field, &keys, &ns, &cred_name) {
                Stored::Plain(token) => (token, false),
                Stored::Sealed { token, key_id } if key_id != keys.primary() => (token, true),
                Stored::Sealed { key_id, .. } => {
                    // Already sealed under the primary key: remember, write nothing.
                    if known.and_then(|k| k.sealed_with.as_deref()) == Some(key_id.as_str())
                        || known.is_none()
                    {
                        self.inspected
                            .lock()
                            .expect("lock")
                            .insert(key, current_version);
                        return Ok(credential);
                    }
                    let mut status = credential.status.clone().unwrap_or_default();
                    status.refresh_token = Some(RefreshTokenState {
                        secret_version: current_version,
                        sealed_with: Some(key_id),
                    });
                    return self.with_status(credential, status).await;
                }
                Stored::Missing | Stored::Unreadable(_) => {
                    // Reported when a refresh is attempted.
                    self.inspected
                        .lock()
                        .expect("lock")
                        .insert(key, current_version);
                    return Ok(credential);
                }
            };
        let new_version = self
            .store_sealed_refresh_token(&secrets, secret, field, &token, &keys, &ns, &cred_name)
            .await?;
        info!(
            namespace = ns,
            name = cred_name,
            key_id = keys.primary(),
            resealed = resealing,
            "sealed the stored refresh token"
        );
        let mut status = credential.status.clone().unwrap_or_default();
        status.refresh_token = Some(RefreshTokenState {
            secret_version: new_version.clone(),
            sealed_with: Some(keys.primary().to_string()),
        });
        // Re-sealing is our own write, not new input: a failure waiting for a
        // new refresh token keeps waiting.
        if resealing
            && let Some(failure) = status.last_failure.as_mut()
            && failure.inputs.refresh_token_secret_version == current_version
        {
            failure.inputs.refresh_token_secret_version = new_version;
        }
        self.with_status(credential, status).await
    }

    /// Writes `status` (if changed) and returns the credential as it now is.
    async fn with_status(
        &self,
        credential: Arc<OAuthCredential>,
        status: OAuthCredentialStatus,
    ) -> Result<Arc<OAuthCredential>, Error> {
        self.write_status(&credential, status).await?;
        let key = ObjectRef::from_obj(credential.as_ref());
        let written = self
            .written
            .lock()
            .expect("lock")
            .get(&key)
            .map(|(status, _)| status.clone());
        let mut updated = (*credential).clone();
        if let Some(written) = written {
            updated.status = Some(written);
        }
        Ok(Arc::new(updated))
    }

    /// Writes the refresh token, sealed under the primary key, into the
    /// refresh-token Secret (removing any plaintext copy), under a
    /// resourceVersion precondition; on a conflict it re-reads and writes the
    /// same token again, never exchanging anything a second time. Returns the
    /// Secret's new resourceVersion.
    #[allow(clippy::too_many_arguments)]
    async fn store_sealed_refresh_token(
        &self,
        secrets: &Api<Secret>,
        mut current: Secret,
        key: &str,
        token: &SecretString,
        keys: &KeyRing,
        namespace: &str,
        credential: &str,
    ) -> Result<String, Error> {
        const ATTEMPTS: u32 = 5;
        let sealed = keys.seal(token, namespace, credential);
        for _ in 0..ATTEMPTS {
            let name = current.name_any();
            current.metadata.managed_fields = None;
            current.string_data = None;
            let data = current.data.get_or_insert_with(Default::default);
            data.remove(key);
            data.insert(sealed_key(key), ByteString(sealed.clone().into_bytes()));
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match secrets.replace(&name, &params, &current).await {
                Ok(written) => {
                    let version = version_of(Some(&written));
                    self.references.remember_version(namespace, &name, &version);
                    return Ok(version);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    current = secrets
                        .get(&name)
                        .await
                        .map_err(kube_err("re-read refresh-token Secret"))?;
                }
                Err(error) => return Err(kube_err("store the sealed refresh token")(error)),
            }
        }
        Err(Error::RotationNotStored(ATTEMPTS))
    }

    /// Nothing to call: bring the status up to date with the clock (a token
    /// may have expired) and sleep until the next thing that can happen.
    async fn settle(
        &self,
        credential: &OAuthCredential,
        now: Timestamp,
        wake: Option<Timestamp>,
    ) -> Result<Action, Error> {
        let generation = credential.metadata.generation.unwrap_or(0);
        let desired = credential
            .status
            .as_ref()
            .map(|s| status::at_time(s, now, generation));
        let next_change = desired
            .as_ref()
            .and_then(|s| status::next_status_change(s, now));
        if let Some(desired) = desired {
            self.write_status(credential, desired).await?;
        }
        Ok(self.requeue_at([wake, next_change].into_iter().flatten().min()))
    }

    async fn refresh(
        &self,
        credential: &OAuthCredential,
        output: OutputSecret,
        why: RefreshReason,
    ) -> Result<Action, Error> {
        let ns = credential.namespace().unwrap_or_default();
        let name = credential.name_any();
        let spec = &credential.spec;
        let generation = credential.metadata.generation.unwrap_or(0);
        let old = credential.status.as_ref();
        let forced = credential
            .annotations()
            .get(FORCE_REFRESH_ANNOTATION)
            .map(String::as_str)
            .filter(|v| old.and_then(|s| s.last_forced_refresh.as_deref()) != Some(*v));
        let seed = format!("{}/{}", credential.uid().unwrap_or_default(), generation);

        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let client_secret = secrets
            .get_opt(&spec.client_secret_ref.name)
            .await
            .map_err(kube_err("read client Secret"))?;
        let mut refresh_secret = secrets
            .get_opt(&spec.refresh_token_secret_ref.name)
            .await
            .map_err(kube_err("read refresh-token Secret"))?;
        // A rotated token that an earlier attempt received but could not
        // store is the grant's only valid token: store it before anything,
        // and never exchange the old one again.
        let cred_key = ObjectRef::from_obj(credential);
        let unstored = self
            .unstored_rotations
            .lock()
            .expect("lock")
            .remove(&cred_key);
        if let Some(rotated) = unstored {
            match refresh_secret.clone() {
                Some(current) => {
                    let keys = self.keys.current();
                    let key = &spec.refresh_token_secret_ref.key;
                    if let Err(error) = self
                        .store_sealed_refresh_token(
                            &secrets, current, key, &rotated, &keys, &ns, &name,
                        )
                        .await
                    {
                        self.unstored_rotations
                            .lock()
                            .expect("lock")
                            .insert(cred_key, rotated);
                        return Err(error);
                    }
                    refresh_secret = secrets
                        .get_opt(&spec.refresh_token_secret_ref.name)
                        .await
                        .map_err(kube_err("read refresh-token Secret"))?;
                }
                None => {
                    self.unstored_rotations
                        .lock()
                        .expect("lock")
                        .insert(cred_key, rotated);
                }
            }
        }
        let inputs = Inputs {
            generation,
            client_secret_version: version_of(client_secret.as_ref()),
            refresh_token_secret_version: version_of(refresh_secret.as_ref()),
        };
        let now = self.now();
        let attempts = status::failed_attempts_after_failure(old, forced.is_some());
        let base = Failed {
            now,
            generation,
            category: FailureCategory::Configuration,
            reason: "",
            message: String::new(),
            provider: Default::default(),
            http_status: None,
            inputs,
            retry_at: Some(schedule::retry_time(
                now,
                BackoffClass::Configuration,
                attempts,
                None,
                &seed,
            )),
            forced,
        };

        // Inputs that only a person can supply or fix: no provider call.
        let client = match client_credentials(client_secret.as_ref(), &spec.client_secret_ref) {
            Ok(client) => client,
            Err(message) => {
                let failed = Failed {
                    reason: reason::CLIENT_SECRET_MISSING,
                    message,
                    ..base
                };
                return self.record_failure(credential, failed, why).await;
            }
        };
        let refresh_key = &spec.refresh_token_secret_ref.key;
        let keys = self.keys.current();
        let (refresh_token, sealed_with) = match stored_refresh_token(
            refresh_secret.as_ref(),
            refresh_key,
            &keys,
            &ns,
            &name,
        ) {
            Stored::Plain(token) => (token, None),
            Stored::Sealed { token, key_id } => (token, Some(key_id)),
            Stored::Missing => {
                let message = format!(
                    "Secret {} has no non-empty key {refresh_key:?}; store a refresh token there, for example with \
                     `oauth-token-operator authorize {ns}/{name}`",
                    spec.refresh_token_secret_ref.name
                );
                let failed = Failed {
                    category: FailureCategory::ReauthRequired,
                    reason: reason::REFRESH_TOKEN_MISSING,
                    message,
                    retry_at: None,
                    ..base
                };
                return self.record_failure(credential, failed, why).await;
            }
            Stored::Unreadable(error) => {
                let message = format!(
                    "{error}; store a new refresh token in Secret {} (for example with `oauth-token-operator authorize {ns}/{name}`), \
                     or restore the seal key",
                    spec.refresh_token_secret_ref.name
                );
                let failed = Failed {
                    category: FailureCategory::ReauthRequired,
                    reason: reason::SEALED_TOKEN_UNREADABLE,
                    message,
                    retry_at: None,
                    ..base
                };
                return self.record_failure(credential, failed, why).await;
            }
        };
        let endpoint =
            match TokenEndpoint::from_provider(&spec.provider, self.allow_insecure_loopback_http) {
                Ok(endpoint) => endpoint,
                Err(error) => {
                    let failed = Failed {
                        reason: reason::INVALID_TOKEN_ENDPOINT,
                        message: error.to_string(),
                        ..base
                    };
                    return self.record_failure(credential, failed, why).await;
                }
            };
        let refresh_before = match spec
            .refresh_before
            .as_deref()
            .map(schedule::parse_duration)
            .transpose()
        {
            Ok(value) => value,
            Err(message) => {
                let failed = Failed {
                    reason: reason::INVALID_SPEC,
                    message: format!("spec.refreshBefore: {message}"),
                    ..base
                };
                return self.record_failure(credential, failed, why).await;
            }
        };

        // Per-endpoint rate limit: wait for a slot (before the fence check,
        // since the wait may be long).
        let host = endpoint.url().host_str().unwrap_or_default().to_string();
        let key = backlog_key(credential);
        if self.rate_limit.check_key(&host).is_err() {
            let expiry = backlog_place(credential, (self.clock)());
            let now = Instant::now();
            {
                let mut backlog = self.backlog.lock().expect("lock");
                if let Some(delay) = backlog.step_aside(
                    &host,
                    &key,
                    expiry,
                    now,
                    self.waiting_slots,
                    self.endpoint_rate,
                ) {
                    self.metrics.rate_limit_deferral();
                    return Ok(Action::requeue(delay));
                }
                backlog.enter(&host, &key, expiry, now + Duration::from_secs(60));
            }
            self.metrics.rate_limit_wait();
            self.rate_limit.until_key_ready(&host).await;
        }
        self.backlog.lock().expect("lock").leave(&key);
        let sent_at = self.now();
        // Fencing: a replica whose hold on the Lease might end during the
        // call does not start it; the next leader will.
        if !self.fence.allows((self.clock)()) {
            debug!(
                namespace = ns,
                name, "not calling the token endpoint: leadership not assured for the call"
            );
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        let started = Instant::now();
        let result = self
            .tokens
            .refresh(&endpoint, &client, &refresh_token, self.clock)
            .await;
        let latency = started.elapsed();
        let now = self.now();
        let outcome = match &result {
            Ok(_) => "success",
            Err(failure) => failure.reason,
        };
        self.metrics.refresh(outcome, latency);
        let token = match result {
            Ok(token) => token,
            Err(failure) => {
                let backoff = match failure.class {
                    FailureClass::NeedsReauth => None,
                    FailureClass::Configuration => Some(BackoffClass::Configuration),
                    FailureClass::Transient => Some(BackoffClass::Transient),
                };
                // From the precise time of the answer: retry_time rounds up,
                // so a Retry-After is never cut short by the truncation.
                let answered_at = (self.clock)();
                let retry_at = backoff.map(|class| {
                    schedule::retry_time(answered_at, class, attempts, failure.retry_after, &seed)
                });
                let failed = Failed::from_classified(
                    &failure,
                    Failed {
                        now,
                        retry_at,
                        ..base
                    },
                );
                info!(
                    namespace = ns,
                    name,
                    outcome = failure.reason,
                    category = ?failed.category,
                    http_status = failure.http_status,
                    latency_ms = latency.as_millis() as u64,
                    trigger = why.as_str(),
                    "refresh failed"
                );
                return self.record_failure(credential, failed, why).await;
            }
        };

        // A rotated refresh token is the only copy of the grant: store it,
        // sealed, before anything else.
        let mut refresh_state = RefreshTokenState {
            secret_version: version_of(refresh_secret.as_ref()),
            sealed_with,
        };
        if let (Some(rotated), Some(current)) = (&token.refresh_token, refresh_secret) {
            let stored = self
                .store_sealed_refresh_token(
                    &secrets,
                    current,
                    refresh_key,
                    rotated,
                    &keys,
                    &ns,
                    &name,
                )
                .await;
            let version = match stored {
                Ok(version) => version,
                Err(error) => {
                    // Kept in memory and stored first on the next attempt.
                    let key = ObjectRef::from_obj(credential);
                    self.unstored_rotations
                        .lock()
                        .expect("lock")
                        .insert(key, rotated.clone());
                    return Err(error);
                }
            };
            refresh_state = RefreshTokenState {
                secret_version: version,
                sealed_with: Some(keys.primary().to_string()),
            };
        }

        let lifetime =
            SignedDuration::try_from(token.expires_in).unwrap_or(SignedDuration::from_hours(1));
        let expires_at = schedule::whole_seconds(sent_at + lifetime);
        let refresh_at = schedule::refresh_time(
            sent_at,
            expires_at,
            refresh_before,
            &format!("{seed}/{expires_at}"),
        );
        let secret = output_secret::build(credential, &token, expires_at);
        let written = match output {
            OutputSecret::Absent => secrets
                .create(&PostParams::default(), &secret)
                .await
                .map(drop),
            OutputSecret::Owned => secrets
                .patch(
                    &spec.output.secret_name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await
                .map(drop),
            // `decide` plans no refresh into a foreign Secret; should one
            // appear anyway, it is reported, never written.
            OutputSecret::Foreign => return self.report_conflict(credential, now).await,
        };
        match written {
            Ok(()) => {}
            // Someone created a Secret of that name since we looked.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                return self.report_conflict(credential, now).await;
            }
            Err(error) => return Err(kube_err("write output Secret")(error)),
        }

        let desired = status::after_success(
            old,
            Success {
                now,
                generation,
                expires_at,
                refresh_at,
                scope: token.scope.as_deref(),
                output_secret: &spec.output.secret_name,
                forced,
                refresh_token: refresh_state,
            },
        );
        info!(
            namespace = ns,
            name,
            outcome = "success",
            trigger = why.as_str(),
            rotated = token.refresh_token.is_some(),
            expires_at = %expires_at,
            refresh_at = %refresh_at,
            latency_ms = latency.as_millis() as u64,
            "refreshed"
        );
        let next_change = status::next_status_change(&desired, now);
        self.write_status(credential, desired).await?;
        Ok(self.requeue_at([Some(refresh_at), next_change].into_iter().flatten().min()))
    }

    /// The output name belongs to someone else: say so and wait. The Secret
    /// watch reconciles again when that Secret goes.
    async fn report_conflict(
        &self,
        credential: &OAuthCredential,
        now: Timestamp,
    ) -> Result<Action, Error> {
        let generation = credential.metadata.generation.unwrap_or(0);
        let desired = status::after_conflict(
            credential.status.as_ref(),
            now,
            generation,
            &credential.spec.output.secret_name,
        );
        self.write_status(credential, desired).await?;
        Ok(Action::await_change())
    }

    async fn record_failure(
        &self,
        credential: &OAuthCredential,
        failed: Failed<'_>,
        why: RefreshReason,
    ) -> Result<Action, Error> {
        let now = failed.now;
        let retry_at = failed.retry_at;
        if failed.http_status.is_none() {
            info!(
                namespace = credential.namespace(),
                name = credential.name_any(),
                outcome = failed.reason,
                trigger = why.as_str(),
                "refresh not attempted"
            );
        }
        let desired = status::after_failure(credential.status.as_ref(), failed);
        let next_change = status::next_status_change(&desired, now);
        self.write_status(credential, desired).await?;
        Ok(self.requeue_at([retry_at, next_change].into_iter().flatten().min()))
    }

    /// Writes the status if it differs from the stored one, then emits the
    /// events its transitions call for.
    async fn write_status(
        &self,
        credential: &OAuthCredential,
        desired: OAuthCredentialStatus,
    ) -> Result<(), Error> {
        let old = credential.status.as_ref();
        // Compare in stored form, as the API server will return it.
        let desired = stored_form(desired);
        if old == Some(&desired) {
            return Ok(());
        }
        let api: Api<OAuthCredential> = Api::namespaced(
            self.client.clone(),
            &credential.namespace().unwrap_or_default(),
        );
        let patch = json!({
            "apiVersion": OAuthCredential::api_version(&()),
            "kind": OAuthCredential::kind(&()),
            "status": desired,
        });
        api.patch_status(
            &credential.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kube_err("write status"))?;
        let notices = status::notices(old, &desired);
        self.written
            .lock()
            .expect("lock")
            .insert(ObjectRef::from_obj(credential), (desired, Instant::now()));
        // Without the resourceVersion, a repeat of the same event is
        // recognised and aggregated (a series) instead of created anew.
        let mut reference = credential.object_ref(&());
        reference.resource_version = None;
        for notice in notices {
            let event = Event {
                type_: if notice.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: notice.reason.into(),
                note: Some(notice.message),
                action: notice.action.into(),
                secondary: None,
            };
            if let Err(error) = self.recorder.publish(&event, &reference).await {
                warn!(namespace = credential.namespace(), name = credential.name_any(), %error, "could not publish event");
            }
        }
        Ok(())
    }
}

fn stored_form(status: OAuthCredentialStatus) -> OAuthCredentialStatus {
    serde_json::to_value(&status)
        .and_then(serde_json::from_value)
        .expect("status round-trips through JSON")
}

/// A credential's key in the rate-limit backlog.
fn backlog_key(credential: &OAuthCredential) -> String {
    format!(
        "{}/{}",
        credential.namespace().unwrap_or_default(),
        credential.name_any()
    )
}

/// The credential's place in the rate-limit backlog: when its access token
/// expires, in unix seconds, while it is valid. A token that has already
/// expired, or none at all, goes after every valid one: saving the tokens
/// that can still be saved keeps the most workloads running (measured with
/// 1,000 credentials due at once and 312 already expired: serving those first
/// let 667 valid tokens expire).
fn backlog_place(credential: &OAuthCredential, now: Timestamp) -> i64 {
    const AFTER_EVERY_VALID_TOKEN: i64 = 1 << 40;
    match credential
        .status
        .as_ref()
        .and_then(|s| s.expires_at.as_ref())
    {
        Some(expiry) if expiry.0 > now => expiry.0.as_second(),
        Some(expiry) => AFTER_EVERY_VALID_TOKEN + expiry.0.as_second(),
        None => AFTER_EVERY_VALID_TOKEN,
    }
}

/// Where a credential's refresh token is stored, sealed: `<key>.sealed`.
pub fn sealed_key(key: &str) -> String {
    format!("{key}.sealed")
}

/// The refresh token as stored in its Secret.
enum Stored {
    Missing,
    /// In plain text under the configured key: new, not yet sealed.
    Plain(SecretString),
    Sealed {
        token: SecretString,
        key_id: String,
    },
    Unreadable(OpenError),
}

fn stored_refresh_token(
    secret: Option<&Secret>,
    key: &str,
    keys: &KeyRing,
    namespace: &str,
    credential: &str,
) -> Stored {
    // A plaintext value is a token a person just supplied: it wins.
    if let Some(token) = secret_value(secret, key) {
        return Stored::Plain(token);
    }
    let Some(sealed) = secret_value(secret, &sealed_key(key)) else {
        return Stored::Missing;
    };
    let sealed = sealed.expose_secret();
    let key_id = seal::key_id_of(sealed).unwrap_or_default().to_string();
    match keys.open(sealed, namespace, credential) {
        Ok(token) => Stored::Sealed { token, key_id },
        Err(error) => Stored::Unreadable(error),
    }
}

fn version_of(secret: Option<&Secret>) -> String {
    secret
        .and_then(|s| s.metadata.resource_version.clone())
        .unwrap_or_default()
}

fn secret_value(secret: Option<&Secret>, key: &str) -> Option<SecretString> {
    let bytes = secret?.data.as_ref()?.get(key)?;
    let text = String::from_utf8(bytes.0.clone()).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| SecretString::from(text.to_string()))
}

/// The OAuth client from its Secret, or why it cannot be read (no values in
/// the message).
pub fn client_credentials(
    secret: Option<&Secret>,
    reference: &ClientSecretRef,
) -> Result<ClientCredentials, String> {
    let Some(secret) = secret else {
        return Err(format!("client Secret {} does not exist", reference.name));
    };
    let missing = |key: &str| {
        format!(
            "client Secret {} has no non-empty key {key:?}",
            reference.name
        )
    };
    let client_id = secret_value(Some(secret), &reference.client_id_key)
        .ok_or_else(|| missing(&reference.client_id_key))?;
    let client_secret = secret_value(Some(secret), &reference.client_secret_key)
        .ok_or_else(|| missing(&reference.client_secret_key))?;
    Ok(ClientCredentials {
        client_id: client_id.expose_secret().to_string(),
        client_secret,
    })
}

impl Context {
    /// Requeue at `at`, or wait for a change when nothing is scheduled. The
    /// wait is measured from the precise clock, not the whole second that
    /// decisions use: from a truncated `now` the wake-up would come late by
    /// the fraction of a second truncated away (measured: up to 1 s).
    fn requeue_at(&self, at: Option<Timestamp>) -> Action {
        match at {
            Some(at) => {
                let wait =
                    Duration::try_from(at.duration_since((self.clock)())).unwrap_or(Duration::ZERO);
                Action::requeue(wait)
            }
            None => Action::await_change(),
        }
    }
}
