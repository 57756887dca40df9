//! The signing key held in this process: an RSA key parsed once from PEM (or generated), kept in
//! memory. Re-parsing per token would cost ~3× the signing rate.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use futures::future::BoxFuture;

use super::signer::{RsaPublicKey, SignError, Signer};

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

pub struct LocalKey {
    kid: String,
    pair: RsaKeyPair,
    public: RsaPublicKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for LocalKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl LocalKey {
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

    /// The same key under `kid`, or under its RFC 7638 thumbprint when `kid` is `None`.
    pub fn named(mut self, kid: Option<&str>) -> Self {
        self.kid = kid.map_or_else(|| self.public.thumbprint(), str::to_string);
        self
    }

    pub fn generate(kid: &str) -> Result<Self, KeyError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generation)?;
        Ok(Self::new(kid, pair))
    }

    fn new(kid: &str, pair: RsaKeyPair) -> Self {
        let components = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        LocalKey {
            kid: kid.to_string(),
            public: RsaPublicKey {
                n: components.n,
                e: components.e,
            },
            pair,
            rng: SystemRandom::new(),
        }
    }

    /// The private key as PKCS#8 PEM, for storing a generated key in a Secret.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        let der = self.pair.as_der().map_err(|_| KeyError::Generation)?;
        Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref())))
    }

    fn sign_now(&self, signing_input: &[u8]) -> Result<Vec<u8>, SignError> {
        let mut signature = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &self.rng, signing_input, &mut signature)
            .map_err(|_| SignError {
                kid: self.kid.clone(),
                reason: "the RSA signing operation failed".into(),
            })?;
        Ok(signature)
    }
}

impl Signer for LocalKey {
    fn kid(&self) -> &str {
        &self.kid
    }

    fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    // Inline rather than spawn_blocking: a fraction of a millisecond of CPU, and the runtime has
    // one worker per core, so a hop to another thread would only add latency.
    fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SignError>> {
        Box::pin(std::future::ready(self.sign_now(signing_input)))
    }
}
