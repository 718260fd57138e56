//! The `puente` binary: parses the command line, starts logging, runs the command.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: gRPC, TLS and sled allocate in every call.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = puente::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(cli.default_log_filter())),
        )
        .with_writer(std::io::stderr)
        .init();
    match puente::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
