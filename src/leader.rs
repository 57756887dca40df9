//! Leader election on a `coordination.k8s.io` Lease: with N replicas exactly one reconciles, and
//! every replica keeps serving the token endpoint.

use std::future::Future;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};

/// The Lease every replica competes for.
pub const LEASE_NAME: &str = "bootstrap-token-operator";
/// A holder that stops renewing loses the lease after this long (a SIGTERM releases it at once).
const LEASE_SECONDS: u64 = 15;
const RENEW_GRACE_SECONDS: u64 = 5;

pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Runs `lead` whenever this replica holds the Lease, until `shutdown`. `lead` gets a future that
/// resolves when it must stop (lease lost or shutdown) and must return promptly after it does.
pub async fn run_while_leader<F, Fut>(
    client: Client,
    namespace: &str,
    identity: &str,
    is_leader: prometheus_client::metrics::gauge::Gauge,
    shutdown: Shutdown,
    lead: F,
) -> Result<(), LeaseManagerError>
where
    F: Fn(Shutdown) -> Fut,
    Fut: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(RENEW_GRACE_SECONDS)
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    loop {
        tokio::select! {
            _ = shutdown.clone() => break,
            changed = leading.wait_for(|held| *held) => if changed.is_err() { break },
        }
        tracing::info!(identity, "acquired the lease; reconciling");
        is_leader.set(1);
        let mut watch = leading.clone();
        let lost = async move {
            let _ = watch.wait_for(|held| !*held).await;
        };
        let stop = futures::future::select(Box::pin(lost), shutdown.clone())
            .map(|_| ())
            .boxed()
            .shared();
        lead(stop).await;
        is_leader.set(0);
        if shutdown.peek().is_some() {
            break;
        }
        tracing::warn!(identity, "lost the lease; stopped reconciling");
    }
    // Closing the channel makes the manager release the lease, so a successor takes over now
    // rather than after the lease expires.
    drop(leading);
    match task.await {
        Ok(result) => result.map(|_| ()),
        Err(join) => {
            tracing::warn!(error = %join, "lease task ended abnormally");
            Ok(())
        }
    }
}
