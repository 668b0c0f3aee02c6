//! `testbed`: starts a local testbed for a person or a test binary, and cleans up dead runs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use testbed::supervisor::UpArgs;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Local Kubernetes cluster: real control plane and nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start everything, print `KUBECONFIG=<path>` when ready, tear down on Ctrl-C.
    Up(UpArgs),
    /// Build (or find) the control-plane binaries and print their folder.
    Build,
    /// Tear down what runs whose supervisor died left behind.
    Cleanup,
}

/// kube's client logs each failed request at error level; while waiting for readiness those
/// failures are expected, and the wait reports the last one itself if it gives up.
const DEFAULT_LOG_FILTER: &str = "info,kube_client::client::builder=off";

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("testbed: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Up(args) => testbed::supervisor::up(args).await,
            Cmd::Build => {
                let bins = testbed::binaries::Binaries::locate_or_build().await?;
                println!("{}", bins.dir.display());
                Ok(())
            }
            Cmd::Cleanup => {
                testbed::slot::cleanup_dead_runs();
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("testbed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
