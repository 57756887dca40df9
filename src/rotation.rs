//! Signing-key rotation carried out. Every replica follows the signing-key Secrets into its key
//! set ([`Rotation::follow`]); the leader takes the steps [`next_step`] decides
//! ([`Rotation::lead`]): schedule an administrator's key, create the next key, note each phase
//! (with an event), retire a drained key, put back a key Secret deleted before its key was
//! retired. All state is in the Secrets' annotations, so a restart or a new leader carries on
//! from there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::endpoint::EndpointConfig;
use crate::events::EventPublisher;
use crate::keyguard;
use crate::leader::Shutdown;
use crate::revocation::{RevokedToken, parse_time, rfc3339};
use crate::token::rotation::{
    ACTIVE_FROM, KEY_LABEL, KeyState, PHASE, PUBLISH_FROM, Phase, RETIRED_AT, Step, next_step,
    phases,
};
use crate::token::store::{KEY_FIELD, KeyProvider, KidLabels, key_secret};
use crate::token::{LocalKey, RotationConfig, Signer};

/// How often the leader looks at the tokens left under a draining key, and how soon it tries
/// again after a failed step.
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("signing-key Secrets in {namespace}: {source}")]
    Api {
        namespace: String,
        source: kube::Error,
    },
    #[error("generating the next signing key: {0}")]
    Key(#[from] crate::token::KeyError),
}

/// The longest an endpoint-issued access token lives: a superseded key stays published at least
/// that long after its successor signs, since those tokens are not recorded anywhere (the
/// `bootstrap_token` grant's are, and counted by kid).
pub fn drain_for(endpoint: &EndpointConfig) -> Duration {
    if !endpoint.enabled {
        return Duration::ZERO;
    }
    endpoint
        .clients
        .iter()
        .map(|client| endpoint.lifetime_of(client))
        .chain([endpoint.access_token_lifetime])
        .max()
        .unwrap_or_default()
}

pub struct Rotation {
    secrets: Api<Secret>,
    records: Api<RevokedToken>,
    namespace: String,
    /// `signing.keySecret`.
    base_name: String,
    config: RotationConfig,
    drain: Duration,
    keys: Arc<KeyProvider>,
    /// The key Secrets as this replica's watch last saw them, and those gone it keeps (none
    /// before the first list): the leader plans from them, so an idle leader sends no request.
    seen: tokio::sync::watch::Sender<Option<KeySecrets>>,
    /// Gone key Secrets the leader found a Secret of the same name in place of: not tried again
    /// until the watch shows that name again.
    taken: std::sync::Mutex<HashSet<String>>,
}

/// The key Secrets the watch shows, and those it no longer shows that are kept
/// ([`kept_when_gone`]): their keys stay in the key set, and the leader puts them back.
#[derive(Debug, Clone, Default)]
struct KeySecrets {
    present: BTreeMap<String, Secret>,
    gone: BTreeMap<String, Secret>,
}

impl KeySecrets {
    /// A complete listing (the first, or after a watch gap, where a deletion shows only as an
    /// absence).
    fn listed(&mut self, listing: BTreeMap<String, Secret>, keep: impl Fn(&Secret) -> bool) {
        let before = std::mem::replace(&mut self.present, listing);
        for (name, secret) in before {
            if !self.present.contains_key(&name) && keep(&secret) {
                self.gone.insert(name, secret);
            }
        }
        let present = &self.present;
        self.gone.retain(|name, _| !present.contains_key(name));
    }

    fn applied(&mut self, secret: Secret) {
        let name = secret.name_any();
        self.gone.remove(&name);
        self.present.insert(name, secret);
    }

    /// `secret` as it was when deleted.
    fn deleted(&mut self, secret: Secret, keep: impl Fn(&Secret) -> bool) {
        let name = secret.name_any();
        self.present.remove(&name);
        if keep(&secret) {
            self.gone.insert(name, secret);
        }
    }

    fn all(&self) -> impl Iterator<Item = &Secret> {
        self.present.values().chain(self.gone.values())
    }
}

/// Whether a key Secret that went away is kept, its key verifying on every replica until the
/// leader puts it back: the configured key's always (its guard puts it back, and meanwhile its
/// phase stands, retired included), any other holding a key until that key is retired (then it
/// may go: it verifies nothing any more).
fn kept_when_gone(secret: &Secret, base_name: &str, now: i64) -> bool {
    let (state, signer) = key_of(secret, base_name);
    state.base || (signer.is_some() && !state.retired(now))
}

/// A key Secret as the decisions see it, with its key (none if unreadable).
fn key_of(secret: &Secret, base_name: &str) -> (KeyState, Option<Arc<dyn Signer>>) {
    let name = secret.name_any();
    let base = name == base_name;
    let signer = secret
        .data
        .as_ref()
        .and_then(|data| data.get(KEY_FIELD))
        .and_then(|pem| LocalKey::from_pem("(rotated key)", &pem.0).ok())
        .map(|key| Arc::new(key.named(None)) as Arc<dyn Signer>);
    let notes = secret.annotations();
    let time = |key: &str| notes.get(key).and_then(|text| parse_time(text));
    let state = KeyState {
        kid: signer
            .as_ref()
            .map(|s| s.kid().to_string())
            .unwrap_or_default(),
        created: secret
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        publish_from: time(PUBLISH_FROM),
        active_from: time(ACTIVE_FROM),
        retired_at: time(RETIRED_AT),
        noted: notes.get(PHASE).and_then(|text| Phase::parse(text)),
        base,
        name,
    };
    (state, signer)
}

impl Rotation {
    /// Rotation of the keys `keys` holds in Secrets; `None` when they are not in Secrets (KMS,
    /// keys handed over in memory).
    pub fn new(
        keys: Arc<KeyProvider>,
        config: RotationConfig,
        drain: Duration,
    ) -> Option<Rotation> {
        let secret = keys.key_secret()?;
        let (client, namespace, base_name) = (
            secret.client.clone(),
            secret.namespace.to_string(),
            secret.name.to_string(),
        );
        Some(Rotation {
            secrets: Api::namespaced(client.clone(), &namespace),
            records: Api::namespaced(client, &namespace),
            namespace,
            base_name,
            config,
            drain,
            keys,
            seen: tokio::sync::watch::Sender::new(None),
            taken: Default::default(),
        })
    }

    /// Keeps this replica's key set in line with the key Secrets until `stop` (every replica).
    pub async fn follow(&self, stop: Shutdown) {
        // Loaded first: the configured key is what the Secrets' phases are applied to.
        let mut delay = Duration::from_millis(200);
        while self.keys.load().await.is_err() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.clone() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        let config = watcher::Config::default().labels(KEY_LABEL);
        let mut events = watcher(self.secrets.clone(), config)
            .backoff(crate::backoff::watch())
            .take_until(stop)
            .boxed();
        let mut listing = BTreeMap::new();
        // The Secrets as last listed and watched, and those gone that are kept; none until the
        // first list is complete.
        let mut known: Option<KeySecrets> = None;
        // When the phases change next by the clock alone.
        let mut next: Option<i64> = None;
        loop {
            let wake = async move {
                match next {
                    Some(at) => tokio::time::sleep(until(at)).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                event = events.try_next() => Some(event),
                () = wake => None,
            };
            let now = jiff::Timestamp::now().as_second();
            let keep = |secret: &Secret| kept_when_gone(secret, &self.base_name, now);
            match event {
                // The clock moved a key to its next phase.
                None => {}
                Some(Ok(Some(watcher::Event::Init))) => {
                    listing.clear();
                    continue;
                }
                Some(Ok(Some(watcher::Event::InitApply(secret)))) => {
                    listing.insert(secret.name_any(), secret);
                    continue;
                }
                Some(Ok(Some(watcher::Event::InitDone))) => {
                    known
                        .get_or_insert_default()
                        .listed(std::mem::take(&mut listing), keep);
                }
                Some(Ok(Some(watcher::Event::Apply(secret)))) => {
                    if let Some(known) = &mut known {
                        known.applied(secret);
                    }
                }
                Some(Ok(Some(watcher::Event::Delete(secret)))) => {
                    if let Some(known) = &mut known {
                        known.deleted(secret, keep);
                    }
                }
                Some(Ok(None)) => break,
                Some(Err(error)) => {
                    tracing::warn!(%error, "watching the signing-key Secrets");
                    continue;
                }
            }
            if let Some(known) = &mut known {
                // Gone before its key was retired, then retired by the clock: it may go now.
                known.gone.retain(|_, secret| keep(secret));
                let rotated: Vec<_> = known
                    .all()
                    .map(|secret| key_of(secret, &self.base_name))
                    .collect();
                for (state, _) in rotated.iter().filter(|(s, key)| key.is_none() && !s.base) {
                    tracing::warn!(secret = %state.name,
                        "signing-key Secret has no valid {KEY_FIELD}; it is left out of the key set");
                }
                next = self.keys.install(rotated, now);
                self.seen.send_replace(Some(known.clone()));
            }
        }
    }

    /// Takes rotation steps until `stop` (the leader). `tokens_by_kid` counts the tokens each kid
    /// signed that the operator knows of (BootstrapTokens' statuses, recorded grant tokens),
    /// `None` until it can.
    pub async fn lead<F, Fut>(&self, recorder: &EventPublisher, tokens_by_kid: F, stop: Shutdown)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<HashMap<String, usize>>>,
    {
        let mut changes = self.seen.subscribe();
        let work = async {
            loop {
                changes.borrow_and_update();
                let wait = match self.step(recorder, &tokens_by_kid).await {
                    Ok(Some(wait)) => wait,
                    Ok(None) => {
                        // A step was taken: plan again once the watch has seen its write.
                        let _ = tokio::time::timeout(POLL, changes.changed()).await;
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "signing-key rotation step failed; retrying");
                        POLL
                    }
                };
                tokio::time::sleep(wait).await;
            }
        };
        tokio::select! {
            () = work => {}
            () = stop => {}
        }
    }

    /// One step; how long to wait before the next, `None` for at once.
    async fn step<F, Fut>(
        &self,
        recorder: &EventPublisher,
        tokens_by_kid: &F,
    ) -> Result<Option<Duration>, RotationError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<HashMap<String, usize>>>,
    {
        let Some(mut tokens_left) = tokens_by_kid().await else {
            return Ok(Some(POLL));
        };
        let api = |source| RotationError::Api {
            namespace: self.namespace.clone(),
            source,
        };
        let Some(known) = self.seen.borrow().clone() else {
            return Ok(Some(POLL));
        };
        if self.restore_gone(&known, recorder).await? {
            return Ok(None);
        }
        let listed = known.present;
        // Labelled once there is something to rotate: a plain install writes nothing.
        let rotating = !listed.is_empty() || self.config.every.is_some();
        if rotating
            && !listed.contains_key(&self.base_name)
            && let Some(base) = self.secrets.get_opt(&self.base_name).await.map_err(api)?
            && base.labels().get(KEY_LABEL).is_none()
        {
            // Made before rotation existed: labelled so every replica follows its phases.
            let patch = json!({"metadata": {"labels": {KEY_LABEL: "true"}}});
            self.patch(&self.base_name, &patch).await?;
            return Ok(None);
        }
        let mut keys: Vec<KeyState> = listed
            .values()
            .map(|secret| key_of(secret, &self.base_name))
            .map(|(mut state, _)| {
                if state.base
                    && let Some(base) = self.keys.base()
                {
                    state.kid = base.kid().to_string();
                }
                state
            })
            .collect();
        keys.retain(|key| !key.kid.is_empty());
        let now = jiff::Timestamp::now().as_second();
        // Tokens revoked with a delay (a re-issue's grace period) still verify until then; they
        // matter only while a key drains.
        let records = if phases(&keys, now).contains(&Phase::Draining) {
            self.records
                .list(&ListParams::default())
                .await
                .map_err(api)?
                .items
        } else {
            Vec::new()
        };
        for record in records {
            let spec = &record.spec;
            let alive = parse_time(&spec.expires_at).is_none_or(|exp| exp > now)
                && parse_time(&spec.effective_at).is_none_or(|at| at > now);
            if alive {
                *tokens_left.entry(spec.key_id.clone()).or_default() += 1;
            }
        }
        let metric = &self.keys.metrics().tokens_left;
        metric.clear();
        for key in &keys {
            let left = tokens_left.get(&key.kid).copied().unwrap_or(0);
            metric
                .get_or_create(&KidLabels {
                    kid: key.kid.clone(),
                })
                .set(i64::try_from(left).unwrap_or(i64::MAX));
        }
        let step = next_step(&keys, &tokens_left, &self.config, self.drain, now);
        let kid_of = |name: &str| {
            keys.iter()
                .find(|key| key.name == name)
                .map(|key| key.kid.clone())
                .unwrap_or_default()
        };
        let (name, reason, note) = match step {
            Step::Idle { until } => {
                let wait = until.map_or(POLL, |at| self::until(at).min(POLL));
                return Ok(Some(wait.max(Duration::from_millis(100))));
            }
            Step::Schedule {
                name,
                publish_from,
                active_from,
            } => {
                let patch = json!({"metadata": {"annotations": {
                    PUBLISH_FROM: rfc3339(publish_from),
                    ACTIVE_FROM: rfc3339(active_from),
                }}});
                self.patch(&name, &patch).await?;
                let note = format!(
                    "key {} is published from {} and signs from {}",
                    kid_of(&name),
                    rfc3339(publish_from),
                    rfc3339(active_from)
                );
                (name, "SigningKeyScheduled", note)
            }
            Step::Create {
                publish_from,
                active_from,
            } => {
                let key = LocalKey::generate("(next key)")?.named(None);
                let pem = key.to_pkcs8_pem()?;
                // Within the 253 characters of a name, however long the configured one is.
                let prefix: String = self.base_name.chars().take(230).collect();
                let name = format!("{prefix}-{publish_from}");
                let mut secret = key_secret(&name, pem.as_bytes());
                secret.metadata.annotations = Some(BTreeMap::from([
                    (PUBLISH_FROM.to_string(), rfc3339(publish_from)),
                    (ACTIVE_FROM.to_string(), rfc3339(active_from)),
                ]));
                match self.secrets.create(&PostParams::default(), &secret).await {
                    Ok(_) => {}
                    // Another leader made it a moment ago: the next list shows it.
                    Err(kube::Error::Api(status)) if status.code == 409 => return Ok(None),
                    Err(source) => return Err(api(source)),
                }
                let note = format!(
                    "created key {} (signing.rotation.every): published from {}, signs from {}",
                    key.kid(),
                    rfc3339(publish_from),
                    rfc3339(active_from)
                );
                (name, "SigningKeyCreated", note)
            }
            Step::Note { name, phase } => {
                let patch = json!({"metadata": {"annotations": {PHASE: phase.as_str()}}});
                self.patch(&name, &patch).await?;
                let kid = kid_of(&name);
                let (reason, note) = match phase {
                    Phase::Scheduled => ("SigningKeyScheduled", format!("key {kid} is scheduled")),
                    Phase::Published => (
                        "SigningKeyPublished",
                        format!("key {kid} is in the JWKS; it signs nothing yet"),
                    ),
                    Phase::Active => (
                        "SigningKeyActivated",
                        format!("key {kid} signs new tokens; BootstrapTokens move to it"),
                    ),
                    Phase::Draining => (
                        "SigningKeyDraining",
                        format!(
                            "key {kid} no longer signs; it stays in the JWKS while {} token(s) it signed are alive",
                            tokens_left.get(&kid).copied().unwrap_or(0)
                        ),
                    ),
                    Phase::Retired => {
                        ("SigningKeyRetired", format!("key {kid} is out of the JWKS"))
                    }
                };
                (name, reason, note)
            }
            Step::Retire { name } => {
                let patch = json!({"metadata": {"annotations": {
                    RETIRED_AT: rfc3339(now),
                    PHASE: Phase::Retired.as_str(),
                }}});
                self.patch(&name, &patch).await?;
                let note = format!(
                    "key {} left the JWKS: no unexpired, unrevoked token it signed is left",
                    kid_of(&name)
                );
                (name, "SigningKeyRetired", note)
            }
        };
        tracing::info!(secret = %name, reason, "{note}");
        self.report(recorder, &name, reason, note).await;
        Ok(None)
    }

    /// Puts back a key Secret gone before its key was retired (the configured key's is the key
    /// guard's); whether one was.
    async fn restore_gone(
        &self,
        known: &KeySecrets,
        recorder: &EventPublisher,
    ) -> Result<bool, RotationError> {
        let gone = {
            let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
            // Shown again: should it go again, it is put back again.
            taken.retain(|name| !known.present.contains_key(name));
            known
                .gone
                .iter()
                .find(|(name, _)| **name != self.base_name && !taken.contains(*name))
                .map(|(name, secret)| (name.clone(), secret.clone()))
        };
        let Some((name, secret)) = gone else {
            return Ok(false);
        };
        let restored = keyguard::restore(&self.secrets, &secret, self.keys.metrics(), recorder)
            .await
            .map_err(|source| RotationError::Api {
                namespace: self.namespace.clone(),
                source,
            })?;
        if !restored {
            tracing::info!(secret = %name,
                "a Secret of that name exists again (another replica restored it, or it lacks the signing-key label and is left untouched); its key stays in memory");
            self.taken
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name);
        }
        Ok(restored)
    }

    /// A merge patch of our own key Secret's metadata.
    async fn patch(&self, name: &str, patch: &serde_json::Value) -> Result<(), RotationError> {
        self.secrets
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(drop)
            .map_err(|source| RotationError::Api {
                namespace: self.namespace.clone(),
                source,
            })
    }

    async fn report(&self, recorder: &EventPublisher, name: &str, reason: &str, note: String) {
        let event = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note),
            action: "Rotate".into(),
            secondary: None,
        };
        recorder
            .publish_on_secret(&event, &self.namespace, name)
            .await;
    }
}

/// From now until `at` (Unix seconds), zero when past.
fn until(at: i64) -> Duration {
    let now = jiff::Timestamp::now().as_millisecond();
    Duration::from_millis(u64::try_from(at.saturating_mul(1000).saturating_sub(now)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    static PEM: LazyLock<String> =
        LazyLock::new(|| LocalKey::generate("k").unwrap().to_pkcs8_pem().unwrap());

    /// A key Secret named `name`, its key readable or not, retired at `retired_at` if set.
    fn key(name: &str, readable: bool, retired_at: Option<i64>) -> Secret {
        let pem = if readable {
            PEM.as_bytes()
        } else {
            b"not a key"
        };
        let mut secret = key_secret(name, pem);
        if let Some(at) = retired_at {
            secret
                .annotations_mut()
                .insert(RETIRED_AT.into(), rfc3339(at));
        }
        secret
    }

    #[test]
    fn which_key_secrets_are_kept_when_gone() {
        #[rustfmt::skip]
        let cases = [
            ("a rotated key", key("next", true, None), true),
            ("a rotated key retired later", key("next", true, Some(NOW + 1)), true),
            ("a retired rotated key may go", key("next", true, Some(NOW)), false),
            ("no key to keep", key("next", false, None), false),
            ("the configured key", key("base", true, None), true),
            ("the configured key, retired: its guard puts it back", key("base", true, Some(NOW - 1)), true),
        ];
        for (name, secret, want) in cases {
            assert_eq!(kept_when_gone(&secret, "base", NOW), want, "{name}");
        }
    }

    /// What the watch shows, and what is kept of what it no longer shows, as events come.
    #[test]
    fn gone_key_secrets_are_kept_until_they_are_back() {
        let keep = |secret: &Secret| kept_when_gone(secret, "base", NOW);
        let names = |map: &BTreeMap<String, Secret>| map.keys().cloned().collect::<Vec<_>>();
        let listing = |secrets: &[Secret]| {
            secrets
                .iter()
                .map(|s| (s.name_any(), s.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let mut known = KeySecrets::default();
        let (base, next, old) = (
            key("base", true, None),
            key("next", true, None),
            key("old", true, Some(NOW - 1)),
        );
        known.listed(listing(&[base.clone(), next.clone(), old.clone()]), keep);
        assert_eq!(names(&known.present), ["base", "next", "old"]);
        assert!(known.gone.is_empty());

        known.deleted(next.clone(), keep);
        known.deleted(old.clone(), keep);
        assert_eq!(names(&known.present), ["base"]);
        assert_eq!(names(&known.gone), ["next"], "a retired key may go");
        assert_eq!(known.all().count(), 2, "the gone key still verifies");

        known.applied(next.clone());
        assert_eq!(names(&known.present), ["base", "next"]);
        assert!(known.gone.is_empty(), "restored");

        // Deleted during a watch gap: the relisting shows only its absence.
        known.listed(listing(std::slice::from_ref(&next)), keep);
        assert_eq!(names(&known.present), ["next"]);
        assert_eq!(names(&known.gone), ["base"]);
        known.listed(listing(&[base, next]), keep);
        assert!(known.gone.is_empty());
    }
}
