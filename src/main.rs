//! The `puente` binary: parses the command line, starts logging, runs the command.

use clap::Parser;

/// mimalloc instead of glibc malloc: gRPC, TLS and sled allocate in every call.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = puente::cli::Cli::parse();
    puente::telemetry::init(cli.log_format, cli.default_log_filter());
    match puente::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
