//! Kubernetes events (events.k8s.io/v1), written one per occurrence.
//!
//! kube-runtime's `Recorder` keeps every event it sent for six minutes to merge repeats into a
//! series; with one `Issued` event per object that cache grows with the number of objects (about
//! 15 MiB at 10 000) and, when repeats merge, keeps the first note. Our events are rare (one per
//! issuance or state change), so each is simply created.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};

/// The API server rejects notes above 1 kB.
const MAX_NOTE_BYTES: usize = 1024;

#[derive(Clone)]
pub struct EventPublisher {
    client: Client,
    reporter: Reporter,
}

impl EventPublisher {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        EventPublisher { client, reporter }
    }

    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let controller = self.reporter.controller.clone();
        let now = Timestamp::now();
        // `<object>.<nanoseconds in hex>`, as client-go names events; the prefix is cut so the
        // name stays within the 253 characters an object name may have.
        let prefix: String = regarding
            .name
            .as_deref()
            .unwrap_or("object")
            .chars()
            .take(230)
            .collect();
        let object = KubeEvent {
            metadata: ObjectMeta {
                name: Some(format!("{prefix}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.as_deref().map(truncate),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            event_time: Some(MicroTime(now)),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            reporting_controller: Some(controller),
            ..Default::default()
        };
        Api::<KubeEvent>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &object)
            .await
            .map(drop)
    }

    /// Publishes `event` regarding the Secret `namespace/name` (a signing key's); best effort: a
    /// failure is logged, not returned.
    pub async fn publish_on_secret(&self, event: &Event, namespace: &str, name: &str) {
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        };
        if let Err(error) = self.publish(event, &regarding).await {
            tracing::warn!(%error, reason = %event.reason, "could not publish event");
        }
    }
}

fn truncate(note: &str) -> String {
    let mut end = note.len().min(MAX_NOTE_BYTES);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note[..end].to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn notes_are_cut_at_a_character_boundary() {
        let long = "é".repeat(600);
        let cut = super::truncate(&long);
        assert!(cut.len() <= super::MAX_NOTE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(super::truncate("short"), "short");
    }
}
