//! The watches and caches that feed the reconcile loop, sized for tens of
//! thousands of credentials: the credentials themselves (managedFields
//! stripped), the metadata of the output Secrets this operator labels, and
//! metadata-only, uncached watches of the Secrets that opted in as inputs
//! (selected by their `type`), which `references` maps to the credentials
//! naming them. No Secret data is cached, and no other Secret is watched.

use std::collections::BTreeSet;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use governor::{Quota, RateLimiter};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::debug;

use super::owned_outputs::OwnedOutputs;
use super::{Context, FIELD_MANAGER, error_policy, memory::Memory, reconcile};
use crate::admin::Health;
use crate::backlog::Backlog;
use crate::breaker::{Calls, Shares};
use crate::clock::SharedClock;
use crate::endpoint::EndpointPolicy;
use crate::input_secrets::InputKind;
use crate::keys::Keys;
use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::output_secret;
use crate::references::SecretReferences;
use crate::resource::{CREDENTIAL_LABEL, OAuthCredential};
use crate::token_client::{TokenClient, TokenClientConfig};

/// How the controller runs.
#[derive(Clone)]
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
    pub clock: SharedClock,
    /// Where tokens may be sent.
    pub endpoints: EndpointPolicy,
    /// The operator's own namespace, where it keeps its seal keys: never
    /// served.
    pub operator_namespace: String,
    /// Token-endpoint calls in flight allowed per endpoint and per namespace.
    pub shares: Shares,
    /// The `token_type`s accepted from providers.
    pub token_types: Vec<String>,
    /// The shortest interval between scheduled refreshes.
    pub min_refresh_interval: Duration,
    /// How long before a refresh token's own expiry the credential warns.
    pub refresh_token_warning: Duration,
    /// With sharding: the shards this replica holds. Only their credentials
    /// (and output Secrets) are cached and reconciled.
    pub shard_scope: Option<ShardScope>,
    /// What the process remembers per credential, across controller runs.
    pub memory: Arc<Memory>,
}

/// The shards a controller serves, of how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardScope {
    pub shards: u32,
    pub held: BTreeSet<u32>,
}

impl ShardScope {
    /// Whether the credential `namespace/name` is in a held shard.
    pub fn covers(&self, namespace: &str, name: &str) -> bool {
        self.held
            .contains(&crate::shards::shard_of(namespace, name, self.shards))
    }
}

/// Whether a watch event is about an object in `scope` (`name_of` says which
/// credential an object belongs to); bookkeeping events always are.
fn in_scope<K: Resource>(
    scope: &Option<ShardScope>,
    event: &watcher::Event<K>,
    name_of: impl Fn(&K) -> Option<String>,
) -> bool {
    let (
        Some(scope),
        watcher::Event::Apply(object)
        | watcher::Event::Delete(object)
        | watcher::Event::InitApply(object),
    ) = (scope, event)
    else {
        return true;
    };
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    name_of(object).is_some_and(|name| scope.covers(&namespace, &name))
}

impl Context {
    /// The context of a controller over these caches.
    pub(super) fn new(
        client: Client,
        config: &ControllerConfig,
        keys: Keys,
        credentials: Store<OAuthCredential>,
        owned_secrets: OwnedOutputs,
        references: SecretReferences,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: config.instance.clone(),
        };
        Context {
            tokens: TokenClient::new(&config.token_client).expect("the token HTTP client builds"),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            credentials,
            owned_secrets,
            references,
            keys,
            fence: config.fence.clone(),
            metrics: config.metrics.clone(),
            clock: config.clock.clone(),
            endpoints: config.endpoints.clone(),
            operator_namespace: config.operator_namespace.clone(),
            memory: config.memory.clone(),
            rate_limit: RateLimiter::keyed(
                Quota::per_second(config.endpoint_rate).allow_burst(config.endpoint_burst),
            ),
            backlog: Mutex::new(Backlog::default()),
            calls: Mutex::new(Calls::default()),
            shares: config.shares,
            token_types: config.token_types.clone(),
            refresh_token_warning: config.refresh_token_warning,
            min_refresh_interval: config.min_refresh_interval,
            endpoint_rate: f64::from(config.endpoint_rate.get()),
            waiting_slots: usize::from(config.concurrency / 2).max(1),
        }
    }
}

/// Runs the controller until `shutdown` completes (`Ok`), or until a task it
/// depends on ends.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    keys: Keys,
    keys_changed: tokio::sync::watch::Receiver<u64>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Stopped> {
    let (affected_tx, affected_rx) = tokio::sync::mpsc::unbounded_channel();
    let references = SecretReferences::notifying(affected_tx);
    // Credentials whose refusal may have changed with another credential's.
    let affected = futures::stream::unfold(affected_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });
    let (credentials, credentials_writer) = reflector::store();
    let owned_secrets = OwnedOutputs::default();
    let (credentials_api, secrets_api) = apis(&client, config.watch_namespace.as_deref());
    let credential_stream =
        credential_watch(credentials_api, credentials_writer, &references, &config);
    let owned_stream = owned_watch(secrets_api.clone(), owned_secrets.clone(), &config);
    let inputs = futures::stream::select(
        input_watch(
            secrets_api.clone(),
            InputKind::Client,
            &references,
            &config.health,
        ),
        input_watch(
            secrets_api,
            InputKind::RefreshToken,
            &references,
            &config.health,
        ),
    );
    let ctx = Arc::new(Context::new(
        client,
        &config,
        keys,
        credentials.clone(),
        owned_secrets,
        references.clone(),
    ));
    let health = config.health.clone();
    health.restart_stall_clock();
    let controller = Controller::for_stream(credential_stream, credentials.clone())
        .owns_stream(owned_stream)
        .watches_stream(inputs, move |secret: PartialObjectMeta<Secret>| {
            credentials_naming(&references, &secret)
        })
        .reconcile_on(affected)
        // A new key ring re-reconciles everything, so old keys go out of use.
        .reconcile_all_on(changes(keys_changed))
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            health.reconciled();
            async move {
                if let Err(error) = result {
                    debug!(%error, "controller event");
                }
            }
        });
    // The gauges follow the cache on a task of their own (so that a pass
    // over a large cache never holds up reconciles); if that task ends, so
    // does the controller, and the supervisor above says why.
    let mut gauges = tokio::spawn(follow_cache(credentials, ctx, config.health.clone()));
    let ended = tokio::select! {
        () = controller => Ok(()),
        joined = &mut gauges => Err(Stopped::CacheFollower(match joined {
            Ok(()) => "it returned".to_string(),
            Err(error) => error.to_string(),
        })),
    };
    gauges.abort();
    stopped_serving(&config);
    ended
}

/// A replica that stops serving (leadership or shards lost) reports no
/// credentials, so that sums over replicas count each credential once, and
/// is neither ready nor stalled.
fn stopped_serving(config: &ControllerConfig) {
    config.metrics.observe(std::iter::empty());
    config.health.set_ready(false);
    config.health.restart_stall_clock();
}

/// Each change of a watched value, as a stream.
fn changes<T: Send + Sync + 'static>(
    receiver: tokio::sync::watch::Receiver<T>,
) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(receiver, |mut rx| async move {
        rx.changed().await.ok().map(|()| ((), rx))
    })
}

/// The credential and Secret APIs, in one namespace or all. Secrets are
/// read as `PartialObjectMeta`: no Secret data crosses the wire for these
/// watches.
fn apis(
    client: &Client,
    namespace: Option<&str>,
) -> (Api<OAuthCredential>, Api<PartialObjectMeta<Secret>>) {
    match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    }
}

/// The credentials, cached, feeding the reference index; ready once the
/// first full list is in the cache.
fn credential_watch(
    api: Api<OAuthCredential>,
    writer: reflector::store::Writer<OAuthCredential>,
    references: &SecretReferences,
    config: &ControllerConfig,
) -> impl Stream<Item = Result<OAuthCredential, watcher::Error>> + use<> {
    let health = &config.health;
    let (index, synced, health) = (references.clone(), health.clone(), health.clone());
    let scope = config.shard_scope.clone();
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .inspect(move |event| health.observe_watch("credentials", event.is_ok()))
        .try_filter(move |event| {
            let keep = in_scope(&scope, event, |c: &OAuthCredential| c.metadata.name.clone());
            std::future::ready(keep)
        })
        .modify(strip_cached_fields)
        .inspect_ok(move |event| {
            index.observe(event);
            if matches!(event, watcher::Event::InitDone) {
                synced.set_ready(true);
            }
        })
        .reflect(writer)
        .applied_objects()
}

/// The metadata of the output Secrets this operator labels, kept in `owned`.
fn owned_watch(
    api: Api<PartialObjectMeta<Secret>>,
    owned: OwnedOutputs,
    config: &ControllerConfig,
) -> impl Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + use<> {
    let health = config.health.clone();
    let scope = config.shard_scope.clone();
    let watch = watcher::Config::default()
        .labels(&output_secret::owned_selector())
        .any_semantic();
    watcher(api, watch)
        .default_backoff()
        .inspect(move |event| health.observe_watch("output Secrets", event.is_ok()))
        .try_filter(move |event| {
            let credential =
                |s: &PartialObjectMeta<Secret>| s.labels().get(CREDENTIAL_LABEL).cloned();
            std::future::ready(in_scope(&scope, event, credential))
        })
        .inspect_ok(move |event| owned.apply(event))
        .touched_objects()
}

/// The credentials a change of this input Secret concerns: those naming it.
fn credentials_naming(
    references: &SecretReferences,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<OAuthCredential>> {
    match secret.namespace() {
        Some(ns) => references.credentials_for(&ns, &secret.name_any()),
        None => Vec::new(),
    }
}

/// Why the controller stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("the task that follows the credential cache ended: {0}")]
    CacheFollower(String),
}

/// The metadata of the Secrets that opted in as inputs of `kind` (by their
/// type), streamed without being stored; only the versions of referenced ones
/// are remembered.
fn input_watch(
    secrets_api: Api<PartialObjectMeta<Secret>>,
    kind: InputKind,
    references: &SecretReferences,
    health: &Arc<Health>,
) -> impl Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + use<> {
    let (references, health) = (references.clone(), health.clone());
    let name = match kind {
        InputKind::Client => "client Secrets",
        InputKind::RefreshToken => "refresh-token Secrets",
    };
    let config = watcher::Config::default()
        .fields(&format!("type={}", kind.secret_type()))
        .any_semantic();
    watcher(secrets_api, config)
        .default_backoff()
        .inspect(move |event| health.observe_watch(name, event.is_ok()))
        .inspect_ok(move |event| references.observe_input_secret(kind, event))
        .touched_objects()
}

/// Keeps the gauges, the scheduled set and the backlog in step with the
/// credential cache, every 5 s. (Never await the store's readiness here:
/// kube-runtime wakes only its most recent waiter, and the controller itself
/// waits on it.)
async fn follow_cache(store: Store<OAuthCredential>, ctx: Arc<Context>, health: Arc<Health>) {
    loop {
        let state = store.state();
        ctx.metrics.observe(state.iter().map(|c| c.as_ref()));
        // What `/livez` weighs progress against: the earliest scheduled call
        // already past.
        let now = ctx.clock.now();
        let earliest_due = state
            .iter()
            .filter_map(|c| c.status.as_ref()?.refresh_at.as_ref().map(|at| at.0))
            .filter(|at| *at <= now)
            .min();
        health.set_overdue(
            earliest_due
                .map(|at| Duration::try_from(now.duration_since(at)).unwrap_or(Duration::ZERO)),
        );
        ctx.memory.forget_deleted(&state, &ctx.metrics);
        drop(state);
        ctx.backlog.lock().expect("lock").prune(ctx.clock.instant());
        // Hosts not called lately are forgotten.
        ctx.rate_limit.retain_recent();
        ctx.rate_limit.shrink_to_fit();
        ctx.report_memory();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

impl Context {
    /// The sizes of what this process keeps per credential, Secret and
    /// endpoint (`oauth_token_operator_tracked_entries`).
    fn report_memory(&self) {
        for (map, entries) in self.memory.sizes() {
            self.metrics.set_tracked(map, entries);
        }
        let (secrets, versions) = self.references.sizes();
        self.metrics.set_tracked("referenced_secrets", secrets);
        self.metrics.set_tracked("secret_versions", versions);
        self.metrics
            .set_tracked("rate_limited_endpoints", self.rate_limit.len());
        let backlog = self.backlog.lock().expect("lock").len();
        self.metrics.set_tracked("rate_limit_backlog", backlog);
        let calls = self.calls.lock().expect("calls lock").len();
        self.metrics.set_tracked("endpoint_calls", calls);
    }
}

/// Cached copies keep only what reconciles read.
fn strip_cached_fields<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}
