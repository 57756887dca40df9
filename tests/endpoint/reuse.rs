//! Token re-use (seed 003): the same client, scope and audience get the cached token while
//! enough of it remains, with `expires_in` counting down.

use std::time::{Duration, Instant};

use crate::harness::*;

fn seed1(server: &Server, body: &str) -> (serde_json::Value, serde_json::Value) {
    curl(&[
        "-u",
        "f7d42348-c647-4efb-a52d-4c5787421e72:f6h1FTI8Q3-7UScPZDzfXA",
        "-d",
        body,
        &format!("{}/oauth2/token", server.url),
    ])
    .token()
}

/// With the defaults (10-minute tokens, re-use while half remains) the second request is a hit.
#[test]
fn defaults_reuse_per_client_scope_and_audience() {
    let server = Server::start(SEED_CONFIG);
    let (first, _) = seed1(&server, "grant_type=client_credentials");
    let (second, _) = seed1(
        &server,
        "grant_type=client_credentials&scope=petstore.w%20petstore.r",
    );
    assert_eq!(
        first["access_token"], second["access_token"],
        "same scope in another order is the same token"
    );
    assert!(second["expires_in"].as_i64().unwrap() <= 600);
    let (narrower, claims) = seed1(&server, "grant_type=client_credentials&scope=petstore.r");
    assert_ne!(narrower["access_token"], first["access_token"]);
    assert_eq!(claims["scope"], serde_json::json!(["petstore.r"]));
    assert_eq!(server.metrics.count("client_credentials", "reused"), 1);
    assert_eq!(server.metrics.count("client_credentials", "issued"), 2);

    // Bootstrap tokens are always signed anew: each names a service and lives ten years.
    let bootstrap = || {
        curl(&[
            "-u",
            "f7d42348-c647-4efb-a52d-4c5787421e00:f6h1FTI8Q3-7UScPZDzfXA",
            "-d",
            "grant_type=bootstrap_token&sid=com.networknt.a",
            &format!("{}/oauth2/token", server.url),
        ])
        .token()
        .0["access_token"]
            .clone()
    };
    assert_ne!(bootstrap(), bootstrap());
}

#[test]
fn reuse_can_be_switched_off() {
    let server = Server::start(&format!("{SEED_CONFIG}  reuse: {{enabled: false}}\n"));
    let (first, _) = seed1(&server, "grant_type=client_credentials");
    let (second, _) = seed1(&server, "grant_type=client_credentials");
    assert_ne!(first["access_token"], second["access_token"]);
    assert_eq!(second["expires_in"], 600);
    assert_eq!(server.metrics.count("client_credentials", "reused"), 0);
}

/// A token is served again only while `minRemaining` is left; then a new one is signed.
#[test]
fn a_token_with_too_little_left_is_replaced() {
    let config = format!("{SEED_CONFIG}  accessTokenLifetime: 3s\n  reuse: {{minRemaining: 2s}}\n")
        .replace("      tokenLifetime: 24h\n", "")
        .replace("      tokenLifetime: 1h\n", "");
    let server = Server::start(&config);
    let (first, _) = seed1(&server, "grant_type=client_credentials");
    assert_eq!(first["expires_in"], 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (next, _) = seed1(&server, "grant_type=client_credentials");
        if next["access_token"] != first["access_token"] {
            assert_eq!(next["expires_in"], 3);
            break;
        }
        assert!(
            next["expires_in"].as_i64().unwrap() >= 2,
            "served with less than minRemaining: {next}"
        );
        assert!(Instant::now() < deadline, "the token was never replaced");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.metrics.count("client_credentials", "reused") >= 1);
}
