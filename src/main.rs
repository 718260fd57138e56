//! The `puente` binary: parses the command line, starts logging (and tracing with `--otel`),
//! runs the command, then exports the spans still buffered.

use clap::Parser;

/// mimalloc instead of glibc malloc: gRPC, TLS and sled allocate in every call.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = puente::cli::Cli::parse();
    let telemetry =
        match puente::telemetry::init(cli.log_format, cli.default_log_filter(), cli.otel) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
    let result = puente::cli::run(cli).await;
    // `serve` returns here after SIGTERM or ctrl-c has drained it, so its last calls' spans
    // are exported before the process exits.
    telemetry.shutdown().await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
