//! Prometheus metrics. Every label has a small, fixed set of values (outcome
//! reasons, error categories, condition states): never a name, a namespace or
//! an error text, so cardinality stays bounded at any number of credentials.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::resource::{OAuthCredential, READY, REAUTH_REQUIRED};

mod process;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    ready: &'static str,
    reauth_required: &'static str,
}

pub struct Metrics {
    registry: Registry,
    refresh_attempts: Family<OutcomeLabels, Counter>,
    refresh_duration: Histogram,
    reconcile_errors: Family<CategoryLabels, Counter>,
    credentials: Family<ConditionLabels, Gauge>,
    earliest_expiry: Gauge<f64, AtomicU64>,
    next_refresh: Gauge<f64, AtomicU64>,
    leader: Gauge<i64, AtomicI64>,
    rate_limit_waits: Counter,
    rate_limit_deferrals: Counter,
    scheduled: Gauge<i64, AtomicI64>,
    tracked: Family<MapLabels, Gauge>,
    lifecycle: Lifecycle,
}

/// The metrics of output Secrets and grants over their lifetime.
struct Lifecycle {
    output_restores: Counter,
    shards_held: Gauge<i64, AtomicI64>,
    revocations: Family<OutcomeLabels, Counter>,
    refresh_token_earliest_expiry: Gauge<f64, AtomicU64>,
}

impl Lifecycle {
    fn register(registry: &mut Registry) -> Self {
        Self {
            output_restores: register(
                registry,
                "output_restores",
                "Output Secrets written again, without a token call, after someone deleted them or changed their data",
                Counter::default(),
            ),
            revocations: register(
                registry,
                "revocations",
                "Refresh-token revocations at credential deletion (revokeOnDelete), by outcome: revoked, or failed (the credential went without one)",
                Family::<OutcomeLabels, Counter>::default(),
            ),
            shards_held: register(
                registry,
                "shards_held",
                "Shards whose credentials this replica serves (with --shards; 0 on a standby)",
                Gauge::<i64, AtomicI64>::default(),
            ),
            refresh_token_earliest_expiry: register(
                registry,
                "refresh_token_earliest_expiry_timestamp_seconds",
                "Unix time at which the first refresh token with a known expiry (time-limited grants) expires, among all credentials (0 when none)",
                Gauge::<f64, AtomicU64>::default(),
            ),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` under `name` and gives it back.
fn register<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Self {
        // The process metrics keep their standard, unprefixed names.
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("oauth_token_operator");
        registry.register(
            "build",
            "The operator's version and the git commit it was built from (always 1)",
            Info::new([
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", crate::cli::GIT_COMMIT),
            ]),
        );
        let (refresh_attempts, refresh_duration, reconcile_errors) =
            Self::register_refreshes(registry);
        let credentials = register(
            registry,
            "credentials",
            "OAuthCredentials by the status of their Ready and ReauthRequired conditions",
            Family::<ConditionLabels, Gauge>::default(),
        );
        let earliest_expiry = register(
            registry,
            "earliest_expiry_timestamp_seconds",
            "Unix time at which the first access token among all credentials expires (0 when none)",
            Gauge::<f64, AtomicU64>::default(),
        );
        let next_refresh = register(
            registry,
            "next_refresh_timestamp_seconds",
            "Unix time of the next scheduled token-endpoint call among all credentials (0 when none)",
            Gauge::<f64, AtomicU64>::default(),
        );
        let leader = register(
            registry,
            "leader",
            "1 while this replica runs the controller, else 0",
            Gauge::<i64, AtomicI64>::default(),
        );
        let rate_limit_waits = register(
            registry,
            "rate_limit_waits",
            "Token-endpoint calls that waited for the per-endpoint rate limit",
            Counter::default(),
        );
        let rate_limit_deferrals = register(
            registry,
            "rate_limit_deferrals",
            "Refreshes put back because credentials whose tokens expire sooner were waiting for the same endpoint's rate limit",
            Counter::default(),
        );
        let scheduled = register(
            registry,
            "credentials_scheduled",
            "Credentials this replica has reconciled since it started, so whose next action it has scheduled; equals the number of credentials once the start-up pass is done",
            Gauge::<i64, AtomicI64>::default(),
        );
        let tracked = register(
            registry,
            "tracked_entries",
            "Entries the operator keeps in memory, by map; they shrink as credentials, Secrets and endpoints go",
            Family::<MapLabels, Gauge>::default(),
        );
        let lifecycle = Lifecycle::register(registry);
        Self {
            registry: root,
            lifecycle,
            refresh_attempts,
            refresh_duration,
            reconcile_errors,
            credentials,
            earliest_expiry,
            next_refresh,
            leader,
            rate_limit_waits,
            rate_limit_deferrals,
            scheduled,
            tracked,
        }
    }

    pub fn set_shards_held(&self, shards: usize) {
        self.lifecycle
            .shards_held
            .set(i64::try_from(shards).unwrap_or(i64::MAX));
    }

    /// An output Secret written again without a token call.
    pub fn output_restored(&self) {
        self.lifecycle.output_restores.inc();
    }

    /// A revocation at deletion: `revoked` or `failed`.
    pub fn revocation(&self, outcome: &'static str) {
        self.lifecycle
            .revocations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The metrics of calls and reconciles.
    fn register_refreshes(
        registry: &mut Registry,
    ) -> (
        Family<OutcomeLabels, Counter>,
        Histogram,
        Family<CategoryLabels, Counter>,
    ) {
        let refresh_attempts = register(
            registry,
            "refresh_attempts",
            "Calls to token endpoints, by outcome: success, or the failure reason (e.g. InvalidGrant, RateLimited)",
            Family::<OutcomeLabels, Counter>::default(),
        );
        let refresh_duration = register(
            registry,
            "refresh_duration_seconds",
            "Time a token-endpoint call took, answer included",
            Histogram::new(exponential_buckets(0.005, 2.0, 12)),
        );
        let reconcile_errors = register(
            registry,
            "reconcile_errors",
            "Reconciles that failed and were retried, by category (kubernetes-api, rotation-conflict)",
            Family::<CategoryLabels, Counter>::default(),
        );
        (refresh_attempts, refresh_duration, reconcile_errors)
    }

    /// Sets the size of one in-memory map.
    pub fn set_tracked(&self, map: &'static str, entries: usize) {
        self.tracked
            .get_or_create(&MapLabels { map })
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn set_scheduled(&self, credentials: usize) {
        self.scheduled
            .set(i64::try_from(credentials).unwrap_or(i64::MAX));
    }

    /// One token-endpoint call and how long it took.
    pub fn refresh(&self, outcome: &'static str, took: Duration) {
        self.refresh_attempts
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.refresh_duration.observe(took.as_secs_f64());
    }

    pub fn rate_limit_wait(&self) {
        self.rate_limit_waits.inc();
    }

    pub fn rate_limit_deferral(&self) {
        self.rate_limit_deferrals.inc();
    }

    pub fn reconcile_error(&self, category: &'static str) {
        self.reconcile_errors
            .get_or_create(&CategoryLabels { category })
            .inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Recomputes the per-credential gauges from the cached credentials.
    pub fn observe<'a>(&self, credentials: impl IntoIterator<Item = &'a OAuthCredential>) {
        const STATES: [&str; 3] = ["True", "False", "Unknown"];
        let mut counts = [[0i64; 3]; 3];
        let mut earliest: Option<Timestamp> = None;
        let mut next: Option<Timestamp> = None;
        let mut refresh_token_expiry: Option<Timestamp> = None;
        let state = |value: Option<&str>| match value {
            Some("True") => 0,
            Some("False") => 1,
            _ => 2,
        };
        for credential in credentials {
            let status = credential.status.as_ref();
            let ready = state(
                status
                    .and_then(|s| s.condition(READY))
                    .map(|c| c.status.as_str()),
            );
            let reauth = state(
                status
                    .and_then(|s| s.condition(REAUTH_REQUIRED))
                    .map(|c| c.status.as_str()),
            );
            counts[ready][reauth] += 1;
            if let Some(at) = status.and_then(|s| s.expires_at.as_ref()) {
                earliest = Some(earliest.map_or(at.0, |e| e.min(at.0)));
            }
            if let Some(at) = status.and_then(|s| s.refresh_at.as_ref()) {
                next = Some(next.map_or(at.0, |n| n.min(at.0)));
            }
            let grant_expiry = status
                .and_then(|s| s.refresh_token.as_ref())
                .and_then(|r| r.expires_at.as_ref());
            if let Some(at) = grant_expiry {
                refresh_token_expiry = Some(refresh_token_expiry.map_or(at.0, |e| e.min(at.0)));
            }
        }
        for (r, ready) in STATES.iter().enumerate() {
            for (a, reauth_required) in STATES.iter().enumerate() {
                self.credentials
                    .get_or_create(&ConditionLabels {
                        ready,
                        reauth_required,
                    })
                    .set(counts[r][a]);
            }
        }
        self.earliest_expiry
            .set(earliest.map_or(0.0, |t| t.as_second() as f64));
        self.next_refresh
            .set(next.map_or(0.0, |t| t.as_second() as f64));
        self.lifecycle
            .refresh_token_earliest_expiry
            .set(refresh_token_expiry.map_or(0.0, |t| t.as_second() as f64));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_and_the_standard_process_metrics_are_exported() {
        let text = Metrics::new().encode();
        let build = format!(
            "oauth_token_operator_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::cli::GIT_COMMIT
        );
        assert!(text.contains(&build), "{text}");
        for name in [
            "# TYPE process_cpu_seconds counter",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_max_fds ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(!text.contains("oauth_token_operator_process"), "unprefixed");
    }

    #[test]
    fn outcomes_and_conditions_are_counted_with_bounded_labels() {
        let metrics = Metrics::new();
        metrics.refresh("success", Duration::from_millis(20));
        metrics.refresh("success", Duration::from_millis(30));
        metrics.refresh("InvalidGrant", Duration::from_millis(10));
        metrics.reconcile_error("kubernetes-api");
        let text = metrics.encode();
        assert!(
            text.contains(r#"oauth_token_operator_refresh_attempts_total{outcome="success"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"oauth_token_operator_refresh_attempts_total{outcome="InvalidGrant"} 1"#
            )
        );
        assert!(text.contains("oauth_token_operator_refresh_duration_seconds_count 3"));
        assert!(text.contains(
            r#"oauth_token_operator_reconcile_errors_total{category="kubernetes-api"} 1"#
        ));
        assert!(
            text.contains("# HELP oauth_token_operator_refresh_attempts Calls to token endpoints")
        );
    }

    #[test]
    fn an_empty_cluster_reports_zero_timestamps() {
        let metrics = Metrics::new();
        metrics.observe([]);
        let text = metrics.encode();
        assert!(
            text.contains("oauth_token_operator_earliest_expiry_timestamp_seconds 0.0"),
            "{text}"
        );
        assert!(text.contains(
            r#"oauth_token_operator_credentials{ready="True",reauth_required="False"} 0"#
        ));
    }
}
