//! Keeps the configured signing key's Secret in place while the operator runs. Deleted, it is put
//! back from memory as it was last seen, its rotation annotations included (a retired key stays
//! retired). Changed to another key, or emptied, it is reported — error log, Warning event,
//! `bootstrap_token_signing_key_mismatch` — and never adopted: the operator keeps signing with
//! the key it loaded, and a restart would load the Secret as it is then. [`restore`] also puts
//! back rotated keys' Secrets ([`crate::rotation`]).

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::{WatchStreamExt, watcher};

use crate::events::EventPublisher;
use crate::leader::Shutdown;
use crate::token::store::{KEY_FIELD, KeyMetrics, KeyProvider, key_secret};
use crate::token::{LocalKey, Signer};

/// Creates the signing-key Secret `secret` again after it was deleted: its name, labels,
/// annotations (a rotated key's phase and times), type and data, nothing the API server set. Said
/// in a Warning event `SigningKeyRestored` and `bootstrap_token_signing_key_restored_total`.
/// Create-only: a Secret of that name (another replica's restore, or anyone's) is never
/// overwritten; that is `Ok(false)`.
pub async fn restore(
    api: &Api<Secret>,
    secret: &Secret,
    metrics: &KeyMetrics,
    recorder: &EventPublisher,
) -> Result<bool, kube::Error> {
    let name = secret.name_any();
    match api.create(&PostParams::default(), &as_it_was(secret)).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => return Ok(false),
        Err(error) => return Err(error),
    }
    metrics.restored.inc();
    tracing::warn!(secret = %name, "a signing-key Secret was deleted; restored it from memory");
    let event = Event {
        type_: EventType::Warning,
        reason: "SigningKeyRestored".into(),
        note: Some("the signing key Secret was deleted; restored from the key in memory".into()),
        action: "Guard".into(),
        secondary: None,
    };
    let namespace = api.namespace().unwrap_or_default();
    recorder.publish_on_secret(&event, namespace, &name).await;
    Ok(true)
}

/// The Secret to create so that it is `secret` again.
fn as_it_was(secret: &Secret) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: secret.metadata.name.clone(),
            labels: secret.metadata.labels.clone(),
            annotations: secret.metadata.annotations.clone(),
            ..Default::default()
        },
        type_: secret.type_.clone(),
        data: secret.data.clone(),
        ..Default::default()
    }
}

/// Watches the key Secret until `stop`; does nothing when the keys do not come from a Secret.
pub async fn run(keys: &KeyProvider, recorder: &EventPublisher, stop: Shutdown) {
    let Some(secret) = keys.key_secret() else {
        return;
    };
    let api: Api<Secret> = Api::namespaced(secret.client.clone(), secret.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", secret.name));
    let mut events = watcher(api.clone(), config)
        .backoff(crate::backoff::watch())
        .take_until(stop)
        .boxed();
    let guard = Guard {
        keys,
        recorder,
        api,
        name: secret.name,
        kid: secret.kid,
    };
    // Whether the Secret was in the (re)listing: a deletion during a watch gap shows only as
    // its absence there, not as a Delete event.
    let mut listed = false;
    // The Secret as last seen, to put it back as it was.
    let mut seen: Option<Secret> = None;
    loop {
        match events.try_next().await {
            Ok(Some(watcher::Event::Init)) => listed = false,
            Ok(Some(watcher::Event::InitApply(s) | watcher::Event::Apply(s))) => {
                listed = true;
                guard.check(&s).await;
                seen = Some(s);
            }
            Ok(Some(watcher::Event::InitDone)) if !listed => guard.restore(seen.as_ref()).await,
            Ok(Some(watcher::Event::InitDone)) => {}
            Ok(Some(watcher::Event::Delete(s))) => guard.restore(Some(&s)).await,
            Ok(None) => break,
            Err(error) => tracing::warn!(%error, "watching the signing key Secret"),
        }
    }
}

struct Guard<'a> {
    keys: &'a KeyProvider,
    recorder: &'a EventPublisher,
    api: Api<Secret>,
    name: &'a str,
    kid: &'a str,
}

impl Guard<'_> {
    /// Puts the Secret back with the key in memory, if one was loaded (before that, a missing
    /// Secret is the loader's business: it creates one or reports the key lost), with the labels
    /// and annotations it had when `seen` (its rotation phase: retired or not, it is the key the
    /// operator loads at start).
    async fn restore(&self, seen: Option<&Secret>) {
        let Some(pem) = self.keys.active_pem() else {
            return;
        };
        let mut secret = key_secret(self.name, pem);
        if let Some(seen) = seen {
            secret.metadata.labels = seen.metadata.labels.clone();
            secret.metadata.annotations = seen.metadata.annotations.clone();
        }
        match restore(&self.api, &secret, self.keys.metrics(), self.recorder).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(secret = %self.name, "another replica restored the signing key Secret");
            }
            Err(error) => tracing::error!(%error, secret = %self.name,
                "the signing key Secret was deleted and could not be restored; retried on the next watch event"),
        }
    }

    /// Reports a Secret whose key is not the one in use.
    async fn check(&self, secret: &Secret) {
        // The Secret holds the configured key (a thumbprint kid is only known once it is
        // loaded); rotated keys live in Secrets of their own.
        let Some(in_use) = self.keys.base() else {
            return;
        };
        let stored = secret
            .data
            .as_ref()
            .and_then(|data| data.get(KEY_FIELD))
            .and_then(|pem| LocalKey::from_pem(self.kid, &pem.0).ok());
        let matches = stored
            .as_ref()
            .is_some_and(|key| key.public_key() == in_use.public_key());
        let was_mismatched = self.keys.metrics().mismatch.set(i64::from(!matches)) == 1;
        if matches || was_mismatched {
            return;
        }
        let why = if stored.is_some() {
            "holds another key than the one in use"
        } else {
            "has no valid key.pem"
        };
        tracing::error!(secret = %self.name, kid = %self.kid,
            "the signing key Secret {why}; still signing with the key loaded at startup, which a restart would replace");
        self.report(
            EventType::Warning,
            "SigningKeyMismatch",
            &format!(
                "the signing key Secret {why}; the operator keeps signing with the key it loaded \
                 and does not adopt it (a restart would)"
            ),
        )
        .await;
    }

    async fn report(&self, type_: EventType, reason: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Guard".into(),
            secondary: None,
        };
        let namespace = self.api.namespace().unwrap_or_default();
        self.recorder
            .publish_on_secret(&event, namespace, self.name)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    use super::*;

    /// Put back as it was: what the operator or an administrator wrote, not what the API server
    /// set (a resourceVersion or uid would fail the create) nor an owner that may be gone.
    #[test]
    fn a_restored_secret_is_the_one_seen_less_what_the_server_set() {
        let mut seen = key_secret("next-key", b"pem");
        seen.metadata.annotations = Some(BTreeMap::from([(
            "bootstraptoken.dev/active-from".to_string(),
            "2027-01-01T00:00:00Z".to_string(),
        )]));
        let wanted = seen.clone();
        seen.metadata.uid = Some("uid".into());
        seen.metadata.resource_version = Some("42".into());
        seen.metadata.creation_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        seen.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        seen.metadata.finalizers = Some(vec!["example.com/hold".into()]);
        seen.metadata.owner_references = Some(vec![OwnerReference::default()]);
        assert_eq!(as_it_was(&seen), wanted);
    }
}
