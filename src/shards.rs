//! Sharding: more than one replica at work at once. Credentials fall into
//! `--shards` shards by a stable hash of `namespace/name`; each shard is a
//! `coordination.k8s.io` Lease (`<lease-name>-shard-<i>`), and a replica
//! caches, reconciles and refreshes only the credentials of the shards it
//! holds. Replicas announce themselves with a Lease each
//! (`<lease-name>-member-<identity>`); each holds its fair share,
//! `ceil(shards / live members)`: it takes free or expired shards while it
//! holds fewer, and gives shards up while it holds more, so that shards
//! spread when replicas come and move to the survivors when one dies.
//!
//! Every write is guarded by the Lease's `resourceVersion`: two replicas
//! cannot both take a shard. The fence per shard is the single-Lease fence's
//! rule: a call starts only if the hold, counted on this replica's monotonic
//! clock from the start of the write that renewed it, outlives the call plus
//! the skew margin. A shard given up stops its calls at once and is released
//! only after the longest call could have ended.
//!
//! `plan` is pure (the Leases as read, the clock in); `ShardLeases::run` is
//! the loop that reads and writes them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::clock::SharedClock;

/// Label on every Lease of one operator's shard set, valued with the
/// `--lease-name` that names the set.
pub const LEASE_SET_LABEL: &str = "oauth.tokenoperator.io/lease-set";
/// `shard` or `member`.
pub const LEASE_ROLE_LABEL: &str = "oauth.tokenoperator.io/lease-role";
/// A member Lease not renewed for this long is deleted.
const STALE_MEMBER: SignedDuration = SignedDuration::from_hours(1);

/// The shard of a credential: FNV-1a (64-bit) of `namespace/name`, modulo
/// `shards`. Stable across releases and processes: changing it would move
/// credentials between replicas.
pub fn shard_of(namespace: &str, name: &str, shards: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes().chain([b'/']).chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(shards.max(1))) as u32
}

/// A Lease of the set, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub holder: Option<String>,
    /// The renewal time written in the Lease (by its holder's wall clock).
    pub renewed: Option<Timestamp>,
    pub duration: Duration,
}

impl Seen {
    /// Whether nobody holds it at `now` (this replica's wall clock).
    pub fn free(&self, now: Timestamp) -> bool {
        match (&self.holder, self.renewed) {
            (Some(holder), Some(renewed)) if !holder.is_empty() => {
                let duration = SignedDuration::try_from(self.duration).unwrap_or_default();
                renewed + duration < now
            }
            _ => true,
        }
    }
}

/// What one round does with the shard Leases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Shards this replica holds and keeps.
    pub keep: Vec<u32>,
    /// Free shards it tries to take.
    pub take: Vec<u32>,
    /// Shards it gives up (more than its share).
    pub give_up: Vec<u32>,
}

/// Decides a round: keep what this replica (`me`) holds up to its share of
/// `shards` among `members` live replicas, take free shards below it, give
/// up the highest-numbered shards above it. Free shards are tried from an
/// offset that depends on `me`, so that replicas starting together try
/// different shards first.
pub fn plan(
    shards: u32,
    leases: &BTreeMap<u32, Seen>,
    members: usize,
    me: &str,
    now: Timestamp,
) -> Round {
    let share = shards.div_ceil(members.max(1) as u32) as usize;
    let mine: Vec<u32> = (0..shards)
        .filter(|i| {
            leases
                .get(i)
                .is_some_and(|l| l.holder.as_deref() == Some(me) && !l.free(now))
        })
        .collect();
    let mut round = Round::default();
    if mine.len() > share {
        round.keep = mine[..share].to_vec();
        round.give_up = mine[share..].to_vec();
        return round;
    }
    round.keep = mine.clone();
    let offset = shard_of("", me, shards);
    round.take = (0..shards)
        .map(|i| (i + offset) % shards)
        .filter(|i| leases.get(i).is_none_or(|l| l.free(now)))
        .take(share - mine.len())
        .collect();
    round
}

/// The shards this replica holds, for the fence: until when (monotonic) each
/// hold lasts.
#[derive(Clone, Default)]
pub struct Holds(Arc<RwLock<HashMap<u32, Instant>>>);

impl Holds {
    /// Until when `shard` is held, if it is.
    pub fn until(&self, shard: u32) -> Option<Instant> {
        self.0.read().expect("holds lock").get(&shard).copied()
    }

    #[cfg(test)]
    pub fn set_for_tests(&self, shard: u32, until: Instant) {
        self.set(shard, until);
    }

    fn set(&self, shard: u32, until: Instant) {
        self.0.write().expect("holds lock").insert(shard, until);
    }

    fn drop_shard(&self, shard: u32) {
        self.0.write().expect("holds lock").remove(&shard);
    }

    fn held(&self) -> BTreeSet<u32> {
        self.0.read().expect("holds lock").keys().copied().collect()
    }
}

/// The shard Leases of one replica.
pub struct ShardLeases {
    pub api: Api<Lease>,
    pub set: String,
    pub identity: String,
    pub shards: u32,
    pub duration: Duration,
    pub renew_before: Duration,
    /// How long a shard given up waits before it is released: the longest a
    /// call may take.
    pub drain: Duration,
    pub clock: SharedClock,
    pub holds: Holds,
}

impl ShardLeases {
    pub fn new(
        client: Client,
        namespace: &str,
        set: &str,
        identity: &str,
        shards: u32,
        timings: (Duration, Duration, Duration),
        clock: SharedClock,
    ) -> Self {
        let (duration, renew_before, drain) = timings;
        ShardLeases {
            api: Api::namespaced(client, namespace),
            set: set.to_string(),
            identity: identity.to_string(),
            shards,
            duration,
            renew_before,
            drain,
            clock,
            holds: Holds::default(),
        }
    }

    fn shard_name(&self, shard: u32) -> String {
        format!("{}-shard-{shard}", self.set)
    }

    fn member_name(&self) -> String {
        format!("{}-member-{}", self.set, self.identity)
    }

    /// Runs rounds every second until `stop` completes, publishing the held
    /// shards on `held`; then gives every shard up and leaves the set.
    pub async fn run(
        self,
        held: watch::Sender<BTreeSet<u32>>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), kube::Error> {
        let mut releasing: BTreeMap<u32, Instant> = BTreeMap::new();
        loop {
            if let Err(error) = self.round(&mut releasing).await {
                warn!(%error, "shard round failed; retrying");
            }
            held.send_if_modified(|current| {
                let now = self.holds.held();
                let changed = *current != now;
                *current = now;
                changed
            });
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.leave().await
    }

    /// One round: read the set, announce this replica, keep, take and give
    /// up shards, and release those given up once drained.
    async fn round(&self, releasing: &mut BTreeMap<u32, Instant>) -> Result<(), kube::Error> {
        let listed = self
            .api
            .list(&ListParams::default().labels(&format!("{LEASE_SET_LABEL}={}", self.set)))
            .await?;
        let now = self.clock.now();
        let mut shards: BTreeMap<u32, (Seen, Lease)> = BTreeMap::new();
        let mut members = 0;
        let mut member: Option<Lease> = None;
        for lease in listed.items {
            let seen = seen(&lease);
            let name = lease.metadata.name.clone().unwrap_or_default();
            if name == self.member_name() {
                member = Some(lease.clone());
            }
            match name.strip_prefix(&format!("{}-shard-", self.set)) {
                Some(index) => {
                    if let Ok(index) = index.parse::<u32>()
                        && index < self.shards
                    {
                        shards.insert(index, (seen, lease));
                    }
                }
                None if !seen.free(now) => members += 1,
                // A replica gone for long (each pod has its own name): its
                // member Lease goes.
                None if seen.renewed.is_none_or(|r| r + STALE_MEMBER < now) => {
                    let _ = self.api.delete(&name, &Default::default()).await;
                }
                None => {}
            }
        }
        // This replica counts once its member Lease is written.
        if member.as_ref().is_none_or(|l| seen(l).free(now)) {
            members += 1;
        }
        self.announce(member).await?;
        let view: BTreeMap<u32, Seen> = shards.iter().map(|(i, (s, _))| (*i, s.clone())).collect();
        let round = plan(self.shards, &view, members, &self.identity, now);
        self.apply(&round, &shards, releasing).await;
        self.release_drained(releasing, &shards).await;
        Ok(())
    }

    /// Keeps, takes and gives up shards as the round says.
    async fn apply(
        &self,
        round: &Round,
        shards: &BTreeMap<u32, (Seen, Lease)>,
        releasing: &mut BTreeMap<u32, Instant>,
    ) {
        let now = self.clock.instant();
        for shard in &round.give_up {
            if releasing.contains_key(shard) {
                continue;
            }
            // Calls stop now; the Lease goes once the last could have ended.
            self.holds.drop_shard(*shard);
            releasing.insert(*shard, now + self.drain);
            info!(shard, "giving up a shard (more than this replica's share)");
        }
        for shard in round.keep.iter().chain(&round.take) {
            if releasing.contains_key(shard) {
                continue;
            }
            let due = self
                .holds
                .until(*shard)
                .is_none_or(|until| until.saturating_duration_since(now) <= self.renew_before);
            if due {
                self.hold(*shard, shards.get(shard).map(|(_, l)| l)).await;
            }
        }
    }

    /// Takes or renews `shard` (created when its Lease does not exist),
    /// guarded by the version read.
    async fn hold(&self, shard: u32, current: Option<&Lease>) {
        let started = self.clock.instant();
        let now = MicroTime(self.clock.now());
        let taking = current.is_none_or(|l| seen(l).holder.as_deref() != Some(&self.identity));
        let mut lease = current
            .cloned()
            .unwrap_or_else(|| self.new_lease(&self.shard_name(shard), "shard"));
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.duration.as_secs() as i32);
        spec.renew_time = Some(now.clone());
        if taking {
            spec.acquire_time = Some(now);
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        let written = match current {
            Some(_) => {
                self.api
                    .replace(&self.shard_name(shard), &PostParams::default(), &lease)
                    .await
            }
            None => self.api.create(&PostParams::default(), &lease).await,
        };
        match written {
            Ok(_) => {
                if taking {
                    info!(shard, "took a shard");
                }
                self.holds.set(shard, started + self.duration);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                debug!(shard, "another replica wrote the shard first");
                if !taking {
                    self.holds.drop_shard(shard);
                }
            }
            Err(error) => warn!(shard, %error, "could not write the shard's Lease"),
        }
    }

    /// Releases the shards given up whose last possible call has ended.
    async fn release_drained(
        &self,
        releasing: &mut BTreeMap<u32, Instant>,
        shards: &BTreeMap<u32, (Seen, Lease)>,
    ) {
        let now = self.clock.instant();
        let drained: Vec<u32> = releasing
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(shard, _)| *shard)
            .collect();
        for shard in drained {
            releasing.remove(&shard);
            if let Some((_, lease)) = shards.get(&shard) {
                self.release(&self.shard_name(shard), lease).await;
            }
        }
    }

    /// Empties a Lease this replica holds, so that another takes it at once.
    async fn release(&self, name: &str, lease: &Lease) {
        if seen(lease).holder.as_deref() != Some(&self.identity) {
            return;
        }
        let mut lease = lease.clone();
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
        }
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = name, "released"),
            Err(error) => debug!(lease = name, %error, "not released; it expires by itself"),
        }
    }

    /// Creates or renews this replica's member Lease.
    async fn announce(&self, member: Option<Lease>) -> Result<(), kube::Error> {
        let now = MicroTime(self.clock.now());
        let name = self.member_name();
        let mut lease = member
            .clone()
            .unwrap_or_else(|| self.new_lease(&name, "member"));
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.duration.as_secs() as i32);
        spec.renew_time = Some(now);
        match member {
            Some(_) => {
                self.api
                    .replace(&name, &PostParams::default(), &lease)
                    .await?
            }
            None => self.api.create(&PostParams::default(), &lease).await?,
        };
        Ok(())
    }

    /// Gives every shard up and empties the member Lease (on a clean stop):
    /// the others take over at once instead of after the Lease duration.
    async fn leave(&self) -> Result<(), kube::Error> {
        let held = self.holds.held();
        for shard in &held {
            self.holds.drop_shard(*shard);
        }
        let listed = self
            .api
            .list(&ListParams::default().labels(&format!("{LEASE_SET_LABEL}={}", self.set)))
            .await?;
        for lease in &listed.items {
            let name = lease.metadata.name.clone().unwrap_or_default();
            let ours =
                held.iter().any(|s| self.shard_name(*s) == name) || name == self.member_name();
            if ours {
                self.release(&name, lease).await;
            }
        }
        Ok(())
    }

    fn new_lease(&self, name: &str, role: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(BTreeMap::from([
                    (LEASE_SET_LABEL.to_string(), self.set.clone()),
                    (LEASE_ROLE_LABEL.to_string(), role.to_string()),
                ])),
                ..Default::default()
            },
            spec: Some(LeaseSpec::default()),
        }
    }
}

fn seen(lease: &Lease) -> Seen {
    let spec = lease.spec.clone().unwrap_or_default();
    Seen {
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        renewed: spec.renew_time.map(|t| t.0),
        duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const NOW: &str = "2026-11-22T10:00:00Z";

    fn held_by(holder: &str, renewed: &str) -> Seen {
        Seen {
            holder: Some(holder.into()),
            renewed: Some(ts(renewed)),
            duration: Duration::from_secs(30),
        }
    }

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed values: a change of the hash would move credentials.
        assert_eq!(
            shard_of("team-a", "gmail-sender", 16),
            shard_of("team-a", "gmail-sender", 16)
        );
        assert_ne!(
            shard_of("team-a", "x", 1 << 20),
            shard_of("team-ax", "", 1 << 20)
        );
        assert_eq!(shard_of("a", "b", 1), 0);
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[shard_of("ns", &format!("c{i}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
    }

    #[test]
    fn a_lone_replica_takes_every_shard_and_three_take_a_third_each() {
        let none = BTreeMap::new();
        let round = plan(6, &none, 1, "a", ts(NOW));
        assert_eq!(round.take.len(), 6);
        let round = plan(6, &none, 3, "a", ts(NOW));
        assert_eq!(round.take.len(), 2);
        assert!(round.keep.is_empty() && round.give_up.is_empty());
    }

    #[test]
    fn a_replica_above_its_share_gives_up_the_rest_and_one_below_takes_only_free_shards() {
        let mut leases = BTreeMap::new();
        for i in 0..6 {
            leases.insert(i, held_by("a", "2026-11-22T09:59:50Z"));
        }
        // A second member appeared: a keeps 3, gives up 3.
        let round = plan(6, &leases, 2, "a", ts(NOW));
        assert_eq!(round.keep, [0, 1, 2]);
        assert_eq!(round.give_up, [3, 4, 5]);
        // b takes nothing while a still holds all of them...
        let round = plan(6, &leases, 2, "b", ts(NOW));
        assert!(round.take.is_empty(), "{round:?}");
        // ...and the expired ones once a is gone.
        let later = ts("2026-11-22T10:00:21Z");
        let round = plan(6, &leases, 1, "b", later);
        assert_eq!(round.take.len(), 6);
        // An emptied Lease (released) is free at once.
        leases.insert(
            4,
            Seen {
                holder: None,
                ..held_by("a", "2026-11-22T09:59:59Z")
            },
        );
        let round = plan(6, &leases, 2, "b", ts(NOW));
        assert_eq!(round.take, [4]);
    }
}
