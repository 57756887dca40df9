//! Keys and discovery, and tokens verified by an independent JWT implementation that knows
//! only the JWKS fetched over HTTP.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::harness::*;

#[test]
fn jwks_at_every_path_lists_every_key() {
    let server = Server::start(SEED_CONFIG);
    let mut documents = Vec::new();
    for path in ["/oauth2/keys", "/oauth2/key", "/.well-known/jwks.json"] {
        let reply = curl(&[&format!("{}{path}", server.url)]);
        assert_eq!(reply.status, 200, "{path}");
        assert!(
            reply
                .header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
        documents.push(reply.json());
    }
    assert!(documents.windows(2).all(|w| w[0] == w[1]));
    let keys = documents[0]["keys"].as_array().unwrap();
    let kids: Vec<&str> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, ["100", "99"], "the rotated-out key is published too");
    for key in keys {
        let fields: Vec<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, ["kty", "kid", "use", "alg", "n", "e"]);
        assert_eq!(key["kty"], "RSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "RS256");
        assert_eq!(key["e"], "AQAB");
    }
}

/// jsonwebtoken's own RSA verification, fed only the JWKS from the wire.
#[test]
fn tokens_verify_with_the_published_jwks_alone() {
    let server = Server::start(SEED_CONFIG);
    let jwks: JwkSet =
        serde_json::from_str(&curl(&[&format!("{}/.well-known/jwks.json", server.url)]).body)
            .unwrap();
    let requests = [
        vec![
            "-u",
            "f7d42348-c647-4efb-a52d-4c5787421e72:f6h1FTI8Q3-7UScPZDzfXA",
            "-d",
            "grant_type=client_credentials",
        ],
        vec![
            "-u",
            "f7d42348-c647-4efb-a52d-4c5787421e00:f6h1FTI8Q3-7UScPZDzfXA",
            "-d",
            "grant_type=bootstrap_token&sid=com.networknt.petstore-1.0.0",
        ],
    ];
    for args in requests {
        let mut args = args.clone();
        let url = format!("{}/oauth2/token", server.url);
        args.push(&url);
        let (json, _) = curl(&args).token();
        let token = json["access_token"].as_str().unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        let jwk = jwks
            .find(header.kid.as_deref().unwrap())
            .expect("kid is published");
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["urn:com.networknt"]);
        validation.set_issuer(&["urn:com:networknt:oauth2:v1"]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).expect("verifies");
        assert_eq!(data.claims["version"], "1.0");

        // One flipped signature byte and it no longer verifies.
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
        let forged = format!("{signed}.{flipped}{}", &signature[1..]);
        assert!(jsonwebtoken::decode::<Value>(&forged, &key, &validation).is_err());
    }
}

/// light-oauth2's key service: the certificate of the key, as PEM, carrying that public key.
#[test]
fn certificate_per_kid() {
    let server = Server::start(SEED_CONFIG);
    for kid in ["100", "99"] {
        let reply = curl(&[&format!("{}/oauth2/key/{kid}", server.url)]);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/text"));
        let block = pem::parse(reply.body.as_bytes()).expect("PEM");
        assert_eq!(block.tag(), "CERTIFICATE");
        let spki = KEYS.get(kid).unwrap().signer().public_key().pkcs1_der();
        assert!(
            block
                .contents()
                .windows(spki.len())
                .any(|w| w == spki.as_slice()),
            "the certificate of {kid} carries its public key"
        );
    }
    let again = curl(&[&format!("{}/oauth2/key/100", server.url)]);
    let first = curl(&[&format!("{}/oauth2/key/100", server.url)]);
    assert_eq!(again.body, first.body, "built once, not per request");
}

/// RFC 8414 metadata comes from configuration only: without `publicUrl` it is not served, and
/// a request's `Host` header never shapes it.
#[test]
fn authorization_server_metadata() {
    let unset = Server::start(SEED_CONFIG);
    let path = "/.well-known/oauth-authorization-server";
    let reply = curl(&["-H", "Host: evil.example", &format!("{}{path}", unset.url)]);
    assert_eq!(reply.status, 404);
    let json = reply.json();
    assert_eq!(json["code"], "ERR12908");
    assert!(
        json["error_description"]
            .as_str()
            .unwrap()
            .contains("endpoint.publicUrl"),
        "{json}"
    );
    assert!(!reply.body.contains("evil"), "{}", reply.body);

    let server = Server::start(&format!(
        "{SEED_CONFIG}  publicUrl: https://tokens.example.com/\n"
    ));
    for host in ["Host: evil.example", "Host: 127.0.0.1"] {
        let reply = curl(&["-H", host, &format!("{}{path}", server.url)]);
        assert_eq!(reply.status, 200);
        assert!(!reply.body.contains("evil"), "{}", reply.body);
        let json = reply.json();
        assert_eq!(json["issuer"], "urn:com:networknt:oauth2:v1");
        assert_eq!(
            json["token_endpoint"],
            "https://tokens.example.com/oauth2/token"
        );
        assert_eq!(json["jwks_uri"], "https://tokens.example.com/oauth2/keys");
        assert_eq!(
            json["grant_types_supported"],
            serde_json::json!(["client_credentials", "bootstrap_token"])
        );
        assert_eq!(
            json["token_endpoint_auth_methods_supported"],
            serde_json::json!(["client_secret_basic", "client_secret_post"])
        );
    }
}
