//! The workload shim, after cert-manager's ingress-shim: a Deployment, StatefulSet or DaemonSet
//! annotated with `bootstraptoken.dev/service-id` gets a child BootstrapToken named after it, in
//! its namespace, owned by it. The BootstrapToken controller issues the token — one code path
//! for every token; this controller only keeps the child in step with the annotations, mirrors
//! the child's failures onto the workload as events and, when asked to, rolls the pods when the
//! token changes. Every kind behaves the same; a kind is one [`Workload`] impl
//! ([`deployment`], [`statefulset`], [`daemonset`]).
//!
//! Unrelated workloads cost almost nothing: they are watched metadata-only, the local copy of an
//! unannotated one is a bare name (no labels, annotations or managedFields), and they are
//! filtered out before the reconcile queue, so they are never reconciled. An annotated one is
//! reconciled only when something the shim reads changes (its `bootstraptoken.dev/` annotations,
//! the two labels an id is derived from, its generation), when its child changes, or hourly.
//!
//! Annotations on the workload ([`annotations`](crate::resource::annotations)):
//!
//! | annotation | meaning |
//! | --- | --- |
//! | `service-id: <id>` | keep a BootstrapToken with `serviceId: <id>` |
//! | `enabled: "true"` | with an empty or absent `service-id`: derive it as `<app.kubernetes.io/name>-<app.kubernetes.io/version>`; `"false"` turns the shim off for this workload |
//! | `secret-name: <name>` | the Secret's name; default `<workload>-bootstrap-token` |
//! | `restart-on-reissue: "true"` | keep the pod-template annotation `bootstraptoken.dev/token-id` equal to the current token's id, so the pods roll when a new token is issued |
//!
//! Choices:
//! - Removing the annotations deletes the child (and so, by garbage collection, its Secret). A
//!   *misconfiguration* (a missing label, an empty id without `enabled: "true"`, a value the API
//!   server rejects) only warns and leaves an existing child alone, as cert-manager does: a typo
//!   must not delete the credential that running pods use.
//! - One name, one token. The child is named after the workload whatever its kind (as it always
//!   was for Deployments), so a Deployment and a StatefulSet of the same name in one namespace,
//!   both annotated, would share it: the owner reference decides. The first to create the child
//!   owns it (creation, not apply, so a simultaneous second fails instead of taking it over);
//!   the other gets a `BootstrapTokenConflict` Warning naming the owner, and no token, exactly as
//!   for a hand-written BootstrapToken of that name. Once the child goes (its owner deleted or
//!   unannotated) the other gets its own. Naming children `<name>-<kind>` instead would not help:
//!   both would still default to the Secret `<name>-bootstrap-token`.
//! - A child is mapped back to its workload by the owner reference's kind *and* uid, so a
//!   StatefulSet's child never triggers the Deployment of the same name as its owner (it does
//!   trigger it while that Deployment is annotated, which waits for the name).
//! - `restart-on-reissue` also records the *first* token's id. That rolls the pods once when the
//!   token is first issued, which is not pointless: pods created before the Secret existed sit in
//!   `ContainerCreating` until the kubelet retries the mount, and new ones start at once. In
//!   exchange the rule is stateless and self-healing — the annotation equals the child's
//!   `status.tokenId` — so it is written exactly when the token id changes and never on a
//!   reconcile that issued nothing (no drift loop with Argo CD or Flux). The annotation has its
//!   own field manager ([`RESTART_MANAGER`]) that owns nothing else. Turning the option off
//!   leaves the last value in place: removing it would roll the pods for nothing. (A StatefulSet
//!   or DaemonSet with `updateStrategy: OnDelete` gets the annotation but, by its own rule,
//!   replaces a pod only when it is deleted.)
//! - Warnings (configuration problems, a foreign BootstrapToken of that name, the child's
//!   `Ready=False` reason) are published when they change, not on every reconcile; a child's
//!   failure that happened before this process started is not published again.
//! - Each kind is its own controller in metrics and logs ([`Workload::CONTROLLER`]):
//!   `deployment` (as before), `statefulset`, `daemonset`.

mod daemonset;
mod deployment;
mod reconcile;
mod statefulset;
mod wanted;
mod watch;
mod workload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DynamicObject};
use kube::runtime::controller;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::utils::CancelableJoinHandle;
use kube::{Client, Resource, ResourceExt};

use crate::backoff::Backoff;
use crate::events::EventPublisher;
use crate::telemetry::ControllerMetrics;

pub use reconcile::{error_policy, reconcile};
pub use wanted::{Problem, Wanted, wanted};
pub use workload::{Meta, Workload};

/// The Deployment shim's name in metrics and logs (the shim's only one before it handled
/// StatefulSets and DaemonSets); [`CONTROLLERS`] lists every kind's.
pub const CONTROLLER: &str = <Deployment as Workload>::CONTROLLER;
/// Every kind's name in metrics and logs.
pub const CONTROLLERS: [&str; 3] = [
    CONTROLLER,
    <StatefulSet as Workload>::CONTROLLER,
    <DaemonSet as Workload>::CONTROLLER,
];
/// Field manager of the pod-template annotation `bootstraptoken.dev/token-id`, and of nothing else.
pub const RESTART_MANAGER: &str = "bootstrap-token-operator-restart";
/// With `bootstraptoken.dev/enabled: "true"`, the service id is `<name>-<version>` of these labels.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Shared by every kind's controller.
pub struct Context {
    pub client: Client,
    pub recorder: EventPublisher,
    pub metrics: Arc<ControllerMetrics>,
    /// Child failures older than this were reported by an earlier instance.
    started: Timestamp,
    /// Keyed by the erased reference, which carries the kind.
    failures: Backoff<ObjectRef<DynamicObject>>,
    /// What has been published per workload (by uid), so each problem is reported once.
    reported: Mutex<HashMap<String, Reported>>,
}

#[derive(Debug, Default)]
struct Reported {
    /// The configuration problem last published, as (reason, note).
    problem: Option<(String, String)>,
    /// The child's `Ready=False` last mirrored, as (reason, lastTransitionTime).
    child: Option<(String, Timestamp)>,
}

impl Context {
    pub fn new(client: Client, recorder: EventPublisher, metrics: Arc<ControllerMetrics>) -> Self {
        Context {
            client,
            recorder,
            metrics,
            started: Timestamp::now(),
            failures: Backoff::default(),
            reported: Mutex::default(),
        }
    }

    /// Shares the BootstrapToken controller's client, event recorder and metrics.
    pub fn from_controller(ctx: &crate::controller::Context) -> Self {
        Context::new(
            ctx.client.clone(),
            ctx.recorder.clone(),
            ctx.metrics.clone(),
        )
    }

    fn reported(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reported>> {
        self.reported.lock().expect("not poisoned")
    }

    /// Publishes a Warning for a configuration problem unless this one was the last published.
    async fn report_problem<W: Workload>(&self, d: &Meta<W>, problem: Problem, note: String) {
        let reason = problem.as_str();
        let key = (reason.to_string(), note.clone());
        let new = {
            let mut reported = self.reported();
            let entry = reported.entry(uid_of(d)).or_default();
            let new = entry.problem.as_ref() != Some(&key);
            entry.problem = Some(key);
            new
        };
        if new {
            tracing::info!(reason, %note, kind = W::CONTROLLER, "workload misconfigured");
            self.publish(d, EventType::Warning, reason, note, None)
                .await;
        }
    }

    fn clear_problem<W: Workload>(&self, d: &Meta<W>) {
        if let Some(entry) = self.reported().get_mut(&uid_of(d)) {
            entry.problem = None;
        }
    }

    fn forget<W: Workload>(&self, d: &Meta<W>) {
        self.reported().remove(&uid_of(d));
        self.failures.reset(&ObjectRef::from_obj(d).erase());
    }

    /// Events are best effort: failing to record one must not fail the reconcile.
    async fn publish<W: Workload>(
        &self,
        d: &Meta<W>,
        type_: EventType,
        reason: &str,
        note: String,
        related: Option<ObjectReference>,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: related,
        };
        if let Err(error) = self.recorder.publish(&event, &d.object_ref(&())).await {
            tracing::warn!(%error, reason, "could not publish event");
        }
    }
}

fn uid_of(d: &impl Resource) -> String {
    d.uid().unwrap_or_default()
}

/// Runs the shim for every kind until `shutdown` resolves, over all namespaces or the given ones.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: &[String],
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    futures::join!(
        run_kind::<Deployment>(&ctx, namespaces, shutdown.clone()),
        run_kind::<StatefulSet>(&ctx, namespaces, shutdown.clone()),
        run_kind::<DaemonSet>(&ctx, namespaces, shutdown),
    );
}

/// One kind's controller: per namespace (or for all), a queue fed by that kind's workloads and
/// by the BootstrapTokens that concern them.
async fn run_kind<W: Workload>(
    ctx: &Arc<Context>,
    namespaces: &[String],
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = &ctx.client;
    let scopes: Vec<Option<&String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(Some).collect()
    };
    let loops = scopes.into_iter().map(|namespace| {
        let (workloads, tokens) = match namespace {
            None => (Api::all(client.clone()), Api::all(client.clone())),
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
        };
        let (store, writer) = reflector::store::<Meta<W>>();
        let queue = stream::select(
            watch::workload_triggers(workloads, writer, store.clone(), ctx.clone()),
            watch::token_triggers(tokens, store.clone()),
        )
        .take_until(shutdown.clone());
        // The applier starts reconciling once the first list succeeded, and until then it would
        // outlive the shutdown (say, when the RBAC does not yet let the operator list this kind):
        // then there is nothing in flight to finish, so it is dropped.
        let unready_at_shutdown = {
            let store = store.clone();
            let shutdown = shutdown.clone();
            async move {
                shutdown.await;
                if store.wait_until_ready().now_or_never().is_some() {
                    futures::future::pending::<()>().await;
                }
            }
        };
        let applier = controller::applier(
            |d, ctx| {
                CancelableJoinHandle::spawn(
                    reconcile::<W>(d, ctx),
                    &tokio::runtime::Handle::current(),
                )
            },
            error_policy::<W>,
            ctx.clone(),
            store,
            queue,
            controller::Config::default(),
        )
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                Err(controller::Error::QueueError(error)) => {
                    tracing::warn!(%error, controller = W::CONTROLLER, "watch failed");
                }
                Err(error) => tracing::debug!(%error, controller = W::CONTROLLER, "reconcile loop"),
            }
        });
        futures::future::select(Box::pin(applier), Box::pin(unready_at_shutdown))
    });
    futures::future::join_all(loops).await;
}
