//! What the endpoint publishes about its keys: the JWKS, each key's certificate (light-oauth2's
//! key service) and the RFC 8414 metadata document.

use std::collections::HashMap;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_RSA_SHA256};
use serde::Serialize;

use super::config::{BOOTSTRAP_TOKEN, CLIENT_CREDENTIALS};
use crate::token::KeySet;

/// Built once per key set: the keys never change while the process runs.
pub struct Published {
    pub jwks: Vec<u8>,
    /// PEM X.509 certificate per `kid`.
    pub certs: HashMap<String, String>,
}

impl Published {
    pub fn new(keys: &KeySet) -> Result<Published, String> {
        let jwks = serde_json::to_vec(&keys.jwks()).map_err(|e| format!("JWKS: {e}"))?;
        let mut certs = HashMap::new();
        for key in keys.all() {
            let kid = key.kid();
            let pem = key.to_pkcs8_pem().map_err(|e| e.to_string())?;
            let pair = KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &PKCS_RSA_SHA256)
                .map_err(|e| format!("key {kid:?}: {e}"))?;
            let mut params = CertificateParams::default();
            let mut name = DistinguishedName::new();
            name.push(
                DnType::CommonName,
                format!("bootstrap-token-operator signing key {kid}"),
            );
            params.distinguished_name = name;
            let cert = params
                .self_signed(&pair)
                .map_err(|e| format!("certificate for key {kid:?}: {e}"))?;
            certs.insert(kid.to_string(), cert.pem());
        }
        Ok(Published { jwks, certs })
    }
}

/// RFC 8414 §2. There is no authorization endpoint, so no response types.
#[derive(Serialize)]
pub struct Metadata<'a> {
    pub issuer: &'a str,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub grant_types_supported: [&'static str; 2],
    pub token_endpoint_auth_methods_supported: [&'static str; 2],
    pub response_types_supported: [&'static str; 0],
}

impl<'a> Metadata<'a> {
    pub fn new(issuer: &'a str, base_url: &str) -> Self {
        let base = base_url.trim_end_matches('/');
        Metadata {
            issuer,
            token_endpoint: format!("{base}/oauth2/token"),
            jwks_uri: format!("{base}/oauth2/keys"),
            grant_types_supported: [CLIENT_CREDENTIALS, BOOTSTRAP_TOKEN],
            token_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post"],
            response_types_supported: [],
        }
    }
}
