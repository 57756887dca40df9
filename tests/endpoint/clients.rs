//! Real OAuth 2.0 client libraries obtain tokens: Rust's `oauth2` crate and Python's Authlib
//! (with PyJWT verifying against the JWKS it fetches itself).

use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenType};
use oauth2::{AuthType, ClientId, ClientSecret, RequestTokenError, Scope, TokenResponse, TokenUrl};

use crate::harness::*;

pub async fn oauth2_token(
    http: &reqwest::Client,
    token_url: &str,
    id: &str,
    secret: &str,
    auth: AuthType,
    scopes: &[&str],
) -> Result<oauth2::basic::BasicTokenResponse, String> {
    let client = BasicClient::new(ClientId::new(id.into()))
        .set_client_secret(ClientSecret::new(secret.into()))
        .set_auth_type(auth)
        .set_token_uri(TokenUrl::new(token_url.into()).unwrap());
    let mut request = client.exchange_client_credentials();
    for scope in scopes {
        request = request.add_scope(Scope::new(scope.to_string()));
    }
    request.request_async(http).await.map_err(|e| match e {
        RequestTokenError::ServerResponse(response) => response.error().to_string(),
        other => format!("{other:?}"),
    })
}

/// Redirects off, as the oauth2 crate asks of its HTTP client; rustls with aws-lc-rs.
pub fn http_client() -> reqwest::Client {
    // reqwest is built without a provider of its own; a second install is a harmless no-op.
    let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn rust_oauth2_crate_basic_and_post() {
    let server = Server::start(SEED_CONFIG);
    let http = http_client();
    let url = format!("{}/oauth2/token", server.url);

    // Basic: the crate form-urlencodes the secret before base64, as RFC 6749 says, so `+` and `$`
    // reach us encoded; seed 004's client sends them raw, and both must work.
    let token = oauth2_token(
        &http,
        &url,
        SEED4_ID,
        SEED4_SECRET,
        AuthType::BasicAuth,
        &["can-create-locations"],
    )
    .await
    .expect("token with client_secret_basic");
    assert_eq!(*token.token_type(), BasicTokenType::Bearer);
    assert_eq!(token.expires_in().unwrap().as_secs(), 3600);
    assert_eq!(
        token.scopes().unwrap(),
        &vec![Scope::new("can-create-locations".into())]
    );
    assert_eq!(claims(token.access_token().secret())["client_id"], SEED4_ID);

    let token = oauth2_token(
        &http,
        &url,
        SEED1_ID,
        SEED_SECRET,
        AuthType::RequestBody,
        &[],
    )
    .await
    .expect("token with client_secret_post");
    assert_eq!(token.expires_in().unwrap().as_secs(), 600);
    assert!(KEYS.verify(token.access_token().secret()).is_ok());

    let error = oauth2_token(
        &http,
        &url,
        SEED1_ID,
        "not-the-secret",
        AuthType::BasicAuth,
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(error, BasicErrorResponseType::InvalidClient.to_string());
    let error = oauth2_token(
        &http,
        &url,
        SEED1_ID,
        SEED_SECRET,
        AuthType::BasicAuth,
        &["admin"],
    )
    .await
    .unwrap_err();
    assert_eq!(error, BasicErrorResponseType::InvalidScope.to_string());
}

/// Authlib's OAuth2Session fetches tokens both ways; PyJWT's PyJWKClient verifies them with
/// nothing but the JWKS URL.
#[test]
fn python_authlib_and_pyjwt() {
    let server = Server::start(SEED_CONFIG);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/endpoint/oauth_clients.py"
    );
    let Some(stdout) = python(script, &[&server.url], "") else {
        return;
    };
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2, "{stdout}");
    for result in &results {
        assert_eq!(result["token_type"], "bearer");
        assert_eq!(result["verified"]["iss"], "urn:com:networknt:oauth2:v1");
    }
    assert_eq!(results[0]["verified"]["client_id"], SEED1_ID);
    assert_eq!(
        results[0]["verified"]["scope"],
        serde_json::json!(["petstore.r"])
    );
    assert_eq!(results[1]["verified"]["client_id"], SEED4_ID);
}
