//! A BootstrapToken as the controller's cache keeps it for as long as the object lives. kube's
//! reflector store holds one per object, and a Ready object's status is a dozen small strings
//! (three RFC 3339 times, a token id, a condition with a message spelled from them) that the
//! cache holds as numbers and flags instead. A reconcile gets the object back whole from
//! [`CachedToken::expand`]; a status the compact form cannot give back byte for byte (one
//! written by someone else, say) is kept whole.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::Resource;
use kube::core::NamespaceResourceScope;
use serde::Deserialize;

use super::{LAST_APPLIED, Reason, issued_message, rfc3339};
use crate::resource::{BootstrapToken, BootstrapTokenSpec, BootstrapTokenStatus};

#[derive(Clone, Debug, Deserialize)]
#[serde(from = "BootstrapToken")]
pub struct CachedToken {
    /// Without what the controller never reads: managedFields, labels, ownerReferences, kubectl's
    /// last-applied copy of the object, and the uid (which kube's store would copy into its key
    /// for every object as well). The watcher resumes from each object's resourceVersion, so
    /// that goes later, by [`CachedToken::forget_resource_version`].
    metadata: ObjectMeta,
    uid: Option<Uid>,
    pub spec: BootstrapTokenSpec,
    status: Option<CachedStatus>,
}

#[derive(Clone, Debug)]
enum CachedStatus {
    Compact(CompactStatus),
    Whole(Box<BootstrapTokenStatus>),
}

/// A status as the controller writes it. Times are whole seconds.
#[derive(Clone, Debug, PartialEq)]
struct CompactStatus {
    observed_generation: MaybeI64,
    ready: Option<Ready>,
    secret_name: SecretName,
    key_id: Option<Box<str>>,
    /// A token id as the issuer makes them: 16 bytes, base64url.
    token_id: Option<[u8; 16]>,
    issued_at: MaybeI64,
    not_before: MaybeI64,
    expires_at: MaybeI64,
    renewal_time: MaybeI64,
}

/// An `Option<i64>` in 8 bytes instead of 16: `i64::MIN` stands for none. No time jiff parses
/// comes near it, and a generation that is it makes a status that does not round-trip, which
/// is then kept whole.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MaybeI64(i64);

impl MaybeI64 {
    fn get(self) -> Option<i64> {
        (self.0 != i64::MIN).then_some(self.0)
    }
}

impl From<Option<i64>> for MaybeI64 {
    fn from(value: Option<i64>) -> Self {
        MaybeI64(value.unwrap_or(i64::MIN))
    }
}

/// The one condition, `Ready`.
#[derive(Clone, Debug, PartialEq)]
struct Ready {
    status: bool,
    reason: Reason,
    /// `None`: the message of an issued token, spelled from the token id and expiry.
    message: Option<Box<str>>,
    observed_generation: MaybeI64,
    last_transition: i64,
}

#[derive(Clone, Debug, PartialEq)]
enum SecretName {
    Absent,
    /// The object's Secret name (`spec.secretName` or its default).
    Own,
    Other(Box<str>),
}

impl From<BootstrapToken> for CachedToken {
    fn from(bt: BootstrapToken) -> Self {
        let status = bt.status.as_ref().map(|status| {
            match CompactStatus::of(status, &bt).filter(|c| c.expand(&bt) == *status) {
                Some(compact) => CachedStatus::Compact(compact),
                None => CachedStatus::Whole(Box::new(status.clone())),
            }
        });
        let mut metadata = bt.metadata;
        metadata.managed_fields = None;
        metadata.labels = None;
        metadata.owner_references = None;
        if let Some(notes) = metadata.annotations.as_mut() {
            notes.remove(LAST_APPLIED);
            if notes.is_empty() {
                metadata.annotations = None;
            }
        }
        let uid = metadata.uid.take().as_deref().map(Uid::new);
        CachedToken {
            metadata,
            uid,
            spec: bt.spec,
            status,
        }
    }
}

impl CachedToken {
    /// The object as the API server sent it, less the metadata the cache drops.
    pub fn expand(&self) -> BootstrapToken {
        let mut bt = BootstrapToken {
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            status: None,
        };
        bt.metadata.uid = self.uid.as_ref().map(Uid::to_string);
        bt.status = self.status.as_ref().map(|status| match status {
            CachedStatus::Compact(compact) => compact.expand(&bt),
            CachedStatus::Whole(status) => (**status).clone(),
        });
        bt
    }

    /// The `kid` of the current token's key.
    pub fn key_id(&self) -> Option<&str> {
        match self.status.as_ref()? {
            CachedStatus::Compact(compact) => compact.key_id.as_deref(),
            CachedStatus::Whole(status) => status.key_id.as_deref(),
        }
    }

    /// The current token's id.
    pub fn token_id(&self) -> Option<Cow<'_, str>> {
        match self.status.as_ref()? {
            CachedStatus::Compact(compact) => compact.token_id.map(|id| id_string(&id).into()),
            CachedStatus::Whole(status) => status.token_id.as_deref().map(Cow::Borrowed),
        }
    }

    /// When the current token is to be renewed, in seconds since the epoch.
    pub fn renewal_time(&self) -> Option<i64> {
        match self.status.as_ref()? {
            CachedStatus::Compact(compact) => compact.renewal_time.get(),
            CachedStatus::Whole(status) => status
                .renewal_time
                .as_deref()
                .and_then(crate::revocation::parse_time),
        }
    }

    /// Once the watcher has seen the resourceVersion: kube's store would copy it into its key.
    pub fn forget_resource_version(&mut self) {
        self.metadata.resource_version = None;
    }

    /// What tells this object from another of the same namespace and name.
    pub fn uid(&self) -> Option<&Uid> {
        self.uid.as_ref()
    }
}

/// A token id looked for among the cached objects, decoded once rather than per object.
pub struct SoughtToken<'a> {
    jti: &'a str,
    bytes: Option<[u8; 16]>,
}

impl<'a> SoughtToken<'a> {
    pub fn new(jti: &'a str) -> Self {
        SoughtToken {
            jti,
            bytes: token_id_bytes(jti),
        }
    }

    /// Whether it is `bt`'s current token.
    pub fn held_by(&self, bt: &CachedToken) -> bool {
        match &bt.status {
            Some(CachedStatus::Compact(compact)) => {
                self.bytes.is_some() && compact.token_id == self.bytes
            }
            Some(CachedStatus::Whole(status)) => status.token_id.as_deref() == Some(self.jti),
            None => false,
        }
    }
}

impl CompactStatus {
    /// `status` in compact form, when it has one; the caller checks that it expands to `status`.
    fn of(status: &BootstrapTokenStatus, bt: &BootstrapToken) -> Option<Self> {
        let seconds = |time: &Option<String>| match time {
            None => Some(MaybeI64(i64::MIN)),
            Some(time) => crate::revocation::parse_time(time).map(MaybeI64),
        };
        let token_id = match &status.token_id {
            None => None,
            Some(id) => Some(token_id_bytes(id)?),
        };
        let expires_at = seconds(&status.expires_at)?;
        let ready = match status.conditions.as_slice() {
            [] => None,
            [condition] if condition.type_ == "Ready" => {
                let issued = status
                    .token_id
                    .as_deref()
                    .zip(expires_at.get())
                    .map(|(jti, exp)| issued_message(jti, &bt.spec.service_id, exp));
                Some(Ready {
                    status: match condition.status.as_str() {
                        "True" => true,
                        "False" => false,
                        _ => return None,
                    },
                    reason: Reason::parse(&condition.reason)?,
                    message: (issued.as_ref() != Some(&condition.message))
                        .then(|| condition.message.as_str().into()),
                    observed_generation: condition.observed_generation.into(),
                    last_transition: condition.last_transition_time.0.as_second(),
                })
            }
            _ => return None,
        };
        Some(CompactStatus {
            observed_generation: status.observed_generation.into(),
            ready,
            secret_name: match &status.secret_name {
                None => SecretName::Absent,
                Some(name) if *name == bt.secret_name() => SecretName::Own,
                Some(name) => SecretName::Other(name.as_str().into()),
            },
            key_id: status.key_id.as_deref().map(Into::into),
            token_id,
            issued_at: seconds(&status.issued_at)?,
            not_before: seconds(&status.not_before)?,
            expires_at,
            renewal_time: seconds(&status.renewal_time)?,
        })
    }

    /// The status this stands for on `bt` (the object whose spec and name it was taken with).
    fn expand(&self, bt: &BootstrapToken) -> BootstrapTokenStatus {
        let token_id = self.token_id.map(|id| id_string(&id));
        let conditions = self.ready.iter().map(|ready| Condition {
            type_: "Ready".into(),
            status: if ready.status { "True" } else { "False" }.into(),
            reason: ready.reason.as_str().into(),
            message: match &ready.message {
                Some(message) => message.to_string(),
                None => issued_message(
                    token_id.as_deref().unwrap_or_default(),
                    &bt.spec.service_id,
                    self.expires_at.get().unwrap_or_default(),
                ),
            },
            observed_generation: ready.observed_generation.get(),
            last_transition_time: Time(
                Timestamp::from_second(ready.last_transition).unwrap_or_default(),
            ),
        });
        BootstrapTokenStatus {
            observed_generation: self.observed_generation.get(),
            conditions: conditions.collect(),
            secret_name: match &self.secret_name {
                SecretName::Absent => None,
                SecretName::Own => Some(bt.secret_name()),
                SecretName::Other(name) => Some(name.to_string()),
            },
            key_id: self.key_id.as_deref().map(Into::into),
            token_id,
            issued_at: self.issued_at.get().map(rfc3339),
            not_before: self.not_before.get().map(rfc3339),
            expires_at: self.expires_at.get().map(rfc3339),
            renewal_time: self.renewal_time.get().map(rfc3339),
        }
    }
}

impl Resource for CachedToken {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        BootstrapToken::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        BootstrapToken::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        BootstrapToken::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        BootstrapToken::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A token id's 16 bytes, when it is the 22 base64url characters the issuer writes.
fn token_id_bytes(id: &str) -> Option<[u8; 16]> {
    let bytes: [u8; 16] = URL_SAFE_NO_PAD.decode(id).ok()?.try_into().ok()?;
    (id_string(&bytes) == id).then_some(bytes)
}

fn id_string(bytes: &[u8; 16]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An object's uid: the 16 bytes of a UUID as the API server makes them (36 characters,
/// lowercase), else the string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Uid {
    Uuid([u8; 16]),
    Other(Box<str>),
}

impl Uid {
    pub fn new(uid: &str) -> Self {
        match uuid_bytes(uid) {
            Some(bytes) if uuid_string(&bytes) == uid => Uid::Uuid(bytes),
            _ => Uid::Other(uid.into()),
        }
    }
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uid::Uuid(bytes) => f.write_str(&uuid_string(bytes)),
            Uid::Other(uid) => f.write_str(uid),
        }
    }
}

/// The 16 bytes of a UUID in its 36-character form, any case (the caller checks it round-trips).
fn uuid_bytes(uid: &str) -> Option<[u8; 16]> {
    if uid.len() != 36 {
        return None;
    }
    let mut hex = uid
        .bytes()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 8 | 13 | 18 | 23))
        .map(|(_, b)| b);
    let mut bytes = [0u8; 16];
    for byte in &mut bytes {
        let pair = [hex.next()?, hex.next()?];
        *byte = u8::from_str_radix(std::str::from_utf8(&pair).ok()?, 16).ok()?;
    }
    Some(bytes)
}

fn uuid_string(bytes: &[u8; 16]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};

    use super::*;

    const JTI: &str = "TV8rwl9jC0EU1kfQez0WGg";
    const UID: &str = "0b6c1b8e-3f57-4f0e-9c61-5a1f2d6e7a01";
    const NOW: i64 = 1_764_500_000;

    fn object(status: Option<BootstrapTokenStatus>) -> BootstrapToken {
        let mut bt = BootstrapToken::new("api", BootstrapTokenSpec::for_service("com.example.api"));
        bt.metadata.namespace = Some("team-a".into());
        bt.metadata.uid = Some(UID.into());
        bt.metadata.generation = Some(3);
        bt.status = status;
        bt
    }

    /// The status as the controller writes it for an issued token.
    fn issued() -> BootstrapTokenStatus {
        let exp = NOW + 86_400;
        BootstrapTokenStatus {
            observed_generation: Some(3),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Issued".into(),
                message: issued_message(JTI, "com.example.api", exp),
                observed_generation: Some(3),
                last_transition_time: Time(Timestamp::from_second(NOW).unwrap()),
            }],
            secret_name: Some("api-bootstrap-token".into()),
            key_id: Some("100".into()),
            token_id: Some(JTI.into()),
            issued_at: Some(rfc3339(NOW)),
            not_before: Some(rfc3339(NOW)),
            expires_at: Some(rfc3339(exp)),
            renewal_time: Some(rfc3339(NOW + 57_600)),
        }
    }

    fn with(change: impl FnOnce(&mut BootstrapTokenStatus)) -> BootstrapTokenStatus {
        let mut status = issued();
        change(&mut status);
        status
    }

    fn ready(change: impl FnOnce(&mut Condition)) -> BootstrapTokenStatus {
        with(|s| change(&mut s.conditions[0]))
    }

    /// Every status comes back exactly; the ones the controller writes are held compactly.
    #[test]
    fn statuses_come_back_exactly() {
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<BootstrapTokenStatus>, bool)> = vec![
            ("no status", None, false),
            ("issued", Some(issued()), true),
            ("not ready, the last token kept", Some(ready(|c| {
                c.status = "False".into();
                c.reason = "SecretConflict".into();
                c.message = "Secret team-a/api-bootstrap-token exists and is not ours".into();
            })), true),
            ("workload identity only", Some(BootstrapTokenStatus {
                observed_generation: Some(3),
                issued_at: Some(rfc3339(NOW)),
                conditions: issued().conditions.into_iter().map(|mut c| {
                    c.reason = "WorkloadIdentityOnly".into();
                    c.message = "spec.storeToken is false".into();
                    c
                }).collect(),
                ..Default::default()
            }), true),
            ("a Secret name the spec no longer gives", Some(with(|s| s.secret_name = Some("old".into()))), true),
            ("issued under a service id the spec no longer has", Some(ready(|c| c.message = issued_message(JTI, "com.example.old", NOW + 86_400))), true),
            ("an empty status", Some(BootstrapTokenStatus::default()), true),
            ("a time with an offset", Some(with(|s| s.expires_at = Some("2026-11-30T10:00:00+01:00".into()))), false),
            ("a time with a fraction", Some(with(|s| s.issued_at = Some("2026-11-30T10:00:00.5Z".into()))), false),
            ("not a time", Some(with(|s| s.renewal_time = Some("soon".into()))), false),
            ("a reason of someone else's", Some(ready(|c| c.reason = "Approved".into())), false),
            ("condition status Unknown", Some(ready(|c| c.status = "Unknown".into())), false),
            ("a second condition", Some(with(|s| s.conditions.push(Condition { type_: "Synced".into(), ..s.conditions[0].clone() }))), false),
            ("a condition that is not Ready", Some(ready(|c| c.type_ = "Synced".into())), false),
            ("a token id not of the issuer's form", Some(with(|s| s.token_id = Some("jti".into()))), false),
            ("a token id with stray bits", Some(with(|s| s.token_id = Some("TV8rwl9jC0EU1kfQez0WGh".into()))), false),
            ("the generation that stands for none", Some(with(|s| s.observed_generation = Some(i64::MIN))), false),
        ];
        for (name, status, compact) in cases {
            let bt = object(status);
            let cached = CachedToken::from(bt.clone());
            assert_eq!(cached.expand(), bt, "{name}");
            assert_eq!(
                matches!(cached.status, Some(CachedStatus::Compact(_))),
                compact,
                "{name}: compact"
            );
        }
    }

    #[test]
    fn metadata_never_read_is_dropped_and_the_uid_kept() {
        let mut bt = object(Some(issued()));
        let metadata = &mut bt.metadata;
        metadata.labels = Some(BTreeMap::from([("app".into(), "api".into())]));
        metadata.annotations = Some(BTreeMap::from([
            (LAST_APPLIED.into(), "{\"kind\":\"BootstrapToken\"}".into()),
            ("bootstraptoken.dev/reissue".into(), "1".into()),
        ]));
        metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        metadata.owner_references = Some(vec![OwnerReference::default()]);
        metadata.resource_version = Some("42".into());
        let mut cached = CachedToken::from(bt.clone());
        assert_eq!(
            cached.meta().resource_version.as_deref(),
            Some("42"),
            "the watcher resumes from it"
        );
        cached.forget_resource_version();
        let expanded = cached.expand();
        let kept = &expanded.metadata;
        assert_eq!(kept.uid.as_deref(), Some(UID));
        assert_eq!(
            kept.annotations,
            Some(BTreeMap::from([(
                "bootstraptoken.dev/reissue".into(),
                "1".into()
            )]))
        );
        assert!(kept.labels.is_none() && kept.managed_fields.is_none());
        assert!(kept.owner_references.is_none() && kept.resource_version.is_none());
        assert_eq!(
            (kept.name.as_deref(), kept.generation),
            (Some("api"), Some(3))
        );

        for uid in [
            UID,
            "0B6C1B8E-3F57-4F0E-9C61-5A1F2D6E7A01",
            "not-a-uuid",
            "0b6c1b8e3f574f0e9c615a1f2d6e7a01ffff",
        ] {
            let mut bt = object(None);
            bt.metadata.uid = Some(uid.into());
            let cached = CachedToken::from(bt);
            assert_eq!(cached.expand().metadata.uid.as_deref(), Some(uid), "{uid}");
            assert_eq!(
                matches!(cached.uid, Some(Uid::Uuid(_))),
                uid == UID,
                "{uid}: held as bytes"
            );
        }
    }

    #[test]
    fn readers_see_the_status() {
        let cached = CachedToken::from(object(Some(issued())));
        assert_eq!(cached.key_id(), Some("100"));
        assert_eq!(cached.token_id().as_deref(), Some(JTI));
        let holds = |bt: &CachedToken, jti| SoughtToken::new(jti).held_by(bt);
        assert!(holds(&cached, JTI) && !holds(&cached, "jti"));
        assert_eq!(cached.renewal_time(), Some(NOW + 57_600));
        let whole = CachedToken::from(object(Some(with(|s| s.token_id = Some("jti".into())))));
        assert!(holds(&whole, "jti") && !holds(&whole, JTI));
        assert_eq!(whole.token_id().as_deref(), Some("jti"));
        assert_eq!(whole.renewal_time(), Some(NOW + 57_600));
        let none = CachedToken::from(object(None));
        assert!(none.key_id().is_none() && none.token_id().is_none() && !holds(&none, JTI));
    }

    /// kube's store holds one per object: no larger than the API type it stands for.
    #[test]
    fn no_larger_than_the_api_type() {
        assert!(size_of::<CachedToken>() <= size_of::<BootstrapToken>());
    }
}
