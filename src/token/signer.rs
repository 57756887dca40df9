use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use super::Claims;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key {kid:?}: not PEM: {source}")]
    NotPem { kid: String, source: pem::PemError },
    #[error(
        "key {kid:?}: PEM block {tag:?} is not an RSA private key (want \"RSA PRIVATE KEY\" or \"PRIVATE KEY\")"
    )]
    WrongPemTag { kid: String, tag: String },
    #[error("key {kid:?}: rejected: {reason}")]
    Rejected { kid: String, reason: String },
    #[error("RSA key generation failed")]
    Generation,
}

/// An RSA key parsed once and held in memory: re-parsing per token costs ~3× the signing rate.
pub struct SigningKey {
    kid: String,
    pair: RsaKeyPair,
    /// base64url of `{"kid":…,"alg":"RS256"}`, the same for every token this key signs.
    header_b64: String,
    public: PublicKeyComponents<Vec<u8>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    kid: &'a str,
    alg: &'static str,
}

impl SigningKey {
    /// Parses a PEM RSA private key, PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`).
    pub fn from_pem(kid: &str, pem_text: &[u8]) -> Result<Self, KeyError> {
        let block = pem::parse(pem_text).map_err(|source| KeyError::NotPem {
            kid: kid.to_string(),
            source,
        })?;
        let rejected = |e: aws_lc_rs::error::KeyRejected| KeyError::Rejected {
            kid: kid.to_string(),
            reason: e.to_string(),
        };
        let pair = match block.tag() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(block.contents()).map_err(rejected)?,
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(block.contents()).map_err(rejected)?,
            other => {
                return Err(KeyError::WrongPemTag {
                    kid: kid.to_string(),
                    tag: other.to_string(),
                });
            }
        };
        Ok(Self::new(kid, pair))
    }

    pub fn generate(kid: &str) -> Result<Self, KeyError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generation)?;
        Ok(Self::new(kid, pair))
    }

    fn new(kid: &str, pair: RsaKeyPair) -> Self {
        let header = serde_json::to_vec(&Header { kid, alg: "RS256" }).expect("header serialises");
        let public = PublicKeyComponents::from(pair.public_key());
        SigningKey {
            kid: kid.to_string(),
            header_b64: URL_SAFE_NO_PAD.encode(header),
            pair,
            public,
            rng: SystemRandom::new(),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PKCS#8 PEM, for storing a generated key in a Secret.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        let der = self.pair.as_der().map_err(|_| KeyError::Generation)?;
        Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref())))
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.public
            .as_der()
            .map(|der| der.as_ref().to_vec())
            .expect("a parsed key pair has encodable public components")
    }

    /// Big-endian modulus and exponent, as a JWK's `n` and `e` want them.
    pub fn public_components(&self) -> (&[u8], &[u8]) {
        (&self.public.n, &self.public.e)
    }

    /// The JWK of the public key (RFC 7517), as light-oauth2's key service and JWKS clients expect.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&self.public.n),
            "e": URL_SAFE_NO_PAD.encode(&self.public.e),
        })
    }

    /// Signs the claims into a compact JWS: header.payload.signature, each base64url.
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).expect("claims serialise");
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 360);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let mut signature = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                token.as_bytes(),
                &mut signature,
            )
            .expect("signing with a validated RSA key pair cannot fail");
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        token
    }
}
