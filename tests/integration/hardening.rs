//! Issue 11, operator side: what a tenant who may only write their own namespace can make the
//! operator do — through the real API server.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;

use bootstrap_token_operator::resource::{BootstrapToken, annotations};
use testenv::TestEnv;

use crate::support::*;

/// A spec cannot set the re-issue rate below the operator's floor.
#[tokio::test]
async fn a_lifetime_below_the_floor_is_refused() {
    let ns = TestEnv::global().namespace("floor").await;
    let operator = Operator::start(&ns, "").await;
    apply_bt(
        &ns,
        bt_manifest("fast", json!({"serviceId": "svc", "lifetime": "1s"})),
    )
    .await;
    let refused = wait_reason(&ns, "fast", "InvalidSpec").await;
    let message = &refused.ready_condition().unwrap().message;
    assert!(message.contains("bootstrap.minLifetime"), "{message}");
    assert!(secret(&ns, "fast-bootstrap-token").await.is_none());
    assert_eq!(operator.issued(), 0, "nothing is signed");
    operator.stop().await;
}

/// However often a tenant asks, one object gets at most one token per minReissueInterval.
#[tokio::test]
async fn reissue_requests_are_paced_by_the_minimum_interval() {
    let ns = TestEnv::global().namespace("pace").await;
    let operator = Operator::start(&ns, "bootstrap:\n  minReissueInterval: 4s\n").await;
    apply_bt(&ns, bt_manifest("svc", json!({"serviceId": "svc"}))).await;
    let first = wait_ready(&ns, "svc").await;
    for value in ["1", "2", "3", "4", "5"] {
        reissue(&ns, "svc", value).await;
    }
    let api: Api<BootstrapToken> = Api::namespaced(admin().await, &ns);
    let first_id = first.status.as_ref().unwrap().token_id.clone();
    let second = eventually("the requested token", || {
        let (api, first_id) = (api.clone(), first_id.clone());
        async move {
            let bt = api.get("svc").await.ok()?;
            let status = bt.status?;
            (status.token_id != first_id).then_some(status)
        }
    })
    .await;
    let at = |status: &bootstrap_token_operator::resource::BootstrapTokenStatus| {
        status
            .issued_at
            .as_deref()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second()
    };
    let gap = at(&second) - at(first.status.as_ref().unwrap());
    assert!(gap >= 4, "the second token came {gap}s after the first");
    // Five requests in a burst are served by at most two new tokens (one now if the interval
    // had already passed, one when it has), not five.
    eventually("the last requested value served", || {
        let ns = ns.clone();
        async move {
            let secret = secret(&ns, "svc-bootstrap-token").await?;
            (secret.metadata.annotations?.get(annotations::REISSUE)? == "5").then_some(())
        }
    })
    .await;
    let issued = operator.issued();
    assert!((2..=3).contains(&issued), "{issued} tokens for one object");
    operator.stop().await;
}

/// With no policy at all, a service id held in one namespace is not handed to another; a
/// policy rule may let them share it.
#[tokio::test]
async fn a_service_id_belongs_to_the_first_namespace_that_holds_it() {
    let team_a = TestEnv::global().namespace("owner-a").await;
    let team_b = TestEnv::global().namespace("owner-b").await;
    let operator = Operator::start_watching(&[&team_a, &team_b], "").await;
    apply_bt(
        &team_a,
        bt_manifest("pay", json!({"serviceId": "com.a.payments"})),
    )
    .await;
    wait_ready(&team_a, "pay").await;
    apply_bt(
        &team_b,
        bt_manifest("steal", json!({"serviceId": "com.a.payments"})),
    )
    .await;
    let refused = wait_reason(&team_b, "steal", "Forbidden").await;
    let message = &refused.ready_condition().unwrap().message;
    assert!(
        message.contains(&format!("namespace {team_a}")),
        "{message}"
    );
    assert!(secret(&team_b, "steal-bootstrap-token").await.is_none());
    // The holder is untouched and stays Ready.
    wait_ready(&team_a, "pay").await;
    operator.stop().await;

    let sharing = "policy:\n  - serviceIds: [\"com.a.*\"]\n    shareServiceIds: true\n";
    let operator = Operator::start_watching(&[&team_a, &team_b], sharing).await;
    wait_ready(&team_b, "steal").await;
    operator.stop().await;
}

/// A Secret the object no longer names is deleted, not left with a live, unrenewed token.
#[tokio::test]
async fn renaming_the_secret_deletes_the_old_one() {
    let ns = TestEnv::global().namespace("rename").await;
    let operator = Operator::start(&ns, "").await;
    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "svc", "secretName": "first"})),
    )
    .await;
    wait_ready(&ns, "svc").await;
    assert!(secret(&ns, "first").await.is_some());
    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "svc", "secretName": "second"})),
    )
    .await;
    eventually("the old Secret deleted and the new one written", || {
        let ns = ns.clone();
        async move {
            let (first, second) = (secret(&ns, "first").await, secret(&ns, "second").await);
            (first.is_none() && second.is_some()).then_some(())
        }
    })
    .await;
    let bt = wait_ready(&ns, "svc").await;
    assert_eq!(bt.status.unwrap().secret_name.as_deref(), Some("second"));
    // A Secret of that name that is not ours is never deleted.
    let foreign: Secret = serde_json::from_value(json!({
        "metadata": {"name": "third"}, "stringData": {"token": "mine"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin().await, &ns)
        .create(&Default::default(), &foreign)
        .await
        .unwrap();
    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "svc", "secretName": "third"})),
    )
    .await;
    wait_reason(&ns, "svc", "SecretConflict").await;
    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "svc", "secretName": "fourth"})),
    )
    .await;
    wait_ready(&ns, "svc").await;
    assert_eq!(
        token_of(&secret(&ns, "third").await.unwrap()),
        "mine",
        "a foreign Secret is left alone"
    );
    operator.stop().await;
}
