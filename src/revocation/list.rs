//! Every replica's copy of the revoked tokens, kept by a watch on the `RevokedToken` objects, and
//! the writes that add (any replica) and sweep (the leader) them.

use std::collections::HashMap;
use std::sync::RwLock;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::{broadcast, watch};

use super::{Revocation, RevocationConfig, RevokedToken, parse_time, record_name};
use crate::resource::MANAGER;

/// Revocations a slow listener may fall behind by; it misses older ones (the controller's
/// periodic requeue still catches those).
const CHANGES: usize = 1024;

/// Records swept per pass: a burst of expiries is spread over a few passes, not one long burst
/// of deletes.
const SWEEP_BATCH: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("recording the revocation of token {jti}: {source}")]
    Write { jti: String, source: kube::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    effective_at: i64,
    exp: i64,
}

/// The revoked tokens this replica knows of, by `jti`.
pub struct Revocations {
    config: RevocationConfig,
    entries: RwLock<HashMap<String, Entry>>,
    /// Where the records live; none in memory-only mode (tests and benchmarks without a cluster).
    api: Option<Api<RevokedToken>>,
    /// True once the first list has been read: until then "not revoked" means nothing.
    synced: watch::Sender<bool>,
    /// The jti of each revocation recorded or seen after the first list, for the controller to
    /// replace a BootstrapToken's token revoked elsewhere (at the endpoint, say).
    revoked: broadcast::Sender<String>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations::in_memory(RevocationConfig::default())
    }
}

impl Revocations {
    /// Held in this process only, and complete from the start.
    pub fn in_memory(config: RevocationConfig) -> Self {
        Revocations {
            config,
            entries: Default::default(),
            api: None,
            synced: watch::Sender::new(true),
            revoked: broadcast::Sender::new(CHANGES),
        }
    }

    /// Kept as `RevokedToken` objects in `namespace`; [`Revocations::watch`] fills it.
    pub fn in_cluster(config: RevocationConfig, client: Client, namespace: &str) -> Self {
        Revocations {
            config,
            entries: Default::default(),
            api: Some(Api::namespaced(client, namespace)),
            synced: watch::Sender::new(false),
            revoked: broadcast::Sender::new(CHANGES),
        }
    }

    pub fn config(&self) -> &RevocationConfig {
        &self.config
    }

    /// Whether the token `jti` is refused at `now`.
    pub fn is_revoked(&self, jti: &str, now: i64) -> bool {
        self.read()
            .get(jti)
            .is_some_and(|entry| entry.effective_at <= now)
    }

    /// How many records this replica holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Resolves once the first list of the records has been read.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        // The sender lives as long as `self`: this cannot fail while we are borrowed.
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// Records `revocation`: one write, unless the token is already revoked as early or earlier.
    /// Takes effect on this replica at once, on the others when their watch sees it.
    pub async fn revoke(&self, revocation: &Revocation) -> Result<(), RevocationError> {
        let known = self.read().get(&revocation.jti).copied();
        if known.is_some_and(|entry| entry.effective_at <= revocation.effective_at) {
            return Ok(());
        }
        if let Some(api) = &self.api {
            let object = RevokedToken::new(&record_name(&revocation.jti), revocation.spec());
            let mut patch = serde_json::to_value(&object).unwrap_or_default();
            patch["apiVersion"] = RevokedToken::api_version(&()).into();
            patch["kind"] = RevokedToken::kind(&()).into();
            api.patch(
                &object.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| RevocationError::Write {
                jti: revocation.jti.clone(),
                source,
            })?;
        }
        self.write().insert(
            revocation.jti.clone(),
            Entry {
                effective_at: revocation.effective_at,
                exp: revocation.exp,
            },
        );
        let _ = self.revoked.send(revocation.jti.clone());
        Ok(())
    }

    /// The jti of every revocation from now on (a lagging listener skips some).
    pub fn revoked(&self) -> impl futures::Stream<Item = String> + Send + 'static {
        futures::stream::unfold(self.revoked.subscribe(), |mut changes| async move {
            loop {
                match changes.recv().await {
                    Ok(jti) => return Some((jti, changes)),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Follows the records until `stop` resolves (every replica).
    pub async fn watch(&self, stop: impl std::future::Future<Output = ()>) {
        let Some(api) = &self.api else {
            return stop.await;
        };
        let mut listing: HashMap<String, Entry> = HashMap::new();
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
                        let _ = self.revoked.send(jti);
                    }
                }
                Ok(watcher::Event::Delete(record)) => {
                    self.write().remove(&record.spec.token_id);
                }
                Err(error) => tracing::warn!(%error, "watching RevokedTokens"),
            }
        }
    }

    /// The tokens whose records may go: expired at `now`, at most `limit` of them.
    fn expired(&self, now: i64, limit: usize) -> Vec<String> {
        self.read()
            .iter()
            .filter(|(_, entry)| entry.exp < now)
            .map(|(jti, _)| jti.clone())
            .take(limit)
            .collect()
    }

    /// Deletes the records of expired tokens every `sweepInterval` until `stop` (the leader).
    pub async fn sweep(&self, stop: impl std::future::Future<Output = ()>) {
        let Some(api) = &self.api else {
            return stop.await;
        };
        let sweeping = async {
            loop {
                tokio::time::sleep(self.config.sweep_interval).await;
                if !self.is_synced() {
                    continue;
                }
                let now = jiff::Timestamp::now().as_second();
                for jti in self.expired(now, SWEEP_BATCH) {
                    match api
                        .delete(&record_name(&jti), &DeleteParams::default())
                        .await
                    {
                        Ok(_) => {
                            self.write().remove(&jti);
                        }
                        Err(kube::Error::Api(status)) if status.code == 404 => {
                            self.write().remove(&jti);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "deleting the record of an expired revoked token");
                            break;
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = sweeping => {}
            () = stop => {}
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A record as an entry; one with unreadable times counts as revoked now and kept ten years
/// rather than being ignored.
fn entry_of(record: &RevokedToken) -> Option<(String, Entry)> {
    let spec = &record.spec;
    if spec.token_id.is_empty() {
        return None;
    }
    let entry = Entry {
        effective_at: parse_time(&spec.effective_at).unwrap_or(i64::MIN),
        exp: parse_time(&spec.expires_at).unwrap_or(i64::MAX),
    };
    Some((spec.token_id.clone(), entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::RevocationReason;

    fn revocation(jti: &str, effective_at: i64, exp: i64) -> Revocation {
        Revocation {
            jti: jti.into(),
            kid: "k".into(),
            client_id: "c".into(),
            sid: None,
            exp,
            effective_at,
            reason: RevocationReason::Reissued,
        }
    }

    #[tokio::test]
    async fn revoked_from_effective_time_until_swept() {
        let list = Revocations::default();
        list.revoke(&revocation("a", 100, 1_000)).await.unwrap();
        assert!(!list.is_revoked("a", 99), "the grace period");
        assert!(list.is_revoked("a", 100));
        assert!(!list.is_revoked("b", 100));
        // An earlier revocation wins; a later one changes nothing.
        list.revoke(&revocation("a", 50, 1_000)).await.unwrap();
        assert!(list.is_revoked("a", 50));
        list.revoke(&revocation("a", 500, 1_000)).await.unwrap();
        assert!(list.is_revoked("a", 50));
        assert_eq!(list.expired(1_000, 10), Vec::<String>::new());
        assert_eq!(list.expired(1_001, 10), ["a"]);
    }

    /// A BootstrapToken re-issued 1 000 times (one revoked token each) holds at most the records
    /// of the tokens not yet expired, and the sweep takes the rest in bounded passes.
    #[tokio::test]
    async fn thousand_reissues_stay_bounded_by_unexpired_tokens() {
        let list = Revocations::default();
        let lifetime = 3_600;
        // One re-issue every 10 s (bootstrap.minReissueInterval).
        for i in 0..1_000_i64 {
            let issued = i * 10;
            list.revoke(&revocation(
                &format!("t{i}"),
                issued + 600,
                issued + lifetime,
            ))
            .await
            .unwrap();
        }
        let now = 1_000 * 10;
        let alive = (0..1_000_i64).filter(|i| i * 10 + lifetime >= now).count();
        let mut swept = 0;
        loop {
            let batch = list.expired(now, SWEEP_BATCH);
            assert!(batch.len() <= SWEEP_BATCH);
            if batch.is_empty() {
                break;
            }
            swept += batch.len();
            let mut entries = list.write();
            for jti in batch {
                entries.remove(&jti);
            }
        }
        assert_eq!(list.len(), alive);
        assert_eq!(swept, 1_000 - alive);
    }
}
