//! TLS with rustls (aws-lc-rs): curl and the oauth2 crate over HTTPS, and a certificate
//! replaced on disk is served without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth2::AuthType;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_rustls::rustls;

use crate::clients::oauth2_token;
use crate::harness::*;

/// A CA and a leaf for 127.0.0.1 signed by it: (ca PEM, leaf PEM, leaf key PEM).
fn pki(name: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("test CA {name}"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("bto-endpoint-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        // Written aside and renamed, as a Secret volume swaps its files.
        let temporary = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, &path).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tls_config(dir: &Dir) -> String {
    let path = |name: &str| dir.0.join(name).display().to_string();
    format!(
        "{SEED_CONFIG}  tls:\n    certFile: {}\n    keyFile: {}\n    reloadInterval: 100ms\n",
        path("tls.crt"),
        path("tls.key")
    )
}

fn curl_with_ca(ca: &Path, url: &str) -> Option<Reply> {
    let output = std::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args([
            "-u",
            "f7d42348-c647-4efb-a52d-4c5787421e72:f6h1FTI8Q3-7UScPZDzfXA",
            "-d",
            "grant_type=client_credentials",
        ])
        .arg(url)
        .output()
        .unwrap();
    output
        .status
        .success()
        .then(|| parse_reply(&String::from_utf8_lossy(&output.stdout)))
}

/// A rustls client that trusts `ca` (PEM) alone.
fn client_config(ca: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = pem::parse(ca.as_bytes()).unwrap().into_contents();
    roots.add(ca_der.into()).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

#[test]
fn https_with_curl_and_the_certificate_reloads() {
    let dir = Dir::new();
    let (ca1, cert1, key1) = pki("one");
    let ca1_path = dir.write("ca1.pem", &ca1);
    dir.write("tls.crt", &cert1);
    dir.write("tls.key", &key1);
    let server = Server::start(&tls_config(&dir));
    assert!(server.url.starts_with("https://"));
    let url = format!("{}/oauth2/token", server.url);
    let reply = curl_with_ca(&ca1_path, &url).expect("TLS with the first CA");
    let (json, _) = reply.token();
    assert_eq!(json["expires_in"], 600);

    // A plain-HTTP client gets no answer from a TLS port.
    let plain = url.replace("https://", "http://");
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", &plain])
        .output()
        .unwrap();
    assert!(!output.status.success());

    // Replace the pair; new connections get the new certificate within a few reload intervals.
    let (ca2, cert2, key2) = pki("two");
    let ca2_path = dir.write("ca2.pem", &ca2);
    dir.write("tls.key", &key2);
    dir.write("tls.crt", &cert2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl_with_ca(&ca2_path, &url).is_none() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        curl_with_ca(&ca1_path, &url).is_none(),
        "the old certificate is no longer served"
    );

    // A broken pair on disk keeps the last good one.
    dir.write("tls.crt", "not a certificate");
    std::thread::sleep(Duration::from_millis(400));
    assert!(curl_with_ca(&ca2_path, &url).is_some());
}

#[tokio::test]
async fn rust_oauth2_crate_over_tls() {
    let dir = Dir::new();
    let (ca, cert, key) = pki("oauth2");
    dir.write("tls.crt", &cert);
    dir.write("tls.key", &key);
    let config = tls_config(&dir);
    let server = tokio::task::spawn_blocking(move || Server::start(&config))
        .await
        .unwrap();

    let http = reqwest::Client::builder()
        .use_preconfigured_tls(client_config(&ca))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let token = oauth2_token(
        &http,
        &format!("{}/oauth2/token", server.url),
        SEED1_ID,
        SEED_SECRET,
        AuthType::BasicAuth,
        &["petstore.w"],
    )
    .await
    .expect("token over TLS");
    assert_eq!(
        claims(oauth2::TokenResponse::access_token(&token).secret())["scope"],
        serde_json::json!(["petstore.w"])
    );
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
}

#[tokio::test]
async fn unusable_certificate_fails_at_start() {
    let dir = Dir::new();
    let (_, cert, _) = pki("mismatch");
    let (_, _, other_key) = pki("other");
    dir.write("tls.crt", &cert);
    dir.write("tls.key", &other_key);
    let config = bootstrap_token_operator::config::Config::parse(&tls_config(&dir)).unwrap();
    let keys =
        Arc::new(bootstrap_token_operator::token::store::KeyProvider::from_keys(KEYS.clone()));
    let mut registry = Default::default();
    let metrics = bootstrap_token_operator::endpoint::EndpointMetrics::new(&mut registry);
    let issuer = Arc::new(bootstrap_token_operator::app::issuer(
        &config,
        keys,
        &mut registry,
    ));
    let error =
        bootstrap_token_operator::endpoint::State::new(issuer, config.endpoint, None, metrics)
            .await
            .err()
            .expect("a key that does not match the certificate is refused");
    assert!(error.to_string().starts_with("endpoint.tls:"), "{error}");
}

/// Over TLS too: a peer that never starts its handshake, one that stops after it, and one that
/// sends part of a head after it are all closed in time, while a legitimate client is served.
#[test]
fn stalled_tls_connections_are_closed() {
    use tokio::io::AsyncWriteExt;

    use crate::limits::{PARTIAL_HEAD, raise_open_files_limit, runtime, until_closed};

    const PER_KIND: usize = 100;
    raise_open_files_limit();
    let dir = Dir::new();
    let (ca, cert, key) = pki("flood");
    let ca_path = dir.write("ca.pem", &ca);
    dir.write("tls.crt", &cert);
    dir.write("tls.key", &key);
    let server = Server::start(&format!(
        "{}  connections: {{headerReadTimeout: 3s, idleTimeout: 3s, tlsHandshakeTimeout: 3s}}\n",
        tls_config(&dir)
    ));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(&ca)));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let rt = runtime();
    let opened = Instant::now();
    let (silent, quiet, partial) = rt.block_on(async {
        let (mut silent, mut quiet, mut partial) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..PER_KIND {
            silent.push(
                tokio::net::TcpStream::connect(&server.address)
                    .await
                    .unwrap(),
            );
            let tcp = tokio::net::TcpStream::connect(&server.address)
                .await
                .unwrap();
            quiet.push(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .expect("handshake"),
            );
            let tcp = tokio::net::TcpStream::connect(&server.address)
                .await
                .unwrap();
            let mut tls = connector
                .connect(name.clone(), tcp)
                .await
                .expect("handshake");
            tls.write_all(PARTIAL_HEAD.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            partial.push(tls);
        }
        (silent, quiet, partial)
    });
    let url = format!("{}/oauth2/token", server.url);
    curl_with_ca(&ca_path, &url)
        .expect("a legitimate client is served during the flood")
        .token();
    assert!(
        opened.elapsed() < Duration::from_secs(3),
        "the flood was not held while the legitimate request ran"
    );
    let deadline = tokio::time::Instant::from_std(opened + Duration::from_secs(30));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for stream in silent {
            tasks.push(tokio::spawn(until_closed(stream, deadline)));
        }
        for stream in quiet {
            tasks.push(tokio::spawn(until_closed(stream, deadline)));
        }
        for stream in partial {
            tasks.push(tokio::spawn(until_closed(stream, deadline)));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            assert!(
                task.await.unwrap().is_some(),
                "connection {i} open after 30 s"
            );
        }
    });
    for phase in ["handshake", "idle", "header"] {
        let count = server.connection_timeouts(phase);
        assert!(count >= PER_KIND as f64, "{phase}: {count} timeouts");
    }
}
