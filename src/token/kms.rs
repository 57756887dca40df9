//! The signing key kept in a KMS that speaks the AWS KMS API (AWS KMS itself, or a compatible
//! server): the private key never exists in this process. `GetPublicKey` once when the keys are
//! loaded, then one `Sign` call (`RSASSA_PKCS1_V1_5_SHA_256`) per signature.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rsa::{PublicKey, PublicKeyComponents};
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Region, SharedCredentialsProvider};
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};
use futures::future::BoxFuture;

use super::KeySet;
use super::KmsConfig;
use super::signer::{RsaPublicKey, SignError, Signer};

/// The largest message KMS signs as `RAW`; a longer signing input is hashed here and sent as
/// its SHA-256 `DIGEST`, which gives the same signature.
const RAW_MESSAGE_LIMIT: usize = 4096;

/// Every KMS call, retries included, ends within these bounds: a KMS outage turns into a
/// `SignError` (HTTP 503, `Ready=False`) quickly instead of holding requests.
fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(1))
        .operation_attempt_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(5))
        .build()
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KmsError {
    /// The KMS did not answer, refused the credentials, or does not know the key: retried.
    #[error("KMS key {key_id:?}: GetPublicKey failed: {reason}")]
    Unavailable { key_id: String, reason: String },
    /// The key exists but cannot make RS256 signatures; a configuration error.
    #[error("KMS key {key_id:?} cannot sign RS256: {reason}")]
    Unsuitable { key_id: String, reason: String },
}

/// Where the active key lives and how to reach it; [`KmsSource::load`] makes the key set.
#[derive(Clone)]
pub struct KmsSource {
    kid: Option<String>,
    config: KmsConfig,
    /// `None`: the standard AWS chain (environment, web identity/IRSA, profile, instance role).
    credentials: Option<SharedCredentialsProvider>,
}

impl std::fmt::Debug for KmsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsSource")
            .field("kid", &self.kid)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KmsSource {
    /// The key `config` names, signing under `kid` (its RFC 7638 thumbprint when `None`), with
    /// credentials from the standard chain.
    pub fn new(kid: Option<&str>, config: KmsConfig) -> Self {
        KmsSource {
            kid: kid.map(str::to_string),
            config,
            credentials: None,
        }
    }

    /// Credentials given explicitly instead of the standard chain.
    pub fn with_credentials(mut self, credentials: SharedCredentialsProvider) -> Self {
        self.credentials = Some(credentials);
        self
    }

    pub async fn connect(&self) -> Result<KmsKey, KmsError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.config.region.clone()))
            .timeout_config(timeouts());
        if let Some(endpoint) = &self.config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = &self.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        let client = aws_sdk_kms::Client::new(&loader.load().await);
        KmsKey::load(self.kid.as_deref(), &self.config.key_id, client).await
    }

    /// The key set of this one key.
    pub async fn load(&self) -> Result<KeySet, KmsError> {
        let key = self.connect().await?;
        Ok(KeySet::from_signers(Arc::new(key), Vec::new()))
    }
}

/// An RSA key in a KMS, checked at load to be able to sign RS256.
pub struct KmsKey {
    kid: String,
    key_id: String,
    public: RsaPublicKey,
    modulus_len: usize,
    client: aws_sdk_kms::Client,
}

impl std::fmt::Debug for KmsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsKey")
            .field("kid", &self.kid)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl KmsKey {
    /// `GetPublicKey`, and checks that the key is RSA, for signing, with RS256's algorithm.
    pub async fn load(
        kid: Option<&str>,
        key_id: &str,
        client: aws_sdk_kms::Client,
    ) -> Result<Self, KmsError> {
        let unsuitable = |reason: String| KmsError::Unsuitable {
            key_id: key_id.to_string(),
            reason,
        };
        let output = client
            .get_public_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|error| KmsError::Unavailable {
                key_id: key_id.to_string(),
                reason: reason(&error),
            })?;
        match output.key_spec() {
            Some(KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096) => {}
            other => {
                return Err(unsuitable(format!(
                    "its key spec is {}, not RSA_2048, RSA_3072 or RSA_4096",
                    other.map_or("unknown", KeySpec::as_str)
                )));
            }
        }
        if output.key_usage() != Some(&KeyUsageType::SignVerify) {
            return Err(unsuitable(format!(
                "its key usage is {}, not SIGN_VERIFY",
                output.key_usage().map_or("unknown", KeyUsageType::as_str)
            )));
        }
        let algorithm = SigningAlgorithmSpec::RsassaPkcs1V15Sha256;
        if !output.signing_algorithms().contains(&algorithm) {
            return Err(unsuitable(format!(
                "its signing algorithms {:?} do not include {}",
                output
                    .signing_algorithms()
                    .iter()
                    .map(SigningAlgorithmSpec::as_str)
                    .collect::<Vec<_>>(),
                algorithm.as_str()
            )));
        }
        let spki = output
            .public_key()
            .ok_or_else(|| unsuitable("GetPublicKey returned no public key".into()))?;
        let public = PublicKey::from_der(spki.as_ref())
            .map_err(|_| unsuitable("its public key is not an RSA SubjectPublicKeyInfo".into()))?;
        let components = PublicKeyComponents::<Vec<u8>>::from(&public);
        let modulus_len = components.n.iter().skip_while(|&&b| b == 0).count();
        let public = RsaPublicKey {
            n: components.n,
            e: components.e,
        };
        let kid = kid.map_or_else(|| public.thumbprint(), str::to_string);
        tracing::info!(
            %kid,
            key_id,
            bits = modulus_len * 8,
            "loaded the KMS signing key"
        );
        Ok(KmsKey {
            kid,
            key_id: key_id.to_string(),
            public,
            modulus_len,
            client,
        })
    }

    async fn sign_remote(&self, signing_input: &[u8]) -> Result<Vec<u8>, SignError> {
        let failed = |reason: String| SignError {
            kid: self.kid.clone(),
            reason,
        };
        let (message, message_type) = if signing_input.len() <= RAW_MESSAGE_LIMIT {
            (signing_input.to_vec(), MessageType::Raw)
        } else {
            let hash = digest(&SHA256, signing_input);
            (hash.as_ref().to_vec(), MessageType::Digest)
        };
        let output = self
            .client
            .sign()
            .key_id(&self.key_id)
            .message(Blob::new(message))
            .message_type(message_type)
            .signing_algorithm(SigningAlgorithmSpec::RsassaPkcs1V15Sha256)
            .send()
            .await
            .map_err(|error| failed(format!("KMS Sign: {}", reason(&error))))?;
        let signature = output
            .signature
            .map(Blob::into_inner)
            .ok_or_else(|| failed("KMS Sign returned no signature".into()))?;
        if signature.len() != self.modulus_len {
            return Err(failed(format!(
                "KMS Sign returned {} bytes, not the {} of the key's modulus",
                signature.len(),
                self.modulus_len
            )));
        }
        Ok(signature)
    }
}

impl Signer for KmsKey {
    fn kid(&self) -> &str {
        &self.kid
    }

    fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SignError>> {
        Box::pin(self.sign_remote(signing_input))
    }
}

/// A short reason for a failed call: the service's error code and message, or what went wrong
/// on the way (timeout, connection refused). Requests and responses carry no key material.
fn reason<E, R>(error: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error {
        SdkError::ServiceError(service) => {
            let service = service.err();
            match (service.code(), service.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_string(),
                _ => DisplayErrorContext(error).to_string(),
            }
        }
        SdkError::TimeoutError(_) => "the KMS did not answer in time".into(),
        _ => DisplayErrorContext(error).to_string(),
    }
}
