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

/// Kept across restarts of the controller within the process (a sharded
/// replica starts it again when its shards change).
#[derive(Default)]
pub struct Memory {
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
    /// What the output Secret should hold: the version we wrote or checked,
    /// the hash of our data, and the token we wrote (while we have it).
    outputs: Mutex<HashMap<Key, OutputRecord>>,
}

/// What this process knows of a credential's output Secret.
pub(super) struct OutputRecord {
    /// `resourceVersion` of the Secret as the operator wrote or checked it.
    pub version: String,
    /// The version before our last write: a lagging cache may still show it.
    pub superseded: Option<String>,
    /// SHA-256 of the data the operator wrote (after a restart: the
    /// annotation's, until the next write).
    pub data_hash: String,
    /// The token last written, and the credential (uid and generation) it
    /// was written for; `None` after a restart or an adoption.
    /// Boxed: most of the record's size, and absent after a restart.
    pub written: Option<Box<(Refreshed, Written)>>,
}

/// Which credential, in which generation, a token was written for: a
/// credential deleted and created again under its name is another one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Written {
    pub uid: String,
    pub generation: i64,
}

impl Written {
    pub fn of(credential: &OAuthCredential) -> Self {
        Written {
            uid: credential.metadata.uid.clone().unwrap_or_default(),
            generation: credential.metadata.generation.unwrap_or(0),
        }
    }
}

impl Memory {
    pub(super) fn keep_unstored_rotation(&self, credential: &OAuthCredential, token: SecretString) {
        lock(&self.unstored_rotations).insert(key(credential), token);
    }

    pub(super) fn take_unstored_rotation(
        &self,
        credential: &OAuthCredential,
    ) -> Option<SecretString> {
        lock(&self.unstored_rotations).remove(&key(credential))
    }

    pub(super) fn keep_pending_output(&self, credential: &OAuthCredential, refreshed: Refreshed) {
        lock(&self.pending_outputs).insert(key(credential), refreshed);
    }

    pub(super) fn take_pending_output(&self, credential: &OAuthCredential) -> Option<Refreshed> {
        lock(&self.pending_outputs).remove(&key(credential))
    }

    /// Remembers a write of the output Secret: its new version, the hash of
    /// its data, and the token written (if this process has it).
    pub(super) fn wrote_output(
        &self,
        credential: &OAuthCredential,
        version: String,
        data_hash: String,
        written: Option<(Refreshed, Written)>,
    ) {
        let mut outputs = lock(&self.outputs);
        let key = key(credential);
        let superseded = outputs.remove(&key).map(|r| r.version);
        outputs.insert(
            key,
            OutputRecord {
                version,
                superseded,
                data_hash,
                written: written.map(Box::new),
            },
        );
    }

    /// Whether `version` of the output Secret is one we know to hold our
    /// data; remembers it as such, with `data_hash`, when nothing is known
    /// yet (after a restart). `None`: unknown, to be checked.
    pub(super) fn output_known(
        &self,
        credential: &OAuthCredential,
        version: &str,
        data_hash: Option<&str>,
    ) -> Option<()> {
        let mut outputs = lock(&self.outputs);
        let key = key(credential);
        match outputs.get(&key) {
            Some(r) if r.version == version || r.superseded.as_deref() == Some(version) => Some(()),
            Some(_) => None,
            None => {
                outputs.insert(
                    key,
                    OutputRecord {
                        version: version.to_string(),
                        superseded: None,
                        data_hash: data_hash.unwrap_or_default().to_string(),
                        written: None,
                    },
                );
                Some(())
            }
        }
    }

    /// The hash of the data the output Secret should hold.
    pub(super) fn output_hash(&self, credential: &OAuthCredential) -> Option<String> {
        lock(&self.outputs)
            .get(&key(credential))
            .map(|r| r.data_hash.clone())
    }

    /// Marks `version` as checked: its data is ours (someone changed only
    /// metadata).
    pub(super) fn output_checked(&self, credential: &OAuthCredential, version: String) {
        if let Some(record) = lock(&self.outputs).get_mut(&key(credential)) {
            record.version = version;
        }
    }

    /// The token last written to the output Secret, if this process holds it
    /// for this very credential and generation, and it is valid after `now`.
    pub(super) fn restorable(
        &self,
        credential: &OAuthCredential,
        now: k8s_openapi::jiff::Timestamp,
    ) -> Option<Refreshed> {
        self.with_restorable(credential, now, Refreshed::clone)
    }

    /// Whether `restorable` would give a token (without copying it).
    pub(super) fn can_restore(
        &self,
        credential: &OAuthCredential,
        now: k8s_openapi::jiff::Timestamp,
    ) -> bool {
        self.with_restorable(credential, now, |_| ()).is_some()
    }

    fn with_restorable<T>(
        &self,
        credential: &OAuthCredential,
        now: k8s_openapi::jiff::Timestamp,
        f: impl FnOnce(&Refreshed) -> T,
    ) -> Option<T> {
        let outputs = lock(&self.outputs);
        let (refreshed, written_for) = outputs.get(&key(credential))?.written.as_deref()?;
        (*written_for == Written::of(credential) && refreshed.expires_at > now)
            .then(|| f(refreshed))
    }

    /// Forgets the output Secret of a credential (it was orphaned).
    pub(super) fn forget_output(&self, credential: &OAuthCredential) {
        lock(&self.outputs).remove(&key(credential));
    }

    pub(super) fn inspected(&self, credential: &OAuthCredential) -> Option<String> {
        lock(&self.inspected).get(&key(credential)).cloned()
    }

    pub(super) fn mark_inspected(&self, credential: &OAuthCredential, version: String) {
        lock(&self.inspected).insert(key(credential), version);
    }

    pub(super) fn wrote(
        &self,
        credential: &OAuthCredential,
        status: OAuthCredentialStatus,
        at: Instant,
    ) {
        lock(&self.written).insert(key(credential), (status, at));
    }

    /// The status last written for `credential`, if younger than `max_age`
    /// at `now` and still differing from `cached`; forgotten otherwise.
    pub(super) fn newer_than_cache(
        &self,
        credential: &OAuthCredential,
        cached: Option<&OAuthCredentialStatus>,
        now: Instant,
        max_age: std::time::Duration,
    ) -> Option<OAuthCredentialStatus> {
        let key = key(credential);
        let mut written = lock(&self.written);
        let (expected, at) = written.get(&key)?;
        if cached == Some(expected) || now.saturating_duration_since(*at) > max_age {
            written.remove(&key);
            return None;
        }
        Some(expected.clone())
    }

    /// The status last written for `credential`, whatever its age.
    pub(super) fn last_written(
        &self,
        credential: &OAuthCredential,
    ) -> Option<OAuthCredentialStatus> {
        lock(&self.written)
            .get(&key(credential))
            .map(|(status, _)| status.clone())
    }

    /// Counts a credential as scheduled by this process.
    pub(super) fn mark_scheduled(&self, credential: &OAuthCredential, metrics: &Metrics) {
        let mut scheduled = lock(&self.scheduled);
        if scheduled.insert(key(credential)) {
            metrics.set_scheduled(scheduled.len());
        }
    }

    /// Forgets everything about credentials that are gone.
    pub(super) fn forget_deleted(&self, present: &[Arc<OAuthCredential>], metrics: &Metrics) {
        let present: HashSet<Key> = present.iter().map(|c| key(c.as_ref())).collect();
        lock(&self.unstored_rotations).retain(|key, _| present.contains(key));
        lock(&self.inspected).retain(|key, _| present.contains(key));
        lock(&self.written).retain(|key, _| present.contains(key));
        lock(&self.pending_outputs).retain(|key, _| present.contains(key));
        lock(&self.outputs).retain(|key, _| present.contains(key));
        let mut scheduled = lock(&self.scheduled);
        scheduled.retain(|key| present.contains(key));
        metrics.set_scheduled(scheduled.len());
    }

    /// How many entries each map holds, by name (for the memory metric).
    pub(super) fn sizes(&self) -> [(&'static str, usize); 6] {
        [
            ("outputs", lock(&self.outputs).len()),
            ("unstored_rotations", lock(&self.unstored_rotations).len()),
            ("inspected", lock(&self.inspected).len()),
            ("written_status", lock(&self.written).len()),
            ("scheduled", lock(&self.scheduled).len()),
            ("pending_outputs", lock(&self.pending_outputs).len()),
        ]
    }
}

/// A credential's key in these maps: namespace and name only (a key made by
/// `ObjectRef::from_obj` also carries the uid and resourceVersion, two more
/// strings per entry per map, which lookups ignore).
fn key(credential: &OAuthCredential) -> Key {
    let name = credential.metadata.name.as_deref().unwrap_or_default();
    match credential.metadata.namespace.as_deref() {
        Some(namespace) => ObjectRef::new(name).within(namespace),
        None => ObjectRef::new(name),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().expect("memory lock")
}
