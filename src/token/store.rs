//! Signing keys kept in Kubernetes Secrets, so every replica and every restart signs with the
//! same key.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::kms::{KmsError, KmsSource};
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

/// The keys as loaded, with the active key's PEM exactly as stored, so its Secret can be put
/// back from memory.
struct Loaded {
    keys: KeySet,
    active_pem: Vec<u8>,
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
        Some(key) => key,
        None => {
            // A thumbprint kid is unknown until the key exists: then every token signed by a key
            // that is not a previous one was signed by the lost key.
            let lost = |held: &str| match kid {
                Some(kid) => held == kid,
                None => !previous.iter().any(|key| key.kid() == held),
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
    Ok(Loaded {
        keys: KeySet::new(active, previous),
        active_pem,
    })
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
                [(
                    crate::resource::MANAGED_BY_LABEL.to_string(),
                    crate::resource::MANAGER.to_string(),
                )]
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
}

/// Where the keys live.
enum Source {
    /// Secrets in the operator's namespace.
    Secret(SecretSource),
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
    /// Times the key Secret was put back from memory after it was deleted.
    pub restored: Counter,
}

impl KeyProvider {
    /// The keys `signing` names: in a KMS when `signing.kms` is set, else in Secrets in
    /// `namespace` (BootstrapTokens are looked for in every namespace; see [`Self::watching`]).
    pub fn new(client: Client, namespace: &str, signing: SigningConfig) -> Self {
        match &signing.kms {
            Some(kms) => Self::from_kms(KmsSource::new(signing.kid.as_deref(), kms.clone())),
            None => Self::with_source(Source::Secret(SecretSource {
                client,
                namespace: namespace.to_string(),
                signing,
                watched: Vec::new(),
            })),
        }
    }

    /// The key in a KMS.
    pub fn from_kms(source: KmsSource) -> Self {
        Self::with_source(Source::Kms(source))
    }

    /// Keys already in memory (benchmarks, tests of the HTTP endpoint alone).
    pub fn from_keys(keys: KeySet) -> Self {
        let provider = Self::with_source(Source::Ready(keys.clone()));
        let _ = provider.keys.set(Loaded {
            keys,
            active_pem: Vec::new(),
        });
        provider
    }

    fn with_source(source: Source) -> Self {
        KeyProvider {
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
            "bootstrap_token_signing_key_restored",
            "Times the deleted signing key Secret was restored from memory",
            self.metrics.restored.clone(),
        );
    }

    pub fn metrics(&self) -> &KeyMetrics {
        &self.metrics
    }

    pub async fn get(&self) -> Result<&KeySet, StoreError> {
        self.keys
            .get_or_try_init(|| async {
                let source = match &self.source {
                    Source::Secret(source) => source,
                    Source::Kms(kms) => {
                        let loaded = kms.load().await.map(|keys| Loaded {
                            keys,
                            active_pem: Vec::new(),
                        });
                        self.note_load(loaded.is_ok());
                        return Ok(loaded?);
                    }
                    Source::Ready(keys) => {
                        return Ok(Loaded {
                            keys: keys.clone(),
                            active_pem: Vec::new(),
                        });
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
            .map(|loaded| &loaded.keys)
    }

    /// Keeps the unavailable gauge, and tells [`Self::recovered`] when a load succeeds after one
    /// failed.
    fn note_load(&self, ok: bool) {
        let was_unavailable = self.metrics.unavailable.set(i64::from(!ok));
        if ok && was_unavailable == 1 {
            self.recovered.send_replace(());
        }
    }

    /// The keys if they are loaded already, without touching the API server.
    pub fn loaded(&self) -> Option<&KeySet> {
        self.keys.get().map(|loaded| &loaded.keys)
    }

    /// One item each time the keys load after failing to (from now on).
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
