//! `make bench` (operator half): the controller against the real local control plane.
//!
//! - time until N BootstrapTokens are Ready, against creating N Secrets directly through the same
//!   API server in the same run (the baseline);
//! - writes to the API server during one idle minute after settling;
//! - the operator process's peak RSS with 1 000 and with 10 000 BootstrapTokens.
//!
//! Sizes can be overridden: `BENCH_TOKENS=1000 BENCH_LARGE=10000 BENCH_IDLE_SECS=60`.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use bootstrap_token_operator::resource::BootstrapToken;
use testenv::{TestEnv, free_loopback_addr, http_get, metric};

const CONCURRENCY: usize = 32;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct OperatorProcess(Child, std::net::SocketAddr);

impl OperatorProcess {
    /// Starts the operator and returns once it serves `/readyz` and leads, so start-up is not
    /// part of any measurement.
    async fn start(namespace: &str) -> OperatorProcess {
        let env = TestEnv::global();
        let admin_addr = free_loopback_addr();
        let log = std::fs::File::create(env.dir().join(format!("bench-{namespace}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bootstrap-token-operator"))
            .args([
                "run",
                "--namespace",
                namespace,
                "--watch-namespaces",
                namespace,
                "--admin-addr",
                &admin_addr.to_string(),
            ])
            // Tests and benchmarks run several operators at once: no fixed endpoint port.
            .args(["--endpoint-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", env.operator_kubeconfig_path())
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("operator binary starts");
        let operator = OperatorProcess(child, admin_addr);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !leads(admin_addr).await {
            assert!(
                Instant::now() < deadline,
                "the operator did not become ready and lead"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        operator
    }

    /// Reconciles so far and their mean duration in milliseconds.
    async fn reconciles(&self) -> (f64, f64) {
        let text = metrics(self.1).await.unwrap_or_default();
        let count =
            metric(&text, "bootstrap_token_reconcile_duration_seconds_count").unwrap_or(0.0);
        let sum = metric(&text, "bootstrap_token_reconcile_duration_seconds_sum").unwrap_or(0.0);
        (
            count,
            if count > 0.0 {
                sum / count * 1000.0
            } else {
                0.0
            },
        )
    }

    /// Peak resident set size (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The operator's /metrics text, or None while it does not answer.
async fn metrics(addr: std::net::SocketAddr) -> Option<String> {
    Some(http_get(addr, "/metrics").await?.1)
}

/// Whether the operator at `addr` holds the lease (and so reconciles).
async fn leads(addr: std::net::SocketAddr) -> bool {
    metrics(addr)
        .await
        .is_some_and(|text| metric(&text, "bootstrap_token_leader") == Some(1.0))
}

async fn create_secrets(client: kube::Client, namespace: &str, count: usize) -> Duration {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let started = Instant::now();
    futures::stream::iter(0..count)
        .for_each_concurrent(CONCURRENCY, |i| {
            let api = api.clone();
            async move {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(format!("direct-{i:05}")),
                        ..Default::default()
                    },
                    data: Some([("token".to_string(), ByteString(vec![b'x'; 900]))].into()),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &secret)
                    .await
                    .expect("Secret created");
            }
        })
        .await;
    started.elapsed()
}

async fn create_tokens_until_ready(
    client: kube::Client,
    namespace: &str,
    count: usize,
) -> Duration {
    let api: Api<BootstrapToken> = Api::namespaced(client, namespace);
    let started = Instant::now();
    futures::stream::iter(0..count)
        .for_each_concurrent(CONCURRENCY, |i| {
            let api = api.clone();
            async move {
                let name = format!("svc-{i:05}");
                let bt = json!({
                    "apiVersion": "bootstraptoken.dev/v1alpha1", "kind": "BootstrapToken",
                    "metadata": {"name": name}, "spec": {"serviceId": format!("com.example.{name}")},
                });
                api.patch(&name, &PatchParams::apply("bench"), &Patch::Apply(&bt)).await.expect("BootstrapToken applied");
            }
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let ready = api
            .list(&ListParams::default())
            .await
            .expect("listing BootstrapTokens")
            .items
            .iter()
            .filter(|bt| bt.ready_condition().is_some_and(|c| c.status == "True"))
            .count();
        if ready == count {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "only {ready}/{count} Ready after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes seen through watches on the namespace's BootstrapTokens, Secrets and Events.
async fn writes_during(client: kube::Client, namespace: &str, idle: Duration) -> usize {
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut tasks = Vec::new();
    macro_rules! watch {
        ($kind:ty) => {{
            let api: Api<$kind> = Api::namespaced(client.clone(), namespace);
            let seen = seen.clone();
            tasks.push(tokio::spawn(async move {
                // Skip the initial listing: only changes after the watch started count.
                let mut events = watcher(api, watcher::Config::default()).boxed();
                while let Ok(Some(event)) = events.try_next().await {
                    if let watcher::Event::Apply(object) = event {
                        let meta = kube::Resource::meta(&object);
                        seen.lock().unwrap().insert(format!(
                            "{}/{}@{}",
                            stringify!($kind),
                            meta.name.clone().unwrap_or_default(),
                            meta.resource_version.clone().unwrap_or_default()
                        ));
                    }
                }
            }));
        }};
    }
    watch!(BootstrapToken);
    watch!(Secret);
    watch!(k8s_openapi::api::events::v1::Event);
    tokio::time::sleep(idle).await;
    for task in tasks {
        task.abort();
    }
    seen.lock().unwrap().len()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let count = env_usize("BENCH_TOKENS", 1000);
        let large = env_usize("BENCH_LARGE", 10_000);
        let idle = Duration::from_secs(env_usize("BENCH_IDLE_SECS", 60) as u64);
        let env = TestEnv::global();
        let admin = env.admin_client().await;

        let baseline_ns = env.namespace("bench-secrets").await;
        let baseline = create_secrets(admin.clone(), &baseline_ns, count).await;

        let ns = env.namespace("bench-tokens").await;
        let operator = OperatorProcess::start(&ns).await;
        let ready = create_tokens_until_ready(admin.clone(), &ns, count).await;
        let rss_small = operator.peak_rss_mib();
        let (reconciles, mean_ms) = operator.reconciles().await;
        let idle_writes = writes_during(admin.clone(), &ns, idle).await;
        drop(operator);

        let large_ns = env.namespace("bench-large").await;
        let large_operator = OperatorProcess::start(&large_ns).await;
        let large_ready = create_tokens_until_ready(admin.clone(), &large_ns, large).await;
        let rss_large = large_operator.peak_rss_mib();
        drop(large_operator);

        println!("| measurement | value | goal |");
        println!("| --- | --- | --- |");
        println!("| {count} Secrets created directly (baseline) | {:.2} s | |", baseline.as_secs_f64());
        println!("| {count} BootstrapTokens created until all Ready | {:.2} s | |", ready.as_secs_f64());
        println!("| ratio, tokens Ready / baseline | {:.2}× | ≤ 1.3× |", ready.as_secs_f64() / baseline.as_secs_f64());
        println!("| reconciles for those {count} objects (mean duration) | {reconciles} ({mean_ms:.1} ms) | |");
        println!("| writes in {} idle s after settling (BootstrapTokens, Secrets, Events) | {idle_writes} | 0 |", idle.as_secs());
        println!("| operator peak RSS, {count} BootstrapTokens | {rss_small:.1} MiB | |");
        println!("| {large} BootstrapTokens created until all Ready | {:.2} s | |", large_ready.as_secs_f64());
        println!("| operator peak RSS, {large} BootstrapTokens | {rss_large:.1} MiB | ≤ 64 MiB |");
    });
}
