use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::FutureExt;
use kube::runtime::events::Reporter;

use bootstrap_token_operator::admin::{self, AdminState};
use bootstrap_token_operator::config::Config;
use bootstrap_token_operator::controller::{self, Context};
use bootstrap_token_operator::endpoint::{self, EndpointMetrics};
use bootstrap_token_operator::events::EventPublisher;
use bootstrap_token_operator::leader::{self, Shutdown};
use bootstrap_token_operator::resource::{self, MANAGER};
use bootstrap_token_operator::shim;
use bootstrap_token_operator::telemetry::{self, ControllerMetrics, LogFormat};
use bootstrap_token_operator::token::{new_jti, store::KeyProvider};

/// How long in-flight work may take after SIGTERM before the process exits anyway.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(8);

/// Issues long-lived bootstrap tokens (RS256 JWTs) into Kubernetes Secrets and serves an OAuth 2.0
/// token endpoint.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers and the token endpoint against the cluster in KUBECONFIG or in-cluster.
    Run(RunArgs),
    /// Print the BootstrapToken CustomResourceDefinition as YAML.
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Configuration file (issuer, audience, bootstrap client, signing key, policy, endpoint).
    #[arg(long, env = "BTO_CONFIG")]
    config: Option<PathBuf>,
    /// Namespace the operator runs in: its signing key Secret and leader Lease live there.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "bootstrap-token-operator"
    )]
    namespace: String,
    /// Comma-separated namespaces to watch; all namespaces when empty.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',', num_args = 0..)]
    watch_namespaces: Vec<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Address of the token endpoint; overrides the config file's `endpoint.address`/`port`.
    #[arg(long, env = "ENDPOINT_ADDR")]
    endpoint_addr: Option<SocketAddr>,
    /// Elect one leader among replicas through a Lease; only the leader reconciles.
    #[arg(long, env = "LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// This replica's identity in the Lease (default: POD_NAME, else a random id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", resource::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            telemetry::init_logging(args.log_format);
            match run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    tracing::error!("{message}");
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    let config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let config = Arc::new(config);
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("connecting to Kubernetes: {e}"))?;
    let watch_namespaces: Vec<String> = args
        .watch_namespaces
        .into_iter()
        .filter(|ns| !ns.is_empty())
        .collect();
    controller::ensure_crd_installed(&client, &watch_namespaces).await?;
    let identity = args
        .identity
        .unwrap_or_else(|| format!("{MANAGER}-{}", &new_jti()[..8]));

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(ControllerMetrics::new(&mut registry));
    metrics.init_controller(controller::CONTROLLER);
    metrics.init_controller(shim::CONTROLLER);
    let keys = Arc::new(KeyProvider::new(
        client.clone(),
        &args.namespace,
        config.signing.clone(),
    ));
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(identity.clone()),
    };
    let recorder = EventPublisher::new(client.clone(), reporter);
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        keys.clone(),
        recorder,
        metrics.clone(),
    ));
    let endpoint_metrics = EndpointMetrics::new(&mut registry);
    let endpoint = if config.endpoint.enabled {
        let state = endpoint::State::new(
            config.clone(),
            keys.clone(),
            Some(client.clone()),
            endpoint_metrics,
        )
        .await
        .map_err(|e| format!("token endpoint: {e}"))?;
        let addr = args.endpoint_addr.unwrap_or(SocketAddr::new(
            config.endpoint.address,
            config.endpoint.port,
        ));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("binding the token endpoint {addr}: {e}"))?;
        Some((Arc::new(state), listener))
    } else {
        None
    };
    let admin_state = Arc::new(AdminState {
        registry,
        ready: Default::default(),
    });

    let shutdown: Shutdown = shutdown_signal().boxed().shared();
    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .map_err(|e| format!("binding the admin port {}: {e}", args.admin_addr))?;
    let admin_server = axum::serve(admin_listener, admin::router(admin_state.clone()))
        .with_graceful_shutdown(shutdown.clone());
    // Ready once the signing keys are loaded; until then reconciles report KeyUnavailable.
    let readiness = {
        let keys = keys.clone();
        let admin_state = admin_state.clone();
        async move {
            let mut delay = Duration::from_millis(500);
            while let Err(error) = keys.get().await {
                tracing::warn!(%error, retry_in = ?delay, "signing keys not loaded yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            admin_state.ready.store(true, Ordering::SeqCst);
        }
    };

    let reconcile = |stop: Shutdown| {
        let ctx = ctx.clone();
        let namespaces = watch_namespaces.clone();
        async move {
            // A fresh shim context per term as leader, so it does not repost warnings a previous
            // leader already posted.
            let shim_ctx = Arc::new(shim::Context::from_controller(&ctx));
            futures::join!(
                controller::run(ctx, &namespaces, stop.clone()),
                shim::run(shim_ctx, &namespaces, stop),
            );
        }
    };
    let controllers = async {
        if args.leader_elect {
            leader::run_while_leader(
                client.clone(),
                &args.namespace,
                &identity,
                metrics.leader.clone(),
                shutdown.clone(),
                reconcile,
            )
            .await
            .map_err(|e| format!("leader election: {e}"))
        } else {
            reconcile(shutdown.clone()).await;
            Ok(())
        }
    };

    tracing::info!(%identity, namespaces = ?watch_namespaces, admin = %args.admin_addr, "starting");
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
                Some((state, listener)) => endpoint::serve(state, listener, shutdown.clone())
                    .await
                    .map_err(|e| format!("token endpoint: {e}")),
                None => Ok(()),
            }
        };
        let (controllers, admin, token_endpoint, ()) = tokio::join!(
            controllers,
            admin_server.into_future(),
            token_endpoint,
            readiness
        );
        admin.map_err(|e| format!("admin server: {e}"))?;
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

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}
