//! Signing keys kept in Kubernetes Secrets, so every replica and every restart signs with the
//! same key.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use super::kms::{KmsError, KmsSource};
use super::{KeyError, KeySet, LocalKey};
use crate::config::SigningConfig;

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
    #[error(transparent)]
    Kms(#[from] KmsError),
}

/// Loads the active key, creating it once when its Secret does not exist, and every previous key
/// that still exists (a missing previous key verifies nothing, so it is skipped with a warning).
pub async fn load_or_create(
    client: Client,
    namespace: &str,
    signing: &SigningConfig,
) -> Result<KeySet, StoreError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let active = match read(&secrets, namespace, &signing.key_secret, &signing.kid).await? {
        Some(key) => key,
        None => create(&secrets, namespace, &signing.key_secret, &signing.kid).await?,
    };
    let mut previous = Vec::new();
    for old in &signing.previous_keys {
        match read(&secrets, namespace, &old.key_secret, &old.kid).await? {
            Some(key) => previous.push(key),
            None => tracing::warn!(
                secret = %old.key_secret, kid = %old.kid,
                "previous signing key Secret not found; tokens it signed no longer verify"
            ),
        }
    }
    Ok(KeySet::new(active, previous))
}

async fn read(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    kid: &str,
) -> Result<Option<LocalKey>, StoreError> {
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
    LocalKey::from_pem(kid, &pem.0)
        .map(Some)
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
    kid: &str,
) -> Result<LocalKey, StoreError> {
    let key_error = |source| StoreError::Key {
        namespace: namespace.into(),
        name: name.into(),
        source,
    };
    let generated = LocalKey::generate(kid).map_err(key_error)?;
    let pem = generated.to_pkcs8_pem().map_err(key_error)?;
    let secret = Secret {
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
        data: Some([(KEY_FIELD.to_string(), ByteString(pem.into_bytes()))].into()),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %name, kid, "created signing key Secret");
            Ok(generated)
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

/// Loads the keys on first use and keeps them; a failed load is retried on the next call, so the
/// operator starts (and reports `KeyUnavailable`) even when the key Secret cannot be read or the
/// KMS cannot be reached yet.
pub struct KeyProvider {
    source: Source,
    keys: tokio::sync::OnceCell<KeySet>,
}

/// Where the keys live.
enum Source {
    /// Secrets in the operator's namespace.
    Secret(Client, String, SigningConfig),
    /// A KMS key (`signing.kms`): no Secret is read or created.
    Kms(KmsSource),
    /// Handed over ready-made.
    Ready(KeySet),
}

impl KeyProvider {
    /// The keys `signing` names: in a KMS when `signing.kms` is set, else in Secrets.
    pub fn new(client: Client, namespace: &str, signing: SigningConfig) -> Self {
        match &signing.kms {
            Some(kms) => Self::from_kms(KmsSource::new(&signing.kid, kms.clone())),
            None => KeyProvider {
                source: Source::Secret(client, namespace.to_string(), signing),
                keys: tokio::sync::OnceCell::new(),
            },
        }
    }

    /// The key in a KMS.
    pub fn from_kms(source: KmsSource) -> Self {
        KeyProvider {
            source: Source::Kms(source),
            keys: tokio::sync::OnceCell::new(),
        }
    }

    /// Keys already in memory (benchmarks, tests of the HTTP endpoint alone).
    pub fn from_keys(keys: KeySet) -> Self {
        KeyProvider {
            keys: tokio::sync::OnceCell::new_with(Some(keys.clone())),
            source: Source::Ready(keys),
        }
    }

    pub async fn get(&self) -> Result<&KeySet, StoreError> {
        self.keys
            .get_or_try_init(|| async {
                match &self.source {
                    Source::Secret(client, namespace, signing) => {
                        load_or_create(client.clone(), namespace, signing).await
                    }
                    Source::Kms(kms) => Ok(kms.load().await?),
                    Source::Ready(keys) => Ok(keys.clone()),
                }
            })
            .await
    }

    /// The keys if they are loaded already, without touching the API server.
    pub fn loaded(&self) -> Option<&KeySet> {
        self.keys.get()
    }
}
