//! `make bench` (operator half): the controller against the real local control plane.
//!
//! - time until N BootstrapTokens are Ready, against two baselines in the same run: the same
//!   writes a perfect operator makes (create the BootstrapToken, apply the Secret, apply the
//!   status, create the Event), done by the benchmark itself at the operator's concurrency; and
//!   creating N Secrets directly;
//! - the API server's requests per token, by verb and resource (`apiserver_request_total`,
//!   less the benchmark's own);
//! - writes to the API server during one idle minute after settling;
//! - the operator process's peak RSS with 1 000, 10 000 and 30 000 BootstrapTokens, and the slope.
//!
//! Sizes can be overridden: `BENCH_TOKENS=1000 BENCH_LARGE=10000,30000 BENCH_IDLE_SECS=60`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use bootstrap_token_operator::events::EventPublisher;
use bootstrap_token_operator::resource::BootstrapToken;
use kube::runtime::events::{Event, EventType, Reporter};
use testenv::{TestEnv, free_loopback_addr, http_get, metric};

const CONCURRENCY: usize = 32;
/// The operator's reconcile concurrency (`MAX_CONCURRENT_RECONCILES`), for the same-writes baseline.
const OPERATOR_CONCURRENCY: usize = 16;

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

/// The benchmark's own LISTs of BootstrapTokens while it waits for Ready: its watch's lists.
static LISTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Creates `count` BootstrapTokens and returns how long until all are Ready. Readiness is
/// followed by a watch, not by polling LISTs: a LIST of every object every few hundred ms would
/// compete with the operator for the API server and the cores, which the baselines do not have.
async fn create_tokens_until_ready(
    client: kube::Client,
    namespace: &str,
    count: usize,
) -> Duration {
    let api: Api<BootstrapToken> = Api::namespaced(client, namespace);
    let (listed, watching) = tokio::sync::oneshot::channel();
    let all_ready = tokio::spawn(all_ready(api.clone(), count, listed));
    // Watching from before the first object: no Ready status can be missed.
    watching.await.expect("the watch lists");
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
    let done = tokio::time::timeout(Duration::from_secs(1800), all_ready)
        .await
        .expect("all Ready within 30 minutes")
        .expect("the watch task");
    done - started
}

/// When the watch on `api` has seen `count` objects Ready; `listed` once it has listed.
async fn all_ready(
    api: Api<BootstrapToken>,
    count: usize,
    listed: tokio::sync::oneshot::Sender<()>,
) -> Instant {
    let mut listed = Some(listed);
    let mut ready = BTreeSet::new();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                LISTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(listed) = listed.take() {
                    let _ = listed.send(());
                }
            }
            Ok(watcher::Event::Apply(bt) | watcher::Event::InitApply(bt)) => {
                let name = bt.metadata.name.clone().unwrap_or_default();
                if bt.ready_condition().is_some_and(|c| c.status == "True") {
                    ready.insert(name);
                    if ready.len() == count {
                        return Instant::now();
                    }
                } else {
                    ready.remove(&name);
                }
            }
            Ok(watcher::Event::Delete(bt)) => {
                ready.remove(&bt.metadata.name.clone().unwrap_or_default());
            }
            // Retried with back-off by the watcher.
            Err(_) => {}
        }
    }
    panic!("the watch of BootstrapTokens ended")
}

/// Exactly the writes a perfect operator makes for `count` new tokens, made by the benchmark at
/// the operator's concurrency: create the BootstrapToken, apply its Secret (a token-sized
/// value, the operator's labels, annotations and ownerReference), apply its status, create an
/// Event.
async fn same_writes(client: kube::Client, namespace: &str, count: usize) -> Duration {
    let tokens: Api<BootstrapToken> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let events = EventPublisher::new(
        client,
        Reporter {
            controller: "bootstrap-token-operator".into(),
            instance: Some("bench".into()),
        },
    );
    let apply = PatchParams::apply("bench").force();
    let started = Instant::now();
    futures::stream::iter(0..count)
        .for_each_concurrent(OPERATOR_CONCURRENCY, |i| {
            let (tokens, secrets, events, apply) = (&tokens, &secrets, &events, &apply);
            async move {
                let name = format!("svc-{i:05}");
                let bt = json!({
                    "apiVersion": "bootstraptoken.dev/v1alpha1", "kind": "BootstrapToken",
                    "metadata": {"name": name}, "spec": {"serviceId": format!("com.example.{name}")},
                });
                let bt = tokens.patch(&name, apply, &Patch::Apply(&bt)).await.expect("BootstrapToken applied");
                let uid = bt.metadata.uid.unwrap_or_default();
                let secret = json!({
                    "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {
                        "name": format!("{name}-bootstrap-token"),
                        "labels": {"app.kubernetes.io/managed-by": "bootstrap-token-operator"},
                        "annotations": {
                            "bootstraptoken.dev/service-id": format!("com.example.{name}"),
                            "bootstraptoken.dev/token-id": "TV8rwl9jC0EU1kfQez0WGg",
                            "bootstraptoken.dev/key-id": "100",
                            "bootstraptoken.dev/expires-at": "2036-11-20T16:01:09Z",
                            "bootstraptoken.dev/claims-digest": "0123456789abcdef",
                        },
                        "ownerReferences": [{
                            "apiVersion": "bootstraptoken.dev/v1alpha1", "kind": "BootstrapToken",
                            "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true,
                        }],
                    },
                    "data": {"token": ByteString(vec![b'x'; 900])},
                });
                secrets
                    .patch(&format!("{name}-bootstrap-token"), apply, &Patch::Apply(&secret))
                    .await
                    .expect("Secret applied");
                let status = json!({
                    "apiVersion": "bootstraptoken.dev/v1alpha1", "kind": "BootstrapToken",
                    "status": {
                        "observedGeneration": 1, "secretName": format!("{name}-bootstrap-token"),
                        "keyId": "100", "tokenId": "TV8rwl9jC0EU1kfQez0WGg",
                        "issuedAt": "2026-11-20T16:01:09Z", "notBefore": "2026-11-20T15:59:09Z",
                        "expiresAt": "2036-11-20T16:01:09Z", "renewalTime": "2033-07-21T16:01:09Z",
                        "conditions": [{
                            "type": "Ready", "status": "True", "reason": "Issued",
                            "message": format!("token TV8rwl9jC0EU1kfQez0WGg for com.example.{name} expires 2036-11-20T16:01:09Z"),
                            "observedGeneration": 1, "lastTransitionTime": "2026-11-20T16:01:09Z",
                        }],
                    },
                });
                tokens.patch_status(&name, apply, &Patch::Apply(&status)).await.expect("status applied");
                // The operator's own event publisher: the same request.
                let regarding = k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some("bootstraptoken.dev/v1alpha1".into()),
                    kind: Some("BootstrapToken".into()),
                    name: Some(name.clone()),
                    namespace: Some(namespace.into()),
                    uid: Some(uid),
                    ..Default::default()
                };
                let event = Event {
                    type_: EventType::Normal,
                    reason: "Issued".into(),
                    note: Some(format!("issued token TV8rwl9jC0EU1kfQez0WGg for com.example.{name}")),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                events.publish(&event, &regarding).await.expect("Event created");
            }
        })
        .await;
    started.elapsed()
}

/// `apiserver_request_total` by `VERB resource[/subresource]`, summed over codes and scopes.
async fn api_requests(client: &kube::Client) -> BTreeMap<String, f64> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .expect("the API server's metrics");
    let mut counts = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        if resource.is_empty() {
            continue;
        }
        let key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        *counts.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    counts
}

/// What changed between two [`api_requests`] snapshots, leaving out watches (long-running, not
/// per token) and what `own` says the benchmark itself sent.
fn requests_between(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    own: &[(&str, f64)],
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(key, value)| {
            let mine: f64 = own.iter().filter(|(k, _)| k == key).map(|(_, v)| v).sum();
            (
                key.clone(),
                value - before.get(key).copied().unwrap_or(0.0) - mine,
            )
        })
        .filter(|(key, value)| *value > 0.5 && !key.starts_with("WATCH"))
        .collect()
}

/// Resident set size now (VmRSS) of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
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
        let large: Vec<usize> = std::env::var("BENCH_LARGE")
            .unwrap_or_else(|_| "10000,30000".into())
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect();
        let idle = Duration::from_secs(env_usize("BENCH_IDLE_SECS", 60) as u64);
        let env = TestEnv::global();
        let admin = env.admin_client().await;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

        let baseline_ns = env.namespace("bench-secrets").await;
        let baseline = create_secrets(admin.clone(), &baseline_ns, count).await;
        let same_ns = env.namespace("bench-same-writes").await;
        let before = api_requests(&admin).await;
        let same = same_writes(admin.clone(), &same_ns, count).await;
        let same_requests = requests_between(&before, &api_requests(&admin).await, &[]);

        let ns = env.namespace("bench-tokens").await;
        let operator = OperatorProcess::start(&ns).await;
        let before = api_requests(&admin).await;
        LISTS.store(0, std::sync::atomic::Ordering::Relaxed);
        let ready = create_tokens_until_ready(admin.clone(), &ns, count).await;
        // Let the last reconciles finish before counting.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let lists = LISTS.load(std::sync::atomic::Ordering::Relaxed) as f64;
        let operator_requests = requests_between(
            &before,
            &api_requests(&admin).await,
            &[("APPLY bootstraptokens", count as f64), ("LIST bootstraptokens", lists)],
        );
        let rss_small = operator.peak_rss_mib();
        let (reconciles, mean_ms) = operator.reconciles().await;
        let idle_writes = writes_during(admin.clone(), &ns, idle).await;
        drop(operator);

        // RSS once all are Ready and settled, for the slope; peak as well.
        let mut sizes = Vec::new();
        for &n in &large {
            let large_ns = env.namespace(&format!("bench-large-{n}")).await;
            let large_operator = OperatorProcess::start(&large_ns).await;
            let took = create_tokens_until_ready(admin.clone(), &large_ns, n).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            sizes.push((n, took, rss_mib(large_operator.0.id()), large_operator.peak_rss_mib()));
            drop(large_operator);
        }

        let per = |map: &BTreeMap<String, f64>| {
            map.iter()
                .map(|(k, v)| format!("{k} {:.2}", v / count as f64))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("load average at start: {}", load.trim());
        println!("| measurement | value | goal |");
        println!("| --- | --- | --- |");
        println!("| {count} Secrets created directly | {:.2} s | |", baseline.as_secs_f64());
        println!("| same writes as a perfect operator, {count} objects at concurrency {OPERATOR_CONCURRENCY} (baseline) | {:.2} s | |", same.as_secs_f64());
        println!("| baseline's requests per object | {} | |", per(&same_requests));
        println!("| {count} BootstrapTokens created until all Ready | {:.2} s | |", ready.as_secs_f64());
        println!("| **ratio, tokens Ready / same-writes baseline** | **{:.2}×** | ≤ 1.3× |", ready.as_secs_f64() / same.as_secs_f64());
        println!("| ratio, tokens Ready / Secrets directly | {:.2}× | |", ready.as_secs_f64() / baseline.as_secs_f64());
        println!("| API requests per token besides the benchmark's own | {} | ≤ 3 writes, no GET |", per(&operator_requests));
        println!("| reconciles for those {count} objects (mean duration) | {reconciles} ({mean_ms:.1} ms) | |");
        println!("| writes in {} idle s after settling (BootstrapTokens, Secrets, Events) | {idle_writes} | 0 |", idle.as_secs());
        println!("| operator peak RSS, {count} BootstrapTokens | {rss_small:.1} MiB | |");
        for (n, took, rss, peak) in &sizes {
            println!("| {n} BootstrapTokens: Ready after / RSS settled / peak RSS | {:.1} s / {rss:.1} MiB / {peak:.1} MiB | |", took.as_secs_f64());
        }
        if let (Some(first), Some(last)) = (sizes.first(), sizes.last())
            && last.0 > first.0
        {
            let slope = (last.2 - first.2) * 1024.0 / (last.0 - first.0) as f64;
            println!("| RSS slope per object, {} → {} (settled) | {slope:.2} KiB | ≤ 2 KiB |", first.0, last.0);
        }
    });
}
