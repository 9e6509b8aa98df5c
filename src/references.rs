//! Which credentials name a given Secret, and how: as client, refresh-token
//! or output Secret. It answers three questions without any API call:
//!
//! - which credentials a change of that Secret concerns (the Secret watches
//!   map each event through it);
//! - which credential holds a refresh-token Secret that several name (the
//!   oldest; the others are refused, since one refresh token serves one
//!   credential);
//! - whether a credential's output name is another credential's input.
//!
//! It also remembers, for referenced Secrets only, the last resourceVersion
//! the watches reported and whether the Secret opted in as an input (its
//! `type`), so that a reconcile can tell without a read whether an input
//! changed. When a credential comes, changes or goes, the credentials whose
//! answer to the last two questions that changes are sent to `affected`, to
//! be reconciled again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio::sync::mpsc::UnboundedSender;

use crate::input_secrets::InputKind;
use crate::resource::OAuthCredential;

type Key = (String, String);

/// What a credential names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Names {
    client: String,
    refresh: String,
    output: String,
    /// Creation time, which decides who holds a shared refresh-token Secret.
    created: Option<Timestamp>,
}

/// Who names one Secret, by role.
#[derive(Default)]
struct Users {
    client: SmallSet<String>,
    /// Ordered oldest first: the first holds the Secret.
    refresh: SmallSet<(Option<Timestamp>, String)>,
    output: SmallSet<String>,
}

/// A sorted set kept in a vector that grows one element at a time. Nearly
/// every Secret has one user per role, and one element costs a few dozen
/// bytes where a `BTreeSet` allocates a whole node (measured with heaptrack
/// at 10,000 credentials: the index took 1.8 KiB per credential).
struct SmallSet<T>(Vec<T>);

impl<T> Default for SmallSet<T> {
    fn default() -> Self {
        SmallSet(Vec::new())
    }
}

impl<T: Ord> SmallSet<T> {
    fn insert(&mut self, value: T) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(at) => {
                self.0.reserve_exact(1);
                self.0.insert(at, value);
                true
            }
        }
    }

    fn remove<Q>(&mut self, value: &Q) -> bool
    where
        T: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.0.binary_search_by(|x| x.borrow().cmp(value)) {
            Ok(at) => {
                self.0.remove(at);
                self.0.shrink_to_fit();
                true
            }
            Err(_) => false,
        }
    }

    fn first(&self) -> Option<&T> {
        self.0.first()
    }

    fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Users {
    fn is_empty(&self) -> bool {
        self.client.is_empty() && self.refresh.is_empty() && self.output.is_empty()
    }

    fn holder(&self) -> Option<&str> {
        self.refresh.first().map(|(_, name)| name.as_str())
    }

    fn all(&self) -> impl Iterator<Item = &String> {
        self.client
            .iter()
            .chain(self.refresh.iter().map(|(_, n)| n))
            .chain(self.output.iter())
    }
}

#[derive(Default)]
struct Index {
    by_secret: HashMap<Key, Users>,
    by_credential: HashMap<Key, Names>,
}

/// What the Secret watches last reported of a referenced Secret.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// Empty when the Secret does not exist.
    version: String,
    /// The input the Secret opted in as, by its type.
    kind: Option<InputKind>,
}

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct SecretReferences {
    index: Arc<RwLock<Index>>,
    seen: Arc<RwLock<HashMap<Key, Seen>>>,
    affected: Option<UnboundedSender<ObjectRef<OAuthCredential>>>,
}

impl SecretReferences {
    /// An index that sends the credentials an index change concerns to
    /// `affected`.
    pub fn notifying(affected: UnboundedSender<ObjectRef<OAuthCredential>>) -> Self {
        Self {
            affected: Some(affected),
            ..Default::default()
        }
    }

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
        let names = Names {
            client: credential.spec.client_secret_ref.name.clone(),
            refresh: credential.spec.refresh_token_secret_ref.name.clone(),
            output: credential.spec.output.secret_name.clone(),
            created: credential.metadata.creation_timestamp.as_ref().map(|t| t.0),
        };
        let key = (namespace.clone(), name.clone());
        let mut index = self.index.write().expect("index lock");
        if index.by_credential.get(&key) == Some(&names) {
            return;
        }
        let mut touched = secrets_of(&names);
        if let Some(old) = index.by_credential.get(&key) {
            touched.extend(secrets_of(old));
        }
        let before = self.answers(&index, &namespace, &touched);
        if let Some(old) = index.by_credential.remove(&key) {
            self.unlink(&mut index, &namespace, &name, &old);
        }
        link(&mut index, &namespace, &name, &names);
        index.by_credential.insert(key, names);
        self.notify_changes(&index, &namespace, &touched, before, &name);
    }

    pub fn remove(&self, credential: &OAuthCredential) {
        let Some(namespace) = credential.namespace() else {
            return;
        };
        let name = credential.name_any();
        let mut index = self.index.write().expect("index lock");
        let Some(old) = index
            .by_credential
            .remove(&(namespace.clone(), name.clone()))
        else {
            return;
        };
        let touched = secrets_of(&old);
        let before = self.answers(&index, &namespace, &touched);
        self.unlink(&mut index, &namespace, &name, &old);
        self.notify_changes(&index, &namespace, &touched, before, &name);
    }

    /// Records what a watch of input Secrets of `kind` reported, for
    /// referenced Secrets only.
    pub fn observe_input_secret<K: kube::Resource>(
        &self,
        kind: InputKind,
        event: &watcher::Event<K>,
    ) {
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
        if !self
            .index
            .read()
            .expect("index lock")
            .by_secret
            .contains_key(&key)
        {
            return;
        }
        let seen = if deleted {
            Seen::default()
        } else {
            Seen {
                version: meta.resource_version.clone().unwrap_or_default(),
                kind: Some(kind),
            }
        };
        self.seen.write().expect("seen lock").insert(key, seen);
    }

    /// The last seen version of a referenced Secret (empty when it does not
    /// exist), if known.
    pub fn version(&self, namespace: &str, secret: &str) -> Option<String> {
        self.seen
            .read()
            .expect("seen lock")
            .get(&(namespace.to_string(), secret.to_string()))
            .map(|s| s.version.clone())
    }

    /// The input the Secret opted in as, if a watch of input Secrets has
    /// reported it.
    pub fn opted_in(&self, namespace: &str, secret: &str) -> Option<InputKind> {
        self.seen
            .read()
            .expect("seen lock")
            .get(&(namespace.to_string(), secret.to_string()))
            .and_then(|s| s.kind)
    }

    /// Remembers what a direct read found: the version, and the input the
    /// Secret opted in as (`None`: not an input, or absent).
    pub fn remember(&self, namespace: &str, secret: &str, version: &str, kind: Option<InputKind>) {
        self.seen.write().expect("seen lock").insert(
            (namespace.to_string(), secret.to_string()),
            Seen {
                version: version.to_string(),
                kind,
            },
        );
    }

    /// Remembers a new version of a Secret whose type is unchanged.
    pub fn remember_version(&self, namespace: &str, secret: &str, version: &str) {
        let mut seen = self.seen.write().expect("seen lock");
        seen.entry((namespace.to_string(), secret.to_string()))
            .or_default()
            .version = version.to_string();
    }

    /// The credentials in `namespace` that name the Secret `secret`.
    pub fn credentials_for(
        &self,
        namespace: &str,
        secret: &str,
    ) -> Vec<ObjectRef<OAuthCredential>> {
        let index = self.index.read().expect("index lock");
        index
            .by_secret
            .get(&(namespace.to_string(), secret.to_string()))
            .map(|users| {
                let names: BTreeSet<&String> = users.all().collect();
                names
                    .into_iter()
                    .map(|n| ObjectRef::new(n).within(namespace))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The credential that holds the refresh-token Secret `secret`: the
    /// oldest of those naming it.
    pub fn refresh_secret_holder(&self, namespace: &str, secret: &str) -> Option<String> {
        let index = self.index.read().expect("index lock");
        index
            .by_secret
            .get(&(namespace.to_string(), secret.to_string()))
            .and_then(|users| users.holder().map(str::to_string))
    }

    /// A credential other than `except` that names `secret` as an input.
    pub fn input_user(&self, namespace: &str, secret: &str, except: &str) -> Option<String> {
        let index = self.index.read().expect("index lock");
        let users = index
            .by_secret
            .get(&(namespace.to_string(), secret.to_string()))?;
        users
            .client
            .iter()
            .chain(users.refresh.iter().map(|(_, n)| n))
            .find(|n| n.as_str() != except)
            .cloned()
    }

    /// Number of Secrets indexed, and of versions remembered (for tests and
    /// the memory metric).
    pub fn sizes(&self) -> (usize, usize) {
        let secrets = self.index.read().expect("index lock").by_secret.len();
        (secrets, self.seen.read().expect("seen lock").len())
    }

    fn unlink(&self, index: &mut Index, namespace: &str, credential: &str, names: &Names) {
        let mut orphaned = Vec::new();
        for (secret, role) in [
            (&names.client, Role::Client),
            (&names.refresh, Role::Refresh),
            (&names.output, Role::Output),
        ] {
            let key = (namespace.to_string(), secret.clone());
            if let Some(users) = index.by_secret.get_mut(&key) {
                match role {
                    Role::Client => drop(users.client.remove(credential)),
                    Role::Refresh => drop(
                        users
                            .refresh
                            .remove(&(names.created, credential.to_string())),
                    ),
                    Role::Output => drop(users.output.remove(credential)),
                }
                if users.is_empty() {
                    index.by_secret.remove(&key);
                    orphaned.push(key);
                }
            }
        }
        // Versions are kept only for Secrets some credential names.
        let mut seen = self.seen.write().expect("seen lock");
        for key in orphaned {
            seen.remove(&key);
        }
    }

    /// For each of the `secrets` of `namespace`: its holder, and who names
    /// it as an output (the two answers that refusals depend on).
    fn answers(&self, index: &Index, namespace: &str, secrets: &BTreeSet<String>) -> Answers {
        if self.affected.is_none() {
            return Answers::new();
        }
        secrets
            .iter()
            .filter_map(|secret| {
                let users = index
                    .by_secret
                    .get(&(namespace.to_string(), secret.clone()))?;
                let outputs = users.output.iter().cloned().collect();
                Some((
                    secret.clone(),
                    (users.holder().map(str::to_string), outputs),
                ))
            })
            .collect()
    }

    /// Sends the credentials (other than `changed`) whose holder or output
    /// conflict may have changed with `changed`.
    fn notify_changes(
        &self,
        index: &Index,
        namespace: &str,
        secrets: &BTreeSet<String>,
        before: Answers,
        changed: &str,
    ) {
        let Some(affected) = &self.affected else {
            return;
        };
        let after = self.answers(index, namespace, secrets);
        let mut names: BTreeSet<String> = BTreeSet::new();
        for secret in secrets {
            let (old, new) = (before.get(secret), after.get(secret));
            let holder_changed = old.map(|a| &a.0) != new.map(|a| &a.0);
            for answer in [old, new].into_iter().flatten() {
                if holder_changed {
                    names.extend(answer.0.iter().cloned());
                }
                // An input came or went: the credential naming it as its
                // output may now be refused, or no longer.
                names.extend(answer.1.iter().cloned());
            }
        }
        for name in names.into_iter().filter(|n| n != changed) {
            let _ = affected.send(ObjectRef::new(&name).within(namespace));
        }
    }
}

/// Per Secret: its holder, and the credentials naming it as their output.
type Answers = HashMap<String, (Option<String>, Vec<String>)>;

fn secrets_of(names: &Names) -> BTreeSet<String> {
    [&names.client, &names.refresh, &names.output]
        .into_iter()
        .cloned()
        .collect()
}

enum Role {
    Client,
    Refresh,
    Output,
}

fn link(index: &mut Index, namespace: &str, credential: &str, names: &Names) {
    fn users<'a>(index: &'a mut Index, namespace: &str, secret: &str) -> &'a mut Users {
        index
            .by_secret
            .entry((namespace.to_string(), secret.to_string()))
            .or_default()
    }
    users(index, namespace, &names.client)
        .client
        .insert(credential.to_string());
    users(index, namespace, &names.refresh)
        .refresh
        .insert((names.created, credential.to_string()));
    users(index, namespace, &names.output)
        .output
        .insert(credential.to_string());
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::resource::{
        ClientSecretRef, OAuthCredentialSpec, Output, Provider, RefreshTokenSecretRef,
    };

    fn credential(name: &str, client: &str, refresh: &str, output: &str) -> OAuthCredential {
        credential_created(name, client, refresh, output, "2026-11-21T19:00:00Z")
    }

    fn credential_created(
        name: &str,
        client: &str,
        refresh: &str,
        output: &str,
        created: &str,
    ) -> OAuthCredential {
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
                    ..Default::default()
                },
                refresh_before: None,
                revoke_on_delete: false,
            },
        );
        c.metadata.namespace = Some("ns".into());
        c.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
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

    #[test]
    fn the_oldest_credential_holds_a_shared_refresh_token_secret() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let refs = SecretReferences::notifying(tx);
        refs.upsert(&credential_created(
            "late",
            "c",
            "shared",
            "o1",
            "2026-11-21T19:05:00Z",
        ));
        refs.upsert(&credential_created(
            "early",
            "c",
            "shared",
            "o2",
            "2026-11-21T19:00:00Z",
        ));
        assert_eq!(
            refs.refresh_secret_holder("ns", "shared").as_deref(),
            Some("early")
        );
        // "late" held it until "early" came: it is told to look again.
        assert_eq!(rx.try_recv().unwrap().name, "late");
        refs.remove(&credential_created(
            "early",
            "c",
            "shared",
            "o2",
            "2026-11-21T19:00:00Z",
        ));
        assert_eq!(
            refs.refresh_secret_holder("ns", "shared").as_deref(),
            Some("late")
        );
        assert_eq!(
            rx.try_recv().unwrap().name,
            "late",
            "the new holder is told"
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn an_output_name_that_is_another_credentials_input_is_found() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let refs = SecretReferences::notifying(tx);
        refs.upsert(&credential("squatter", "c", "r1", "victim-refresh"));
        assert_eq!(refs.input_user("ns", "victim-refresh", "squatter"), None);
        refs.upsert(&credential("victim", "c", "victim-refresh", "o2"));
        assert_eq!(
            refs.input_user("ns", "victim-refresh", "squatter")
                .as_deref(),
            Some("victim")
        );
        assert_eq!(rx.try_recv().unwrap().name, "squatter");
    }

    #[test]
    fn versions_are_kept_only_for_referenced_secrets() {
        let refs = SecretReferences::default();
        let secret = |name: &str| {
            let mut s =
                kube::core::PartialObjectMeta::<k8s_openapi::api::core::v1::Secret>::default();
            s.metadata.name = Some(name.into());
            s.metadata.namespace = Some("ns".into());
            s.metadata.resource_version = Some("7".into());
            s
        };
        refs.upsert(&credential("a", "client", "ra", "oa"));
        refs.observe_input_secret(
            InputKind::RefreshToken,
            &watcher::Event::Apply(secret("ra")),
        );
        refs.observe_input_secret(
            InputKind::RefreshToken,
            &watcher::Event::Apply(secret("unrelated")),
        );
        assert_eq!(refs.version("ns", "ra").as_deref(), Some("7"));
        assert_eq!(refs.opted_in("ns", "ra"), Some(InputKind::RefreshToken));
        assert_eq!(refs.version("ns", "unrelated"), None);
        refs.remove(&credential("a", "client", "ra", "oa"));
        assert_eq!(refs.sizes(), (0, 0));
    }
}
