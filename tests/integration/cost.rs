//! Issue 12: what each token costs the API server, counted from the operator's own request log
//! by verb and resource: a new token is three writes and no read; an unchanged object, on
//! reconcile or after a restart, costs nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use bootstrap_token_operator::resource::BootstrapToken;
use testenv::{LoggedRequest, TestEnv};

use crate::support::*;

const CONFIG: &str = r#"
bootstrap:
  scope: ["A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2"]
"#;
const OBJECTS: usize = 12;

/// `VERB resource[/subresource]`, with `item` or `list` for whether the path names one object:
/// `PATCH secrets item`, `GET bootstraptokens list`.
fn kind(request: &LoggedRequest) -> String {
    let parts: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    // /api/v1/namespaces/<ns>/<resource>[/<name>[/<sub>]] or /apis/<group>/<v>/namespaces/…
    let rest = match parts.iter().position(|p| *p == "namespaces") {
        Some(i) => &parts[(i + 2).min(parts.len())..],
        None => &parts[parts.len().min(if parts[0] == "api" { 2 } else { 3 })..],
    };
    let resource = rest.first().copied().unwrap_or("?");
    let (scope, sub) = match rest.len() {
        0 | 1 => ("list", String::new()),
        2 => ("item", String::new()),
        _ => ("item", format!("/{}", rest[2..].join("/"))),
    };
    format!("{} {resource}{sub} {scope}", request.method)
}

/// The requests sent since `from`, counted by [`kind`].
fn by_kind(operator: &Operator, from: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for request in &operator.writes.requests()[from..] {
        *counts.entry(kind(request)).or_default() += 1;
    }
    counts
}

/// Waits until the operator has sent no request and run no reconcile for half a second, and
/// returns how many requests it has sent so far.
async fn settled(operator: &Operator) -> usize {
    eventually("the operator to settle", || async {
        let sent = operator.writes.requests().len();
        let reconciles = operator.reconciles();
        tokio::time::sleep(Duration::from_millis(500)).await;
        (operator.writes.requests().len() == sent && operator.reconciles() == reconciles)
            .then_some(sent)
    })
    .await
}

#[tokio::test]
async fn a_new_token_costs_three_writes_and_an_unchanged_object_nothing() {
    let ns = TestEnv::global().namespace("cost").await;
    let operator = Operator::start(&ns, CONFIG).await;
    operator.keys().await;
    // Startup (the signing key, the watches' lists) is not what a token costs.
    let start = settled(&operator).await;
    let names: Vec<String> = (0..OBJECTS).map(|i| format!("svc-{i}")).collect();
    for name in &names {
        apply_bt(&ns, bt_manifest(name, json!({"serviceId": name}))).await;
    }
    for name in &names {
        wait_ready(&ns, name).await;
    }
    let issued = settled(&operator).await;
    let per_token = by_kind(&operator, start);
    let want = BTreeMap::from([
        ("PATCH secrets item".to_string(), OBJECTS),
        ("PATCH bootstraptokens/status item".to_string(), OBJECTS),
        ("POST events list".to_string(), OBJECTS),
    ]);
    assert_eq!(
        per_token, want,
        "{OBJECTS} new tokens: one apply of the Secret, one of the status and one event each, no read"
    );

    // Changes that leave the token alone: reconciles that neither read nor write.
    let api: Api<BootstrapToken> = Api::namespaced(admin().await, &ns);
    let reconciles = operator.reconciles();
    for name in &names {
        let patch = json!({"metadata": {"annotations": {"poke": "1"}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    eventually("a reconcile of every poked object", || async {
        (operator.reconciles() >= reconciles + OBJECTS as u64).then_some(())
    })
    .await;
    settled(&operator).await;
    assert_eq!(
        by_kind(&operator, issued),
        BTreeMap::new(),
        "reconciles of unchanged objects sent requests"
    );
    operator.stop().await;

    // A restarted operator: its watches list, then it reconciles every object from the caches.
    let restarted = Operator::start(&ns, CONFIG).await;
    eventually("the restarted operator reconciles every object", || async {
        (restarted.reconciles() >= OBJECTS as u64).then_some(())
    })
    .await;
    settled(&restarted).await;
    let after_restart = by_kind(&restarted, 0);
    let unexpected: Vec<_> = after_restart
        .iter()
        .filter(|(kind, _)| {
            // The watches' list and watch, and loading the signing key, are the only requests.
            !kind.ends_with(" list") && !kind.starts_with("GET secrets item")
        })
        .collect();
    assert!(
        unexpected.is_empty() && after_restart.keys().all(|k| k.starts_with("GET ")),
        "a restarted operator wrote or read per object: {after_restart:?}"
    );
    let key_reads = restarted
        .writes
        .requests()
        .iter()
        .filter(|r| kind(r) == "GET secrets item")
        .filter(|r| {
            names
                .iter()
                .any(|n| r.path.ends_with(&format!("/{n}-bootstrap-token")))
        })
        .count();
    assert_eq!(key_reads, 0, "a restarted operator read a token Secret");
    restarted.stop().await;
}
