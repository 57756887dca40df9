//! What the two kinds of record (`RevokedToken`, `IssuedToken`) share: every replica's in-memory
//! copy kept by a watch, the idempotent write that adds one, and the leader's deletes.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::record_name;
use crate::resource::MANAGER;

/// Records deleted per sweep pass: a burst of expiries is spread over a few passes, not one long
/// burst of deletes.
pub(super) const SWEEP_BATCH: usize = 200;

/// The records of one kind this replica knows of, by `jti`.
pub(super) struct Mirror<E> {
    entries: RwLock<HashMap<String, E>>,
    /// True once the first list has been read: until then an absent entry means nothing.
    synced: watch::Sender<bool>,
}

impl<E> Mirror<E> {
    /// `synced` from the start when nothing will fill it from a watch (memory-only mode).
    pub(super) fn new(synced: bool) -> Self {
        Mirror {
            entries: RwLock::default(),
            synced: watch::Sender::new(synced),
        }
    }

    pub(super) fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub(super) async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        // The sender lives as long as `self`: this cannot fail while we are borrowed.
        let _ = synced.wait_for(|synced| *synced).await;
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, HashMap<String, E>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, E>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the records of `api` until `stop`. `entry_of` reads one (`None`: ignored);
    /// `applied` hears of each jti added or changed after the first list.
    pub(super) async fn follow<K>(
        &self,
        api: &Api<K>,
        stop: impl std::future::Future<Output = ()>,
        entry_of: impl Fn(&K) -> Option<(String, E)>,
        applied: impl Fn(String),
    ) where
        K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
    {
        let mut listing: HashMap<String, E> = HashMap::new();
        let events = watcher(api.clone(), watcher::Config::default())
            .backoff(crate::backoff::watch())
            .take_until(stop);
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => listing.clear(),
                Ok(watcher::Event::InitApply(record)) => {
                    if let Some((jti, entry)) = entry_of(&record) {
                        listing.insert(jti, entry);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    *self.write() = std::mem::take(&mut listing);
                    self.synced.send_replace(true);
                }
                Ok(watcher::Event::Apply(record)) => {
                    if let Some((jti, entry)) = entry_of(&record) {
                        self.write().insert(jti.clone(), entry);
                        applied(jti);
                    }
                }
                Ok(watcher::Event::Delete(record)) => {
                    if let Some((jti, _)) = entry_of(&record) {
                        self.write().remove(&jti);
                    }
                }
                Err(error) => tracing::warn!(%error, kind = %K::kind(&()), "watching records"),
            }
        }
    }

    /// Deletes the records of `jtis` (dropping them here too), in order, until one fails: the
    /// next pass tries again. A record deleted already counts as deleted. Without `api`
    /// (memory-only mode), they are only dropped here.
    pub(super) async fn delete<K>(&self, api: Option<&Api<K>>, jtis: Vec<String>)
    where
        K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
    {
        for jti in jtis {
            if let Some(api) = api {
                match api
                    .delete(&record_name(&jti), &DeleteParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => {
                        tracing::warn!(%error, kind = %K::kind(&()), "deleting a record");
                        return;
                    }
                }
            }
            self.write().remove(&jti);
        }
    }
}

/// Writes `object` by server-side apply, forced: the operator alone writes its records, and a
/// second write of the same record is a no-op.
pub(super) async fn apply<K>(api: &Api<K>, object: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let mut patch = serde_json::to_value(object).unwrap_or_default();
    patch["apiVersion"] = K::api_version(&()).into();
    patch["kind"] = K::kind(&()).into();
    api.patch(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
}
