//! Issue 15: workload identity through the real API server. Pods trade their projected
//! ServiceAccount token (here from the TokenRequest API, as `kubectl create token SA --audience
//! <ours>` gets it) for a short-lived token with the bootstrap claims of the BootstrapToken that
//! lists their ServiceAccount; the endpoint runs under the operator's restricted RBAC identity.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use bootstrap_token_operator::app;
use bootstrap_token_operator::config::Config;
use bootstrap_token_operator::endpoint::{self, EndpointMetrics, State};
use bootstrap_token_operator::token::store::KeyProvider;
use bootstrap_token_operator::token::{Issuer, KeySet, LocalKey};
use testenv::TestEnv;

use crate::support::*;

const ISSUER: &str = "urn:com:networknt:oauth2:v1";
const SCOPE: &str = "A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2";
const BOOTSTRAP_ID: &str = "f7d42348-c647-4efb-a52d-4c5787421e00";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// What the API server's TokenRequest answers for a ServiceAccount token's `iss`.
const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A client that needs a secret (sha256 of "secret"), to show an assertion never stands in for it.
/// The throttle lets through the refusals the tests make on purpose, all from one address.
const CONFIG: &str = r#"
bootstrap:
  scope: ["A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2"]
endpoint:
  throttle: {burst: 1000}
  workloadIdentity:
    enabled: true
  clients:
    - clientId: petstore
      clientSecret: {hash: "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"}
"#;

/// The token endpoint over real HTTP, reviewing through `env`'s API server as the operator.
struct Endpoint {
    url: String,
    metrics: EndpointMetrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    async fn start(
        env: &TestEnv,
        issuer: Arc<Issuer>,
        config_yaml: &str,
        namespaces: &[&str],
    ) -> Endpoint {
        let config = Config::parse(config_yaml).expect("test config is valid");
        let client = env.operator_client().await;
        let metrics = EndpointMetrics::new(&mut Registry::default());
        let state = Arc::new(
            State::new(
                issuer,
                config.endpoint,
                Some(client.clone()),
                metrics.clone(),
            )
            .await
            .expect("endpoint state"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let namespaces: Vec<String> = namespaces.iter().map(|ns| ns.to_string()).collect();
        let task = tokio::spawn(async move {
            let stopped = futures::FutureExt::shared(async {
                let _ = stopped.await;
            });
            let mappings = state.watch_mappings(client, &namespaces, stopped.clone());
            let (served, ()) =
                tokio::join!(endpoint::serve(state.clone(), listener, stopped), mappings);
            served.expect("the endpoint serves");
        });
        Endpoint {
            url,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    /// Posts `form`, with Basic `id:secret` when given; the status and the JSON answer.
    async fn post(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> (u16, Value) {
        let mut request = reqwest::Client::new().post(&self.url).form(form);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        let response = request.send().await.expect("the endpoint answers");
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&body).expect("a JSON answer"),
        )
    }

    /// `client_credentials` authenticated by `assertion`, plus `extra` parameters.
    async fn exchange(&self, assertion: &str, extra: &[(&str, &str)]) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
        ];
        form.extend_from_slice(extra);
        self.post(&form, None).await
    }

    /// Waits until the endpoint has listed the BootstrapTokens (503 until then) and `assertion`
    /// gets a token.
    async fn exchanged(&self, assertion: &str, extra: &[(&str, &str)]) -> Value {
        eventually("a token for the assertion", || async {
            let (status, body) = self.exchange(assertion, extra).await;
            (status == 200).then_some(body)
        })
        .await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the endpoint stops")
            .unwrap();
    }
}

async fn create_service_account(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> ServiceAccount {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &sa)
        .await
        .expect("ServiceAccount created")
}

/// What `kubectl create token NAME --audience AUDIENCE` does: the TokenRequest API.
async fn token_for(client: &kube::Client, namespace: &str, name: &str, audience: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    api.create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("a token")
        .token
}

/// A ServiceAccount token made as kube-apiserver makes them, signed with its own key, expiring
/// at `exp`: only the API server's key makes it, so only `exp` can be wrong with it.
fn forged(env: &TestEnv, sa: &ServiceAccount, audience: &str, exp: i64) -> String {
    let pem = std::fs::read(env.service_account_signing_key_path()).expect("the SA signing key");
    let key = EncodingKey::from_ec_pem(&pem).expect("an ECDSA key");
    let namespace = sa.metadata.namespace.clone().unwrap();
    let name = sa.metadata.name.clone().unwrap();
    let now = jiff::Timestamp::now().as_second();
    let claims = json!({
        "aud": [audience],
        "exp": exp,
        "iat": now - 3600,
        "iss": SA_ISSUER,
        "jti": format!("forged-{exp}"),
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": sa.metadata.uid.clone().unwrap()},
        },
        "nbf": now - 3600,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
    });
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).expect("signing")
}

/// Verifies `token` against the endpoint's JWKS (over HTTP) and returns its claims.
async fn verified(endpoint: &Endpoint, token: &str) -> Value {
    let jwks_url = endpoint.url.replace("/oauth2/token", "/oauth2/keys");
    let body = reqwest::get(&jwks_url)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let jwks: JwkSet = serde_json::from_slice(&body).expect("a JWKS");
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let key = DecodingKey::from_jwk(jwks.find(&kid).expect("the kid is published")).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["urn:com.networknt"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("the token verifies with the published key")
        .claims
}

fn bt_with(name: &str, sid: &str, accounts: &[&str]) -> Value {
    bt_manifest(name, json!({"serviceId": sid, "serviceAccounts": accounts}))
}

/// Tokens `issuer` issued to workload identities so far.
fn issued(issuer: &Issuer) -> u64 {
    issuer.issued_count("bootstrap", endpoint::workload::ISSUED_REASON)
}

/// The token of the TokenRequest API, for our audience, gets a light-4j token with the mapped
/// claims, verified against the JWKS; and every way an assertion must fail fails with nothing
/// issued.
#[tokio::test]
async fn a_service_account_token_gets_the_mapped_token_and_nothing_else_does() {
    let env = TestEnv::global();
    let ns = env.namespace("wid").await;
    let other_ns = env.namespace("wid-other").await;
    let admin = admin().await;
    let operator = Operator::start_watching(&[&ns, &other_ns], CONFIG).await;
    let api_sa = create_service_account(&admin, &ns, "api").await;
    for name in ["lonely", "gone", "worker", "elsewhere"] {
        create_service_account(&admin, &ns, name).await;
    }
    apply_bt(&ns, bt_with("svc", "com.example.wid", &["api"])).await;
    apply_bt(&ns, bt_with("first", "com.example.first", &["worker"])).await;
    apply_bt(&ns, bt_with("second", "com.example.second", &["worker"])).await;
    // "elsewhere" is mapped, but in another namespace: that is not its namespace's mapping.
    apply_bt(
        &other_ns,
        bt_with("svc", "com.example.other", &["elsewhere"]),
    )
    .await;
    let endpoint =
        Endpoint::start(env, operator.ctx.issuer.clone(), CONFIG, &[&ns, &other_ns]).await;

    let assertion = token_for(&admin, &ns, "api", ISSUER).await;
    let body = endpoint.exchanged(&assertion, &[]).await;
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(
        body["expires_in"], 600,
        "the endpoint's access-token lifetime"
    );
    assert_eq!(body["scope"], SCOPE);
    let claims = verified(&endpoint, body["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["client_id"], BOOTSTRAP_ID);
    assert_eq!(claims["scope"], json!([SCOPE]));
    assert_eq!(claims["sid"], "com.example.wid");
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
    assert_eq!(
        issued(&operator.ctx.issuer),
        1,
        "counted with its own reason"
    );

    // The README's curl, reading the token from a file as a pod does.
    let file = env.dir().join(format!("{ns}-token"));
    std::fs::write(&file, &assertion).unwrap();
    let (file_arg, url) = (
        format!("client_assertion@{}", file.display()),
        endpoint.url.clone(),
    );
    // On a blocking thread: the endpoint answers on this test's runtime.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "-d", "grant_type=client_credentials", "-d"])
            .arg(format!("client_assertion_type={JWT_BEARER}"))
            .args(["--data-urlencode", &file_arg, &url])
            .output()
            .expect("curl runs")
    })
    .await
    .unwrap();
    let body: Value = serde_json::from_slice(&out.stdout).expect("a JSON answer");
    let claims = verified(&endpoint, body["access_token"].as_str().expect("a token")).await;
    assert_eq!(claims["sid"], "com.example.wid");
    // client_credentials only.
    let (status, body) = endpoint
        .post(
            &[
                ("grant_type", "bootstrap_token"),
                ("sid", "com.example.wid"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
            ],
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );

    // Several mappings: the request names one.
    let worker = token_for(&admin, &ns, "worker", ISSUER).await;
    let (status, body) = endpoint.exchange(&worker, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert_eq!(body["code"], "ERR12943");
    let body = endpoint
        .exchanged(&worker, &[("sid", "com.example.second")])
        .await;
    let claims = verified(&endpoint, body["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["sid"], "com.example.second");
    // Nothing in the request widens a claim.
    let (status, body) = endpoint.exchange(&assertion, &[("scope", "admin")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    let (status, _) = endpoint
        .exchange(&assertion, &[("audience", "https://other/")])
        .await;
    assert_eq!(status, 403);

    // A forged token made right proves the forgery is right: then only exp tells them apart.
    let now = jiff::Timestamp::now().as_second();
    let fresh = forged(env, &api_sa, ISSUER, now + 600);
    endpoint.exchanged(&fresh, &[]).await;

    // The API server sees the deletion through its own cache: wait for it to refuse the token.
    let gone = token_for(&admin, &ns, "gone", ISSUER).await;
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted ServiceAccount's token refused", || async {
        (endpoint.exchange(&gone, &[]).await.0 == 401).then_some(())
    })
    .await;
    let issued_before = issued(&operator.ctx.issuer);
    let unsigned = {
        use base64::Engine;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(json!({"alg": "none"})),
            b64(
                json!({"sub": format!("system:serviceaccount:{ns}:api"), "aud": [ISSUER], "exp": now + 600})
            )
        )
    };
    let rejected: Vec<(&str, String)> = vec![
        (
            "wrong audience",
            token_for(&admin, &ns, "api", "https://kubernetes.default.svc").await,
        ),
        ("expired", forged(env, &api_sa, ISSUER, now - 10)),
        ("a deleted ServiceAccount", gone),
        (
            "a ServiceAccount with no mapping",
            token_for(&admin, &ns, "lonely", ISSUER).await,
        ),
        (
            "a mapping in another namespace",
            token_for(&admin, &ns, "elsewhere", ISSUER).await,
        ),
        ("garbage", "garbage".into()),
        ("unsigned", unsigned),
        ("another signature", {
            let other = forged(env, &api_sa, ISSUER, now + 601);
            let (signed, _) = fresh.rsplit_once('.').unwrap();
            format!("{signed}.{}", other.rsplit_once('.').unwrap().1)
        }),
    ];
    for (what, assertion) in &rejected {
        let (status, body) = endpoint.exchange(assertion, &[]).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"], "invalid_client", "{what}");
        assert!(body.get("access_token").is_none(), "{what}");
        assert!(
            !body.to_string().contains(assertion.as_str()),
            "{what}: the assertion is not echoed"
        );
    }
    // With client credentials of a client that needs a secret: one method per request.
    for (what, form, basic) in [
        ("and a Basic secret", vec![], Some(("petstore", "secret"))),
        (
            "and a secret in the body",
            vec![("client_id", "petstore"), ("client_secret", "secret")],
            None,
        ),
        (
            "naming a client with a secret",
            vec![("client_id", "petstore")],
            None,
        ),
    ] {
        let mut form = form;
        form.extend([
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion.as_str()),
        ]);
        let (status, body) = endpoint.post(&form, basic).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{what}: {body}"
        );
    }
    assert_eq!(
        issued(&operator.ctx.issuer),
        issued_before,
        "nothing issued for any of them"
    );

    endpoint.stop().await;
    operator.stop().await;
}

/// A peer that sends forged assertions (well-formed, for our audience, with a wrong signature)
/// makes the endpoint ask the API server about each only up to the throttle's burst: then it is
/// answered 429 with no TokenReview, its genuine assertions too, until its allowance accrues.
#[tokio::test]
async fn forged_assertions_are_throttled_before_they_cost_a_review() {
    let env = TestEnv::global();
    let ns = env.namespace("wid-forged").await;
    let admin = admin().await;
    let sa = create_service_account(&admin, &ns, "api").await;
    let config_yaml = CONFIG.replace("{burst: 1000}", "{burst: 3, interval: 1h}");
    let config = Config::parse(&config_yaml).unwrap();
    let keys = KeySet::new(LocalKey::generate("100").unwrap(), vec![]);
    let issuer = Arc::new(app::issuer(
        &config,
        Arc::new(KeyProvider::from_keys(keys)),
        &mut Registry::default(),
    ));
    let endpoint = Endpoint::start(env, issuer, &config_yaml, &[&ns]).await;
    let now = jiff::Timestamp::now().as_second();
    let genuine = forged(env, &sa, ISSUER, now + 600);
    let forgery = |n: i64| {
        let other = forged(env, &sa, ISSUER, now + 601 + n);
        let (signed, _) = genuine.rsplit_once('.').unwrap();
        format!("{signed}.{}", other.rsplit_once('.').unwrap().1)
    };
    // 503 until the endpoint has listed the mappings (that is no failure of the sender's).
    eventually("the first forgery refused by the API server", || async {
        let (status, body) = endpoint.exchange(&forgery(0), &[]).await;
        (status == 401 && body["error"] == "invalid_client").then_some(())
    })
    .await;
    for n in 1..3 {
        let (status, body) = endpoint.exchange(&forgery(n), &[]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{body}"
        );
    }
    let reviews = endpoint.metrics.token_reviews.get();
    assert_eq!(reviews, 3, "one TokenReview per forgery within the burst");
    for n in 3..8 {
        let (status, body) = endpoint.exchange(&forgery(n), &[]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (429, Some("slow_down")),
            "{body}"
        );
        assert!(body.get("access_token").is_none());
    }
    let (status, _) = endpoint.exchange(&genuine, &[]).await;
    assert_eq!(status, 429, "the throttled source waits, whatever it sends");
    assert_eq!(
        endpoint.metrics.token_reviews.get(),
        reviews,
        "no TokenReview for a throttled source"
    );
    assert_eq!(endpoint.metrics.throttled.get(), 6);
    endpoint.stop().await;
}

/// `storeToken: false`: no Secret, Ready with its own reason; turning it off deletes the Secret
/// the operator kept, and never one it does not own.
#[tokio::test]
async fn store_token_false_keeps_no_secret() {
    let ns = TestEnv::global().namespace("wid-nostore").await;
    let config = format!("{CONFIG}policy:\n  - serviceIds: [\"com.example.*\"]\n");
    let operator = Operator::start(&ns, &config).await;
    let admin = admin().await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);

    apply_bt(&ns, bt_manifest("only", json!({"serviceId": "com.example.only", "storeToken": false, "serviceAccounts": ["api"]}))).await;
    let bt = wait_ready(&ns, "only").await;
    let ready = bt.ready_condition().unwrap();
    assert_eq!(ready.reason, "WorkloadIdentityOnly");
    assert!(ready.message.contains("api"), "{}", ready.message);
    assert_eq!(bt.status.as_ref().unwrap().secret_name, None);
    assert!(secret(&ns, "only-bootstrap-token").await.is_none());

    // A Secret kept before goes when storeToken turns false.
    apply_bt(
        &ns,
        bt_manifest("flip", json!({"serviceId": "com.example.flip"})),
    )
    .await;
    wait_reason(&ns, "flip", "Issued").await;
    assert!(secret(&ns, "flip-bootstrap-token").await.is_some());
    apply_bt(
        &ns,
        bt_manifest(
            "flip",
            json!({"serviceId": "com.example.flip", "storeToken": false}),
        ),
    )
    .await;
    wait_reason(&ns, "flip", "WorkloadIdentityOnly").await;
    eventually("the kept Secret deleted", || async {
        secret(&ns, "flip-bootstrap-token")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // A foreign Secret under the name is no conflict, and is left alone.
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("foreign-bootstrap-token".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    apply_bt(
        &ns,
        bt_manifest(
            "foreign",
            json!({"serviceId": "com.example.foreign", "storeToken": false}),
        ),
    )
    .await;
    wait_reason(&ns, "foreign", "WorkloadIdentityOnly").await;
    // Nor when the policy refuses the object (the operator deletes only its own Secret then).
    apply_bt(
        &ns,
        bt_manifest(
            "foreign",
            json!({"serviceId": "org.forbidden", "storeToken": false}),
        ),
    )
    .await;
    wait_reason(&ns, "foreign", "Forbidden").await;
    // Switching back issues a token again.
    apply_bt(
        &ns,
        bt_manifest(
            "only",
            json!({"serviceId": "com.example.only", "serviceAccounts": ["api"]}),
        ),
    )
    .await;
    wait_reason(&ns, "only", "Issued").await;
    assert!(secret(&ns, "only-bootstrap-token").await.is_some());
    assert!(
        secrets
            .get_opt("foreign-bootstrap-token")
            .await
            .unwrap()
            .is_some(),
        "a Secret the operator does not own is never deleted"
    );
    operator.stop().await;
}

/// The API server down: a reviewed assertion keeps working until it expires; a new one gets 503
/// `temporarily_unavailable`, never a token; all is well when the API server is back.
#[tokio::test(flavor = "multi_thread")]
async fn reviews_outlive_a_brief_api_server_outage_and_new_assertions_wait() {
    // A private control plane: stopping the shared one would break every other test.
    let env = tokio::task::spawn_blocking(TestEnv::start)
        .await
        .unwrap()
        .expect("private control plane");
    let ns = env.namespace("wid-outage").await;
    let admin = env.admin_client().await;
    let sa = create_service_account(&admin, &ns, "api").await;
    Api::<bootstrap_token_operator::resource::BootstrapToken>::namespaced(admin.clone(), &ns)
        .patch(
            "svc",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&bt_with("svc", "com.example.outage", &["api"])),
        )
        .await
        .unwrap();
    let config_yaml = CONFIG.replace(
        "    enabled: true\n  clients:",
        "    enabled: true\n    reviewCache: {maxAge: 1h}\n  clients:",
    );
    let config = Config::parse(&config_yaml).unwrap();
    assert_eq!(
        config.endpoint.workload_identity.review_cache.max_age,
        Duration::from_secs(3600)
    );
    let keys = KeySet::new(LocalKey::generate("100").unwrap(), vec![]);
    let issuer = Arc::new(app::issuer(
        &config,
        Arc::new(KeyProvider::from_keys(keys)),
        &mut Registry::default(),
    ));
    let endpoint = Endpoint::start(&env, issuer.clone(), &config_yaml, &[&ns]).await;
    let reviewed = token_for(&admin, &ns, "api", ISSUER).await;
    let new = token_for(&admin, &ns, "api", ISSUER).await;
    // Long enough to outlast stopping the API server, short enough to expire within the test.
    let short_lived_until = jiff::Timestamp::now().as_second() + 45;
    let short_lived = forged(&env, &sa, ISSUER, short_lived_until);
    endpoint.exchanged(&reviewed, &[]).await;
    endpoint.exchanged(&short_lived, &[]).await;

    env.stop_apiserver();
    let body = endpoint.exchanged(&reviewed, &[]).await;
    assert_eq!(body["expires_in"], 600);
    let issued_before = issued(&issuer);
    let (status, body) = endpoint.exchange(&new, &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(body["code"], "ERR12945");
    assert_eq!(body["statusCode"], 503);
    assert!(body.get("access_token").is_none());
    assert_eq!(issued(&issuer), issued_before, "never a token");
    // Cached until its own exp, and no longer after.
    let (status, _) = endpoint.exchange(&short_lived, &[]).await;
    assert_eq!(status, 200, "still before its exp");
    eventually_within(
        Duration::from_secs(80),
        "the short-lived assertion expired",
        || async {
            let (status, body) = endpoint.exchange(&short_lived, &[]).await;
            (status == 401 && body["error"] == "invalid_client").then_some(())
        },
    )
    .await;
    assert!(jiff::Timestamp::now().as_second() >= short_lived_until);

    env.start_apiserver().await;
    endpoint.exchanged(&new, &[]).await;
    endpoint.stop().await;
    env.stop();
}
