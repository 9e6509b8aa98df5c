//! What this process remembers about each credential between reconciles.
//! Nothing here is needed for correctness after a restart (status and the
//! Secrets hold the state); it saves reads and bridges the cache's lag.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kube::runtime::reflector::ObjectRef;
use secrecy::SecretString;

use super::refresh::Refreshed;
use crate::metrics::Metrics;
use crate::resource::{OAuthCredential, OAuthCredentialStatus};

type Key = ObjectRef<OAuthCredential>;

#[derive(Default)]
pub(super) struct Memory {
    /// Rotated refresh tokens received but not yet stored (the write failed).
    unstored_rotations: Mutex<HashMap<Key, SecretString>>,
    /// Refresh-token Secret versions already inspected with nothing to do.
    inspected: Mutex<HashMap<Key, String>>,
    /// Status we wrote that the credential cache may not show yet, and when.
    written: Mutex<HashMap<Key, (OAuthCredentialStatus, Instant)>>,
    /// Credentials reconciled at least once by this process.
    scheduled: Mutex<HashSet<Key>>,
    /// New tokens whose output Secret could not be written: written again
    /// without another call while they are valid.
    pending_outputs: Mutex<HashMap<Key, Refreshed>>,
}

impl Memory {
    pub fn keep_unstored_rotation(&self, credential: &OAuthCredential, token: SecretString) {
        lock(&self.unstored_rotations).insert(ObjectRef::from_obj(credential), token);
    }

    pub fn take_unstored_rotation(&self, credential: &OAuthCredential) -> Option<SecretString> {
        lock(&self.unstored_rotations).remove(&ObjectRef::from_obj(credential))
    }

    pub fn keep_pending_output(&self, credential: &OAuthCredential, refreshed: Refreshed) {
        lock(&self.pending_outputs).insert(ObjectRef::from_obj(credential), refreshed);
    }

    pub fn take_pending_output(&self, credential: &OAuthCredential) -> Option<Refreshed> {
        lock(&self.pending_outputs).remove(&ObjectRef::from_obj(credential))
    }

    pub fn inspected(&self, credential: &OAuthCredential) -> Option<String> {
        lock(&self.inspected)
            .get(&ObjectRef::from_obj(credential))
            .cloned()
    }

    pub fn mark_inspected(&self, credential: &OAuthCredential, version: String) {
        lock(&self.inspected).insert(ObjectRef::from_obj(credential), version);
    }

    pub fn wrote(&self, credential: &OAuthCredential, status: OAuthCredentialStatus, at: Instant) {
        lock(&self.written).insert(ObjectRef::from_obj(credential), (status, at));
    }

    /// The status last written for `credential`, if younger than `max_age`
    /// at `now` and still differing from `cached`; forgotten otherwise.
    pub fn newer_than_cache(
        &self,
        credential: &OAuthCredential,
        cached: Option<&OAuthCredentialStatus>,
        now: Instant,
        max_age: std::time::Duration,
    ) -> Option<OAuthCredentialStatus> {
        let key = ObjectRef::from_obj(credential);
        let mut written = lock(&self.written);
        let (expected, at) = written.get(&key)?;
        if cached == Some(expected) || now.saturating_duration_since(*at) > max_age {
            written.remove(&key);
            return None;
        }
        Some(expected.clone())
    }

    /// The status last written for `credential`, whatever its age.
    pub fn last_written(&self, credential: &OAuthCredential) -> Option<OAuthCredentialStatus> {
        lock(&self.written)
            .get(&ObjectRef::from_obj(credential))
            .map(|(status, _)| status.clone())
    }

    /// Counts a credential as scheduled by this process.
    pub fn mark_scheduled(&self, credential: &OAuthCredential, metrics: &Metrics) {
        let mut scheduled = lock(&self.scheduled);
        if scheduled.insert(ObjectRef::from_obj(credential)) {
            metrics.set_scheduled(scheduled.len());
        }
    }

    /// Forgets everything about credentials that are gone.
    pub fn forget_deleted(&self, present: &[Arc<OAuthCredential>], metrics: &Metrics) {
        let present: HashSet<Key> = present
            .iter()
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect();
        lock(&self.unstored_rotations).retain(|key, _| present.contains(key));
        lock(&self.inspected).retain(|key, _| present.contains(key));
        lock(&self.written).retain(|key, _| present.contains(key));
        lock(&self.pending_outputs).retain(|key, _| present.contains(key));
        let mut scheduled = lock(&self.scheduled);
        scheduled.retain(|key| present.contains(key));
        metrics.set_scheduled(scheduled.len());
    }

    /// How many entries each map holds, by name (for the memory metric).
    pub fn sizes(&self) -> [(&'static str, usize); 5] {
        [
            ("unstored_rotations", lock(&self.unstored_rotations).len()),
            ("inspected", lock(&self.inspected).len()),
            ("written_status", lock(&self.written).len()),
            ("scheduled", lock(&self.scheduled).len()),
            ("pending_outputs", lock(&self.pending_outputs).len()),
        ]
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().expect("memory lock")
}
