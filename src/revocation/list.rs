//! Every replica's copy of the revoked tokens, kept by a watch on the `RevokedToken` objects, and
//! the writes that add (any replica) and sweep (the leader) them; the tokens of the
//! `bootstrap_token` grant ([`IssuedTokens`]) are kept and swept alongside.

use std::time::Duration;

use futures::FutureExt;
use kube::Client;
use kube::api::Api;
use tokio::sync::broadcast;

use super::issued::{IssuedTokens, over_cap};
use super::mirror::{self, Mirror, SWEEP_BATCH};
use super::{IssuedGrant, Revocation, RevocationConfig, RevokedToken, parse_time, record_name};

/// Revocations a slow listener may fall behind by; it misses older ones (the controller's
/// periodic look at every BootstrapToken still catches those).
const CHANGES: usize = 1024;

/// How long a grant waits for its record to be written: the client is told to try again rather
/// than wait the HTTP client's minutes on an API server that does not answer.
const RECORD_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("recording the revocation of token {jti}: {source}")]
    Write { jti: String, source: kube::Error },
    #[error("recording the issued token {jti}: {source}")]
    Record { jti: String, source: kube::Error },
    #[error("recording the issued token {jti}: no answer within {RECORD_TIMEOUT:?}")]
    RecordTimeout { jti: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    effective_at: i64,
    exp: i64,
}

/// The revoked tokens this replica knows of, by `jti`.
pub struct Revocations {
    config: RevocationConfig,
    entries: Mirror<Entry>,
    /// Where the records live; none in memory-only mode (tests and benchmarks without a cluster).
    api: Option<Api<RevokedToken>>,
    /// The jti of each revocation recorded or seen after the first list, for the controller to
    /// replace a BootstrapToken's token revoked elsewhere (at the endpoint, say).
    revoked: broadcast::Sender<String>,
    issued: IssuedTokens,
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
            entries: Mirror::new(true),
            api: None,
            revoked: broadcast::Sender::new(CHANGES),
            issued: IssuedTokens::new(None),
        }
    }

    /// Kept as `RevokedToken` and `IssuedToken` objects in `namespace`; [`Revocations::watch`]
    /// fills it.
    pub fn in_cluster(config: RevocationConfig, client: Client, namespace: &str) -> Self {
        Revocations {
            config,
            entries: Mirror::new(false),
            api: Some(Api::namespaced(client.clone(), namespace)),
            revoked: broadcast::Sender::new(CHANGES),
            issued: IssuedTokens::new(Some(Api::namespaced(client, namespace))),
        }
    }

    pub fn config(&self) -> &RevocationConfig {
        &self.config
    }

    /// Whether the token `jti` is refused at `now`.
    pub fn is_revoked(&self, jti: &str, now: i64) -> bool {
        self.entries
            .read()
            .get(jti)
            .is_some_and(|entry| entry.effective_at <= now)
    }

    /// How many records this replica holds.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first list of both kinds of record has been read.
    pub fn is_synced(&self) -> bool {
        self.entries.is_synced() && self.issued.mirror.is_synced()
    }

    /// Resolves once the first list of both kinds of record has been read.
    pub async fn wait_synced(&self) {
        futures::join!(self.entries.wait_synced(), self.issued.mirror.wait_synced());
    }

    /// Records `revocation`: one write, unless the token is already revoked as early or earlier.
    /// Takes effect on this replica at once, on the others when their watch sees it.
    pub async fn revoke(&self, revocation: &Revocation) -> Result<(), RevocationError> {
        let known = self.entries.read().get(&revocation.jti).copied();
        if known.is_some_and(|entry| entry.effective_at <= revocation.effective_at) {
            return Ok(());
        }
        if let Some(api) = &self.api {
            let object = RevokedToken::new(&record_name(&revocation.jti), revocation.spec());
            mirror::apply(api, &object)
                .await
                .map_err(|source| RevocationError::Write {
                    jti: revocation.jti.clone(),
                    source,
                })?;
        }
        self.entries.write().insert(
            revocation.jti.clone(),
            Entry {
                effective_at: revocation.effective_at,
                exp: revocation.exp,
            },
        );
        let _ = self.revoked.send(revocation.jti.clone());
        Ok(())
    }

    /// The tokens of the `bootstrap_token` grant this replica knows of.
    pub fn issued(&self) -> &IssuedTokens {
        &self.issued
    }

    /// Records a token of the `bootstrap_token` grant before it is handed out, then revokes the
    /// oldest tokens of its sid beyond `issuedPerService`. Fails only when the record could not
    /// be written (in time): the token must then not leave; a record written after the time
    /// out only holds its key until the token's `exp` or the cap of its sid. A failed revocation at the cap is left to the
    /// leader's sweep, which applies the same cap.
    pub async fn record_issued(
        &self,
        grant: &IssuedGrant,
        now: i64,
    ) -> Result<(), RevocationError> {
        tokio::time::timeout(RECORD_TIMEOUT, self.issued.record(grant))
            .await
            .map_err(|_| RevocationError::RecordTimeout {
                jti: grant.jti.clone(),
            })??;
        let victims = {
            let entries = self.issued.mirror.read();
            over_cap(
                entries.iter().filter(|(_, entry)| entry.sid == grant.sid),
                self.config.issued_per_service,
                now,
                |jti| self.is_revoked(jti, now),
            )
        };
        if let Err(error) = self.revoke_over_cap(victims, now).await {
            tracing::warn!(%error, sid = grant.sid, "revoking the grant's oldest tokens of a service at the cap; the sweep retries");
        }
        Ok(())
    }

    /// Revokes the grant tokens `victims` (reason `ServiceCapReached`) and drops their records.
    async fn revoke_over_cap(&self, victims: Vec<String>, now: i64) -> Result<(), RevocationError> {
        let revocations: Vec<Revocation> = {
            let entries = self.issued.mirror.read();
            victims
                .iter()
                .filter_map(|jti| Some(entries.get(jti)?.revocation(jti, now)))
                .collect()
        };
        for revocation in &revocations {
            self.revoke(revocation).await?;
            tracing::info!(jti = %revocation.jti, sid = ?revocation.sid, "revoked a grant token beyond revocation.issuedPerService");
        }
        self.issued
            .mirror
            .delete(self.issued.api.as_ref(), victims)
            .await;
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

    /// Follows both kinds of record until `stop` resolves (every replica).
    pub async fn watch(&self, stop: impl std::future::Future<Output = ()>) {
        let (Some(api), Some(issued)) = (&self.api, &self.issued.api) else {
            return stop.await;
        };
        let stop = stop.shared();
        let revoked = self.entries.follow(api, stop.clone(), entry_of, |jti| {
            let _ = self.revoked.send(jti);
        });
        let issued = self
            .issued
            .mirror
            .follow(issued, stop, super::issued::entry_of, drop);
        futures::join!(revoked, issued);
    }

    /// The tokens whose records may go: expired at `now`, at most `limit` of them.
    fn expired(&self, now: i64, limit: usize) -> Vec<String> {
        self.entries
            .read()
            .iter()
            .filter(|(_, entry)| entry.exp < now)
            .map(|(jti, _)| jti.clone())
            .take(limit)
            .collect()
    }

    /// Every `sweepInterval` until `stop` (the leader): deletes the records of expired revoked
    /// tokens; drops the records of grant tokens expired or revoked; revokes grant tokens beyond
    /// the cap of their sid that a replica left (a failed write, two replicas at once).
    pub async fn sweep(&self, stop: impl std::future::Future<Output = ()>) {
        let (Some(api), Some(issued)) = (&self.api, &self.issued.api) else {
            return stop.await;
        };
        let sweeping = async {
            loop {
                tokio::time::sleep(self.config.sweep_interval).await;
                if !self.is_synced() {
                    continue;
                }
                let now = jiff::Timestamp::now().as_second();
                self.entries
                    .delete(Some(api), self.expired(now, SWEEP_BATCH))
                    .await;
                let mut victims = over_cap(
                    self.issued.mirror.read().iter(),
                    self.config.issued_per_service,
                    now,
                    |jti| self.is_revoked(jti, now),
                );
                victims.truncate(SWEEP_BATCH);
                if let Err(error) = self.revoke_over_cap(victims, now).await {
                    tracing::warn!(%error, "revoking grant tokens beyond the cap of their service");
                }
                let gone = self
                    .issued
                    .sweepable(now, |jti| self.is_revoked(jti, now), SWEEP_BATCH);
                self.issued.mirror.delete(Some(issued), gone).await;
            }
        };
        tokio::select! {
            () = sweeping => {}
            () = stop => {}
        }
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

    fn grant(jti: &str, sid: &str, issued_ms: i64) -> IssuedGrant {
        IssuedGrant {
            jti: jti.into(),
            kid: "k".into(),
            client_id: "c".into(),
            sid: sid.into(),
            issued_ms,
            exp: 3_600,
        }
    }

    /// The grant records each token; one beyond the cap of its sid revokes the oldest of that
    /// sid (and drops its record), never another sid's.
    #[tokio::test]
    async fn a_grant_beyond_the_cap_revokes_the_oldest_of_its_sid() {
        let list = Revocations::in_memory(RevocationConfig {
            issued_per_service: 2,
            ..RevocationConfig::default()
        });
        let now = 1_000;
        list.record_issued(&grant("other", "t", 1), now)
            .await
            .unwrap();
        // Within one second, told apart by the millisecond.
        for (issued_ms, jti) in [(10, "d"), (11, "c"), (12, "b"), (13, "a")] {
            list.record_issued(&grant(jti, "s", issued_ms), now)
                .await
                .unwrap();
        }
        for (jti, revoked) in [
            ("d", true),
            ("c", true),
            ("b", false),
            ("a", false),
            ("other", false),
        ] {
            assert_eq!(list.is_revoked(jti, now), revoked, "{jti}");
        }
        assert_eq!(
            list.issued.mirror.read().len(),
            3,
            "the revoked tokens' records are dropped"
        );
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
            let mut entries = list.entries.write();
            for jti in batch {
                entries.remove(&jti);
            }
        }
        assert_eq!(list.len(), alive);
        assert_eq!(swept, 1_000 - alive);
    }
}
