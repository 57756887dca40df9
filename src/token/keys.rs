//! The keys an operator instance holds, and the one place a JWS is put together: header,
//! base64url payload in light-oauth2's claim order, and the signature from a [`Signer`].

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;

use super::Claims;
use super::signer::{SignError, Signer};

/// One key: its signer, and what every token and verification with it re-uses.
pub struct Key {
    signer: Arc<dyn Signer>,
    /// base64url of `{"kid":…,"alg":"RS256"}`, the same for every token this key signs.
    header_b64: String,
    decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    kid: &'a str,
    alg: &'static str,
}

impl Key {
    pub fn new(signer: Arc<dyn Signer>) -> Self {
        let header = serde_json::to_vec(&Header {
            kid: signer.kid(),
            alg: "RS256",
        })
        .unwrap_or_default();
        let public = signer.public_key();
        let decoding = DecodingKey::from_rsa_raw_components(&public.n, &public.e);
        Key {
            header_b64: URL_SAFE_NO_PAD.encode(header),
            decoding,
            signer,
        }
    }

    pub fn kid(&self) -> &str {
        self.signer.kid()
    }

    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    /// The claims as a compact JWS: header.payload.signature, each base64url.
    pub async fn sign(&self, claims: &Claims) -> Result<String, SignError> {
        let payload = serde_json::to_vec(claims).map_err(|e| SignError {
            kid: self.kid().to_string(),
            reason: format!("claims do not serialise: {e}"),
        })?;
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 360);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.signer.sign(token.as_bytes()).await?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(token)
    }
}

/// The newest key signs; every key verifies and is published.
#[derive(Debug, Clone)]
pub struct KeySet {
    active: Arc<Key>,
    all: Vec<Arc<Key>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub kid: String,
    pub claims: Claims,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("signed with unknown key id {0:?}")]
    UnknownKey(String),
    #[error("bad signature or claims: {0}")]
    Invalid(String),
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
    #[error("the token has been revoked")]
    Revoked,
}

impl KeySet {
    /// `verification_only` keys are published and accepted, never used to sign.
    pub fn new<S: Signer + 'static>(active: S, verification_only: Vec<S>) -> Self {
        Self::from_signers(
            Arc::new(active),
            verification_only
                .into_iter()
                .map(|s| Arc::new(s) as Arc<dyn Signer>)
                .collect(),
        )
    }

    pub fn from_signers(active: Arc<dyn Signer>, verification_only: Vec<Arc<dyn Signer>>) -> Self {
        let active = Arc::new(Key::new(active));
        let mut all = vec![active.clone()];
        all.extend(
            verification_only
                .into_iter()
                .filter(|signer| signer.kid() != active.kid())
                .map(|signer| Arc::new(Key::new(signer))),
        );
        KeySet { active, all }
    }

    pub fn active(&self) -> &Key {
        &self.active
    }

    pub fn all(&self) -> &[Arc<Key>] {
        &self.all
    }

    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.all.iter().find(|key| key.kid() == kid).map(|k| &**k)
    }

    /// The JWKS document (RFC 7517 §5) of every key.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self.all.iter().map(|key| key.signer.public_jwk()).collect();
        serde_json::json!({ "keys": keys })
    }

    /// Checks the signature against the key named by `kid`; expiry and audience are the caller's
    /// business (a token near expiry is still *ours*, it just needs renewing).
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, VerifyError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let kid = header
            .kid
            .ok_or_else(|| VerifyError::Malformed("header has no kid".into()))?;
        let key = self
            .get(&kid)
            .ok_or_else(|| VerifyError::UnknownKey(kid.clone()))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|e| VerifyError::Invalid(e.to_string()))?;
        Ok(VerifiedToken {
            kid,
            claims: data.claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Signer;
    use crate::token::{LocalKey, VersionClaim, new_jti};

    fn sign(key: &Key, claims: &Claims) -> String {
        futures::executor::block_on(key.sign(claims)).unwrap()
    }

    fn sign_with(key: LocalKey, claims: &Claims) -> String {
        sign(&Key::new(Arc::new(key)), claims)
    }

    fn claims() -> Claims {
        Claims {
            iss: "urn:com:networknt:oauth2:v1".into(),
            aud: "urn:com.networknt".into(),
            exp: 1_947_073_497,
            jti: new_jti(),
            iat: 1_631_713_497,
            nbf: 1_631_713_377,
            version_claim: VersionClaim::Version,
            version: "1.0".into(),
            client_id: "f7d42348-c647-4efb-a52d-4c5787421e00".into(),
            scope: vec!["a".into(), "b".into()],
            sid: Some("svc".into()),
        }
    }

    #[test]
    fn signs_with_the_seed_header_and_verifies() {
        let keys = KeySet::new(LocalKey::generate("100").unwrap(), vec![]);
        let token = sign(keys.active(), &claims());
        assert!(
            token.starts_with("eyJraWQiOiIxMDAiLCJhbGciOiJSUzI1NiJ9."),
            "{token}"
        );
        let verified = keys.verify(&token).unwrap();
        assert_eq!(verified.kid, "100");
        assert_eq!(verified.claims, claims_with_jti(&verified.claims.jti));
    }

    fn claims_with_jti(jti: &str) -> Claims {
        Claims {
            jti: jti.into(),
            ..claims()
        }
    }

    #[test]
    fn rejects_tampering_unknown_keys_and_garbage() {
        let old = Arc::new(LocalKey::generate("99").unwrap());
        let old_token = sign(&Key::new(old.clone()), &claims());
        let keys = KeySet::from_signers(Arc::new(LocalKey::generate("100").unwrap()), vec![old]);
        assert!(
            keys.verify(&old_token).is_ok(),
            "rotated-out keys still verify"
        );

        let other = KeySet::new(LocalKey::generate("100").unwrap(), vec![]);
        let forged = sign(other.active(), &claims());
        assert!(matches!(keys.verify(&forged), Err(VerifyError::Invalid(_))));

        let stranger = sign_with(LocalKey::generate("7").unwrap(), &claims());
        assert_eq!(
            keys.verify(&stranger),
            Err(VerifyError::UnknownKey("7".into()))
        );

        let token = sign(keys.active(), &claims());
        let (head, rest) = token.split_once('.').unwrap();
        let tampered = format!("{head}.{}", rest.replacen('e', "f", 1));
        assert!(keys.verify(&tampered).is_err());
        assert!(matches!(
            keys.verify("garbage"),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn pem_round_trip_pkcs8_and_pkcs1() {
        let key = LocalKey::generate("100").unwrap();
        let pem8 = key.to_pkcs8_pem().unwrap();
        let again = LocalKey::from_pem("100", pem8.as_bytes()).unwrap();
        assert_eq!(again.public_jwk(), key.public_jwk());
        assert!(LocalKey::from_pem("100", b"not pem").is_err());
        let wrong = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        assert!(matches!(
            LocalKey::from_pem("100", wrong.as_bytes()),
            Err(crate::token::KeyError::WrongPemTag { .. })
        ));
    }

    #[test]
    fn reads_pkcs1_keys_as_openssl_writes_them() {
        // A test-only key from `openssl genrsa -traditional 2048`.
        let pem = include_str!("../../tests/fixtures/pkcs1-test-key.pem");
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let key = LocalKey::from_pem("100", pem.as_bytes()).unwrap();
        // Re-encoded as PKCS#8, it is the same key.
        let pkcs8 = key.to_pkcs8_pem().unwrap();
        assert_eq!(
            LocalKey::from_pem("100", pkcs8.as_bytes())
                .unwrap()
                .public_jwk(),
            key.public_jwk()
        );
        let keys = KeySet::new(key, vec![]);
        let token = sign(keys.active(), &claims());
        assert_eq!(keys.verify(&token).unwrap().kid, "100");
    }

    #[test]
    fn jwks_lists_every_key() {
        let keys = KeySet::new(
            LocalKey::generate("100").unwrap(),
            vec![LocalKey::generate("99").unwrap()],
        );
        let jwks = keys.jwks();
        let kids: Vec<_> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, ["100", "99"]);
        assert_eq!(jwks["keys"][0]["e"], "AQAB");
    }
}
