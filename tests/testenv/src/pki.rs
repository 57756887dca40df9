//! A throw-away certificate authority: serving certificate for the API server, client
//! certificates for the identities, and kubeconfig files that embed them.

use base64::{Engine, engine::general_purpose::STANDARD};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::Result;

/// A PEM certificate and its PEM (PKCS#8) private key.
pub(crate) struct CertKey {
    pub cert: String,
    pub key: String,
}

pub(crate) struct Ca {
    pub cert: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new() -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "testenv-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?.pem();
        Ok(Ca {
            cert,
            issuer: Issuer::new(params, key),
        })
    }

    /// A TLS server certificate for the given DNS names / IP addresses.
    pub fn serving(&self, names: &[&str]) -> Result<CertKey> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate: the API server reads CN as the user name and O as a group.
    pub fn client(&self, user: &str, group: Option<&str>) -> Result<CertKey> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, user);
        if let Some(group) = group {
            params
                .distinguished_name
                .push(DnType::OrganizationName, group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<CertKey> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertKey {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// A kubeconfig with everything embedded, so a copy of the file stands on its own.
pub(crate) fn kubeconfig(server: &str, ca: &str, user: &str, id: &CertKey) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {user}@testenv
  context:
    cluster: testenv
    user: {user}
    namespace: default
current-context: {user}@testenv
",
        ca = STANDARD.encode(ca),
        cert = STANDARD.encode(&id.cert),
        key = STANDARD.encode(&id.key),
    )
}
