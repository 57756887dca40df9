//! `POST /oauth2/revoke` (RFC 7009) and `POST /oauth2/introspect` (RFC 7662) over real HTTP,
//! with the revoked tokens held in memory (the cluster-backed list is tested in
//! tests/integration/revocation.rs).

use bootstrap_token_operator::token::{Claims, KeySet, LocalKey, VersionClaim, new_jti};
use serde_json::{Value, json};

use crate::harness::*;

const SEED1: &str = "f7d42348-c647-4efb-a52d-4c5787421e72:f6h1FTI8Q3-7UScPZDzfXA";
const BOOTSTRAP: &str = "f7d42348-c647-4efb-a52d-4c5787421e00:f6h1FTI8Q3-7UScPZDzfXA";
const ADMIN: &str = "admin:admin-secret";

fn config() -> String {
    format!(
        "{SEED_CONFIG}    - clientId: admin\n      \
         clientSecret: {{hash: \"sha256:16175223c8ddce5ace0493c948569c211b03c4c6bb3d3e484434999448cffe01\"}}\n      \
         revokeAny: true\n  publicUrl: https://tokens.example.com\n"
    )
}

fn post(server: &Server, path: &str, credentials: Option<&str>, form: &str) -> Reply {
    let mut args = vec!["-d".to_string(), form.to_string()];
    if let Some(credentials) = credentials {
        args.extend(["-u".to_string(), credentials.to_string()]);
    }
    args.push(format!("{}{path}", server.url));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args)
}

fn introspect(server: &Server, credentials: &str, token: &str) -> Value {
    let reply = post(
        server,
        "/oauth2/introspect",
        Some(credentials),
        &format!("token={token}"),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    reply.json()
}

fn revoke(server: &Server, credentials: &str, token: &str) -> Reply {
    post(
        server,
        "/oauth2/revoke",
        Some(credentials),
        &format!("token={token}&token_type_hint=access_token"),
    )
}

fn access_token(server: &Server) -> String {
    post(
        server,
        "/oauth2/token",
        Some(SEED1),
        "grant_type=client_credentials",
    )
    .token()
    .0["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn signed(keys: &KeySet, edit: impl FnOnce(&mut Claims)) -> String {
    let now = jiff::Timestamp::now().as_second();
    let mut claims = Claims {
        iss: "urn:com:networknt:oauth2:v1".into(),
        aud: "urn:com.networknt".into(),
        exp: now + 600,
        jti: new_jti(),
        iat: now,
        nbf: now - 120,
        version_claim: VersionClaim::Version,
        version: "1.0".into(),
        client_id: "f7d42348-c647-4efb-a52d-4c5787421e72".into(),
        scope: vec!["petstore.r".into()],
        sid: None,
    };
    edit(&mut claims);
    futures::executor::block_on(keys.active().sign(&claims)).unwrap()
}

#[test]
fn a_client_revokes_its_token_and_introspection_says_so() {
    let server = Server::start(&config());
    let token = access_token(&server);
    let active = introspect(&server, SEED1, &token);
    let claims = claims(&token);
    assert_eq!(active["active"], true);
    assert_eq!(active["client_id"], "f7d42348-c647-4efb-a52d-4c5787421e72");
    assert_eq!(active["sub"], active["client_id"]);
    assert_eq!(active["scope"], "petstore.r petstore.w");
    assert_eq!(active["token_type"], "Bearer");
    for claim in ["exp", "iat", "jti", "iss", "aud"] {
        assert_eq!(active[claim], claims[claim], "{claim}");
    }
    // Any authenticated client may introspect.
    assert_eq!(introspect(&server, ADMIN, &token)["active"], true);

    // Another client may not revoke it: an error, and the token stays active.
    let refused = revoke(&server, &format!("{SEED4_ID}:{SEED4_SECRET}"), &token);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["error"], "unauthorized_client");
    assert!(!refused.body.contains(&token));
    assert_eq!(introspect(&server, SEED1, &token)["active"], true);

    let revoked = revoke(&server, SEED1, &token);
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(introspect(&server, SEED1, &token), json!({"active": false}));
    // Revoking again, or a token that never was ours, is still 200 (RFC 7009 §2.2).
    assert_eq!(revoke(&server, SEED1, &token).status, 200);
    assert_eq!(revoke(&server, SEED1, "not-a-jwt").status, 200);

    // The re-use cache never hands the revoked token out again.
    let next = access_token(&server);
    assert_ne!(next, token);
    assert_eq!(introspect(&server, SEED1, &next)["active"], true);
    // The first revocation and the repeated one; the garbage token is "ignored".
    assert_eq!(server.metrics.count("revocation", "revoked"), 2);
    assert_eq!(server.metrics.count("revocation", "ignored"), 1);
}

#[test]
fn an_admin_client_revokes_any_token() {
    let server = Server::start(&config());
    let bootstrap = post(
        &server,
        "/oauth2/token",
        Some(BOOTSTRAP),
        "grant_type=bootstrap_token&sid=com.networknt.a",
    )
    .token()
    .0["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let active = introspect(&server, SEED1, &bootstrap);
    assert_eq!(active["sid"], "com.networknt.a");
    assert_eq!(active["client_id"], BOOTSTRAP_ID);
    assert_eq!(revoke(&server, SEED1, &bootstrap).status, 400);
    assert_eq!(revoke(&server, ADMIN, &bootstrap).status, 200);
    assert_eq!(introspect(&server, SEED1, &bootstrap)["active"], false);
}

#[test]
fn inactive_tokens_say_nothing_more() {
    let server = Server::start(&config());
    let now = jiff::Timestamp::now().as_second();
    let stranger = KeySet::new(LocalKey::generate("7").unwrap(), vec![]);
    let forged = KeySet::new(LocalKey::generate("100").unwrap(), vec![]);
    let good = signed(&KEYS, |_| {});
    assert_eq!(introspect(&server, SEED1, &good)["active"], true);
    for (what, token) in [
        ("expired", signed(&KEYS, |c| c.exp = now - 1)),
        ("not yet valid", signed(&KEYS, |c| c.nbf = now + 600)),
        ("unknown key", signed(&stranger, |_| {})),
        ("forged", signed(&forged, |_| {})),
        ("malformed", "a.b.c".to_string()),
        ("tampered", format!("{good}x")),
    ] {
        assert_eq!(
            introspect(&server, SEED1, &token),
            json!({"active": false}),
            "{what}"
        );
    }
}

#[test]
fn bad_requests_change_nothing() {
    let server = Server::start(&config());
    let token = access_token(&server);
    for path in ["/oauth2/introspect", "/oauth2/revoke"] {
        let anonymous = post(&server, path, None, &format!("token={token}"));
        assert_eq!(anonymous.status, 401, "{path}: {}", anonymous.body);
        assert!(anonymous.header("www-authenticate").is_some());
        let wrong = post(
            &server,
            path,
            Some("f7d42348-c647-4efb-a52d-4c5787421e72:wrong"),
            &format!("token={token}"),
        );
        assert_eq!(wrong.status, 401, "{path}");
        let missing = post(&server, path, Some(SEED1), "token_type_hint=access_token");
        assert_eq!(missing.status, 400, "{path}");
        assert_eq!(missing.json()["error"], "invalid_request");
        let huge = format!("token={}", "a".repeat(70 * 1024));
        let reply = post(&server, path, Some(SEED1), &huge);
        assert_eq!(reply.status, 413, "{path}");
        let get = curl(&[&format!("{}{path}", server.url)]);
        assert_eq!(get.status, 405, "{path}");
        assert_eq!(get.header("allow"), Some("POST"));
    }
    assert_eq!(introspect(&server, SEED1, &token)["active"], true);
}

#[test]
fn metadata_advertises_both_endpoints() {
    let server = Server::start(&config());
    let metadata = curl(&[&format!(
        "{}/.well-known/oauth-authorization-server",
        server.url
    )])
    .json();
    assert_eq!(
        metadata["revocation_endpoint"],
        "https://tokens.example.com/oauth2/revoke"
    );
    assert_eq!(
        metadata["introspection_endpoint"],
        "https://tokens.example.com/oauth2/introspect"
    );
    assert_eq!(
        metadata["introspection_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
}
