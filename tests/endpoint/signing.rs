//! Signing that fails (a key behind an API that is down): tokens and certificates get 503
//! `temporarily_unavailable` with a light-4j Status body, the JWKS stays up, and everything
//! works again once signing does.

use bootstrap_token_operator::token::KeySet;
use bootstrap_token_operator::token::store::KeyProvider;

use crate::harness::*;
use crate::signer::SwitchableSigner;

const CONFIG: &str = r#"
endpoint:
  reuse: {enabled: false}
  clients:
    - clientId: c
      clientSecret: {hash: "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"}
"#;

#[test]
fn signing_failures_answer_503_and_recover() {
    let signer = SwitchableSigner::new("100");
    signer.fail(true);
    let keys = KeySet::from_signers(signer.clone(), vec![]);
    let server = Server::start_with(CONFIG, move || KeyProvider::from_keys(keys));
    let token_request = || {
        curl(&[
            "-u",
            "c:password",
            "-d",
            "grant_type=client_credentials",
            &format!("{}/oauth2/token", server.url),
        ])
    };

    let reply = token_request();
    assert_eq!(reply.status, 503, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(body["statusCode"], 503);
    assert_eq!(body["code"], "ERR12920");
    assert_eq!(body["message"], "SIGNING_UNAVAILABLE");
    assert_eq!(body["severity"], "ERROR");
    assert_eq!(body["description"], body["error_description"]);
    assert!(!body.to_string().contains("eyJ"), "no token in a failure");
    let certificate = curl(&[&format!("{}/oauth2/key/100", server.url)]);
    assert_eq!(certificate.status, 503, "{}", certificate.body);
    assert_eq!(certificate.json()["error"], "temporarily_unavailable");
    let jwks = curl(&[&format!("{}/oauth2/keys", server.url)]);
    assert_eq!(jwks.status, 200, "the JWKS needs no signature");

    signer.fail(false);
    let reply = token_request();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (body, claims) = reply.token();
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(header_b64(token), "eyJraWQiOiIxMDAiLCJhbGciOiJSUzI1NiJ9");
    assert_eq!(claims["client_id"], "c");
    let certificate = curl(&[&format!("{}/oauth2/key/100", server.url)]);
    assert_eq!(certificate.status, 200);
    assert!(certificate.body.starts_with("-----BEGIN CERTIFICATE-----"));
}
