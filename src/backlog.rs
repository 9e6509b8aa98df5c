//! Earliest expiry first when a token endpoint's rate limit binds.
//!
//! Reconciles run in the order kube-runtime hands them out, which after an
//! outage is the order of the initial list, unrelated to when each token
//! expires. When more credentials are due than the rate limit lets through,
//! that order decides which tokens expire before their refresh (measured at
//! 10,000 credentials due at once: 308 expired that an earliest-expiry-first
//! order would have saved). The backlog records, per endpoint host, the
//! credentials waiting for the rate limit and when their tokens expire; a
//! credential with at least `slots` others ahead of it steps aside (requeues)
//! until about when its turn comes, leaving the concurrency slots to the
//! credentials whose tokens expire first. Pure: time is passed in.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How long a requeued credential keeps its place beyond its expected return.
const GRACE: Duration = Duration::from_secs(10);
/// Longest step-aside.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// Shortest step-aside.
const MIN_DELAY: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Backlog {
    /// (host, expiry in unix seconds, credential key), in service order.
    order: BTreeSet<(String, i64, String)>,
    entries: HashMap<String, Entry>,
}

struct Entry {
    host: String,
    expiry: i64,
    /// Forgotten after this (a credential that never came back).
    until: Instant,
}

impl Backlog {
    /// Registers `key` as waiting for `host` until `until`, or moves it.
    pub fn enter(&mut self, host: &str, key: &str, expiry: i64, until: Instant) {
        self.leave(key);
        self.order
            .insert((host.to_string(), expiry, key.to_string()));
        self.entries.insert(
            key.to_string(),
            Entry {
                host: host.to_string(),
                expiry,
                until,
            },
        );
    }

    /// `key` got its turn, or no longer waits.
    pub fn leave(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            self.order
                .remove(&(entry.host, entry.expiry, key.to_string()));
        }
    }

    /// Live credentials waiting for `host` whose tokens expire before
    /// `(expiry, key)`, counted up to `limit`.
    pub fn ahead(&self, host: &str, expiry: i64, key: &str, now: Instant, limit: usize) -> usize {
        let from = (host.to_string(), i64::MIN, String::new());
        let to = (host.to_string(), expiry, key.to_string());
        self.order
            .range(from..to)
            .filter(|(_, _, other)| self.entries.get(other).is_some_and(|e| e.until >= now))
            .take(limit)
            .count()
    }

    /// Whether `key` should step aside rather than wait for the rate limit:
    /// when `slots` or more credentials whose tokens expire sooner wait for
    /// the same host. Then it keeps its place and comes back after the
    /// returned delay, about when those ahead of it have been served at
    /// `rate` calls per second.
    pub fn step_aside(
        &mut self,
        host: &str,
        key: &str,
        expiry: i64,
        now: Instant,
        slots: usize,
        rate: f64,
    ) -> Option<Duration> {
        let limit = slots + (rate * MAX_DELAY.as_secs_f64()) as usize;
        let ahead = self.ahead(host, expiry, key, now, limit);
        if ahead < slots {
            return None;
        }
        let delay =
            Duration::from_secs_f64((ahead - slots / 2) as f64 / rate).clamp(MIN_DELAY, MAX_DELAY);
        self.enter(host, key, expiry, now + delay + GRACE);
        Some(delay)
    }

    /// Forgets entries whose time is up.
    pub fn prune(&mut self, now: Instant) {
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.until < now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.leave(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "oauth2.googleapis.com";

    fn filled(now: Instant, expiries: &[(i64, &str)]) -> Backlog {
        let mut backlog = Backlog::default();
        for (expiry, key) in expiries {
            backlog.enter(HOST, key, *expiry, now + Duration::from_secs(60));
        }
        backlog
    }

    #[test]
    fn with_few_waiting_nobody_steps_aside() {
        let now = Instant::now();
        let mut backlog = filled(now, &[(100, "a"), (200, "b")]);
        assert_eq!(backlog.step_aside(HOST, "z", 300, now, 8, 10.0), None);
        assert!(
            !backlog.entries.contains_key("z"),
            "only waiters are recorded"
        );
    }

    #[test]
    fn later_expiries_step_aside_until_about_their_turn() {
        let now = Instant::now();
        let waiting: Vec<(i64, String)> = (0..100).map(|i| (1_000 + i, format!("k{i}"))).collect();
        let refs: Vec<(i64, &str)> = waiting.iter().map(|(e, k)| (*e, k.as_str())).collect();
        let mut backlog = filled(now, &refs);
        // Expires before all of them: goes now.
        assert_eq!(backlog.step_aside(HOST, "urgent", 10, now, 8, 10.0), None);
        // Expires after all 100: comes back when about 96 have been served at 10/s.
        let delay = backlog
            .step_aside(HOST, "late", 5_000, now, 8, 10.0)
            .unwrap();
        assert_eq!(delay, Duration::from_millis(9_600));
        assert!(backlog.entries.contains_key("late"));
        // Between: 50 ahead.
        let delay = backlog
            .step_aside(HOST, "middle", 1_049, now, 8, 10.0)
            .unwrap();
        assert_eq!(delay, Duration::from_millis(4_600));
    }

    #[test]
    fn other_hosts_and_stale_entries_do_not_count() {
        let now = Instant::now();
        let mut backlog = Backlog::default();
        for i in 0..20 {
            backlog.enter(
                "login.example.com",
                &format!("o{i}"),
                i,
                now + Duration::from_secs(60),
            );
            backlog.enter(HOST, &format!("s{i}"), i, now - Duration::from_secs(1));
        }
        assert_eq!(backlog.ahead(HOST, 100, "x", now, 1000), 0);
        assert_eq!(backlog.step_aside(HOST, "x", 100, now, 8, 10.0), None);
        backlog.prune(now);
        assert_eq!(backlog.len(), 20);
    }

    #[test]
    fn leaving_and_moving_keep_one_entry_per_credential() {
        let now = Instant::now();
        let mut backlog = filled(now, &[(100, "a"), (200, "b")]);
        backlog.enter(HOST, "a", 300, now + Duration::from_secs(60));
        assert_eq!(backlog.len(), 2);
        assert_eq!(backlog.ahead(HOST, 250, "q", now, 10), 1);
        backlog.leave("a");
        backlog.leave("b");
        assert!(backlog.is_empty());
        assert!(backlog.order.is_empty());
    }

    #[test]
    fn delays_are_bounded() {
        let now = Instant::now();
        let waiting: Vec<(i64, String)> = (0..5_000).map(|i| (i, format!("k{i}"))).collect();
        let refs: Vec<(i64, &str)> = waiting.iter().map(|(e, k)| (*e, k.as_str())).collect();
        let mut backlog = filled(now, &refs);
        assert_eq!(
            backlog.step_aside(HOST, "late", 10_000, now, 8, 10.0),
            Some(MAX_DELAY)
        );
        let mut backlog = filled(now, &refs[..9]);
        assert_eq!(
            backlog.step_aside(HOST, "late", 10_000, now, 8, 1000.0),
            Some(MIN_DELAY)
        );
    }
}
