//! Revocation through the real API server: `RevokedToken` records seen by every replica (two
//! operator processes over real HTTP, a restart, a leader failover), swept after the token
//! expires; re-issue, the `revoke` annotation and deletion revoke the previous token.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use bootstrap_token_operator::resource::{FINALIZER, annotations};
use bootstrap_token_operator::revocation::{RevocationReason, RevokedToken, record_name};
use bootstrap_token_operator::token::VerifyError;
use testenv::TestEnv;

use crate::process::{
    Replica, config_file, lease_holder, spawn_replica as spawn, wait_ready_replica,
};
use crate::support::*;

pub(crate) const BOOTSTRAP_ID: &str = "f7d42348-c647-4efb-a52d-4c5787421e00";
pub(crate) const BOOTSTRAP_SECRET: &str = "f6h1FTI8Q3-7UScPZDzfXA";
/// sha256 hashes of "f6h1FTI8Q3-7UScPZDzfXA" and "admin-secret", made with Python's hashlib.
pub(crate) const CLIENTS: &str = r#"
endpoint:
  clients:
    - clientId: f7d42348-c647-4efb-a52d-4c5787421e00
      clientSecret: {hash: "sha256:300b400b5caf15a3c6b85faf3d35f176d2a38fc4e037ee404385bc8c66a27936"}
      grantTypes: [bootstrap_token]
    - clientId: admin
      clientSecret: {hash: "sha256:16175223c8ddce5ace0493c948569c211b03c4c6bb3d3e484434999448cffe01"}
      revokeAny: true
    - clientId: short
      clientSecret: {hash: "sha256:16175223c8ddce5ace0493c948569c211b03c4c6bb3d3e484434999448cffe01"}
      tokenLifetime: 3s
revocation:
  sweepInterval: 1s
"#;
/// Every replica sees a revocation within this.
pub(crate) const PROPAGATION: Duration = Duration::from_secs(5);

pub(crate) async fn post(
    replica: &Replica,
    path: &str,
    id: &str,
    secret: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let reply = reqwest::Client::new()
        .post(format!("http://{}{path}", replica.endpoint))
        .basic_auth(id, Some(secret))
        .form(form)
        .send()
        .await
        .expect("the endpoint answers");
    let status = reply.status().as_u16();
    let body = reply.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

pub(crate) async fn bootstrap_grant(replica: &Replica, sid: &str) -> String {
    let (status, body) = post(
        replica,
        "/oauth2/token",
        BOOTSTRAP_ID,
        BOOTSTRAP_SECRET,
        &[("grant_type", "bootstrap_token"), ("sid", sid)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// Whether introspection on `replica`, as the admin client, calls `token` active.
pub(crate) async fn active(replica: &Replica, token: &str) -> bool {
    let (status, body) = post(
        replica,
        "/oauth2/introspect",
        "admin",
        "admin-secret",
        &[("token", token)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["active"].as_bool().expect("active is a boolean")
}

pub(crate) async fn revoke(replica: &Replica, id: &str, token: &str) {
    let (status, body) = post(
        replica,
        "/oauth2/revoke",
        id,
        "admin-secret",
        &[("token", token)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

pub(crate) async fn wait_inactive(replica: &Replica, token: &str, what: &str) {
    eventually_within(PROPAGATION, what, || async {
        (!active(replica, token).await).then_some(())
    })
    .await;
}

async fn record(namespace: &str, jti: &str) -> Option<RevokedToken> {
    Api::<RevokedToken>::namespaced(admin().await, namespace)
        .get_opt(&record_name(jti))
        .await
        .expect("reading a RevokedToken")
}

pub(crate) fn jti(token: &str) -> String {
    payload(token)["jti"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_reaches_every_replica_across_restart_and_failover() {
    let ns = TestEnv::global().namespace("revoke-replicas").await;
    let config = config_file(&ns, CLIENTS);
    let a = spawn(&ns, "a", &config);
    let b = spawn(&ns, "b", &config);
    wait_ready_replica(&a).await;
    wait_ready_replica(&b).await;

    let first = bootstrap_grant(&a, "com.example.first").await;
    assert!(active(&a, &first).await && active(&b, &first).await);
    revoke(&a, "admin", &first).await;
    assert!(!active(&a, &first).await, "at once where it was revoked");
    wait_inactive(&b, &first, "the other replica to see the revocation").await;
    let recorded = record(&ns, &jti(&first)).await.expect("a RevokedToken");
    assert_eq!(recorded.spec.reason, RevocationReason::Endpoint);
    assert_eq!(
        recorded.spec.service_id.as_deref(),
        Some("com.example.first")
    );
    assert_eq!(recorded.spec.client_id, BOOTSTRAP_ID);
    assert!(!recorded.spec.key_id.is_empty());

    // A restarted replica knows it from its first answer on.
    let mut b = b;
    b.process.kill();
    let b = spawn(&ns, "b2", &config);
    wait_ready_replica(&b).await;
    assert!(!active(&b, &first).await, "after a restart");

    // The leader dies: the survivor keeps refusing it, and records new revocations.
    eventually("a leader", || lease_holder(&ns)).await;
    let leader = lease_holder(&ns).await.unwrap();
    let (mut dead, survivor) = if leader == "a" { (a, b) } else { (b, a) };
    dead.process.kill();
    let second = bootstrap_grant(&survivor, "com.example.second").await;
    assert!(active(&survivor, &second).await);
    revoke(&survivor, "admin", &second).await;
    assert!(!active(&survivor, &second).await);
    assert!(!active(&survivor, &first).await, "after the failover");
    let restarted = spawn(&ns, "c", &config);
    wait_ready_replica(&restarted).await;
    assert!(!active(&restarted, &second).await);

    // A short-lived token's record is swept once it has expired, by the new leader: the survivor
    // or the replica started after the failover, whichever takes the Lease.
    let live = [
        survivor.process.identity.as_str(),
        restarted.process.identity.as_str(),
    ];
    eventually_within(
        Duration::from_secs(60),
        "a live replica to lead",
        || async {
            lease_holder(&ns)
                .await
                .filter(|holder| live.contains(&holder.as_str()))
                .map(|_| ())
        },
    )
    .await;
    let (status, body) = post(
        &survivor,
        "/oauth2/token",
        "short",
        "admin-secret",
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let short = body["access_token"].as_str().unwrap().to_string();
    revoke(&survivor, "short", &short).await;
    assert!(record(&ns, &jti(&short)).await.is_some());
    eventually("the expired token's record swept", || async {
        record(&ns, &jti(&short)).await.is_none().then_some(())
    })
    .await;
    assert!(
        record(&ns, &jti(&first)).await.is_some(),
        "an unexpired token's record stays"
    );
}

#[tokio::test]
async fn reissue_and_the_revoke_annotation_revoke_the_previous_token() {
    let ns = TestEnv::global().namespace("revoke-reissue").await;
    let operator = Operator::start(
        &ns,
        "bootstrap:\n  minReissueInterval: 1s\nrevocation:\n  reissueGrace: 3s\n",
    )
    .await;
    let issuer = operator.ctx.issuer.clone();
    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "com.example.svc"})),
    )
    .await;
    let first = wait_ready(&ns, "svc").await.status.unwrap();
    let first_token = token_of(&secret(&ns, "svc-bootstrap-token").await.unwrap());
    let first_jti = first.token_id.clone().unwrap();
    assert!(
        record(&ns, &first_jti).await.is_none(),
        "nothing revoked yet"
    );

    // Re-issue: the previous token is revoked, effective after the grace period.
    reissue(&ns, "svc", "1").await;
    let second = eventually("a new token", || async {
        let bt = wait_ready(&ns, "svc").await;
        let status = bt.status?;
        (status.token_id != first.token_id).then_some(status)
    })
    .await;
    let revoked = record(&ns, &first_jti)
        .await
        .expect("the previous token's record");
    assert_eq!(revoked.spec.reason, RevocationReason::Reissued);
    assert_eq!(revoked.spec.key_id, first.key_id.clone().unwrap());
    assert_eq!(revoked.spec.expires_at, first.expires_at.clone().unwrap());
    let issued = second
        .issued_at
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    let effective = revoked
        .spec
        .effective_at
        .parse::<jiff::Timestamp>()
        .unwrap();
    let grace = effective.as_second() - issued.as_second();
    assert!(
        (2..=4).contains(&grace),
        "effective {grace}s after the re-issue"
    );
    assert!(
        !issuer
            .revocations()
            .is_revoked(&first_jti, effective.as_second() - 1)
    );
    eventually("the previous token refused after the grace", || async {
        let now = jiff::Timestamp::now().as_second();
        (issuer.verify(&first_token, now).await == Err(VerifyError::Revoked)).then_some(())
    })
    .await;

    // The revoke annotation: at once, and a new token.
    let second_token = token_of(&secret(&ns, "svc-bootstrap-token").await.unwrap());
    let second_jti = second.token_id.clone().unwrap();
    let api: Api<bootstrap_token_operator::resource::BootstrapToken> =
        Api::namespaced(admin().await, &ns);
    let patch = json!({"metadata": {"annotations": {annotations::REVOKE: "leaked"}}});
    api.patch("svc", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let third = eventually("a token after the revoke annotation", || async {
        let status = wait_ready(&ns, "svc").await.status?;
        (status.token_id.as_deref() != Some(second_jti.as_str())).then_some(status)
    })
    .await;
    let revoked = record(&ns, &second_jti)
        .await
        .expect("the revoked token's record");
    assert_eq!(revoked.spec.reason, RevocationReason::RevokeRequested);
    let now = jiff::Timestamp::now().as_second();
    assert_eq!(
        issuer.verify(&second_token, now).await,
        Err(VerifyError::Revoked)
    );
    let held = secret(&ns, "svc-bootstrap-token").await.unwrap();
    assert_eq!(
        held.metadata.annotations.unwrap()[annotations::REVOKE],
        "leaked",
        "the handled value is remembered, so it fires once"
    );
    assert!(
        held.metadata
            .finalizers
            .unwrap()
            .contains(&FINALIZER.to_string())
    );
    let (issued_before, reconciles_before) = (operator.issued(), operator.reconciles());
    // Another reconcile (an unrelated annotation) issues nothing more.
    let patch = json!({"metadata": {"annotations": {"example.com/touched": "yes"}}});
    api.patch("svc", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("another reconcile", || async {
        (operator.reconciles() > reconciles_before).then_some(())
    })
    .await;
    assert_eq!(operator.issued(), issued_before);
    assert_eq!(
        wait_ready(&ns, "svc").await.status.unwrap().token_id,
        third.token_id
    );

    // Revoked elsewhere (a record written as another replica's endpoint would): the
    // controller replaces the token at once, without waiting for its periodic look.
    let third_jti = third.token_id.clone().unwrap();
    let elsewhere = RevokedToken::new(
        &record_name(&third_jti),
        bootstrap_token_operator::revocation::RevokedTokenSpec {
            token_id: third_jti.clone(),
            key_id: third.key_id.clone().unwrap(),
            client_id: BOOTSTRAP_ID.into(),
            service_id: Some("com.example.svc".into()),
            expires_at: third.expires_at.clone().unwrap(),
            effective_at: jiff::Timestamp::now().to_string(),
            reason: RevocationReason::Endpoint,
        },
    );
    Api::<RevokedToken>::namespaced(admin().await, &ns)
        .create(&Default::default(), &elsewhere)
        .await
        .unwrap();
    let third = eventually_within(
        Duration::from_secs(10),
        "a token replacing the revoked one",
        || async {
            let status = wait_ready(&ns, "svc").await.status?;
            (status.token_id.as_deref() != Some(third_jti.as_str())).then_some(status)
        },
    )
    .await;

    // Deleting the BootstrapToken: garbage collection deletes the Secret, whose finalizer waits
    // for its token to be revoked at once.
    let third_token = token_of(&held_secret(&ns).await);
    api.delete("svc", &DeleteParams::default()).await.unwrap();
    eventually("the Secret gone", || async {
        secret(&ns, "svc-bootstrap-token")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let revoked = record(&ns, third.token_id.as_deref().unwrap())
        .await
        .expect("the deleted token's record");
    assert_eq!(revoked.spec.reason, RevocationReason::Deleted);
    let now = jiff::Timestamp::now().as_second();
    assert_eq!(
        issuer.verify(&third_token, now).await,
        Err(VerifyError::Revoked)
    );
    operator.stop().await;
}

async fn held_secret(namespace: &str) -> Secret {
    secret(namespace, "svc-bootstrap-token").await.unwrap()
}

/// Deleted while the operator is down: the finalizer holds the Secret until the operator is back
/// and has revoked its token.
#[tokio::test]
async fn a_deletion_while_the_operator_is_down_is_not_missed() {
    let ns = TestEnv::global().namespace("revoke-down").await;
    let operator = Operator::start(&ns, "").await;
    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "com.example.down"})),
    )
    .await;
    let jti = wait_ready(&ns, "svc")
        .await
        .status
        .unwrap()
        .token_id
        .unwrap();
    operator.stop().await;

    Api::<bootstrap_token_operator::resource::BootstrapToken>::namespaced(admin().await, &ns)
        .delete("svc", &DeleteParams::default())
        .await
        .unwrap();
    // Garbage collection marks the Secret deleted; the finalizer keeps it.
    eventually("the Secret marked for deletion", || async {
        let held = secret(&ns, "svc-bootstrap-token").await?;
        held.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await;
    assert!(record(&ns, &jti).await.is_none());

    let operator = Operator::start(&ns, "").await;
    eventually("the Secret gone", || async {
        secret(&ns, "svc-bootstrap-token")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let revoked = record(&ns, &jti)
        .await
        .expect("revoked once the operator is back");
    assert_eq!(revoked.spec.reason, RevocationReason::Deleted);
    let list = Api::<RevokedToken>::namespaced(admin().await, &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    operator.stop().await;
}

/// Every record keeps the `kid`; by default that kid is the key's RFC 7638 thumbprint, not
/// light-oauth2's `100` (which light-4j's shipped `security.yml` maps to another certificate).
#[tokio::test]
async fn the_default_kid_is_the_keys_thumbprint() {
    let ns = TestEnv::global().namespace("revoke-kid").await;
    let operator = Operator::start(&ns, "").await;
    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "com.example.kid"})),
    )
    .await;
    let status = wait_ready(&ns, "svc").await.status.unwrap();
    let pem = secret(&ns, "bootstrap-token-signing-key")
        .await
        .expect("the key Secret")
        .data
        .unwrap()["key.pem"]
        .0
        .clone();
    let key = bootstrap_token_operator::token::LocalKey::from_pem("any", &pem)
        .unwrap()
        .named(None);
    use bootstrap_token_operator::token::Signer;
    assert_eq!(key.kid().len(), 43, "a base64url SHA-256");
    assert_eq!(status.key_id.as_deref(), Some(key.kid()));
    let token = token_of(&secret(&ns, "svc-bootstrap-token").await.unwrap());
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], key.kid());
    operator.stop().await;
}

/// Upgrading an install that signed with the old default kid `100` without setting
/// `signing.kid: "100"`: its tokens keep verifying (the same key is published under `100` too)
/// and move to the thumbprint kid by the paced re-issue, instead of failing all at once.
#[tokio::test]
async fn tokens_of_the_old_default_kid_survive_an_upgrade() {
    let ns = TestEnv::global().namespace("revoke-kid-upgrade").await;
    let old = Operator::start(&ns, "signing:\n  kid: \"100\"\n").await;
    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "com.example.upgrade"})),
    )
    .await;
    let before = wait_ready(&ns, "svc").await.status.unwrap();
    assert_eq!(before.key_id.as_deref(), Some("100"));
    let token = token_of(&secret(&ns, "svc-bootstrap-token").await.unwrap());
    old.stop().await;

    let upgraded = Operator::start(&ns, "").await;
    let keys = upgraded.keys().await;
    let kids: Vec<&str> = keys.all().iter().map(|key| key.kid()).collect();
    let thumbprint = keys.active().kid().to_string();
    assert_eq!(
        thumbprint.len(),
        43,
        "the active kid is the thumbprint: {kids:?}"
    );
    assert!(
        kids.contains(&"100"),
        "the old kid is still published: {kids:?}"
    );
    assert_eq!(
        keys.verify(&token).map(|verified| verified.kid),
        Ok("100".to_string()),
        "a token of the old kid still verifies"
    );
    eventually("the token to move to the thumbprint kid", || async {
        let status = wait_ready(&ns, "svc").await.status?;
        (status.key_id.as_deref() == Some(thumbprint.as_str())).then_some(())
    })
    .await;
    upgraded.stop().await;
}

/// `minReissueInterval` bounds issuance, not revocation: the `revoke` annotation takes the token
/// back at once even right after an issuance, the object says so (Ready=False `Revoked`, a
/// Warning event) until the replacement comes once the interval allows, and a value arriving
/// while the token is revoked already writes nothing.
#[tokio::test]
async fn the_revoke_annotation_revokes_at_once_within_the_reissue_interval() {
    const INTERVAL: i64 = 20;
    let ns = TestEnv::global().namespace("revoke-now").await;
    let operator = Operator::start(
        &ns,
        &format!("bootstrap:\n  minReissueInterval: {INTERVAL}s\n"),
    )
    .await;
    let issuer = operator.ctx.issuer.clone();
    let api: Api<bootstrap_token_operator::resource::BootstrapToken> =
        Api::namespaced(admin().await, &ns);
    let annotate = |key: &'static str, value: &'static str| {
        let api = api.clone();
        async move {
            let patch = json!({"metadata": {"annotations": {key: value}}});
            api.patch("svc", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    let revoked_now = |token: String| {
        let issuer = issuer.clone();
        async move {
            let now = jiff::Timestamp::now().as_second();
            (issuer.verify(&token, now).await == Err(VerifyError::Revoked)).then_some(())
        }
    };
    let record_writes = || {
        operator
            .writes
            .requests()
            .iter()
            .filter(|r| r.method != http::Method::GET && r.path.contains("revokedtokens"))
            .count()
    };
    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "com.example.now"})),
    )
    .await;
    let first = wait_ready(&ns, "svc").await.status.unwrap();
    let first_token = token_of(&held_secret(&ns).await);
    let first_jti = first.token_id.clone().unwrap();

    // Right after the issuance: revoked within seconds, not after the interval.
    annotate(annotations::REVOKE, "1").await;
    eventually_within(PROPAGATION, "the token revoked at once", || {
        revoked_now(first_token.clone())
    })
    .await;
    let record = record(&ns, &first_jti).await.expect("a RevokedToken");
    assert_eq!(record.spec.reason, RevocationReason::RevokeRequested);
    let waiting = wait_reason(&ns, "svc", "Revoked").await;
    let ready = waiting.ready_condition().unwrap();
    assert_eq!(ready.status, "False");
    let issued = first
        .issued_at
        .as_deref()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    let next = jiff::Timestamp::from_second(issued.as_second() + INTERVAL).unwrap();
    assert!(
        ready.message.contains(&first_jti) && ready.message.contains(&next.to_string()),
        "names the revoked token and when its replacement comes: {}",
        ready.message
    );
    eventually("a Warning event saying so", || async {
        events_regarding(&ns, "BootstrapToken", "svc")
            .await
            .iter()
            .any(|(type_, reason, _)| type_ == "Warning" && reason == "Revoked")
            .then_some(())
    })
    .await;
    assert_eq!(
        token_of(&held_secret(&ns).await),
        first_token,
        "no new token within the interval"
    );

    // Another value while the token is revoked already: a reconcile that writes nothing.
    let (writes, reconciles) = (operator.writes.get(), operator.reconciles());
    annotate(annotations::REVOKE, "2").await;
    eventually("the reconcile of the second value", || async {
        (operator.reconciles() > reconciles).then_some(())
    })
    .await;
    assert_eq!(operator.writes.get(), writes, "nothing written");
    assert_eq!(record_writes(), 1, "one record per issued token");

    // The replacement, once the interval allows, records the value it handled.
    let second = eventually_within(
        DEADLINE + Duration::from_secs(INTERVAL as u64),
        "the replacement token",
        || async {
            let status = wait_ready(&ns, "svc").await.status?;
            (status.token_id.as_deref() != Some(first_jti.as_str())).then_some(status)
        },
    )
    .await;
    let reissued = second
        .issued_at
        .as_deref()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert!(
        reissued.as_second() - issued.as_second() >= INTERVAL,
        "issued {}s after the first",
        reissued.as_second() - issued.as_second()
    );
    let held = held_secret(&ns).await;
    assert_eq!(held.annotations()[annotations::REVOKE], "2");
    let second_token = token_of(&held);
    assert!(revoked_now(second_token.clone()).await.is_none());
    assert!(
        events_for(&ns, "svc")
            .await
            .iter()
            .any(|(reason, note)| reason == "Reissued" && note.contains(annotations::REVOKE)),
        "the Reissued event says why"
    );

    // A second revoke right away, inside the new token's interval: revoked at once as well.
    annotate(annotations::REVOKE, "3").await;
    eventually_within(PROPAGATION, "the new token revoked at once", || {
        revoked_now(second_token.clone())
    })
    .await;
    wait_reason(&ns, "svc", "Revoked").await;
    assert_eq!(record_writes(), 2);
    operator.stop().await;
}
