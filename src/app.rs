//! The process: flags, wiring and lifecycle. `main` parses the command line and calls
//! [`RunArgs::run`]; the integration tests build the same [`Core`] the binary runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kube::Client;
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError};
use crate::controller::{self, Context};
use crate::deletion;
use crate::endpoint::{self, EndpointMetrics, StateError};
use crate::events::EventPublisher;
use crate::keyguard;
use crate::leader::{self, Shutdown};
use crate::resource::MANAGER;
use crate::revocation::Revocations;
use crate::rotation::{self, Rotation};
use crate::shim;
use crate::telemetry::{ControllerMetrics, LogFormat};
use crate::token::store::{KeyProvider, StoreError};
use crate::token::{Issuer, new_jti};

/// How long in-flight work may take after SIGTERM before the process exits anyway.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(8);
/// Longest wait between attempts to load the signing keys: how long /readyz may lag behind an
/// administrator restoring a lost key.
const MAX_KEY_RETRY: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct RunArgs {
    /// Configuration file (issuer, audience, bootstrap client, signing key, policy, endpoint).
    #[arg(long, env = "BTO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Namespace the operator runs in: its signing key Secret and leader Lease live there.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "bootstrap-token-operator"
    )]
    pub namespace: String,
    /// Comma-separated namespaces to watch; all namespaces when empty.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',', num_args = 0..)]
    pub watch_namespaces: Vec<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Address of the token endpoint; overrides the config file's `endpoint.address`/`port`.
    #[arg(long, env = "ENDPOINT_ADDR")]
    pub endpoint_addr: Option<SocketAddr>,
    /// Elect one leader among replicas through a Lease; only the leader reconciles.
    #[arg(long, env = "LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// This replica's identity in the Lease (default: POD_NAME, else a random id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Why the process could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("connecting to Kubernetes: {0}")]
    Connect(#[source] kube::Error),
    #[error(
        "the BootstrapToken CRD (bootstraptokens.bootstraptoken.dev) is not installed: \
         run `kubectl apply -f crds/` or `bootstrap-token-operator crd | kubectl apply -f -`"
    )]
    CrdMissing,
    #[error("listing BootstrapTokens: {0}")]
    CrdCheck(#[source] kube::Error),
    #[error("token endpoint: {0}")]
    Endpoint(#[from] StateError),
    #[error("binding {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Serve {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("leader election: {0}")]
    Leader(#[from] kube_lease_manager::LeaseManagerError),
}

/// The issuer and the controllers' context, built the same way for the binary and the tests.
pub struct Core {
    pub issuer: Arc<Issuer>,
    pub ctx: Arc<Context>,
    keys: Arc<KeyProvider>,
    /// Signing-key rotation, when the keys are in Secrets.
    rotation: Option<Rotation>,
}

impl Core {
    /// `keys` signs; `instance` names this replica in events; revoked tokens are recorded in
    /// `namespace`, the operator's own.
    pub fn new(
        client: Client,
        config: &Config,
        namespace: &str,
        keys: Arc<KeyProvider>,
        instance: Option<String>,
        registry: &mut Registry,
    ) -> Core {
        let metrics = Arc::new(ControllerMetrics::new(registry));
        // Every controller's counters exist at 0 before this replica leads.
        metrics.init_controller(controller::CONTROLLER);
        for kind in shim::CONTROLLERS {
            metrics.init_controller(kind);
        }
        keys.register_metrics(registry);
        let revocations =
            Revocations::in_cluster(config.revocation.clone(), client.clone(), namespace);
        let issuer = Arc::new(
            issuer(config, keys.clone(), registry).with_revocations(Arc::new(revocations)),
        );
        let recorder = EventPublisher::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance,
            },
        );
        let ctx = Arc::new(
            Context::new(client, issuer.clone(), recorder, metrics)
                .with_rotation_pace(config.signing.rotation.reissue_per_minute),
        );
        let rotation = Rotation::new(
            keys.clone(),
            config.signing.rotation.clone(),
            rotation::drain_for(&config.endpoint),
        );
        Core {
            issuer,
            ctx,
            keys,
            rotation,
        }
    }

    /// Both controllers, over `namespaces` (all when empty), and the signing key Secret's guard,
    /// until `stop` resolves.
    pub async fn reconcile(&self, namespaces: &[String], stop: Shutdown) {
        // A fresh shim context per term as leader, so it does not repost warnings a previous
        // leader already posted.
        let shim_ctx = Arc::new(shim::Context::from_controller(&self.ctx));
        futures::join!(
            controller::run(self.ctx.clone(), namespaces, stop.clone()),
            shim::run(shim_ctx, namespaces, stop.clone()),
            self.issuer.revocations().sweep(stop.clone()),
            deletion::run(
                self.ctx.client.clone(),
                self.issuer.clone(),
                namespaces,
                stop.clone()
            ),
            keyguard::run(&self.keys, &self.ctx.recorder, stop.clone()),
            async {
                if let Some(rotation) = &self.rotation {
                    let tokens = || self.tokens_by_kid();
                    rotation.lead(&self.ctx.recorder, tokens, stop).await;
                }
            },
        );
    }

    /// The unexpired, unrevoked tokens each kid signed that the operator knows of: the
    /// BootstrapTokens' and the `bootstrap_token` grant's; `None` until both are listed.
    async fn tokens_by_kid(&self) -> Option<HashMap<String, usize>> {
        let mut counts = self.ctx.tokens_by_kid().await?;
        let revocations = self.issuer.revocations();
        let now = jiff::Timestamp::now().as_second();
        let granted = revocations
            .issued()
            .count_by_kid(now, |jti| revocations.is_revoked(jti, now))?;
        for (kid, count) in granted {
            *counts.entry(kid).or_default() += count;
        }
        Some(counts)
    }

    /// Follows the revoked tokens and the signing-key Secrets until `stop` resolves: every
    /// replica, leader or not.
    pub async fn follow(&self, stop: Shutdown) {
        futures::join!(self.issuer.revocations().watch(stop.clone()), async {
            match &self.rotation {
                Some(rotation) => rotation.follow(stop).await,
                None => stop.await,
            }
        });
    }
}

/// The issuer `config` describes, signing with `keys`.
pub fn issuer(config: &Config, keys: Arc<KeyProvider>, registry: &mut Registry) -> Issuer {
    Issuer::new(
        config.token_profile(),
        config.bootstrap.clone(),
        config.policy.clone(),
        keys,
        registry,
    )
}

impl RunArgs {
    pub async fn run(self) -> Result<(), AppError> {
        let config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let client = Client::try_default().await.map_err(AppError::Connect)?;
        let watch_namespaces: Vec<String> = self
            .watch_namespaces
            .into_iter()
            .filter(|ns| !ns.is_empty())
            .collect();
        ensure_crd_installed(&client, &watch_namespaces).await?;
        let identity = self
            .identity
            .unwrap_or_else(|| format!("{MANAGER}-{}", &new_jti()[..8]));

        let mut registry = Registry::default();
        // The signing key: a Secret in the operator's namespace, or a KMS key (signing.kms).
        let keys = Arc::new(
            KeyProvider::new(client.clone(), &self.namespace, config.signing.clone())
                .watching(&watch_namespaces),
        );
        let core = Core::new(
            client.clone(),
            &config,
            &self.namespace,
            keys,
            Some(identity.clone()),
            &mut registry,
        );
        let endpoint_metrics = EndpointMetrics::new(&mut registry);
        let endpoint = if config.endpoint.enabled {
            let state = endpoint::State::new(
                core.issuer.clone(),
                config.endpoint.clone(),
                Some(client.clone()),
                endpoint_metrics,
            )
            .await?;
            let addr = self.endpoint_addr.unwrap_or(SocketAddr::new(
                config.endpoint.address,
                config.endpoint.port,
            ));
            let listener = bind("the token endpoint", addr).await?;
            Some((Arc::new(state), listener))
        } else {
            None
        };
        let leader_gauge = core.ctx.metrics.leader.clone();
        let admin_state = Arc::new(AdminState {
            registry,
            readiness: Default::default(),
        });

        let shutdown: Shutdown = shutdown_signal().boxed().shared();
        let admin_listener = bind("the admin port", self.admin_addr).await?;
        let admin_server = axum::serve(admin_listener, admin::router(admin_state.clone()))
            .with_graceful_shutdown(shutdown.clone());
        // Ready once the signing keys are loaded (from their Secret, or the KMS); until then
        // reconciles report KeyUnavailable and /readyz says why.
        let readiness = {
            let issuer = core.issuer.clone();
            let admin_state = admin_state.clone();
            async move {
                let mut delay = Duration::from_millis(500);
                while let Err(error) = issuer.keys().await {
                    if let StoreError::KeyLost { .. } = error {
                        // Waits for an administrator: say so at error, every retry.
                        tracing::error!(%error, retry_in = ?delay, "signing key lost");
                    } else {
                        tracing::warn!(%error, retry_in = ?delay, "signing keys not loaded yet");
                    }
                    admin_state
                        .readiness
                        .set_waiting(format!("KeyUnavailable: {error}"));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_KEY_RETRY);
                }
                // Until the revoked tokens are listed, "not revoked" would mean nothing.
                issuer.revocations().wait_synced().await;
                admin_state.readiness.set_ready();
            }
        };

        let controllers = async {
            if self.leader_elect {
                leader::run_while_leader(
                    client.clone(),
                    &self.namespace,
                    &identity,
                    leader_gauge,
                    shutdown.clone(),
                    |stop| core.reconcile(&watch_namespaces, stop),
                )
                .await?;
            } else {
                core.reconcile(&watch_namespaces, shutdown.clone()).await;
            }
            Ok::<(), AppError>(())
        };

        tracing::info!(%identity, namespaces = ?watch_namespaces, admin = %self.admin_addr, "starting");
        let work = async {
            let readiness = async {
                tokio::select! {
                    _ = readiness => {}
                    _ = shutdown.clone() => {}
                }
            };
            let token_endpoint = async {
                match endpoint {
                    // Every replica serves the endpoint, leader or not.
                    Some((state, listener)) => {
                        let mappings = state.watch_mappings(
                            client.clone(),
                            &watch_namespaces,
                            shutdown.clone(),
                        );
                        let (served, ()) = tokio::join!(
                            endpoint::serve(state.clone(), listener, shutdown.clone()),
                            mappings
                        );
                        served.map_err(|source| AppError::Serve {
                            what: "token endpoint",
                            source,
                        })
                    }
                    None => Ok(()),
                }
            };
            let (controllers, admin, token_endpoint, (), ()) = tokio::join!(
                controllers,
                admin_server.into_future(),
                token_endpoint,
                readiness,
                core.follow(shutdown.clone()),
            );
            admin.map_err(|source| AppError::Serve {
                what: "admin server",
                source,
            })?;
            token_endpoint?;
            controllers
        };
        tokio::select! {
            result = work => result?,
            _ = async { shutdown.clone().await; tokio::time::sleep(SHUTDOWN_BOUND).await } => {
                tracing::warn!("in-flight work did not finish within {SHUTDOWN_BOUND:?}; exiting");
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, AppError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

/// Fails with a how-to when the CRD is missing, instead of retrying watches forever.
pub async fn ensure_crd_installed(client: &Client, namespaces: &[String]) -> Result<(), AppError> {
    let api: kube::Api<crate::resource::BootstrapToken> = match namespaces.first() {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    match api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(AppError::CrdMissing),
        Err(e) => Err(AppError::CrdCheck(e)),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the process");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}
