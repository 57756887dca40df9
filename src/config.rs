//! The operator's configuration: one YAML file, light-oauth2's `oauth-token.yml` equivalent.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::duration;
use crate::policy::PolicyRule;
pub use crate::token::{BootstrapConfig, KmsConfig, PreviousKey, SigningConfig};
use crate::token::{MAX_LIFETIME, TokenProfile, VersionClaim};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// `iss` of every token.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// `aud` of every token unless a client asks for another it may use.
    #[serde(default = "default_audience")]
    pub audience: String,
    #[serde(default)]
    pub version_claim: VersionClaim,
    #[serde(default)]
    pub bootstrap: BootstrapConfig,
    #[serde(default)]
    pub signing: SigningConfig,
    /// When non-empty, a service id must match at least one rule to get a token.
    #[serde(default)]
    pub policy: Vec<PolicyRule>,
    #[serde(default)]
    pub endpoint: crate::endpoint::EndpointConfig,
    #[serde(default)]
    pub revocation: crate::revocation::RevocationConfig,
}

fn default_issuer() -> String {
    "urn:com:networknt:oauth2:v1".into()
}
fn default_audience() -> String {
    "urn:com.networknt".into()
}

impl Default for Config {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("the empty config is valid")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and checks the whole file; the message names the field and says why.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            // serde_path_to_error names the full field path (`bootstrap.lifetime`) for every error.
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(
                |e| {
                    let path = e.path().to_string();
                    let mut inner = e.into_inner().to_string();
                    // serde_yaml prefixes its own, shorter, path; keep only the full one.
                    let parts: Vec<&str> = path.split('.').collect();
                    for n in (1..=parts.len()).rev() {
                        if let Some(rest) =
                            inner.strip_prefix(&format!("{}: ", parts[..n].join(".")))
                        {
                            inner = rest.to_string();
                            break;
                        }
                    }
                    if path == "." {
                        inner
                    } else {
                        format!("{path}: {inner}")
                    }
                },
            )?
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() {
            return Err("issuer: must not be empty".into());
        }
        if self.audience.is_empty() {
            return Err("audience: must not be empty".into());
        }
        if self.bootstrap.client_id.is_empty() {
            return Err("bootstrap.clientId: must not be empty".into());
        }
        if let Some(i) = self
            .bootstrap
            .scope
            .iter()
            .position(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return Err(format!(
                "bootstrap.scope[{i}]: a scope is one non-empty word without whitespace"
            ));
        }
        let bootstrap = &self.bootstrap;
        if bootstrap.min_lifetime < Duration::from_secs(1) {
            return Err("bootstrap.minLifetime: must be at least 1s".into());
        }
        if bootstrap.renewal_horizon < Duration::from_secs(1) {
            return Err("bootstrap.renewalHorizon: must be at least 1s".into());
        }
        if bootstrap.lifetime < bootstrap.min_lifetime {
            return Err(format!(
                "bootstrap.lifetime: {} is shorter than bootstrap.minLifetime {}",
                duration::format(bootstrap.lifetime),
                duration::format(bootstrap.min_lifetime)
            ));
        }
        if bootstrap.lifetime > MAX_LIFETIME {
            return Err(format!(
                "bootstrap.lifetime: must be at most {} (a hundred years)",
                duration::format(MAX_LIFETIME)
            ));
        }
        if let Some(renew) = self.bootstrap.renew_before
            && renew >= self.bootstrap.lifetime
        {
            return Err(format!(
                "bootstrap.renewBefore: {} must be shorter than bootstrap.lifetime {}",
                duration::format(renew),
                duration::format(self.bootstrap.lifetime)
            ));
        }
        if self.signing.kid.as_deref() == Some("") {
            return Err("signing.kid: must not be empty".into());
        }
        if self.signing.key_secret.is_empty() {
            return Err("signing.keySecret: must not be empty".into());
        }
        if let Some(kms) = &self.signing.kms {
            kms.validate().map_err(|why| format!("signing.kms.{why}"))?;
            if !self.signing.previous_keys.is_empty() {
                return Err(
                    "signing.previousKeys: not supported with signing.kms (previous keys are \
                     read from Secrets, and with kms no key Secret is read)"
                        .into(),
                );
            }
        }
        self.signing
            .rotation
            .validate()
            .map_err(|why| format!("signing.rotation.{why}"))?;
        if self.signing.rotation.every.is_some() {
            if self.signing.kms.is_some() {
                return Err(
                    "signing.rotation.every: the operator creates new keys in Secrets; \
                     with signing.kms, rotate by pointing kms.keyId at a new KMS key (README)"
                        .into(),
                );
            }
            if self.signing.kid.is_some() {
                return Err(
                    "signing.rotation.every: every key needs its own kid; leave \
                     signing.kid unset so each key is named by its thumbprint"
                        .into(),
                );
            }
        }
        for (i, rule) in self.policy.iter().enumerate() {
            rule.validate()
                .map_err(|why| format!("policy[{i}].{why}"))?;
        }
        self.endpoint
            .validate()
            .map_err(|why| format!("endpoint.{why}"))?;
        self.revocation
            .validate()
            .map_err(|why| format!("revocation.{why}"))?;
        Ok(())
    }

    /// What every token carries: `iss`, default `aud`, the version claim.
    pub fn token_profile(&self) -> TokenProfile {
        TokenProfile {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            version_claim: self.version_claim,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_seed_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.issuer, "urn:com:networknt:oauth2:v1");
        assert_eq!(config.audience, "urn:com.networknt");
        assert_eq!(config.version_claim, VersionClaim::Version);
        assert_eq!(
            config.bootstrap.client_id,
            "f7d42348-c647-4efb-a52d-4c5787421e00"
        );
        assert_eq!(config.bootstrap.lifetime, Duration::from_secs(315_360_000));
        assert_eq!(config.signing.kid, None, "the key's thumbprint");
        assert_eq!(
            config.bootstrap.renew_before_for(config.bootstrap.lifetime),
            Duration::from_secs(105_120_000)
        );
    }

    #[test]
    fn reads_a_full_file() {
        let config = Config::parse(
            r#"
issuer: https://issuer.example
audience: urn:example
versionClaim: ver
bootstrap:
  clientId: abc
  scope: [one, two]
  lifetime: 24h
  renewBefore: 1h
signing:
  kid: "7"
  keySecret: my-key
  previousKeys: [{kid: "6", keySecret: old-key}]
policy:
  - namespaces: ["team-*"]
    serviceIds: ["com.example.*"]
"#,
        )
        .unwrap();
        assert_eq!(config.version_claim, VersionClaim::Ver);
        assert_eq!(config.bootstrap.scope, ["one", "two"]);
        assert_eq!(
            config.bootstrap.renew_before_for(config.bootstrap.lifetime),
            Duration::from_secs(3600)
        );
        assert_eq!(config.signing.previous_keys[0].key_secret, "old-key");
        assert_eq!(config.signing.kms, None);
        assert_eq!(
            config.signing.rotation.every, None,
            "rotation is off by default"
        );
        assert_eq!(config.policy.len(), 1);
    }

    #[test]
    fn reads_a_rotation_schedule() {
        let config = Config::parse(
            "signing:\n  rotation: {every: 2160h, prepublish: 48h, reissuePerMinute: 10}\n",
        )
        .unwrap();
        let rotation = &config.signing.rotation;
        assert_eq!(rotation.every, Some(Duration::from_secs(2160 * 3600)));
        assert_eq!(rotation.prepublish, Duration::from_secs(48 * 3600));
        assert_eq!(rotation.reissue_per_minute, 10);
        let defaults = Config::parse("").unwrap().signing.rotation;
        assert_eq!(defaults.prepublish, Duration::from_secs(24 * 3600));
        assert_eq!(defaults.reissue_per_minute, 60);
    }

    #[test]
    fn reads_a_kms_key() {
        let config = Config::parse(
            r#"
signing:
  kid: "7"
  kms:
    keyId: alias/bootstrap-tokens
    region: eu-west-1
    endpoint: http://127.0.0.1:4599
"#,
        )
        .unwrap();
        assert_eq!(
            config.signing.kms,
            Some(KmsConfig {
                key_id: "alias/bootstrap-tokens".into(),
                region: "eu-west-1".into(),
                endpoint: Some("http://127.0.0.1:4599".into()),
            })
        );
        let aws = Config::parse("signing: {kms: {keyId: k, region: us-east-1}}").unwrap();
        assert_eq!(aws.signing.kms.unwrap().endpoint, None);
    }

    #[test]
    fn bad_files_name_the_field() {
        let cases = [
            ("bootstrap:\n  lifetime: ten years\n", "bootstrap.lifetime"),
            ("bootstrap:\n  lifetim: 1h\n", "lifetim"),
            ("versionClaim: v\n", "versionClaim"),
            (
                "bootstrap:\n  lifetime: 1h\n  renewBefore: 2h\n",
                "bootstrap.renewBefore",
            ),
            ("bootstrap:\n  scope: [\"a b\"]\n", "bootstrap.scope[0]"),
            ("signing:\n  kid: \"\"\n", "signing.kid"),
            ("bootstrap:\n  lifetime: 30m\n", "bootstrap.lifetime"),
            (
                "bootstrap:\n  lifetime: 3000000000000000h\n",
                "bootstrap.lifetime",
            ),
            ("bootstrap:\n  lifetime: 100000000h\n", "bootstrap.lifetime"),
            ("bootstrap:\n  minLifetime: 0s\n", "bootstrap.minLifetime"),
            (
                "bootstrap:\n  renewalHorizon: 0s\n",
                "bootstrap.renewalHorizon",
            ),
            ("policy:\n  - serviceIds: [\"\"]\n", "policy[0].serviceIds"),
            ("signing:\n  kms: {region: r}\n", "keyId"),
            (
                "signing:\n  kms: {keyId: \"\", region: r}\n",
                "signing.kms.keyId",
            ),
            (
                "signing:\n  kms: {keyId: k, region: \" \"}\n",
                "signing.kms.region",
            ),
            (
                "signing:\n  kms: {keyId: k, region: r, endpoint: \"localhost:4599\"}\n",
                "signing.kms.endpoint",
            ),
            (
                "signing:\n  kms: {keyId: k, region: r, endpoint: \"http://\"}\n",
                "signing.kms.endpoint",
            ),
            (
                "signing:\n  kms: {keyId: k, region: r, endpointUrl: x}\n",
                "endpointUrl",
            ),
            (
                "signing:\n  kms: {keyId: k, region: r}\n  previousKeys: [{kid: \"6\", keySecret: old}]\n",
                "signing.previousKeys",
            ),
            (
                "signing:\n  rotation: {every: 10s, prepublish: 10s}\n",
                "signing.rotation.every",
            ),
            (
                "signing:\n  rotation: {prepublish: 0s}\n",
                "signing.rotation.prepublish",
            ),
            (
                "signing:\n  rotation: {reissuePerMinute: 0}\n",
                "signing.rotation.reissuePerMinute",
            ),
            (
                "signing:\n  kid: \"100\"\n  rotation: {every: 60s, prepublish: 10s}\n",
                "signing.kid unset",
            ),
            (
                "signing:\n  kms: {keyId: k, region: r}\n  rotation: {every: 60s, prepublish: 10s}\n",
                "kms.keyId",
            ),
            ("signing:\n  rotation: {every: soon}\n", "every"),
        ];
        for (text, field) in cases {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(field), "{text:?}: {err:?} should name {field}");
        }
    }
}

/// The `endpoint:` section, read through the whole file so errors carry the full field path.
#[cfg(test)]
mod endpoint_section_tests {
    use super::Config;
    use crate::endpoint::Grant;

    #[test]
    fn defaults() {
        let config = Config::parse("").unwrap();
        let endpoint = &config.endpoint;
        assert!(endpoint.enabled);
        assert_eq!(endpoint.port, 6882);
        assert_eq!(endpoint.access_token_lifetime.as_secs(), 600);
        assert!(endpoint.reuse.enabled);
        assert_eq!(
            endpoint
                .reuse_min_remaining(endpoint.access_token_lifetime)
                .as_secs(),
            300
        );
        assert!(endpoint.clients.is_empty());
        let connections = &endpoint.connections;
        assert_eq!(connections.max, 1024);
        assert_eq!(connections.header_read_timeout.as_secs(), 10);
        assert_eq!(connections.body_timeout.as_secs(), 10);
        assert_eq!(connections.idle_timeout.as_secs(), 60);
        assert_eq!(connections.tls_handshake_timeout.as_secs(), 10);
        assert!(endpoint.throttle.enabled);
        assert_eq!(endpoint.throttle.burst, 5);
        assert_eq!(endpoint.throttle.interval.as_secs(), 60);
        assert_eq!(endpoint.throttle.max_tracked, 10_000);
        assert_eq!(endpoint.hash_concurrency, 1);
    }

    #[test]
    fn reads_a_full_section() {
        let config = Config::parse(
            r#"
endpoint:
  address: 127.0.0.1
  port: 8443
  extraTokenPaths: [/oauth/token, /auth/token, /oauth]
  publicUrl: https://tokens.example.com
  tls: {certFile: /tls/tls.crt, keyFile: /tls/tls.key, reloadInterval: 1m}
  accessTokenLifetime: 1h
  reuse: {minRemaining: 10m}
  clients:
    - clientId: f7d42348-c647-4efb-a52d-4c5787421e72
      clientSecret: {hash: "1000:74657374:000102030405060708090a0b0c0d0e0f"}
      scopes: [petstore.r, petstore.w]
      audiences: [https://api.example.com/]
    - clientId: f7d42348-c647-4efb-a52d-4c5787421e00
      clientSecret: {secretRef: {name: oauth-clients, key: bootstrap}}
      grantTypes: [bootstrap_token]
"#,
        )
        .unwrap();
        let endpoint = &config.endpoint;
        assert_eq!(endpoint.extra_token_paths.len(), 3);
        assert_eq!(endpoint.tls.as_ref().unwrap().reload_interval.as_secs(), 60);
        assert_eq!(
            endpoint
                .reuse_min_remaining(endpoint.access_token_lifetime)
                .as_secs(),
            600
        );
        assert_eq!(endpoint.clients[1].grant_types, [Grant::BootstrapToken]);
    }

    #[test]
    fn bad_sections_name_the_field() {
        let client = |extra: &str| {
            format!(
                "endpoint:\n  clients:\n    - clientId: a\n      clientSecret: {{hash: \"sha256:{}\"}}\n{extra}",
                "0".repeat(64)
            )
        };
        let cases = [
            ("endpoint:\n  extraTokenPaths: [oauth]\n".to_string(), "endpoint.extraTokenPaths[0]"),
            ("endpoint:\n  extraTokenPaths: [/oauth2/keys]\n".into(), "endpoint.extraTokenPaths[0]"),
            ("endpoint:\n  extraTokenPaths: [/a, /a]\n".into(), "endpoint.extraTokenPaths[1]"),
            ("endpoint:\n  publicUrl: example.com\n".into(), "endpoint.publicUrl"),
            ("endpoint:\n  accessTokenLifetime: 0s\n".into(), "endpoint.accessTokenLifetime"),
            ("endpoint:\n  prt: 1\n".into(), "prt"),
            ("endpoint:\n  connections: {max: 0}\n".into(), "endpoint.connections.max"),
            ("endpoint:\n  connections: {headerReadTimeout: 500ms}\n".into(), "endpoint.connections.headerReadTimeout"),
            ("endpoint:\n  connections: {bodyTimeout: 2h}\n".into(), "endpoint.connections.bodyTimeout"),
            ("endpoint:\n  connections: {idleTimeout: 0s}\n".into(), "endpoint.connections.idleTimeout"),
            ("endpoint:\n  connections: {tlsHandshakeTimeout: 0s}\n".into(), "endpoint.connections.tlsHandshakeTimeout"),
            ("endpoint:\n  throttle: {burst: 0}\n".into(), "endpoint.throttle.burst"),
            ("endpoint:\n  throttle: {interval: 100ms}\n".into(), "endpoint.throttle.interval"),
            ("endpoint:\n  throttle: {maxTracked: 0}\n".into(), "endpoint.throttle.maxTracked"),
            ("endpoint:\n  hashConcurrency: 0\n".into(), "endpoint.hashConcurrency"),
            ("revocation:\n  issuedPerService: 0\n".into(), "revocation.issuedPerService"),
            ("revocation:\n  issuedPerService: 10001\n".into(), "revocation.issuedPerService"),
            (client("      grantTypes: [password]\n"), "endpoint.clients[0].grantTypes[0]"),
            (client("      scopes: [\"a b\"]\n"), "endpoint.clients[0].scopes[0]"),
            (client("  reuse: {minRemaining: 10m}\n"), "endpoint.clients[0].tokenLifetime"),
            ("endpoint:\n  clients:\n    - clientId: a\n      clientSecret: {hash: \"md5:00\"}\n".into(), "endpoint.clients[0].clientSecret.hash"),
            ("endpoint:\n  clients:\n    - clientId: \"a:b\"\n      clientSecret: {hash: \"1000:00:00\"}\n".into(), "endpoint.clients[0].clientId"),
        ];
        for (text, field) in cases {
            let err = Config::parse(&text).unwrap_err();
            assert!(err.contains(field), "{text:?}: {err:?} should name {field}");
        }
    }
}
