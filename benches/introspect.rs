//! The cost of `POST /oauth2/introspect` for an active token, against a `GET /oauth2/keys` (the
//! cached JWKS: HTTP and nothing else) on the same server in the same run. Introspection
//! authenticates the client, verifies the RS256 signature and looks the `jti` up in the
//! in-memory copy of the revoked tokens (10 000 of them here): no API server round trip.
//! Needs `wrk`. Run with `cargo bench --bench introspect`.

use std::sync::Arc;
use std::time::Duration;

use bootstrap_token_operator::app;
use bootstrap_token_operator::config::Config;
use bootstrap_token_operator::revocation::{
    Revocation, RevocationConfig, RevocationReason, Revocations,
};
use bootstrap_token_operator::token::store::KeyProvider;
use bootstrap_token_operator::token::{AccessRequest, KeySet, LocalKey};

mod common;
use common::{AUTHORIZATION, CONNECTIONS};

const REVOKED: usize = 10_000;
/// sha256 of "bench-secret", a cheap check: what is measured is the introspection itself.
const CONFIG: &str = r#"
endpoint:
  clients:
    - clientId: bench
      clientSecret: {hash: "sha256:0159438a9235d6abde38e49fb98944660d067d6b9b03d8a8f4ee4e522feb62cb"}
"#;

fn main() {
    common::require_wrk();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (base, token) = start(cores);
    let jwks_before = wrk(&format!("{base}/oauth2/keys"), None);
    let introspect = wrk(
        &format!("{base}/oauth2/introspect"),
        Some(&format!("token={token}")),
    );
    let jwks_after = wrk(&format!("{base}/oauth2/keys"), None);
    let jwks = (jwks_before + jwks_after) / 2.0;
    println!("JWKS GET: {jwks:.0} requests/s ({jwks_before:.0} before, {jwks_after:.0} after)");
    println!(
        "introspection of an active token ({REVOKED} revoked tokens held): {introspect:.0} requests/s"
    );
    println!("introspection / JWKS GET: {:.2}x", introspect / jwks);
}

/// The endpoint on 127.0.0.1 with `REVOKED` revoked tokens, and an active token to introspect.
fn start(cores: usize) -> (String, String) {
    let config = Config::parse(CONFIG).expect("bench config");
    let (address, token, _) = common::serve(config.endpoint.clone(), cores, || async move {
        let keys = KeySet::new(LocalKey::generate("bench").expect("RSA key"), vec![]);
        let revocations = Revocations::in_memory(RevocationConfig::default());
        let now = jiff::Timestamp::now().as_second();
        for i in 0..REVOKED {
            let revocation = Revocation {
                jti: format!("revoked-{i}"),
                kid: "bench".into(),
                client_id: "bench".into(),
                sid: None,
                exp: now + 3600,
                effective_at: now,
                reason: RevocationReason::Endpoint,
            };
            revocations.revoke(&revocation).await.expect("in memory");
        }
        let issuer = Arc::new(
            app::issuer(
                &config,
                Arc::new(KeyProvider::from_keys(keys)),
                &mut Default::default(),
            )
            .with_revocations(Arc::new(revocations)),
        );
        let token = issuer
            .issue_access(
                AccessRequest {
                    client_id: "bench",
                    audience: "urn:com.networknt",
                    scope: vec![],
                    lifetime: Duration::from_secs(3600),
                },
                now,
            )
            .await
            .expect("a token")
            .token;
        (issuer, token)
    });
    (format!("http://{address}"), token)
}

/// Requests per second under wrk: a GET, or a form POST of `form` (checked to be active).
fn wrk(url: &str, form: Option<&str>) -> f64 {
    let script = form.map_or_else(String::new, |form| {
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{form}\"\n\
             wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
             wrk.headers[\"Authorization\"] = \"{AUTHORIZATION}\"\n\
             function response(status, headers, body)\n\
               if not string.find(body, '\"active\":true') then error(\"not active: \" .. body) end\n\
             end\n"
        )
    });
    let (text, errors) = common::wrk(url, &script, CONNECTIONS, false);
    assert!(!errors.contains("not active"), "{errors}");
    common::field(&text, "Requests/sec:")
        .parse()
        .unwrap_or_else(|_| panic!("no Requests/sec in wrk output:\n{text}"))
}
