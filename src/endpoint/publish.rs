//! What the endpoint publishes about its keys: the JWKS, each key's certificate (light-oauth2's
//! key service) and the RFC 8414 metadata document.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::OnceCell;

use serde::Serialize;

use super::config::Grant;
use crate::token::{CertificateError, KeySet, Signer, self_signed_pem};

/// Built once per key set: the keys never change while the process runs. The JWKS needs no
/// signature; each certificate does, so it is made on first request and kept — a signer that is
/// down (a KMS) costs the certificate, never the JWKS.
pub struct Published {
    pub jwks: Vec<u8>,
    /// PEM X.509 certificate per `kid`, once made.
    certs: HashMap<String, (Arc<dyn Signer>, OnceCell<String>)>,
}

impl Published {
    pub fn new(keys: &KeySet) -> Result<Published, String> {
        let jwks = serde_json::to_vec(&keys.jwks()).map_err(|e| format!("JWKS: {e}"))?;
        let certs = keys
            .all()
            .iter()
            .map(|key| {
                (
                    key.kid().to_string(),
                    (key.signer().clone(), OnceCell::new()),
                )
            })
            .collect();
        Ok(Published { jwks, certs })
    }

    /// The certificate of `kid`; `None` when there is no such key.
    pub async fn certificate(&self, kid: &str) -> Option<Result<&String, CertificateError>> {
        let (signer, cert) = self.certs.get(kid)?;
        Some(
            cert.get_or_try_init(|| self_signed_pem(signer.clone()))
                .await,
        )
    }
}

const AUTH_METHODS: [&str; 2] = ["client_secret_basic", "client_secret_post"];

/// RFC 8414 §2. There is no authorization endpoint, so no response types.
#[derive(Serialize)]
pub struct Metadata<'a> {
    pub issuer: &'a str,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub revocation_endpoint: String,
    pub introspection_endpoint: String,
    pub grant_types_supported: [&'static str; 2],
    pub token_endpoint_auth_methods_supported: [&'static str; 2],
    pub revocation_endpoint_auth_methods_supported: [&'static str; 2],
    pub introspection_endpoint_auth_methods_supported: [&'static str; 2],
    pub response_types_supported: [&'static str; 0],
}

impl<'a> Metadata<'a> {
    pub fn new(issuer: &'a str, base_url: &str) -> Self {
        let base = base_url.trim_end_matches('/');
        Metadata {
            issuer,
            token_endpoint: format!("{base}/oauth2/token"),
            jwks_uri: format!("{base}/oauth2/keys"),
            revocation_endpoint: format!("{base}/oauth2/revoke"),
            introspection_endpoint: format!("{base}/oauth2/introspect"),
            grant_types_supported: Grant::ALL.map(Grant::name),
            token_endpoint_auth_methods_supported: AUTH_METHODS,
            revocation_endpoint_auth_methods_supported: AUTH_METHODS,
            introspection_endpoint_auth_methods_supported: AUTH_METHODS,
            response_types_supported: [],
        }
    }
}
