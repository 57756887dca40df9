//! Which watch events of BootstrapTokens start a reconcile: an object new to the controller, a new
//! generation (the spec) or new annotations (reissue, revoke). The operator's own status writes
//! change neither, so they start none.
//!
//! kube-runtime's predicate filter does the same with a cache keyed by the object's name,
//! namespace and uid as strings, ~200 bytes an object; here an object costs two hashes.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use kube::runtime::watcher;

use super::CachedToken;

#[derive(Debug, Default)]
pub(super) struct Changes {
    /// Hash of (namespace, name, uid) → hash of (generation, annotations) last passed on.
    seen: HashMap<u64, u64>,
    /// Filled by a (re)list; replaces `seen` once complete, dropping objects deleted meanwhile.
    listing: Option<HashMap<u64, u64>>,
}

impl Changes {
    /// The object of `event` when it should be reconciled.
    pub(super) fn admit(&mut self, event: watcher::Event<CachedToken>) -> Option<CachedToken> {
        match event {
            watcher::Event::Init => {
                self.listing = Some(HashMap::new());
                None
            }
            watcher::Event::InitApply(bt) => {
                let (object, compared) = hashes(&bt);
                self.listing
                    .get_or_insert_default()
                    .insert(object, compared);
                (self.seen.get(&object) != Some(&compared)).then_some(bt)
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.listing.take() {
                    self.seen = listed;
                }
                None
            }
            watcher::Event::Apply(bt) => {
                let (object, compared) = hashes(&bt);
                (self.seen.insert(object, compared) != Some(compared)).then_some(bt)
            }
            watcher::Event::Delete(bt) => {
                self.seen.remove(&hashes(&bt).0);
                None
            }
        }
    }
}

/// The object's identity (a recreated object is another) and what a change is compared on.
fn hashes(bt: &CachedToken) -> (u64, u64) {
    let mut object = DefaultHasher::new();
    let metadata = kube::Resource::meta(bt);
    (&metadata.namespace, &metadata.name, bt.uid()).hash(&mut object);
    let mut compared = DefaultHasher::new();
    (metadata.generation, &metadata.annotations).hash(&mut compared);
    (object.finish(), compared.finish())
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;

    use super::*;
    use crate::resource::{BootstrapToken, BootstrapTokenSpec, BootstrapTokenStatus};

    fn object(name: &str, uid: &str, generation: i64, reissue: Option<&str>) -> BootstrapToken {
        let mut bt = BootstrapToken::new(name, BootstrapTokenSpec::for_service("com.example.svc"));
        bt.metadata.namespace = Some("team-a".into());
        bt.metadata.uid = Some(uid.into());
        bt.metadata.generation = Some(generation);
        if let Some(value) = reissue {
            bt.annotations_mut()
                .insert("bootstraptoken.dev/reissue".into(), value.into());
        }
        bt
    }

    fn bt(name: &str, uid: &str, generation: i64, reissue: Option<&str>) -> CachedToken {
        object(name, uid, generation, reissue).into()
    }

    fn with_status(name: &str, uid: &str, generation: i64) -> CachedToken {
        let mut bt = object(name, uid, generation, None);
        bt.status = Some(BootstrapTokenStatus {
            token_id: Some("jti".into()),
            ..Default::default()
        });
        bt.into()
    }

    // UUIDs, as the API server makes them, are cached as bytes; others as they are.
    const U1: &str = "0b6c1b8e-3f57-4f0e-9c61-5a1f2d6e7a01";
    const U3: &str = "0b6c1b8e-3f57-4f0e-9c61-5a1f2d6e7a03";

    #[test]
    fn events_that_start_a_reconcile() {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        #[rustfmt::skip]
        let steps = [
            ("first list: every object", Init, false),
            ("first list: a", InitApply(bt("a", U1, 1, None)), true),
            ("first list: b", InitApply(bt("b", "u2", 1, None)), true),
            ("first list done", InitDone, false),
            ("our status write on a", Apply(with_status("a", U1, 1)), false),
            ("a's spec changed", Apply(bt("a", U1, 2, None)), true),
            ("a's reissue annotation set", Apply(bt("a", U1, 2, Some("1"))), true),
            ("the same again", Apply(bt("a", U1, 2, Some("1"))), false),
            ("b deleted", Delete(bt("b", "u2", 1, None)), false),
            ("b recreated, same generation", Apply(bt("b", U3, 1, None)), true),
            ("relist starts", Init, false),
            ("relist: a unchanged", InitApply(bt("a", U1, 2, Some("1"))), false),
            ("relist: c, new while the watch was down", InitApply(bt("c", "u4", 1, None)), true),
            ("relist done: b is gone", InitDone, false),
            ("b again under its old uid: new to the controller", Apply(bt("b", U3, 1, None)), true),
            ("c's status written", Apply(with_status("c", "u4", 1)), false),
        ];
        let mut changes = Changes::default();
        for (step, event, reconciled) in steps {
            assert_eq!(changes.admit(event).is_some(), reconciled, "{step}");
        }
        assert_eq!(changes.seen.len(), 3, "a, b and c are remembered");
    }
}
