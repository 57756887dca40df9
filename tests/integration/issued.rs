//! Tokens of the `bootstrap_token` grant through the real API server and the endpoint over HTTP:
//! each is recorded (an `IssuedToken`) before it is handed out, listed, capped per sid, dropped
//! once revoked or expired, counted for its key's rotation; without the API server, no token.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use bootstrap_token_operator::revocation::{
    IssuedToken, IssuedTokenSpec, RevocationReason, RevokedToken, record_name,
};
use bootstrap_token_operator::token::rotation::{KEY_LABEL, PHASE, RETIRED_AT};
use bootstrap_token_operator::token::{LocalKey, Signer};
use testenv::TestEnv;

use crate::process::{Replica, config_file, spawn_replica, spawn_replica_in, wait_ready_replica};
use crate::revocation::{
    BOOTSTRAP_ID, BOOTSTRAP_SECRET, CLIENTS, active, bootstrap_grant as grant, jti, post, revoke,
    wait_inactive,
};
use crate::support::*;

/// Grant tokens live 20 s (long enough for the cap steps, short enough to see them swept); two
/// per sid. Continues the `revocation:` section CLIENTS ends with.
const CAPPED: &str = r#"  issuedPerService: 2
bootstrap:
  lifetime: 20s
  minLifetime: 1s
"#;

fn config(namespace: &str, text: &str) -> std::path::PathBuf {
    config_file(namespace, &format!("{CLIENTS}{text}"))
}

/// The grant as the bootstrap client: the status and the body.
async fn ask(replica: &Replica, sid: &str) -> (u16, Value) {
    post(
        replica,
        "/oauth2/token",
        BOOTSTRAP_ID,
        BOOTSTRAP_SECRET,
        &[("grant_type", "bootstrap_token"), ("sid", sid)],
    )
    .await
}

fn issued(namespace: &str, client: kube::Client) -> Api<IssuedToken> {
    Api::namespaced(client, namespace)
}

async fn record(namespace: &str, token: &str) -> Option<IssuedToken> {
    issued(namespace, admin().await)
        .get_opt(&record_name(&jti(token)))
        .await
        .expect("reading an IssuedToken")
}

async fn wait_unrecorded(namespace: &str, token: &str, what: &str) {
    eventually(what, || async {
        record(namespace, token).await.is_none().then_some(())
    })
    .await;
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("a JWT")
        .kid
        .expect("a kid")
}

#[tokio::test(flavor = "multi_thread")]
async fn grant_tokens_are_recorded_listed_capped_and_dropped() {
    let ns = TestEnv::global().namespace("issued").await;
    let replica = spawn_replica(&ns, "a", &config(&ns, CAPPED));
    wait_ready_replica(&replica).await;

    // Recorded before the answer: the record is there as soon as the token is.
    let first = grant(&replica, "com.example.svc").await;
    let claims = payload(&first);
    let spec = record(&ns, &first).await.expect("an IssuedToken").spec;
    assert_eq!(spec.token_id, jti(&first));
    assert_eq!(spec.service_id, "com.example.svc");
    assert_eq!(spec.client_id, BOOTSTRAP_ID);
    assert_eq!(spec.key_id, kid(&first));
    let exp = claims["exp"].as_i64().unwrap();
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(
        spec.expires_at,
        jiff::Timestamp::from_second(exp).unwrap().to_string()
    );
    // To the millisecond, within a second of `iat` (signed first, recorded after).
    let recorded: jiff::Timestamp = spec.issued_at.parse().unwrap();
    assert!(
        (0..=1).contains(&(recorded.as_second() - iat)),
        "{recorded} vs {iat}"
    );
    // Listed, with the operator's own read rights (kubectl get issuedtokens -n <ns>).
    let listed = issued(&ns, TestEnv::global().operator_client().await)
        .list(&ListParams::default())
        .await
        .expect("the operator may list IssuedTokens")
        .items;
    assert!(
        listed.iter().any(|r| r.spec.token_id == jti(&first)),
        "{listed:?}"
    );

    // Two per sid: a third revokes the oldest of that sid, and only of that sid.
    let other = grant(&replica, "com.example.other").await;
    let second = grant(&replica, "com.example.svc").await;
    let third = grant(&replica, "com.example.svc").await;
    wait_inactive(&replica, &first, "the oldest of the sid revoked at the cap").await;
    for token in [&second, &third, &other] {
        assert!(
            active(&replica, token).await,
            "the newer and other sids stay"
        );
    }
    let revoked = Api::<RevokedToken>::namespaced(admin().await, &ns)
        .get(&record_name(&jti(&first)))
        .await
        .expect("a RevokedToken for the oldest");
    assert_eq!(revoked.spec.reason, RevocationReason::ServiceCapReached);
    wait_unrecorded(&ns, &first, "the revoked token's record dropped").await;

    revoke(&replica, "admin", &second).await;
    assert!(!active(&replica, &second).await);
    wait_unrecorded(&ns, &second, "a record dropped after its revocation").await;

    // Records beyond the cap that no grant revoked (two replicas granting at once, a failed
    // revocation; written here as those replicas would): the leader's sweep revokes the oldest.
    let records = issued(&ns, admin().await);
    for (jti, ms) in [("race-b", 2), ("race-a", 1), ("race-c", 3)] {
        let spec = IssuedTokenSpec {
            token_id: jti.into(),
            key_id: kid(&third),
            client_id: BOOTSTRAP_ID.into(),
            service_id: "com.example.race".into(),
            issued_at: jiff::Timestamp::from_millisecond(1_800_000_000_000 + ms)
                .unwrap()
                .to_string(),
            expires_at: "2100-01-01T00:00:00Z".into(),
        };
        records
            .create(
                &PostParams::default(),
                &IssuedToken::new(&record_name(jti), spec),
            )
            .await
            .expect("writing an IssuedToken");
    }
    let revoked = eventually("the sweep to revoke the oldest beyond the cap", || async {
        Api::<RevokedToken>::namespaced(admin().await, &ns)
            .get_opt(&record_name("race-a"))
            .await
            .ok()?
    })
    .await;
    assert_eq!(revoked.spec.reason, RevocationReason::ServiceCapReached);
    eventually("its record dropped", || async {
        records
            .get_opt(&record_name("race-a"))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    for jti in ["race-b", "race-c"] {
        assert!(
            records.get_opt(&record_name(jti)).await.unwrap().is_some(),
            "{jti} kept"
        );
    }

    // After exp, the record goes too.
    assert!(record(&ns, &third).await.is_some());
    eventually_within(
        Duration::from_secs(60),
        "the record of an expired token swept",
        || async { record(&ns, &third).await.is_none().then_some(()) },
    )
    .await;
    assert!(!active(&replica, &third).await);
}

/// With the API server down the token cannot be recorded: 503, and no token in the answer.
#[tokio::test(flavor = "multi_thread")]
async fn no_token_leaves_unrecorded() {
    // A private control plane: stopping the shared one would break every other test.
    let env = tokio::task::spawn_blocking(TestEnv::start)
        .await
        .unwrap()
        .expect("private control plane");
    let ns = env.namespace("issued-outage").await;
    let path = env.dir().join("issued-outage-config.yaml");
    std::fs::write(&path, CLIENTS).unwrap();
    let replica = spawn_replica_in(&env, &ns, "a", &path);
    wait_ready_replica(&replica).await;
    grant(&replica, "com.example.svc").await;

    env.stop_apiserver();
    let (status, body) = ask(&replica, "com.example.svc").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(body["code"], "ERR12914");
    assert!(body.get("access_token").is_none(), "{body}");
    env.stop();
}

/// Manual rotation with a 2 s prepublish and endpoint tokens of 3 s at most (so endpoint tokens
/// hold the superseded key 3 s): it stays in the JWKS while a grant token it signed is alive (the
/// leader counts it), and is retired once that token is revoked.
const ROTATING: &str = r#"
signing:
  rotation: {prepublish: 2s}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn rotation_keeps_a_key_while_a_grant_token_of_it_lives() {
    let ns = TestEnv::global().namespace("issued-rotation").await;
    let clients = CLIENTS.replacen("endpoint:\n", "endpoint:\n  accessTokenLifetime: 3s\n", 1);
    let path = config_file(&ns, &format!("{clients}{ROTATING}"));
    let replica = spawn_replica(&ns, "a", &path);
    wait_ready_replica(&replica).await;
    let held = grant(&replica, "com.example.svc").await;
    let old = kid(&held);

    let key = LocalKey::generate("x").unwrap().named(None);
    let new = key.kid().to_string();
    let added: Secret = serde_json::from_value(json!({
        "metadata": {"name": "next-key", "labels": {KEY_LABEL: "true"}},
        "stringData": {"key.pem": key.to_pkcs8_pem().unwrap()},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin().await, &ns)
        .create(&PostParams::default(), &added)
        .await
        .expect("the administrator's key Secret");
    // Polled on the phase the leader notes, not by asking for tokens: each would be one more
    // grant token under the old key.
    eventually("the new key signs", || async {
        let notes = secret(&ns, "next-key").await?.metadata.annotations?;
        (notes.get(PHASE)? == "active").then_some(())
    })
    .await;
    assert_eq!(kid(&grant(&replica, "com.example.later").await), new);
    // The leader counts the grant token under the old key, past the endpoint tokens' drain...
    let left = format!("bootstrap_token_signing_key_tokens_left{{kid=\"{old}\"}}");
    eventually("the grant token counted under the old key", || async {
        (replica.process.metric(&left).await? == 1.0).then_some(())
    })
    .await;
    let base = || async { secret(&ns, "bootstrap-token-signing-key").await.unwrap() };
    let retired = |secret: Secret| {
        secret
            .metadata
            .annotations
            .is_some_and(|notes| notes.contains_key(RETIRED_AT))
    };
    assert!(!retired(base().await), "kept while the token lives");
    assert!(
        active(&replica, &held).await,
        "the grant token still verifies"
    );

    // ...and retires it once that token is revoked.
    revoke(&replica, "admin", &held).await;
    eventually("the old key retired", || async {
        retired(base().await).then_some(())
    })
    .await;
}
