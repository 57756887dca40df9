//! Runs the operator in-process against the test control plane, one instance per test namespace.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::oneshot;

use bootstrap_token_operator::app::Core;
use bootstrap_token_operator::config::Config;
use bootstrap_token_operator::controller::{self, Context};
use bootstrap_token_operator::resource::{BootstrapToken, TOKEN_KEY, annotations};
use bootstrap_token_operator::shim;
use bootstrap_token_operator::token::KeySet;
use bootstrap_token_operator::token::store::KeyProvider;
use testenv::TestEnv;

pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Operator {
    pub ctx: Arc<Context>,
    /// Every non-GET request this operator instance sent to the API server.
    pub writes: testenv::WriteCounter,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Operator {
    /// Starts the controller for `namespace` as the restricted operator identity; its signing
    /// key Secret lives in the same namespace.
    pub async fn start(namespace: &str, config_yaml: &str) -> Operator {
        Operator::start_watching(&[namespace], config_yaml).await
    }

    /// Watches every namespace of `namespaces`; the key Secret lives in the first.
    pub async fn start_watching(namespaces: &[&str], config_yaml: &str) -> Operator {
        let config = Config::parse(config_yaml).expect("test config is valid");
        let (client, writes) = TestEnv::global().operator_client_counting_writes().await;
        let watched: Vec<String> = namespaces.iter().map(|ns| ns.to_string()).collect();
        let keys = KeyProvider::new(client.clone(), namespaces[0], config.signing.clone())
            .watching(&watched);
        Operator::start_with(client, writes, namespaces, &config, keys)
    }

    /// Starts the controllers signing with `keys` instead of the key Secret.
    pub async fn start_with_keys(namespace: &str, config_yaml: &str, keys: KeySet) -> Operator {
        Operator::start_with_provider(namespace, config_yaml, KeyProvider::from_keys(keys)).await
    }

    /// Starts the controllers with the keys `keys` loads (a KMS key, say).
    pub async fn start_with_provider(
        namespace: &str,
        config_yaml: &str,
        keys: KeyProvider,
    ) -> Operator {
        let config = Config::parse(config_yaml).expect("test config is valid");
        let (client, writes) = TestEnv::global().operator_client_counting_writes().await;
        Operator::start_with(client, writes, &[namespace], &config, keys)
    }

    fn start_with(
        client: kube::Client,
        writes: testenv::WriteCounter,
        namespaces: &[&str],
        config: &Config,
        keys: KeyProvider,
    ) -> Operator {
        let core = Arc::new(Core::new(
            client,
            config,
            namespaces[0],
            Arc::new(keys),
            None,
            &mut Registry::default(),
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = stopped.map(|_| ()).boxed().shared();
        let namespaces: Vec<String> = namespaces.iter().map(|ns| ns.to_string()).collect();
        let task = tokio::spawn({
            let core = core.clone();
            async move {
                futures::join!(
                    core.follow(shutdown.clone()),
                    core.reconcile(&namespaces, shutdown)
                );
            }
        });
        let ctx = core.ctx.clone();
        Operator {
            ctx,
            writes,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful stop: in-flight reconciles finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("controller stops within the deadline")
                .expect("controller task does not panic");
        }
    }

    pub fn reconciles(&self) -> u64 {
        self.ctx.metrics.reconcile_count(controller::CONTROLLER)
    }

    /// Bootstrap tokens this operator instance signed so far.
    pub fn issued(&self) -> u64 {
        controller::IssueReason::LABELS
            .into_iter()
            .map(|reason| self.ctx.issuer.issued_count("bootstrap", reason))
            .sum()
    }

    /// Reconciles of the workload shim so far, every kind.
    pub fn shim_reconciles(&self) -> u64 {
        shim::CONTROLLERS
            .into_iter()
            .map(|controller| self.ctx.metrics.reconcile_count(controller))
            .sum()
    }

    /// Reconciles of the shim's controller for one kind of workload so far.
    pub fn shim_reconciles_of<W: shim::Workload>(&self) -> u64 {
        self.ctx.metrics.reconcile_count(W::CONTROLLER)
    }

    pub async fn keys(&self) -> Arc<bootstrap_token_operator::token::KeySet> {
        self.ctx.issuer.keys().await.expect("keys load")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Polls `check` until it returns `Some`, failing the test with `what` after the deadline.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(DEADLINE, what, check).await
}

pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn admin() -> Client {
    TestEnv::global().admin_client().await
}

pub async fn apply_bt(namespace: &str, manifest: Value) -> BootstrapToken {
    let api: Api<BootstrapToken> = Api::namespaced(admin().await, namespace);
    let name = manifest["metadata"]["name"]
        .as_str()
        .expect("manifest has a name")
        .to_string();
    api.patch(
        &name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&manifest),
    )
    .await
    .expect("BootstrapToken applies")
}

pub fn bt_manifest(name: &str, spec: Value) -> Value {
    serde_json::json!({
        "apiVersion": "bootstraptoken.dev/v1alpha1",
        "kind": "BootstrapToken",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// Waits for Ready=True at the current generation and returns the object.
pub async fn wait_ready(namespace: &str, name: &str) -> BootstrapToken {
    let api: Api<BootstrapToken> = Api::namespaced(admin().await, namespace);
    eventually(&format!("{namespace}/{name} Ready"), || {
        let api = api.clone();
        async move {
            let bt = api.get(name).await.ok()?;
            let ready = bt.ready_condition()?;
            (ready.status == "True" && ready.observed_generation == bt.metadata.generation)
                .then_some(bt)
        }
    })
    .await
}

/// Sets the `reissue` annotation of the BootstrapToken `name` to `value`.
pub async fn reissue(namespace: &str, name: &str, value: &str) {
    let api: Api<BootstrapToken> = Api::namespaced(admin().await, namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {annotations::REISSUE: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotating the BootstrapToken");
}

/// Waits for `svc` in `namespace` to say `SigningUnavailable` (its message naming `why`), and
/// checks that it kept the token it had: `first` is the object as it was Ready, `issued` the token
/// its Secret `svc-bootstrap-token` held.
pub async fn signing_unavailable_keeps_the_token(
    namespace: &str,
    first: &BootstrapToken,
    issued: &str,
    why: &str,
) {
    let failed = wait_reason(namespace, "svc", "SigningUnavailable").await;
    let ready = failed.ready_condition().unwrap();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains(why), "{}", ready.message);
    assert_eq!(
        failed.status.as_ref().unwrap().token_id,
        first.status.as_ref().unwrap().token_id,
        "the status still names the token the Secret holds"
    );
    assert_eq!(
        token_of(&secret(namespace, "svc-bootstrap-token").await.unwrap()),
        issued,
        "the issued token is untouched while signing fails"
    );
}

/// Waits for the Ready condition to carry `reason` and returns the object.
pub async fn wait_reason(namespace: &str, name: &str, reason: &str) -> BootstrapToken {
    let api: Api<BootstrapToken> = Api::namespaced(admin().await, namespace);
    eventually(&format!("{namespace}/{name} reason {reason}"), || {
        let api = api.clone();
        async move {
            let bt = api.get(name).await.ok()?;
            (bt.ready_condition()?.reason == reason).then_some(bt)
        }
    })
    .await
}

pub async fn secret(namespace: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(admin().await, namespace)
        .get_opt(name)
        .await
        .expect("reading a Secret")
}

pub fn token_of(secret: &Secret) -> String {
    let bytes = &secret.data.as_ref().expect("Secret has data")[TOKEN_KEY].0;
    String::from_utf8(bytes.clone()).expect("token is UTF-8")
}

/// The claims of the token in Secret `namespace/name` once it is another than the token `jti`.
pub async fn token_replaced(
    namespace: &str,
    name: &str,
    jti: &str,
) -> serde_json::Map<String, Value> {
    eventually(&format!("a token other than {jti} in {name}"), || async {
        let claims = payload(&token_of(&secret(namespace, name).await?));
        claims["jti"]
            .as_str()
            .is_some_and(|current| current != jti)
            .then_some(claims)
    })
    .await
}

/// The decoded JSON payload of a compact JWT, keys in their original order.
pub fn payload(token: &str) -> serde_json::Map<String, Value> {
    use base64::Engine;
    let part = token.split('.').nth(1).expect("JWT has a payload");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("payload is base64url");
    serde_json::from_slice(&json).expect("payload is JSON")
}

/// Events regarding the object of `kind` and `name`, as (type, reason, note).
pub async fn events_regarding(
    namespace: &str,
    kind: &str,
    name: &str,
) -> Vec<(String, String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin().await, namespace);
    api.list(&Default::default())
        .await
        .expect("listing events")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Events recorded for the BootstrapToken `name`, as (reason, note).
pub async fn events_for(namespace: &str, name: &str) -> Vec<(String, String)> {
    events_regarding(namespace, "BootstrapToken", name)
        .await
        .into_iter()
        .map(|(_, reason, note)| (reason, note))
        .collect()
}
