//! The cost of `POST /oauth2/introspect` for an active token, against a `GET /oauth2/keys` (the
//! cached JWKS: HTTP and nothing else) on the same server in the same run. Introspection
//! authenticates the client, verifies the RS256 signature and looks the `jti` up in the
//! in-memory copy of the revoked tokens (10 000 of them here): no API server round trip.
//! Needs `wrk`. Run with `cargo bench --bench introspect`.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bootstrap_token_operator::app;
use bootstrap_token_operator::config::Config;
use bootstrap_token_operator::endpoint::{self, EndpointMetrics, State};
use bootstrap_token_operator::revocation::{
    Revocation, RevocationConfig, RevocationReason, Revocations,
};
use bootstrap_token_operator::token::store::KeyProvider;
use bootstrap_token_operator::token::{AccessRequest, KeySet, LocalKey};

const PHASE: Duration = Duration::from_secs(8);
const CONNECTIONS: u32 = 16;
const REVOKED: usize = 10_000;
/// sha256 of "bench-secret", a cheap check: what is measured is the introspection itself.
const CONFIG: &str = r#"
endpoint:
  clients:
    - clientId: bench
      clientSecret: {hash: "sha256:0159438a9235d6abde38e49fb98944660d067d6b9b03d8a8f4ee4e522feb62cb"}
"#;
/// base64("bench:bench-secret")
const AUTHORIZATION: &str = "Basic YmVuY2g6YmVuY2gtc2VjcmV0";

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is not installed: apt-get install -y wrk");
        std::process::exit(1);
    }
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
    let (ready, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
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
            let mut registry = Default::default();
            let metrics = EndpointMetrics::new(&mut registry);
            let issuer = Arc::new(
                app::issuer(
                    &config,
                    Arc::new(KeyProvider::from_keys(keys)),
                    &mut registry,
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
            let state = State::new(issuer, config.endpoint, None, metrics)
                .await
                .expect("state");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            ready
                .send((listener.local_addr().expect("address"), token))
                .expect("bench alive");
            endpoint::serve(Arc::new(state), listener, std::future::pending())
                .await
                .expect("serve");
        });
    });
    let (address, token) = address.recv().expect("server started");
    (format!("http://{address}"), token)
}

/// Requests per second under wrk: a GET, or a form POST of `form` (checked to be active).
fn wrk(url: &str, form: Option<&str>) -> f64 {
    let mut script = String::new();
    if let Some(form) = form {
        script.push_str(&format!(
            "wrk.method = \"POST\"\nwrk.body = \"{form}\"\n\
             wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
             wrk.headers[\"Authorization\"] = \"{AUTHORIZATION}\"\n\
             function response(status, headers, body)\n\
               if not string.find(body, '\"active\":true') then error(\"not active: \" .. body) end\n\
             end\n"
        ));
    }
    let path = std::env::temp_dir().join(format!("bto-introspect-{}.lua", std::process::id()));
    std::fs::write(&path, script).expect("write wrk script");
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{}s", PHASE.as_secs()),
            "-s",
        ])
        .arg(&path)
        .arg(url)
        .output()
        .expect("wrk runs");
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "wrk failed: {text}{errors}");
    assert!(!text.contains("Non-2xx"), "requests failed:\n{text}");
    assert!(!errors.contains("not active"), "{errors}");
    text.lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"))
}
