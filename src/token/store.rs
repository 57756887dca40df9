//! Signing keys kept in Kubernetes Secrets, so every replica and every restart signs with the
//! same key.

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::kms::{KmsError, KmsSource};
use super::rotation::{self, KEY_LABEL, KeyState};
use super::signing::THUMBPRINT_KID;
use super::{KeyError, KeySet, LocalKey};
use super::{Signer, SigningConfig};
use crate::resource::BootstrapToken;

/// The Secret data key that holds the PEM private key.
pub const KEY_FIELD: &str = "key.pem";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading signing key Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("signing key Secret {namespace}/{name} has no {KEY_FIELD:?} entry")]
    MissingField { namespace: String, name: String },
    #[error("signing key Secret {namespace}/{name}: {source}")]
    Key {
        namespace: String,
        name: String,
        source: KeyError,
    },
    #[error(
        "signing key Secret {namespace}/{name} is gone while {referencing} BootstrapToken(s) hold \
         tokens signed with kid {kid:?}; nothing is signed until it is restored or replaced \
         (README: Security, signing key loss)"
    )]
    KeyLost {
        namespace: String,
        name: String,
        kid: String,
        referencing: usize,
    },
    #[error("listing BootstrapTokens for tokens signed with kid {kid:?}: {source}")]
    ListTokens { kid: String, source: kube::Error },
    #[error(transparent)]
    Kms(#[from] KmsError),
}

/// The keys as loaded, with the configured key's PEM exactly as stored, so its Secret can be
/// put back from memory; `current` is what signs and verifies now, swapped as rotation goes on.
struct Loaded {
    /// The configured key (`signing.keySecret`, or the KMS key): it signs unless a rotated key
    /// has taken over.
    base: Arc<dyn Signer>,
    /// `signing.previousKeys`: always published, never signing.
    previous: Vec<Arc<dyn Signer>>,
    active_pem: Vec<u8>,
    current: std::sync::RwLock<Arc<KeySet>>,
}

impl Loaded {
    fn new(keys: KeySet, active_pem: Vec<u8>) -> Self {
        let base = keys.active().signer().clone();
        let previous = keys.all()[1..]
            .iter()
            .map(|key| key.signer().clone())
            .collect();
        Loaded {
            base,
            previous,
            active_pem,
            current: std::sync::RwLock::new(Arc::new(keys)),
        }
    }

    fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Loads the active key and every previous key that still exists (a missing previous key
/// verifies nothing, so it is skipped with a warning). The active key is created once when its
/// Secret does not exist — unless a BootstrapToken in `watched` (all namespaces when empty) holds
/// a token signed under its kid: a new key under the same kid would silently invalidate them
/// all, so that is [`StoreError::KeyLost`] until an administrator restores or replaces the key.
async fn load_or_create(
    client: Client,
    namespace: &str,
    signing: &SigningConfig,
    watched: &[String],
) -> Result<Loaded, StoreError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut previous = Vec::new();
    for old in &signing.previous_keys {
        match read(&secrets, namespace, &old.key_secret, old.kid.as_deref()).await? {
            Some((key, _)) => previous.push(key),
            None => tracing::warn!(
                secret = %old.key_secret, kid = ?old.kid,
                "previous signing key Secret not found; tokens it signed no longer verify"
            ),
        }
    }
    let kid = signing.kid.as_deref();
    let active = match read(&secrets, namespace, &signing.key_secret, kid).await? {
        Some((key, pem)) => {
            if kid.is_none()
                && let Some(alias) =
                    legacy_alias(&client, watched, &pem, namespace, &signing.key_secret).await?
            {
                previous.push(alias);
            }
            (key, pem)
        }
        None => {
            // A thumbprint kid is unknown until the key exists: then every token signed by a key
            // that is not a previous one was signed by the lost key.
            let rotated = rotated_kids(&secrets, namespace).await?;
            let lost = |held: &str| match kid {
                Some(kid) => held == kid,
                None => {
                    !previous.iter().any(|key| key.kid() == held)
                        && !rotated.iter().any(|other| other == held)
                }
            };
            let referencing =
                tokens_signed_with(&client, watched, lost, signing.kid_label()).await?;
            if referencing > 0 {
                return Err(StoreError::KeyLost {
                    namespace: namespace.into(),
                    name: signing.key_secret.clone(),
                    kid: signing.kid_label().into(),
                    referencing,
                });
            }
            create(&secrets, namespace, &signing.key_secret, kid).await?
        }
    };
    let (active, active_pem) = active;
    Ok(Loaded::new(KeySet::new(active, previous), active_pem))
}

/// The kid every key had before the default became the key's thumbprint.
const LEGACY_KID: &str = "100";

/// An existing key that signed under the old default kid, while BootstrapTokens still hold tokens
/// with it: the same key, published and accepted under [`LEGACY_KID`] too, so upgrading without
/// `signing.kid: "100"` breaks no token; those tokens then move to the thumbprint kid at the
/// paced re-issue rate (`KeyRotated`), not all at once.
async fn legacy_alias(
    client: &Client,
    watched: &[String],
    pem: &[u8],
    namespace: &str,
    name: &str,
) -> Result<Option<LocalKey>, StoreError> {
    if tokens_signed_with(client, watched, |held| held == LEGACY_KID, LEGACY_KID).await? == 0 {
        return Ok(None);
    }
    LocalKey::from_pem(LEGACY_KID, pem)
        .map(Some)
        .map_err(|source| StoreError::Key {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })
}

/// The kids of the other signing-key Secrets (rotated keys, named by their thumbprints).
async fn rotated_kids(secrets: &Api<Secret>, namespace: &str) -> Result<Vec<String>, StoreError> {
    let list = secrets
        .list(&ListParams::default().labels(KEY_LABEL))
        .await
        .map_err(|source| StoreError::Api {
            namespace: namespace.into(),
            name: format!("(Secrets labelled {KEY_LABEL})"),
            source,
        })?;
    Ok(list
        .items
        .iter()
        .filter_map(|secret| {
            let pem = secret.data.as_ref()?.get(KEY_FIELD)?;
            let key = LocalKey::from_pem(THUMBPRINT_KID, &pem.0).ok()?;
            Some(key.named(None).kid().to_string())
        })
        .collect())
}

/// How many BootstrapTokens in `watched` (all namespaces when empty) say their token was signed
/// with a kid `lost` matches; `kid` names them in messages.
async fn tokens_signed_with(
    client: &Client,
    watched: &[String],
    lost: impl Fn(&str) -> bool,
    kid: &str,
) -> Result<usize, StoreError> {
    let apis: Vec<Api<BootstrapToken>> = if watched.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        watched
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let mut count = 0;
    for api in apis {
        // Paged: this runs once at startup, on clusters with thousands of objects.
        let mut params = ListParams::default().limit(500);
        loop {
            let page = api
                .list(&params)
                .await
                .map_err(|source| StoreError::ListTokens {
                    kid: kid.into(),
                    source,
                })?;
            count += page
                .items
                .iter()
                .filter(|bt| {
                    bt.status
                        .as_ref()
                        .and_then(|status| status.key_id.as_deref())
                        .is_some_and(&lost)
                })
                .count();
            match page.metadata.continue_.filter(|token| !token.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    Ok(count)
}

async fn read(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    kid: Option<&str>,
) -> Result<Option<(LocalKey, Vec<u8>)>, StoreError> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|source| StoreError::Api {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
    let Some(secret) = secret else {
        return Ok(None);
    };
    let pem = secret
        .data
        .as_ref()
        .and_then(|data| data.get(KEY_FIELD))
        .ok_or_else(|| StoreError::MissingField {
            namespace: namespace.into(),
            name: name.into(),
        })?;
    LocalKey::from_pem(kid.unwrap_or(THUMBPRINT_KID), &pem.0)
        .map(|key| Some((key.named(kid), pem.0.clone())))
        .map_err(|source| StoreError::Key {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })
}

/// Create-only: when two replicas race, the API server accepts one Secret and the loser reads it.
async fn create(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    kid: Option<&str>,
) -> Result<(LocalKey, Vec<u8>), StoreError> {
    let key_error = |source| StoreError::Key {
        namespace: namespace.into(),
        name: name.into(),
        source,
    };
    let generated = LocalKey::generate(kid.unwrap_or(THUMBPRINT_KID))
        .map_err(key_error)?
        .named(kid);
    let pem = generated.to_pkcs8_pem().map_err(key_error)?.into_bytes();
    match secrets
        .create(&PostParams::default(), &key_secret(name, &pem))
        .await
    {
        Ok(_) => {
            tracing::info!(secret = %name, kid = %generated.kid(), "created signing key Secret");
            Ok((generated, pem))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => read(secrets, namespace, name, kid)
            .await?
            .ok_or_else(|| StoreError::MissingField {
                namespace: namespace.into(),
                name: name.into(),
            }),
        Err(source) => Err(StoreError::Api {
            namespace: namespace.into(),
            name: name.into(),
            source,
        }),
    }
}

/// The key Secret as the operator creates it: labelled as ours, the PEM under [`KEY_FIELD`].
pub fn key_secret(name: &str, pem: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                [
                    (
                        crate::resource::MANAGED_BY_LABEL.to_string(),
                        crate::resource::MANAGER.to_string(),
                    ),
                    (KEY_LABEL.to_string(), "true".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some([(KEY_FIELD.to_string(), ByteString(pem.to_vec()))].into()),
        ..Default::default()
    }
}

/// Loads the keys on first use and keeps them; a failed load is retried on the next call, so the
/// operator starts (and reports `KeyUnavailable`) even when the key Secret cannot be read or the
/// KMS cannot be reached yet.
pub struct KeyProvider {
    source: Source,
    keys: tokio::sync::OnceCell<Loaded>,
    metrics: KeyMetrics,
    /// When the key was last found lost, and by how many BootstrapTokens: for a few seconds every
    /// caller hears the same rather than list every BootstrapToken again (each failing reconcile
    /// asks).
    lost: std::sync::Mutex<Option<(std::time::Instant, usize)>>,
    /// Told when the keys load after a failed attempt, so what failed for want of them is
    /// retried at once rather than after its back-off.
    recovered: tokio::sync::watch::Sender<()>,
    /// True once the rotation state is in place (at once for keys not in Secrets).
    installed: tokio::sync::watch::Sender<bool>,
}

/// Where the keys live.
enum Source {
    /// Secrets in the operator's namespace.
    Secret(Box<SecretSource>),
    /// A KMS key (`signing.kms`): no Secret is read or created.
    Kms(KmsSource),
    /// Handed over ready-made.
    Ready(KeySet),
}

struct SecretSource {
    client: Client,
    namespace: String,
    signing: SigningConfig,
    /// Where BootstrapTokens holding tokens signed with these keys may be; all when empty.
    watched: Vec<String>,
}

/// How long a lost key is reported from memory before the Secret and the BootstrapTokens are
/// looked at again.
const LOST_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The active key's Secret, for [`crate::keyguard`].
pub struct KeySecret<'a> {
    pub client: &'a Client,
    pub namespace: &'a str,
    pub name: &'a str,
    pub kid: &'a str,
}

/// What `/metrics` says about the signing key.
#[derive(Default)]
pub struct KeyMetrics {
    /// 1 while the signing keys cannot be loaded (the key Secret is lost, unreadable or invalid).
    pub unavailable: Gauge,
    /// 1 while the key Secret holds another key than the one the operator signs with.
    pub mismatch: Gauge,
    /// Times a key Secret was put back from memory after it was deleted.
    pub restored: Counter,
    /// 1 for each signing key's current phase.
    pub phase: Family<KeyPhaseLabels, Gauge>,
    /// Unexpired, unrevoked tokens each key signed, as the leader last counted them.
    pub tokens_left: Family<KidLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyPhaseLabels {
    pub kid: String,
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KidLabels {
    pub kid: String,
}

impl KeyProvider {
    /// The keys `signing` names: in a KMS when `signing.kms` is set, else in Secrets in
    /// `namespace` (BootstrapTokens are looked for in every namespace; see [`Self::watching`]).
    pub fn new(client: Client, namespace: &str, signing: SigningConfig) -> Self {
        match &signing.kms {
            Some(kms) => Self::from_kms(KmsSource::new(signing.kid.as_deref(), kms.clone())),
            None => Self::with_source(Source::Secret(Box::new(SecretSource {
                client,
                namespace: namespace.to_string(),
                signing,
                watched: Vec::new(),
            }))),
        }
    }

    /// The key in a KMS.
    pub fn from_kms(source: KmsSource) -> Self {
        Self::with_source(Source::Kms(source))
    }

    /// Keys already in memory (benchmarks, tests of the HTTP endpoint alone).
    pub fn from_keys(keys: KeySet) -> Self {
        let provider = Self::with_source(Source::Ready(keys.clone()));
        let _ = provider.keys.set(Loaded::new(keys, Vec::new()));
        provider
    }

    fn with_source(source: Source) -> Self {
        let installed = !matches!(source, Source::Secret(_));
        KeyProvider {
            installed: tokio::sync::watch::Sender::new(installed),
            source,
            keys: tokio::sync::OnceCell::new(),
            metrics: KeyMetrics::default(),
            lost: std::sync::Mutex::default(),
            recovered: tokio::sync::watch::Sender::new(()),
        }
    }

    /// Looks for BootstrapTokens signed with the active key only in `namespaces` (the ones the
    /// operator watches, and may list).
    pub fn watching(mut self, namespaces: &[String]) -> Self {
        if let Source::Secret(source) = &mut self.source {
            source.watched = namespaces.to_vec();
        }
        self
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "bootstrap_token_signing_key_unavailable",
            "1 while the signing keys cannot be loaded; nothing is signed meanwhile",
            self.metrics.unavailable.clone(),
        );
        registry.register(
            "bootstrap_token_signing_key_mismatch",
            "1 while the signing key Secret holds another key than the one in use",
            self.metrics.mismatch.clone(),
        );
        registry.register(
            "bootstrap_token_signing_key_phase",
            "1 for each signing key's phase (scheduled, published, active, draining, retired)",
            self.metrics.phase.clone(),
        );
        registry.register(
            "bootstrap_token_signing_key_tokens_left",
            "Unexpired, unrevoked tokens each signing key signed, as the leader last counted",
            self.metrics.tokens_left.clone(),
        );
        registry.register(
            "bootstrap_token_signing_key_restored",
            "Times a deleted signing-key Secret was restored from memory",
            self.metrics.restored.clone(),
        );
    }

    pub fn metrics(&self) -> &KeyMetrics {
        &self.metrics
    }

    /// The keys that sign and verify now (loaded on first use). Keys from Secrets are handed out
    /// only once [`Self::install`] has put the rotation state in place: until then the configured
    /// key might sign although a rotated key has replaced it.
    pub async fn get(&self) -> Result<Arc<KeySet>, StoreError> {
        let keys = self.load().await?;
        if *self.installed.borrow() {
            return Ok(keys);
        }
        let mut installed = self.installed.subscribe();
        // The sender lives as long as `self`: this cannot fail while we are borrowed.
        let _ = installed.wait_for(|done| *done).await;
        Ok(self.keys.get().map_or(keys, Loaded::current))
    }

    /// The keys as loaded, before or after [`Self::install`].
    pub async fn load(&self) -> Result<Arc<KeySet>, StoreError> {
        self.keys
            .get_or_try_init(|| async {
                let source = match &self.source {
                    Source::Secret(source) => source,
                    Source::Kms(kms) => {
                        let loaded = kms.load().await.map(|keys| Loaded::new(keys, Vec::new()));
                        self.note_load(loaded.is_ok());
                        return Ok(loaded?);
                    }
                    Source::Ready(keys) => {
                        return Ok(Loaded::new(keys.clone(), Vec::new()));
                    }
                };
                // Callers queue here while one loads: those after a KeyLost hear it from memory.
                let recently_lost = *self.lost.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((when, referencing)) = recently_lost
                    && when.elapsed() < LOST_RECHECK
                {
                    return Err(StoreError::KeyLost {
                        namespace: source.namespace.clone(),
                        name: source.signing.key_secret.clone(),
                        kid: source.signing.kid_label().into(),
                        referencing,
                    });
                }
                let loaded = load_or_create(
                    source.client.clone(),
                    &source.namespace,
                    &source.signing,
                    &source.watched,
                )
                .await;
                *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = match &loaded {
                    Err(StoreError::KeyLost { referencing, .. }) => {
                        Some((std::time::Instant::now(), *referencing))
                    }
                    _ => None,
                };
                self.note_load(loaded.is_ok());
                loaded
            })
            .await
            .map(Loaded::current)
    }

    /// Keeps the unavailable gauge, and tells [`Self::recovered`] when a load succeeds after one
    /// failed.
    fn note_load(&self, ok: bool) {
        let was_unavailable = self.metrics.unavailable.set(i64::from(!ok));
        if ok && was_unavailable == 1 {
            self.recovered.send_replace(());
        }
    }

    /// The configured key, once loaded, without touching the API server.
    pub fn base(&self) -> Option<&Arc<dyn Signer>> {
        self.keys.get().map(|loaded| &loaded.base)
    }

    /// Puts the keys `rotated` describes in place (every replica, as the key Secrets change):
    /// the active key at `now` signs; published, active and draining keys and the previous keys
    /// verify and are in the JWKS. The configured key's phase comes from its entry in `rotated`
    /// (its signer there is ignored: the loaded one stays) or, absent, it has signed since it
    /// exists. Returns when the phases change next by the clock alone; does nothing before the
    /// keys are loaded.
    pub fn install(
        &self,
        rotated: Vec<(KeyState, Option<Arc<dyn Signer>>)>,
        now: i64,
    ) -> Option<i64> {
        let loaded = self.keys.get()?;
        let mut states = Vec::with_capacity(rotated.len() + 1);
        let mut signers = Vec::with_capacity(rotated.len() + 1);
        if !rotated.iter().any(|(state, _)| state.base) {
            states.push(KeyState {
                name: String::new(),
                kid: loaded.base.kid().to_string(),
                created: 0,
                publish_from: None,
                active_from: None,
                retired_at: None,
                noted: None,
                base: true,
            });
            signers.push(loaded.base.clone());
        }
        for (mut state, signer) in rotated {
            let signer = match (state.base, signer) {
                (true, _) => {
                    state.kid = loaded.base.kid().to_string();
                    loaded.base.clone()
                }
                (false, Some(signer)) => signer,
                // Unreadable: reported where it was read, left out here.
                (false, None) => continue,
            };
            signers.push(signer);
            states.push(state);
        }
        let phases = rotation::phases(&states, now);
        let active = rotation::active_key(&states, now)
            .map_or_else(|| loaded.base.clone(), |i| signers[i].clone());
        let mut verifying: Vec<Arc<dyn Signer>> = signers
            .iter()
            .zip(&phases)
            .filter(|(_, phase)| phase.published())
            .map(|(signer, _)| signer.clone())
            .collect();
        verifying.extend(loaded.previous.iter().cloned());
        let upcoming = states
            .iter()
            .zip(&phases)
            .filter(|(_, phase)| **phase == rotation::Phase::Published)
            .map(|(state, _)| state.kid.clone())
            .collect();
        let next = KeySet::from_signers(active, verifying).with_upcoming(upcoming);
        let kids = |keys: &KeySet| -> Vec<String> {
            keys.all().iter().map(|key| key.kid().to_string()).collect()
        };
        let previous = loaded.current();
        if kids(&previous) != kids(&next) {
            let switched = previous.active().kid() != next.active().kid();
            tracing::info!(active = %next.active().kid(), published = ?kids(&next), "signing keys changed");
            *loaded.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
            if switched {
                // Every BootstrapToken is looked at again: those under another kid move over.
                self.recovered.send_replace(());
            }
        }
        self.metrics.phase.clear();
        for (state, phase) in states.iter().zip(&phases) {
            self.metrics
                .phase
                .get_or_create(&KeyPhaseLabels {
                    kid: state.kid.clone(),
                    phase: phase.as_str(),
                })
                .set(1);
        }
        self.installed.send_replace(true);
        rotation::next_change(&states, now)
    }

    /// One item each time the keys load after failing to, or the active key changes (from now
    /// on).
    pub fn recovered(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.recovered.subscribe(), |mut changes| async move {
            changes.changed().await.ok()?;
            Some(((), changes))
        })
    }

    /// The active key's Secret, when the keys come from Secrets.
    pub fn key_secret(&self) -> Option<KeySecret<'_>> {
        match &self.source {
            Source::Secret(source) => Some(KeySecret {
                client: &source.client,
                namespace: &source.namespace,
                name: &source.signing.key_secret,
                kid: source.signing.kid_label(),
            }),
            Source::Kms(_) | Source::Ready(_) => None,
        }
    }

    /// The active key's PEM as it was read or created, once loaded from a Secret.
    pub fn active_pem(&self) -> Option<&[u8]> {
        self.keys
            .get()
            .map(|loaded| loaded.active_pem.as_slice())
            .filter(|pem| !pem.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn rotated(name: &str, kid: &str, publish: i64, active: i64) -> KeyState {
        KeyState {
            name: name.into(),
            kid: kid.into(),
            created: publish,
            publish_from: Some(publish),
            active_from: Some(active),
            retired_at: None,
            noted: None,
            base: false,
        }
    }

    fn kids(keys: &KeySet) -> Vec<&str> {
        keys.all().iter().map(|key| key.kid()).collect()
    }

    /// The key set is swapped at run time as the key Secrets say: published first, signing at
    /// its active time (and every BootstrapToken is looked at again then), the configured key
    /// out once retired; the previous keys stay.
    #[tokio::test]
    async fn install_swaps_the_key_set_by_phase() {
        let provider = KeyProvider::from_keys(KeySet::new(
            LocalKey::generate("base").unwrap(),
            vec![LocalKey::generate("old").unwrap()],
        ));
        let mut switched = provider.recovered().boxed();
        let next: Arc<dyn Signer> = Arc::new(LocalKey::generate("next").unwrap());
        let base = |retired_at| KeyState {
            retired_at,
            base: true,
            ..rotated("base-secret", "ignored", 0, 0)
        };
        let install = |retired_at, now| {
            provider.install(
                vec![
                    (base(retired_at), None),
                    (rotated("next-secret", "next", 100, 110), Some(next.clone())),
                ],
                now,
            )
        };

        assert_eq!(install(None, 99), Some(100), "wakes at the publish time");
        let keys = provider.get().await.unwrap();
        assert_eq!(kids(&keys), ["base", "old"], "scheduled: not published");

        assert_eq!(install(None, 100), Some(110));
        let keys = provider.get().await.unwrap();
        assert_eq!(
            kids(&keys),
            ["base", "next", "old"],
            "published, not signing"
        );
        assert!(keys.is_upcoming("next") && !keys.is_upcoming("base"));
        assert!(
            futures::poll!(switched.next()).is_pending(),
            "nothing to re-issue yet"
        );

        assert_eq!(install(None, 110), None);
        let keys = provider.get().await.unwrap();
        assert_eq!(kids(&keys), ["next", "base", "old"], "the new key signs");
        assert!(!keys.is_upcoming("next"));
        assert!(
            futures::poll!(switched.next()).is_ready(),
            "the switch makes every BootstrapToken be looked at again"
        );

        install(Some(120), 120);
        let keys = provider.get().await.unwrap();
        assert_eq!(kids(&keys), ["next", "old"], "the retired key is out");
        assert_eq!(
            provider.base().map(|key| key.kid()),
            Some("base"),
            "the configured key is still known to the key guard"
        );
        let phase = |kid: &str, phase| {
            provider
                .metrics()
                .phase
                .get_or_create(&KeyPhaseLabels {
                    kid: kid.into(),
                    phase,
                })
                .get()
        };
        assert_eq!(phase("next", "active"), 1);
        assert_eq!(phase("base", "retired"), 1);
        assert_eq!(phase("base", "active"), 0, "old phases are cleared");
    }
}
