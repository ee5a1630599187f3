//! The `aws-jit` binary: a thin shell over the library, one subcommand per role.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aws-jit",
    version,
    about = "Just-in-time, time-bound, approved AWS access for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds).
    Crdgen,
}

fn main() -> ExitCode {
    aws_jit::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen => match aws_jit::crd::to_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render CRDs: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
