//! Revokes the token of a token Secret as it is deleted. The operator puts its finalizer on
//! every Secret it writes (in the same server-side apply, so no request of its own), so a
//! deletion waits for it even when it happens while the operator is down: deleting a
//! BootstrapToken (or the workload owning it) garbage-collects its Secret, and the token in it is
//! revoked at once. A Secret deleted while its BootstrapToken stays is replaced by the controller,
//! and the token it held is revoked after `revocation.reissueGrace`, as on any re-issue.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::leader::Shutdown;
use crate::resource::{BootstrapToken, FINALIZER, MANAGED_BY_LABEL, MANAGER, TOKEN_KEY};
use crate::revocation::{self, Previous, RevocationReason};
use crate::token::Issuer;

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Revocation(#[from] revocation::RevocationError),
}

/// Follows the operator's Secrets in `namespaces` (all when empty) until `stop` (the leader).
pub async fn run(client: Client, issuer: Arc<Issuer>, namespaces: &[String], stop: Shutdown) {
    let apis: Vec<Api<PartialObjectMeta<Secret>>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let watches = apis.into_iter().map(|api| {
        let (client, issuer, config) = (client.clone(), issuer.clone(), config.clone());
        async move {
            let deleting = watcher(api, config)
                .backoff(crate::backoff::watch())
                .applied_objects()
                .filter_map(|secret| async move {
                    let secret = secret.ok()?;
                    (secret.metadata.deletion_timestamp.is_some()
                        && secret.finalizers().iter().any(|f| f == FINALIZER))
                    .then_some(secret)
                });
            futures::pin_mut!(deleting);
            while let Some(secret) = deleting.next().await {
                if let Err(error) = release(&client, &issuer, &secret).await {
                    // The watch shows the Secret again on its next change or relist.
                    tracing::warn!(%error, secret = %secret.name_any(), "revoking a deleted Secret's token");
                }
            }
        }
    });
    tokio::select! {
        _ = futures::future::join_all(watches) => {}
        () = stop => {}
    }
}

/// Revokes the token in the Secret (verified: its annotations could name any token), then lets
/// the deletion proceed.
async fn release(
    client: &Client,
    issuer: &Issuer,
    meta: &PartialObjectMeta<Secret>,
) -> Result<(), Error> {
    let namespace = meta.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let name = meta.name_any();
    let Some(secret) = secrets.get_opt(&name).await? else {
        return Ok(());
    };
    let token = secret
        .data
        .as_ref()
        .and_then(|data| data.get(TOKEN_KEY))
        .and_then(|bytes| std::str::from_utf8(&bytes.0).ok());
    let verified = match (token, issuer.keys().await) {
        (Some(token), Ok(keys)) => keys.verify(token).ok(),
        _ => None,
    };
    if let Some(verified) = verified {
        let reason = if owner_stays(client, &secret).await? {
            RevocationReason::Reissued
        } else {
            RevocationReason::Deleted
        };
        let claims = &verified.claims;
        let previous = Previous {
            jti: &claims.jti,
            kid: &verified.kid,
            exp: claims.exp,
        };
        if let Some(revocation) = revocation::on_replace(
            Some(previous),
            None,
            reason,
            &claims.client_id,
            claims.sid.as_deref().unwrap_or_default(),
            issuer.revocations().config().reissue_grace,
            jiff::Timestamp::now().as_second(),
        ) {
            issuer.revocations().revoke(&revocation).await?;
            tracing::info!(jti = %revocation.jti, secret = %name, "revoked the token of a deleted Secret");
        }
    }
    // Only our entry goes; the resourceVersion makes this fail rather than drop a finalizer
    // someone added since.
    if secret.finalizers().iter().any(|f| f == FINALIZER) {
        let others: Vec<&String> = secret
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .collect();
        let patch = json!({
            "metadata": {"resourceVersion": secret.resource_version(), "finalizers": others}
        });
        secrets
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// Whether the BootstrapToken controlling the Secret exists and is not being deleted.
async fn owner_stays(client: &Client, secret: &Secret) -> Result<bool, kube::Error> {
    let Some(owner) = secret
        .owner_references()
        .iter()
        .find(|owner| owner.controller == Some(true) && owner.kind == "BootstrapToken")
    else {
        return Ok(false);
    };
    let api: Api<PartialObjectMeta<BootstrapToken>> =
        Api::namespaced(client.clone(), &secret.namespace().unwrap_or_default());
    Ok(api.get_metadata_opt(&owner.name).await?.is_some_and(|bt| {
        bt.metadata.uid.as_deref() == Some(owner.uid.as_str())
            && bt.metadata.deletion_timestamp.is_none()
    }))
}
