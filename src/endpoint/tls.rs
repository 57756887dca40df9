//! TLS for the endpoint: rustls with the aws-lc-rs provider; the certificate and key files are
//! read again every `reloadInterval` and a changed pair is served to new connections, so a
//! cert-manager renewal needs no restart.

use std::sync::{Arc, Mutex, RwLock};

use ::aws_lc_rs::digest;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use super::config::TlsConfig;

#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The served certificate and what is needed to notice that its files changed.
pub struct CertReloader {
    files: TlsConfig,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
    /// SHA-256 of the certificate and key files last loaded (the key itself is not kept).
    loaded: Mutex<[u8; 32]>,
}

impl CertReloader {
    /// Reads the files once; a pair that cannot be used is an error at start.
    pub fn new(files: &TlsConfig) -> Result<Self, String> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let (cert, key) = read_files(files)?;
        let certified = certified_key(&cert, &key, &provider)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(certified)),
        });
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(CertReloader {
            files: files.clone(),
            provider,
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            loaded: Mutex::new(fingerprint(&cert, &key)),
        })
    }

    /// Checks the files every `reloadInterval`, until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.files.reload_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let this = self.clone();
            // File reads and key parsing block; keep them off the request workers.
            if let Ok(Err(error)) =
                tokio::task::spawn_blocking(move || this.reload_if_changed()).await
            {
                tracing::warn!(%error, "keeping the current TLS certificate");
            }
        }
    }

    fn reload_if_changed(&self) -> Result<(), String> {
        let (cert, key) = read_files(&self.files)?;
        let new = fingerprint(&cert, &key);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == new {
            return Ok(());
        }
        let certified = certified_key(&cert, &key, &self.provider)?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        *loaded = new;
        tracing::info!(cert = %self.files.cert_file.display(), "reloaded the TLS certificate");
        Ok(())
    }

    /// Handshakes with the certificate current at the time.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }
}

fn read_files(files: &TlsConfig) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
    };
    Ok((read(&files.cert_file)?, read(&files.key_file)?))
}

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(&(cert.len() as u64).to_be_bytes());
    context.update(cert);
    context.update(key);
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

fn certified_key(
    cert: &[u8],
    key: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TLS certificate file: {e}"))?;
    if chain.is_empty() {
        return Err("TLS certificate file: no CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("TLS key file: {e}"))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("TLS certificate and key: {e}"))
}
