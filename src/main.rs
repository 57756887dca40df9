use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use futures::FutureExt;
use kube::runtime::events::{Recorder, Reporter};

use bootstrap_token_operator::config::Config;
use bootstrap_token_operator::controller::{self, Context};
use bootstrap_token_operator::resource::{self, MANAGER};
use bootstrap_token_operator::telemetry::{self, ControllerMetrics, LogFormat};
use bootstrap_token_operator::token::store::KeyProvider;

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
    /// Run the controller and the token endpoint against the cluster in KUBECONFIG or in-cluster.
    Run(RunArgs),
    /// Print the BootstrapToken CustomResourceDefinition as YAML.
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Configuration file (issuer, audience, bootstrap client, signing key, policy, endpoint).
    #[arg(long, env = "BTO_CONFIG")]
    config: Option<PathBuf>,
    /// Namespace the operator runs in; its signing key Secret lives there.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "bootstrap-token-operator"
    )]
    namespace: String,
    /// Comma-separated namespaces to watch; all namespaces when empty.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',', num_args = 0..)]
    watch_namespaces: Vec<String>,
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

    let keys = Arc::new(KeyProvider::new(
        client.clone(),
        &args.namespace,
        config.signing.clone(),
    ));
    if let Err(error) = keys.get().await {
        // Not fatal: reconciles report KeyUnavailable and retry until the Secret can be read.
        tracing::warn!(%error, "signing keys not loaded yet");
    }
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(ControllerMetrics::new(&mut registry));
    let ctx = Arc::new(Context::new(client, config, keys, recorder, metrics));

    let shutdown = shutdown_signal().boxed().shared();
    tracing::info!(namespaces = ?watch_namespaces, "starting controller");
    controller::run(ctx, &watch_namespaces, shutdown).await;
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
