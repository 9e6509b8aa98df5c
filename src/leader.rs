//! Leader election on a `coordination.k8s.io` Lease, and the fence that keeps
//! a deposed leader from calling a token endpoint.
//!
//! Election is kube-lease-manager's (maintained, kube 5, server-side apply on
//! the Lease so two candidates cannot both take it). Only the leader runs the
//! controller. The fence is ours: before every token-endpoint call the leader
//! checks that its hold on the Lease lasts longer than the whole call may
//! take, plus a safety margin. A leader that cannot renew (partitioned,
//! stalled) therefore stops calling before the Lease expires, and a standby
//! takes over only after it expires: two replicas never exchange the same
//! refresh token. This costs no write per refresh, unlike recording each
//! attempt in status.
//!
//! The hold is measured on this replica's monotonic clock, from when it saw
//! each renewal: never from the wall clock, whose jumps (backwards or
//! forwards) would stretch or cut the fence. What remains is the wall clocks
//! of the other replicas: a standby judges the Lease expired when its wall
//! clock passes the renewal time the leader wrote plus the duration. The
//! margin covers a standby whose clock runs up to `SKEW_MARGIN` ahead of the
//! leader's, less the time the leader took to see its own renewal (usually
//! milliseconds).

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tracing::debug;

use crate::admin::Health;
use crate::clock::SharedClock;
use crate::shards::{Holds, shard_of};

/// The default clock skew between replicas the fence tolerates: the least
/// time a leader keeps between the end of its last possible call and its
/// Lease's expiry (`--lease-skew-margin`).
pub const SKEW_MARGIN: Duration = Duration::from_secs(5);

/// The Lease as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    /// The renewal time written in the Lease (by the holder's wall clock):
    /// only compared for equality, to tell a new renewal from an old one.
    pub renewed: Option<Timestamp>,
    pub duration: Duration,
    /// When this replica first saw that renewal, on its monotonic clock.
    pub observed: Instant,
}

impl LeaseView {
    fn of(lease: Lease, observed: Instant) -> Self {
        let spec = lease.spec.unwrap_or_default();
        LeaseView {
            holder: spec.holder_identity,
            renewed: spec.renew_time.map(|t| t.0),
            duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
            observed,
        }
    }

    /// This view, unless it is the renewal `previous` already saw: then the
    /// earlier observation counts.
    fn after(mut self, previous: Option<&LeaseView>) -> Self {
        if let Some(previous) = previous
            && previous.renewed == self.renewed
            && previous.holder == self.holder
        {
            self.observed = previous.observed;
        }
        self
    }
}

/// The name of the Lease watch, for health.
const WATCH: &str = "lease";

/// Whether `identity` may start a call that can take up to `budget` at
/// `now` (monotonic): it must hold the Lease, and the Lease, counted from
/// when this replica saw its last renewal, must outlive the call by
/// `margin`.
pub fn lease_allows(
    view: Option<&LeaseView>,
    identity: &str,
    now: Instant,
    budget: Duration,
    margin: Duration,
) -> bool {
    let Some(view) = view else { return false };
    if view.holder.as_deref() != Some(identity) || view.renewed.is_none() {
        return false;
    }
    let expires = view.observed + view.duration;
    now + budget + margin < expires
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
        margin: Duration,
    },
    /// Sharding: one Lease per shard, each held until a monotonic time.
    Shards {
        shards: u32,
        holds: Holds,
        budget: Duration,
        margin: Duration,
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
            FenceMode::Shards { shards, budget, .. } => f
                .debug_struct("Fence::Shards")
                .field("shards", shards)
                .field("budget", budget)
                .finish(),
        }
    }
}

/// The Lease this replica competes for, and the skew margin of its fence.
pub struct LeaseRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub identity: &'a str,
    pub margin: Duration,
}

impl Fence {
    pub fn open() -> Self {
        Fence {
            mode: FenceMode::Open,
        }
    }

    /// A fence over the Lease, and the watch that keeps it current: a future
    /// that runs until the process ends, for the caller to supervise (the
    /// fence says no once that watch stops). `budget` is the longest a
    /// token-endpoint call may take, plus a margin.
    pub fn watching(
        client: Client,
        lease: LeaseRef<'_>,
        budget: Duration,
        health: Arc<Health>,
        clock: SharedClock,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let view = Arc::new(RwLock::new(None));
        let api: Api<Lease> = Api::namespaced(client, lease.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", lease.name));
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
                        let mut current = shared.write().expect("lease view lock");
                        let seen = LeaseView::of(lease, clock.instant()).after(current.as_ref());
                        debug!(holder = ?seen.holder, renewed = ?seen.renewed, "lease observed");
                        *current = Some(seen);
                    }
                    Err(error) => debug!(%error, "lease watch error; retrying"),
                }
            }
        };
        let fence = Fence {
            mode: FenceMode::Lease {
                identity: lease.identity.to_string(),
                view,
                budget,
                margin: lease.margin,
            },
        };
        (fence, watch)
    }

    /// A fence over shard Leases: a call for a credential may start while
    /// this replica holds its shard for longer than `budget` plus `margin`.
    pub fn sharded(shards: u32, holds: Holds, budget: Duration, margin: Duration) -> Self {
        Fence {
            mode: FenceMode::Shards {
                shards,
                holds,
                budget,
                margin,
            },
        }
    }

    /// Whether a token-endpoint call for the credential `namespace/name` may
    /// start at `now` (monotonic).
    pub fn allows_for(&self, namespace: &str, name: &str, now: Instant) -> bool {
        match &self.mode {
            FenceMode::Shards {
                shards,
                holds,
                budget,
                margin,
            } => holds
                .until(shard_of(namespace, name, *shards))
                .is_some_and(|until| now + *budget + *margin < until),
            _ => self.allows(now),
        }
    }

    /// Whether a token-endpoint call may start at `now` (monotonic). With
    /// sharding, never: ask `allows_for` with the credential.
    pub fn allows(&self, now: Instant) -> bool {
        match &self.mode {
            FenceMode::Open => true,
            FenceMode::Shards { .. } => false,
            FenceMode::Lease {
                identity,
                view,
                budget,
                margin,
            } => lease_allows(
                view.read().expect("lease view lock").as_ref(),
                identity,
                now,
                *budget,
                *margin,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn view(holder: &str, renewed: &str, observed: Instant) -> LeaseView {
        LeaseView {
            holder: Some(holder.into()),
            renewed: Some(ts(renewed)),
            duration: Duration::from_secs(30),
            observed,
        }
    }

    #[test]
    fn the_holder_may_call_while_the_lease_outlives_the_call_and_the_margin() {
        let seen = Instant::now();
        let lease = view("a", "2026-11-21T20:00:00Z", seen);
        let budget = Duration::from_secs(11);
        // 30 s lease - 11 s call - 5 s margin: calls may start for 14 s.
        assert!(lease_allows(
            Some(&lease),
            "a",
            seen + Duration::from_millis(13_900),
            budget,
            SKEW_MARGIN
        ));
        assert!(
            !lease_allows(
                Some(&lease),
                "a",
                seen + Duration::from_secs(14),
                budget,
                SKEW_MARGIN
            ),
            "the call could outlive the lease less the margin"
        );
    }

    #[test]
    fn nobody_else_may_call_and_nobody_may_without_a_lease() {
        let seen = Instant::now();
        let lease = view("a", "2026-11-21T20:00:00Z", seen);
        let now = seen + Duration::from_secs(1);
        assert!(!lease_allows(
            Some(&lease),
            "b",
            now,
            Duration::from_secs(1),
            SKEW_MARGIN
        ));
        assert!(!lease_allows(
            None,
            "a",
            now,
            Duration::from_secs(1),
            SKEW_MARGIN
        ));
        let unheld = LeaseView {
            holder: None,
            ..lease
        };
        assert!(!lease_allows(
            Some(&unheld),
            "a",
            now,
            Duration::from_secs(1),
            SKEW_MARGIN
        ));
    }

    #[test]
    fn wall_clock_jumps_change_nothing_and_a_repeat_of_a_renewal_does_not_extend_it() {
        let clock = ManualClock::new(ts("2026-11-21T20:00:00Z"));
        let first = view("a", "2026-11-21T20:00:00Z", clock.instant());
        clock.advance(Duration::from_secs(10));
        // The same renewal reported again (another field changed): the hold
        // still counts from the first sight.
        let again = view("a", "2026-11-21T20:00:00Z", clock.instant()).after(Some(&first));
        assert_eq!(again.observed, first.observed);
        let budget = Duration::from_secs(11);
        assert!(!lease_allows(
            Some(&again),
            "a",
            clock.instant() + Duration::from_secs(4),
            budget,
            SKEW_MARGIN
        ));
        // A renewal whose written time is in the past (the leader's wall
        // clock jumped back) is still a renewal, counted from its sight.
        let renewed = view("a", "2026-11-21T19:00:00Z", clock.instant()).after(Some(&again));
        assert!(lease_allows(
            Some(&renewed),
            "a",
            clock.instant(),
            budget,
            SKEW_MARGIN
        ));
    }

    #[test]
    fn a_standby_whose_clock_runs_ahead_by_less_than_the_margin_takes_over_after_the_last_call_ends()
     {
        // The leader renews at leader-wall 20:00:00 and sees it 200 ms later.
        let leader = ManualClock::new(ts("2026-11-21T20:00:00Z"));
        let seen_at = leader.instant() + Duration::from_millis(200);
        let lease = view("a", "2026-11-21T20:00:00Z", seen_at);
        let budget = Duration::from_secs(11);
        // The last call the fence allows starts just before seen + 14 s and
        // ends at most `budget` later: leader-wall 20:00:25.2.
        let mut last_start = seen_at;
        while lease_allows(
            Some(&lease),
            "a",
            last_start + Duration::from_millis(100),
            budget,
            SKEW_MARGIN,
        ) {
            last_start += Duration::from_millis(100);
        }
        let last_end = last_start + budget - leader.instant();
        // A standby 4.5 s ahead takes over at its 20:00:30, the leader's 20:00:25.5.
        let skew = Duration::from_millis(4_500);
        let takeover = Duration::from_secs(30) - skew;
        assert!(last_end < takeover, "{last_end:?} vs {takeover:?}");
    }

    #[test]
    fn an_open_fence_always_allows() {
        assert!(Fence::open().allows(Instant::now()));
    }
}

#[cfg(test)]
mod shard_tests {
    use super::*;

    #[test]
    fn a_sharded_fence_allows_only_credentials_of_held_shards_while_the_hold_outlives_the_call() {
        let holds = Holds::default();
        let fence = Fence::sharded(4, holds.clone(), Duration::from_secs(11), SKEW_MARGIN);
        let now = Instant::now();
        let (ns, name) = ("team-a", "gmail");
        let shard = shard_of(ns, name, 4);
        assert!(!fence.allows_for(ns, name, now), "not held");
        holds.set_for_tests(shard, now + Duration::from_secs(30));
        assert!(fence.allows_for(ns, name, now + Duration::from_millis(13_900)));
        assert!(!fence.allows_for(ns, name, now + Duration::from_secs(14)));
        let other = (0..100)
            .map(|i| format!("c{i}"))
            .find(|n| shard_of(ns, n, 4) != shard)
            .unwrap();
        assert!(!fence.allows_for(ns, &other, now), "another shard");
        assert!(!fence.allows(now), "no credential, no call");
    }
}
