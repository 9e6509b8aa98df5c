//! Which credentials name a given Secret (as client, refresh-token or output
//! Secret), so that a change to that Secret reconciles exactly those
//! credentials.
//!
//! The operator watches the metadata of Secrets without caching them; this
//! index, fed from the credential watch, turns each Secret event into the
//! credentials it concerns in O(1) rather than a scan of every credential.
//! A stale entry only costs a spurious reconcile of a credential that is gone,
//! which the controller drops.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::resource::OAuthCredential;

type Key = (String, String);

#[derive(Default)]
struct Index {
    /// (namespace, secret name) → names of credentials referencing it.
    by_secret: HashMap<Key, HashSet<String>>,
    /// (namespace, credential name) → the secret names it references.
    by_credential: HashMap<Key, [String; 3]>,
}

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct SecretReferences {
    index: Arc<RwLock<Index>>,
    /// (namespace, secret name) → resourceVersion, for referenced Secrets
    /// only: lets a reconcile tell whether an input changed without a read.
    versions: Arc<RwLock<HashMap<Key, String>>>,
}

impl SecretReferences {
    /// Updates the index from one event of the credential watch.
    pub fn observe(&self, event: &watcher::Event<OAuthCredential>) {
        match event {
            watcher::Event::Apply(c) | watcher::Event::InitApply(c) => self.upsert(c),
            watcher::Event::Delete(c) => self.remove(c),
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    pub fn upsert(&self, credential: &OAuthCredential) {
        let Some(namespace) = credential.namespace() else {
            return;
        };
        let name = credential.name_any();
        let names = [
            credential.spec.client_secret_ref.name.clone(),
            credential.spec.refresh_token_secret_ref.name.clone(),
            credential.spec.output.secret_name.clone(),
        ];
        let mut index = self.index.write().expect("index lock");
        let key = (namespace.clone(), name.clone());
        if index.by_credential.get(&key) == Some(&names) {
            return;
        }
        let orphaned = match index.by_credential.remove(&key) {
            Some(old) => unlink(&mut index, &namespace, &name, &old),
            None => Vec::new(),
        };
        for secret in &names {
            index
                .by_secret
                .entry((namespace.clone(), secret.clone()))
                .or_default()
                .insert(name.clone());
        }
        index.by_credential.insert(key, names);
        self.forget_versions(&index, orphaned);
    }

    fn forget_versions(&self, index: &Index, orphaned: Vec<Key>) {
        let mut versions = self.versions.write().expect("versions lock");
        for key in orphaned {
            if !index.by_secret.contains_key(&key) {
                versions.remove(&key);
            }
        }
    }

    pub fn remove(&self, credential: &OAuthCredential) {
        let Some(namespace) = credential.namespace() else {
            return;
        };
        let name = credential.name_any();
        let mut index = self.index.write().expect("index lock");
        if let Some(old) = index
            .by_credential
            .remove(&(namespace.clone(), name.clone()))
        {
            unlink(&mut index, &namespace, &name, &old);
        }
    }

    /// Records the version of a Secret seen by the Secret watch, if any
    /// credential references it.
    pub fn observe_secret<K: kube::Resource>(&self, event: &watcher::Event<K>) {
        let (secret, deleted) = match event {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => (s, false),
            watcher::Event::Delete(s) => (s, true),
            watcher::Event::Init | watcher::Event::InitDone => return,
        };
        let meta = secret.meta();
        let (Some(namespace), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else {
            return;
        };
        let key = (namespace, name);
        let mut versions = self.versions.write().expect("versions lock");
        if deleted {
            versions.insert(key, String::new());
        } else if self
            .index
            .read()
            .expect("index lock")
            .by_secret
            .contains_key(&key)
        {
            versions.insert(key, meta.resource_version.clone().unwrap_or_default());
        }
    }

    /// The last seen version of a referenced Secret (empty when it does not
    /// exist), if the watch has reported it.
    pub fn version(&self, namespace: &str, secret: &str) -> Option<String> {
        self.versions
            .read()
            .expect("versions lock")
            .get(&(namespace.to_string(), secret.to_string()))
            .cloned()
    }

    /// Remembers a version learnt by reading the Secret directly.
    pub fn remember_version(&self, namespace: &str, secret: &str, version: &str) {
        self.versions.write().expect("versions lock").insert(
            (namespace.to_string(), secret.to_string()),
            version.to_string(),
        );
    }

    /// The credentials in `namespace` that reference the Secret `secret`.
    pub fn credentials_for(
        &self,
        namespace: &str,
        secret: &str,
    ) -> Vec<ObjectRef<OAuthCredential>> {
        let index = self.index.read().expect("index lock");
        index
            .by_secret
            .get(&(namespace.to_string(), secret.to_string()))
            .map(|names| {
                names
                    .iter()
                    .map(|n| ObjectRef::new(n).within(namespace))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Unlinks a credential from its Secrets; returns the Secrets no credential
/// references any more.
fn unlink(index: &mut Index, namespace: &str, credential: &str, secrets: &[String; 3]) -> Vec<Key> {
    let mut orphaned = Vec::new();
    for secret in secrets {
        let key = (namespace.to_string(), secret.clone());
        if let Some(set) = index.by_secret.get_mut(&key) {
            set.remove(credential);
            if set.is_empty() {
                index.by_secret.remove(&key);
                orphaned.push(key);
            }
        }
    }
    orphaned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{
        ClientSecretRef, OAuthCredentialSpec, Output, Provider, RefreshTokenSecretRef,
    };

    fn credential(name: &str, client: &str, refresh: &str, output: &str) -> OAuthCredential {
        let mut c = OAuthCredential::new(
            name,
            OAuthCredentialSpec {
                provider: Provider {
                    google: Some(Default::default()),
                    ..Default::default()
                },
                client_secret_ref: ClientSecretRef {
                    name: client.into(),
                    client_id_key: "client_id".into(),
                    client_secret_key: "client_secret".into(),
                },
                refresh_token_secret_ref: RefreshTokenSecretRef {
                    name: refresh.into(),
                    key: "refresh_token".into(),
                },
                scopes: vec!["s".into()],
                output: Output {
                    secret_name: output.into(),
                },
                refresh_before: None,
            },
        );
        c.metadata.namespace = Some("ns".into());
        c
    }

    fn names(refs: Vec<ObjectRef<OAuthCredential>>) -> Vec<String> {
        let mut names: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    #[test]
    fn a_shared_client_secret_maps_to_every_credential_using_it() {
        let refs = SecretReferences::default();
        refs.upsert(&credential("a", "client", "ra", "oa"));
        refs.upsert(&credential("b", "client", "rb", "ob"));
        assert_eq!(names(refs.credentials_for("ns", "client")), vec!["a", "b"]);
        assert_eq!(names(refs.credentials_for("ns", "rb")), vec!["b"]);
        assert_eq!(names(refs.credentials_for("ns", "oa")), vec!["a"]);
        assert!(
            refs.credentials_for("other", "client").is_empty(),
            "references never cross namespaces"
        );
    }

    #[test]
    fn a_spec_change_moves_and_a_delete_drops_the_references() {
        let refs = SecretReferences::default();
        refs.upsert(&credential("a", "client", "ra", "oa"));
        refs.upsert(&credential("a", "client", "ra2", "oa"));
        assert!(refs.credentials_for("ns", "ra").is_empty());
        assert_eq!(names(refs.credentials_for("ns", "ra2")), vec!["a"]);
        refs.remove(&credential("a", "client", "ra2", "oa"));
        assert!(refs.credentials_for("ns", "client").is_empty());
        assert!(refs.index.read().unwrap().by_secret.is_empty());
    }
}
