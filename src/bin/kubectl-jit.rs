//! `kubectl-jit`: the `kubectl jit` plugin (docs/plugin.md). Parse, run, map the error
//! to its exit code.
use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    aws_jit::install_crypto_provider();
    let cli = aws_jit::plugin::Cli::parse();
    match aws_jit::plugin::run(cli).await {
        Ok(()) => std::process::exit(aws_jit::plugin::exit::OK),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
