//! `make bench` (workload identity): token requests authenticated by a ServiceAccount token, per
//! second, against the real local control plane (TokenReview through kube-apiserver), with the
//! review cache and without it, and — the baseline, in the same run on the same server —
//! `client_credentials` with a secret, re-use off so every request signs as the exchange does.
//!
//! Every phase runs the same in-process load (CONCURRENCY keep-alive connections for PHASE) and
//! fails on any answer but 200. Run with `cargo bench --bench workload_identity`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use prometheus_client::registry::Registry;
use serde_json::json;

use bootstrap_token_operator::app;
use bootstrap_token_operator::config::Config;
use bootstrap_token_operator::endpoint::{self, EndpointMetrics, State};
use bootstrap_token_operator::resource::BootstrapToken;
use bootstrap_token_operator::token::store::KeyProvider;
use bootstrap_token_operator::token::{KeySet, LocalKey};
use testenv::TestEnv;

const PHASE: Duration = Duration::from_secs(8);
const CONCURRENCY: usize = 16;
const AUDIENCE: &str = "urn:com:networknt:oauth2:v1";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// sha256 of "bench-secret"; re-use off, so a client_credentials request signs every time.
const CONFIG: &str = r#"
endpoint:
  reuse: {enabled: false}
  clients:
    - clientId: bench
      clientSecret: {hash: "sha256:0159438a9235d6abde38e49fb98944660d067d6b9b03d8a8f4ee4e522feb62cb"}
  workloadIdentity:
    enabled: true
"#;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let env = TestEnv::global();
        let ns = env.namespace("bench-wid").await;
        let admin = env.admin_client().await;
        let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("api".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        accounts.create(&PostParams::default(), &sa).await.unwrap();
        let bt = json!({
            "apiVersion": "bootstraptoken.dev/v1alpha1",
            "kind": "BootstrapToken",
            "metadata": {"name": "svc"},
            "spec": {"serviceId": "com.example.bench", "serviceAccounts": ["api"], "storeToken": false},
        });
        Api::<BootstrapToken>::namespaced(admin.clone(), &ns)
            .patch("svc", &PatchParams::apply("bench").force(), &Patch::Apply(&bt))
            .await
            .unwrap();
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![AUDIENCE.into()],
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let assertion = accounts
            .create_token_request("api", &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .unwrap()
            .token;

        let keys = KeySet::new(LocalKey::generate("100").expect("RSA key"), vec![]);
        let cached_url = start(env, &ns, CONFIG, &keys).await;
        let uncached_config = CONFIG.replace(
            "    enabled: true\n",
            "    enabled: true\n    reviewCache: {enabled: false}\n",
        );
        let uncached_url = start(env, &ns, &uncached_config, &keys).await;

        let secret: Vec<(&str, &str)> = vec![
            ("grant_type", "client_credentials"),
            ("client_id", "bench"),
            ("client_secret", "bench-secret"),
        ];
        let exchange: Vec<(&str, &str)> = vec![
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &assertion),
        ];
        let baseline = load(&cached_url, &secret).await;
        let cached = load(&cached_url, &exchange).await;
        let uncached = load(&uncached_url, &exchange).await;
        // The baseline again: this machine's speed drifts within a run.
        let baseline_after = load(&cached_url, &secret).await;
        let baseline = (baseline + baseline_after) / 2.0;
        println!("client_credentials with a secret (signs each time): {baseline:.0} req/s (second run {baseline_after:.0})");
        println!("assertion exchange, review cache on: {cached:.0} req/s");
        println!("assertion exchange, review cache off (a TokenReview each): {uncached:.0} req/s");
        println!("ratio cached / uncached: {:.2}x", cached / uncached);
        println!("ratio cached / client_credentials: {:.2}x", cached / baseline);
        println!("ratio uncached / client_credentials: {:.2}x", uncached / baseline);
    });
}

/// An endpoint with `config` on 127.0.0.1, reviewing as the operator against `env`, its
/// mappings listed before it returns; runs until the process ends.
async fn start(env: &'static TestEnv, ns: &str, config: &str, keys: &KeySet) -> String {
    let config = Config::parse(config).expect("bench config");
    let client = env.operator_client().await;
    let mut registry = Registry::default();
    let issuer = Arc::new(app::issuer(
        &config,
        Arc::new(KeyProvider::from_keys(keys.clone())),
        &mut registry,
    ));
    let state = Arc::new(
        State::new(
            issuer,
            config.endpoint,
            Some(client.clone()),
            EndpointMetrics::new(&mut registry),
        )
        .await
        .expect("state"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    let namespaces = vec![ns.to_string()];
    tokio::spawn({
        let state = state.clone();
        async move {
            state
                .watch_mappings(client, &namespaces, std::future::pending())
                .await
        }
    });
    tokio::spawn(endpoint::serve(state, listener, std::future::pending()));
    url
}

/// Successful requests per second, CONCURRENCY at a time for PHASE; panics on any other answer.
async fn load(url: &str, form: &[(&str, &str)]) -> f64 {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let client = reqwest::Client::new();
    // Warm-up, and the endpoint's mappings listed: wait for the first 200.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = post(&client, url, &body).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 200 within 30 s (last {status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, url, body, count) =
                (client.clone(), url.to_string(), body.clone(), count.clone());
            tokio::spawn(async move {
                while started.elapsed() < PHASE {
                    let status = post(&client, &url, &body).await;
                    assert_eq!(status, 200, "a request failed");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("no request failed");
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn post(client: &reqwest::Client, url: &str, body: &str) -> u16 {
    client
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .expect("the endpoint answers")
        .status()
        .as_u16()
}
