//! Each key's self-signed X.509 certificate (light-oauth2's key service serves one per `kid`),
//! signed through [`Signer::sign`], so a key whose private half never leaves a KMS gets one too.

use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, PKCS_RSA_SHA256};

use super::signer::{SignError, Signer};

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error(transparent)]
    Signing(#[from] SignError),
    #[error("certificate for key {kid:?}: {reason}")]
    Build { kid: String, reason: String },
}

/// rcgen signs synchronously; this bridges its call to the async signer from a blocking thread.
struct RemoteKey {
    signer: Arc<dyn Signer>,
    public_der: Vec<u8>,
    runtime: tokio::runtime::Handle,
    failure: std::sync::Mutex<Option<SignError>>,
}

impl rcgen::PublicKeyData for RemoteKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_der
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_RSA_SHA256
    }
}

impl rcgen::SigningKey for RemoteKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.runtime
            .block_on(self.signer.sign(msg))
            .map_err(|error| {
                *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                rcgen::Error::RemoteKeyError
            })
    }
}

/// The PEM certificate of `signer`'s public key, its signature made by `signer`.
pub async fn self_signed_pem(signer: Arc<dyn Signer>) -> Result<String, CertificateError> {
    let kid = signer.kid().to_string();
    let key = RemoteKey {
        public_der: signer.public_key().pkcs1_der(),
        signer,
        runtime: tokio::runtime::Handle::current(),
        failure: Default::default(),
    };
    let build_failed = |reason: String| CertificateError::Build {
        kid: kid.clone(),
        reason,
    };
    let built = tokio::task::spawn_blocking(move || {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            format!("bootstrap-token-operator signing key {}", key.signer.kid()),
        );
        params.distinguished_name = name;
        let result = params.self_signed(&key);
        (
            result,
            key.failure.into_inner().unwrap_or_else(|e| e.into_inner()),
        )
    })
    .await
    .map_err(|e| build_failed(e.to_string()))?;
    match built {
        (Ok(cert), _) => Ok(cert.pem()),
        (Err(_), Some(signing)) => Err(signing.into()),
        (Err(e), None) => Err(build_failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::LocalKey;
    use futures::future::BoxFuture;

    #[tokio::test]
    async fn the_certificate_is_signed_by_the_key_it_names() {
        let key = Arc::new(LocalKey::generate("100").unwrap());
        let pem_text = self_signed_pem(key.clone()).await.unwrap();
        let der = pem::parse(&pem_text).unwrap().into_contents();
        let public = key.public_key().pkcs1_der();
        assert!(
            der.windows(public.len()).any(|w| w == public),
            "the certificate holds the signer's public key"
        );
        // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }
        let (certificate, _) = split_tlv(&der);
        let body = &certificate[header_len(certificate)..];
        let (tbs, rest) = split_tlv(body);
        let (_algorithm, rest) = split_tlv(rest);
        let (bit_string, _) = split_tlv(rest);
        let signature = &bit_string[header_len(bit_string) + 1..];
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            &public,
        )
        .verify(tbs, signature)
        .expect("the certificate's signature verifies with its own key");
    }

    fn header_len(der: &[u8]) -> usize {
        if der[1] & 0x80 == 0 {
            2
        } else {
            2 + usize::from(der[1] & 0x7f)
        }
    }

    /// The first DER element (tag, length and content) and what follows it.
    fn split_tlv(der: &[u8]) -> (&[u8], &[u8]) {
        let len = if der[1] & 0x80 == 0 {
            usize::from(der[1])
        } else {
            der[2..header_len(der)]
                .iter()
                .fold(0, |acc, &b| acc << 8 | usize::from(b))
        };
        der.split_at(header_len(der) + len)
    }

    #[derive(Debug)]
    struct Broken(crate::token::RsaPublicKey);

    impl Signer for Broken {
        fn kid(&self) -> &str {
            "broken"
        }
        fn public_key(&self) -> &crate::token::RsaPublicKey {
            &self.0
        }
        fn sign<'a>(&'a self, _: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SignError>> {
            Box::pin(async {
                Err(SignError {
                    kid: "broken".into(),
                    reason: "KMS unreachable".into(),
                })
            })
        }
    }

    #[tokio::test]
    async fn a_signing_failure_is_reported_as_such() {
        let public = LocalKey::generate("x").unwrap().public_key().clone();
        let error = self_signed_pem(Arc::new(Broken(public))).await.unwrap_err();
        assert!(
            matches!(&error, CertificateError::Signing(e) if e.reason == "KMS unreachable"),
            "{error}"
        );
    }
}
