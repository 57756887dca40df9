//! A local KMS speaking the AWS KMS API (testenv's [`LocalKms`]), with keys created through the
//! official SDK, and the operator's view of one of them. Shared by the test binaries and the
//! benchmark by `#[path]`.

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use bootstrap_token_operator::config::KmsConfig;
use bootstrap_token_operator::token::kms::KmsSource;
use testenv::LocalKms;

/// local-kms accepts any credentials; the SDK needs some to sign its requests. Given explicitly
/// rather than through the environment, which the tests' threads share.
pub fn credentials() -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(Credentials::new(
        "AKIDLOCALKMSTEST",
        "local-kms-ignores-this-secret",
        None,
        None,
        "tests",
    ))
}

pub struct Kms {
    pub server: LocalKms,
    client: aws_sdk_kms::Client,
}

impl Kms {
    /// A fresh server with no keys.
    pub async fn start() -> Kms {
        let server = LocalKms::start().await.unwrap_or_else(|e| panic!("{e}"));
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(LocalKms::REGION))
            .endpoint_url(server.endpoint())
            .credentials_provider(credentials())
            .build();
        Kms {
            client: aws_sdk_kms::Client::from_conf(config),
            server,
        }
    }

    /// A new key; its id.
    pub async fn create_key(&self, spec: KeySpec, usage: KeyUsageType) -> String {
        let created = self
            .client
            .create_key()
            .key_spec(spec)
            .key_usage(usage)
            .description("bootstrap-token-operator test key")
            .send()
            .await
            .expect("CreateKey");
        created
            .key_metadata()
            .expect("CreateKey returns the key's metadata")
            .key_id()
            .to_string()
    }

    /// An RSA_2048 SIGN_VERIFY key, the kind the operator signs with.
    pub async fn create_signing_key(&self) -> String {
        self.create_key(KeySpec::Rsa2048, KeyUsageType::SignVerify)
            .await
    }

    /// The key's SubjectPublicKeyInfo as the KMS gives it, as PEM.
    pub async fn public_key_pem(&self, key_id: &str) -> String {
        let output = self
            .client
            .get_public_key()
            .key_id(key_id)
            .send()
            .await
            .expect("GetPublicKey");
        let der = output.public_key().expect("a public key").as_ref();
        pem::encode(&pem::Pem::new("PUBLIC KEY", der))
    }

    pub fn config(&self, key_id: &str) -> KmsConfig {
        KmsConfig {
            key_id: key_id.to_string(),
            region: LocalKms::REGION.to_string(),
            endpoint: Some(self.server.endpoint()),
        }
    }

    /// The operator's source for `key_id`, signing as `kid`.
    pub fn source(&self, kid: &str, key_id: &str) -> KmsSource {
        KmsSource::new(Some(kid), self.config(key_id)).with_credentials(credentials())
    }
}
