//! Leader election on a `coordination.k8s.io` Lease, and the fence that keeps
//! a deposed leader from calling a token endpoint.
//!
//! Election is kube-lease-manager's (maintained, kube 5, server-side apply on
//! the Lease so two candidates cannot both take it). Only the leader runs the
//! controller. The fence is ours: before every token-endpoint call the leader
//! checks, against the Lease as the API server last reported it, that its
//! hold lasts longer than the whole call may take. A leader that cannot renew
//! (partitioned, stalled) therefore stops calling before the Lease expires,
//! and a standby takes over only after it expires: two replicas never
//! exchange the same refresh token. This costs no write per refresh, unlike
//! recording each attempt in status.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tracing::debug;

use crate::admin::Health;

/// The Lease as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub renewed: Option<Timestamp>,
    pub duration: Duration,
}

impl LeaseView {
    fn of(lease: Lease) -> Self {
        let spec = lease.spec.unwrap_or_default();
        LeaseView {
            holder: spec.holder_identity,
            renewed: spec.renew_time.map(|t| t.0),
            duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
        }
    }
}

/// The name of the Lease watch, for health.
const WATCH: &str = "lease";

/// Whether `identity` may start a call that can take up to `budget`, at `now`:
/// it must hold the Lease, and the Lease must outlive the call.
pub fn lease_allows(
    view: Option<&LeaseView>,
    identity: &str,
    now: Timestamp,
    budget: Duration,
) -> bool {
    let Some(view) = view else { return false };
    let (Some(holder), Some(renewed)) = (view.holder.as_deref(), view.renewed) else {
        return false;
    };
    if holder != identity {
        return false;
    }
    let Ok(lifetime) = SignedDuration::try_from(view.duration) else {
        return false;
    };
    let Ok(budget) = SignedDuration::try_from(budget) else {
        return false;
    };
    renewed + lifetime > now + budget
}

/// Permission to call token endpoints. Cheap to clone.
#[derive(Clone)]
pub struct Fence {
    mode: FenceMode,
}

#[derive(Clone)]
enum FenceMode {
    /// No leader election: a single replica always may.
    Open,
    Lease {
        identity: String,
        view: Arc<RwLock<Option<LeaseView>>>,
        budget: Duration,
    },
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mode {
            FenceMode::Open => f.write_str("Fence::Open"),
            FenceMode::Lease {
                identity, budget, ..
            } => f
                .debug_struct("Fence::Lease")
                .field("identity", identity)
                .field("budget", budget)
                .finish(),
        }
    }
}

impl Fence {
    pub fn open() -> Self {
        Fence {
            mode: FenceMode::Open,
        }
    }

    /// A fence over the Lease `namespace/name`, and the watch that keeps it
    /// current: a future that runs until the process ends, for the caller to
    /// supervise (the fence says no once that watch stops). `budget` is the
    /// longest a token-endpoint call may take, plus a margin.
    pub fn watching(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        budget: Duration,
        health: Arc<Health>,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let view = Arc::new(RwLock::new(None));
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let shared = view.clone();
        let watch = async move {
            let mut leases = watcher(api, config)
                .default_backoff()
                .inspect(move |event| health.observe_watch(WATCH, event.is_ok()))
                .touched_objects()
                .boxed();
            while let Some(event) = leases.next().await {
                match event {
                    Ok(lease) => {
                        let seen = LeaseView::of(lease);
                        debug!(holder = ?seen.holder, renewed = ?seen.renewed, "lease observed");
                        *shared.write().expect("lease view lock") = Some(seen);
                    }
                    Err(error) => debug!(%error, "lease watch error; retrying"),
                }
            }
        };
        let fence = Fence {
            mode: FenceMode::Lease {
                identity: identity.to_string(),
                view,
                budget,
            },
        };
        (fence, watch)
    }

    /// Whether a token-endpoint call may start now.
    pub fn allows(&self, now: Timestamp) -> bool {
        match &self.mode {
            FenceMode::Open => true,
            FenceMode::Lease {
                identity,
                view,
                budget,
            } => lease_allows(
                view.read().expect("lease view lock").as_ref(),
                identity,
                now,
                *budget,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn view(holder: &str, renewed: &str) -> LeaseView {
        LeaseView {
            holder: Some(holder.into()),
            renewed: Some(ts(renewed)),
            duration: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_holder_may_call_while_the_lease_outlives_the_call() {
        let lease = view("a", "2026-11-21T20:00:00Z");
        let budget = Duration::from_secs(11);
        assert!(lease_allows(
            Some(&lease),
            "a",
            ts("2026-11-21T20:00:18Z"),
            budget
        ));
        assert!(
            !lease_allows(Some(&lease), "a", ts("2026-11-21T20:00:19Z"), budget),
            "the call could outlive the lease"
        );
    }

    #[test]
    fn nobody_else_may_call_and_nobody_may_without_a_lease() {
        let lease = view("a", "2026-11-21T20:00:00Z");
        let now = ts("2026-11-21T20:00:01Z");
        assert!(!lease_allows(
            Some(&lease),
            "b",
            now,
            Duration::from_secs(1)
        ));
        assert!(!lease_allows(None, "a", now, Duration::from_secs(1)));
        let unheld = LeaseView {
            holder: None,
            ..lease
        };
        assert!(!lease_allows(
            Some(&unheld),
            "a",
            now,
            Duration::from_secs(1)
        ));
    }

    #[test]
    fn an_open_fence_always_allows() {
        assert!(Fence::open().allows(ts("2026-11-21T20:00:00Z")));
    }
}
