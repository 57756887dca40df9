//! The Deployment shim, after cert-manager's ingress-shim: a Deployment annotated with
//! `bootstraptoken.dev/service-id` gets a child BootstrapToken named after it, in its namespace,
//! owned by it. The BootstrapToken controller issues the token — one code path for every token;
//! this controller only keeps the child in step with the annotations, mirrors the child's
//! failures onto the Deployment as events and, when asked to, rolls the pods when the token
//! changes.
//!
//! Unrelated Deployments cost almost nothing: Deployments are watched metadata-only, the local
//! copy of an unannotated one is a bare name (no labels, annotations or managedFields), and they
//! are filtered out before the reconcile queue, so they are never reconciled. An annotated one is
//! reconciled only when something the shim reads changes (its `bootstraptoken.dev/` annotations,
//! the two labels an id is derived from, its generation), when its child changes, or hourly.
//!
//! Annotations on the Deployment ([`annotations`]):
//!
//! | annotation | meaning |
//! | --- | --- |
//! | `service-id: <id>` | keep a BootstrapToken with `serviceId: <id>` |
//! | `enabled: "true"` | with an empty or absent `service-id`: derive it as `<app.kubernetes.io/name>-<app.kubernetes.io/version>`; `"false"` turns the shim off for this Deployment |
//! | `secret-name: <name>` | the Secret's name; default `<deployment>-bootstrap-token` |
//! | `restart-on-reissue: "true"` | keep the pod-template annotation `bootstraptoken.dev/token-id` equal to the current token's id, so the pods roll when a new token is issued |
//!
//! Choices:
//! - Removing the annotations deletes the child (and so, by garbage collection, its Secret). A
//!   *misconfiguration* (a missing label, an empty id without `enabled: "true"`, a value the API
//!   server rejects) only warns and leaves an existing child alone, as cert-manager does: a typo
//!   must not delete the credential that running pods use.
//! - `restart-on-reissue` also records the *first* token's id. That rolls the pods once when the
//!   token is first issued, which is not pointless: pods created before the Secret existed sit in
//!   `ContainerCreating` until the kubelet retries the mount, and new ones start at once. In
//!   exchange the rule is stateless and self-healing — the annotation equals the child's
//!   `status.tokenId` — so it is written exactly when the token id changes and never on a
//!   reconcile that issued nothing (no drift loop with Argo CD or Flux). The annotation has its
//!   own field manager ([`RESTART_MANAGER`]) that owns nothing else. Turning the option off
//!   leaves the last value in place: removing it would roll the pods for nothing.
//! - Warnings (configuration problems, a foreign BootstrapToken of that name, the child's
//!   `Ready=False` reason) are published when they change, not on every reconcile; a child's
//!   failure that happened before this process started is not published again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, PartialObjectMeta, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{self, Action, ReconcileReason, ReconcileRequest};
use kube::runtime::events::{Event, EventType};

use crate::backoff::Backoff;
use crate::events::EventPublisher;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::utils::CancelableJoinHandle;
use kube::runtime::{WatchStreamExt, applier, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::resource::{BootstrapToken, MANAGED_BY_LABEL, MANAGER, annotations};
use crate::telemetry::ControllerMetrics;

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "deployment";
/// Field manager of the pod-template annotation `bootstraptoken.dev/token-id`, and of nothing else.
pub const RESTART_MANAGER: &str = "bootstrap-token-operator-restart";
/// With `bootstraptoken.dev/enabled: "true"`, the service id is `<name>-<version>` of these labels.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// The shim's view of a Deployment: metadata only.
pub type DeploymentMeta = PartialObjectMeta<Deployment>;

/// Periodic look, for drift no watch event reports.
const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// The child is being deleted (say, with finalizers); look again to recreate it once it is gone.
const DELETING_REQUEUE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

pub struct Context {
    pub client: Client,
    pub recorder: EventPublisher,
    pub metrics: Arc<ControllerMetrics>,
    /// Child failures older than this were reported by an earlier instance.
    started: Timestamp,
    failures: Backoff<ObjectRef<DeploymentMeta>>,
    /// What has been published per Deployment (by uid), so each problem is reported once.
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
    async fn report_problem(&self, d: &DeploymentMeta, reason: &'static str, note: String) {
        let key = (reason.to_string(), note.clone());
        let new = {
            let mut reported = self.reported();
            let entry = reported.entry(uid_of(d)).or_default();
            let new = entry.problem.as_ref() != Some(&key);
            entry.problem = Some(key);
            new
        };
        if new {
            tracing::info!(reason, %note, "Deployment misconfigured");
            self.publish(d, EventType::Warning, reason, note, None)
                .await;
        }
    }

    fn clear_problem(&self, d: &DeploymentMeta) {
        if let Some(entry) = self.reported().get_mut(&uid_of(d)) {
            entry.problem = None;
        }
    }

    fn forget(&self, d: &DeploymentMeta) {
        self.reported().remove(&uid_of(d));
        self.failures.reset(&ObjectRef::from_obj(d));
    }

    /// Events are best effort: failing to record one must not fail the reconcile.
    async fn publish(
        &self,
        d: &DeploymentMeta,
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

fn uid_of(d: &DeploymentMeta) -> String {
    d.metadata.uid.clone().unwrap_or_default()
}

/// What a Deployment's annotations and labels ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// No token: no child.
    Nothing,
    /// A child BootstrapToken with this spec.
    Token {
        service_id: String,
        secret_name: String,
    },
    /// A token, but the annotations or labels do not say which: warn, leave any child alone.
    Misconfigured {
        reason: &'static str,
        message: String,
    },
}

/// Reads a Deployment's shim annotations (and, for a derived id, its labels).
pub fn wanted(
    name: &str,
    notes: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Wanted {
    let get = |key: &str| notes.get(key).map(|value| value.trim());
    let enabled = match get(annotations::ENABLED) {
        None => None,
        Some(v) if v.eq_ignore_ascii_case("true") => Some(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Some(false),
        Some(v) => {
            return Wanted::Misconfigured {
                reason: "InvalidAnnotation",
                message: format!(
                    "{} must be \"true\" or \"false\", not {v:?}",
                    annotations::ENABLED
                ),
            };
        }
    };
    if enabled == Some(false) {
        return Wanted::Nothing;
    }
    let service_id = match get(annotations::SERVICE_ID) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ if enabled == Some(true) => {
            let label = |key: &str| labels.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
            match (label(NAME_LABEL), label(VERSION_LABEL)) {
                (Some(name), Some(version)) => format!("{name}-{version}"),
                (name, version) => {
                    let missing: Vec<&str> = [(NAME_LABEL, name), (VERSION_LABEL, version)]
                        .into_iter()
                        .filter(|(_, value)| value.is_none())
                        .map(|(key, _)| key)
                        .collect();
                    let (noun, verb) = if missing.len() == 1 {
                        ("label", "is")
                    } else {
                        ("labels", "are")
                    };
                    return Wanted::Misconfigured {
                        reason: "MissingLabel",
                        message: format!(
                            "{} is \"true\" and {} is empty, so the service id is derived as \
                             <{NAME_LABEL}>-<{VERSION_LABEL}>, but the {noun} {} {verb} missing: \
                             set the {noun} or {}",
                            annotations::ENABLED,
                            annotations::SERVICE_ID,
                            missing.join(" and "),
                            annotations::SERVICE_ID,
                        ),
                    };
                }
            }
        }
        Some(_) => {
            return Wanted::Misconfigured {
                reason: "EmptyServiceId",
                message: format!(
                    "{} is empty: set it to the service id, or set {}: \"true\" to derive it \
                     from the labels {NAME_LABEL} and {VERSION_LABEL}",
                    annotations::SERVICE_ID,
                    annotations::ENABLED
                ),
            };
        }
        None => return Wanted::Nothing,
    };
    let secret_name = get(annotations::SECRET_NAME)
        .filter(|s| !s.is_empty())
        .map_or_else(|| format!("{name}-bootstrap-token"), str::to_string);
    Wanted::Token {
        service_id,
        secret_name,
    }
}

#[tracing::instrument(skip_all, fields(namespace = d.metadata.namespace.as_deref(), name = d.metadata.name.as_deref()))]
pub async fn reconcile(d: Arc<DeploymentMeta>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = reconcile_inner(&d, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, result.is_ok());
    if result.is_ok() {
        ctx.failures.reset(&ObjectRef::from_obj(&*d));
    }
    result
}

/// Exponential back-off per Deployment: 5 s, 10 s, … capped at 5 minutes.
pub fn error_policy(d: Arc<DeploymentMeta>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.failures.failed(ObjectRef::from_obj(&*d));
    tracing::warn!(%error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_inner(d: &DeploymentMeta, ctx: &Context) -> Result<Action, Error> {
    if d.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the child, and then its Secret.
        return Ok(Action::await_change());
    }
    let namespace = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let tokens: Api<BootstrapToken> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = tokens.get_opt(&name).await?;
    let owned = existing.as_ref().is_some_and(|bt| controlled_by(bt, d));

    match wanted(&name, d.annotations(), d.labels()) {
        Wanted::Nothing => {
            ctx.clear_problem(d);
            if let Some(child) = existing.filter(|_| owned) {
                delete_child(d, &child, ctx).await?;
            }
            Ok(Action::await_change())
        }
        Wanted::Misconfigured { reason, message } => {
            ctx.report_problem(d, reason, message).await;
            Ok(Action::await_change())
        }
        Wanted::Token {
            service_id,
            secret_name,
        } => {
            let child = match existing {
                Some(_) if !owned => {
                    // Its deletion triggers a reconcile (see `token_triggers`).
                    let note = format!(
                        "BootstrapToken {name} exists and is not owned by this Deployment; it is \
                         left untouched: delete it, or rename one of them"
                    );
                    ctx.report_problem(d, "BootstrapTokenConflict", note).await;
                    return Ok(Action::await_change());
                }
                Some(child) if child.metadata.deletion_timestamp.is_some() => {
                    return Ok(Action::requeue(DELETING_REQUEUE));
                }
                Some(child) if child_matches(&child, d, &service_id, &secret_name) => child,
                existing => {
                    let desired = desired_child(d, &service_id, &secret_name);
                    let applied = tokens
                        .patch(
                            &name,
                            &PatchParams::apply(MANAGER).force(),
                            &Patch::Apply(&desired),
                        )
                        .await;
                    let child = match applied {
                        Ok(child) => child,
                        Err(kube::Error::Api(status)) if status.code == 422 => {
                            let note = format!(
                                "the BootstrapToken for these annotations is invalid: {}",
                                status.message
                            );
                            ctx.report_problem(d, "InvalidBootstrapToken", note).await;
                            return Ok(Action::await_change());
                        }
                        Err(error) => return Err(error.into()),
                    };
                    // The note does not repeat the values: the child and the annotations show them.
                    let (reason, note) = if existing.is_some() {
                        (
                            "UpdatedBootstrapToken",
                            format!("updated BootstrapToken {name} to match the annotations"),
                        )
                    } else {
                        (
                            "CreatedBootstrapToken",
                            format!(
                                "created BootstrapToken {name}: service id {service_id}, Secret \
                                 {secret_name}"
                            ),
                        )
                    };
                    tracing::info!(%service_id, %secret_name, reason, "applied the child BootstrapToken");
                    let related = child.object_ref(&());
                    ctx.publish(d, EventType::Normal, reason, note, Some(related))
                        .await;
                    child
                }
            };
            ctx.clear_problem(d);
            mirror_not_ready(d, &child, ctx).await;
            let restart = d
                .annotations()
                .get(annotations::RESTART_ON_REISSUE)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
            if restart {
                roll_pods(d, &child, ctx).await?;
            }
            Ok(Action::requeue(MAX_REQUEUE))
        }
    }
}

fn controlled_by(bt: &BootstrapToken, d: &DeploymentMeta) -> bool {
    bt.owner_references()
        .iter()
        .any(|owner| owner.controller == Some(true) && Some(&owner.uid) == d.metadata.uid.as_ref())
}

fn desired_child(d: &DeploymentMeta, service_id: &str, secret_name: &str) -> serde_json::Value {
    json!({
        "apiVersion": BootstrapToken::api_version(&()),
        "kind": BootstrapToken::kind(&()),
        "metadata": {
            "name": d.name_any(),
            "namespace": d.namespace(),
            "labels": {MANAGED_BY_LABEL: MANAGER},
            "ownerReferences": [d.controller_owner_ref(&())],
        },
        "spec": {"serviceId": service_id, "secretName": secret_name},
    })
}

/// Whether the child already holds everything [`desired_child`] would apply.
fn child_matches(
    child: &BootstrapToken,
    d: &DeploymentMeta,
    service_id: &str,
    secret_name: &str,
) -> bool {
    child.spec.service_id == service_id
        && child.spec.secret_name.as_deref() == Some(secret_name)
        && child.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGER)
        && d.controller_owner_ref(&())
            .is_some_and(|owner| child.owner_references().contains(&owner))
}

async fn delete_child(
    d: &DeploymentMeta,
    child: &BootstrapToken,
    ctx: &Context,
) -> Result<(), Error> {
    let name = child.name_any();
    let tokens: Api<BootstrapToken> =
        Api::namespaced(ctx.client.clone(), &child.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: child.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match tokens.delete(&name, &params).await {
        Ok(_) => {}
        // Gone already, or replaced by another object of that name: nothing of ours to delete.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => return Ok(()),
        Err(error) => return Err(error.into()),
    }
    tracing::info!("deleted child BootstrapToken");
    let note = format!(
        "deleted BootstrapToken {name} (and so its Secret): the Deployment no longer asks for a \
         bootstrap token"
    );
    ctx.publish(
        d,
        EventType::Normal,
        "DeletedBootstrapToken",
        note,
        Some(child.object_ref(&())),
    )
    .await;
    Ok(())
}

/// Mirrors the child's `Ready=False` reason as a Warning on the Deployment, once per transition.
async fn mirror_not_ready(d: &DeploymentMeta, child: &BootstrapToken, ctx: &Context) {
    let Some(ready) = child.ready_condition() else {
        return;
    };
    if ready.observed_generation != child.metadata.generation {
        // Not yet about the current spec; the BootstrapToken controller will say more.
        return;
    }
    let publish = {
        let mut reported = ctx.reported();
        let entry = reported.entry(uid_of(d)).or_default();
        if ready.status != "False" {
            entry.child = None;
            return;
        }
        let key = (ready.reason.clone(), ready.last_transition_time.0);
        if entry.child.as_ref() == Some(&key) {
            return;
        }
        let first_seen = entry.child.is_none();
        entry.child = Some(key);
        // After a restart, a failure that started before this process was reported already.
        // lastTransitionTime has one-second resolution: a failure in the very second this
        // process started counts as new (at worst one duplicate after a sub-second restart).
        !(first_seen && ready.last_transition_time.0.as_second() < ctx.started.as_second())
    };
    if publish {
        let note = format!("BootstrapToken {}: {}", child.name_any(), ready.message);
        ctx.publish(
            d,
            EventType::Warning,
            &ready.reason,
            note,
            Some(child.object_ref(&())),
        )
        .await;
    }
}

/// Keeps the pod-template annotation `bootstraptoken.dev/token-id` equal to the child's current
/// token id; writes only when they differ, so the pods roll exactly when the token changes.
async fn roll_pods(d: &DeploymentMeta, child: &BootstrapToken, ctx: &Context) -> Result<(), Error> {
    // Only a Ready status about the current spec: when not Ready the Secret may not hold that
    // token (a forbidden id deletes it), and a status about the previous spec names a token that
    // is about to be replaced — rolling the pods for it would roll them twice.
    let up_to_date = child
        .ready_condition()
        .is_some_and(|c| c.status == "True" && c.observed_generation == child.metadata.generation);
    let Some(token_id) = child.status.as_ref().and_then(|s| s.token_id.as_deref()) else {
        return Ok(());
    };
    if !up_to_date {
        return Ok(());
    }
    let name = d.name_any();
    let deployments: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    let Some(deployment) = deployments.get_opt(&name).await? else {
        return Ok(());
    };
    if deployment.metadata.uid != d.metadata.uid {
        return Ok(());
    }
    let current = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|meta| meta.annotations.as_ref())
        .and_then(|notes| notes.get(annotations::TOKEN_ID));
    if current.map(String::as_str) == Some(token_id) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": Deployment::api_version(&()),
        "kind": Deployment::kind(&()),
        "metadata": {"name": name, "namespace": d.namespace()},
        "spec": {"template": {"metadata": {"annotations": {annotations::TOKEN_ID: token_id}}}},
    });
    deployments
        .patch(
            &name,
            &PatchParams::apply(RESTART_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    tracing::info!(token_id, "set the pod-template token id");
    let note = format!(
        "a new token was issued: set the pod-template annotation {} to its id {token_id}, so \
         the pods restart with it",
        annotations::TOKEN_ID
    );
    ctx.publish(
        d,
        EventType::Normal,
        "RolloutTriggered",
        note,
        Some(child.object_ref(&())),
    )
    .await;
    Ok(())
}

/// Whether the Deployment carries any `bootstraptoken.dev/` annotation.
pub fn annotated(d: &DeploymentMeta) -> bool {
    d.metadata
        .annotations
        .as_ref()
        .is_some_and(|notes| notes.keys().any(|k| k.starts_with(annotations::PREFIX)))
}

/// Shrinks the local copy to what the shim reads: for an unannotated Deployment, its name.
fn slim(d: &mut DeploymentMeta) {
    let meta = &mut d.metadata;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.creation_timestamp = None;
    let notes: BTreeMap<String, String> = meta
        .annotations
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| key.starts_with(annotations::PREFIX))
        .collect();
    if notes.is_empty() {
        meta.labels = None;
    } else {
        meta.annotations = Some(notes);
        meta.labels = meta.labels.take().map(|labels| {
            labels
                .into_iter()
                .filter(|(key, _)| key == NAME_LABEL || key == VERSION_LABEL)
                .collect()
        });
    }
}

/// Whether a (slimmed) Deployment event should reach the queue: an annotated Deployment when
/// something the shim reads changed, an unannotated one only when it just lost its annotations.
fn needs_reconcile(previous: Option<&DeploymentMeta>, current: &DeploymentMeta) -> bool {
    if !annotated(current) {
        return previous.is_some_and(annotated);
    }
    let relevant = |d: &DeploymentMeta| {
        let m = &d.metadata;
        (
            m.uid.clone(),
            m.generation,
            m.deletion_timestamp.is_some(),
            m.annotations.clone(),
            m.labels.clone(),
        )
    };
    previous.is_none_or(|p| relevant(p) != relevant(current))
}

type Requests = std::pin::Pin<
    Box<dyn Stream<Item = Result<ReconcileRequest<DeploymentMeta>, watcher::Error>> + Send>,
>;

/// Deployments, metadata-only, slimmed into `writer`'s store and filtered before the queue.
fn deployment_triggers(
    api: Api<DeploymentMeta>,
    mut writer: Writer<DeploymentMeta>,
    store: Store<DeploymentMeta>,
    ctx: Arc<Context>,
) -> Requests {
    watcher(api, watcher::Config::default().any_semantic())
        .backoff(crate::backoff::watch())
        .map_ok(move |event| {
            let event = event.modify(slim);
            let request = match &event {
                watcher::Event::Apply(d) | watcher::Event::InitApply(d) => {
                    let obj_ref = ObjectRef::from_obj(d);
                    // The store still holds the previous version: the event is applied below.
                    let previous = store.get(&obj_ref);
                    needs_reconcile(previous.as_deref(), d).then_some(ReconcileRequest {
                        obj_ref,
                        reason: ReconcileReason::ObjectUpdated,
                    })
                }
                watcher::Event::Delete(d) => {
                    ctx.forget(d);
                    None
                }
                watcher::Event::Init | watcher::Event::InitDone => None,
            };
            writer.apply_watcher_event(&event);
            stream::iter(request.map(Ok::<_, watcher::Error>))
        })
        .try_flatten()
        .boxed()
}

/// BootstrapTokens, metadata-only (any change, status included, bumps the resourceVersion):
/// each triggers its controlling Deployment, and an annotated Deployment of the same name (so a
/// foreign BootstrapToken's deletion lets the Deployment create its own).
fn token_triggers(
    api: Api<PartialObjectMeta<BootstrapToken>>,
    store: Store<DeploymentMeta>,
) -> Requests {
    watcher(api, watcher::Config::default().any_semantic())
        .backoff(crate::backoff::watch())
        .touched_objects()
        .map_ok(move |bt| {
            let namespace = bt.namespace().unwrap_or_default();
            let mut refs: Vec<ObjectRef<DeploymentMeta>> = bt
                .owner_references()
                .iter()
                .filter(|owner| owner.controller == Some(true))
                .filter_map(|owner| ObjectRef::from_owner_ref(Some(&namespace), owner, ()))
                .collect();
            let same_name = ObjectRef::new(&bt.name_any()).within(&namespace);
            if !refs.contains(&same_name) && store.get(&same_name).is_some_and(|d| annotated(&d)) {
                refs.push(same_name);
            }
            let related = Box::new(ObjectRef::from_obj(&bt).erase());
            stream::iter(refs.into_iter().map(move |obj_ref| {
                Ok::<_, watcher::Error>(ReconcileRequest {
                    obj_ref,
                    reason: ReconcileReason::RelatedObjectUpdated {
                        obj_ref: related.clone(),
                    },
                })
            }))
        })
        .try_flatten()
        .boxed()
}

/// Runs the shim until `shutdown` resolves, over all namespaces or the given ones.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: &[String],
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = ctx.client.clone();
    let apis: Vec<(Api<DeploymentMeta>, Api<PartialObjectMeta<BootstrapToken>>)> =
        if namespaces.is_empty() {
            vec![(Api::all(client.clone()), Api::all(client))]
        } else {
            namespaces
                .iter()
                .map(|ns| {
                    (
                        Api::namespaced(client.clone(), ns),
                        Api::namespaced(client.clone(), ns),
                    )
                })
                .collect()
        };
    let loops = apis.into_iter().map(|(deployments, tokens)| {
        let (store, writer) = reflector::store::<DeploymentMeta>();
        let queue = stream::select(
            deployment_triggers(deployments, writer, store.clone(), ctx.clone()),
            token_triggers(tokens, store.clone()),
        )
        .take_until(shutdown.clone());
        applier(
            |d, ctx| {
                CancelableJoinHandle::spawn(reconcile(d, ctx), &tokio::runtime::Handle::current())
            },
            error_policy,
            ctx.clone(),
            store,
            queue,
            controller::Config::default(),
        )
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                Err(controller::Error::QueueError(error)) => {
                    tracing::warn!(%error, controller = CONTROLLER, "watch failed");
                }
                Err(error) => tracing::debug!(%error, controller = CONTROLLER, "reconcile loop"),
            }
        })
    });
    futures::future::join_all(loops).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn token(id: &str, secret: &str) -> Wanted {
        Wanted::Token {
            service_id: id.into(),
            secret_name: secret.into(),
        }
    }

    #[test]
    fn explicit_id_and_secret_name() {
        let notes = map(&[(annotations::SERVICE_ID, "com.x.api-1.0.0")]);
        assert_eq!(
            wanted("api", &notes, &map(&[])),
            token("com.x.api-1.0.0", "api-bootstrap-token")
        );
        let notes = map(&[
            (annotations::SERVICE_ID, " com.x.api "),
            (annotations::SECRET_NAME, "creds"),
        ]);
        assert_eq!(
            wanted("api", &notes, &map(&[])),
            token("com.x.api", "creds")
        );
    }

    #[test]
    fn derived_id_needs_both_labels() {
        let labels = map(&[(NAME_LABEL, "petstore"), (VERSION_LABEL, "1.0.0")]);
        for notes in [
            map(&[(annotations::ENABLED, "true")]),
            map(&[
                (annotations::ENABLED, "True"),
                (annotations::SERVICE_ID, ""),
            ]),
        ] {
            assert_eq!(
                wanted("web", &notes, &labels),
                token("petstore-1.0.0", "web-bootstrap-token")
            );
        }
        let notes = map(&[(annotations::ENABLED, "true")]);
        let Wanted::Misconfigured { reason, message } =
            wanted("web", &notes, &map(&[(NAME_LABEL, "petstore")]))
        else {
            panic!("a missing label is a misconfiguration");
        };
        assert_eq!(reason, "MissingLabel");
        assert!(
            message.contains("label app.kubernetes.io/version is missing"),
            "{message}"
        );
        let Wanted::Misconfigured { message, .. } = wanted("web", &notes, &map(&[])) else {
            panic!("missing labels are a misconfiguration");
        };
        assert!(
            message.contains("app.kubernetes.io/name and app.kubernetes.io/version are missing"),
            "{message}"
        );
    }

    #[test]
    fn nothing_empty_and_disabled() {
        assert_eq!(wanted("a", &map(&[]), &map(&[])), Wanted::Nothing);
        let notes = map(&[(annotations::RESTART_ON_REISSUE, "true")]);
        assert_eq!(wanted("a", &notes, &map(&[])), Wanted::Nothing);
        let notes = map(&[
            (annotations::SERVICE_ID, "svc"),
            (annotations::ENABLED, "false"),
        ]);
        assert_eq!(wanted("a", &notes, &map(&[])), Wanted::Nothing);
        for (notes, expected) in [
            (map(&[(annotations::SERVICE_ID, "")]), "EmptyServiceId"),
            (
                map(&[
                    (annotations::SERVICE_ID, "svc"),
                    (annotations::ENABLED, "yes"),
                ]),
                "InvalidAnnotation",
            ),
        ] {
            assert!(
                matches!(
                    wanted("a", &notes, &map(&[])),
                    Wanted::Misconfigured { reason, .. } if reason == expected
                ),
                "{notes:?}"
            );
        }
    }

    fn deployment(
        notes: &[(&str, &str)],
        labels: &[(&str, &str)],
        generation: i64,
    ) -> DeploymentMeta {
        DeploymentMeta {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                generation: Some(generation),
                annotations: Some(map(notes)),
                labels: Some(map(labels)),
                ..ObjectMeta::default()
            },
            ..DeploymentMeta::default()
        }
    }

    #[test]
    fn slim_keeps_only_what_the_shim_reads() {
        let mut plain = deployment(
            &[("kubectl.kubernetes.io/last-applied-configuration", "{...}")],
            &[(NAME_LABEL, "web")],
            1,
        );
        slim(&mut plain);
        assert_eq!(plain.metadata.annotations, None);
        assert_eq!(plain.metadata.labels, None);
        assert_eq!(plain.metadata.name.as_deref(), Some("web"));

        let mut shimmed = deployment(
            &[(annotations::SERVICE_ID, "svc"), ("other", "x")],
            &[(NAME_LABEL, "web"), ("team", "a")],
            1,
        );
        slim(&mut shimmed);
        assert_eq!(
            shimmed.metadata.annotations,
            Some(map(&[(annotations::SERVICE_ID, "svc")]))
        );
        assert_eq!(shimmed.metadata.labels, Some(map(&[(NAME_LABEL, "web")])));
    }

    #[test]
    fn only_relevant_changes_reach_the_queue() {
        let slimmed = |notes: &[(&str, &str)], labels: &[(&str, &str)], generation| {
            let mut d = deployment(notes, labels, generation);
            slim(&mut d);
            d
        };
        let plain = slimmed(&[("x", "y")], &[], 1);
        let shimmed = slimmed(&[(annotations::SERVICE_ID, "svc")], &[], 1);
        // Unannotated: never, unless it just lost its annotations.
        assert!(!needs_reconcile(None, &plain));
        assert!(!needs_reconcile(Some(&plain), &plain));
        assert!(needs_reconcile(Some(&shimmed), &plain));
        // Annotated: when first seen and when something the shim reads changes.
        assert!(needs_reconcile(None, &shimmed));
        assert!(needs_reconcile(Some(&plain), &shimmed));
        let mut status_only = shimmed.clone();
        status_only.metadata.resource_version = Some("42".into());
        assert!(!needs_reconcile(Some(&shimmed), &status_only));
        let other_label = slimmed(&[(annotations::SERVICE_ID, "svc")], &[("team", "a")], 1);
        assert!(!needs_reconcile(Some(&shimmed), &other_label));
        assert!(needs_reconcile(
            Some(&shimmed),
            &slimmed(&[(annotations::SERVICE_ID, "svc2")], &[], 1)
        ));
        assert!(needs_reconcile(
            Some(&shimmed),
            &slimmed(
                &[(annotations::SERVICE_ID, "svc")],
                &[(VERSION_LABEL, "2")],
                1
            )
        ));
        assert!(needs_reconcile(
            Some(&shimmed),
            &slimmed(&[(annotations::SERVICE_ID, "svc")], &[], 2)
        ));
    }
}
