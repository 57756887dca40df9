//! Each seed document's example request, replayed with curl as the document writes it.

use crate::harness::*;

/// Seed 000: the bootstrap token, with the seed's Basic header and `Transfer-Encoding: chunked`.
#[test]
fn seed_000_bootstrap_token_with_basic_header_and_chunked_body() {
    let server = Server::start(SEED_CONFIG);
    let url = format!("{}/oauth2/token", server.url);
    let reply = curl(&[
        "-H",
        "Authorization: Basic ZjdkNDIzNDgtYzY0Ny00ZWZiLWE1MmQtNGM1Nzg3NDIxZTAwOmY2aDFGVEk4UTMtN1VTY1BaRHpmWEE=",
        "-H",
        "Host: localhost",
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "-H",
        "Transfer-Encoding: chunked",
        "-X",
        "POST",
        "-d",
        "grant_type=bootstrap_token&sid=com.networknt.petstore-1.0.0",
        &url,
    ]);
    let (json, claims) = reply.token();
    let token = json["access_token"].as_str().unwrap();
    assert_eq!(json["token_type"], "bearer");
    assert_eq!(json["expires_in"], 315_360_000);
    assert_eq!(json["scope"], BOOTSTRAP_SCOPE);
    // Header and claim order exactly as the seed's token.
    assert_eq!(header_b64(token), "eyJraWQiOiIxMDAiLCJhbGciOiJSUzI1NiJ9");
    assert_eq!(
        key_order(&payload(token)),
        [
            "iss",
            "aud",
            "exp",
            "jti",
            "iat",
            "nbf",
            "version",
            "client_id",
            "scope",
            "sid"
        ]
    );
    assert_eq!(claims["iss"], "urn:com:networknt:oauth2:v1");
    assert_eq!(claims["aud"], "urn:com.networknt");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        315_360_000
    );
    assert_eq!(
        claims["iat"].as_i64().unwrap() - claims["nbf"].as_i64().unwrap(),
        120
    );
    assert_eq!(claims["jti"].as_str().unwrap().len(), 22);
    assert_eq!(claims["version"], "1.0");
    assert_eq!(claims["client_id"], BOOTSTRAP_ID);
    assert_eq!(claims["scope"], serde_json::json!([BOOTSTRAP_SCOPE]));
    assert_eq!(claims["sid"], "com.networknt.petstore-1.0.0");
    assert!(KEYS.verify(token).is_ok());
}

/// Seed 000's other way in: `client_id`/`client_secret` in the body form. Extra form fields
/// never become claims (light-oauth2 copied them in).
#[test]
fn seed_000_bootstrap_token_with_body_credentials() {
    let server = Server::start(SEED_CONFIG);
    let reply = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "--data-urlencode",
        &format!("client_id={BOOTSTRAP_ID}"),
        "--data-urlencode",
        &format!("client_secret={SEED_SECRET}"),
        "-d",
        "grant_type=bootstrap_token&sid=com.networknt.petstore-1.0.0&role=admin&client_id_extra=x&exp=1",
        &format!("{}/oauth2/token", server.url),
    ]);
    let (_, claims) = reply.token();
    assert_eq!(claims["sid"], "com.networknt.petstore-1.0.0");
    assert_eq!(claims.as_object().unwrap().len(), 10, "{claims}");
    assert!(claims.get("role").is_none());
}

/// Seed 001: raw `id:secret` after `Basic`, client_credentials; the secret is stored in
/// light-oauth2's PBKDF2 format.
#[test]
fn seed_001_client_credentials_with_raw_basic_pair() {
    let server = Server::start(SEED_CONFIG);
    let reply = curl(&[
        "-k",
        "-H",
        "Authorization: Basic f7d42348-c647-4efb-a52d-4c5787421e72:f6h1FTI8Q3-7UScPZDzfXA",
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "-X",
        "POST",
        "-d",
        "grant_type=client_credentials",
        &format!("{}/oauth2/token", server.url),
    ]);
    let (json, claims) = reply.token();
    let token = json["access_token"].as_str().unwrap();
    assert_eq!(
        key_order(&reply.body),
        ["access_token", "token_type", "expires_in", "scope"]
    );
    assert_eq!(json["token_type"], "bearer");
    assert_eq!(json["expires_in"], 600);
    assert_eq!(json["scope"], "petstore.r petstore.w");
    assert_eq!(header_b64(token), "eyJraWQiOiIxMDAiLCJhbGciOiJSUzI1NiJ9");
    assert_eq!(
        key_order(&payload(token)),
        [
            "iss",
            "aud",
            "exp",
            "jti",
            "iat",
            "nbf",
            "version",
            "client_id",
            "scope"
        ]
    );
    assert_eq!(claims["client_id"], SEED1_ID);
    assert_eq!(
        claims["scope"],
        serde_json::json!(["petstore.r", "petstore.w"])
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
    assert!(claims.get("sid").is_none());
}

/// Seed 001's first example asks for authorization_code, which this server does not do.
#[test]
fn seed_001_authorization_code_is_an_unsupported_grant() {
    let server = Server::start(SEED_CONFIG);
    let reply = curl(&[
        "-H",
        "Authorization: Basic f7d42348-c647-4efb-a52d-4c5787421e72:f6h1FTI8Q3-7UScPZDzfXA",
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "-X",
        "POST",
        "-d",
        "grant_type=authorization_code&code=c0iAfPAeTk2BpiPWj-CYPQ",
        &format!("{}/oauth2/token", server.url),
    ]);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"], "unsupported_grant_type");
    assert_eq!(reply.json()["code"], "ERR12001");
}

/// Seed 002: `--data-urlencode` of every field, the secret written percent-encoded
/// (`%40` for `@`) at the `/auth/token` path.
#[test]
fn seed_002_data_urlencode_at_auth_token() {
    let server = Server::start(SEED_CONFIG);
    let reply = curl(&[
        "--location",
        "--request",
        "POST",
        &format!("{}/auth/token", server.url),
        "--header",
        "Content-Type: application/x-www-form-urlencoded",
        "--data-urlencode",
        "client_id=client3x3mPl3",
        "--data-urlencode",
        "client_secret=s3cr3Tp%40ass",
        "--data-urlencode",
        "grant_type=client_credentials",
        "--data-urlencode",
        "scope=openid accountId username roles permissions status entityUser",
    ]);
    let (json, claims) = reply.token();
    assert_eq!(json["expires_in"], 600);
    assert_eq!(
        json["scope"],
        "openid accountId username roles permissions status entityUser"
    );
    assert_eq!(claims["client_id"], "client3x3mPl3");
    assert_eq!(claims["scope"].as_array().unwrap().len(), 7);

    // The secret as it really is works too.
    let reply = curl(&[
        "--request",
        "POST",
        &format!("{}/auth/token", server.url),
        "--data-urlencode",
        "client_id=client3x3mPl3",
        "--data-urlencode",
        "client_secret=s3cr3Tp@ass",
        "--data-urlencode",
        "grant_type=client_credentials",
        "--data-urlencode",
        "scope=openid",
    ]);
    let (json, _) = reply.token();
    assert_eq!(json["scope"], "openid");
}

/// Seed 003, JSON body: audience asked for, token re-used with `expires_in` counting down.
#[test]
fn seed_003_json_body_with_audience_and_reuse() {
    let server = Server::start(SEED_CONFIG);
    let url = format!("{}/oauth/token", server.url);
    let body = format!(
        r#"{{ "client_id":"YOUR-CLIENT-ID", "client_secret":"YOUR-CLIENT-SECRET", "audience":"{SEED3_AUDIENCE}", "grant_type":"client_credentials" }}"#
    );
    let request = || {
        curl(&[
            "-X",
            "POST",
            &url,
            "-H",
            "content-type: application/json",
            "-d",
            &body,
        ])
    };
    let first = request();
    let (json, claims) = first.token();
    assert_eq!(json["expires_in"], 86_400);
    assert_eq!(claims["aud"], SEED3_AUDIENCE);
    assert_eq!(claims["client_id"], "YOUR-CLIENT-ID");

    let second = request();
    let (again, _) = second.token();
    assert_eq!(
        again["access_token"], json["access_token"],
        "the cached token is served again"
    );
    let remaining = again["expires_in"].as_i64().unwrap();
    assert!((86_399..=86_400).contains(&remaining), "{remaining}");
    assert_eq!(server.metrics.count("client_credentials", "reused"), 1);
    assert_eq!(server.metrics.count("client_credentials", "issued"), 1);
}

/// Seed 003, form body via `--data-urlencode`; an audience the client may not use is 403.
#[test]
fn seed_003_form_body_and_forbidden_audience() {
    let server = Server::start(SEED_CONFIG);
    let url = format!("{}/oauth/token", server.url);
    let request = |audience: &str| {
        curl(&[
            "-X",
            "POST",
            &url,
            "-H",
            "content-type: application/x-www-form-urlencoded",
            "--data-urlencode",
            "client_id=YOUR-CLIENT-ID",
            "--data-urlencode",
            "client_secret=YOUR-CLIENT-SECRET",
            "--data-urlencode",
            &format!("audience={audience}"),
            "--data-urlencode",
            "grant_type=client_credentials",
        ])
    };
    let (json, claims) = request(SEED3_AUDIENCE).token();
    assert_eq!(json["token_type"], "bearer");
    assert_eq!(claims["aud"], SEED3_AUDIENCE);

    let forbidden = request("https://api.bokbasen.io/orders/");
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["error"], "access_denied");
    assert_eq!(forbidden.json()["code"], "ERR12902");
}

/// Seed 004: `POST /oauth`, Basic base64 of an unencoded secret with `$` and `+`.
#[test]
fn seed_004_basic_base64_with_unencoded_plus() {
    let server = Server::start(SEED_CONFIG);
    let reply = curl(&[
        "-X",
        "POST",
        &format!("{}/oauth", server.url),
        "-H",
        "Host: dmo.metapack.com",
        "-H",
        "Authorization: Basic MURSMzQzNEtERkpMUjMyTDUzTDQyMzVKNjp3cWUzNHR5eWg3Njc5am9ra0RhJDdkZjQ2YmJiYmp1aStiNy1zZGZzZGZZ",
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "-d",
        "grant_type=client_credentials",
    ]);
    let (json, claims) = reply.token();
    assert_eq!(json["expires_in"], 3600);
    assert_eq!(json["token_type"], "bearer");
    assert_eq!(
        json["scope"],
        "can-create-locations can-delete-own-locations can-update-own-locations can-create-own-location-rules"
    );
    assert_eq!(claims["client_id"], SEED4_ID);

    // curl's own `-u` does the same base64 of the unencoded pair.
    let reply = curl(&[
        "-X",
        "POST",
        &format!("{}/oauth", server.url),
        "-u",
        &format!("{SEED4_ID}:{SEED4_SECRET}"),
        "-d",
        "grant_type=client_credentials&scope=can-create-locations",
    ]);
    assert_eq!(reply.token().0["scope"], "can-create-locations");
}
