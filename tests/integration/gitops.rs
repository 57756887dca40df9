//! Issue 7: the Argo CD health check, run by an embedded Lua 5.4 interpreter on real objects.

use kube::api::{Api, Patch, PatchParams};
use mlua::{Lua, LuaOptions, LuaSerdeExt, SerializeOptions, StdLib, Table};
use serde_json::json;

use bootstrap_token_operator::resource::BootstrapToken;
use testenv::{TestEnv, repo_root};

use crate::support::*;

/// Runs deploy/argocd/health.lua on the object, returning (status, message).
///
/// As in Argo CD, the object is the global `obj`, JSON `null` is `nil`, and the script gets no
/// `os` or `io`: a script that leans on either would pass here and fail in Argo CD.
fn argocd_health(object: &BootstrapToken) -> (String, String) {
    let script = std::fs::read_to_string(repo_root().join("deploy/argocd/health.lua")).unwrap();
    let lua = Lua::new_with(
        StdLib::STRING | StdLib::TABLE | StdLib::MATH,
        LuaOptions::default(),
    )
    .expect("Lua state");
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false)
        .set_array_metatable(false);
    let obj = lua
        .to_value_with(&serde_json::to_value(object).unwrap(), options)
        .expect("the object converts to a Lua table");
    lua.globals().set("obj", obj).unwrap();
    let hs: Table = lua
        .load(script)
        .set_name("health.lua")
        .eval()
        .unwrap_or_else(|e| panic!("health.lua: {e}"));
    let status: String = hs.get("status").expect("hs.status is a string");
    let message: String = hs.get("message").expect("hs.message is a string");
    assert!(
        ["Healthy", "Progressing", "Degraded"].contains(&status.as_str()),
        "an Argo CD health status: {status}"
    );
    assert!(!message.is_empty(), "a message for status {status}");
    (status, message)
}

#[tokio::test]
async fn argocd_health_follows_the_ready_condition() {
    let ns = TestEnv::global().namespace("argocd").await;
    let api: Api<BootstrapToken> = Api::namespaced(admin().await, &ns);

    // Before any operator looked at it: no status yet.
    let fresh = apply_bt(
        &ns,
        bt_manifest("healthy", json!({"serviceId": "svc-healthy"})),
    )
    .await;
    assert_eq!(argocd_health(&fresh).0, "Progressing");

    let operator = Operator::start(&ns, "policy: [{serviceIds: [\"svc-*\"]}]").await;
    let healthy = wait_ready(&ns, "healthy").await;
    let (status, message) = argocd_health(&healthy);
    assert_eq!(status, "Healthy", "{message}");
    assert!(message.starts_with("Issued"), "{message}");

    apply_bt(
        &ns,
        bt_manifest("degraded", json!({"serviceId": "not-allowed"})),
    )
    .await;
    let degraded = wait_reason(&ns, "degraded", "Forbidden").await;
    assert_eq!(argocd_health(&degraded).0, "Degraded");

    // A spec change the operator has not observed yet is progress, not health.
    operator.stop().await;
    let patch = json!({"spec": {"serviceId": "svc-healthy-2"}});
    let changed = api
        .patch("healthy", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert!(changed.metadata.generation > changed.ready_condition().unwrap().observed_generation);
    assert_eq!(argocd_health(&changed).0, "Progressing");
}
