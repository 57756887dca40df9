use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Claims, SigningKey};

/// The keys an operator instance holds: the newest signs, every one verifies and is published.
#[derive(Debug, Clone)]
pub struct KeySet {
    active: Arc<SigningKey>,
    all: Vec<Arc<SigningKey>>,
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
}

impl KeySet {
    /// `verification_only` keys are published and accepted, never used to sign.
    pub fn new(active: SigningKey, verification_only: Vec<SigningKey>) -> Self {
        let active = Arc::new(active);
        let mut all = vec![active.clone()];
        all.extend(
            verification_only
                .into_iter()
                .filter(|key| key.kid() != active.kid())
                .map(Arc::new),
        );
        KeySet { active, all }
    }

    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    pub fn all(&self) -> &[Arc<SigningKey>] {
        &self.all
    }

    pub fn get(&self, kid: &str) -> Option<&SigningKey> {
        self.all.iter().find(|key| key.kid() == kid).map(|k| &**k)
    }

    /// The JWKS document (RFC 7517 §5) of every key.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self.all.iter().map(|key| key.jwk()).collect();
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
        let (n, e) = key.public_components();
        let decoding_key = DecodingKey::from_rsa_raw_components(n, e);
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, &decoding_key, &validation)
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
    use crate::token::{VersionClaim, new_jti};

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
        let keys = KeySet::new(SigningKey::generate("100").unwrap(), vec![]);
        let token = keys.active().sign(&claims());
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
        let old = SigningKey::generate("99").unwrap();
        let old_token = old.sign(&claims());
        let keys = KeySet::new(SigningKey::generate("100").unwrap(), vec![old]);
        assert!(
            keys.verify(&old_token).is_ok(),
            "rotated-out keys still verify"
        );

        let other = KeySet::new(SigningKey::generate("100").unwrap(), vec![]);
        let forged = other.active().sign(&claims());
        assert!(matches!(keys.verify(&forged), Err(VerifyError::Invalid(_))));

        let stranger = SigningKey::generate("7").unwrap().sign(&claims());
        assert_eq!(
            keys.verify(&stranger),
            Err(VerifyError::UnknownKey("7".into()))
        );

        let token = keys.active().sign(&claims());
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
        let key = SigningKey::generate("100").unwrap();
        let pem8 = key.to_pkcs8_pem().unwrap();
        let again = SigningKey::from_pem("100", pem8.as_bytes()).unwrap();
        assert_eq!(again.jwk(), key.jwk());
        assert!(SigningKey::from_pem("100", b"not pem").is_err());
        let wrong = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        assert!(matches!(
            SigningKey::from_pem("100", wrong.as_bytes()),
            Err(crate::token::KeyError::WrongPemTag { .. })
        ));
    }

    #[test]
    fn reads_pkcs1_keys_as_openssl_writes_them() {
        // A test-only key from `openssl genrsa -traditional 2048`.
        let pem = include_str!("../../tests/fixtures/pkcs1-test-key.pem");
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let key = SigningKey::from_pem("100", pem.as_bytes()).unwrap();
        let keys = KeySet::new(key, vec![]);
        let token = keys.active().sign(&claims());
        assert_eq!(keys.verify(&token).unwrap().kid, "100");
        // Re-encoded as PKCS#8, it is the same key.
        let pkcs8 = keys.active().to_pkcs8_pem().unwrap();
        assert_eq!(
            SigningKey::from_pem("100", pkcs8.as_bytes()).unwrap().jwk(),
            keys.active().jwk()
        );
    }

    #[test]
    fn jwks_lists_every_key() {
        let keys = KeySet::new(
            SigningKey::generate("100").unwrap(),
            vec![SigningKey::generate("99").unwrap()],
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
