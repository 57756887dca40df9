//! Issue 7: the Argo CD health check, run by a real Lua interpreter on real objects.

use std::process::Command;

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use bootstrap_token_operator::resource::BootstrapToken;
use testenv::{TestEnv, repo_root};

use crate::support::*;

/// A Lua table constructor for a JSON value, as Argo CD hands objects to health scripts.
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs deploy/argocd/health.lua on the object, returning (status, message).
fn argocd_health(object: &BootstrapToken) -> (String, String) {
    let script = std::fs::read_to_string(repo_root().join("deploy/argocd/health.lua")).unwrap();
    let program = format!(
        "obj = {}\nlocal hs = (function()\n{script}\nend)()\nprint(hs.status)\nprint(hs.message)",
        lua_literal(&serde_json::to_value(object).unwrap())
    );
    let out = Command::new("lua5.4")
        .args(["-e", &program])
        .output()
        .expect("lua5.4 runs (apt package lua5.4)");
    assert!(
        out.status.success(),
        "lua: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    (
        lines.next().unwrap_or_default().into(),
        lines.next().unwrap_or_default().into(),
    )
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
