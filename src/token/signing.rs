//! The `signing:` section of the configuration: where the signing keys live.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SigningConfig {
    /// `kid` of the active key, in every token header.
    #[serde(default = "default_kid")]
    pub kid: String,
    /// Secret (in the operator's namespace) holding the active key; created when absent.
    /// Not used when `kms` is set.
    #[serde(default = "default_key_secret")]
    pub key_secret: String,
    /// Keys rotated out: published and accepted for verification, never used to sign.
    #[serde(default)]
    pub previous_keys: Vec<PreviousKey>,
    /// The active key lives in a KMS speaking the AWS KMS API and signs there: no key Secret
    /// is read or created, and `keySecret` is ignored.
    #[serde(default)]
    pub kms: Option<KmsConfig>,
}

/// An asymmetric KMS key (RSA_2048/3072/4096, SIGN_VERIFY) that signs RS256; credentials come
/// from the standard AWS chain (environment, web identity/IRSA, profile, instance role).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KmsConfig {
    /// Key id, key ARN, alias name (`alias/…`) or alias ARN.
    pub key_id: String,
    pub region: String,
    /// Base URL of a KMS-compatible server; AWS's regional endpoint when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
}

impl KmsConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.key_id.trim().is_empty() {
            return Err("keyId: must not be empty".into());
        }
        if self.region.trim().is_empty() {
            return Err("region: must not be empty".into());
        }
        if let Some(endpoint) = &self.endpoint {
            let uri: axum::http::Uri = endpoint
                .parse()
                .map_err(|e| format!("endpoint: {endpoint:?} is not a URL: {e}"))?;
            let http = matches!(uri.scheme_str(), Some("http" | "https"));
            if !http || uri.host().is_none_or(str::is_empty) {
                return Err(format!(
                    "endpoint: {endpoint:?} is not an http:// or https:// URL with a host"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviousKey {
    pub kid: String,
    pub key_secret: String,
}

fn default_kid() -> String {
    "100".into()
}

fn default_key_secret() -> String {
    "bootstrap-token-signing-key".into()
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            kid: default_kid(),
            key_secret: default_key_secret(),
            previous_keys: Vec::new(),
            kms: None,
        }
    }
}
