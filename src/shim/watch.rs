//! What reaches one kind's reconcile queue: that kind's workloads, metadata-only, slimmed and
//! filtered; and the BootstrapTokens that concern them.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt, stream};
use kube::ResourceExt;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{ReconcileReason, ReconcileRequest};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};

use super::{Context, Meta, NAME_LABEL, VERSION_LABEL, Workload};
use crate::resource::{BootstrapToken, annotations};

/// Whether the workload carries any `bootstraptoken.dev/` annotation.
pub fn annotated<W: Workload>(d: &Meta<W>) -> bool {
    d.metadata
        .annotations
        .as_ref()
        .is_some_and(|notes| notes.keys().any(|k| k.starts_with(annotations::PREFIX)))
}

/// Shrinks the local copy to what the shim reads: for an unannotated workload, its name.
fn slim<W: Workload>(d: &mut Meta<W>) {
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

/// Whether a (slimmed) workload event should reach the queue: an annotated workload when
/// something the shim reads changed, an unannotated one only when it just lost its annotations.
fn needs_reconcile<W: Workload>(previous: Option<&Meta<W>>, current: &Meta<W>) -> bool {
    if !annotated(current) {
        return previous.is_some_and(annotated);
    }
    let relevant = |d: &Meta<W>| {
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

pub type Requests<W> =
    std::pin::Pin<Box<dyn Stream<Item = Result<ReconcileRequest<Meta<W>>, watcher::Error>> + Send>>;

/// Workloads of one kind, metadata-only, slimmed into `writer`'s store and filtered before the
/// queue.
pub fn workload_triggers<W: Workload>(
    api: Api<Meta<W>>,
    mut writer: Writer<Meta<W>>,
    store: Store<Meta<W>>,
    ctx: Arc<Context>,
) -> Requests<W> {
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
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

/// The workloads of kind `W` that a change of `bt` concerns: its controller, when that is a `W`
/// the store holds with the owner reference's uid (so a child of a StatefulSet never triggers
/// the Deployment of the same name, nor a child of a deleted workload its namesake successor);
/// and an annotated `W` of the same name, so that a BootstrapToken that is not its child — a
/// foreign one, or another kind's — lets it create its own once it is deleted.
fn concerned<W: Workload>(
    bt: &PartialObjectMeta<BootstrapToken>,
    store: &Store<Meta<W>>,
) -> Vec<ObjectRef<Meta<W>>> {
    let namespace = bt.namespace().unwrap_or_default();
    let stored_uid = |obj_ref: &ObjectRef<Meta<W>>| store.get(obj_ref).and_then(|d| d.uid());
    let mut refs: Vec<ObjectRef<Meta<W>>> = bt
        .owner_references()
        .iter()
        .filter(|owner| owner.controller == Some(true))
        // `from_owner_ref` compares the owner's apiVersion and kind with `W`'s.
        .filter_map(|owner| ObjectRef::from_owner_ref(Some(&namespace), owner, ()))
        .filter(|obj_ref| stored_uid(obj_ref).as_ref() == obj_ref.extra.uid.as_ref())
        .collect();
    let same_name = ObjectRef::new(&bt.name_any()).within(&namespace);
    if !refs.contains(&same_name) && store.get(&same_name).is_some_and(|d| annotated(&d)) {
        refs.push(same_name);
    }
    refs
}

/// BootstrapTokens, metadata-only (any change, status included, bumps the resourceVersion),
/// each mapped to the workloads of kind `W` it concerns.
pub fn token_triggers<W: Workload>(
    api: Api<PartialObjectMeta<BootstrapToken>>,
    store: Store<Meta<W>>,
) -> Requests<W> {
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .touched_objects()
        .map_ok(move |bt| {
            let related = Box::new(ObjectRef::from_obj(&bt).erase());
            stream::iter(concerned(&bt, &store).into_iter().map(move |obj_ref| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;
    use kube::core::PartialObjectMetaExt;
    use kube::runtime::reflector;

    use crate::shim::wanted::tests::map;

    fn deployment(
        notes: &[(&str, &str)],
        labels: &[(&str, &str)],
        generation: i64,
    ) -> Meta<Deployment> {
        ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            uid: Some("u1".into()),
            generation: Some(generation),
            annotations: Some(map(notes)),
            labels: Some(map(labels)),
            ..ObjectMeta::default()
        }
        .into_request_partial()
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

    /// A workload of kind `W` named "web" in "ns", as the store holds it.
    fn stored<W: Workload>(uid: &str, notes: &[(&str, &str)]) -> Meta<W> {
        ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            uid: Some(uid.into()),
            annotations: Some(map(notes)),
            ..ObjectMeta::default()
        }
        .into_request_partial()
    }

    fn store_of<W: Workload>(objects: Vec<Meta<W>>) -> Store<Meta<W>> {
        let (store, mut writer) = reflector::store();
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::Apply(object));
        }
        store
    }

    /// The BootstrapToken "web" in "ns", controlled by the `W` of that uid.
    fn child_of<W: Workload>(uid: &str) -> PartialObjectMeta<BootstrapToken> {
        ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: W::api_version(&()).into(),
                kind: W::kind(&()).into(),
                name: "web".into(),
                uid: uid.into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        }
        .into_request_partial()
    }

    fn web<W: Workload>() -> Vec<ObjectRef<Meta<W>>> {
        vec![ObjectRef::new("web").within("ns")]
    }

    #[test]
    fn a_child_concerns_its_owner_by_kind_and_uid() {
        let unannotated = store_of(vec![stored::<Deployment>("d1", &[])]);
        // Its own Deployment, by uid; not a namesake that replaced it.
        assert_eq!(
            concerned(&child_of::<Deployment>("d1"), &unannotated),
            web()
        );
        assert!(concerned(&child_of::<Deployment>("old"), &unannotated).is_empty());
        // A StatefulSet's child never triggers the Deployment of that name through the owner...
        assert!(concerned(&child_of::<StatefulSet>("d1"), &unannotated).is_empty());
        let sts = store_of(vec![stored::<StatefulSet>("s1", &[])]);
        assert_eq!(concerned(&child_of::<StatefulSet>("s1"), &sts), web());
        assert!(concerned(&child_of::<Deployment>("s1"), &sts).is_empty());
        // ...only as the annotated namesake waiting for the name, once.
        let annotated = store_of(vec![stored::<Deployment>(
            "d1",
            &[(annotations::SERVICE_ID, "svc")],
        )]);
        assert_eq!(concerned(&child_of::<StatefulSet>("s1"), &annotated), web());
        assert_eq!(concerned(&child_of::<Deployment>("d1"), &annotated), web());
    }
}
