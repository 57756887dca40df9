//! Which BootstrapTokens a ServiceAccount may act as: `spec.serviceAccounts` lists ServiceAccounts
//! of the BootstrapToken's own namespace. Every replica keeps this index from its own watch of
//! BootstrapTokens (the endpoint is served by replicas that do not lead too), keyed by
//! (namespace, ServiceAccount). Every object is kept, mapped or not, so that the controller's
//! rule "a service id belongs to the namespace that has held it longest" applies here as well.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::assertion::ServiceAccount;
use crate::controller::holds_before;
use crate::resource::BootstrapToken;

/// (namespace, name).
type Name = (String, String);

#[derive(Default)]
struct Index {
    objects: HashMap<Name, Arc<BootstrapToken>>,
    /// (namespace, ServiceAccount) → the objects listing it.
    by_account: HashMap<Name, BTreeSet<String>>,
    /// service id → the objects with it, in any namespace.
    by_sid: HashMap<String, BTreeSet<Name>>,
}

impl Index {
    fn insert(&mut self, bt: BootstrapToken) {
        let name = (bt.namespace().unwrap_or_default(), bt.name_any());
        self.remove(&name);
        for account in &bt.spec.service_accounts {
            self.by_account
                .entry((name.0.clone(), account.clone()))
                .or_default()
                .insert(name.1.clone());
        }
        self.by_sid
            .entry(bt.spec.service_id.clone())
            .or_default()
            .insert(name.clone());
        self.objects.insert(name, Arc::new(bt));
    }

    fn remove(&mut self, name: &Name) {
        let Some(old) = self.objects.remove(name) else {
            return;
        };
        for account in &old.spec.service_accounts {
            let key = (name.0.clone(), account.clone());
            if let Some(names) = self.by_account.get_mut(&key) {
                names.remove(&name.1);
                if names.is_empty() {
                    self.by_account.remove(&key);
                }
            }
        }
        if let Some(names) = self.by_sid.get_mut(&old.spec.service_id) {
            names.remove(name);
            if names.is_empty() {
                self.by_sid.remove(&old.spec.service_id);
            }
        }
    }
}

/// The BootstrapTokens a ServiceAccount may act as, kept current by [`Mappings::run`].
pub struct Mappings {
    index: RwLock<Index>,
    /// Watches that have not delivered their first complete list yet: until then, "not mapped"
    /// cannot be told.
    unsynced: AtomicUsize,
}

impl Default for Mappings {
    /// Not synced until [`Mappings::run`] has listed everything.
    fn default() -> Self {
        Mappings {
            index: RwLock::default(),
            unsynced: AtomicUsize::new(1),
        }
    }
}

impl Mappings {
    pub fn synced(&self) -> bool {
        self.unsynced.load(Ordering::Acquire) == 0
    }

    #[cfg(test)]
    pub(super) fn mark_synced(&self) {
        self.unsynced.store(0, Ordering::Release);
    }

    /// The BootstrapTokens that list `account`, not being deleted, by name.
    pub fn of(&self, account: &ServiceAccount) -> Vec<Arc<BootstrapToken>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let key = (account.namespace.clone(), account.name.clone());
        index
            .by_account
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|name| index.objects.get(&(key.0.clone(), name.clone())))
            .filter(|bt| bt.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect()
    }

    /// The namespace that holds `bt`'s service id before it, if another does.
    pub fn held_elsewhere(&self, bt: &BootstrapToken) -> Option<String> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .by_sid
            .get(&bt.spec.service_id)
            .into_iter()
            .flatten()
            .filter_map(|name| index.objects.get(name))
            .find(|other| holds_before(&other.metadata, &other.spec, bt))
            .and_then(|holder| holder.namespace())
    }

    /// Applies one event of the watch over `scope` (one namespace, or all when `None`). A
    /// re-list is collected in `relist` and then replaces what the index held for that scope.
    fn apply(
        &self,
        event: watcher::Event<BootstrapToken>,
        scope: Option<&str>,
        relist: &mut Option<Vec<BootstrapToken>>,
        first: &mut bool,
    ) {
        let index = || self.index.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(bt) => index().insert(bt),
            watcher::Event::Delete(bt) => {
                index().remove(&(bt.namespace().unwrap_or_default(), bt.name_any()))
            }
            watcher::Event::Init => *relist = Some(Vec::new()),
            watcher::Event::InitApply(bt) => relist.get_or_insert_with(Vec::new).push(bt),
            watcher::Event::InitDone => {
                let listed = relist.take().unwrap_or_default();
                let mut index = index();
                let stale: Vec<Name> = index
                    .objects
                    .keys()
                    .filter(|(namespace, _)| scope.is_none_or(|scope| scope == namespace))
                    .cloned()
                    .collect();
                for name in &stale {
                    index.remove(name);
                }
                for bt in listed {
                    index.insert(bt);
                }
                if std::mem::take(first) {
                    self.unsynced.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Follows the watch over `scope` until it ends.
    async fn follow(
        &self,
        events: impl Stream<Item = watcher::Event<BootstrapToken>>,
        scope: Option<&str>,
    ) {
        let (mut relist, mut first) = (None, true);
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            self.apply(event, scope, &mut relist, &mut first);
        }
    }

    /// Watches the BootstrapTokens of `namespaces` (all when empty) until `shutdown` resolves.
    pub async fn run(
        &self,
        client: Client,
        namespaces: &[String],
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().map(|ns| Some(ns.as_str())).collect()
        };
        self.unsynced.store(scopes.len(), Ordering::Release);
        let watches = scopes.into_iter().map(|scope| {
            let api: Api<BootstrapToken> = match scope {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let events = watcher(api, watcher::Config::default())
                .backoff(crate::backoff::watch())
                // Only the spec and the ordering metadata are read.
                .modify(|bt: &mut BootstrapToken| {
                    bt.managed_fields_mut().clear();
                    bt.annotations_mut().clear();
                    bt.status = None;
                })
                .filter_map(|event| async move {
                    event
                        .inspect_err(|error| {
                            tracing::warn!(%error, "watching BootstrapTokens for workload identity")
                        })
                        .ok()
                });
            self.follow(events, scope)
        });
        tokio::select! {
            _ = futures::future::join_all(watches) => {}
            () = shutdown => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::resource::BootstrapTokenSpec;

    fn bt(
        namespace: &str,
        name: &str,
        sid: &str,
        accounts: &[&str],
        created: i64,
    ) -> BootstrapToken {
        let mut bt = BootstrapToken::new(
            name,
            BootstrapTokenSpec {
                service_accounts: accounts.iter().map(|a| a.to_string()).collect(),
                ..BootstrapTokenSpec::for_service(sid)
            },
        );
        bt.metadata.namespace = Some(namespace.into());
        bt.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        bt
    }

    fn account(namespace: &str, name: &str) -> ServiceAccount {
        ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn sids(mappings: &Mappings, namespace: &str, name: &str) -> Vec<String> {
        mappings
            .of(&account(namespace, name))
            .iter()
            .map(|bt| bt.spec.service_id.clone())
            .collect()
    }

    #[test]
    fn index_follows_the_watch() {
        let mappings = Mappings::default();
        mappings.unsynced.store(1, Ordering::Release);
        let (mut relist, mut first) = (None, true);
        let mut apply = |event| mappings.apply(event, None, &mut relist, &mut first);
        apply(watcher::Event::Init);
        apply(watcher::Event::InitApply(bt(
            "a",
            "one",
            "sid.one",
            &["api"],
            1,
        )));
        apply(watcher::Event::InitApply(bt(
            "b",
            "other",
            "sid.other",
            &["api"],
            1,
        )));
        assert!(!mappings.synced(), "not before the list is complete");
        assert!(
            sids(&mappings, "a", "api").is_empty(),
            "a list in progress is not used"
        );
        apply(watcher::Event::InitDone);
        assert!(mappings.synced());
        assert_eq!(sids(&mappings, "a", "api"), ["sid.one"]);
        assert_eq!(sids(&mappings, "b", "api"), ["sid.other"], "by namespace");
        assert!(sids(&mappings, "a", "web").is_empty());

        apply(watcher::Event::Apply(bt(
            "a",
            "two",
            "sid.two",
            &["api", "web"],
            2,
        )));
        assert_eq!(sids(&mappings, "a", "api"), ["sid.one", "sid.two"]);
        // An edit that drops the account drops the mapping.
        apply(watcher::Event::Apply(bt(
            "a",
            "two",
            "sid.two",
            &["web"],
            2,
        )));
        assert_eq!(sids(&mappings, "a", "api"), ["sid.one"]);
        assert_eq!(sids(&mappings, "a", "web"), ["sid.two"]);
        apply(watcher::Event::Delete(bt(
            "a",
            "two",
            "sid.two",
            &["web"],
            2,
        )));
        assert!(sids(&mappings, "a", "web").is_empty());

        let mut deleting = bt("a", "one", "sid.one", &["api"], 1);
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::from_second(9).unwrap()));
        apply(watcher::Event::Apply(deleting));
        assert!(
            sids(&mappings, "a", "api").is_empty(),
            "not while being deleted"
        );

        // A re-list replaces everything: what it does not hold is gone.
        apply(watcher::Event::Init);
        apply(watcher::Event::InitApply(bt(
            "a",
            "three",
            "sid.three",
            &["api"],
            3,
        )));
        apply(watcher::Event::InitDone);
        assert_eq!(sids(&mappings, "a", "api"), ["sid.three"]);
        assert!(sids(&mappings, "b", "api").is_empty());
    }

    #[test]
    fn a_namespace_watch_relists_only_its_namespace() {
        let mappings = Mappings::default();
        mappings.unsynced.store(2, Ordering::Release);
        let (mut relist_a, mut first_a) = (None, true);
        let (mut relist_b, mut first_b) = (None, true);
        mappings.apply(watcher::Event::Init, Some("a"), &mut relist_a, &mut first_a);
        mappings.apply(
            watcher::Event::InitApply(bt("a", "one", "s1", &["api"], 1)),
            Some("a"),
            &mut relist_a,
            &mut first_a,
        );
        mappings.apply(
            watcher::Event::InitDone,
            Some("a"),
            &mut relist_a,
            &mut first_a,
        );
        assert!(!mappings.synced(), "one namespace of two");
        mappings.apply(watcher::Event::Init, Some("b"), &mut relist_b, &mut first_b);
        mappings.apply(
            watcher::Event::InitApply(bt("b", "two", "s2", &["api"], 1)),
            Some("b"),
            &mut relist_b,
            &mut first_b,
        );
        mappings.apply(
            watcher::Event::InitDone,
            Some("b"),
            &mut relist_b,
            &mut first_b,
        );
        assert!(mappings.synced());
        assert_eq!(sids(&mappings, "a", "api"), ["s1"]);
        assert_eq!(sids(&mappings, "b", "api"), ["s2"]);
        // b re-lists empty: a keeps its mapping.
        mappings.apply(watcher::Event::Init, Some("b"), &mut relist_b, &mut first_b);
        mappings.apply(
            watcher::Event::InitDone,
            Some("b"),
            &mut relist_b,
            &mut first_b,
        );
        assert_eq!(sids(&mappings, "a", "api"), ["s1"]);
        assert!(sids(&mappings, "b", "api").is_empty());
        assert!(mappings.synced());
    }

    #[test]
    fn the_oldest_namespace_holds_a_service_id() {
        let mappings = Mappings::default();
        let (mut relist, mut first) = (None, true);
        let older = bt("a", "svc", "shared", &[], 1);
        let newer = bt("b", "svc", "shared", &["api"], 2);
        mappings.apply(
            watcher::Event::Apply(older.clone()),
            None,
            &mut relist,
            &mut first,
        );
        mappings.apply(
            watcher::Event::Apply(newer.clone()),
            None,
            &mut relist,
            &mut first,
        );
        assert_eq!(mappings.held_elsewhere(&newer).as_deref(), Some("a"));
        assert_eq!(mappings.held_elsewhere(&older), None);
        mappings.apply(watcher::Event::Delete(older), None, &mut relist, &mut first);
        assert_eq!(mappings.held_elsewhere(&newer), None);
    }
}
