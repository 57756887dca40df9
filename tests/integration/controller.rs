//! Issue 3: the BootstrapToken controller, through the real API server.

use std::process::Command;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use bootstrap_token_operator::resource::{BootstrapToken, annotations};
use bootstrap_token_operator::token::KeySet;
use testenv::TestEnv;

use crate::signer::SwitchableSigner;
use crate::support::*;

/// The seed's shape, kid `100` included (set explicitly: by default the kid is the key's
/// thumbprint).
/// (`bootstrap:` last: tests append to it.)
const CONFIG: &str = r#"
signing:
  kid: "100"
bootstrap:
  scope: ["A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2"]
"#;

/// Verifies `token` with PyJWT (an implementation that shares no code with ours) against the
/// public half of the operator's signing key, and returns the header and claims PyJWT saw.
fn verify_with_pyjwt(token: &str, private_key_pem: &str) -> Value {
    let script = r#"
import json, sys, jwt
from cryptography.hazmat.primitives import serialization
data = json.load(sys.stdin)
public = serialization.load_pem_private_key(data["key"].encode(), password=None).public_key()
claims = jwt.decode(data["token"], public, algorithms=["RS256"], audience="urn:com.networknt",
                    issuer="urn:com:networknt:oauth2:v1", options={"require": ["exp", "iat", "nbf"]})
print(json.dumps({"header": jwt.get_unverified_header(data["token"]), "claims": claims}))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (PyJWT from tests/requirements.txt)");
    let input = json!({"token": token, "key": private_key_pem}).to_string();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyJWT rejected the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("verifier prints JSON")
}

async fn signing_key_pem(namespace: &str) -> String {
    let secret = secret(namespace, "bootstrap-token-signing-key")
        .await
        .expect("the operator created its signing key Secret");
    String::from_utf8(secret.data.unwrap()["key.pem"].0.clone()).unwrap()
}

#[tokio::test]
async fn issues_a_seed_shaped_token_that_an_independent_verifier_accepts() {
    let ns = TestEnv::global().namespace("issue").await;
    let operator = Operator::start(&ns, CONFIG).await;
    apply_bt(
        &ns,
        bt_manifest(
            "petstore",
            json!({"serviceId": "com.networknt.petstore-1.0.0",
                   "secretTemplate": {"labels": {"team": "pets"}, "annotations": {"note": "hi"}}}),
        ),
    )
    .await;
    let bt = wait_ready(&ns, "petstore").await;
    let status = bt.status.clone().unwrap();
    assert_eq!(
        status.secret_name.as_deref(),
        Some("petstore-bootstrap-token")
    );
    assert_eq!(status.key_id.as_deref(), Some("100"));
    assert_eq!(bt.ready_condition().unwrap().reason, "Issued");

    let secret = secret(&ns, "petstore-bootstrap-token")
        .await
        .expect("Secret exists");
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let token = token_of(&secret);
    let verified = verify_with_pyjwt(&token, &signing_key_pem(&ns).await);
    assert_eq!(verified["header"], json!({"kid": "100", "alg": "RS256"}));

    // Claim names, order and JSON types as in the seed's payload.
    let claims = payload(&token);
    let names: Vec<&str> = claims.keys().map(String::as_str).collect();
    assert_eq!(
        names,
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
    assert_eq!(claims["version"], "1.0");
    assert_eq!(claims["client_id"], "f7d42348-c647-4efb-a52d-4c5787421e00");
    assert_eq!(
        claims["scope"],
        json!(["A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2"])
    );
    assert_eq!(claims["sid"], "com.networknt.petstore-1.0.0");
    let (iat, exp, nbf) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
        claims["nbf"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 315_360_000);
    assert_eq!(iat - nbf, 120);
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(jti.len(), 22);
    assert_eq!(verified["claims"]["jti"], jti);
    assert_eq!(status.token_id.as_deref(), Some(jti));

    // The Secret carries DESIGN §3's metadata and the template, and is owned by the object.
    let labels = secret.metadata.labels.clone().unwrap();
    assert_eq!(
        labels["app.kubernetes.io/managed-by"],
        "bootstrap-token-operator"
    );
    assert_eq!(labels["team"], "pets");
    let notes = secret.metadata.annotations.clone().unwrap();
    assert_eq!(
        notes[annotations::SERVICE_ID],
        "com.networknt.petstore-1.0.0"
    );
    assert_eq!(notes[annotations::TOKEN_ID], jti);
    assert_eq!(notes[annotations::KEY_ID], "100");
    assert_eq!(
        notes[annotations::EXPIRES_AT],
        status.expires_at.clone().unwrap()
    );
    assert_eq!(notes["note"], "hi");
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "BootstrapToken");
    assert_eq!(Some(&owner.uid), bt.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));

    // What users script against: kubectl wait.
    let out = Command::new("kubectl")
        .args(["--kubeconfig"])
        .arg(TestEnv::global().admin_kubeconfig_path())
        .args([
            "-n",
            &ns,
            "wait",
            "--for=condition=Ready",
            "bt/petstore",
            "--timeout=30s",
        ])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = events_for(&ns, "petstore").await;
    assert!(
        events.iter().any(|(reason, _)| reason == "Issued"),
        "{events:?}"
    );
    operator.stop().await;
}

#[tokio::test]
async fn reconciling_an_unchanged_object_writes_nothing() {
    let ns = TestEnv::global().namespace("idle").await;
    let operator = Operator::start(&ns, CONFIG).await;
    apply_bt(&ns, bt_manifest("idle", json!({"serviceId": "svc-idle"}))).await;
    let before = wait_ready(&ns, "idle").await;
    let secret_before = secret(&ns, "idle-bootstrap-token").await.unwrap();
    // Let the reconciles triggered by our own writes finish, then count from a quiet point.
    let settled = eventually("the reconciles caused by issuing to settle", || async {
        let writes = operator.writes.get();
        let reconciles = operator.reconciles();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        (operator.writes.get() == writes && operator.reconciles() == reconciles).then_some(writes)
    })
    .await;

    // Five metadata-only changes: each triggers a reconcile, none changes what the token depends on.
    let api: Api<BootstrapToken> = Api::namespaced(admin().await, &ns);
    for i in 0..5 {
        let start = operator.reconciles();
        let patch = json!({"metadata": {"annotations": {"poke": i.to_string()}}});
        api.patch("idle", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        eventually("a reconcile after the poke", || async {
            (operator.reconciles() > start).then_some(())
        })
        .await;
    }
    assert_eq!(
        operator.writes.get(),
        settled,
        "reconciles of an unchanged object wrote to the API server"
    );
    let secret_after = secret(&ns, "idle-bootstrap-token").await.unwrap();
    assert_eq!(
        secret_after.metadata.resource_version,
        secret_before.metadata.resource_version
    );
    let after = api.get("idle").await.unwrap();
    assert_eq!(after.status, before.status, "status is not rewritten");

    // A restarted operator re-signs nothing and writes nothing.
    operator.stop().await;
    let restarted = Operator::start(&ns, CONFIG).await;
    eventually("the restarted operator reconciles", || async {
        (restarted.reconciles() > 0).then_some(())
    })
    .await;
    // The key Secret exists, so the restarted instance has nothing to create either.
    assert_eq!(
        restarted.writes.get(),
        0,
        "a restarted operator wrote to the API server"
    );
    let secret_restart = secret(&ns, "idle-bootstrap-token").await.unwrap();
    assert_eq!(
        secret_restart.metadata.resource_version,
        secret_before.metadata.resource_version
    );
    assert_eq!(api.get("idle").await.unwrap().status, before.status);
    restarted.stop().await;
}

#[tokio::test]
async fn repairs_edited_secrets_recreates_deleted_ones_and_garbage_collects() {
    let ns = TestEnv::global().namespace("repair").await;
    let operator = Operator::start(&ns, CONFIG).await;
    apply_bt(
        &ns,
        bt_manifest("repair", json!({"serviceId": "svc-repair"})),
    )
    .await;
    let first = wait_ready(&ns, "repair")
        .await
        .status
        .unwrap()
        .token_id
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(admin().await, &ns);

    // A label removed by someone else comes back, with the same token.
    let patch = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}});
    secrets
        .patch(
            "repair-bootstrap-token",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    eventually("the managed-by label restored", || async {
        let s = secret(&ns, "repair-bootstrap-token").await?;
        s.metadata
            .labels?
            .contains_key("app.kubernetes.io/managed-by")
            .then_some(())
    })
    .await;
    let same = secret(&ns, "repair-bootstrap-token").await.unwrap();
    assert_eq!(payload(&token_of(&same))["jti"], first.as_str());

    // A corrupted token is replaced by a new one.
    let patch = json!({"data": {"token": ByteString(b"not-a-jwt".to_vec())}});
    secrets
        .patch(
            "repair-bootstrap-token",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let second = eventually("a new valid token after corruption", || async {
        let s = secret(&ns, "repair-bootstrap-token").await?;
        let token = token_of(&s);
        let jti = payload(token.split('.').count().eq(&3).then_some(&token)?)["jti"]
            .as_str()?
            .to_string();
        (jti != first).then_some(jti)
    })
    .await;
    operator
        .keys()
        .await
        .verify(&token_of(
            &secret(&ns, "repair-bootstrap-token").await.unwrap(),
        ))
        .unwrap();

    // A deleted Secret is recreated with a new jti.
    secrets
        .delete("repair-bootstrap-token", &DeleteParams::default())
        .await
        .unwrap();
    let third = eventually("the Secret recreated", || async {
        let s = secret(&ns, "repair-bootstrap-token").await?;
        if s.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let jti = payload(&token_of(&s))["jti"].as_str()?.to_string();
        (jti != second).then_some(jti)
    })
    .await;
    assert_ne!(third, first);
    let events = events_for(&ns, "repair").await;
    assert!(
        events.iter().any(|(reason, _)| reason == "Reissued"),
        "{events:?}"
    );

    // Deleting the BootstrapToken garbage-collects its Secret (kube-controller-manager's GC).
    let api: Api<BootstrapToken> = Api::namespaced(admin().await, &ns);
    api.delete("repair", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Secret garbage-collected", || async {
        secret(&ns, "repair-bootstrap-token")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    operator.stop().await;
}

#[tokio::test]
async fn never_touches_a_foreign_secret() {
    let ns = TestEnv::global().namespace("conflict").await;
    let secrets: Api<Secret> = Api::namespaced(admin().await, &ns);
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("taken".into()),
            labels: Some([("owner".to_string(), "someone-else".to_string())].into()),
            ..Default::default()
        },
        data: Some([("token".to_string(), ByteString(b"theirs".to_vec()))].into()),
        ..Default::default()
    };
    let foreign = secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let operator = Operator::start(&ns, CONFIG).await;
    apply_bt(
        &ns,
        bt_manifest("grabby", json!({"serviceId": "svc", "secretName": "taken"})),
    )
    .await;
    let bt = wait_reason(&ns, "grabby", "SecretConflict").await;
    let ready = bt.ready_condition().unwrap();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("taken"), "{}", ready.message);
    let events = eventually("a SecretConflict event", || async {
        let events = events_for(&ns, "grabby").await;
        events
            .iter()
            .any(|(r, _)| r == "SecretConflict")
            .then_some(events)
    })
    .await;
    assert!(!events.iter().any(|(r, _)| r == "Issued"));
    let after = secrets.get("taken").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        foreign.metadata.resource_version
    );
    assert_eq!(after.data, foreign.data);
    assert_eq!(after.metadata.labels, foreign.metadata.labels);
    assert!(after.metadata.owner_references.is_none());
    // The operator looked at the foreign Secret's metadata, never at its data.
    let reads: Vec<_> = operator
        .writes
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/secrets/taken") && r.method.as_str() == "GET")
        .collect();
    assert!(
        !reads.is_empty(),
        "the operator checked who owns the Secret"
    );
    assert!(
        reads.iter().all(|r| r.metadata_only),
        "only metadata of a Secret it does not own: {reads:?}"
    );
    operator.stop().await;
}

#[tokio::test]
async fn policy_forbids_unlisted_services() {
    let ns = TestEnv::global().namespace("policy").await;
    let config = r#"
policy:
  - serviceIds: ["com.allowed.*"]
"#;
    let operator = Operator::start(&ns, config).await;
    apply_bt(
        &ns,
        bt_manifest("allowed", json!({"serviceId": "com.allowed.api"})),
    )
    .await;
    apply_bt(
        &ns,
        bt_manifest("denied", json!({"serviceId": "com.evil.api"})),
    )
    .await;
    wait_ready(&ns, "allowed").await;
    let denied = wait_reason(&ns, "denied", "Forbidden").await;
    assert_eq!(denied.ready_condition().unwrap().status, "False");
    assert!(secret(&ns, "denied-bootstrap-token").await.is_none());
    eventually("a Forbidden event", || async {
        events_for(&ns, "denied")
            .await
            .iter()
            .any(|(r, _)| r == "Forbidden")
            .then_some(())
    })
    .await;
    operator.stop().await;
}

#[tokio::test]
async fn a_renewal_past_the_horizon_holds_no_timer_and_still_comes_in_time() {
    let ns = TestEnv::global().namespace("horizon").await;
    // Renewal 8 s after issuance, the horizon 2 s: the reconcile sets no timer, and the look
    // every second over the cache must bring the object back before its renewal.
    let config =
        format!("{CONFIG}  minLifetime: 1s\n  minReissueInterval: 0s\n  renewalHorizon: 2s\n");
    let operator = Operator::start(&ns, &config).await;
    apply_bt(
        &ns,
        bt_manifest(
            "far",
            json!({"serviceId": "svc-far", "lifetime": "12s", "renewBefore": "4s"}),
        ),
    )
    .await;
    let first = wait_ready(&ns, "far").await.status.unwrap();
    let first_claims = payload(&token_of(
        &secret(&ns, "far-bootstrap-token").await.unwrap(),
    ));
    let renewal =
        bootstrap_token_operator::revocation::parse_time(first.renewal_time.as_deref().unwrap())
            .unwrap();
    assert_eq!(renewal, first_claims["iat"].as_i64().unwrap() + 8);

    let renewed = token_replaced(
        &ns,
        "far-bootstrap-token",
        first_claims["jti"].as_str().unwrap(),
    )
    .await;
    let iat = renewed["iat"].as_i64().unwrap();
    assert!(
        iat >= renewal,
        "renewed at {iat}, not before the renewal time {renewal}"
    );
    assert!(
        iat < first_claims["exp"].as_i64().unwrap(),
        "renewed at {iat}, before the old token expired"
    );
    operator.stop().await;
}

#[tokio::test]
async fn renews_before_expiry_and_on_request() {
    let ns = TestEnv::global().namespace("renew").await;
    // Seconds-long tokens, re-issued at once: only a configuration may allow that.
    let config = format!("{CONFIG}  minLifetime: 1s\n  minReissueInterval: 0s\n");
    let operator = Operator::start(&ns, &config).await;
    apply_bt(
        &ns,
        bt_manifest(
            "short",
            json!({"serviceId": "svc-short", "lifetime": "6s", "renewBefore": "3s"}),
        ),
    )
    .await;
    let first = wait_ready(&ns, "short").await.status.unwrap();
    let first_token = token_of(&secret(&ns, "short-bootstrap-token").await.unwrap());
    let first_claims = payload(&first_token);
    assert_eq!(
        first_claims["exp"].as_i64().unwrap() - first_claims["iat"].as_i64().unwrap(),
        6
    );

    let renewed = token_replaced(
        &ns,
        "short-bootstrap-token",
        first_claims["jti"].as_str().unwrap(),
    )
    .await;
    assert!(
        renewed["iat"].as_i64().unwrap() < first_claims["exp"].as_i64().unwrap(),
        "renewed before the old token expired"
    );
    assert_ne!(first.token_id.as_deref(), renewed["jti"].as_str());

    // The reissue annotation forces a new jti on a long-lived token.
    apply_bt(&ns, bt_manifest("long", json!({"serviceId": "svc-long"}))).await;
    let before = wait_ready(&ns, "long")
        .await
        .status
        .unwrap()
        .token_id
        .unwrap();
    let mut manifest = bt_manifest("long", json!({"serviceId": "svc-long"}));
    manifest["metadata"]["annotations"] = json!({annotations::REISSUE: "2026-11-23"});
    apply_bt(&ns, manifest).await;
    let after = token_replaced(&ns, "long-bootstrap-token", &before).await["jti"]
        .as_str()
        .unwrap()
        .to_string();
    // Re-issued once, not on every reconcile.
    let api: Api<BootstrapToken> = Api::namespaced(admin().await, &ns);
    let settled = eventually("status shows the re-issued token", || async {
        let bt = api.get("long").await.ok()?;
        (bt.status.as_ref()?.token_id.as_deref() == Some(after.as_str())).then_some(bt)
    })
    .await;
    let start = operator.reconciles();
    api.patch(
        "long",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"x": "y"}}})),
    )
    .await
    .unwrap();
    eventually("a reconcile after the poke", || async {
        (operator.reconciles() > start).then_some(())
    })
    .await;
    assert_eq!(api.get("long").await.unwrap().status, settled.status);
    operator.stop().await;
}

#[tokio::test]
async fn the_api_server_rejects_invalid_objects() {
    let ns = TestEnv::global().namespace("invalid").await;
    let api: Api<BootstrapToken> = Api::namespaced(admin().await, &ns);
    let cases = [
        (json!({}), "serviceId"),
        (json!({"serviceId": ""}), "serviceId"),
        (json!({"serviceId": "has space"}), "serviceId"),
        (json!({"serviceId": "x".repeat(254)}), "serviceId"),
        (json!({"serviceId": "svc", "lifetime": "10d"}), "lifetime"),
        (
            json!({"serviceId": "svc", "lifetime": "0s"}),
            "lifetime must be at least 1s",
        ),
        (
            json!({"serviceId": "svc", "renewBefore": "soon"}),
            "renewBefore",
        ),
        (
            json!({"serviceId": "svc", "lifetime": "1h", "renewBefore": "2h"}),
            "renewBefore must be shorter than lifetime",
        ),
        (
            json!({"serviceId": "svc", "secretName": "Not_A_Name"}),
            "secretName",
        ),
        // A tenant must not reach the operator's own keys through the template: a copied
        // `reissue` annotation would re-issue on every reconcile.
        (
            json!({"serviceId": "svc", "secretTemplate": {"annotations": {"bootstraptoken.dev/reissue": "x"}}}),
            "reserved for the operator",
        ),
        (
            json!({"serviceId": "svc", "secretTemplate": {"labels": {"bootstraptoken.dev/token-id": "x"}}}),
            "reserved for the operator",
        ),
    ];
    for (i, (spec, expected)) in cases.into_iter().enumerate() {
        let name = format!("bad-{i}");
        let manifest = bt_manifest(&name, spec.clone());
        let err = api
            .patch(&name, &PatchParams::apply("test"), &Patch::Apply(&manifest))
            .await
            .expect_err(&format!("{spec} must be rejected"));
        match err {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 422, "{spec}: {status:?}");
                assert!(
                    status.message.contains(expected),
                    "{spec}: {}",
                    status.message
                );
            }
            other => panic!("{spec}: unexpected error {other}"),
        }
    }
    // The valid neighbour of every rule is accepted.
    let ok = bt_manifest(
        "good",
        json!({"serviceId": "svc", "lifetime": "2h", "renewBefore": "1h", "secretName": "a.valid-name",
               "secretTemplate": {"annotations": {"example.com/bootstraptoken.dev": "x"}}}),
    );
    api.patch("good", &PatchParams::apply("test"), &Patch::Apply(&ok))
        .await
        .unwrap();
}

/// Signing can fail (a key behind an API): the object says so and keeps its token, and the
/// operator recovers by itself when signing works again.
#[tokio::test]
async fn a_signing_failure_is_reported_and_recovers_without_losing_the_token() {
    let ns = TestEnv::global().namespace("signing").await;
    let signer = SwitchableSigner::new("100");
    let keys = KeySet::from_signers(signer.clone(), vec![]);
    let operator = Operator::start_with_keys(&ns, CONFIG, keys.clone()).await;
    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "com.example.svc"})),
    )
    .await;
    let first = wait_ready(&ns, "svc").await;
    let issued = token_of(&secret(&ns, "svc-bootstrap-token").await.unwrap());

    signer.fail(true);
    reissue(&ns, "svc", "1").await;
    signing_unavailable_keeps_the_token(&ns, &first, &issued, "unreachable").await;
    eventually("a SigningUnavailable warning event", || {
        let ns = ns.clone();
        async move {
            events_for(&ns, "svc")
                .await
                .iter()
                .any(|(reason, _)| reason == "SigningUnavailable")
                .then_some(())
        }
    })
    .await;

    signer.fail(false);
    let recovered = wait_reason(&ns, "svc", "Issued").await;
    let token = token_of(&secret(&ns, "svc-bootstrap-token").await.unwrap());
    assert_ne!(
        token, issued,
        "the requested re-issue happens once signing works"
    );
    assert_eq!(
        recovered.status.unwrap().token_id.as_deref(),
        payload(&token)["jti"].as_str()
    );
    assert!(keys.verify(&token).is_ok());
    operator.stop().await;
}

/// One issuing path: the token the controller keeps in a Secret and the one the endpoint's
/// `bootstrap_token` grant returns come from the same `Issuer`, so they carry the same claims in
/// the same order and verify with the same keys.
#[tokio::test]
async fn the_controller_and_the_endpoint_issue_the_same_token_shape() {
    // sha256 of "secret".
    let config_yaml = format!(
        "{CONFIG}endpoint:\n  clients:\n    - clientId: f7d42348-c647-4efb-a52d-4c5787421e00\n      \
         clientSecret: {{hash: \"sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\"}}\n      \
         grantTypes: [bootstrap_token]\n"
    );
    let ns = TestEnv::global().namespace("one-path").await;
    let operator = Operator::start(&ns, &config_yaml).await;
    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "com.example.same"})),
    )
    .await;
    wait_ready(&ns, "svc").await;
    let from_controller = token_of(&secret(&ns, "svc-bootstrap-token").await.unwrap());

    let config = bootstrap_token_operator::config::Config::parse(&config_yaml).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let state = bootstrap_token_operator::endpoint::State::new(
        operator.ctx.issuer.clone(),
        config.endpoint,
        None,
        bootstrap_token_operator::endpoint::EndpointMetrics::new(&mut registry),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bootstrap_token_operator::endpoint::serve(
        std::sync::Arc::new(state),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let reply = reqwest::Client::new()
        .post(&url)
        .basic_auth("f7d42348-c647-4efb-a52d-4c5787421e00", Some("secret"))
        .form(&[
            ("grant_type", "bootstrap_token"),
            ("sid", "com.example.same"),
        ])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply).expect("a JSON answer");
    let from_endpoint = reply["access_token"].as_str().expect("a token").to_string();
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    let (a, b) = (payload(&from_controller), payload(&from_endpoint));
    let keys = |claims: &serde_json::Map<String, Value>| claims.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&a), keys(&b), "the same claims in the same order");
    for claim in ["iss", "aud", "version", "client_id", "scope", "sid"] {
        assert_eq!(a[claim], b[claim], "{claim}");
    }
    assert_eq!(
        a["exp"].as_i64().unwrap() - a["iat"].as_i64().unwrap(),
        b["exp"].as_i64().unwrap() - b["iat"].as_i64().unwrap()
    );
    assert_ne!(a["jti"], b["jti"]);
    let keys = operator.keys().await;
    assert_eq!(keys.verify(&from_controller).unwrap().kid, "100");
    assert_eq!(keys.verify(&from_endpoint).unwrap().kid, "100");
    operator.stop().await;
}
