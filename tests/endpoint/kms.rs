//! Issue 14 over real HTTP: the endpoint signs with a key in a KMS (local-kms through the AWS
//! SDK); both grants work, tokens verify with the JWKS and with the key's certificate (signed
//! through the KMS too), a KMS outage answers 503 and the endpoint recovers by itself.

use std::time::Duration;

use bootstrap_token_operator::token::store::KeyProvider;

use crate::harness::*;
use crate::local_kms::Kms;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A KMS with one signing key, and an endpoint signing with it as kid `100`.
fn start(runtime: &tokio::runtime::Runtime, config: &str) -> (Kms, String, Server) {
    let (kms, key_id) = runtime.block_on(async {
        let kms = Kms::start().await;
        let key_id = kms.create_signing_key().await;
        (kms, key_id)
    });
    let source = kms.source("100", &key_id);
    let server = Server::start_with(config, move || KeyProvider::from_kms(source));
    (kms, key_id, server)
}

fn bootstrap_request(server: &Server) -> Reply {
    curl(&[
        "-u",
        &format!("{BOOTSTRAP_ID}:{SEED_SECRET}"),
        "-d",
        "grant_type=bootstrap_token&sid=com.networknt.petstore-1.0.0",
        &format!("{}/oauth2/token", server.url),
    ])
}

fn client_credentials_request(server: &Server) -> Reply {
    curl(&[
        "-u",
        &format!("{SEED1_ID}:{SEED_SECRET}"),
        "-d",
        "grant_type=client_credentials",
        &format!("{}/oauth2/token", server.url),
    ])
}

#[test]
fn tokens_signed_in_the_kms_verify_with_the_jwks_and_the_certificate() {
    let runtime = runtime();
    let (kms, key_id, server) = start(&runtime, SEED_CONFIG);
    let (bootstrap, _) = bootstrap_request(&server).token();
    let (access, _) = client_credentials_request(&server).token();
    let tokens =
        [&bootstrap, &access].map(|json| json["access_token"].as_str().unwrap().to_string());
    for token in &tokens {
        assert_eq!(header_b64(token), "eyJraWQiOiIxMDAiLCJhbGciOiJSUzI1NiJ9");
    }

    // The JWKS publishes the KMS's key, not one made here.
    let jwks = curl(&[&format!("{}/oauth2/keys", server.url)]).json();
    let public = runtime.block_on(kms.public_key_pem(&key_id));
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    for token in &tokens {
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .expect("verifies with the KMS's public key");
    }
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks["keys"][0]["kid"], "100");

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/endpoint/verify_certificate.py"
    );
    let Some(stdout) = python(script, &[&server.url], &tokens.join("\n")) else {
        return;
    };
    let verified: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(verified.len(), 2, "{stdout}");
    assert_eq!(verified[0]["claims"]["sid"], "com.networknt.petstore-1.0.0");
    assert_eq!(verified[1]["claims"]["client_id"], SEED1_ID);
}

/// KMS down: tokens and certificates get 503 `temporarily_unavailable`, the JWKS stays up, and
/// a `client_credentials` token signed before the outage is still re-used (the cache is on by
/// default, which also saves a KMS call per request). KMS back: signing works again by itself.
#[test]
fn a_kms_outage_answers_503_and_recovers() {
    let runtime = runtime();
    let (kms, _, server) = start(&runtime, SEED_CONFIG);
    let (before, _) = client_credentials_request(&server).token();

    kms.server.stop();
    let reply = bootstrap_request(&server);
    assert_eq!(reply.status, 503, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(body["code"], "ERR12920");
    assert!(!body.to_string().contains("eyJ"), "no token in a failure");
    let certificate = curl(&[&format!("{}/oauth2/key/100", server.url)]);
    assert_eq!(certificate.status, 503, "{}", certificate.body);
    assert_eq!(
        curl(&[&format!("{}/oauth2/keys", server.url)]).status,
        200,
        "the JWKS needs no signature"
    );
    let (reused, _) = client_credentials_request(&server).token();
    assert_eq!(reused["access_token"], before["access_token"]);
    assert!(
        !server
            .logs()
            .contains(before["access_token"].as_str().unwrap()),
        "tokens are never logged"
    );

    runtime
        .block_on(kms.server.restart())
        .expect("local-kms restarts");
    server.wait_for(
        "bootstrap tokens again",
        Duration::from_secs(30),
        |server| bootstrap_request(server).status == 200,
    );
    let certificate = curl(&[&format!("{}/oauth2/key/100", server.url)]);
    assert_eq!(certificate.status, 200, "{}", certificate.body);
    assert!(certificate.body.starts_with("-----BEGIN CERTIFICATE-----"));
}

/// KMS signs at most 4096 bytes as `RAW`; a longer signing input (a token with many scopes) is
/// sent as its SHA-256 digest. Both are plain RS256 signatures of the input.
#[test]
fn short_and_long_signing_inputs_verify() {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    use bootstrap_token_operator::token::Signer;

    let runtime = runtime();
    runtime.block_on(async {
        let kms = Kms::start().await;
        let key_id = kms.create_signing_key().await;
        let key = kms
            .source("100", &key_id)
            .connect()
            .await
            .expect("the key loads");
        let public =
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public_key().pkcs1_der());
        for len in [1, 4096, 4097, 20_000] {
            let input = vec![b'x'; len];
            let signature = key.sign(&input).await.expect("the KMS signs");
            assert_eq!(signature.len(), 256);
            public
                .verify(&input, &signature)
                .unwrap_or_else(|_| panic!("the signature of {len} bytes verifies"));
        }
    });
}
