//! Client secrets: configured as a hash or as a reference to a Kubernetes Secret, checked in
//! constant time. Plain secrets are never kept: a referenced one is hashed as soon as it is read.

use std::num::NonZeroU32;
use std::sync::OnceLock;

use aws_lc_rs::{constant_time, digest, pbkdf2};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde::Deserialize;

/// Where a client's secret comes from: exactly one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSource {
    /// `sha256:<hex>` of the secret, or light-oauth2's PBKDF2 `iterations:salt:hash` (hex), so
    /// existing `oauth-token.yml` values carry over.
    #[serde(default)]
    pub hash: Option<String>,
    /// A key of a Secret holding the plain secret, read once at start.
    #[serde(default)]
    pub secret_ref: Option<SecretKeyRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
    /// Default: the namespace of the operator's Kubernetes client (its own namespace in a pod).
    #[serde(default)]
    pub namespace: Option<String>,
}

impl SecretSource {
    pub(crate) fn validate(&self) -> Result<(), String> {
        match (&self.hash, &self.secret_ref) {
            (Some(hash), None) => Verifier::parse(hash)
                .map(drop)
                .map_err(|why| format!("hash: {why}")),
            (None, Some(r)) if r.name.is_empty() || r.key.is_empty() => {
                Err("secretRef: name and key must not be empty".into())
            }
            (None, Some(_)) => Ok(()),
            _ => Err("hash: exactly one of hash and secretRef must be set".into()),
        }
    }

    /// The verifier for this source; a reference is read through `client`.
    pub async fn resolve(&self, client: Option<&kube::Client>) -> Result<Verifier, String> {
        if let Some(hash) = &self.hash {
            return Verifier::parse(hash);
        }
        let Some(r) = &self.secret_ref else {
            return Err("neither hash nor secretRef is set".into());
        };
        let client = client.ok_or("secretRef needs a Kubernetes client")?;
        let namespace = r.namespace.as_deref().unwrap_or(client.default_namespace());
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = secrets
            .get_opt(&r.name)
            .await
            .map_err(|e| format!("reading Secret {namespace}/{}: {e}", r.name))?
            .ok_or_else(|| format!("Secret {namespace}/{} not found", r.name))?;
        let value = secret
            .data
            .as_ref()
            .and_then(|data| data.get(&r.key))
            .ok_or_else(|| format!("Secret {namespace}/{} has no key {:?}", r.name, r.key))?;
        // `kubectl create secret --from-file` keeps the file's final newline; no secret ends in one.
        let plain = value.0.strip_suffix(b"\n").unwrap_or(&value.0);
        if plain.is_empty() {
            return Err(format!(
                "Secret {namespace}/{} key {:?} is empty",
                r.name, r.key
            ));
        }
        Ok(Verifier::from_plain(plain))
    }
}

/// Checks a presented secret without holding the real one.
pub enum Verifier {
    Sha256([u8; 32]),
    /// PBKDF2WithHmacSHA1 as light-oauth2's `HashUtil` makes it.
    Pbkdf2 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
        /// SHA-256 of the secret once it has passed PBKDF2: a client that authenticates on every
        /// request pays the slow hash once. Wrong guesses pay it each time, which is why they are
        /// throttled and hashed off the async workers (see `guard`).
        verified: OnceLock<[u8; 32]>,
    },
}

impl std::fmt::Debug for Verifier {
    // Even a hash is not for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verifier::Sha256(_) => "Verifier::Sha256(..)",
            Verifier::Pbkdf2 { .. } => "Verifier::Pbkdf2(..)",
        })
    }
}

/// Far above light-oauth2's 1000; a bound keeps a typo from making every check take minutes.
const MAX_ITERATIONS: u32 = 10_000_000;

impl Verifier {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(hex) = text.strip_prefix("sha256:") {
            let bytes = decode_hex(hex).ok_or("sha256: the digest must be hex")?;
            let digest: [u8; 32] = bytes
                .try_into()
                .map_err(|_| "sha256: the digest must be 64 hex digits")?;
            return Ok(Verifier::Sha256(digest));
        }
        let parts: Vec<&str> = text.split(':').collect();
        let [iterations, salt, hash] = parts[..] else {
            return Err("expected sha256:<hex> or PBKDF2 iterations:salt:hash".into());
        };
        let iterations = iterations
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_ITERATIONS).contains(n))
            .and_then(NonZeroU32::new)
            .ok_or_else(|| {
                format!("PBKDF2 iterations must be a number from 1 to {MAX_ITERATIONS}")
            })?;
        let salt = decode_hex(salt).ok_or("PBKDF2 salt must be hex")?;
        let hash = decode_hex(hash)
            .filter(|h| (16..=1024).contains(&h.len()))
            .ok_or("PBKDF2 hash must be hex, 16 to 1024 bytes")?;
        Ok(Verifier::Pbkdf2 {
            iterations,
            salt,
            hash,
            verified: OnceLock::new(),
        })
    }

    pub fn from_plain(secret: &[u8]) -> Self {
        Verifier::Sha256(sha256(secret))
    }

    /// Whether `presented` is the secret, if that can be told without the slow hash: always for
    /// a SHA-256 hash; for PBKDF2 only when it is the secret verified before. Constant time in
    /// the secret's content: digests of equal length are compared.
    pub fn check_fast(&self, presented: &[u8]) -> Option<bool> {
        let digest = sha256(presented);
        match self {
            Verifier::Sha256(expected) => {
                Some(constant_time::verify_slices_are_equal(&digest, expected).is_ok())
            }
            Verifier::Pbkdf2 { verified, .. } => verified
                .get()
                .filter(|known| constant_time::verify_slices_are_equal(&digest, *known).is_ok())
                .map(|_| true),
        }
    }

    /// The full check: PBKDF2 (slow, so for a blocking thread), remembering a secret that passes.
    pub fn check_slow(&self, presented: &[u8]) -> bool {
        match self {
            Verifier::Sha256(_) => self.check_fast(presented) == Some(true),
            Verifier::Pbkdf2 {
                iterations,
                salt,
                hash,
                verified,
            } => {
                let ok =
                    pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA1, *iterations, salt, presented, hash)
                        .is_ok();
                if ok {
                    let _ = verified.set(sha256(presented));
                }
                ok
            }
        }
    }

    #[cfg(test)]
    fn matches(&self, presented: &[u8]) -> bool {
        self.check_fast(presented)
            .unwrap_or_else(|| self.check_slow(presented))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hashes() {
        // printf %s 'f6h1FTI8Q3-7UScPZDzfXA' | sha256sum
        let verifier = Verifier::parse(
            "sha256:300b400b5caf15a3c6b85faf3d35f176d2a38fc4e037ee404385bc8c66a27936",
        )
        .unwrap();
        assert!(verifier.matches(b"f6h1FTI8Q3-7UScPZDzfXA"));
        assert!(!verifier.matches(b"f6h1FTI8Q3-7UScPZDzfXa"));
        assert!(!verifier.matches(b""));
        assert!(Verifier::from_plain(b"f6h1FTI8Q3-7UScPZDzfXA").matches(b"f6h1FTI8Q3-7UScPZDzfXA"));
    }

    /// A light-oauth2 `HashUtil.generateStrongPasswordHash` value (1000 iterations, 64-byte hash),
    /// computed independently with Python's `hashlib.pbkdf2_hmac("sha1", b"secret", salt, 1000, 64)`.
    #[test]
    fn light_oauth2_pbkdf2_hashes_carry_over() {
        let verifier = Verifier::parse(
            "1000:2f0a5e1c9b7d4e3fa1c28b6d0e9f7a13:172ff0a9dc510b51d741be19071cb5d558d424b2965d64df6a2e91b99380f0479a171a84ae2b57ea8641a612f2fd0cb5306d3ff47559cdda8970f999a23700c0",
        )
        .unwrap();
        assert_eq!(verifier.check_fast(b"secret"), None, "not verified yet");
        assert!(verifier.matches(b"secret"));
        assert!(!verifier.matches(b"Secret"));
        // The second check takes the remembered digest; wrong secrets still need the slow hash.
        assert_eq!(verifier.check_fast(b"secret"), Some(true));
        assert_eq!(verifier.check_fast(b"Secret"), None);
        assert!(verifier.matches(b"secret"));
        assert!(!verifier.matches(b"Secret"));
    }

    #[test]
    fn rejects_malformed_hashes() {
        for bad in [
            "",
            "plain",
            "sha256:",
            "sha256:zz",
            "sha256:00",
            "md5:00",
            "0:00:00000000000000000000000000000000",
            "1000:xx:00000000000000000000000000000000",
            "1000:00:00",
            "1000:00",
            "99999999999:00:00000000000000000000000000000000",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn debug_shows_no_digest() {
        let shown = format!("{:?}", Verifier::from_plain(b"s"));
        assert_eq!(shown, "Verifier::Sha256(..)");
    }
}
