//! What the owned Secrets' watch cache proves without another request: which token a Secret
//! holds (its metadata and the status say so), whether to read it at all, and which watch events
//! are only the echo of the operator's own writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, ManagedFieldsEntry, OwnerReference,
};
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::resource::{BootstrapToken, FINALIZER, MANAGER, TOKEN_KEY, annotations};
use crate::token::{Claims, Issuer, KeySet, TOKEN_VERSION};

use super::cached::Uid;
use super::{CachedToken, Reason, applied_keys};

/// A resourceVersion no object can have (etcd revisions are signed 64-bit): as the precondition
/// of a server-side apply it lets the apply create the Secret and fails it with 409 Conflict when
/// a Secret of that name exists, so a Secret the cache does not know is never overwritten.
pub(super) const CREATE_ONLY: &str = "18446744073709551615";

/// A digest of the configured claims a bootstrap token carries besides `sid` and its times (iss,
/// aud, client_id, scope, version): kept on the Secret, it tells from the metadata alone whether
/// the token still matches the configuration.
pub(super) fn claims_digest(issuer: &Issuer) -> String {
    let profile = issuer.profile();
    let bootstrap = issuer.bootstrap();
    let inputs = json!([
        profile.issuer,
        profile.audience,
        bootstrap.client_id,
        bootstrap.scope,
        profile.version_claim.name(),
        TOKEN_VERSION,
    ]);
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, inputs.to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12])
}

/// Whether our last server-side apply still owns the token: nobody has changed or removed it
/// since, so it is the token that apply wrote, the one its annotations describe.
pub(super) fn owns_token(metadata: &ObjectMeta) -> bool {
    metadata.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(MANAGER)
            && entry.operation.as_deref() == Some("Apply")
            && entry
                .fields_v1
                .as_ref()
                .and_then(|fields| fields.0.get("f:data")?.get(format!("f:{TOKEN_KEY}")))
                .is_some()
    })
}

/// The annotations of an owned Secret that decisions read, in this order in [`CachedSecret`].
const NOTES: [&str; 7] = [
    annotations::SERVICE_ID,
    annotations::TOKEN_ID,
    annotations::KEY_ID,
    annotations::EXPIRES_AT,
    annotations::CLAIMS,
    annotations::REISSUE,
    annotations::REVOKE,
];

/// What our last apply set that is still as it set it: the label and annotation keys our field
/// manager owns with their current values, the ownerReferences, whether our finalizer is there.
/// Equal to [`desired_digest`] of what we would apply exactly when that apply would change none
/// of it, so the cache need not keep the labels, annotations and managedFields themselves.
type Digest = [u8; 16];

fn digest(
    labels: &[(String, Option<&String>)],
    notes: &[(String, Option<&String>)],
    metadata: &ObjectMeta,
    finalized: bool,
) -> Digest {
    let inputs = json!([labels, notes, metadata.owner_references, finalized]);
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, inputs.to_string().as_bytes());
    let mut out = Digest::default();
    out.copy_from_slice(&digest.as_ref()[..16]);
    out
}

/// [`Digest`] of a Secret as it is.
fn applied_digest(metadata: &ObjectMeta) -> Digest {
    fn current<'a>(
        metadata: &ObjectMeta,
        field: &str,
        values: Option<&'a BTreeMap<String, String>>,
    ) -> Vec<(String, Option<&'a String>)> {
        let mut keys = applied_keys(metadata, field);
        keys.sort();
        keys.into_iter()
            .map(|key| {
                let value = values.and_then(|v| v.get(&key));
                (key, value)
            })
            .collect()
    }
    let finalized = metadata.finalizers.iter().flatten().any(|f| f == FINALIZER);
    digest(
        &current(metadata, "f:labels", metadata.labels.as_ref()),
        &current(metadata, "f:annotations", metadata.annotations.as_ref()),
        metadata,
        finalized,
    )
}

/// [`Digest`] of the Secret's metadata as we would apply it.
fn desired_digest(desired: &ObjectMeta) -> Digest {
    fn all(values: Option<&BTreeMap<String, String>>) -> Vec<(String, Option<&String>)> {
        values
            .into_iter()
            .flatten()
            .map(|(key, value)| (key.clone(), Some(value)))
            .collect()
    }
    digest(
        &all(desired.labels.as_ref()),
        &all(desired.annotations.as_ref()),
        desired,
        true,
    )
}

/// An owned Secret as the cache keeps it: only what decisions read, as plain fields. Its labels,
/// annotations and managedFields (most of its metadata's size, in maps and strings) are reduced
/// to the facts read from them: the operator's annotations, [`owns_token`] and [`Digest`]; its
/// name and namespace are the [`SecretCache`]'s keys.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedSecret {
    /// The BootstrapToken controlling it: name and uid.
    owner: Option<(Box<str>, Uid)>,
    /// The values of [`NOTES`], then the resourceVersion.
    texts: Texts<{ NOTES.len() + 1 }>,
    owns_token: bool,
    applied: Digest,
}

/// Where [`CachedSecret`] keeps the resourceVersion among its texts.
const RESOURCE_VERSION: usize = NOTES.len();

impl CachedSecret {
    pub(super) fn new(metadata: &mut ObjectMeta) -> Self {
        let owns_token = owns_token(metadata);
        let applied = applied_digest(metadata);
        let annotations = metadata.annotations.take().unwrap_or_default();
        let mut texts = NOTES
            .map(|key| annotations.get(key).map(String::as_str))
            .to_vec();
        texts.push(metadata.resource_version.as_deref());
        let owner = metadata
            .owner_references
            .iter()
            .flatten()
            .find(|owner| owner.controller == Some(true) && owner.kind == BootstrapToken::kind(&()))
            .map(|owner| (owner.name.as_str().into(), Uid::new(&owner.uid)));
        CachedSecret {
            owner,
            texts: Texts::new(&texts),
            owns_token,
            applied,
        }
    }

    fn resource_version(&self) -> Option<&str> {
        self.texts.get(RESOURCE_VERSION)
    }

    /// The Secret `namespace/name`'s metadata as far as decisions read it: its controller, the
    /// operator's annotations, and our ownership of the token written back as the managedFields
    /// entry [`owns_token`] reads.
    pub(super) fn secret(&self, namespace: &str, name: &str) -> Secret {
        let annotations = NOTES
            .iter()
            .enumerate()
            .filter_map(|(i, key)| Some((key.to_string(), self.texts.get(i)?.to_string())))
            .collect();
        let managed_fields = self.owns_token.then(|| {
            vec![ManagedFieldsEntry {
                manager: Some(MANAGER.into()),
                operation: Some("Apply".into()),
                fields_v1: Some(FieldsV1(json!({"f:data": {format!("f:{TOKEN_KEY}"): {}}}))),
                ..Default::default()
            }]
        });
        let owner_references = self.owner.as_ref().map(|(owner, uid)| {
            vec![OwnerReference {
                api_version: BootstrapToken::api_version(&()).into(),
                kind: BootstrapToken::kind(&()).into(),
                name: owner.to_string(),
                uid: uid.to_string(),
                controller: Some(true),
                ..Default::default()
            }]
        });
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                annotations: Some(annotations),
                managed_fields,
                owner_references,
                resource_version: self.resource_version().map(Into::into),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Whether applying `desired` would change nothing our last apply set.
    pub(super) fn applied_as(&self, desired: &ObjectMeta) -> bool {
        self.applied == desired_digest(desired)
    }

    fn note(&self, key: &str) -> Option<&str> {
        self.texts.get(NOTES.iter().position(|k| *k == key)?)
    }
}

/// `N` strings, each maybe absent, in one allocation: a cached Secret's annotations would be
/// one allocation each, every one rounded up to the allocator's next size.
#[derive(Debug, Clone, PartialEq)]
struct Texts<const N: usize> {
    text: Box<str>,
    /// Where each ends in `text`; [`Texts::ABSENT`] for one that is not there.
    ends: [u32; N],
}

impl<const N: usize> Texts<N> {
    const ABSENT: u32 = u32::MAX;

    fn new(texts: &[Option<&str>]) -> Self {
        let mut text = String::new();
        let mut ends = [Self::ABSENT; N];
        for (end, value) in ends.iter_mut().zip(texts) {
            let Some(value) = value else { continue };
            // The API server keeps an object's annotations to 256 KiB, far below this.
            let Ok(after) = u32::try_from(text.len() + value.len()) else {
                break;
            };
            text.push_str(value);
            *end = after;
        }
        Texts {
            text: text.into(),
            ends,
        }
    }

    fn get(&self, index: usize) -> Option<&str> {
        let end = *self.ends.get(index).filter(|end| **end != Self::ABSENT)?;
        let start = self.ends[..index]
            .iter()
            .rev()
            .find(|end| **end != Self::ABSENT)
            .copied()
            .unwrap_or(0);
        self.text
            .get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }
}

/// The owned Secrets of one watch, as [`CachedSecret`]s by namespace and name: kube's reflector
/// would need each to carry an `ObjectMeta` (~350 bytes even empty) and keep an `ObjectRef` key.
#[derive(Debug)]
pub struct SecretCache {
    secrets: RwLock<Secrets>,
    /// Filled by a (re)list until it is complete, then it replaces `secrets`.
    listing: Mutex<Option<Secrets>>,
    ready: tokio::sync::watch::Sender<bool>,
}

/// Values behind an `Arc`: a table slot is a pointer, not the ~260-byte entry (tables run up to
/// half empty after they double), and a lookup clones no strings.
type Secrets = HashMap<String, HashMap<String, Arc<CachedSecret>>>;

impl Default for SecretCache {
    fn default() -> Self {
        SecretCache {
            secrets: Default::default(),
            listing: Default::default(),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl SecretCache {
    /// Once the first list is complete.
    pub(super) async fn wait_until_ready(&self) {
        let mut ready = self.ready.subscribe();
        // The sender is `self`'s, so it outlives this wait.
        let _ = ready.wait_for(|ready| *ready).await;
    }

    pub(super) fn get(&self, namespace: &str, name: &str) -> Option<Arc<CachedSecret>> {
        let secrets = self.secrets.read().unwrap_or_else(|e| e.into_inner());
        secrets.get(namespace)?.get(name).cloned()
    }

    /// Applies a watch event of the Secrets' metadata; returns the BootstrapToken it concerns, to
    /// reconcile, unless the event is the echo of our own write (the reconcile that wrote it goes
    /// on to write the status) or the Secret has no BootstrapToken controlling it.
    pub(super) fn apply(
        &self,
        event: watcher::Event<PartialObjectMeta<Secret>>,
        own_writes: &OwnWrites,
    ) -> Option<ObjectRef<CachedToken>> {
        let (secret, listed, deleted) = match event {
            watcher::Event::Init => {
                *self.listing.lock().unwrap_or_else(|e| e.into_inner()) = Some(Secrets::new());
                return None;
            }
            watcher::Event::InitDone => {
                let listed = self
                    .listing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some(listed) = listed {
                    *self.secrets.write().unwrap_or_else(|e| e.into_inner()) = listed;
                }
                self.ready.send_replace(true);
                return None;
            }
            watcher::Event::InitApply(secret) => (secret, true, false),
            watcher::Event::Apply(secret) => (secret, false, false),
            // A Secret that lost our label leaves the watch as a deletion too, and its owner
            // must put the label back.
            watcher::Event::Delete(secret) => (secret, false, true),
        };
        let mut metadata = secret.metadata;
        let (Some(namespace), Some(name)) = (metadata.namespace.take(), metadata.name.take())
        else {
            return None;
        };
        let cached = CachedSecret::new(&mut metadata);
        let echo = own_writes.is_echo(&namespace, &name, &cached);
        let owner = cached
            .owner
            .as_ref()
            .map(|(owner, _)| ObjectRef::new(owner).within(&namespace));
        let mut listing = self.listing.lock().unwrap_or_else(|e| e.into_inner());
        let mut current = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        let secrets = match listing.as_mut() {
            Some(listing) if listed => listing,
            _ => &mut *current,
        };
        if deleted {
            if let Some(in_namespace) = secrets.get_mut(&namespace) {
                in_namespace.remove(&name);
                if in_namespace.is_empty() {
                    secrets.remove(&namespace);
                }
            }
        } else {
            secrets
                .entry(namespace)
                .or_default()
                .insert(name, Arc::new(cached));
        }
        if echo { None } else { owner }
    }
}

/// The claims and key id of the token in the Secret described by `metadata`, when its metadata
/// and `bt`'s status prove which token it is without reading it: we still own the token, its
/// annotations name the token the status records, at the current generation (a spec change is
/// read in full once), issued under the current configuration with a key we still have.
pub(super) fn recorded(
    bt: &BootstrapToken,
    metadata: &ObjectMeta,
    issuer: &Issuer,
    keys: &KeySet,
) -> Option<(Claims, String)> {
    let status = bt.status.as_ref()?;
    let ready = bt.ready_condition()?;
    if ready.status != "True"
        || ready.observed_generation != bt.metadata.generation
        || status.secret_name.is_none()
        || status.secret_name != metadata.name
        || !owns_token(metadata)
    {
        return None;
    }
    let notes = metadata.annotations.as_ref()?;
    let note = |key: &str| notes.get(key).map(String::as_str);
    let jti = status.token_id.as_deref()?;
    let kid = status.key_id.as_deref()?;
    if note(annotations::TOKEN_ID) != Some(jti)
        || note(annotations::KEY_ID) != Some(kid)
        || note(annotations::EXPIRES_AT) != status.expires_at.as_deref()
        || note(annotations::CLAIMS) != Some(claims_digest(issuer).as_str())
    {
        return None;
    }
    keys.get(kid)?;
    let second = |time: Option<&String>| Some(time?.parse::<Timestamp>().ok()?.as_second());
    let mut claims = issuer.bootstrap_claims(
        note(annotations::SERVICE_ID)?,
        Duration::ZERO,
        second(status.issued_at.as_ref())?,
    );
    claims.jti = jti.to_string();
    claims.nbf = second(status.not_before.as_ref())?;
    claims.exp = second(status.expires_at.as_ref())?;
    Some((claims, kid.to_string()))
}

/// The Secret an object names, as the owned-Secret cache sees it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cached {
    Found(Arc<CachedSecret>),
    /// Not among our Secrets, and the cache has listed them all.
    Absent,
    /// The cache has not listed them yet.
    Unknown,
}

/// Where [`super::decide`] gets the Secret from.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Lookup {
    /// The cached metadata proves which token the Secret holds: no request.
    Known(Arc<CachedSecret>),
    /// No Secret of ours has that name, and the status puts no token there: a new object.
    Absent,
    /// The cache cannot decide: read the Secret (its data only if it is ours).
    Read,
}

pub(super) fn lookup(
    bt: &BootstrapToken,
    cached: Cached,
    issuer: &Issuer,
    keys: &KeySet,
) -> Lookup {
    match cached {
        Cached::Unknown => Lookup::Read,
        // Our token was put in that Secret (since deleted, or its label removed), or one of
        // that name not ours was found last time: look, rather than sign a token for nothing.
        Cached::Absent
            if bt.status.as_ref().is_some_and(|s| {
                s.token_id.is_some() && s.secret_name.as_deref() == Some(&bt.secret_name())
            }) || bt
                .ready_condition()
                .is_some_and(|c| c.reason == Reason::SecretConflict.as_str()) =>
        {
            Lookup::Read
        }
        Cached::Absent => Lookup::Absent,
        Cached::Found(secret)
            if recorded(
                bt,
                &secret
                    .secret(&bt.namespace().unwrap_or_default(), &bt.secret_name())
                    .metadata,
                issuer,
                keys,
            )
            .is_some() =>
        {
            Lookup::Known(secret)
        }
        Cached::Found(_) => Lookup::Read,
    }
}

/// The Secrets the operator is writing or last wrote, until their watch event comes back: that
/// event is our own write's echo and triggers no reconcile.
#[derive(Debug, Default)]
pub(super) struct OwnWrites(Mutex<HashMap<(String, String), Written>>);

#[derive(Debug)]
enum Written {
    /// Sent, no answer yet: the watch may deliver the echo first. It carries this token id.
    Pending(String),
    /// Sent, no answer yet, and the echo already came.
    Echoed,
    /// Written at this resourceVersion, the echo still to come.
    At(String),
}

impl OwnWrites {
    /// Before sending an apply of the Secret `namespace/name` holding the token `token_id`.
    pub(super) fn writing(&self, namespace: &str, name: &str, token_id: &str) {
        let key = (namespace.to_string(), name.to_string());
        self.lock().insert(key, Written::Pending(token_id.into()));
    }

    /// The apply's answer (`None`: it failed).
    pub(super) fn wrote(&self, namespace: &str, name: &str, written: Option<&Secret>) {
        let key = (namespace.to_string(), name.to_string());
        let mut writes = self.lock();
        match written.and_then(|s| s.metadata.resource_version.clone()) {
            Some(version) if !matches!(writes.get(&key), Some(Written::Echoed)) => {
                writes.insert(key, Written::At(version));
            }
            // Failed, or its echo came already: nothing more to wait for.
            _ => {
                writes.remove(&key);
            }
        }
    }

    /// Whether this event shows the Secret as we wrote it. An entry is spent by its echo, or
    /// by any event once the write is answered: later ones are other changes.
    pub(super) fn is_echo(&self, namespace: &str, name: &str, secret: &CachedSecret) -> bool {
        let mut writes = self.lock();
        if writes.is_empty() {
            return false;
        }
        let key = (namespace.to_string(), name.to_string());
        match writes.get_mut(&key) {
            None | Some(Written::Echoed) => false,
            Some(pending @ Written::Pending(_)) => {
                let seen = secret.note(annotations::TOKEN_ID);
                let echo = matches!(pending, Written::Pending(token_id) if seen == Some(token_id.as_str()));
                if echo {
                    *pending = Written::Echoed;
                }
                echo
            }
            Some(Written::At(version)) => {
                let echo = secret.resource_version() == Some(version.as_str());
                writes.remove(&key);
                echo
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Written>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::super::{Decision, IssueReason, World, decide, desired_secret, rfc3339};
    use super::*;
    use crate::resource::{BootstrapTokenSpec, BootstrapTokenStatus, MANAGED_BY_LABEL};
    use crate::token::{BootstrapConfig, LocalKey, test_issuer};

    const NOW: i64 = 1_800_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    static KEYS: LazyLock<KeySet> =
        LazyLock::new(|| KeySet::new(LocalKey::generate("100").unwrap(), vec![]));

    fn issuer(scope: &str) -> Issuer {
        let bootstrap = BootstrapConfig {
            scope: vec![scope.into()],
            lifetime: 10 * HOUR,
            ..Default::default()
        };
        test_issuer(bootstrap, vec![], KEYS.clone())
    }

    /// A Ready object whose status records `claims`, at generation 1.
    fn bt(claims: &Claims) -> BootstrapToken {
        let mut bt = BootstrapToken::new("svc", BootstrapTokenSpec::for_service("com.example.svc"));
        bt.metadata.namespace = Some("team-a".into());
        bt.metadata.uid = Some("0b7c3b1e-0000-4000-8000-000000000001".into());
        bt.metadata.generation = Some(1);
        bt.status = Some(BootstrapTokenStatus {
            observed_generation: Some(1),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Issued".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: Time(Timestamp::from_second(NOW).unwrap()),
            }],
            secret_name: Some("svc-bootstrap-token".into()),
            key_id: Some("100".into()),
            token_id: Some(claims.jti.clone()),
            issued_at: Some(rfc3339(claims.iat)),
            not_before: Some(rfc3339(claims.nbf)),
            expires_at: Some(rfc3339(claims.exp)),
            renewal_time: None,
        });
        bt
    }

    /// The metadata of the Secret our apply of `claims`' token wrote, as the API server shows
    /// it: `manager`'s managedFields entry owns what it applied.
    fn applied(bt: &BootstrapToken, issuer: &Issuer, claims: &Claims, manager: &str) -> ObjectMeta {
        let digest = claims_digest(issuer);
        let secret = desired_secret(bt, "svc-bootstrap-token", "t", claims, "100", &digest);
        let mut metadata = secret.metadata;
        let keys = |values: &Option<BTreeMap<String, String>>| {
            let keys: serde_json::Map<_, _> = values
                .iter()
                .flatten()
                .map(|(key, _)| (format!("f:{key}"), json!({})))
                .collect();
            serde_json::Value::Object(keys)
        };
        metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(json!({
                "f:data": {"f:token": {}},
                "f:metadata": {
                    "f:labels": keys(&metadata.labels),
                    "f:annotations": keys(&metadata.annotations),
                },
            }))),
            ..Default::default()
        }]);
        metadata
    }

    fn cached(mut metadata: ObjectMeta) -> CachedSecret {
        CachedSecret::new(&mut metadata)
    }

    #[test]
    fn texts_keep_each_string_and_its_absence() {
        #[rustfmt::skip]
        let cases: [&[Option<&str>]; 5] = [
            &[None, None, None],
            &[Some("a"), None, Some("bc")],
            &[None, Some(""), Some("x")],
            &[Some(""), Some(""), None],
            &[Some("TV8rwl9jC0EU1kfQez0WGg"), Some("2036-11-28T10:00:00Z"), Some("12345")],
        ];
        for texts in cases {
            let packed = Texts::<3>::new(texts);
            let back: Vec<_> = (0..3).map(|i| packed.get(i)).collect();
            assert_eq!(back, texts, "{texts:?}");
            assert_eq!(packed.get(3), None, "past the end");
        }
    }

    #[test]
    fn lookup_reads_only_what_the_cache_cannot_prove() {
        let issuer = issuer("scope.a");
        let claims = issuer.bootstrap_claims("com.example.svc", 10 * HOUR, NOW - 60);
        let ours = bt(&claims);
        let found = |metadata: ObjectMeta| Cached::Found(Arc::new(cached(metadata)));
        let good = applied(&ours, &issuer, &claims, MANAGER);
        let edit = |f: &dyn Fn(&mut ObjectMeta)| {
            let mut metadata = good.clone();
            f(&mut metadata);
            found(metadata)
        };
        let note = |key: &'static str, value: &'static str| {
            move |m: &mut ObjectMeta| {
                m.annotations
                    .get_or_insert_default()
                    .insert(key.into(), value.into());
            }
        };
        let mut new = ours.clone();
        new.status = None;
        let mut conflicted = ours.clone();
        conflicted.status.as_mut().unwrap().conditions[0].reason = "SecretConflict".into();
        conflicted.status.as_mut().unwrap().conditions[0].status = "False".into();
        let mut respecified = ours.clone();
        respecified.metadata.generation = Some(2);
        let mut failing = ours.clone();
        failing.status.as_mut().unwrap().conditions[0].status = "False".into();
        let other_config = self::issuer("scope.b");
        #[rustfmt::skip]
        let cases: Vec<(&str, &BootstrapToken, Cached, &Issuer, bool)> = vec![
            ("cache not listed yet", &ours, Cached::Unknown, &issuer, false),
            ("a new object, no Secret", &new, Cached::Absent, &issuer, false),
            ("our Secret deleted or unlabelled", &ours, Cached::Absent, &issuer, false),
            ("a Secret of someone else found last time", &conflicted, Cached::Absent, &issuer, false),
            ("metadata names the status' token", &ours, found(good.clone()), &issuer, true),
            ("the token changed by someone else", &ours, found(applied(&ours, &issuer, &claims, "kubectl-edit")), &issuer, false),
            ("managedFields dropped", &ours, edit(&|m| m.managed_fields = None), &issuer, false),
            ("token id annotation edited", &ours, edit(&note(annotations::TOKEN_ID, "x")), &issuer, false),
            ("key id annotation edited", &ours, edit(&note(annotations::KEY_ID, "7")), &issuer, false),
            ("expiry annotation edited", &ours, edit(&note(annotations::EXPIRES_AT, "2030-01-01T00:00:00Z")), &issuer, false),
            ("claims digest missing", &ours, edit(&|m| { m.annotations.as_mut().unwrap().remove(annotations::CLAIMS); }), &issuer, false),
            ("configuration changed", &ours, found(good.clone()), &other_config, false),
            ("spec changed since the status", &respecified, found(good.clone()), &issuer, false),
            ("status not Ready", &failing, found(good.clone()), &issuer, false),
            ("status of a new object", &new, found(good.clone()), &issuer, false),
        ];
        for (name, bt, cached, issuer, known) in cases {
            let got = lookup(bt, cached.clone(), issuer, &KEYS);
            let want = match (known, cached) {
                (true, Cached::Found(secret)) => Lookup::Known(secret),
                (_, Cached::Absent) if bt.status.is_none() => Lookup::Absent,
                _ => Lookup::Read,
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn decides_from_metadata_alone() {
        let issuer = issuer("scope.a");
        let claims = issuer.bootstrap_claims("com.example.svc", 10 * HOUR, NOW - 60);
        let ours = bt(&claims);
        let metadata_only = |bt: &BootstrapToken| {
            cached(applied(bt, &issuer, &claims, MANAGER)).secret("team-a", "svc-bootstrap-token")
        };
        let decide_at = |bt: &BootstrapToken, now: i64| {
            let world = World {
                issuer: &issuer,
                keys: &KEYS,
                held_elsewhere: None,
                now,
            };
            decide(bt, Some(&metadata_only(bt)), &world)
        };
        match decide_at(&ours, NOW) {
            Decision::Keep(_, kept) => {
                assert_eq!(kept.token, None, "not read");
                assert_eq!(
                    kept.claims, claims,
                    "the claims the status and metadata record"
                );
                assert_eq!(kept.kid, "100");
            }
            other => panic!("{other:?}"),
        }
        let renewal = claims.exp - i64::try_from((10 * HOUR / 3).as_secs()).unwrap();
        assert!(matches!(
            decide_at(&ours, renewal),
            Decision::Issue(_, IssueReason::RenewalDue)
        ));
        let mut requested = ours.clone();
        requested
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(annotations::REISSUE.into(), "1".into());
        let secret = metadata_only(&ours);
        let world = World {
            issuer: &issuer,
            keys: &KEYS,
            held_elsewhere: None,
            now: NOW,
        };
        assert!(matches!(
            decide(&requested, Some(&secret), &world),
            Decision::Issue(_, IssueReason::Requested)
        ));
        // Metadata that proves nothing: no token to keep.
        let mut bare = secret.clone();
        bare.metadata.managed_fields = None;
        assert!(matches!(
            decide(&ours, Some(&bare), &world),
            Decision::Issue(_, IssueReason::SecretMissing)
        ));
    }

    #[test]
    fn the_cache_tells_whether_an_apply_would_change_anything() {
        let issuer = issuer("scope.a");
        let claims = issuer.bootstrap_claims("com.example.svc", 10 * HOUR, NOW - 60);
        let ours = bt(&claims);
        let digest = claims_digest(&issuer);
        let desired = desired_secret(&ours, "svc-bootstrap-token", "t", &claims, "100", &digest);
        let good = applied(&ours, &issuer, &claims, MANAGER);
        assert!(cached(good.clone()).applied_as(&desired.metadata));
        let mut noted = good.clone();
        // Others' labels and annotations are no concern of ours.
        noted
            .labels
            .get_or_insert_default()
            .insert("team".into(), "a".into());
        noted
            .annotations
            .get_or_insert_default()
            .insert("note".into(), "x".into());
        assert!(cached(noted).applied_as(&desired.metadata));
        type Edit = Box<dyn Fn(&mut ObjectMeta)>;
        let edits: Vec<(&str, Edit)> = vec![
            (
                "our label changed",
                Box::new(|m| {
                    m.labels
                        .get_or_insert_default()
                        .insert(MANAGED_BY_LABEL.into(), "x".into());
                }),
            ),
            (
                "our annotation removed",
                Box::new(|m| {
                    m.annotations
                        .get_or_insert_default()
                        .remove(annotations::SERVICE_ID);
                }),
            ),
            (
                "owner changed",
                Box::new(|m| {
                    m.owner_references.get_or_insert_default()[0].uid = "other".into();
                }),
            ),
            ("finalizer removed", Box::new(|m| m.finalizers = None)),
            (
                "managed by someone else",
                Box::new(|m| m.managed_fields = None),
            ),
        ];
        for (name, edit) in edits {
            let mut metadata = good.clone();
            edit(&mut metadata);
            assert!(!cached(metadata).applied_as(&desired.metadata), "{name}");
        }
        // A label dropped from the template: we applied it, and want it no longer.
        let mut templated = ours.clone();
        templated.spec.secret_template = Some(crate::resource::SecretTemplate {
            labels: [("tier".to_string(), "web".to_string())].into(),
            ..Default::default()
        });
        let earlier = applied(&templated, &issuer, &claims, MANAGER);
        assert!(
            cached(earlier.clone()).applied_as(
                &desired_secret(
                    &templated,
                    "svc-bootstrap-token",
                    "t",
                    &claims,
                    "100",
                    &digest
                )
                .metadata
            )
        );
        assert!(!cached(earlier).applied_as(&desired.metadata));
    }

    /// The metadata of Secret `ns/s`, controlled by BootstrapToken `svc`, holding `token_id`.
    fn watched(version: &str, token_id: &str) -> PartialObjectMeta<Secret> {
        let mut metadata = ObjectMeta {
            namespace: Some("ns".into()),
            name: Some("s".into()),
            resource_version: Some(version.into()),
            annotations: Some([(annotations::TOKEN_ID.to_string(), token_id.to_string())].into()),
            owner_references: Some(vec![OwnerReference {
                api_version: BootstrapToken::api_version(&()).into(),
                kind: BootstrapToken::kind(&()).into(),
                name: "svc".into(),
                uid: "u".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        };
        metadata.labels = Some([(MANAGED_BY_LABEL.to_string(), MANAGER.to_string())].into());
        PartialObjectMeta {
            metadata,
            ..Default::default()
        }
    }

    #[test]
    fn the_secret_cache_follows_lists_and_changes_and_names_the_owner() {
        let cache = SecretCache::default();
        let writes = OwnWrites::default();
        let owner = Some(ObjectRef::new("svc").within("ns"));
        let got = |cache: &SecretCache| {
            cache
                .get("ns", "s")
                .and_then(|s| s.resource_version().map(String::from))
        };
        assert_eq!(cache.apply(watcher::Event::Init, &writes), None);
        assert_eq!(
            cache.apply(watcher::Event::InitApply(watched("1", "a")), &writes),
            owner
        );
        assert_eq!(got(&cache), None, "a list in progress is not the cache yet");
        cache.apply(watcher::Event::InitDone, &writes);
        assert_eq!(got(&cache), Some("1".into()));
        assert!(*cache.ready.borrow());
        assert_eq!(
            cache.apply(watcher::Event::Apply(watched("2", "b")), &writes),
            owner
        );
        assert_eq!(got(&cache), Some("2".into()));
        let secret = cache.get("ns", "s").unwrap().secret("ns", "s");
        assert_eq!(
            secret.metadata.annotations.unwrap()[annotations::TOKEN_ID],
            "b"
        );
        assert_eq!(secret.metadata.owner_references.unwrap()[0].uid, "u");
        // A relist replaces what was there: a Secret gone meanwhile is gone from the cache.
        cache.apply(watcher::Event::Init, &writes);
        assert_eq!(
            got(&cache),
            Some("2".into()),
            "kept until the relist is complete"
        );
        cache.apply(watcher::Event::InitDone, &writes);
        assert_eq!(got(&cache), None);
        cache.apply(watcher::Event::Apply(watched("3", "c")), &writes);
        assert_eq!(
            cache.apply(watcher::Event::Delete(watched("4", "c")), &writes),
            owner
        );
        assert_eq!(got(&cache), None);
    }

    #[test]
    fn only_the_echo_of_our_own_write_is_skipped() {
        let writes = OwnWrites::default();
        let cache = SecretCache::default();
        let secret = |version: &str, token_id: &str| Secret {
            metadata: watched(version, token_id).metadata,
            ..Default::default()
        };
        let is_echo = |version: &str, token_id: &str| {
            let event = watcher::Event::Apply(watched(version, token_id));
            cache.apply(event, &writes).is_none()
        };
        assert!(!is_echo("5", "a"), "nothing written yet");
        writes.writing("ns", "s", "a");
        writes.wrote("ns", "s", Some(&secret("5", "a")));
        assert!(is_echo("5", "a"));
        assert!(!is_echo("5", "a"), "an echo is skipped once");
        writes.writing("ns", "s", "b");
        writes.wrote("ns", "s", Some(&secret("6", "b")));
        assert!(!is_echo("7", "b"), "someone else's change after ours");
        assert!(!is_echo("6", "b"), "spent by the later event");
        // The echo can come before the answer.
        writes.writing("ns", "s", "c");
        assert!(!is_echo("8", "b"), "not the token being written");
        assert!(is_echo("9", "c"));
        writes.wrote("ns", "s", Some(&secret("9", "c")));
        assert!(!is_echo("10", "c"), "a change after the echo");
        writes.writing("ns", "s", "d");
        writes.wrote("ns", "s", None);
        assert!(!is_echo("11", "d"), "a failed write has no echo");
    }
}
