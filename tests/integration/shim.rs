//! Issue 4: annotated Deployments get a child BootstrapToken, through the real API server.
//! Issue 10: so do StatefulSets and DaemonSets, and one name gives one token across kinds.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use bootstrap_token_operator::resource::{BootstrapToken, annotations};
use bootstrap_token_operator::shim::{NAME_LABEL, RESTART_MANAGER, VERSION_LABEL, Workload};
use testenv::TestEnv;

use crate::support::*;

const CONFIG: &str = r#"
bootstrap:
  scope: ["A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2"]
"#;

/// The field manager of the tests' "GitOps tool": it owns the workload manifests.
const GITOPS: &str = "gitops";

fn workload_manifest<W: Workload>(name: &str, notes: Value, labels: Value) -> Value {
    let kind = W::kind(&());
    let mut manifest = json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "annotations": notes, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1.0.0"}]},
            },
        },
    });
    // A DaemonSet runs one pod per node: it has no replica count.
    if kind != "DaemonSet" {
        manifest["spec"]["replicas"] = json!(1);
    }
    if kind == "StatefulSet" {
        manifest["spec"]["serviceName"] = json!(name);
    }
    manifest
}

fn deployment_manifest(name: &str, notes: Value, labels: Value) -> Value {
    workload_manifest::<Deployment>(name, notes, labels)
}

/// Applies a workload manifest the way a GitOps tool does (server-side apply, own manager).
async fn apply_workload<W: Workload>(namespace: &str, manifest: &Value) -> W {
    let api: Api<W> = Api::namespaced(admin().await, namespace);
    let name = manifest["metadata"]["name"].as_str().unwrap();
    api.patch(
        name,
        &PatchParams::apply(GITOPS).force(),
        &Patch::Apply(manifest),
    )
    .await
    .expect("workload applies")
}

async fn apply_deployment(namespace: &str, manifest: &Value) -> Deployment {
    apply_workload(namespace, manifest).await
}

async fn get_workload<W: Workload>(namespace: &str, name: &str) -> W {
    Api::<W>::namespaced(admin().await, namespace)
        .get(name)
        .await
        .expect("workload exists")
}

async fn get_deployment(namespace: &str, name: &str) -> Deployment {
    get_workload(namespace, name).await
}

async fn label_workload<W: Workload>(namespace: &str, name: &str, key: &str, value: &str) {
    Api::<W>::namespaced(admin().await, namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {key: value}}})),
        )
        .await
        .expect("labelling the workload");
}

async fn label_deployment(namespace: &str, name: &str, key: &str, value: &str) {
    label_workload::<Deployment>(namespace, name, key, value).await;
}

async fn child(namespace: &str, name: &str) -> Option<BootstrapToken> {
    Api::<BootstrapToken>::namespaced(admin().await, namespace)
        .get_opt(name)
        .await
        .expect("reading a BootstrapToken")
}

/// Touches the BootstrapToken `name` (a label nothing reads), so its watchers hear of it.
async fn poke_child(namespace: &str, name: &str, value: &str) {
    Api::<BootstrapToken>::namespaced(admin().await, namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"poke": value}}})),
        )
        .await
        .expect("touching the BootstrapToken");
}

/// The `sid` of the token in the Secret, once the Secret holds a token.
async fn sid_in(namespace: &str, secret_name: &str) -> Option<String> {
    let secret = secret(namespace, secret_name).await?;
    secret.metadata.deletion_timestamp.is_none().then_some(())?;
    let token = token_of(&secret);
    payload(&token)["sid"].as_str().map(str::to_string)
}

/// The pod-template annotation the shim keeps for restart-on-reissue.
fn template_token_id<W: Workload>(workload: &W) -> Option<String> {
    workload
        .pod_template()?
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(annotations::TOKEN_ID)
        .cloned()
}

/// The id of the child `name`'s current token, while it is Ready.
async fn ready_token_id(namespace: &str, name: &str) -> Option<String> {
    let bt = child(namespace, name).await?;
    (bt.ready_condition()?.status == "True").then_some(())?;
    bt.status?.token_id
}

/// Events regarding the workload `name` of kind `W` (a child BootstrapToken has the same name),
/// as (type, reason, note).
async fn workload_events<W: Workload>(
    namespace: &str,
    name: &str,
) -> Vec<(String, String, String)> {
    events_regarding(namespace, &W::kind(&()), name).await
}

async fn deployment_events(namespace: &str, name: &str) -> Vec<(String, String, String)> {
    workload_events::<Deployment>(namespace, name).await
}

async fn wait_event_on<W: Workload>(
    namespace: &str,
    name: &str,
    reason: &str,
) -> (String, String, String) {
    eventually(
        &format!("a {reason} event on {} {name}", W::kind(&())),
        || async {
            workload_events::<W>(namespace, name)
                .await
                .into_iter()
                .find(|(_, r, _)| r == reason)
        },
    )
    .await
}

async fn wait_event(namespace: &str, name: &str, reason: &str) -> (String, String, String) {
    wait_event_on::<Deployment>(namespace, name, reason).await
}

/// `RolloutTriggered` events regarding workloads of kind `W` (a series, should events ever be
/// merged, counts the same).
async fn rollouts<W: Workload>(namespace: &str) -> i32 {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin().await, namespace);
    let kind = W::kind(&());
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("RolloutTriggered")
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some(kind.as_ref())
        })
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

/// Waits until neither controller reconciles nor writes for half a second; returns the writes.
async fn settle(operator: &Operator) -> u64 {
    eventually("the operator to settle", || async {
        let writes = operator.writes.get();
        let reconciles = operator.reconciles() + operator.shim_reconciles();
        tokio::time::sleep(Duration::from_millis(500)).await;
        (operator.writes.get() == writes
            && operator.reconciles() + operator.shim_reconciles() == reconciles)
            .then_some(writes)
    })
    .await
}

async fn wait_shim_reconcile_after(operator: &Operator, start: u64) {
    eventually("a shim reconcile", || async {
        (operator.shim_reconciles() > start).then_some(())
    })
    .await;
}

#[tokio::test]
async fn annotated_deployment_gets_a_token_that_follows_the_annotation() {
    let ns = TestEnv::global().namespace("shim").await;
    let operator = Operator::start(&ns, CONFIG).await;
    let first_id = "com.networknt.petstore-1.0.0";
    let manifest = deployment_manifest(
        "petstore",
        json!({annotations::SERVICE_ID: first_id}),
        json!({}),
    );
    let deployment = apply_deployment(&ns, &manifest).await;

    // The child: named after the Deployment, owned by it, with the annotation's service id.
    let bt = wait_ready(&ns, "petstore").await;
    assert_eq!(bt.spec.service_id, first_id);
    assert_eq!(
        bt.spec.secret_name.as_deref(),
        Some("petstore-bootstrap-token")
    );
    assert_eq!(
        bt.labels()["app.kubernetes.io/managed-by"],
        "bootstrap-token-operator"
    );
    let owner = &bt.owner_references()[0];
    assert_eq!(
        (owner.api_version.as_str(), owner.kind.as_str()),
        ("apps/v1", "Deployment")
    );
    assert_eq!(Some(&owner.uid), deployment.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    // The Secret holds a token whose sid is the annotation's value.
    let sid = eventually("the Secret's token", || {
        sid_in(&ns, "petstore-bootstrap-token")
    })
    .await;
    assert_eq!(sid, first_id);
    wait_event(&ns, "petstore", "CreatedBootstrapToken").await;

    // Idempotence: reconciling an unchanged Deployment writes nothing.
    let writes = settle(&operator).await;
    let bt_version = child(&ns, "petstore")
        .await
        .unwrap()
        .metadata
        .resource_version;
    for version in ["a", "b", "c"] {
        let start = operator.shim_reconciles();
        // The version label is one the shim reads, so each change is reconciled.
        label_deployment(&ns, "petstore", VERSION_LABEL, version).await;
        wait_shim_reconcile_after(&operator, start).await;
    }
    assert_eq!(settle(&operator).await, writes, "no-op reconciles wrote");
    assert_eq!(
        child(&ns, "petstore")
            .await
            .unwrap()
            .metadata
            .resource_version,
        bt_version
    );

    // A new annotation value: the child follows, and so does the token's sid.
    let second_id = "com.networknt.petstore-2.0.0";
    let manifest = deployment_manifest(
        "petstore",
        json!({annotations::SERVICE_ID: second_id}),
        json!({}),
    );
    apply_deployment(&ns, &manifest).await;
    eventually("the Secret's token for the new service id", || async {
        (sid_in(&ns, "petstore-bootstrap-token").await? == second_id).then_some(())
    })
    .await;
    assert_eq!(
        child(&ns, "petstore").await.unwrap().spec.service_id,
        second_id
    );
    wait_event(&ns, "petstore", "UpdatedBootstrapToken").await;

    // Annotation removed: the child goes, and garbage collection takes its Secret.
    apply_deployment(&ns, &deployment_manifest("petstore", json!({}), json!({}))).await;
    eventually("the child and its Secret deleted", || async {
        let gone = child(&ns, "petstore").await.is_none()
            && secret(&ns, "petstore-bootstrap-token").await.is_none();
        gone.then_some(())
    })
    .await;
    wait_event(&ns, "petstore", "DeletedBootstrapToken").await;
    operator.stop().await;
}

#[tokio::test]
async fn derives_the_service_id_from_labels_and_warns_when_one_is_missing() {
    let ns = TestEnv::global().namespace("shim-labels").await;
    let operator = Operator::start(&ns, CONFIG).await;
    let manifest = deployment_manifest(
        "shop",
        json!({annotations::ENABLED: "true", annotations::SERVICE_ID: "",
               annotations::SECRET_NAME: "shop-credentials"}),
        json!({NAME_LABEL: "shop", VERSION_LABEL: "2.1.0"}),
    );
    apply_deployment(&ns, &manifest).await;
    let bt = wait_ready(&ns, "shop").await;
    assert_eq!(bt.spec.service_id, "shop-2.1.0");
    assert_eq!(bt.spec.secret_name.as_deref(), Some("shop-credentials"));
    let sid = eventually("the token in the named Secret", || {
        sid_in(&ns, "shop-credentials")
    })
    .await;
    assert_eq!(sid, "shop-2.1.0");

    // Without the version label there is no id: a Warning names the label, and no child.
    let unversioned = deployment_manifest(
        "cart",
        json!({annotations::ENABLED: "true"}),
        json!({NAME_LABEL: "cart"}),
    );
    apply_deployment(&ns, &unversioned).await;
    let (type_, _, note) = wait_event(&ns, "cart", "MissingLabel").await;
    assert_eq!(type_, "Warning");
    assert!(
        note.contains(&format!("label {VERSION_LABEL} is missing")),
        "{note}"
    );
    settle(&operator).await;
    assert!(child(&ns, "cart").await.is_none());
    // The warning is published once, not on every reconcile.
    let start = operator.shim_reconciles();
    label_deployment(&ns, "cart", NAME_LABEL, "cart2").await;
    wait_shim_reconcile_after(&operator, start).await;
    settle(&operator).await;
    let warnings = deployment_events(&ns, "cart").await;
    assert_eq!(
        warnings
            .iter()
            .filter(|(_, r, _)| r == "MissingLabel")
            .count(),
        1,
        "{warnings:?}"
    );

    // Adding the label fixes it.
    let versioned = deployment_manifest(
        "cart",
        json!({annotations::ENABLED: "true"}),
        json!({NAME_LABEL: "cart", VERSION_LABEL: "1.0"}),
    );
    apply_deployment(&ns, &versioned).await;
    assert_eq!(wait_ready(&ns, "cart").await.spec.service_id, "cart-1.0");
    operator.stop().await;
}

#[tokio::test]
async fn deleting_the_deployment_garbage_collects_the_token_and_its_secret() {
    let ns = TestEnv::global().namespace("shim-gc").await;
    let operator = Operator::start(&ns, CONFIG).await;
    let manifest = deployment_manifest(
        "doomed",
        json!({annotations::SERVICE_ID: "svc-doomed"}),
        json!({}),
    );
    apply_deployment(&ns, &manifest).await;
    wait_ready(&ns, "doomed").await;
    eventually("the Secret", || sid_in(&ns, "doomed-bootstrap-token")).await;
    Api::<Deployment>::namespaced(admin().await, &ns)
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the child and its Secret garbage-collected", || async {
        let gone = child(&ns, "doomed").await.is_none()
            && secret(&ns, "doomed-bootstrap-token").await.is_none();
        gone.then_some(())
    })
    .await;
    operator.stop().await;
}

#[tokio::test]
async fn restart_on_reissue_rolls_the_pods_exactly_when_the_token_changes() {
    let ns = TestEnv::global().namespace("shim-restart").await;
    let operator = Operator::start(&ns, CONFIG).await;
    let manifest = |id: &str| {
        deployment_manifest(
            "rolling",
            json!({annotations::SERVICE_ID: id, annotations::RESTART_ON_REISSUE: "true"}),
            json!({}),
        )
    };
    apply_deployment(&ns, &manifest("svc-rolling")).await;
    let tokens: Api<BootstrapToken> = Api::namespaced(admin().await, &ns);
    let token_id = || ready_token_id(&ns, "rolling");

    // The first token is recorded too (one rollout, so pods that started before the Secret
    // existed are replaced by ones that mount it).
    let first = eventually("the first token id in the pod template", || async {
        let id = token_id().await?;
        (template_token_id(&get_deployment(&ns, "rolling").await)? == id).then_some(id)
    })
    .await;
    let writes = settle(&operator).await;
    let deployment = get_deployment(&ns, "rolling").await;
    let generation = deployment.metadata.generation.unwrap();
    // Its own field manager, owning that one annotation and nothing else.
    let restart_fields: Vec<_> = deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.manager.as_deref() == Some(RESTART_MANAGER))
        .collect();
    assert_eq!(restart_fields.len(), 1, "{restart_fields:?}");
    assert_eq!(restart_fields[0].operation.as_deref(), Some("Apply"));
    assert_eq!(
        restart_fields[0].fields_v1.as_ref().unwrap().0,
        json!({"f:spec": {"f:template": {"f:metadata": {"f:annotations": {
            "f:bootstraptoken.dev/token-id": {}
        }}}}})
    );

    // No-op reconciles — a label the shim reads, the child touched, the GitOps tool re-applying
    // its unchanged manifest — write nothing and leave the generation alone.
    let start = operator.shim_reconciles();
    label_deployment(&ns, "rolling", VERSION_LABEL, "poke").await;
    wait_shim_reconcile_after(&operator, start).await;
    let start = operator.shim_reconciles();
    poke_child(&ns, "rolling", "1").await;
    wait_shim_reconcile_after(&operator, start).await;
    apply_deployment(&ns, &manifest("svc-rolling")).await;
    assert_eq!(settle(&operator).await, writes, "no-op reconciles wrote");
    let deployment = get_deployment(&ns, "rolling").await;
    assert_eq!(deployment.metadata.generation, Some(generation));
    assert_eq!(
        template_token_id(&deployment).as_deref(),
        Some(first.as_str())
    );

    // A re-issued token rolls the pods once.
    tokens
        .patch(
            "rolling",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {annotations::REISSUE: "1"}}})),
        )
        .await
        .unwrap();
    let second = eventually("the re-issued token id in the pod template", || async {
        let id = token_id().await?;
        (id != first && template_token_id(&get_deployment(&ns, "rolling").await)? == id)
            .then_some(id)
    })
    .await;
    settle(&operator).await;
    assert_eq!(
        get_deployment(&ns, "rolling").await.metadata.generation,
        Some(generation + 1)
    );
    assert_eq!(token_id().await.as_deref(), Some(second.as_str()));

    // A new service id means a new token: once more, exactly once. (Changing a Deployment's
    // annotations bumps its generation too: the API server copies them to ReplicaSets.)
    let applied = apply_deployment(&ns, &manifest("svc-rolling-2")).await;
    assert_eq!(applied.metadata.generation, Some(generation + 2));
    eventually("the new service's token id in the pod template", || async {
        let id = token_id().await?;
        let sid = sid_in(&ns, "rolling-bootstrap-token").await?;
        (id != second
            && sid == "svc-rolling-2"
            && template_token_id(&get_deployment(&ns, "rolling").await)? == id)
            .then_some(id)
    })
    .await;
    settle(&operator).await;
    let deployment = get_deployment(&ns, "rolling").await;
    assert_eq!(deployment.metadata.generation, Some(generation + 3));
    assert_eq!(template_token_id(&deployment), token_id().await);
    // Three rollouts, three events.
    assert_eq!(rollouts::<Deployment>(&ns).await, 3);
    operator.stop().await;
}

#[tokio::test]
async fn leaves_a_foreign_bootstrap_token_of_that_name_alone() {
    let ns = TestEnv::global().namespace("shim-foreign").await;
    let operator = Operator::start(&ns, CONFIG).await;
    apply_bt(&ns, bt_manifest("taken", json!({"serviceId": "theirs"}))).await;
    let foreign = wait_ready(&ns, "taken").await;
    let manifest =
        deployment_manifest("taken", json!({annotations::SERVICE_ID: "mine"}), json!({}));
    apply_deployment(&ns, &manifest).await;
    let (type_, _, note) = wait_event(&ns, "taken", "BootstrapTokenConflict").await;
    assert_eq!(type_, "Warning");
    assert!(note.contains("not owned"), "{note}");
    settle(&operator).await;
    let after = child(&ns, "taken").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        foreign.metadata.resource_version
    );
    assert_eq!(after.spec, foreign.spec);
    assert!(after.metadata.owner_references.is_none());
    assert_eq!(
        sid_in(&ns, "taken-bootstrap-token").await.as_deref(),
        Some("theirs")
    );

    // Once the foreign one is gone, the Deployment gets its own.
    Api::<BootstrapToken>::namespaced(admin().await, &ns)
        .delete("taken", &DeleteParams::default())
        .await
        .unwrap();
    let deployment = get_deployment(&ns, "taken").await;
    eventually("the Deployment's own child and token", || async {
        let bt = child(&ns, "taken").await?;
        let owned = bt
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == deployment.meta().uid.as_ref() && o.controller == Some(true));
        (owned && sid_in(&ns, "taken-bootstrap-token").await? == "mine").then_some(())
    })
    .await;
    operator.stop().await;
}

#[tokio::test]
async fn a_forbidden_service_id_is_reported_on_the_deployment() {
    let ns = TestEnv::global().namespace("shim-policy").await;
    let config = r#"
policy:
  - serviceIds: ["com.allowed.*"]
"#;
    let operator = Operator::start(&ns, config).await;
    let manifest = deployment_manifest(
        "rogue",
        json!({annotations::SERVICE_ID: "com.evil.api"}),
        json!({}),
    );
    apply_deployment(&ns, &manifest).await;
    let bt = wait_reason(&ns, "rogue", "Forbidden").await;
    assert_eq!(bt.ready_condition().unwrap().status, "False");
    let (type_, _, note) = wait_event(&ns, "rogue", "Forbidden").await;
    assert_eq!(type_, "Warning");
    assert!(note.contains("com.evil.api"), "{note}");
    assert!(secret(&ns, "rogue-bootstrap-token").await.is_none());

    // Mirrored once per transition, and not again by a restarted operator. (lastTransitionTime
    // has one-second resolution; a real restart takes longer than the rest of that second.)
    settle(&operator).await;
    let transition = bt.ready_condition().unwrap().last_transition_time.0;
    eventually("the second of the transition to pass", || async {
        (jiff::Timestamp::now().as_second() > transition.as_second()).then_some(())
    })
    .await;
    operator.stop().await;
    let restarted = Operator::start(&ns, config).await;
    eventually("the restarted shim reconciles", || async {
        (restarted.shim_reconciles() > 0).then_some(())
    })
    .await;
    assert_eq!(settle(&restarted).await, 0, "a restarted operator wrote");
    let events = deployment_events(&ns, "rogue").await;
    assert_eq!(
        events.iter().filter(|(_, r, _)| r == "Forbidden").count(),
        1,
        "{events:?}"
    );
    restarted.stop().await;
}

#[tokio::test]
async fn unannotated_deployments_are_never_reconciled() {
    const UNRELATED: usize = 200;
    let ns = TestEnv::global().namespace("shim-scale").await;
    let names: Vec<String> = (0..UNRELATED).map(|i| format!("unrelated-{i}")).collect();
    futures::stream::iter(names.iter())
        .for_each_concurrent(16, |name| {
            let ns = ns.clone();
            async move {
                let manifest = deployment_manifest(
                    name,
                    json!({"example.com/owner": "someone"}),
                    json!({NAME_LABEL: name, VERSION_LABEL: "1.0"}),
                );
                apply_deployment(&ns, &manifest).await;
            }
        })
        .await;

    let operator = Operator::start(&ns, CONFIG).await;
    // A sentinel created after the others: once it is handled, the shim has seen them all
    // (the watch delivers a namespace's events in order).
    let sentinel = deployment_manifest(
        "sentinel",
        json!({annotations::SERVICE_ID: "svc-sentinel"}),
        json!({}),
    );
    apply_deployment(&ns, &sentinel).await;
    wait_ready(&ns, "sentinel").await;
    let writes = settle(&operator).await;
    let settled = operator.shim_reconciles();
    assert!(
        settled < 20,
        "{settled} shim reconciles for one annotated Deployment among {UNRELATED}"
    );

    // Every unrelated Deployment changes; then the sentinel does, once.
    futures::stream::iter(names.iter())
        .for_each_concurrent(16, |name| {
            let ns = ns.clone();
            async move { label_deployment(&ns, name, "touched", "yes").await }
        })
        .await;
    label_deployment(&ns, "sentinel", VERSION_LABEL, "poke").await;
    wait_shim_reconcile_after(&operator, settled).await;
    assert_eq!(settle(&operator).await, writes);
    assert_eq!(
        operator.shim_reconciles(),
        settled + 1,
        "only the sentinel was reconciled"
    );

    // A restarted operator: the initial list holds all of them; only the sentinel (its own
    // watch event, and its child's) is reconciled, and nothing is written.
    operator.stop().await;
    let restarted = Operator::start(&ns, CONFIG).await;
    eventually("the restarted shim reconciles the sentinel", || async {
        (restarted.shim_reconciles() > 0).then_some(())
    })
    .await;
    assert_eq!(settle(&restarted).await, 0, "a restarted operator wrote");
    assert!(
        restarted.shim_reconciles() <= 2,
        "{} reconciles after a restart",
        restarted.shim_reconciles()
    );
    restarted.stop().await;
}

#[tokio::test]
async fn the_sample_deployment_gets_its_token() {
    let ns = TestEnv::global().namespace("shim-sample").await;
    let operator = Operator::start(&ns, CONFIG).await;
    let path = testenv::repo_root().join("deploy/samples/deployment.yaml");
    let sample: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let applied = apply_deployment(&ns, &sample).await;
    let name = applied.name_any();
    let bt = wait_ready(&ns, &name).await;
    let secret_name = bt.status.unwrap().secret_name.unwrap();
    let mounted = applied
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()[0]
        .secret
        .as_ref()
        .unwrap()
        .secret_name
        .clone();
    assert_eq!(
        mounted.as_ref(),
        Some(&secret_name),
        "the sample mounts its token's Secret"
    );
    let sid = eventually("the sample's token", || sid_in(&ns, &secret_name)).await;
    assert_eq!(sid, applied.annotations()[annotations::SERVICE_ID]);
    eventually("the sample's pod-template token id", || async {
        template_token_id(&get_deployment(&ns, &name).await)
    })
    .await;
    operator.stop().await;
}

#[tokio::test]
async fn unusable_annotations_warn_and_create_nothing() {
    let ns = TestEnv::global().namespace("shim-invalid").await;
    let operator = Operator::start(&ns, CONFIG).await;
    let cases = [
        (
            "bad-secret",
            json!({annotations::SERVICE_ID: "svc", annotations::SECRET_NAME: "Not_A_Name"}),
            "InvalidBootstrapToken",
            "secretName",
        ),
        (
            "empty-id",
            json!({annotations::SERVICE_ID: ""}),
            "EmptyServiceId",
            annotations::ENABLED,
        ),
        (
            "bad-enabled",
            json!({annotations::SERVICE_ID: "svc", annotations::ENABLED: "yes"}),
            "InvalidAnnotation",
            "\"yes\"",
        ),
    ];
    for (name, notes, _, _) in &cases {
        apply_deployment(&ns, &deployment_manifest(name, notes.clone(), json!({}))).await;
    }
    for (name, _, reason, mentions) in &cases {
        let (type_, _, note) = wait_event(&ns, name, reason).await;
        assert_eq!(type_, "Warning");
        assert!(note.contains(mentions), "{name}: {note}");
    }
    settle(&operator).await;
    for (name, ..) in &cases {
        assert!(child(&ns, name).await.is_none(), "{name} got a child");
    }
    operator.stop().await;
}

/// A StatefulSet or DaemonSet gets a token as a Deployment does, and with restart-on-reissue its
/// pod template's token id changes exactly once per new token.
async fn gets_a_token_and_rolls_once_per_token<W: Workload>(namespace_prefix: &str) {
    let ns = TestEnv::global().namespace(namespace_prefix).await;
    let operator = Operator::start(&ns, CONFIG).await;
    let kind = W::kind(&());
    let manifest = |id: &str| {
        workload_manifest::<W>(
            "rolling",
            json!({annotations::SERVICE_ID: id, annotations::RESTART_ON_REISSUE: "true"}),
            json!({}),
        )
    };
    let applied = apply_workload::<W>(&ns, &manifest("svc-rolling")).await;

    // The child: named after the workload, controlled by it; its Secret holds the token.
    let bt = wait_ready(&ns, "rolling").await;
    let owner = &bt.owner_references()[0];
    assert_eq!(
        (owner.api_version.as_str(), owner.kind.as_str()),
        ("apps/v1", kind.as_ref())
    );
    assert_eq!(Some(&owner.uid), applied.meta().uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    let sid = eventually("the Secret's token", || {
        sid_in(&ns, "rolling-bootstrap-token")
    })
    .await;
    assert_eq!(sid, "svc-rolling");
    wait_event_on::<W>(&ns, "rolling", "CreatedBootstrapToken").await;

    let first = eventually("the first token id in the pod template", || async {
        let id = ready_token_id(&ns, "rolling").await?;
        (template_token_id(&get_workload::<W>(&ns, "rolling").await)? == id).then_some(id)
    })
    .await;
    let writes = settle(&operator).await;
    let workload = get_workload::<W>(&ns, "rolling").await;
    let generation = workload.meta().generation.unwrap();
    let restart_fields: Vec<_> = workload
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.manager.as_deref() == Some(RESTART_MANAGER))
        .collect();
    assert_eq!(restart_fields.len(), 1, "{restart_fields:?}");
    assert_eq!(
        restart_fields[0].fields_v1.as_ref().unwrap().0,
        json!({"f:spec": {"f:template": {"f:metadata": {"f:annotations": {
            "f:bootstraptoken.dev/token-id": {}
        }}}}})
    );

    // No-op reconciles (a label the shim reads, the child touched, the manifest re-applied)
    // write nothing and leave the generation alone.
    let start = operator.shim_reconciles();
    label_workload::<W>(&ns, "rolling", VERSION_LABEL, "poke").await;
    wait_shim_reconcile_after(&operator, start).await;
    let start = operator.shim_reconciles();
    poke_child(&ns, "rolling", "1").await;
    wait_shim_reconcile_after(&operator, start).await;
    apply_workload::<W>(&ns, &manifest("svc-rolling")).await;
    assert_eq!(settle(&operator).await, writes, "no-op reconciles wrote");
    let workload = get_workload::<W>(&ns, "rolling").await;
    assert_eq!(workload.meta().generation, Some(generation));
    assert_eq!(template_token_id(&workload), Some(first.clone()));

    // A re-issued token: one template change.
    Api::<BootstrapToken>::namespaced(admin().await, &ns)
        .patch(
            "rolling",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {annotations::REISSUE: "1"}}})),
        )
        .await
        .unwrap();
    let second = eventually("the re-issued token id in the pod template", || async {
        let id = ready_token_id(&ns, "rolling").await?;
        (id != first && template_token_id(&get_workload::<W>(&ns, "rolling").await)? == id)
            .then_some(id)
    })
    .await;
    settle(&operator).await;
    assert_eq!(
        get_workload::<W>(&ns, "rolling").await.meta().generation,
        Some(generation + 1)
    );

    // A new service id: a new token, and once more one template change on top of the
    // manifest's own.
    let applied = apply_workload::<W>(&ns, &manifest("svc-rolling-2")).await;
    let applied_generation = applied.meta().generation.unwrap();
    eventually("the new service's token id in the pod template", || async {
        let id = ready_token_id(&ns, "rolling").await?;
        let sid = sid_in(&ns, "rolling-bootstrap-token").await?;
        (id != second
            && sid == "svc-rolling-2"
            && template_token_id(&get_workload::<W>(&ns, "rolling").await)? == id)
            .then_some(())
    })
    .await;
    settle(&operator).await;
    let workload = get_workload::<W>(&ns, "rolling").await;
    assert_eq!(workload.meta().generation, Some(applied_generation + 1));
    assert_eq!(
        template_token_id(&workload),
        ready_token_id(&ns, "rolling").await
    );
    assert_eq!(rollouts::<W>(&ns).await, 3);
    operator.stop().await;
}

#[tokio::test]
async fn statefulset_gets_a_token_and_rolls_once_per_token() {
    gets_a_token_and_rolls_once_per_token::<StatefulSet>("shim-sts").await;
}

#[tokio::test]
async fn daemonset_gets_a_token_and_rolls_once_per_token() {
    gets_a_token_and_rolls_once_per_token::<DaemonSet>("shim-ds").await;
}

/// The controlling owner of the child `name`, as (kind, uid).
async fn child_owner(namespace: &str, name: &str) -> Option<(String, String)> {
    let bt = child(namespace, name).await?;
    let owner = bt
        .owner_references()
        .iter()
        .find(|owner| owner.controller == Some(true))?;
    Some((owner.kind.clone(), owner.uid.clone()))
}

#[tokio::test]
async fn workloads_of_two_kinds_with_one_name_get_one_token() {
    let ns = TestEnv::global().namespace("shim-collision").await;
    let operator = Operator::start(&ns, CONFIG).await;
    let statefulset = |notes: Value| workload_manifest::<StatefulSet>("twin", notes, json!({}));
    let deployment = apply_deployment(
        &ns,
        &deployment_manifest(
            "twin",
            json!({annotations::SERVICE_ID: "svc-deployment"}),
            json!({}),
        ),
    )
    .await;
    apply_workload::<StatefulSet>(&ns, &statefulset(json!({}))).await;
    wait_ready(&ns, "twin").await;
    eventually("the Deployment's token", || async {
        (sid_in(&ns, "twin-bootstrap-token").await? == "svc-deployment").then_some(())
    })
    .await;
    settle(&operator).await;

    // The owner's kind decides: the Deployment's child, touched, triggers the Deployment and
    // never the (unannotated) StatefulSet of the same name.
    let start = operator.shim_reconciles_of::<Deployment>();
    poke_child(&ns, "twin", "1").await;
    eventually("the Deployment reconciled", || async {
        (operator.shim_reconciles_of::<Deployment>() > start).then_some(())
    })
    .await;
    settle(&operator).await;
    assert_eq!(operator.shim_reconciles_of::<StatefulSet>(), 0);

    // Annotated too, the StatefulSet gets a Warning naming the owner, and no token.
    let before = child(&ns, "twin").await.unwrap();
    let statefulset = apply_workload::<StatefulSet>(
        &ns,
        &statefulset(json!({annotations::SERVICE_ID: "svc-statefulset"})),
    )
    .await;
    let (type_, _, note) =
        wait_event_on::<StatefulSet>(&ns, "twin", "BootstrapTokenConflict").await;
    assert_eq!(type_, "Warning");
    assert!(note.contains("belongs to Deployment twin"), "{note}");
    settle(&operator).await;
    let after = child(&ns, "twin").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(
        child_owner(&ns, "twin").await,
        Some(("Deployment".into(), deployment.uid().unwrap()))
    );
    assert_eq!(
        sid_in(&ns, "twin-bootstrap-token").await.as_deref(),
        Some("svc-deployment")
    );
    let conflicts = workload_events::<StatefulSet>(&ns, "twin").await;
    assert_eq!(
        conflicts
            .iter()
            .filter(|(_, r, _)| r == "BootstrapTokenConflict")
            .count(),
        1,
        "{conflicts:?}"
    );

    // The Deployment deleted, garbage collection takes its child and the StatefulSet gets its
    // own.
    Api::<Deployment>::namespaced(admin().await, &ns)
        .delete("twin", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the StatefulSet's own child and token", || async {
        let owner = child_owner(&ns, "twin").await?;
        (owner == ("StatefulSet".into(), statefulset.uid()?)
            && sid_in(&ns, "twin-bootstrap-token").await? == "svc-statefulset")
            .then_some(())
    })
    .await;
    operator.stop().await;
}

#[tokio::test]
async fn workloads_of_two_kinds_created_together_get_one_token() {
    let ns = TestEnv::global().namespace("shim-race").await;
    let operator = Operator::start(&ns, CONFIG).await;
    let notes = json!({annotations::SERVICE_ID: "svc-pair"});
    let statefulset = workload_manifest::<StatefulSet>("pair", notes.clone(), json!({}));
    let daemonset = workload_manifest::<DaemonSet>("pair", notes, json!({}));
    let (statefulset, daemonset) = futures::join!(
        apply_workload::<StatefulSet>(&ns, &statefulset),
        apply_workload::<DaemonSet>(&ns, &daemonset),
    );
    wait_ready(&ns, "pair").await;
    let owner = child_owner(&ns, "pair").await.unwrap();
    settle(&operator).await;
    // The first creation won and kept the child; the other was told, once, and created nothing.
    assert_eq!(child_owner(&ns, "pair").await, Some(owner.clone()));
    let statefulset_events = workload_events::<StatefulSet>(&ns, "pair").await;
    let daemonset_events = workload_events::<DaemonSet>(&ns, "pair").await;
    let (winner, loser) = if owner == ("StatefulSet".into(), statefulset.uid().unwrap()) {
        (statefulset_events, daemonset_events)
    } else {
        assert_eq!(owner, ("DaemonSet".into(), daemonset.uid().unwrap()));
        (daemonset_events, statefulset_events)
    };
    let reasons = |events: &[(String, String, String)]| -> Vec<String> {
        events.iter().map(|(_, reason, _)| reason.clone()).collect()
    };
    assert!(
        reasons(&winner).contains(&"CreatedBootstrapToken".into()),
        "{winner:?}"
    );
    assert_eq!(reasons(&loser), ["BootstrapTokenConflict"], "{loser:?}");
    operator.stop().await;
}
