//! One workload's reconcile: keep its child BootstrapToken in step with the annotations, mirror
//! the child's failures onto the workload and, when asked to, roll the pods for a new token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::wanted::{Problem, Wanted, wanted};
use super::{Context, Error, Meta, RESTART_MANAGER, Workload, uid_of};
use crate::resource::{BootstrapToken, BootstrapTokenSpec, MANAGED_BY_LABEL, MANAGER, annotations};

/// Periodic look, for drift no watch event reports.
const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// The child is being deleted (say, with finalizers); look again to recreate it once it is gone.
const DELETING_REQUEUE: Duration = Duration::from_secs(5);

#[tracing::instrument(skip_all, fields(kind = W::CONTROLLER, namespace = d.metadata.namespace.as_deref(), name = d.metadata.name.as_deref()))]
pub async fn reconcile<W: Workload>(d: Arc<Meta<W>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = reconcile_inner(&d, &ctx).await;
    ctx.metrics.reconciled(W::CONTROLLER, result.is_ok());
    if result.is_ok() {
        ctx.failures.reset(&ObjectRef::from_obj(&*d).erase());
    }
    result
}

/// Exponential back-off per workload: 5 s, 10 s, … capped at 5 minutes.
pub fn error_policy<W: Workload>(d: Arc<Meta<W>>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.failures.failed(ObjectRef::from_obj(&*d).erase());
    tracing::warn!(%error, kind = W::CONTROLLER, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_inner<W: Workload>(d: &Meta<W>, ctx: &Context) -> Result<Action, Error> {
    if d.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the child, and then its Secret.
        return Ok(Action::await_change());
    }
    let kind = W::kind(&());
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
                Some(foreign) if !owned => {
                    // Its deletion triggers a reconcile (see `watch::token_triggers`).
                    ctx.report_problem(
                        d,
                        Problem::BootstrapTokenConflict,
                        conflict_note::<W>(&foreign),
                    )
                    .await;
                    return Ok(Action::await_change());
                }
                Some(child) if child.metadata.deletion_timestamp.is_some() => {
                    return Ok(Action::requeue(DELETING_REQUEUE));
                }
                Some(child) if child_matches(&child, d, &service_id, &secret_name) => child,
                existing => {
                    let desired = desired_child(d, &service_id, &secret_name);
                    let written = if existing.is_some() {
                        tokens
                            .patch(
                                &name,
                                &PatchParams::apply(MANAGER).force(),
                                &Patch::Apply(&desired),
                            )
                            .await
                    } else {
                        // Create, not apply: with a workload of another kind and the same name
                        // reconciled at the same time, the first creation wins and the other
                        // fails here, instead of the second apply taking the child over.
                        let params = PostParams {
                            field_manager: Some(MANAGER.into()),
                            ..PostParams::default()
                        };
                        tokens.create(&params, &desired).await
                    };
                    let child = match written {
                        Ok(child) => child,
                        Err(kube::Error::Api(status)) if status.code == 422 => {
                            let note = format!(
                                "the BootstrapToken for these annotations is invalid: {}",
                                status.message
                            );
                            ctx.report_problem(d, Problem::InvalidBootstrapToken, note)
                                .await;
                            return Ok(Action::await_change());
                        }
                        // Created by someone else since the read above: look again, which
                        // reports the conflict.
                        Err(kube::Error::Api(status))
                            if existing.is_none() && status.reason == "AlreadyExists" =>
                        {
                            return Ok(Action::requeue(Duration::ZERO));
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
                    tracing::info!(%service_id, %secret_name, reason, %kind, "applied the child BootstrapToken");
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

/// Why a BootstrapToken of the workload's name is not its child, and what to do about it.
fn conflict_note<W: Workload>(foreign: &BootstrapToken) -> String {
    let name = foreign.name_any();
    let kind = W::kind(&());
    match foreign
        .owner_references()
        .iter()
        .find(|owner| owner.controller == Some(true))
    {
        // Another workload of this name, of another kind, asked first (or an older one of this
        // kind that is being replaced; garbage collection settles that).
        Some(owner) => format!(
            "BootstrapToken {name} exists and is not owned by this {kind}: it belongs to {} {}, \
             and one name gets one token. It is left untouched: rename one of the workloads, or \
             remove the bootstraptoken.dev/ annotations from one of them",
            owner.kind, owner.name
        ),
        None => format!(
            "BootstrapToken {name} exists and is not owned by this {kind}; it is left untouched: \
             delete it, or rename one of them"
        ),
    }
}

/// Whether the workload controls the BootstrapToken. The uid decides, so a child of a
/// StatefulSet is never taken for the Deployment of the same name.
fn controlled_by<W: Workload>(bt: &BootstrapToken, d: &Meta<W>) -> bool {
    bt.owner_references()
        .iter()
        .any(|owner| owner.controller == Some(true) && Some(&owner.uid) == d.metadata.uid.as_ref())
}

fn desired_child<W: Workload>(d: &Meta<W>, service_id: &str, secret_name: &str) -> BootstrapToken {
    let mut child = BootstrapToken::new(
        &d.name_any(),
        BootstrapTokenSpec {
            secret_name: Some(secret_name.into()),
            ..BootstrapTokenSpec::for_service(service_id)
        },
    );
    child.metadata.namespace = d.namespace();
    child.metadata.labels = Some(BTreeMap::from([(MANAGED_BY_LABEL.into(), MANAGER.into())]));
    child.metadata.owner_references = d.controller_owner_ref(&()).map(|owner| vec![owner]);
    child
}

/// Whether the child already holds everything [`desired_child`] would write.
fn child_matches<W: Workload>(
    child: &BootstrapToken,
    d: &Meta<W>,
    service_id: &str,
    secret_name: &str,
) -> bool {
    child.spec.service_id == service_id
        && child.spec.secret_name.as_deref() == Some(secret_name)
        && child.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGER)
        && d.controller_owner_ref(&())
            .is_some_and(|owner| child.owner_references().contains(&owner))
}

async fn delete_child<W: Workload>(
    d: &Meta<W>,
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
        "deleted BootstrapToken {name} (and so its Secret): the {} no longer asks for a \
         bootstrap token",
        W::kind(&())
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

/// Mirrors the child's `Ready=False` reason as a Warning on the workload, once per transition.
async fn mirror_not_ready<W: Workload>(d: &Meta<W>, child: &BootstrapToken, ctx: &Context) {
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
async fn roll_pods<W: Workload>(
    d: &Meta<W>,
    child: &BootstrapToken,
    ctx: &Context,
) -> Result<(), Error> {
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
    let workloads: Api<W> = Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    let Some(workload) = workloads.get_opt(&name).await? else {
        return Ok(());
    };
    if workload.meta().uid != d.metadata.uid {
        return Ok(());
    }
    let current = workload
        .pod_template()
        .and_then(|template| template.metadata.as_ref())
        .and_then(|meta| meta.annotations.as_ref())
        .and_then(|notes| notes.get(annotations::TOKEN_ID));
    if current.map(String::as_str) == Some(token_id) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": W::api_version(&()),
        "kind": W::kind(&()),
        "metadata": {"name": name, "namespace": d.namespace()},
        "spec": {"template": {"metadata": {"annotations": {annotations::TOKEN_ID: token_id}}}},
    });
    workloads
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
