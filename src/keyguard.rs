//! Keeps the active signing key's Secret in place while the operator runs. Deleted, it is put back
//! from memory (create-only, so replicas racing to restore it are harmless: a 409 means another
//! one did). Changed to another key, or emptied, it is reported — error log, Warning event,
//! `bootstrap_token_signing_key_mismatch` — and never adopted: the operator keeps signing with
//! the key it loaded, and a restart would load the Secret as it is then.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::{WatchStreamExt, watcher};

use crate::events::EventPublisher;
use crate::leader::Shutdown;
use crate::token::store::{KEY_FIELD, KeyProvider, key_secret};
use crate::token::{LocalKey, Signer};

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
    loop {
        match events.try_next().await {
            Ok(Some(watcher::Event::Init)) => listed = false,
            Ok(Some(watcher::Event::InitApply(s) | watcher::Event::Apply(s))) => {
                listed = true;
                guard.check(&s).await;
            }
            Ok(Some(watcher::Event::InitDone)) if !listed => guard.restore().await,
            Ok(Some(watcher::Event::InitDone)) => {}
            Ok(Some(watcher::Event::Delete(_))) => guard.restore().await,
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
    /// Secret is the loader's business: it creates one or reports the key lost).
    async fn restore(&self) {
        let Some(pem) = self.keys.active_pem() else {
            return;
        };
        match self
            .api
            .create(&PostParams::default(), &key_secret(self.name, pem))
            .await
        {
            Ok(_) => {
                self.keys.metrics().restored.inc();
                tracing::warn!(secret = %self.name, kid = %self.kid,
                    "the signing key Secret was deleted; restored it from memory");
                self.report(
                    EventType::Warning,
                    "SigningKeyRestored",
                    "the signing key Secret was deleted; restored from the key in memory",
                )
                .await;
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(secret = %self.name, "another replica restored the signing key Secret");
            }
            Err(error) => tracing::error!(%error, secret = %self.name,
                "the signing key Secret was deleted and could not be restored; retried on the next watch event"),
        }
    }

    /// Reports a Secret whose key is not the one in use.
    async fn check(&self, secret: &Secret) {
        // The Secret holds the active key (a thumbprint kid is only known once it is loaded).
        let Some(in_use) = self.keys.loaded().map(|keys| keys.active()) else {
            return;
        };
        let stored = secret
            .data
            .as_ref()
            .and_then(|data| data.get(KEY_FIELD))
            .and_then(|pem| LocalKey::from_pem(self.kid, &pem.0).ok());
        let matches = stored
            .as_ref()
            .is_some_and(|key| key.public_key() == in_use.signer().public_key());
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
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            name: Some(self.name.into()),
            namespace: self.api.namespace().map(str::to_string),
            ..Default::default()
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Guard".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &regarding).await {
            tracing::warn!(%error, reason, "could not publish event");
        }
    }
}
