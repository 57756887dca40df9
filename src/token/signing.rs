//! The `signing:` section of the configuration: where the signing keys live.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SigningConfig {
    /// `kid` of the active key, in every token header; by default the key's RFC 7638
    /// thumbprint. light-4j services that still map `100` to light-oauth2's certificate need
    /// either `100` here or their `security.yml` pointed at the JWKS (README).
    #[serde(default)]
    pub kid: Option<String>,
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
    /// Its `kid`; by default its RFC 7638 thumbprint.
    #[serde(default)]
    pub kid: Option<String>,
    pub key_secret: String,
}

/// What messages call a kid that is the key's thumbprint, before the key is known.
pub const THUMBPRINT_KID: &str = "(the key's RFC 7638 thumbprint)";

impl SigningConfig {
    /// The configured kid, or what messages call the thumbprint.
    pub fn kid_label(&self) -> &str {
        self.kid.as_deref().unwrap_or(THUMBPRINT_KID)
    }
}

fn default_key_secret() -> String {
    "bootstrap-token-signing-key".into()
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            kid: None,
            key_secret: default_key_secret(),
            previous_keys: Vec::new(),
            kms: None,
        }
    }
}
