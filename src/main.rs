#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use bootstrap_token_operator::app::RunArgs;
use bootstrap_token_operator::{resource, revocation, telemetry};

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
    /// Print a CustomResourceDefinition as YAML (BootstrapToken unless named).
    Crd {
        #[arg(value_enum, default_value = "bootstraptokens")]
        name: CrdName,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CrdName {
    Bootstraptokens,
    Revokedtokens,
    Issuedtokens,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd { name } => {
            print!(
                "{}",
                match name {
                    CrdName::Bootstraptokens => resource::crd_yaml(),
                    CrdName::Revokedtokens => revocation::crd_yaml(),
                    CrdName::Issuedtokens => revocation::issued_crd_yaml(),
                }
            );
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            telemetry::init_logging(args.log_format);
            match args.run().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error}");
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
